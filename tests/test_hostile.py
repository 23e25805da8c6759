"""The hostile-input corpus (benchmarks/hostile.py) through the real console script: each case must end with its
documented exit code inside 30 s and 1 GB, leaving what existed before untouched. A few cases of every class run
by default; the whole corpus (77 cases, about 2 minutes) is marked slow and runs in CI."""

from __future__ import annotations

import pytest
from fer_sdk.benchmarks import hostile

pytestmark = pytest.mark.skipif(hostile.console_script() is None, reason="the fer-sdk console script is not installed")
CASES = hostile.cases()
QUICK = {
    "bomb: jpeg-junk-before-sof-20000x20000",
    "bomb: tiff-1bit-32000x32000",
    "bomb: radiance-hdr-named-jpg",
    "non-regular: symlink to /dev/zero in a folder",
    "non-regular: FIFO named .jpg in a folder",
    "non-regular: a FIFO as eval --data",
    "output: -o is the input photo",
    "output: --annotate into the input folder keeps an unrelated a.png",
    "output: a failed video run writes its error row, atomically",
    "dataset: a gzip holding one 1 GB row",
    "dataset: 100 MB of blank lines",
    "rest: a non-UTF-8 file name, CSV to a file",
    "metadata: nested 100,000 deep",
    "model: outputs NaN",
}


def test_the_corpus_is_large_and_names_are_unique():
    names = [c.name for c in CASES]
    assert len(names) >= 60 and len(set(names)) == len(names)
    assert set(names) >= QUICK
    assert {c.kind for c in CASES} == {"bomb", "non-regular", "output", "dataset", "rest", "metadata"}


def _run(case):
    row = hostile.run_case(case, hostile.console_script())
    if "skipped" in row:
        pytest.skip(row["skipped"])
    assert row["ok"], row


@pytest.mark.parametrize("case", [c for c in CASES if c.name in QUICK], ids=lambda c: c.name)
def test_quick_hostile_case(case):
    _run(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.name not in QUICK], ids=lambda c: c.name)
def test_hostile_case(case):
    _run(case)
