"""Hard kills (kill -9) of a real training run at random instants, each
followed by --resume: nothing is lost and nothing is left behind."""

import math
import random
import re
import time

import pytest
from helpers import (
    BATCH_RE,
    EPISODE_RE,
    POINT_RE,
    PROGRESS_FIELDS,
    PROGRESS_RE,
    LiveRun,
    read_progress,
    run_script,
    script_env,
)

pytestmark = pytest.mark.e2e

FLAGS = ["--save-every", 1, "--batch-size", 2, "--envs", 2]
RESUMED_RE = re.compile(r"^resumed from .* at episode (\d+), ")
# Where each kill lands: after the line that matches, a random delay of up to so many seconds.
KILLS = [
    (POINT_RE, 0.5),  # workers playing
    (RESUMED_RE, 1.5),  # starting: tracing the update, rewriting progress.csv, the first points
    (EPISODE_RE, 0.15),  # around the update that ends a batch
    (BATCH_RE, 0.03),  # during the save that follows the update
]


def assert_consistent(pong, model_dir, context):
    """The checkpoint loads, and the log's whole rows are well formed and their
    episodes run 0..N-1, at least up to the checkpoint's (the log may run ahead
    of it, never behind)."""
    episode = int(pong.read_checkpoint(str(model_dir / "model_pong.npz"), 200)["state/episode"])
    rows = read_progress(model_dir, torn_end=True)
    for row in rows:
        assert None not in row and None not in row.values(), f"{context}: a malformed row {row}"
        assert all(math.isfinite(float(row[name])) for name in PROGRESS_FIELDS[1:-1]), (
            f"{context}: {row}"
        )
    numbers = [int(row["episode"]) for row in rows]
    assert numbers == list(range(len(numbers))), f"{context}: gaps or duplicates in progress.csv"
    assert len(numbers) >= episode, (
        f"{context}: progress.csv ends at {len(numbers)}, the checkpoint at {episode}"
    )
    return episode


def test_hard_kills_at_random_instants_leave_a_run_that_resumes(pong, tmp_path):
    model_dir = tmp_path / "m"
    temp_dir = tmp_path / "tmp"  # the runs' TMPDIR: a kill -9 must leave nothing in it either
    temp_dir.mkdir()
    env = script_env(TMPDIR=str(temp_dir))
    for cycle, (where, most) in enumerate(KILLS):
        delay = random.uniform(0, most)
        context = f"kill {cycle} ({where.pattern} + {delay:.3f}s)"
        run = LiveRun(
            [*(["--resume"] if cycle else []), *FLAGS, "--model-dir", model_dir], tmp_path, env
        )
        try:
            if where is not RESUMED_RE:
                saved = int(run.wait_for(PROGRESS_RE)[1])
                assert (
                    assert_consistent(pong, model_dir, context + ", after the first save") >= saved
                )
            run.wait_for(where)
            time.sleep(delay)
            processes, left = run.kill_9()
        finally:
            run.kill()
        assert len(processes) == 2, context
        assert left == [], f"{context}: processes left behind"
        assert_consistent(pong, model_dir, context)
        assert list(temp_dir.iterdir()) == [], f"{context}: files left in TMPDIR"
        pong.plot(pong.parse_args(["--plot", "--model-dir", str(model_dir)]))

    last = run_script(["--resume", "--episodes", 2, *FLAGS, "--model-dir", model_dir], tmp_path)
    assert last.returncode == 0, last.describe()
    episode = assert_consistent(pong, model_dir, "the last run")
    assert [int(row["episode"]) for row in read_progress(model_dir)] == list(range(episode))
    assert list(model_dir.glob("*.tmp")) == []
