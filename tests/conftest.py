"""Fixtures: the script imported as a module, and real training runs shared by
the end-to-end tests (each run imports TensorFlow and plays real Pong-v0
episodes, so every run is made once per session)."""

import csv
import dataclasses
import importlib.util
import pathlib
import shutil
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from helpers import (
    CHECKPOINT_NAME,
    PROGRESS_FIELDS,
    SCRIPT,
    STALE_REWARD,
    Result,
    load_checkpoint,
    run_script,
)


def pytest_collection_modifyitems(items):
    """The quick check, `python -m pytest -m "not slow"`, leaves out every end-to-end test (e2e:
    the script run on the real emulator as a subprocess) and the few others marked slow."""
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def pong():
    """tutorial_atari_pong.py as a module, with TensorFlow and the emulator imported (~3 s)."""
    spec = importlib.util.spec_from_file_location("tutorial_atari_pong", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.import_libraries()
    return module


@dataclasses.dataclass
class Run:
    cwd: pathlib.Path
    model_dir: pathlib.Path
    result: Result

    @property
    def checkpoint(self):
        return self.model_dir / CHECKPOINT_NAME


def train(tmp_path_factory, name, *flags, prepare=None, model_dir_from=None):
    cwd = tmp_path_factory.mktemp(name)
    model_dir = cwd / "m"
    if model_dir_from is not None:
        shutil.copytree(model_dir_from, model_dir)
    if prepare is not None:
        prepare(cwd, model_dir)
    return Run(cwd, model_dir, run_script([*flags, "--model-dir", model_dir], cwd))


@pytest.fixture(scope="session")
def train_run(tmp_path_factory):
    """Two episodes in this process, one update after each."""
    return train(tmp_path_factory, "train", "--episodes", 2, "--batch-size", 1, "--envs", 1)


@pytest.fixture(scope="session")
def pool_run(tmp_path_factory):
    """Two episodes played at once by two worker processes, one update for
    both, and a video of every 2nd episode (so of episode 0 only)."""
    return train(
        tmp_path_factory,
        "pool",
        "--episodes",
        2,
        "--batch-size",
        2,
        "--envs",
        2,
        "--record",
        "videos",
        "--record-every",
        2,
        prepare=lambda cwd, model_dir: (cwd / "videos").mkdir(),
    )


@dataclasses.dataclass
class ResumeRun(Run):
    before: dict  # the checkpoint's arrays before resuming
    before_progress: list  # progress.csv rows before resuming (stale rows excluded)


@pytest.fixture(scope="session")
def resume_run(tmp_path_factory, train_run):
    """train_run's model dir resumed for one episode with --batch-size 10, so
    no update happens and the episode is kept as pending.

    Before resuming, rows for episodes 2 and 3 are appended to progress.csv, as
    a run killed after logging them but before saving its checkpoint would
    leave them, and then the torn start of another row, "1" (an episode
    number below the checkpoint's); the resumed run must drop them all."""
    assert train_run.result.returncode == 0, train_run.result.describe()
    before = load_checkpoint(train_run.checkpoint)
    with open(train_run.model_dir / "progress.csv", newline="") as f:
        before_progress = list(csv.DictReader(f))

    def add_stale_rows(cwd, model_dir):
        with open(model_dir / "progress.csv", "a", newline="") as f:
            writer = csv.DictWriter(f, PROGRESS_FIELDS)
            for number in (2, 3):
                writer.writerow(
                    {
                        "episode": number,
                        "reward": STALE_REWARD,
                        "running_mean": STALE_REWARD,
                        "points_won": 21,
                        "points_lost": 0,
                        "steps": 1,
                        "seconds": "0.000",
                        "wall_time": "2000-01-01T00:00:00",
                    }
                )
            f.write("1")

    run = train(
        tmp_path_factory,
        "resume",
        "--resume",
        "--episodes",
        1,
        "--batch-size",
        10,
        "--envs",
        1,
        model_dir_from=train_run.model_dir,
        prepare=add_stale_rows,
    )
    return ResumeRun(run.cwd, run.model_dir, run.result, before, before_progress)
