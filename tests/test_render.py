"""--render opens a real window: run it on a virtual X display (Xvfb)."""

import shutil
import subprocess
import sys

import pytest
from helpers import PLAY_RE, SCRIPT, script_env

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("xvfb-run") is None, reason="needs xvfb-run (Debian package xvfb)"
    ),
]


def test_play_renders_a_game_in_a_window_beside_tensorflow(train_run):
    """ALE's SDL window must not crash next to TensorFlow (their LLVMs clash in Mesa's GL)."""
    done = subprocess.run(
        [
            "xvfb-run",
            "-a",
            sys.executable,
            str(SCRIPT),
            "--play",
            "1",
            "--render",
            "--model-dir",
            str(train_run.model_dir),
        ],
        cwd=train_run.cwd,
        env=script_env(DISPLAY=None, WAYLAND_DISPLAY=None),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(PLAY_RE.match(line) for line in done.stdout.splitlines()), done.stdout
    assert "Traceback" not in done.stderr
