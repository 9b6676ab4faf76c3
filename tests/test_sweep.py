"""sweep.py against the real things: real studies in a real SQLite file (and a
real PostgreSQL server where one is given), real runs of the script on the
real Pong-v0, real signals. Each trial is kept tiny: a few episodes of a
network with 8 hidden units, one update per episode."""

import collections
import datetime
import importlib.util
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import optuna
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from helpers import (
    REPO,
    Result,
    assert_one_line_error,
    descendants,
    left_after,
    read_progress,
    script_env,
)

SWEEP = REPO / "sweep.py"
TINY = ["--", "--batch-size", "1", "--hidden", "8"]  # after --: every run of a trial gets these
POSTGRES_URL = os.environ.get("PONG_SWEEP_POSTGRES_URL")
optuna.logging.set_verbosity(optuna.logging.ERROR)


def run_sweep(args, cwd, timeout=900, sweep=SWEEP):
    """sweep.py to its end; the timeout only guards against a hang."""
    args = [str(a) for a in args]
    done = subprocess.run(
        [sys.executable, str(sweep), *args],
        cwd=cwd,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(args, done.returncode, done.stdout, done.stderr)


def start_sweep(args, cwd, log):
    return subprocess.Popen(
        [sys.executable, str(SWEEP), *[str(a) for a in args]],
        cwd=cwd,
        env=script_env(),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process, log, timeout=900):
    returncode = process.wait(timeout=timeout)
    return returncode, pathlib.Path(log).read_text()


def load(cwd, name="pong", url=None):
    return optuna.load_study(
        study_name=name, storage=url or f"sqlite:///{cwd / 'runs' / 'studies.db'}"
    )


def expected_objective(trial_folder, episodes, seeds):
    """The objective by hand: the mean reward of the last tenth of each seed's
    episodes in its progress.csv, averaged over the seeds."""
    means = []
    for seed in range(1, seeds + 1):
        rows = read_progress(trial_folder / f"seed-{seed}")
        assert [int(r["episode"]) for r in rows] == list(range(episodes)), (
            "each episode once, in order"
        )
        tail = rows[episodes - max(1, episodes // 10) :]
        means.append(np.mean([float(r["reward"]) for r in tail]))
    return float(np.mean(means))


def checkpoint_episode(folder):
    try:
        with np.load(folder / "model_pong.npz", allow_pickle=False) as data:
            return int(data["state/episode"])
    except (OSError, KeyError, ValueError):
        return None


def wait_until(condition, what, seconds=600):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.5)


def trial_lines(output):
    """The trial numbers a sweep started, from its 'trial N: setting' lines."""
    return [int(m[1]) for m in re.finditer(r"^trial (\d+): learning_rate=", output, re.M)]


# --- One machine, SQLite --------------------------------------------------------


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """2 trials x 4 episodes x 2 seeds, run to the end, no pruning."""
    cwd = tmp_path_factory.mktemp("sweep")
    result = run_sweep(
        ["--trials", 2, "--episodes", 4, "--seeds", 2, "--save-every", 2, "--no-prune", *TINY], cwd
    )
    return cwd, result


@pytest.mark.e2e
def test_both_trials_complete_with_the_objective_of_their_progress_rows(small_study):
    cwd, result = small_study
    assert result.returncode == 0, result.describe()
    study = load(cwd)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # The tutorial's own setting comes first in a new study.
    assert trials[0].params == {"learning_rate": 1e-4, "decay_rate": 0.99, "init": "glorot-uniform"}
    for t in trials:
        folder = cwd / "runs" / "pong" / f"trial-{t.number:04d}"
        assert t.value == pytest.approx(expected_objective(folder, 4, 2))
        log = (folder / "seed-2" / "train.log").read_text()
        assert log.rstrip().endswith(
            f"saved checkpoint to {folder.relative_to(cwd)}/seed-2/model_pong.npz (episode 4)"
        )
        assert t.intermediate_values.keys() == {2}  # every --save-every episodes, before the end
    assert "study pong holds 2 finished trials" in result.stdout


@pytest.mark.e2e
def test_report_from_the_storage_alone_best_first_and_its_figure(small_study, tmp_path):
    cwd, _ = small_study
    elsewhere = tmp_path / "another-machine"  # the database alone, without the runs' folders
    elsewhere.mkdir()
    shutil.copy(cwd / "runs" / "studies.db", elsewhere / "copy.db")
    result = run_sweep(
        ["--report", "--storage", f"sqlite:///{elsewhere / 'copy.db'}", "--runs", "out"], elsewhere
    )
    assert result.returncode == 0, result.describe()
    assert result.stderr == "", result.describe()
    study = load(cwd)
    rows = [line.split() for line in result.lines if re.match(r"^\s+\d+\s", line)]
    best_first = sorted(study.get_trials(), key=lambda t: -t.value)
    assert [int(row[0]) for row in rows] == [t.number for t in best_first]
    for row, t in zip(rows, best_first, strict=True):
        assert row[4] == "complete" and float(row[5]) == pytest.approx(t.value, abs=5e-4)
        assert row[6] == "4"  # episodes
        won, played = map(int, re.fullmatch(r"\((\d+)/(\d+)\)", row[8]).groups())
        assert played >= 2 * 21 and won == t.user_attrs["points_won"]
    assert "--episodes 4 --seeds 2 -- --batch-size 1 --hidden 8" in result.lines[0]
    total = re.fullmatch(
        r"study total: 2 finished trials \(2 complete, 0 pruned\), "
        r"(\d+\.\d\d) hours of training: .*",
        result.lines[-1],
    )
    assert total, result.lines[-1]
    hours = sum(float(row[-1]) for row in rows)  # each row's rounding: 0.005 each at most
    assert float(total[1]) == pytest.approx(hours, abs=0.011)
    figure = elsewhere / "out" / "pong" / "report.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (elsewhere / "out" / "pong" / "report-history.png").exists()


@pytest.mark.e2e
def test_two_sweeps_at_once_on_one_file_share_the_trials(tmp_path):
    args = ["--trials", 3, "--episodes", 2, "--seeds", 1, "--save-every", 2, *TINY]
    first = start_sweep(args, tmp_path, tmp_path / "first.log")
    time.sleep(3)  # the first creates the study; the second finds it
    second = start_sweep(args, tmp_path, tmp_path / "second.log")
    (code_1, out_1), (code_2, out_2) = (
        finish(first, tmp_path / "first.log"),
        finish(second, tmp_path / "second.log"),
    )
    assert code_1 == code_2 == 0, out_1 + out_2
    started_1, started_2 = trial_lines(out_1), trial_lines(out_2)
    assert started_1 and started_2, "both sweeps trained\n" + out_1 + out_2
    assert not set(started_1) & set(started_2), "no trial trained by both"
    study = load(tmp_path)
    finished = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    # --trials counts the study's trials: one sweep at a time counts and starts one.
    assert sorted(started_1 + started_2) == [t.number for t in finished] == [0, 1, 2]
    for t in finished:
        rows = read_progress(tmp_path / "runs" / "pong" / t.user_attrs["folder"] / "seed-1")
        assert [int(r["episode"]) for r in rows] == [0, 1]


@pytest.mark.e2e
def test_kill_9_mid_trial_leaves_nothing_running_and_the_same_command_resumes_it(tmp_path):
    episodes = 10
    args = [
        "--trials",
        1,
        "--episodes",
        episodes,
        "--seeds",
        2,
        "--save-every",
        2,
        "--grace-period",
        10,
        *TINY,
    ]
    trial_folder = tmp_path / "runs" / "pong" / "trial-0000"
    sweep = start_sweep(args, tmp_path, tmp_path / "killed.log")
    try:
        wait_until(
            lambda: all((checkpoint_episode(trial_folder / f"seed-{s}") or 0) >= 2 for s in (1, 2)),
            "both seeds saved a checkpoint",
        )
        started = descendants(sweep.pid)
        assert len(started) >= 2, "the two runs"
        sweep.kill()
        sweep.wait()
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert left_after(started, seconds=15) == [], "the runs end when their sweep is killed"
    saved = {s: checkpoint_episode(trial_folder / f"seed-{s}") for s in (1, 2)}
    # The seeds run side by side at their own pace: one may have finished before the other saved.
    assert (
        all(2 <= episode <= episodes for episode in saved.values())
        and min(saved.values()) < episodes
    ), saved

    result = run_sweep(args, tmp_path)
    assert result.returncode == 0, result.describe()
    study = load(tmp_path)
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE], states
    retried = study.get_trials()[1]
    assert (
        retried.system_attrs["failed_trial"] == 0 and retried.user_attrs["folder"] == "trial-0000"
    )
    assert "(trial 0 tried again)" in result.stdout
    for s in (1, 2):
        log = (trial_folder / f"seed-{s}" / "train.log").read_text()
        resumed = f"resumed from runs/pong/trial-0000/seed-{s}/model_pong.npz at episode {saved[s]}"
        assert (resumed in log) == (saved[s] < episodes), (s, saved)
    assert retried.value == pytest.approx(
        expected_objective(trial_folder, episodes, 2)
    )  # each episode once


@pytest.mark.e2e
def test_sigterm_stops_the_runs_saved_and_queues_the_trial_again(tmp_path):
    args = ["--trials", 1, "--episodes", 6, "--seeds", 2, "--save-every", 2, *TINY]
    sweep = start_sweep(args, tmp_path, tmp_path / "sweep.log")
    trial_folder = tmp_path / "runs" / "pong" / "trial-0000"
    try:
        wait_until(
            lambda: "trial 0 episode 2:" in (tmp_path / "sweep.log").read_text(), "the first report"
        )
        started = descendants(sweep.pid)
        sweep.send_signal(signal.SIGTERM)
        code, output = finish(sweep, tmp_path / "sweep.log", timeout=180)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert code == 0, output
    assert "stopped: trial 0's runs saved; it is queued again" in output
    assert left_after(started, seconds=0) == []
    for s in (1, 2):
        last = (trial_folder / f"seed-{s}" / "train.log").read_text().splitlines()[-1]
        assert re.fullmatch(
            rf"saved checkpoint to .*seed-{s}/model_pong.npz \(episode \d\)", last
        ), last
    trials = load(tmp_path).get_trials()
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.WAITING,
    ]
    assert trials[1].params == trials[0].params and trials[1].user_attrs["folder"] == "trial-0000"


@pytest.mark.e2e
def test_a_hopeless_setting_is_pruned_and_its_runs_stop(tmp_path):
    """Five finished trials that won every point at every report, then a
    setting at the top of the learning-rate range: the median pruner stops
    it at its first report past the warm-up, long before its last episode
    (14 episodes: the sweep looks every second and tiny episodes take a
    quarter of one, so with 6 a slow look let the run finish first)."""
    episodes = 14
    url = f"sqlite:///{tmp_path / 'runs' / 'studies.db'}"
    (tmp_path / "runs").mkdir()
    study = optuna.create_study(study_name="pong", storage=url, direction="maximize")
    for name, value in {"episodes": episodes, "seeds": 1, "run_flags": TINY[1:]}.items():
        study.set_user_attr(name, value)
    distributions = {
        "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
        "decay_rate": optuna.distributions.FloatDistribution(0.9, 0.999),
        "init": optuna.distributions.CategoricalDistribution(
            ["glorot-uniform", "glorot-normal", "he-uniform", "he-normal", "truncated-normal"]
        ),
    }
    for lr in (1e-4, 2e-4, 3e-4, 4e-4, 5e-4):
        study.add_trial(
            optuna.trial.create_trial(
                params={"learning_rate": lr, "decay_rate": 0.99, "init": "glorot-uniform"},
                distributions=distributions,
                value=21.0,
                intermediate_values={2: 21.0, 4: 21.0},
            )
        )
    result = run_sweep(
        [
            "--trials",
            6,
            "--episodes",
            episodes,
            "--seeds",
            1,
            "--save-every",
            2,
            "--enqueue",
            "learning_rate=1e-2,decay_rate=0.9,init=he-normal",
            *TINY,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.describe()
    pruned = load(tmp_path).get_trials()[5]
    assert pruned.state == optuna.trial.TrialState.PRUNED, result.describe()
    assert pruned.params == {"learning_rate": 1e-2, "decay_rate": 0.9, "init": "he-normal"}
    assert "trial 5 pruned at episode 2" in result.stdout
    # The record is of the episodes the pruner judged, 0-1 (a tenth of them: one
    # game), however far the run got before it stopped.
    assert pruned.user_attrs["episodes"] == 2 and pruned.user_attrs["games"] == 1
    seed_folder = tmp_path / "runs" / "pong" / "trial-0005" / "seed-1"
    assert checkpoint_episode(seed_folder) < episodes  # stopped early, saved
    assert (
        (seed_folder / "train.log").read_text().splitlines()[-1].startswith("saved checkpoint to")
    )
    report = run_sweep(["--report"], tmp_path)
    assert report.returncode == 0, report.describe()
    assert re.search(r"^\s+5 .* pruned ", report.stdout, re.M), report.stdout


# --- Bad input --------------------------------------------------------------------


@pytest.fixture
def study_file(tmp_path):
    """A study with one finished trial that no error may lose."""
    (tmp_path / "runs").mkdir()
    url = f"sqlite:///{tmp_path / 'runs' / 'studies.db'}"
    study = optuna.create_study(study_name="pong", storage=url, direction="maximize")
    study.enqueue_trial({"learning_rate": 1e-4, "decay_rate": 0.99, "init": "glorot-uniform"})
    study.optimize(
        lambda trial: -20.0 if trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True) else 0,
        n_trials=1,
    )
    return tmp_path


def assert_study_intact(cwd):
    trials = load(cwd).get_trials()
    assert [(t.state, t.value) for t in trials] == [(optuna.trial.TrialState.COMPLETE, -20.0)]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--storage", "not a url"], "not a database URL"),
        (
            ["--storage", "postgresql://nobody:secret@127.0.0.1:1/none"],
            "cannot open the study database",
        ),
        (["--storage", "nosuchdb://host/x"], "cannot open the study database"),
        (["--trials", 1, "--", "--seed", "3"], "--seed after --: the sweep sets it"),
        (["--trials", 1, "--", "--learn=1e-3"], "--learn=1e-3 after --"),
        (["--trials", 1, "--", "--network", "cnn"], "--network after --: the sweep sets it"),
        (
            ["--trials", 1, "--network", "cnn", "--", "--hid=8"],
            "--hid=8 after --: --hidden does nothing with --network cnn",
        ),
        (["--trials", 1, "--network", "rnn"], "--network: invalid choice: 'rnn'"),
        (["--trials", 1, "--enqueue", "learning_rate=1"], "outside the search block"),
        (["--trials", 1, "--enqueue", "speed=3"], "expected NAME=VALUE"),
        (["--trials", 1, "--episodes", 9], "study pong trains with --episodes 3000 --seeds 2"),
        (["--trials", 0], "--trials"),
        (
            ["--report", "--study", "nope"],
            "no study nope in sqlite:///runs/studies.db (there: pong)",
        ),
    ],
)
def test_bad_input_is_one_line_and_loses_nothing(study_file, flags, words):
    if "--episodes" in flags:  # the study as a sweep of the defaults would have left it
        for name, value in {"episodes": 3000, "seeds": 2, "run_flags": []}.items():
            load(study_file).set_user_attr(name, value)
    result = run_sweep(flags, study_file, timeout=120)
    assert_one_line_error(result)
    assert result.stderr.startswith("sweep.py: error: ") and words in result.stderr, result.stderr
    assert "secret" not in result.stderr
    assert_study_intact(study_file)


def test_report_without_a_database_creates_none(tmp_path):
    result = run_sweep(["--report"], tmp_path, timeout=120)
    assert_one_line_error(result)
    assert "no study database at runs/studies.db" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "line, value",
    [
        ("LEARNING_RATE = (1e-5, 1e-2)", "LEARNING_RATE = (1e-2, 1e-5)"),
        ("DECAY_RATE = (0.9, 0.999)", "DECAY_RATE = (0.9, 1.5)"),
        ('INITIALISERS = ["glorot-uniform",', 'INITIALISERS = ["xavier", "glorot-uniform",'),
    ],
)
def test_a_bad_value_in_the_search_block_is_one_line(study_file, line, value):
    edited = study_file / "edited"
    edited.mkdir()
    source = SWEEP.read_text()
    assert line in source
    (edited / "sweep.py").write_text(source.replace(line, value))
    (edited / "tutorial_atari_pong.py").symlink_to(REPO / "tutorial_atari_pong.py")
    result = run_sweep(["--trials", 1], study_file, sweep=edited / "sweep.py", timeout=120)
    assert_one_line_error(result)
    assert f"{value.split(' =')[0]} = " in result.stderr and "in sweep.py" in result.stderr
    assert_study_intact(study_file)


@pytest.mark.e2e
def test_a_trial_folder_locked_by_a_training_run_is_one_line_and_the_trial_waits(tmp_path):
    folder = tmp_path / "runs" / "pong" / "trial-0000" / "seed-1"
    training = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tutorial_atari_pong.py"),
            "--model-dir",
            str(folder),
            "--envs",
            "1",
            *TINY[1:],
        ],
        cwd=tmp_path,
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in training.stdout:  # its first point: the folder is locked by then
            if line.startswith("episode 0: game 0"):
                break
        result = run_sweep(
            ["--trials", 1, "--episodes", 2, "--seeds", 1, *TINY], tmp_path, timeout=120
        )
    finally:
        training.send_signal(signal.SIGTERM)
        training.communicate(timeout=120)
    assert_one_line_error(result)
    assert (
        f"another training run (pid {training.pid}) is using runs/pong/trial-0000/seed-1"
        in result.stderr
    )
    trials = load(tmp_path).get_trials()
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.WAITING,
    ]
    assert trials[1].user_attrs["folder"] == "trial-0000"


def test_help_states_the_objective():
    result = run_sweep(["--help"], REPO, timeout=120)
    assert result.returncode == 0
    assert "mean episode reward over the last tenth of the E episodes" in " ".join(
        result.stdout.split()
    )
    assert "averaged over the seeds" in " ".join(result.stdout.split())


# --- The objective's episodes and the report's total, without training ----------------


@pytest.fixture(scope="module")
def sweep_module():
    """sweep.py as a module, for the functions that need no study and no run."""
    sys.path.insert(0, str(REPO))  # as when it runs: the script beside it is importable
    spec = importlib.util.spec_from_file_location("sweep_under_test", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def progress(episodes, points_won):
    """progress.csv's rows as the sweep reads them: an episode a second."""
    start = datetime.datetime(2026, 1, 1)
    return [
        {
            "episode": str(episode),
            "reward": str(float(points_won(episode) - 21)),
            "points_won": str(points_won(episode)),
            "points_lost": "21",
            "wall_time": (start + datetime.timedelta(seconds=episode)).isoformat(),
        }
        for episode in range(episodes)
    ]


@pytest.mark.parametrize(
    "lengths, judged, episodes",
    [
        ((310, 300), None, 300),  # trial 11 of models/sweep: seed 1 ran on to 310 rows
        ((806, 801), 800, 800),  # pruned at episode 800, both seeds a little past it
        ((1500, 1500), None, 1500),  # a complete trial
    ],
)
def test_the_last_tenth_is_of_the_same_episodes_of_every_seed(
    sweep_module, lengths, judged, episodes
):
    seeds = [progress(n, lambda e, s=s: (e + s) % 3) for s, n in enumerate(lengths)]
    result = sweep_module.last_tenth(seeds, judged)
    tail = range(episodes - episodes // 10, episodes)
    won = [(e + s) % 3 for s in range(len(lengths)) for e in tail]
    assert result["episodes"] == episodes
    assert result["games"] == len(won) == 2 * (episodes // 10)
    assert result["points_won"] == sum(won)
    assert result["points_played"] == sum(won) + 21 * len(won)
    assert result["games_won"] == 0
    assert result["mean_reward"] == pytest.approx(np.mean(won) - 21)
    # Hours: the slowest seed's, all its episodes (an episode a second).
    assert result["hours"] == pytest.approx((max(lengths) - 1) / 3600)


def test_the_report_closes_with_the_study_total_of_its_hours_column(tmp_path):
    (tmp_path / "runs").mkdir()
    url = f"sqlite:///{tmp_path / 'runs' / 'studies.db'}"
    study = optuna.create_study(study_name="pong", storage=url, direction="maximize")
    setting = {"learning_rate": 1e-4, "decay_rate": 0.99, "init": "glorot-uniform"}
    distributions = {
        "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
        "decay_rate": optuna.distributions.FloatDistribution(0.9, 0.999),
        "init": optuna.distributions.CategoricalDistribution(["glorot-uniform"]),
    }
    finished = {
        optuna.trial.TrialState.COMPLETE: [0.5, 0.25],
        optuna.trial.TrialState.PRUNED: [0.2],
    }
    for state, all_hours in finished.items():
        for hours in all_hours:
            study.add_trial(
                optuna.trial.create_trial(
                    state=state,
                    value=-20.0 if state == optuna.trial.TrialState.COMPLETE else None,
                    params=setting,
                    distributions=distributions,
                    user_attrs={"mean_reward": -20.0, "episodes": 10, "hours": hours},
                )
            )
    study.add_trial(  # no hours of its own: a failed try's are in its retry's
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL,
            params=setting,
            distributions=distributions,
        )
    )
    result = run_sweep(["--report"], tmp_path, timeout=120)
    assert result.returncode == 0, result.describe()
    assert result.lines[-1] == (
        "study total: 3 finished trials (2 complete, 1 pruned), 0.95 hours of training: the sum "
        "of their hours (each its slowest seed's, as the seeds train side by side; a retried "
        "trial's include its failed tries')"
    )
    table = [line.split() for line in result.lines if re.match(r"^\s+\d+\s", line)]
    assert sum(float(row[-1]) for row in table if row[4] in ("complete", "pruned")) == 0.95


def test_the_report_shows_the_setting_of_a_trial_waiting_in_the_queue(tmp_path):
    (tmp_path / "runs").mkdir()
    url = f"sqlite:///{tmp_path / 'runs' / 'studies.db'}"
    study = optuna.create_study(study_name="pong", storage=url, direction="maximize")
    study.enqueue_trial({"learning_rate": 0.00416, "decay_rate": 0.934, "init": "he-normal"})
    result = run_sweep(["--report"], tmp_path, timeout=120)
    assert result.returncode == 0, result.describe()
    rows = [line.split() for line in result.lines if re.match(r"^\s+\d+\s", line)]
    assert rows[0][:5] == ["0", "0.00416", "0.934", "he-normal", "waiting"], result.lines


# --- One network a study ------------------------------------------------------------

ENQUEUED = {"learning_rate": 0.00416, "decay_rate": 0.934, "init": "he-normal"}  # the MLP's winner


def study_state(study):
    """What a refused sweep must leave as it was: the study's attributes and its trials."""
    return study.user_attrs, [
        (t.number, t.state, t.params, t.user_attrs, t.system_attrs) for t in study.get_trials()
    ]


def refusal(study, made, asked):
    return (
        f"sweep.py: error: study {study} trains --network {made}, this command has --network "
        f"{asked}: use another --study (a study's trials all train one network)\n"
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("made, asked", [("mlp", "cnn"), ("cnn", "mlp")])
def test_a_study_keeps_its_network_and_a_sweep_of_another_is_refused(
    sweep_module, tmp_path, backend, made, asked
):
    """The study as sweep.py makes it (its own code, on a real database), then a
    sweep of the other network: one line, exit 2, the study as it was."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    url = postgres_or_skip() if backend == "postgresql" else f"sqlite:///{tmp_path / 'studies.db'}"
    flags = ["--storage", url, "--study", name, "--runs", tmp_path / "runs"]
    args = sweep_module.parse_args([str(f) for f in ["--network", made, *flags]])
    storage = sweep_module.open_storage(url, must_exist=False)
    try:
        study = sweep_module.open_study(args, storage, sweep_module.script_setting())
        assert study.user_attrs["network"] == made
        before = study_state(study)
        result = run_sweep(["--network", asked, "--trials", 1, *flags], tmp_path, timeout=120)
        assert_one_line_error(result)
        assert result.stderr == refusal(name, made, asked)
        assert study_state(study) == before
        assert not (tmp_path / "runs").exists()
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_an_old_study_without_a_network_counts_as_mlp(study_file):
    result = run_sweep(["--network", "cnn", "--trials", 1], study_file, timeout=120)
    assert_one_line_error(result)
    assert result.stderr == refusal("pong", "mlp", "cnn")
    assert_study_intact(study_file)
    assert "network" not in load(study_file).user_attrs
    # An mlp sweep carries on with it: here, nothing left to train.
    result = run_sweep(["--network", "mlp", "--trials", 1], study_file, timeout=120)
    assert result.returncode == 0, result.describe()
    assert "study pong holds 1 finished trials (--trials 1): done" in result.stdout
    assert_study_intact(study_file)


@pytest.mark.parametrize("recorded, named", [({"network": "cnn"}, "cnn"), ({}, "mlp")])
def test_the_report_names_the_study_network(tmp_path, recorded, named):
    (tmp_path / "runs").mkdir()
    url = f"sqlite:///{tmp_path / 'runs' / 'studies.db'}"
    study = optuna.create_study(study_name="pong", storage=url, direction="maximize")
    for attr, value in {**recorded, "episodes": 10, "seeds": 1, "run_flags": []}.items():
        study.set_user_attr(attr, value)
    study.add_trial(
        optuna.trial.create_trial(
            value=-20.0,
            params=ENQUEUED,
            distributions={
                "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
                "decay_rate": optuna.distributions.FloatDistribution(0.9, 0.999),
                "init": optuna.distributions.CategoricalDistribution(["he-normal"]),
            },
            user_attrs={"mean_reward": -20.0, "episodes": 10, "hours": 0.1},
        )
    )
    result = run_sweep(["--report"], tmp_path, timeout=120)
    assert result.returncode == 0, result.describe()
    assert result.lines[0].startswith(f"study pong: --network {named} --episodes 10 --seeds 1; ")
    from PIL import Image

    with Image.open(tmp_path / "runs" / "pong" / "report.png") as figure:
        title = figure.text["Title"]
    assert title == f"study pong (--network {named}): objective by setting"


@pytest.mark.e2e
def test_a_cnn_sweep_trains_cnn_runs_and_keeps_the_enqueued_setting(tmp_path):
    setting = ",".join(f"{name}={value}" for name, value in ENQUEUED.items())
    args = ["--trials", 1, "--episodes", 2, "--seeds", 1, "--save-every", 2, "--enqueue", setting]
    result = run_sweep(["--network", "cnn", *args, "--", "--batch-size", "1"], tmp_path)
    assert result.returncode == 0, result.describe()
    assert "new study pong (--network cnn)" in result.stdout
    study = load(tmp_path)
    assert study.user_attrs["network"] == "cnn"
    first, queued = study.get_trials()
    assert first.state == optuna.trial.TrialState.COMPLETE
    assert first.params == {"learning_rate": 1e-4, "decay_rate": 0.99, "init": "glorot-uniform"}
    # The MLP sweep's winner waits as a CNN trial, to compare the networks at one setting.
    assert queued.state == optuna.trial.TrialState.WAITING
    assert queued.system_attrs["fixed_params"] == ENQUEUED
    seed_folder = tmp_path / "runs" / "pong" / "trial-0000" / "seed-1"
    with np.load(seed_folder / "model_pong.npz", allow_pickle=False) as checkpoint:
        assert str(checkpoint["config/network"]) == "cnn"
        assert int(checkpoint["state/episode"]) == 2
    before = study_state(study)
    refused = run_sweep(["--network", "mlp", *args, "--", "--batch-size", "1"], tmp_path)
    assert_one_line_error(refused)
    assert refused.stderr == refusal("pong", "cnn", "mlp")
    assert study_state(study) == before
    report = run_sweep(["--report"], tmp_path, timeout=120)
    assert report.returncode == 0, report.describe()
    assert report.lines[0].startswith("study pong: --network cnn --episodes 2 --seeds 1 -- ")


# --- Many machines: PostgreSQL ------------------------------------------------------


def postgres_or_skip():
    """The server's URL as Optuna takes it here (psycopg2, the driver
    requirements.txt installs)."""
    if not POSTGRES_URL:
        pytest.skip(
            "!!!!!!!! PONG_SWEEP_POSTGRES_URL is not set: the many-machine path (PostgreSQL) "
            "is NOT tested; .ci/run starts a server and sets it !!!!!!!!"
        )
    import psycopg2  # a missing driver fails the test: requirements.txt must bring it

    try:
        psycopg2.connect(POSTGRES_URL, connect_timeout=10).close()
    except psycopg2.OperationalError as error:
        reason = " ".join(str(error).split())
        pytest.skip(
            f"!!!!!!!! PostgreSQL at PONG_SWEEP_POSTGRES_URL cannot be reached ({reason}): "
            "the many-machine path is NOT tested !!!!!!!!"
        )
    return POSTGRES_URL


@pytest.mark.e2e
def test_two_machines_share_one_postgresql_study(tmp_path):
    url = postgres_or_skip()
    name = f"test-{uuid.uuid4().hex[:8]}"
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]  # each its own runs folder
    args = [
        "--trials",
        3,
        "--episodes",
        2,
        "--seeds",
        1,
        "--save-every",
        2,
        "--storage",
        url,
        "--study",
        name,
        *TINY,
    ]
    try:
        for machine in machines:
            machine.mkdir()
        first = start_sweep(args, machines[0], tmp_path / "a.log")
        time.sleep(3)
        second = start_sweep(args, machines[1], tmp_path / "b.log")
        (code_a, out_a), (code_b, out_b) = (
            finish(first, tmp_path / "a.log"),
            finish(second, tmp_path / "b.log"),
        )
        assert code_a == code_b == 0, out_a + out_b
        on_a, on_b = trial_lines(out_a), trial_lines(out_b)
        assert on_a and on_b and not set(on_a) & set(on_b), out_a + out_b
        study = optuna.load_study(
            study_name=name, storage=url.replace("postgresql://", "postgresql+psycopg2://", 1)
        )
        finished = [
            t.number for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE
        ]
        assert sorted(on_a + on_b) == finished == [0, 1, 2]
        for machine, numbers in zip(machines, (on_a, on_b), strict=True):
            trained = sorted(p.name for p in (machine / "runs" / name).glob("trial-*"))
            assert trained == [f"trial-{n:04d}" for n in sorted(numbers)], (
                "each machine trains in its own folder"
            )
        report = run_sweep(["--report", "--storage", url, "--study", name], tmp_path, timeout=120)
        assert report.returncode == 0, report.describe()
        assert len([line for line in report.lines if " complete " in line]) == len(finished)
    finally:
        try:
            optuna.delete_study(
                study_name=name, storage=url.replace("postgresql://", "postgresql+psycopg2://", 1)
            )
        except KeyError:
            pass


# --- Many sweeps released at once on a fresh database -------------------------------

SWARM = 4  # sweeps released at the same instant
# A sweep as its command line runs it, but stopped at a barrier once its slow imports are
# done: it says so on the `ready` pipe and waits for a byte on the `go` pipe, which the test
# writes for all at once, so that they reach the database together.
SWARM_SWEEP = """
import os
import runpy
import sys

ready, go = int(sys.argv[1]), int(sys.argv[2])
sys.argv = sys.argv[3:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
import optuna  # sweep.py's slow imports, before the barrier
import sqlalchemy
import tutorial_atari_pong
os.write(ready, b"r")
os.close(ready)
if os.read(go, 1) != b"g":
    sys.exit("the test stopped before the release")
os.close(go)
runpy.run_path(sys.argv[0], run_name="__main__")
"""
MID_TRIAL = re.compile(r"^trial (\d+) episode 2:", re.M)


def optuna_url(url):
    """The URL as Optuna takes it here: psycopg2 for PostgreSQL, as sweep.py does."""
    return re.sub(r"^postgresql://", "postgresql+psycopg2://", url)


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_storage(request, tmp_path):
    """A database no sweep has touched: a new SQLite file, or a new schema of the
    PostgreSQL database (tables and types of its own), dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs' / 'studies.db'}"
        return
    import psycopg2
    import sqlalchemy

    url = postgres_or_skip()
    schema = f"swarm_{uuid.uuid4().hex[:8]}"
    server = psycopg2.connect(url, connect_timeout=10)
    server.autocommit = True
    server.cursor().execute(f"CREATE SCHEMA {schema}")
    try:
        yield (
            sqlalchemy.engine.make_url(url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        server.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
        server.close()


@pytest.fixture
def swarm():
    """release(cwd, sweeps): a sweep for each (log, its flags), all released at once; those
    still running at the end of the test are killed with all they started."""
    workers = []

    def release(cwd, sweeps):
        ready_read, ready_write = os.pipe()
        go_read, go_write = os.pipe()
        released = []
        try:
            for log, args in sweeps:
                with open(log, "w") as out:
                    command = [sys.executable, "-c", SWARM_SWEEP, str(ready_write), str(go_read)]
                    released.append(
                        subprocess.Popen(
                            [*command, str(SWEEP), *[str(a) for a in args]],
                            cwd=cwd,
                            env=script_env(),
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            pass_fds=(ready_write, go_read),
                        )
                    )
        finally:
            workers.extend(released)
            os.close(ready_write)
            os.close(go_read)
        try:
            # Each closes its end once ready: a sweep that dies before is an end of file here.
            ready = b""
            while len(ready) < len(sweeps):
                got = os.read(ready_read, len(sweeps))
                assert got, "a sweep ended before the barrier:\n" + everything(
                    [log for log, _ in sweeps]
                )
                ready += got
            os.write(go_write, b"g" * len(sweeps))
        finally:
            os.close(ready_read)
            os.close(go_write)
        return released

    yield release
    for worker in workers:
        if worker.poll() is None:
            started = descendants(worker.pid)
            worker.kill()
            worker.wait()
            left_after(started, seconds=0)


def everything(logs):
    return "\n".join(f"--- {log.name}\n{log.read_text()}" for log in logs)


def finished_swarm(workers, logs):
    """Each sweep's exit status and the trials it started, once all have ended."""
    return [worker.wait(timeout=900) for worker in workers], [
        trial_lines(log.read_text()) for log in logs
    ]


def assert_report_reads(url, cwd, complete):
    report = run_sweep(["--report", "--storage", url], cwd, timeout=120)
    assert report.returncode == 0, report.describe()
    assert report.lines[-1].startswith(
        f"study total: {complete} finished trials ({complete} complete, 0 pruned)"
    ), report.describe()


@pytest.mark.e2e
@pytest.mark.parametrize("round_number", range(1, 6))
def test_sweeps_released_at_once_on_a_fresh_database_each_train_their_own_trials(
    fresh_storage, swarm, tmp_path, round_number
):
    """Four sweeps, each asked to queue one setting, reach a database without tables at
    the same instant (five rounds: without the study's lock, four rounds of five lost one
    to three of the four to 'table ... already exists')."""
    setting = ",".join(f"{name}={value}" for name, value in ENQUEUED.items())
    args = ["--trials", SWARM, "--episodes", 2, "--seeds", 1, "--save-every", 2, "--enqueue"]
    args = [*args, setting, "--storage", fresh_storage, *TINY]
    logs = [tmp_path / f"sweep-{n}.log" for n in range(SWARM)]
    workers = swarm(tmp_path, [(log, args) for log in logs])
    codes, started = finished_swarm(workers, logs)
    assert codes == [0] * SWARM, everything(logs)
    assert all(started), "every sweep trained a trial\n" + everything(logs)
    assert sorted(sum(started, [])) == list(range(SWARM)), (
        "each trial trained once, and no more than --trials\n" + everything(logs)
    )
    assert everything(logs).count("new study pong (--network mlp)") == 1, everything(logs)
    study = optuna.load_study(study_name="pong", storage=optuna_url(fresh_storage))
    assert [(t.number, t.state) for t in study.get_trials()] == [
        (n, optuna.trial.TrialState.COMPLETE) for n in range(SWARM)
    ]
    assert study.user_attrs["episodes"] == 2 and study.user_attrs["network"] == "mlp"
    assert [t.params for t in study.trials].count(ENQUEUED) == 1, "queued by one sweep only"
    assert_report_reads(fresh_storage, tmp_path, SWARM)


@pytest.mark.e2e
def test_two_sweeps_released_at_once_with_other_episodes_one_trains_the_other_refuses(
    fresh_storage, swarm, tmp_path
):
    """The study keeps one sweep's episodes: the sweep whose episodes it keeps trains,
    the other stops with one line before it trains anything, whichever wrote first."""
    logs = {episodes: tmp_path / f"episodes-{episodes}.log" for episodes in (2, 3)}
    common = ["--trials", 1, "--seeds", 1, "--save-every", 2, "--storage", fresh_storage, *TINY]
    workers = swarm(tmp_path, [(log, ["--episodes", e, *common]) for e, log in logs.items()])
    codes, started = finished_swarm(workers, logs.values())
    study = optuna.load_study(study_name="pong", storage=optuna_url(fresh_storage))
    kept = study.user_attrs["episodes"]
    refused = 3 if kept == 2 else 2
    assert dict(zip(logs, codes, strict=True)) == {kept: 0, refused: 2}, everything(logs.values())
    assert dict(zip(logs, started, strict=True)) == {kept: [0], refused: []}
    assert logs[refused].read_text().splitlines()[-1] == (
        f"sweep.py: error: study pong trains with --episodes {kept} --seeds 1 -- "
        f"--batch-size 1 --hidden 8; this command has --episodes {refused} --seeds 1 -- "
        "--batch-size 1 --hidden 8: give the same, or a new --study"
    )
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["episodes"] == kept
    assert len(read_progress(tmp_path / "runs" / "pong" / "trial-0000" / "seed-1")) == kept


@pytest.mark.e2e
def test_a_sweep_killed_mid_trial_in_a_swarm_leaves_its_trial_to_the_others(
    fresh_storage, swarm, tmp_path
):
    """kill -9 of one of four sweeps at its trial's first report: the three others
    go on, and once the trial's heartbeat is --grace-period old one of them retries it
    in its folder, resuming its run, to the end."""
    trials, episodes = 6, 12
    args = ["--trials", trials, "--episodes", episodes, "--seeds", 1, "--save-every", 2]
    # --no-prune: from the fifth finished trial the median pruner may stop one, which is not
    # what this test is about
    args = [*args, "--no-prune", "--grace-period", 10, "--storage", fresh_storage, *TINY]
    logs = [tmp_path / f"sweep-{n}.log" for n in range(SWARM)]
    workers = swarm(tmp_path, [(log, args) for log in logs])
    wait_until(
        lambda: any(MID_TRIAL.search(log.read_text()) for log in logs), "a trial's first report"
    )
    victim = next(n for n, log in enumerate(logs) if MID_TRIAL.search(log.read_text()))
    killed_trial = int(MID_TRIAL.search(logs[victim].read_text())[1])
    runs = descendants(workers[victim].pid)
    workers[victim].kill()
    assert left_after(runs, seconds=15) == [], "the killed sweep's run ends"
    codes, started = finished_swarm(workers, logs)
    assert codes == [0 if n != victim else -signal.SIGKILL for n in range(SWARM)], everything(logs)
    assert f"trial {killed_trial} complete" not in logs[victim].read_text()
    assert sorted(sum(started, [])) == list(range(trials + 1)), everything(logs)
    study = optuna.load_study(study_name="pong", storage=optuna_url(fresh_storage))
    states = collections.Counter(t.state for t in study.get_trials())
    assert states == {
        optuna.trial.TrialState.COMPLETE: trials,
        optuna.trial.TrialState.FAIL: 1,
    }, everything(logs)
    assert study.trials[killed_trial].state == optuna.trial.TrialState.FAIL
    (retried,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed_trial]
    assert retried.state == optuna.trial.TrialState.COMPLETE
    folder = tmp_path / "runs" / "pong" / f"trial-{killed_trial:04d}"
    assert retried.user_attrs["folder"] == folder.name
    taken_over = re.compile(
        rf"^trial {retried.number}: .* \(trial {killed_trial} tried again\)$", re.M
    )
    survivors = [log for n, log in enumerate(logs) if n != victim]
    assert any(taken_over.search(log.read_text()) for log in survivors), everything(logs)
    assert retried.value == pytest.approx(expected_objective(folder, episodes, 1))
    assert "resumed from" in (folder / "seed-1" / "train.log").read_text()
    assert_report_reads(fresh_storage, tmp_path, trials)


def test_a_sweep_kept_from_the_study_lock_stops_with_one_line_and_touches_nothing(
    sweep_module, fresh_storage, tmp_path
):
    """The lock held here (as a hung sweep would hold it), the sweep's wait cut to a
    second in a copy of it: one line, exit 2, no table made."""
    import sqlalchemy

    edited = tmp_path / "edited"
    edited.mkdir()
    line = "LOCK_WAIT_SECONDS = 300"
    source = SWEEP.read_text()
    assert line in source
    (edited / "sweep.py").write_text(source.replace(line, "LOCK_WAIT_SECONDS = 1"))
    (edited / "tutorial_atari_pong.py").symlink_to(REPO / "tutorial_atari_pong.py")
    with sweep_module.study_lock(fresh_storage):
        result = run_sweep(
            ["--trials", 1, "--episodes", 2, "--seeds", 1, "--storage", fresh_storage, *TINY],
            tmp_path,
            sweep=edited / "sweep.py",
        )
    assert_one_line_error(result)
    assert re.fullmatch(
        r"sweep\.py: error: another sweep has held \S+, the lock of the study database "
        r"\S+, for 1 s: is one stopped \(Ctrl-Z\) or hung\?\n",
        result.stderr,
    ), result.stderr
    assert ":sweep@" not in result.stderr, "the password hidden"
    engine = sqlalchemy.create_engine(optuna_url(fresh_storage))
    assert sqlalchemy.inspect(engine).get_table_names() == []
    engine.dispose()
