"""The turn `run --refine N` adds when the gate (annotator/stages/gate.py) finds an answer's
claims against what was measured: what fired, then the request for a corrected JSON."""

REFINE_INTRO = "Check your answer against what was measured from the clip:"
REFINE_ASK = ("Write the corrected answer as one JSON object with the same fields: change what "
              "the measurements contradict, and keep the rest.")


def refine_text(messages: list[str]) -> str:
    """The user turn of a refinement round, one line per rule that fired."""
    return "\n".join([REFINE_INTRO, *(f"- {m}" for m in messages), REFINE_ASK])
