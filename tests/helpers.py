"""Shared helpers: running the script, parsing its log, reading its files."""

import csv
import dataclasses
import io
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = pathlib.Path(
    os.environ.get("PONG_SCRIPT", REPO / "tutorial_atari_pong.py")
)  # override: mutation checks
CHECKPOINT_NAME = "model_pong.npz"
DQN_SCRIPT = pathlib.Path(
    os.environ.get("DQN_SCRIPT", REPO / "dqn_atari_pong.py")
)  # override: mutation checks
DQN_CHECKPOINT_NAME = "dqn_pong.npz"

POINT_RE = re.compile(
    r"^episode (\d+): game (\d+) took \d+\.\d{5}s, reward: (-?1\.000000)(  !!!!!!!!)?$"
)
EPISODE_RE = re.compile(
    r"^resetting env\. episode reward total was (-?\d+\.\d{6})\. running mean: (-?\d+\.\d{6})$"
)
BATCH_RE = re.compile(
    r"^batch over \((\d+) episodes, (\d+) steps\)\.\.\.\.\.\. updated parameters in \d+\.\d{2}s$"
)
SAVED_RE = re.compile(r"^saved checkpoint to (.+) \(episode (\d+)\)$")
PROGRESS_RE = re.compile(
    r"^episode (\d+): \d+ episodes/hour, .*; saved (.+)$"
)  # a checkpoint saved on the way
PLAY_RE = re.compile(r"^episode (\d+): (\d+)-(\d+) (won|lost)$")
PLAY_SUMMARY_RE = re.compile(
    r"^played (\d+) episodes? with (.+): won (\d+) of (\d+) \((\d+)%, 95% interval (\d+)-(\d+)%\), "
    r"points won (\d+) of (\d+) \((\d+\.\d)%\), mean episode reward (-?\d+\.\d{6})$"
)
STALE_REWARD = "99.0"  # a reward no Pong episode can have: marks rows a resumed run must drop
PROGRESS_FIELDS = [
    "episode",
    "reward",
    "running_mean",
    "points_won",
    "points_lost",
    "steps",
    "seconds",
    "wall_time",
]


def script_env(**changes):
    """The environment a user's shell would give the script.

    TF_CPP_MIN_LOG_LEVEL is removed because importing the script in the test
    process sets it, and the console tests must see the script silence
    TensorFlow by itself. A value of None in changes removes that variable."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@dataclasses.dataclass
class Result:
    args: list
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self):
        return self.stdout.splitlines()

    @property
    def stderr_lines(self):
        return [line for line in self.stderr.splitlines() if line.strip()]

    def describe(self):
        return (
            f"args {self.args}\nexit {self.returncode}\n--- stdout (tail)\n{self.stdout[-3000:]}"
            f"\n--- stderr (tail)\n{self.stderr[-3000:]}"
        )


def run_script(args, cwd, env=None, timeout=300, script=SCRIPT):
    """Run the script to completion; the timeout only guards against a hang."""
    args = [str(a) for a in args]
    done = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env or script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(args, done.returncode, done.stdout, done.stderr)


def start_script(args, cwd, env=None, script=SCRIPT):
    return subprocess.Popen(
        [sys.executable, str(script), *[str(a) for a in args]],
        cwd=cwd,
        env=env or script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class LiveRun:
    """The script running in the background; its stdout is read line by line
    as it comes, so a test can act at a chosen line."""

    def __init__(self, args, cwd, env=None, script=SCRIPT):
        self.process = start_script(args, cwd, env, script)
        self.seen, self._lines = [], queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, pattern):
        """The match of the next line that matches pattern."""
        while True:
            line = self._lines.get(timeout=240)  # a guard against a hang, not a timing assertion
            assert line is not None, "stdout closed before the awaited line:\n" + "\n".join(
                self.seen[-20:]
            )
            self.seen.append(line)
            if match := pattern.match(line):
                return match

    def finish(self, timeout=60):
        """Wait for the exit; all of stdout read, and stderr."""
        returncode = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        while (line := self._lines.get_nowait()) is not None:
            self.seen.append(line)
        return returncode, self.process.stderr.read()

    def kill_9(self):
        """kill -9 of the script alone, as the OOM killer would do it: returns
        the processes it had started and those of them still running 10 s later."""
        started = descendants(self.process.pid)
        self.process.kill()
        self.process.wait()
        return started, left_after(started, seconds=10)

    def kill(self):
        """Stop it by force, and all it started: a failing test leaves nothing behind."""
        if self.process.poll() is None:
            started = descendants(self.process.pid)
            self.process.kill()
            self.process.wait()
            left_after(started, seconds=0)


def descendants(pid):
    """Process ids of pid's children, their children and so on (Linux /proc)."""
    children = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return sorted(found)


def running(pids):
    """Those of pids that are still running (a zombie has ended)."""
    alive = []
    for pid in pids:
        try:
            state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


def left_after(pids, seconds=10):
    """The processes of pids still running after at most `seconds`; those
    are then killed, so that a failing test leaves nothing behind either."""
    deadline = time.monotonic() + seconds
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = running(pids)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


@dataclasses.dataclass
class TrainLog:
    """What a training run printed, parsed."""

    points: dict  # episode number -> [(game, reward, has_marks)] in printed order
    episodes: list  # [(total, running_mean)] in printed order
    batches: list  # [(episodes, steps)]
    saved: list  # [(path, episode)]


def parse_train_log(lines):
    points, episodes, batches, saved = {}, [], [], []
    for line in lines:
        if m := POINT_RE.match(line):
            points.setdefault(int(m[1]), []).append((int(m[2]), float(m[3]), m[4] is not None))
        elif m := EPISODE_RE.match(line):
            episodes.append((float(m[1]), float(m[2])))
        elif m := BATCH_RE.match(line):
            batches.append((int(m[1]), int(m[2])))
        elif m := SAVED_RE.match(line):
            saved.append((m[1], int(m[2])))
    return TrainLog(points, episodes, batches, saved)


def read_progress(directory, torn_end=False):
    """progress.csv's rows. With torn_end, a last line without its line end
    (a row that a hard kill cut short) is left out."""
    with open(pathlib.Path(directory) / "progress.csv", newline="") as f:
        text = f.read()
    if torn_end:
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == PROGRESS_FIELDS
    return list(reader)


def load_checkpoint(path):
    """All arrays of a checkpoint, read the way a careful user would: no pickle."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def running_means(rewards, start=None):
    """The tutorial's rule: the first reward, then 0.99 * mean + 0.01 * reward."""
    means, mean = [], start
    for reward in rewards:
        mean = reward if mean is None else mean * 0.99 + reward * 0.01
        means.append(mean)
    return means


def count_video_frames(path):
    import imageio.v2 as imageio

    shapes = set()
    count = 0
    with imageio.get_reader(str(path)) as reader:
        for frame in reader:
            count += 1
            shapes.add(frame.shape)
    return count, shapes


def assert_one_line_error(result):
    """Bad input: exit status 2 and one line on stderr, no traceback."""
    assert result.returncode == 2, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    assert len(result.stderr_lines) == 1, (
        "expected exactly one non-empty stderr line, "
        f"got {len(result.stderr_lines)}:\n{result.stderr}"
    )


def rewards_episode(pong, rewards):
    """An Episode with these rewards and nothing else: empty frames, all labels 0."""
    n = len(rewards)
    return pong.Episode(
        0,
        np.zeros(n, np.int16),
        np.zeros(0, np.int16),
        np.zeros(0, np.int8),
        np.zeros(n, np.int8),
        np.array(rewards, np.int16),
        np.array(rewards) != 0,  # Pong's: a point ends at every reward
    )


def standardised(values):
    """The tutorial's standardisation, in float64: zero mean, unit deviation."""
    values = np.array(values, np.float64)
    return (values - values.mean()) / values.std()


def new_policy(pong, hidden_units=200, seed_value=1):
    """pong.build_policy, as often as a test needs: TensorLayer refuses a
    second model named 'policy' in one process (the script builds one), so the
    name is released from TensorLayer's registry first."""
    import tensorlayer as tl

    tl.models.core._global_model_name_set.discard("policy")
    model = pong.build_policy(hidden_units, seed_value)
    model.eval()
    return model
