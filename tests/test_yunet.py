"""The bundled YuNet detector, FER2013 framing and aligned crops, on real photos."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_sdk import detect
from fer_sdk.classifier import Classifier, Face
from fer_sdk.detect import HaarDetector, bundled_yunet, get_detector
from fer_sdk.detection import DETECTION_COLUMNS, Detection
from fer_sdk.errors import InvalidInputError, ModelError
from fer_sdk.framing import FER2013, Framing, aligned_crop, frame_box, similarity
from fer_sdk.images import load_image
from fer_sdk.yunet import YuNetDetector, nms

SAMPLES = Path(__file__).resolve().parents[1] / "fer_sdk" / "samples"
SHARED_YUNET = Path(__file__).resolve().parents[2] / "shared" / "models" / "yunet"
WILD = Path(__file__).resolve().parents[2] / "shared" / "data" / "wild"


@pytest.fixture(scope="module")
def yunet():
    return bundled_yunet()


def _eye_angle(det: Detection) -> float:
    (rx, ry), (lx, ly) = det.landmarks[0], det.landmarks[1]
    return math.degrees(math.atan2(ly - ry, lx - rx))


def _tiled(image: np.ndarray, n: int) -> np.ndarray:
    return np.vstack([np.hstack([image] * n)] * n)


def test_bundled_detector_is_pinned_and_licensed():
    manifest = json.loads((detect.DETECTORS_DIR / "manifest.json").read_text())
    entry = manifest["detectors"]["yunet"]
    data = (detect.DETECTORS_DIR / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert entry["size_bytes"] == len(data)
    assert "Apache License" in (detect.DETECTORS_DIR / "LICENSE-yunet.txt").read_text()
    assert "0047ac24afb1" in (detect.DETECTORS_DIR / "README.md").read_text()


def test_tampered_bundled_detector_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "detectors"
    shutil.copytree(detect.DETECTORS_DIR, folder)
    onnx = folder / "yunet_s_dynamic.onnx"
    data = bytearray(onnx.read_bytes())
    data[-10] ^= 0xFF
    onnx.write_bytes(bytes(data))
    monkeypatch.setattr(detect, "DETECTORS_DIR", folder)
    with pytest.raises(ModelError, match="sha256 mismatch.*reinstall"):
        get_detector("yunet")
    (folder / "manifest.json").unlink()
    with pytest.raises(ModelError, match="bundled face detector is missing"):
        get_detector(None)


def test_two_faces_with_scores_and_plausible_landmarks(yunet):
    found = yunet.detect_faces(load_image(SAMPLES / "two_faces.jpg"))
    assert len(found) == 2
    assert found[0].box[0] < found[1].box[0]  # sorted left to right
    for det in found:
        x, y, w, h = det.box
        assert 0.6 <= det.score <= 1
        assert len(det.landmarks) == 5
        for px, py in det.landmarks:
            assert x - 0.1 * w <= px <= x + 1.1 * w and y - 0.1 * h <= py <= y + 1.1 * h
        (rex, rey), (lex, ley), (nx, ny), (rmx, rmy), (lmx, lmy) = det.landmarks
        assert rex < nx < lex and rmx < lmx  # the person's right eye is on the photo's left
        assert max(rey, ley) < ny < min(rmy, lmy)  # eyes above the nose above the mouth


@pytest.mark.skipif(not (SHARED_YUNET / "yunet_s_640_640.onnx").is_file(), reason="../shared/models/yunet absent")
def test_decoding_agrees_with_opencv_face_detector_yn(yunet):
    image = load_image(SAMPLES / "two_faces.jpg")
    cv = cv2.FaceDetectorYN.create(
        str(SHARED_YUNET / "yunet_s_640_640.onnx"), "", (image.shape[1], image.shape[0]), 0.6, 0.3, 5000
    )
    _, theirs = cv.detect(image)
    ours = yunet.detect_faces(image)
    assert len(ours) == len(theirs) == 2
    theirs = sorted(theirs.tolist())
    for det, ref in zip(ours, theirs):
        iou = _box_iou(det.box, ref[:4])
        assert iou > 0.85, (det.box, ref[:4])
        err = np.abs(np.asarray(det.landmarks) - np.asarray(ref[4:14]).reshape(5, 2)).max()
        assert err < 0.06 * det.box[2]
        assert abs(det.score - ref[14]) < 0.05


def _box_iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


@pytest.mark.skipif(not (SHARED_YUNET / "yunet_s_640_640.onnx").is_file(), reason="../shared/models/yunet absent")
def test_a_users_fixed_size_yunet_file_works_through_the_registry():
    image = load_image(SAMPLES / "two_faces.jpg")
    own = get_detector(SHARED_YUNET / "yunet_s_640_640.onnx", min_score=0.6)
    assert isinstance(own, YuNetDetector) and own._fixed == (640, 640)
    assert len(own.detect_faces(image)) == 2
    assert len(own.detect_faces(cv2.resize(image, (1334, 720)))) == 2  # letterboxed into 640x640
    # its batch dimension is fixed at 1: several photos go one call each
    assert [len(r) for r in own.detect_faces_batch([image, image, image])] == [2, 2, 2]
    faces = Classifier("deep-int8", detector=own).analyze_many([image] * 3, workers=1)
    assert [len(f) for f in faces] == [2, 2, 2]


def test_many_faces_rotated_faces_and_tight_crops(yunet):
    astronaut = load_image(SAMPLES / "astronaut.jpg")
    assert len(yunet.detect_faces(_tiled(astronaut, 3))) == 9
    (face,) = yunet.detect_faces(astronaut)
    h, w = astronaut.shape[:2]
    center = (face.box[0] + face.box[2] / 2, face.box[1] + face.box[3] / 2)
    rotated = cv2.warpAffine(astronaut, cv2.getRotationMatrix2D(center, 30, 1.0), (w, h), borderMode=cv2.BORDER_REFLECT)
    (tilted,) = yunet.detect_faces(rotated)
    # found, and the landmarks turn the same way (YuNet's landmarks under-report a tilt: -7 degrees here)
    assert _eye_angle(tilted) < _eye_angle(face) - 3
    x, y, bw, bh = face.box
    tight = astronaut[y : y + bh, x : x + bw]  # the face fills the whole frame
    assert len(yunet.detect_faces(tight)) == 1


def test_aligned_crops_have_level_eyes_where_fer2013_has_them(yunet):
    astronaut = load_image(SAMPLES / "astronaut.jpg")
    h, w = astronaut.shape[:2]
    rotated = cv2.warpAffine(
        astronaut, cv2.getRotationMatrix2D((w / 2, h / 2), 25, 1.0), (w, h), borderMode=cv2.BORDER_REFLECT
    )
    (det,) = yunet.detect_faces(rotated)
    crop = aligned_crop(rotated, det.landmarks, FER2013)
    assert crop.shape[0] == crop.shape[1] and crop.shape[0] > 48
    # find the face again in the crop (framed in a border, as FER2013 faces were measured)
    pad = crop.shape[0] // 2
    again = yunet.detect_faces(cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_REPLICATE))
    assert again
    best = max(again, key=lambda d: d.score)
    assert abs(_eye_angle(best)) < 5
    eyes = (np.asarray(best.landmarks[:2]) - pad) / crop.shape[0]
    assert np.abs(eyes - np.asarray(FER2013.landmarks[:2])).max() < 0.06


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = math.radians(20), 1.7, np.array([5.0, -3.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = scale * src @ rot.T + shift
    matrix = similarity(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)
    with pytest.raises(InvalidInputError, match="coincide"):
        similarity(np.ones((5, 2)), dst)


def test_frame_box_inverts_the_measured_box_framing():
    for box_in_frame in (FER2013.yunet_box, FER2013.haar_box):
        side = 200.0
        box = [20 + box_in_frame[0] * side, 30 + box_in_frame[1] * side, box_in_frame[2] * side, box_in_frame[3] * side]
        np.testing.assert_allclose(frame_box(box, box_in_frame), (20, 30, side, side), atol=1e-9)


def test_framing_metadata_is_read_and_checked():
    assert Framing.from_metadata({}) is FER2013
    assert Framing.from_metadata({"framing": FER2013.to_dict()}) == FER2013
    bad = FER2013.to_dict()
    bad["landmarks"] = bad["landmarks"][:4]
    with pytest.raises(ModelError, match="framing"):
        Framing.from_metadata({"framing": bad}, "m.onnx")
    with pytest.raises(ModelError, match="framing"):
        Framing.from_metadata({"framing": {"landmarks": [[float("inf"), 0]] * 5}})


def test_batches_give_what_single_photos_give(yunet):
    a, b = load_image(SAMPLES / "two_faces.jpg"), load_image(SAMPLES / "grace_hopper.jpg")
    batch = yunet.detect_faces_batch([a, b, a, cv2.cvtColor(b, cv2.COLOR_BGR2GRAY)])
    assert [len(r) for r in batch] == [2, 1, 2, 1]
    for got, image in zip(batch[:3], (a, b, a)):
        single = yunet.detect_faces(image)
        assert [d.box for d in got] == [d.box for d in single]
        np.testing.assert_allclose([d.score for d in got], [d.score for d in single], atol=1e-5)


def test_large_photos_are_searched_downscaled_and_boxes_come_back_in_photo_pixels(yunet):
    image = load_image(SAMPLES / "astronaut.jpg")
    (small,) = yunet.detect_faces(image)
    big = cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_LINEAR)
    (large,) = yunet.detect_faces(big)
    assert _box_iou([v / 4 for v in large.box], small.box) > 0.8


def test_min_score_min_face_and_bad_options(yunet):
    image = load_image(SAMPLES / "two_faces.jpg")
    widths = sorted(d.box[2] for d in yunet.detect_faces(image))
    assert len(get_detector("yunet", min_face=widths[0] + 1).detect_faces(image)) == 1
    assert get_detector("yunet", min_score=0.99).detect_faces(image) == []
    for bad in ({"min_score": 1.5}, {"min_score": True}, {"min_face": -1}, {"max_side": 10}):
        with pytest.raises(InvalidInputError):
            bundled_yunet(**bad)
    with pytest.raises(InvalidInputError, match="Haar cascade gives no scores"):
        get_detector("haar", min_score=0.5)
    assert get_detector("haar", min_face=40).min_size == (40, 40)
    with pytest.raises(InvalidInputError, match="set them on your detector"):
        get_detector(yunet, min_score=0.5)
    with pytest.raises(ModelError, match="not a YuNet face detector"):
        YuNetDetector(SAMPLES.parent / "models" / "deep-int8.onnx")


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 10, 10]], float)
    assert nms(boxes, np.array([0.5, 0.9, 0.7]), 0.3, 10) == [1, 2]


def test_detector_survives_pickling(yunet):
    copy = pickle.loads(pickle.dumps(yunet))
    image = load_image(SAMPLES / "two_faces.jpg")
    assert [d.box for d in copy.detect_faces(image)] == [d.box for d in yunet.detect_faces(image)]
    assert copy.sha256 == yunet.sha256
    tuned = pickle.loads(pickle.dumps(bundled_yunet(min_score=0.9, min_face=70, max_side=320, threads=2)))
    assert (tuned.min_score, tuned.min_face, tuned.max_side, tuned.threads) == (0.9, 70, 320, 2)
    assert len(tuned.detect_faces(image)) == 1  # the smaller face is under 70 px


def test_a_corrupt_yunet_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "mine.onnx"
    path.write_bytes(b"not an onnx model at all")
    with pytest.raises(ModelError, match=r"mine\.onnx is not a loadable ONNX model.*face_detection_yunet"):
        YuNetDetector(path)


def test_classifier_faces_carry_landmarks_and_scores():
    clf = Classifier("deep-int8")
    assert isinstance(clf.detector, YuNetDetector)
    faces = clf.analyze(SAMPLES / "two_faces.jpg")
    assert len(faces) == 2 and all(len(f.landmarks) == 5 and f.detection_score > 0.6 for f in faces)
    row = faces[0].to_dict()
    assert len(row["landmarks"]) == 5 and row["detection_score"] == pytest.approx(faces[0].detection_score)
    assert len(faces[0].detection_values()) == len(DETECTION_COLUMNS)
    (haar_face, *_) = Classifier("deep-int8", detector="haar").analyze(SAMPLES / "grace_hopper.jpg")
    assert haar_face.landmarks is None and haar_face.detection_score is None
    assert haar_face.to_dict()["landmarks"] is None
    assert Face((0, 0, 1, 1), {}, "happy", 1.0).detection_values() == [None] * len(DETECTION_COLUMNS)


def test_crop_rules_differ_and_follow_the_options():
    image = load_image(SAMPLES / "grace_hopper.jpg")
    aligned = Classifier("deep-int8")
    (det,) = aligned.detect(image)
    framed = Classifier("deep-int8", align=False)
    margin = Classifier("deep-int8", align=False, face_margin=0.0)
    _, _, w, h = det.box
    assert margin.crop(image, det).shape[:2] == (h, w)  # the bare box
    side = framed.crop(image, det).shape[0]
    assert side == pytest.approx((w / FER2013.yunet_box[2] + h / FER2013.yunet_box[3]) / 2, abs=2)
    a = aligned.crop(image, det)
    assert a.shape[0] == a.shape[1] and not np.array_equal(a.shape, margin.crop(image, det).shape)
    wider = Classifier("deep-int8", face_margin=0.2).crop(image, det)
    assert wider.shape[0] == pytest.approx(a.shape[0] * 1.4, rel=0.03)
    box_only = Classifier("deep-int8", detector=lambda img: [det.box])  # no landmarks: the box rule
    got = box_only.crop(image, Detection(det.box)).shape[:2]
    assert np.abs(np.subtract(got, (h * 1.2, w * 1.2))).max() <= 1
    with pytest.raises(InvalidInputError, match="face_margin"):
        Classifier("deep-int8", face_margin=-0.1)
    with pytest.raises(InvalidInputError, match="align"):
        Classifier("deep-int8", align="yes")


def test_analyze_many_keeps_one_pool_for_the_classifier_and_matches_analyze():
    photos = sorted(SAMPLES.glob("*.jpg"))
    with Classifier("deep-int8", workers=2) as clf:
        first = clf.analyze_many(photos)
        pool = clf._pool
        second = clf.analyze_many(photos[::-1])
        assert pool is not None and clf._pool is pool
        assert [[f.box for f in r] for r in second[::-1]] == [[f.box for f in r] for r in first]
        single = [clf.analyze(p) for p in photos]
        for many, one in zip(first, single):
            np.testing.assert_allclose([f.score for f in many], [f.score for f in one], atol=1e-5)
    assert clf._pool is None


def test_custom_detectors_may_return_detections_with_landmarks():
    image = load_image(SAMPLES / "grace_hopper.jpg")
    (real,) = bundled_yunet().detect_faces(image)
    clf = Classifier("deep-int8", detector=lambda img: [real])
    (face,) = clf.analyze(image)
    assert face.landmarks == real.landmarks and face.detection_score == real.score


def _wild_sample(step: int) -> list[Path]:
    import csv

    with open(WILD / "labels.csv", newline="") as fh:
        names = [row["image"] for row in csv.DictReader(fh)]
    return [WILD / "images" / n for n in names[::step]]


@pytest.mark.skipif(not WILD.is_dir(), reason="../shared/data/wild absent")
def test_faces_that_fill_the_frame_are_found_in_wild_photos(yunet):
    photos = _wild_sample(5)  # 301 of the 1,505 (the slow benchmark test runs them all)
    found = sum(1 for p in photos if yunet.detect_faces(load_image(p)))
    assert found / len(photos) >= 0.99
    haar = HaarDetector()
    assert sum(1 for p in photos if haar.detect(load_image(p))) < found
