"""A user's template tried once in a child process under hard limits before a run or a preview
uses it.

The sandbox (`prompts.sandbox`) checks sizes before the work and the clock at every loop and
call, but one C-level operation can still outgrow what it was handed: printing a list that
holds one long list a million times builds terabytes from a few megabytes. The child renders
the template with the run's first clip in every phase the run uses, under an address-space
limit and a CPU-time alarm that the kernel enforces whatever the template does; only then does
the run plan with it. Shipped templates are ours and skip the trial.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from annotator.core.errors import PromptError

if TYPE_CHECKING:
    from prompts import Template

MAX_TRIAL_S = 5
"""CPU seconds the trial render may take, all phases together (the kernel ends it after)."""
MAX_TRIAL_BYTES = 512 << 20
"""Address space the trial's process may use (the interpreter itself takes about 40 MB)."""
_START_S = 120  # the child's imports, on a machine busy with a run


def trial_render(template: Template, contexts: list[dict], seconds: float = MAX_TRIAL_S,
                 max_bytes: int = MAX_TRIAL_BYTES) -> None:
    """Render the template with each context in a limited child; a PromptError if it fails,
    runs past `seconds` or needs more than `max_bytes` of address space."""
    origin = f"{template.tag} ({template.origin})"
    payload = json.dumps({"template": dataclasses.asdict(template), "contexts": contexts,
                          "seconds": seconds, "max_bytes": max_bytes}, default=str)
    try:
        done = subprocess.run([sys.executable, "-m", "prompts.isolate"], input=payload,
                              capture_output=True, text=True, timeout=_START_S + seconds)
    except subprocess.TimeoutExpired:
        raise PromptError(f"template {origin}: its trial render did not finish in "
                          f"{_START_S + seconds:g} s") from None
    if done.returncode == -signal.SIGPROF:  # the trial's alarm went off
        raise PromptError(f"template {origin}: rendering took over {seconds:g} s of CPU in its "
                          "trial; refused")
    answer = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
    if not answer:  # killed, or died allocating: the address-space limit
        raise PromptError(f"template {origin}: rendering needed over {max_bytes >> 20} MiB "
                          f"in its trial (exit {done.returncode}); refused")
    error = json.loads(answer[0])["error"]
    if error:
        raise PromptError(error)


def _child() -> None:
    import resource

    from prompts import Phase, Template, render

    job = json.loads(sys.stdin.read())
    resource.setrlimit(resource.RLIMIT_AS, (job["max_bytes"], job["max_bytes"]))
    # the kernel ends the process, GIL or not; on CPU time, so waiting for a core on a machine
    # busy with a run never fails a sound template
    signal.signal(signal.SIGPROF, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_PROF, job["seconds"])
    fields = job["template"]
    template = Template(**{**fields, "phases": tuple(Phase(**p) for p in fields["phases"])})
    error = None
    try:
        for context in job["contexts"]:
            render(template, context)
    except PromptError as err:
        error = str(err)
    except MemoryError:
        error = (f"template {template.tag} ({template.origin}): rendering needed over "
                 f"{job['max_bytes'] >> 20} MiB in its trial; refused")
    print(json.dumps({"error": error}))


if __name__ == "__main__":
    _child()
