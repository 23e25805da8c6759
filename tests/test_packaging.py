"""What a user installs and reads: the wheel's contents, the README's promises, metadata robustness."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fer_sdk.errors import ModelError
from fer_sdk.registry import default_model_name, list_models

REPO = Path(__file__).resolve().parents[1]


def test_readme_has_no_unfilled_placeholders_and_names_the_default_model():
    text = (REPO / "README.md").read_text()
    leftovers = re.findall(
        r"^[A-Z_]{6,}$|\b(?:MODELS_TABLE|BENCH_TABLE|DEFAULT_MODEL|RAY_SECTION)\b", text, re.MULTILINE
    )
    assert not leftovers, leftovers
    if list_models():
        assert f"`Classifier()` loads **{default_model_name()}**" in text
        for spec in list_models():
            acc = f"{100 * spec.metrics['PublicTest']['accuracy']:.2f} %"
            assert acc in text, f"README does not quote {spec.name}'s accuracy {acc}"


def test_quickstart_holds_exactly_two_commands_and_ci_runs_the_second():
    text = (REPO / "README.md").read_text()
    block = re.search(r"^## Quickstart\n.*?```(?:bash|sh)?\n(.*?)```", text, re.DOTALL | re.MULTILINE).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    assert "fer-sdk predict" in commands[0] and "pytest" in commands[1]
    assert "Quickstart" in (REPO / ".ci" / "run").read_text()


def test_wheel_ships_models_samples_and_namespaced_tooling(tmp_path):
    # built from a copy: setuptools writes build/ and *.egg-info into the source folder, never into the checkout
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "runs",
            "reports",
            ".cache",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            "node_modules",
        ),
    )
    before = sorted(p.name for p in REPO.iterdir())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert sorted(p.name for p in REPO.iterdir()) == before
    (wheel,) = tmp_path.glob("fer_sdk-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "fer_sdk/py.typed" in names and any(
        n.endswith(".dist-info/LICENSE") or "/licenses/LICENSE" in n for n in names
    )
    for spec in list_models():
        assert f"fer_sdk/models/{spec.file}" in names
        assert f"fer_sdk/models/cards/{spec.name}.json" in names
    assert "fer_sdk/models/manifest.json" in names or not list_models()
    assert {"fer_sdk/samples/astronaut.jpg", "fer_sdk/samples/SOURCES.md"} <= names
    assert {"fer_sdk/export/train.py", "fer_sdk/export/convert.py", "fer_sdk/benchmarks/run.py"} <= names
    assert not any(n.startswith(("export/", "benchmarks/", "tests/", "web/")) for n in names)
    # the browser page and its vendored runtime (fer-sdk web), without the npm project or the JS tests
    page = {f"fer_sdk/web/{n}" for n in ("index.html", "app.js", "fer.js", "style.css")}
    vendor = json.loads((REPO / "web" / "vendor" / "manifest.json").read_text())["files"]
    assert page | {f"fer_sdk/web/vendor/{n}" for n in vendor} | {"fer_sdk/web/vendor/manifest.json"} <= names
    assert not any("node_modules" in n or n.startswith("fer_sdk/web/test") or n.endswith("package.json") for n in names)
    # as installed (not the editable checkout): the page, runtime and models are found and serve a site
    unpacked = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = (
        "import fer_sdk, fer_sdk.webapp as w; s = w.build_site(); "
        f"assert fer_sdk.__file__.startswith({str(unpacked)!r}), fer_sdk.__file__; "
        f"assert str(w.page_dir()).startswith({str(unpacked)!r}), w.page_dir(); "
        "print(sorted(s.files)[0], len(s.files))"
    )
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_malformed_metadata_is_a_model_error(make_onnx, tmp_path):
    onnx = pytest.importorskip("onnx")
    from fer_sdk import Classifier

    path = make_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    prop = next(p for p in model.metadata_props if p.key == "fer_sdk")
    meta = json.loads(prop.value)
    meta["input"]["height"] = "forty-eight"
    prop.value = json.dumps(meta)
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="m.onnx"):
        Classifier(path)


@pytest.mark.slow
def test_gpu_job_workers_start_under_the_installed_module_name(tmp_path):
    """Run from outside the checkout as ``python -m fer_sdk.export.gpu_job``: each worker must find its own
    module (it used to spawn ``-m export.gpu_job``, which only resolves at the repository root), and a
    failed worker must fail the job instead of packing an empty result with exit 0."""
    import os

    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    (tmp_path / "bad.xz").write_bytes(b"not xz")
    (tmp_path / "bad.npz").write_bytes(b"not npz")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fer_sdk.export.gpu_job",
            "--runs",
            "shallow",
            "--pixels",
            "bad.xz",
            "--labels",
            "bad.npz",
            "--out",
            "out",
            "--work",
            "work",
            "--budget",
            "1",
            "--deadline",
            "120",
        ],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    log = (tmp_path / "work" / "shallow" / "train.log").read_text()
    assert "No module named" not in log, log
    assert "--labels bad.npz: not an npz" in log  # the worker ran this module and reached its data
    assert result.returncode != 0 and "shallow failed" in result.stderr, result.stderr


def test_gpu_job_is_a_fer_sdk_models_command_with_checked_options(tmp_path):
    from typer.testing import CliRunner

    from fer_sdk.cli import app

    (tmp_path / "x.xz").write_bytes(b"")
    (tmp_path / "y.npz").write_bytes(b"")
    base = ["models", "gpu-job", "--pixels", str(tmp_path / "x.xz"), "--labels", str(tmp_path / "y.npz")]
    base += ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    cases = {
        "unknown recipe(s) nope": ["--runs", "shallow,nope"],
        "is not JSON": ["--override", "{lr: 1}"],
        "does not distil": ["--override", '{"teacher": "t.onnx"}'],
    }
    for message, extra in cases.items():
        result = CliRunner().invoke(app, [*base, *extra])
        assert result.exit_code == 2 and message in result.stderr, (extra, result.output)
    assert not (tmp_path / "work").exists()  # refused before any worker started
