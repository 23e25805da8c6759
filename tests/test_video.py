"""Video input: frames sampled, faces of many frames batched, rows streamed, annotated copy written."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import struct
from pathlib import Path

import cv2
import pytest
from conftest import ROW_COLUMNS, parse_rows
from typer.testing import CliRunner

import fer_sdk
from fer_sdk import Classifier
from fer_sdk.cli import PARTIAL_FAILURE_EXIT, app
from fer_sdk.errors import InvalidInputError
from fer_sdk.rows import ROW_FIELDS
from fer_sdk.video import frame_step, iter_video_faces, make_test_video, video_rows


@pytest.fixture(scope="module")
def clip(tmp_path_factory, samples_dir):
    images = [cv2.imread(str(samples_dir / f"{n}.jpg")) for n in ("astronaut", "grace_hopper", "two_faces")]
    return make_test_video(tmp_path_factory.mktemp("video") / "clip.mp4", images, frames_per_image=4, fps=10)


@pytest.fixture(scope="module")
def clf(tiny_models):
    return Classifier(tiny_models.fp32)


def test_rows_match_per_frame_analysis(clip, clf, tiny_models):
    rows = list(iter_video_faces(clf, clip, every=1))
    assert rows and all(tuple(r) == ROW_FIELDS == ROW_COLUMNS for r in rows)
    version = "sha256:" + hashlib.sha256(tiny_models.fp32.read_bytes()).hexdigest()[:12]
    for r in rows:  # the rows every pipeline writes: source, frame, time, track, model
        assert r["source"] == str(clip) and r["error"] is None and r["annotated"] is None
        assert isinstance(r["frame"], int) and isinstance(r["track"], int) and isinstance(r["time_s"], float)
        assert (r["model"], r["model_version"]) == ("tiny-shallow.onnx", version) == (clf.model_name, clf.model_version)
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
    result = runner.invoke(
        app,
        [
            "predict",
            str(clip),
            "--model",
            str(tiny_models.fp32),
            "--format",
            "jsonl",
            "--every",
            "2",
            "-o",
            str(out),
            "--annotate",
            str(tmp_path / "ann"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    rows = parse_rows(out.read_text(), "jsonl")
    assert rows and all(r["frame"] % 2 == 0 for r in rows)
    annotated = tmp_path / "ann" / "clip.annotated.mp4"
    assert {r["annotated"] for r in rows} == {str(annotated)} and {r["source"] for r in rows} == {str(clip)}
    assert all(r["error"] is None and r["face"] is not None for r in rows)
    assert [(r["frame"], r["face"]) for r in rows] == sorted((r["frame"], r["face"]) for r in rows)
    cap = cv2.VideoCapture(str(annotated))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 6
    ok, frame = cap.read()
    assert ok and frame.shape == (240, 320, 3)

    plain = [r | {"annotated": None} for r in rows]  # the same run without --annotate
    for fmt in ("csv", "json", "jsonl"):
        result = runner.invoke(
            app, ["predict", str(clip), "--model", str(tiny_models.fp32), "--format", fmt, "--every", "2"]
        )
        assert result.exit_code == 0, result.output
        assert parse_rows(result.stdout, fmt) == plain, fmt
    result = runner.invoke(app, ["predict", str(clip), "--model", str(tiny_models.fp32), "--csv"])
    assert result.exit_code == 0
    parsed = list(csv.DictReader(io.StringIO(result.stdout)))
    assert parsed and list(parsed[0]) == list(ROW_FIELDS)
    assert len(parsed) > len(rows)  # every frame, not every other one

    table = runner.invoke(app, ["predict", str(clip), "--model", str(tiny_models.fp32), "--every", "2"])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["source", "frame", "time_s", "track", "face"]  # video columns shown
    assert len(lines) == 1 + len(rows)
    for line, row in zip(lines[1:], rows):
        assert line.split()[:5] == [
            str(clip),
            str(row["frame"]),
            f"{row['time_s']:.3f}",
            str(row["track"]),
            str(row["face"]),
        ], line


def test_same_named_videos_get_separate_annotated_copies(clip, tiny_models, tmp_path):
    import shutil

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(clip, tmp_path / sub / "clip.mp4")
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--model",
            str(tiny_models.fp32),
            "--csv",
            "--every",
            "4",
            "--annotate",
            str(tmp_path / "ann"),
        ],
    )
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
    assert "Traceback" not in result.output
    (row,) = parse_rows(result.stdout, "csv")  # the failure is a row of the output, not only a stderr line
    assert row["source"] == str(bad) and "broken.mp4" in row["error"] and "OpenCV cannot open" in row["error"]
    assert all(row[k] is None for k in ROW_FIELDS if k not in ("source", "model", "model_version", "error"))
    assert row["model"] == "tiny-shallow.onnx" and row["model_version"].startswith("sha256:")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fer-sdk: error: none of the 1 input(s)"), result.stderr
    with pytest.raises(InvalidInputError, match="broken.mp4"):  # the library raises; the CLI makes it a row
        list(video_rows(Classifier(tiny_models.fp32), bad))


def test_a_failed_video_is_an_error_row_beside_the_good_ones(clip, tiny_models, tmp_path):
    good, bad = tmp_path / "a_clip.mp4", tmp_path / "b_broken.mp4"
    shutil.copy(clip, good)
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))  # an MP4 header, nothing after it
    out = tmp_path / "rows.json"
    out.write_text("earlier results")
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(tmp_path),
            "--model",
            str(tiny_models.fp32),
            "--format",
            "json",
            "--every",
            "3",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == PARTIAL_FAILURE_EXIT, result.output
    assert "1 input(s) could not be processed" in result.stderr and "the other 1 were processed" in result.stderr
    rows = parse_rows(out.read_text(), "json")  # written (atomically) although an input failed
    *frames, failed = rows
    assert frames and {r["source"] for r in frames} == {str(good)} and all(r["error"] is None for r in frames)
    assert [r["frame"] for r in frames] == sorted(r["frame"] for r in frames) and all(
        r["frame"] % 3 == 0 for r in frames
    )
    assert failed["source"] == str(bad) and "b_broken.mp4" in failed["error"]
    assert failed["frame"] is failed["face"] is failed["emotion"] is None
    assert frames == parse_rows(
        CliRunner()
        .invoke(app, ["predict", str(good), "--model", str(tiny_models.fp32), "--json", "--every", "3"])
        .stdout,
        "json",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_clip.mp4", "b_broken.mp4", "rows.json"]


def test_photos_and_a_video_in_one_folder_are_one_run(clip, tiny_models, samples_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("two_faces.jpg", "astronaut.jpg"):
        shutil.copy(samples_dir / name, folder / name)
    shutil.copy(clip, folder / "a_clip.mp4")  # sorts first, yet photos come first, then videos
    model = str(tiny_models.fp32)
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(folder), "--model", model, "--json", "--every", "4"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "2 photo(s), 1 video(s)" in lines[0], result.stderr
    rows = parse_rows(result.stdout, "json")
    photos = [r for r in rows if r["frame"] is None]
    videos = [r for r in rows if r["frame"] is not None]
    assert rows == photos + videos and photos and videos
    assert [(Path(r["source"]).name, r["face"]) for r in photos] == [
        ("astronaut.jpg", 0),
        ("two_faces.jpg", 0),
        ("two_faces.jpg", 1),
    ]
    assert all(r["time_s"] is None and r["track"] is None for r in photos)
    assert {r["source"] for r in videos} == {str(folder / "a_clip.mp4")}
    assert {r["frame"] for r in videos} == {0, 4, 8}
    assert all(isinstance(r["track"], int) and r["time_s"] == pytest.approx(r["frame"] / 10) for r in videos)
    assert len({(r["model"], r["model_version"]) for r in rows}) == 1 and rows[0]["model"] == "tiny-shallow.onnx"
    # the same rows as photos alone and the video alone
    alone = runner.invoke(
        app, ["predict", str(folder / "astronaut.jpg"), str(folder / "two_faces.jpg"), "--model", model, "--json"]
    )
    assert parse_rows(alone.stdout, "json") == photos
    alone = runner.invoke(app, ["predict", str(folder / "a_clip.mp4"), "--model", model, "--json", "--every", "4"])
    assert parse_rows(alone.stdout, "json") == videos
    # the table shows the video columns, empty for photos
    table = runner.invoke(app, ["predict", str(folder), "--model", model, "--every", "4"])
    assert table.exit_code == 0, table.output
    head, *body = table.stdout.splitlines()
    assert head.split()[:5] == ["source", "frame", "time_s", "track", "face"] and len(body) == len(rows)
    assert body[0].split()[:2] == [str(folder / "astronaut.jpg"), "0"]  # the photo's face number, no frame
    assert body[-1].split()[:2] == [str(folder / "a_clip.mp4"), str(videos[-1]["frame"])]

    # crops (photos) and smoothing + summary (videos) each apply to their part of a mixed run
    crops, summary = tmp_path / "crops", tmp_path / "summary.json"
    both = runner.invoke(
        app,
        [
            "predict",
            str(folder),
            "--model",
            model,
            "--csv",
            "--every",
            "4",
            "--save-crops",
            str(crops),
            "--smooth",
            "1",
            "--summary",
            str(summary),
        ],
    )
    assert both.exit_code == 0, both.output
    assert sorted(p.name for p in crops.iterdir()) == [
        "astronaut.face0.png",
        "two_faces.face0.png",
        "two_faces.face1.png",
    ]
    (entry,) = json.loads(summary.read_text())
    assert entry["video"] == str(folder / "a_clip.mp4") and entry["frames_sampled"] == 3
    smoothed = parse_rows(both.stdout, "csv")
    assert [r for r in smoothed if r["frame"] is None] == photos  # smoothing leaves photos alone
    assert len(smoothed) == len(rows) and entry["face_rows"] == len(videos)


@pytest.mark.parametrize(
    ("inputs", "option", "needle"),
    [
        ("video", ["--save-crops", "OUT"], "--save-crops saves the faces of photos"),
        ("photo", ["--smooth", "1"], "--smooth and --summary apply to videos"),
        ("photo", ["--summary", "OUT"], "--smooth and --summary apply to videos"),
    ],
)
def test_options_for_the_other_kind_of_input_are_refused(
    clip, tiny_models, samples_dir, tmp_path, inputs, option, needle
):
    path = clip if inputs == "video" else samples_dir / "astronaut.jpg"
    option = [str(tmp_path / "out") if o == "OUT" else o for o in option]
    result = CliRunner().invoke(app, ["predict", str(path), "--model", str(tiny_models.fp32), *option])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fer-sdk: error: ") and needle in lines[0], result.stderr
    assert result.stdout == "" and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


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
    assert (
        totals["frames_sampled"] == 12
        and totals["face_rows"] == len(rows)
        and totals["faces_seen"] == len({r["track"] for r in rows})
    )
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
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            "deep-int8",
            str(clip),
            "--smooth",
            "1",
            "--summary",
            str(out),
            "--csv",
            "-o",
            str(tmp_path / "rows.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(out.read_text())
    assert summary["video"] == str(clip) and summary["frames_sampled"] == 12 and summary["faces_seen"] >= 3
    rows = list(csv.DictReader(io.StringIO((tmp_path / "rows.csv").read_text())))
    assert {r["track"] for r in rows} == {str(t["track"]) for t in summary["tracks"]}
    assert summary["face_rows"] == len(rows)
    assert {(r["model"], r["model_version"]) for r in rows} == {("deep-int8", fer_sdk.__version__)}


def test_tracker_follows_moving_and_reordered_faces():
    from fer_sdk.classifier import Face
    from fer_sdk.video import FaceTracker

    def face(x, y, size=60):
        eyes = ((x + 0.3 * size, y + 0.4 * size), (x + 0.7 * size, y + 0.4 * size))
        marks = (
            *eyes,
            (x + 0.5 * size, y + 0.6 * size),
            (x + 0.35 * size, y + 0.8 * size),
            (x + 0.65 * size, y + 0.8 * size),
        )
        return Face((x, y, size, size), {}, "happy", 1.0, landmarks=marks)

    tracker = FaceTracker()
    assert tracker.update(0.0, [face(100, 100), face(400, 100)]) == [0, 1]
    assert tracker.update(0.04, [face(390, 105), face(110, 103)]) == [1, 0]  # order swapped: ids follow the faces
    # a fast zoom (60 -> 130 px about the same centre): box IoU 0.21, under TRACK_MIN_IOU, but the landmarks
    # moved by a quarter of the face: the landmark rule keeps the track
    assert tracker.update(0.08, [face(75, 68, 130), face(390, 105)]) == [0, 1]
    assert tracker.update(0.12, [face(75, 68, 130), face(390, 105), face(250, 400)]) == [0, 1, 2]  # someone new
    assert tracker.update(0.16, [face(800, 600)]) == [3]  # far from every track: a new one


def _restate_frame_rate(path: Path, *, mp4_frame_ticks: int | None = None, avi_rate: int | None = None) -> Path:
    """Rewrite the frame rate an OpenCV-written file states, in place: an MP4's first ``stts`` entry (ticks per
    frame; 1 tick at OpenCV's 10240 ticks a second states 10240 fps) or an AVI's ``avih``/``strh`` rate fields."""
    data = bytearray(path.read_bytes())
    if mp4_frame_ticks is not None:
        at = data.index(b"stts") + 16  # box type, version/flags, entry count, sample count: then the delta
        struct.pack_into(">I", data, at, mp4_frame_ticks)
    if avi_rate is not None:
        struct.pack_into("<I", data, data.index(b"avih") + 8, 0)  # microseconds per frame: unknown
        struct.pack_into("<I", data, data.index(b"strh") + 8 + 24, avi_rate)  # dwRate (dwScale stays)
    path.write_bytes(bytes(data))
    return path


def test_native_fps_of_real_files_stating_a_rate_none_or_nonsense(tmp_path, samples_dir):
    """native_fps on OpenCV captures of real files: the stated rate; 0.0 for an AVI whose header states a rate of
    0 (read with OpenCV's own MJPEG reader: FFmpeg would invent 25) and for an MP4 stating 10240 fps."""
    import fer_sdk.video as video

    image = cv2.imread(str(samples_dir / "two_faces.jpg"))
    stated = make_test_video(tmp_path / "stated.mp4", [image], frames_per_image=6, fps=10)
    nonsense = _restate_frame_rate(
        make_test_video(tmp_path / "nonsense.mp4", [image], frames_per_image=6, fps=10), mp4_frame_ticks=1
    )
    avi = tmp_path / "zero.avi"
    writer = cv2.VideoWriter(str(avi), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (320, 240))
    assert writer.isOpened(), "this OpenCV build has no MJPEG AVI writer"
    for _ in range(6):
        writer.write(cv2.resize(image, (320, 240)))
    writer.release()
    _restate_frame_rate(avi, avi_rate=0)
    cases = [
        (stated, cv2.CAP_ANY, 10.0, 10.0),
        (nonsense, cv2.CAP_ANY, 10240.0, 0.0),
        (avi, cv2.CAP_OPENCV_MJPEG, 0.0, 0.0),
    ]
    for path, api, reported, expected in cases:
        cap = cv2.VideoCapture(str(path), api)
        try:
            assert cap.isOpened() and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(reported), path.name
            assert video.native_fps(cap) == expected, path.name
        finally:
            cap.release()


def test_a_video_stating_no_frame_rate_is_sampled_and_annotated_at_the_assumed_rate(clf, samples_dir, tmp_path):
    """--fps on a file without a usable frame rate (a real MP4 stating 10240 fps) samples as if it ran at
    ASSUMED_FPS (it used to sample every frame while the annotated copy was written at the assumed rate: it played
    ~12x slow); time_s stays unknown, and the annotated copy holds exactly the sampled frames at the sampled rate."""
    import fer_sdk.video as video

    image = cv2.imread(str(samples_dir / "two_faces.jpg"))
    long_clip = _restate_frame_rate(
        make_test_video(tmp_path / "long.mp4", [image], frames_per_image=30, fps=10), mp4_frame_ticks=1
    )
    out = tmp_path / "ann"
    out.mkdir()
    rows = list(video_rows(clf, long_clip, fps=5.0, annotate=out))
    step = frame_step(video.ASSUMED_FPS, 1, 5.0)
    frames = sorted({r["frame"] for r in rows})
    assert step == 5 and frames == list(range(0, 30, step))
    assert all(r["time_s"] is None for r in rows)
    cap = cv2.VideoCapture(str(out / "long.annotated.mp4"))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == len(frames)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(video.ASSUMED_FPS / step)
    cap.release()
