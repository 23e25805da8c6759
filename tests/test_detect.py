"""fer_sdk.detect: Haar on the bundled photos, threads, YuNet error paths, get_detector and box checks."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_sdk import detect
from fer_sdk.detect import (
    CallableDetector,
    FaceDetector,
    HaarDetector,
    YuNetDetector,
    get_detector,
    normalize_boxes,
)
from fer_sdk.errors import DependencyError, InvalidInputError, ModelError
from fer_sdk.images import load_image
from fer_sdk.samples import sample_path

OPENCV_FIX = "opencv-python-headless>=4.9,<5"


@pytest.fixture(scope="module")
def haar() -> HaarDetector:
    return HaarDetector()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return load_image(sample_path("astronaut.jpg"))


# ----------------------------------------------------------------------------------------- Haar


def test_haar_finds_exactly_one_face_on_astronaut(haar, astronaut):
    boxes = haar.detect(astronaut)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert all(type(v) is int for v in boxes[0])
    # Eileen Collins' face sits around (225, 115) in the 512x512 portrait
    assert x < 225 < x + w and y < 115 < y + h and 60 <= w <= 160
    assert haar.detect(cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)) == boxes  # gray input, same boxes


def test_haar_two_faces_sorted_left_to_right(haar):
    boxes = haar.detect(load_image(sample_path("two_faces.jpg")))
    assert len(boxes) == 2 and boxes[0][0] < boxes[1][0]
    assert boxes == sorted(boxes)


def test_haar_no_face_and_tiny_images(haar):
    assert haar.detect(np.zeros((200, 200, 3), np.uint8)) == []
    assert haar.detect(np.full((1, 1), 255, np.uint8)) == []


def test_haar_rejects_bad_images(haar):
    with pytest.raises(InvalidInputError, match="detect: image"):
        haar.detect(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(InvalidInputError, match="NaN"):
        haar.detect(np.full((10, 10), np.nan))


def test_haar_is_safe_across_threads(haar, astronaut):
    expected = haar.detect(astronaut)
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    expected_small = haar.detect(small)
    results, instances, errors = [], set(), []

    def work():
        try:
            for image, want in ((astronaut, expected), (small, expected_small), (astronaut, expected)):
                results.append(haar.detect(image) == want)
            instances.add(id(haar._instance()))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below; a thread would swallow it
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 12 and all(results)
    assert len(instances) == 4  # one CascadeClassifier per thread


def test_haar_downscales_large_photos_and_maps_boxes_back(haar, astronaut):
    """A 1920x1080 photo is searched at max_side; boxes come back in the photo's own pixels."""
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    photo = cv2.copyMakeBorder(big, 28, 28, 448, 448, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    assert photo.shape[:2] == (1080, 1920)
    boxes = haar.detect(photo)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    # the face centre (225, 115) of the 512 px portrait, scaled x2 and shifted by the padding
    assert x < 448 + 450 < x + w and y < 28 + 230 < y + h and 120 <= w <= 320
    full = HaarDetector(max_side=None).detect(photo)
    assert any(abs(fx - x) < 0.15 * w and abs(fw - w) < 0.3 * w for fx, _, fw, _ in full)
    # min_size stays in photo pixels: a face ~200 px wide is dropped when min_size asks for 400
    assert HaarDetector(min_size=(400, 400)).detect(photo) == []
    assert "max_side=960" in repr(haar) and HaarDetector(max_side=2000).detect(astronaut) == haar.detect(astronaut)


def test_haar_pickles(haar, astronaut):
    clone = pickle.loads(pickle.dumps(haar))
    assert clone.detect(astronaut) == haar.detect(astronaut)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale_factor": 1.0},
        {"scale_factor": "1.1"},
        {"min_neighbors": -1},
        {"min_size": (0, 30)},
        {"min_size": 30},
        {"max_side": 10},
        {"max_side": 960.0},
        {"max_side": True},
    ],
)
def test_haar_bad_parameters(kwargs):
    with pytest.raises(InvalidInputError, match="HaarDetector"):
        HaarDetector(**kwargs)


def test_haar_without_cv2_data(monkeypatch):
    monkeypatch.delattr(cv2, "data")
    with pytest.raises(DependencyError, match=OPENCV_FIX):
        HaarDetector()


def test_haar_without_cascade_classifier(monkeypatch):
    monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(DependencyError, match=OPENCV_FIX):
        HaarDetector()


def test_haar_without_the_xml(monkeypatch, tmp_path):
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    with pytest.raises(DependencyError, match=rf"haarcascade_frontalface_default\.xml is missing.*{OPENCV_FIX}"):
        HaarDetector()


@pytest.mark.parametrize("content", [b"<opencv_storage><x>1</x></opencv_storage>", b"\x00garbage"])
def test_haar_with_a_broken_xml(monkeypatch, tmp_path, content):
    (tmp_path / detect.HAAR_CASCADE).write_bytes(content)
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    with pytest.raises(DependencyError, match=OPENCV_FIX):
        HaarDetector()


# ---------------------------------------------------------------------------------------- YuNet


def test_yunet_missing_file(tmp_path):
    with pytest.raises(ModelError, match=r"does not exist.*detector='yunet'.*face_detection_yunet_2023mar\.onnx"):
        YuNetDetector(tmp_path / "face_detection_yunet_2023mar.onnx")
    with pytest.raises(ModelError, match="is a directory"):
        YuNetDetector(tmp_path)


def test_yunet_invalid_file(tmp_path):
    path = tmp_path / "fake.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError, match=r"fake\.onnx is not a loadable ONNX model.*detector='yunet'"):
        YuNetDetector(path)


def test_yunet_valid_onnx_that_is_not_yunet(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, None, None])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "relu.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=r"relu\.onnx is not a YuNet face detector.*missing outputs.*cls_8"):
        YuNetDetector(path)


@pytest.mark.parametrize("kwargs", [{"min_score": 1.5}, {"nms_threshold": -0.1}, {"top_k": 0}, {"min_face": 2.5}])
def test_yunet_bad_parameters(tmp_path, kwargs):
    with pytest.raises(InvalidInputError, match="YuNetDetector"):
        YuNetDetector(tmp_path / "x.onnx", **kwargs)


# ---------------------------------------------------------------------------------- get_detector


def test_get_detector_builtin_specs(haar, tmp_path):
    assert isinstance(get_detector(), YuNetDetector) and isinstance(get_detector(" YuNet "), YuNetDetector)
    assert isinstance(get_detector("haar"), HaarDetector) and isinstance(get_detector(" HAAR "), HaarDetector)
    assert get_detector(haar) is haar
    assert isinstance(haar, FaceDetector)
    with pytest.raises(ModelError, match="does not exist.*face_detection_yunet_2023mar.onnx"):
        get_detector(str(tmp_path / "yunet.onnx"))
    with pytest.raises(ModelError, match="does not exist"):
        get_detector(tmp_path / "YUNET.ONNX")


def test_get_detector_wraps_objects_and_callables(astronaut):
    class Fixed:
        def detect(self, image):
            return [(300.4, 10, 20.6, 20), (5, 400, 30, 30), (500, 500, 100, 100)]

    wrapped = get_detector(Fixed())
    assert isinstance(wrapped, CallableDetector) and isinstance(wrapped, FaceDetector)
    # rounded to ints, clipped to the 512x512 image, sorted left to right
    assert wrapped.detect(astronaut) == [(5, 400, 30, 30), (300, 10, 21, 20), (500, 500, 12, 12)]
    seen = []
    fn = get_detector(lambda image: seen.append(image.shape) or np.array([[1, 2, 3, 4]], np.float32))
    assert fn.detect(astronaut[:, :, :1]) == [(1, 2, 3, 4)] and seen == [(512, 512)]
    assert get_detector(lambda image: None).detect(astronaut) == []


@pytest.mark.parametrize(
    "output",
    [[(1, 2, 3)], [(1, 2, 0, 4)], [("a", 2, 3, 4)], [(1, 2, float("inf"), 4)], 7, np.zeros((1, 15))],
)
def test_wrapped_detector_output_is_checked(astronaut, output):
    with pytest.raises(InvalidInputError, match="face detector"):
        get_detector(lambda image: output).detect(astronaut)


@pytest.mark.parametrize("spec", [42, "yolo", Path("detector.txt"), object(), 1.5])
def test_get_detector_rejects_other_specs(spec):
    with pytest.raises(InvalidInputError, match=r"'yunet'.*'haar'.*\.onnx.*detect\(image\).*callable"):
        get_detector(spec)


def test_normalize_boxes_drops_boxes_outside_the_image():
    assert normalize_boxes([(-50, -50, 10, 10), (95, 5, 20, 20)], (100, 100)) == [(95, 5, 5, 20)]
    assert normalize_boxes(np.empty((0, 4)), (10, 10)) == []
