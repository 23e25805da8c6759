"""Video input: frames sampled, faces of many frames batched, rows streamed, annotated copy written."""

from __future__ import annotations

import csv
import io
import json

import cv2
import pytest
from typer.testing import CliRunner

from fer_sdk import Classifier
from fer_sdk.cli import app
from fer_sdk.errors import InvalidInputError
from fer_sdk.video import ROW_FIELDS, frame_step, iter_video_faces, make_test_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory, samples_dir):
    images = [cv2.imread(str(samples_dir / f"{n}.jpg")) for n in ("astronaut", "grace_hopper", "two_faces")]
    return make_test_video(tmp_path_factory.mktemp("video") / "clip.mp4", images, frames_per_image=4, fps=10)


@pytest.fixture(scope="module")
def clf(tiny_models):
    return Classifier(tiny_models.fp32)


def test_rows_match_per_frame_analysis(clip, clf):
    rows = list(iter_video_faces(clf, clip, every=1))
    cap = cv2.VideoCapture(str(clip))
    expected = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        expected.append(clf.analyze(frame))
    assert len(expected) == 12
    assert len(rows) == sum(len(f) for f in expected)
    by_frame = {}
    for row in rows:
        by_frame.setdefault(row["frame"], []).append(row)
    for frame_no, faces in enumerate(expected):
        got = by_frame.get(frame_no, [])
        assert [(r["x"], r["y"], r["w"], r["h"]) for r in got] == [f.box for f in faces]
        for r, f in zip(got, faces):
            assert r["emotion"] == f.emotion
            assert r["score"] == pytest.approx(f.score, abs=1e-6)
            assert r["time_s"] == pytest.approx(frame_no / 10, abs=1e-3)


def test_sampling_every_and_fps(clip, clf):
    frames_every3 = {r["frame"] for r in iter_video_faces(clf, clip, every=3)}
    assert frames_every3 and all(f % 3 == 0 for f in frames_every3)
    assert frame_step(10.0, fps=2) == 5
    frames_fps = {r["frame"] for r in iter_video_faces(clf, clip, fps=2)}
    assert frames_fps and all(f % 5 == 0 for f in frames_fps)
    with pytest.raises(InvalidInputError, match="every=0"):
        frame_step(10.0, every=0)
    with pytest.raises(InvalidInputError, match="fps=-1"):
        frame_step(10.0, fps=-1)
    with pytest.raises(InvalidInputError, match="every=3 and fps=2 both set"):
        frame_step(10.0, every=3, fps=2)
    assert frame_step(0.0, fps=2) == 1  # no stated frame rate: every frame


def test_cli_video_json_lines_csv_and_annotated_copy(clip, tiny_models, tmp_path):
    runner = CliRunner()
    out = tmp_path / "rows.jsonl"
    result = runner.invoke(app, ["predict", str(clip), "--model", str(tiny_models.fp32), "--json", "--every", "2",
                                 "-o", str(out), "--annotate", str(tmp_path / "ann")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and set(rows[0]) == set(ROW_FIELDS)
    assert all(r["frame"] % 2 == 0 for r in rows)
    annotated = tmp_path / "ann" / "clip.annotated.mp4"
    cap = cv2.VideoCapture(str(annotated))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 6
    ok, frame = cap.read()
    assert ok and frame.shape == (240, 320, 3)

    result = runner.invoke(app, ["predict", str(clip), "--model", str(tiny_models.fp32), "--csv"])
    assert result.exit_code == 0
    parsed = list(csv.DictReader(io.StringIO(result.stdout)))
    assert parsed and list(parsed[0]) == ROW_FIELDS


def test_same_named_videos_get_separate_annotated_copies(clip, tiny_models, tmp_path):
    import shutil

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(clip, tmp_path / sub / "clip.mp4")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a"), str(tmp_path / "b"), "--model",
                                      str(tiny_models.fp32), "--csv", "--every", "4", "--annotate", str(tmp_path / "ann")])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "ann").iterdir())
    assert written == ["clip.annotated-2.mp4", "clip.annotated.mp4"]
    for name in written:
        assert cv2.VideoCapture(str(tmp_path / "ann" / name)).get(cv2.CAP_PROP_FRAME_COUNT) == 3


def test_unreadable_video_is_reported_not_raised(tmp_path, tiny_models):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    result = CliRunner().invoke(app, ["predict", str(bad), "--model", str(tiny_models.fp32), "--csv"])
    assert result.exit_code == 2  # the only input failed: its own code (InvalidInputError), not 8
    assert "broken.mp4" in result.output
    assert "Traceback" not in result.output


def test_tracks_follow_faces_and_smoothing_averages_each_track(tmp_path, samples_dir):
    from fer_sdk.video import FaceTracker, Smoother, VideoSummary

    two = cv2.imread(str(samples_dir / "two_faces.jpg"))
    astronaut = cv2.imread(str(samples_dir / "astronaut.jpg"))
    h, w = two.shape[:2]
    video = make_test_video(tmp_path / "t.mp4", [two, astronaut], frames_per_image=6, fps=10, size=(w, h))
    clf = Classifier("deep-int8")
    summary = VideoSummary(str(video))
    rows = list(iter_video_faces(clf, video, smooth=0.5, summary=summary))
    raw = list(iter_video_faces(clf, video))
    first = [r for r in rows if r["frame"] < 6]
    assert {r["track"] for r in first if r["face"] == 0} == {0} and {r["track"] for r in first if r["face"] == 1} == {1}
    later = {r["track"] for r in rows if r["frame"] >= 6}
    assert later and later.isdisjoint({0, 1})  # another person, elsewhere in the frame: a new track
    # smoothing is the causal mean of the track's last 0.5 s (5 frames at 10 fps)
    track0 = [r for r in raw if r["track"] == 0]
    smoothed0 = [r for r in rows if r["track"] == 0]
    for k in range(len(track0)):
        window = [r for r in track0 if track0[k]["frame"] - 5 < r["frame"] <= track0[k]["frame"]]
        for e in ("happy", "neutral"):
            assert smoothed0[k][e] == pytest.approx(sum(r[e] for r in window) / len(window), abs=2e-6)
    totals = summary.to_dict()
    assert totals["frames_sampled"] == 12 and totals["face_rows"] == len(rows) and totals["faces_seen"] == len(
        {r["track"] for r in rows})
    assert sum(totals["emotion_share"].values()) == pytest.approx(1.0, abs=1e-5)
    assert totals["tracks"][0]["frames"] == 6
    tracker = FaceTracker(timeout_s=0.2)
    from fer_sdk.classifier import Face

    face = Face((10, 10, 50, 50), {}, "happy", 1.0)
    assert tracker.update(0.0, [face]) == [0] and tracker.update(0.1, [face]) == [0]
    assert tracker.update(1.0, [face]) == [1]  # unseen for longer than the timeout: a new track
    with pytest.raises(InvalidInputError, match="smooth"):
        Smoother(0)


def test_cli_writes_a_video_summary(tmp_path, clip):
    out = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["predict", "--model", "deep-int8", str(clip), "--smooth", "1", "--summary",
                                      str(out), "-o", str(tmp_path / "rows.csv")])
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(out.read_text())
    assert summary["video"] == str(clip) and summary["frames_sampled"] == 12 and summary["faces_seen"] >= 3
    rows = list(csv.DictReader(io.StringIO((tmp_path / "rows.csv").read_text())))
    assert {r["track"] for r in rows} == {str(t["track"]) for t in summary["tracks"]}


def test_tracker_follows_moving_and_reordered_faces():
    from fer_sdk.classifier import Face
    from fer_sdk.video import FaceTracker

    def face(x, y, size=60):
        eyes = ((x + 0.3 * size, y + 0.4 * size), (x + 0.7 * size, y + 0.4 * size))
        marks = (*eyes, (x + 0.5 * size, y + 0.6 * size), (x + 0.35 * size, y + 0.8 * size), (x + 0.65 * size, y + 0.8 * size))
        return Face((x, y, size, size), {}, "happy", 1.0, landmarks=marks)

    tracker = FaceTracker()
    assert tracker.update(0.0, [face(100, 100), face(400, 100)]) == [0, 1]
    assert tracker.update(0.04, [face(390, 105), face(110, 103)]) == [1, 0]  # order swapped: ids follow the faces
    # a fast zoom (60 -> 130 px about the same centre): box IoU 0.21, under TRACK_MIN_IOU, but the landmarks
    # moved by a quarter of the face: the landmark rule keeps the track
    assert tracker.update(0.08, [face(75, 68, 130), face(390, 105)]) == [0, 1]
    assert tracker.update(0.12, [face(75, 68, 130), face(390, 105), face(250, 400)]) == [0, 1, 2]  # someone new
    assert tracker.update(0.16, [face(800, 600)]) == [3]  # far from every track: a new one
