"""ADAMAX_RS_NO_SKIPS=1 (set by .ci/run) turns every kind of skip into a failure.

Each case runs pytest in a subprocess on a scratch folder holding a copy of tests/conftest.py and
one test file, once with the variable and once without.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

CASES = {
    "pytest.skip in the test": "import pytest\ndef test_it():\n    pytest.skip('no_thing')\n",
    "skipif mark": (
        "import pytest\n@pytest.mark.skipif(True, reason='no_thing')\ndef test_it():\n    pass\n"
    ),
    "importorskip at module level": (
        "import pytest\npytest.importorskip('adamax_rs_no_thing')\ndef test_it():\n    pass\n"
    ),
    "module-level skip": (
        "import pytest\npytest.skip('no_thing', allow_module_level=True)\n"
        "def test_it():\n    pass\n"
    ),
}


def run_pytest(folder: Path, no_skips: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ADAMAX_RS_NO_SKIPS"}
    if no_skips:
        env["ADAMAX_RS_NO_SKIPS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(folder)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_skip_fails_only_with_the_variable(tmp_path, case):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_case.py").write_text(CASES[case])
    (tmp_path / "test_other.py").write_text("def test_fine():\n    pass\n")
    relaxed = run_pytest(tmp_path, no_skips=False)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert "1 passed, 1 skipped" in relaxed.stdout
    strict = run_pytest(tmp_path, no_skips=True)
    assert strict.returncode != 0, strict.stdout
    assert "ADAMAX_RS_NO_SKIPS=1 makes a skip a failure" in strict.stdout
    assert "no_thing" in strict.stdout  # the skip's reason is shown


def test_expected_failures_and_passes_are_left_alone(tmp_path):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_case.py").write_text(
        "import pytest\n"
        "@pytest.mark.xfail(strict=True, reason='known bug')\n"
        "def test_known_bug():\n    assert False\n"
        "def test_fine():\n    pass\n"
    )
    strict = run_pytest(tmp_path, no_skips=True)
    assert strict.returncode == 0, strict.stdout
    assert "1 passed, 1 xfailed" in strict.stdout


ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_with_the_variable_set():
    """.ci/run exports it before anything runs (so make test sees it)."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    exported = [i for i, line in enumerate(lines) if line.strip() == "export ADAMAX_RS_NO_SKIPS=1"]
    first_make = next(i for i, line in enumerate(lines) if line.startswith("make "))
    assert exported and exported[0] < first_make


def test_the_venv_gets_the_optional_parts_so_that_nothing_skips():
    planned = subprocess.run(
        ["make", "--dry-run", "--always-make", "venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert planned.returncode == 0, planned.stderr
    installs = [line for line in planned.stdout.splitlines() if " -m pip install " in line]
    for package in ('"torch>=2.1"', '"expecttest"', '"mpi4py>=4"', '"mpich"'):
        assert any(package in line for line in installs), package
