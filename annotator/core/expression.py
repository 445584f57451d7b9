"""Facial-expression measures from 68 face landmarks, and the expression units they show.

The landmarks come from dlib's shape predictor (the 68-point iBUG model that the
`face-recognition-models` wheel ships: no download at run time, about a millisecond a face on
one CPU thread), placed in the face boxes that the cues' cascade already found. Each measure
is a geometric stand-in for a FACS action unit, in units of the inter-ocular distance so that
it does not depend on the face's size, with the face turned upright first (head roll):

    lip_corner_lift  AU12 (smile) when positive, AU15 (corners pulled down) when negative:
                     how far the mouth's corners sit above the middle of the lips
    mouth_open       AU25/26 (lips apart, jaw drop): the gap between the inner lips
    brow_eye_gap     AU4 (brow lowerer, a frown) when small, AU1+2 (brows raised) when large
    eye_openness     AU43 (eyes closed) when small: the eye aspect ratio
                     (Soukupova & Cech 2016)

Each measure is the clip's median over the frames with a face; `peak_frame` is the frame where
the shown units are strongest (the key frame of MERR and MER-Factory). The thresholds that
make a measure an expression unit (`UNITS`) sit beside the words a description uses to claim
it: the prompt lists the shown units, and the audit checks claims against them.

The 68-point model is trained on iBUG 300-W, whose licence excludes commercial use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# a cascade box (x, y, w, h) as dlib's own face detector would draw it: measured on 18 faces
# of the demo portraits and face-api's sample photos (median offsets, in box widths)
BOX_SHIFT_X, BOX_SHIFT_Y, BOX_SCALE = 0.06, 0.11, 0.88
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)
BROWS = [18, 19, 20, 23, 24, 25]  # the middle of each brow
UPPER_LIDS = [37, 38, 43, 44]
MOUTH_CORNERS = [48, 54]
INNER_LIPS = (62, 66)  # the middle of the upper and the lower inner lip
MEASURES = ("lip_corner_lift", "mouth_open", "brow_eye_gap", "eye_openness")
"""What `frame_measures` gives per frame, the clip keeping each one's median (cues.FACE
declares them in this order; a test holds the two together)."""


@dataclass(frozen=True)
class Unit:
    """An expression unit: how a description claims it, and when the measures show it."""

    name: str
    au: str
    """The FACS action unit(s) it stands for."""
    measure: str
    above: float | None = None
    """Shown when the measure is above this (or below `below`)."""
    below: float | None = None
    words: str = ""
    """A regular expression (RE2) of the words that claim it in a description's face text."""
    seen_in: str = ""
    """The emotions whose prototypes (EMFACS) include it, as the prompt names them."""

    def shown(self, value: float | None) -> bool:
        return value is not None and self.strength(value) > 0

    def strength(self, value: float) -> float:
        """How far past its threshold the measure is (0 when not shown)."""
        if self.above is not None:
            return max(0.0, value - self.above)
        return max(0.0, self.below - value)

    def sql(self, value: str) -> str:
        """`shown` as a DuckDB condition on the SQL expression `value`."""
        return f"{value} > {self.above}" if self.above is not None else \
            f"{value} < {self.below}"


BROW = r"(brows?|eyebrows?)"
UNITS = (
    Unit("smile", "AU12", "lip_corner_lift", above=0.06,
         words=r"\b(smil\w*|grin\w*|beam\w*)\b",
         seen_in="happiness"),
    Unit("lip_corners_down", "AU15", "lip_corner_lift", below=-0.08,
         words=r"\b(down-?turned|(mouth corners?|corners? of (the|his|her|their) mouth) "
               r"(turn\w* |pull\w* )?down|pout\w*)\b",
         seen_in="sadness or disgust"),
    Unit("brows_lowered", "AU4", "brow_eye_gap", below=0.18,
         words=rf"\b(frown\w*|furrow\w*|scowl\w*|knit\w* {BROW}|{BROW} (are )?"
               r"(knit\w*|drawn|lowered))\b",
         seen_in="anger or sadness"),
    Unit("brows_raised", "AU1+2", "brow_eye_gap", above=0.45,
         words=rf"\b(raised {BROW}|{BROW} (are )?raised|rais\w* (his|her|their) {BROW})\b",
         seen_in="surprise or fear"),
    Unit("mouth_open", "AU25+26", "mouth_open", above=0.35,
         words=r"\b(open mouth|mouth (is |hangs |falls |drops )?(wide )?open|jaw drop\w*|"
               r"gaping|agape)\b",
         seen_in="surprise or fear"),
    Unit("eyes_closed", "AU43", "eye_openness", below=0.13,
         words=r"\b(eyes? (are |were )?(closed|shut)|clos\w* (his|her|their) eyes)\b"),
)
"""Thresholds from 26 faces measured here (the demo portraits, face-api's sample photos):
a neutral face (Grace Hopper) lifts its lip corners 0.01-0.03, a closed-mouth smile 0.06-0.12
and a broad one 0.12-0.18; brows sit 0.21-0.41 above the lids, eyes open at 0.22-0.44
(0.15 looking down); a talking or smiling mouth opens to 0.1-0.3, so only a wider gap counts
as a jaw drop."""


def landmarks(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The 68 (x, y) landmarks of the face in a cascade `box` of a grey frame."""
    x, y, w, _ = box
    left, top = x + BOX_SHIFT_X * w, y + BOX_SHIFT_Y * w
    side = BOX_SCALE * w
    import dlib

    shape = _predictor()(np.ascontiguousarray(gray), dlib.rectangle(
        int(left), int(top), int(left + side), int(top + side)))
    return np.array([(p.x, p.y) for p in shape.parts()], np.float64)


def frame_measures(points: np.ndarray) -> dict[str, float]:
    """The measures of one face's 68 landmarks (upright, in inter-ocular distances)."""
    left, right = points[LEFT_EYE].mean(axis=0), points[RIGHT_EYE].mean(axis=0)
    dx, dy = right - left
    distance = float(np.hypot(dx, dy)) or 1.0
    cos, sin = dx / distance, dy / distance
    upright = (points - left) @ np.array([[cos, -sin], [sin, cos]]) / distance  # y down
    lips_middle = upright[list(INNER_LIPS), 1].mean()
    return {
        "lip_corner_lift": float(lips_middle - upright[MOUTH_CORNERS, 1].mean()),
        "mouth_open": float(upright[INNER_LIPS[1], 1] - upright[INNER_LIPS[0], 1]),
        "brow_eye_gap": float(upright[UPPER_LIDS, 1].mean() - upright[BROWS, 1].mean()),
        "eye_openness": float(np.mean([_aspect(upright[eye]) for eye in (LEFT_EYE, RIGHT_EYE)])),
    }


def face_cues(gray: np.ndarray, boxes: list[tuple | None]) -> dict:
    """The clip's expression cues from its grey frames [T, H, W] and each frame's largest
    face box (None where no face was found)."""
    per_frame = {i: frame_measures(landmarks(gray[i], box))
                 for i, box in enumerate(boxes) if box is not None}
    medians = {n: round(float(np.median([m[n] for m in per_frame.values()])), 3)
               if per_frame else None for n in MEASURES}
    strength = {i: sum(u.strength(m[u.measure]) for u in UNITS) for i, m in per_frame.items()}
    peak = max(strength, key=strength.get) if strength and max(strength.values()) > 0 else None
    return {"landmarked_frames": len(per_frame), **medians, "peak_frame": peak}


def shown_sql(face: str) -> str:
    """A DuckDB expression: the list of units that the face cues struct `face` shows (NULL
    where no face was landmarked), for the audit."""
    listed = _units_where({u.name: u.sql(f"{face}.{u.measure}") for u in UNITS})
    return f"CASE WHEN coalesce({face}.landmarked_frames, 0) > 0 THEN {listed} END"


def claimed_sql(text: str) -> str:
    """A DuckDB expression: the list of units that the lower-cased text `text` claims."""
    return _units_where({u.name: f"regexp_matches({text}, '{u.words}')" for u in UNITS})


def _units_where(conditions: dict[str, str]) -> str:
    """A DuckDB list of the unit names whose condition holds, in UNITS' order."""
    cases = ", ".join(f"CASE WHEN {c} THEN '{name}' END" for name, c in conditions.items())
    return f"list_filter([{cases}], lambda x: x IS NOT NULL)"


def shown_units(face: dict | None) -> list[str]:
    """The expression units a clip's face cues show."""
    if not face or not face.get("landmarked_frames"):
        return []
    return [u.name for u in UNITS if u.shown(face.get(u.measure))]


def in_words(face: dict) -> str:
    """What a clip's face cues show, as a prompt says it: "smile (AU12, seen in happiness)"
    per unit shown, or that the face is neutral."""
    shown = shown_units(face)
    units = [u for u in UNITS if u.name in shown]
    return "; ".join(f"{u.name.replace('_', ' ')} ({u.au}"
                     + (f", seen in {u.seen_in})" if u.seen_in else ")") for u in units
                     ) or "none: a neutral face"


def _aspect(eye: np.ndarray) -> float:
    """Eye aspect ratio: the lids' two gaps over the eye's width."""
    width = np.linalg.norm(eye[0] - eye[3]) or 1.0
    return float((np.linalg.norm(eye[1] - eye[5]) + np.linalg.norm(eye[2] - eye[4]))
                 / (2 * width))


_shape_predictor = None


def _predictor():
    global _shape_predictor
    if _shape_predictor is None:
        import importlib.util

        import dlib

        # the model file, found without importing its package (which imports pkg_resources:
        # 75 ms of a worker's first clip, and a deprecation warning)
        package = importlib.util.find_spec("face_recognition_models")
        folder = Path(package.submodule_search_locations[0])
        _shape_predictor = dlib.shape_predictor(
            str(folder / "models" / "shape_predictor_68_face_landmarks.dat"))
    return _shape_predictor
