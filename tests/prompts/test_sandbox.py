"""Templates cannot exhaust the machine: each kind of allocation and loop is refused or
finishes within 5 s and 1 GB, in process (the sandbox) and in the trial child (the kernel)."""
import time
import tracemalloc

import pytest

from prompts import PromptError, load_template, render, shipped
from prompts import sandbox
from prompts.isolate import trial_render

CONTEXT = {"clip": {"clip_id": "c1"}, "media": {}, "modalities": [], "labels": None,
           "cues": None, "examples": [], "phase": "one-pass"}

PAYLOADS = {  # each kind of allocation and loop a template can write
    "nested loops printing nothing": "{% for a in 'x'*100000 %}{% for b in 'x'*100000 %}"
                                     "{% endfor %}{% endfor %}",
    "range loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% set _ = i * j %}"
                   "{% endfor %}{% endfor %}",
    "center, folded at compile time": "{{ 'a'|center(1000000000) }}",
    "center": "{{ 'a'|center(10**9) }}",
    "list repeat": "{% set l=[1]*10**8 %}{{ l|length }}",
    "lipsum": "{{ lipsum(n=100000, html=False)|length }}",
    "power tower": "{{ 9**(9**9) > 1 }}",
    "left power": "{{ (9**9**9) > 1 }}",
    "string repeat": "{{ 'a'*10**9 }}",
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
                       "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "doubling with +": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
                       "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "list extend": "{% set l = [1] %}{% for i in range(40) %}{% set _ = l.extend(l) %}"
                   "{% endfor %}{{ l|length }}",
    "squaring ints": "{% set ns = namespace(x=10**1000) %}{% for i in range(30) %}"
                     "{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "exponential macro": "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}"
                         "{% endmacro %}{{ f(40) }}",
    "recursive loop": "{% for x in [1] recursive %}{{ loop([1,1]) }}{% endfor %}",
    "% with * width": "{{ '%*d' % (1000000000, 1) }}",
    "% width": "{{ '%1000000000d' % 1 }}",
    "format filter": "{{ '%1000000000d'|format(1) }}",
    "str.format width": "{{ '{:>1000000000}'.format(1) }}",
    "str.format nested width": "{{ '{:>{w}}'.format(1, w=10**9) }}",
    "ljust": "{{ 'a'.ljust(1000000000) }}",
    "replace": "{{ ('x'*100000)|replace('x', 'y'*100000) }}",
    "str.replace": "{{ ('x'*100000).replace('x', 'y'*100000) }}",
    "join filter on a generator": "{{ range(100000)|map('string')|join('x'*100000) }}",
    "str.join": "{{ ('x'*100000).join(range(100000)|map('string')) }}",
    "indent": "{{ ('x\n'*100000)|indent(100000) }}",
    "batch fill": "{{ [1]|batch(1000000000, 'x')|list|length }}",
    "slice": "{{ [1]|slice(1000000000)|list|length }}",
    "expandtabs": "{{ ('\t'*100000).expandtabs(100000) }}",
    "long output": "{% for i in range(100000) %}{{ 'x'*1000 }}{% endfor %}",
}
# what only the trial's kernel limits stop: one C-level operation on a value shared a million
# times (printing it builds a terabyte from a megabyte)
SHARED = "{% set x = 'x'*1000000 %}{% set y = [x]*1000000 %}{{ y }}"


def _template(tmp_path, source: str, name: str = "t"):
    path = tmp_path / f"{name}.j2"
    path.write_text(source)
    return load_template(str(path))


@pytest.mark.parametrize("name", PAYLOADS)
def test_each_payload_is_refused_or_finishes_within_5_s_and_1_gb(tmp_path, monkeypatch, name):
    monkeypatch.setattr(sandbox, "MAX_RENDER_S", 0.25)  # the deadline's reach, not its length
    template = _template(tmp_path, PAYLOADS[name])
    tracemalloc.start()
    started = time.monotonic()
    try:
        render(template, CONTEXT)
    except PromptError as err:  # one line, naming the template and the limit
        assert str(tmp_path) in str(err) and "\n" not in str(err)
        assert any(word in str(err) for word in ("refused", "took over", "RecursionError"))
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.monotonic() - started < 5
    assert peak < 1e9


def test_time_waiting_for_a_core_is_not_held_against_a_render(tmp_path, monkeypatch):
    # a prepare worker runs at idle priority: beside an engine using every core it can wait
    # seconds mid-render (a wall-clock deadline failed sound clips as 'prompt'); a wait
    # stands in for being descheduled, the loop for work
    monkeypatch.setattr(sandbox, "MAX_RENDER_S", 0.25)
    template = _template(tmp_path, "{{ clip.wait() }}{% for i in range(3) %}{{ i }}{% endfor %}")
    clip = {"wait": lambda: time.sleep(0.5) or "waited "}
    assert render(template, {**CONTEXT, "clip": clip}) == "waited 012"


def test_the_trial_refuses_what_the_sandbox_cannot_bound(tmp_path):
    with pytest.raises(PromptError, match=r"needed over 512 MiB in its trial; refused"):
        trial_render(_template(tmp_path, SHARED), [CONTEXT])


def test_the_trial_alarm_ends_a_render_whatever_it_does(tmp_path):
    slow = _template(tmp_path, PAYLOADS["nested loops printing nothing"])
    with pytest.raises(PromptError, match=r"rendering took over 0.5 s of CPU in its trial"):
        trial_render(slow, [CONTEXT], seconds=0.5)


def test_a_sound_template_passes_its_trial_and_renders_the_same(tmp_path):
    from tests.prompts.test_templates import context

    ours = load_template(shipped()[0])
    mine = _template(tmp_path, ours.source, "mine")
    assert not mine.shipped and ours.shipped
    clip = context(["video", "audio"], ["happy", "sad"])
    trial_render(mine, [clip])
    assert render(mine, clip) == render(ours, clip)


def test_sizes_within_the_limits_still_render(tmp_path):
    fine = _template(tmp_path, "{{ 'ab'*3 }} {{ 2**10 }} {{ 'a'|center(5) }}|{{ '%5d' % 3 }}|"
                               "{{ '{:>4}'.format(7) }}|{{ [1,2]|join('-') }}|{{ 'x' ~ 1 }}")
    assert render(fine, CONTEXT) == "ababab 1024   a  |    3|   7|1-2|x1"
