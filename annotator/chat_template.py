"""A model folder's chat template rendered as transformers' `apply_chat_template` renders it,
without transformers: loading a tokenizer imports transformers and torch, 8.6 s of a cold
run's planning here, to render a template once (its chat frames).

transformers renders the template with jinja2 in an immutable sandbox (trim_blocks,
lstrip_blocks, loop controls, its `{% generation %}` tag), its own `tojson`,
`raise_exception` and `strftime_now`, and the tokenizer's named special tokens as variables.
Where a folder keeps its template or those tokens in a way this does not read the same
(several named templates; a token the template uses that tokenizer_config.json does not
give, or a legacy special_tokens_map.json), `chat_template` gives None and the caller loads
the tokenizer. Tests compare the two.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")
"""The named special tokens a template sees as variables (transformers' `special_tokens_map`)."""


class ChatTemplate:
    """Renders a conversation to the prompt text, as the folder's tokenizer would."""

    def __init__(self, source: str, special_tokens: dict[str, str]) -> None:
        self.template = _environment().from_string(source)
        self.special_tokens = special_tokens

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        if tokenize:
            raise ValueError("a ChatTemplate renders text; tokenizing needs the tokenizer")
        return self.template.render(messages=messages, tools=None, documents=None,
                                    add_generation_prompt=add_generation_prompt,
                                    **self.special_tokens)


@functools.lru_cache(maxsize=4)
def chat_template(folder: str) -> ChatTemplate | None:
    """The chat template of the tokenizer in `folder`, or None where only transformers reads
    it faithfully (or the folder has none: the tokenizer then says so)."""
    root = Path(folder)
    config_file = root / "tokenizer_config.json"
    if not config_file.is_file() or (root / "additional_chat_templates").exists():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    source = config.get("chat_template")
    if (root / "chat_template.jinja").is_file():  # the file wins, as in transformers
        source = (root / "chat_template.jinja").read_text(encoding="utf-8")
    if not isinstance(source, str):  # none, or a list of named templates
        return None
    used = [name for name in SPECIAL_TOKENS if name in source]
    # a token the config does not name may come from the tokenizer's class (its defaults), a
    # legacy special_tokens_map.json may override the config: the tokenizer knows
    if used and ((root / "special_tokens_map.json").exists()
                 or any(config.get(name) is None for name in used)):
        return None
    tokens = {name: _content(config[name]) for name in SPECIAL_TOKENS
              if config.get(name) is not None}
    return ChatTemplate(source, tokens)


def _content(token) -> str:
    """A special token as tokenizer_config.json keeps it: its text, or an AddedToken's dict."""
    return token["content"] if isinstance(token, dict) else str(token)


@functools.cache
def _environment():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks the assistant's part for training
        masks; rendered, it is its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body
                                          ).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # not jinja's own, which escapes HTML characters
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env
