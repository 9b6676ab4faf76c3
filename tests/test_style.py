"""The tree stays formatted and lint-clean: `ruff format --check .` and `ruff check .`, run from the
repository root with pyproject.toml's settings (line length 100; rules E, F, W, B, I, UP), find
nothing. ruff is a test dependency (tests/requirements.txt): without it these tests fail, not skip,
so that CI cannot pass without checking. A second or two: no TensorFlow."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
INSTALL = "pip install -r requirements.txt -r tests/requirements.txt"


def ruff(*arguments):
    """`python -m ruff ARGUMENTS` in the repository root: (exit status, what it printed)."""
    if importlib.util.find_spec("ruff") is None:
        pytest.fail(f"ruff is not installed for {sys.executable}: {INSTALL}", pytrace=False)
    # --no-cache: the check writes nothing into the tree.
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *arguments, "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, (result.stdout + result.stderr).strip()


@pytest.mark.parametrize(
    "arguments, fix",
    [
        (("format", "--check", "."), "python -m ruff format ."),
        (("check", ".", "--output-format", "concise"), "python -m ruff check . (--fix fixes some)"),
    ],
    ids=["format", "lint"],
)
def test_ruff_finds_nothing(arguments, fix):
    status, output = ruff(*arguments)
    assert status == 0, f"python -m ruff {' '.join(arguments)} found (fix: {fix}):\n{output}"
