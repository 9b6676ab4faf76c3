"""The script run as a user runs it: a subprocess, the real Pong-v0 emulator."""

import datetime
import re
import shutil
import signal

import numpy as np
import pytest
from helpers import (
    BATCH_RE,
    EPISODE_RE,
    POINT_RE,
    PROGRESS_RE,
    SAVED_RE,
    SCRIPT,
    STALE_REWARD,
    LiveRun,
    assert_one_line_error,
    load_checkpoint,
    new_policy,
    parse_train_log,
    read_progress,
    run_script,
    running_means,
    script_env,
)

pytestmark = pytest.mark.e2e

PARAMETER_NAMES = ["hidden/weights:0", "hidden/biases:0", "output/weights:0", "output/biases:0"]
CHECKPOINT_KEYS = {
    "hidden/weights",
    "hidden/biases",
    "output/weights",
    "output/biases",
    "mean_square/hidden/weights",
    "mean_square/hidden/biases",
    "mean_square/output/weights",
    "mean_square/output/biases",
    "state/format",
    "state/episode",
    "state/running_mean",
    "config/input_size",
    "config/hidden",
    "config/learning_rate",
    "config/decay_rate",
    "config/gamma",
    "config/batch_size",
    "config/seed",
    "pending/steps",
    "pending/numbers",
    "pending/nnz",
    "pending/indices",
    "pending/signs",
    "pending/labels",
    "pending/rewards",
    "pending/ends",
}


@pytest.fixture(params=["train_run", "pool_run"], ids=["envs1", "envs2"])
def run(request):
    """Each fresh training run: 2 episodes in this process (--batch-size 1),
    and 2 episodes in two worker processes (--batch-size 2, --record)."""
    run = request.getfixturevalue(request.param)
    assert run.result.returncode == 0, run.result.describe()
    return run


def summary_end(lines):
    """Index of the model summary's last line."""
    ends = [i for i, line in enumerate(lines) if line.startswith("  num of params:")]
    assert len(ends) == 1, "\n".join(lines[:20])
    return ends[0]


# --- a fresh run ------------------------------------------------------------------


def test_training_prints_the_model_and_one_line_per_parameter(run):
    lines = run.result.lines
    end = summary_end(lines)
    assert lines[end] == "  num of params: 1280803"
    assert lines[0] == "policy("
    params = [
        re.match(
            r"^  param +(\d+): (\S+) +\(([\d, ]+)\) +float32 \(mean: .*, median: .*, std: .*\)$",
            line,
        )
        for line in lines[:end]
    ]
    params = [m for m in params if m]
    assert [int(m[1]) for m in params] == [0, 1, 2, 3]
    assert [m[2] for m in params] == PARAMETER_NAMES
    assert [m[3] for m in params] == ["6400, 200", "200,", "200, 3", "3,"]


def test_training_prints_only_known_lines_after_the_summary(run):
    lines = run.result.lines[summary_end(run.result.lines) + 1 :]
    unknown = [
        line
        for line in lines
        if not any(r.match(line) for r in (POINT_RE, EPISODE_RE, BATCH_RE, SAVED_RE))
    ]
    assert unknown == []


def test_point_lines_mark_exactly_the_won_points(run):
    log = parse_train_log(run.result.lines)
    assert sorted(log.points) == [0, 1]
    for number, points in log.points.items():
        assert [game for game, _, _ in points] == list(range(len(points))), (
            f"games of episode {number}"
        )
        for game, reward, marked in points:
            assert marked == (reward > 0), f"episode {number} game {game}"
        won, lost = sum(r > 0 for _, r, _ in points), sum(r < 0 for _, r, _ in points)
        assert max(won, lost) == 21, "a Pong episode ends when one side has 21 points"


def test_log_reads_as_if_episodes_were_played_one_after_another(run):
    """Even with two episodes played at once, each episode's point lines come
    together, followed by its own 'resetting env.' line."""
    current, order = 0, []
    for line in run.result.lines[summary_end(run.result.lines) + 1 :]:
        if m := POINT_RE.match(line):
            order.append((int(m[1]), "point"))
            assert int(m[1]) == current, (
                f"a line of episode {m[1]} while episode {current} is being logged: {order}"
            )
        elif EPISODE_RE.match(line):
            order.append((current, "end"))
            current += 1
    assert current == 2


def test_episode_totals_are_the_sums_of_their_points(run):
    log = parse_train_log(run.result.lines)
    assert len(log.episodes) == 2
    for number, (total, _) in enumerate(log.episodes):
        assert total == sum(reward for _, reward, _ in log.points[number])


def test_running_mean_starts_at_the_first_reward_then_decays_by_0_99(run):
    log = parse_train_log(run.result.lines)
    totals = [total for total, _ in log.episodes]
    np.testing.assert_allclose([mean for _, mean in log.episodes], running_means(totals), atol=1e-6)
    assert log.episodes[0][1] == totals[0]


def test_progress_csv_has_one_row_per_episode_matching_the_log(run):
    rows = read_progress(run.model_dir)
    log = parse_train_log(run.result.lines)
    assert [int(r["episode"]) for r in rows] == [0, 1]
    for row, (total, mean), number in zip(rows, log.episodes, (0, 1), strict=True):
        points = log.points[number]
        assert float(row["reward"]) == total
        assert float(row["reward"]) == int(row["points_won"]) - int(row["points_lost"])
        assert int(row["points_won"]) == sum(r > 0 for _, r, _ in points)
        assert int(row["points_lost"]) == sum(r < 0 for _, r, _ in points)
        assert float(row["running_mean"]) == pytest.approx(mean, abs=1e-6)
        assert int(row["steps"]) > 21
        assert float(row["seconds"]) > 0
        datetime.datetime.fromisoformat(row["wall_time"])


def test_one_update_line_per_batch_counting_its_steps(train_run, pool_run):
    for run, batches in ((train_run, [[0], [1]]), (pool_run, [[0, 1]])):
        assert run.result.returncode == 0, run.result.describe()
        steps = [int(r["steps"]) for r in read_progress(run.model_dir)]
        expected = [(len(batch), sum(steps[i] for i in batch)) for batch in batches]
        assert parse_train_log(run.result.lines).batches == expected


def test_training_ends_with_the_checkpoint_path(run):
    assert run.result.lines[-1] == f"saved checkpoint to {run.checkpoint} (episode 2)"


def test_checkpoint_holds_the_trained_state(pong, run):
    arrays = load_checkpoint(run.checkpoint)
    assert set(arrays) == CHECKPOINT_KEYS
    assert int(arrays["state/episode"]) == 2
    assert int(arrays["state/format"]) == 2
    assert (int(arrays["config/input_size"]), int(arrays["config/hidden"])) == (6400, 200)
    assert {
        name: arrays["config/" + name].item()
        for name in ("learning_rate", "decay_rate", "gamma", "seed")
    } == {"learning_rate": 1e-4, "decay_rate": 0.99, "gamma": 0.99, "seed": 1}
    updates = len(parse_train_log(run.result.lines).batches)
    # The mean square starts at 1 and decays by 0.99 an update; where the gradient was always 0
    # (pixel 0, the corner of the top wall, never changes) that is all that happened to it.
    squares = arrays["mean_square/hidden/weights"]
    np.testing.assert_allclose(squares[0], 0.99**updates, rtol=1e-6)
    assert np.all(squares >= 0.99**updates * (1 - 1e-6)) and squares.max() > 0.99**updates
    assert float(arrays["state/running_mean"]) == pytest.approx(
        float(read_progress(run.model_dir)[-1]["running_mean"]), abs=1e-6
    )
    assert arrays["pending/steps"].size == 0 and arrays["pending/labels"].size == 0
    assert arrays["hidden/weights"].shape == (6400, 200)
    # seed 1's initial weights, moved by RMSProp steps:
    # lr * |g| / sqrt(ms) <= lr * |g| / sqrt(0.01 g^2) = 10 lr
    initial = new_policy(pong, 200, 1)
    moved = np.abs(arrays["output/weights"] - initial.get_layer("output").W.numpy())
    assert 0 < moved.max() <= updates * 1e-3


def assert_clean_console(stderr):
    for bad in ("Traceback", "DeprecationWarning", "absl"):
        assert bad not in stderr, stderr
    assert not [
        line for line in stderr.splitlines() if line.startswith(("I0000", "W0000", "E0000"))
    ], stderr


def test_training_console_is_clean(run):
    assert_clean_console(run.result.stderr)


# --- resuming ------------------------------------------------------------------------


@pytest.fixture
def resumed(resume_run):
    assert resume_run.result.returncode == 0, resume_run.result.describe()
    return resume_run


def test_resume_says_where_it_starts(resumed):
    mean = float(resumed.before["state/running_mean"])
    assert (
        f"resumed from {resumed.checkpoint} at episode 2, running mean {mean:f}"
        in resumed.result.lines
    )


def test_resume_console_is_clean(resumed):
    assert_clean_console(resumed.result.stderr)


def test_resume_numbers_new_episodes_from_the_checkpoint(resumed):
    log = parse_train_log(resumed.result.lines)
    assert sorted(log.points) == [2]
    assert len(log.episodes) == 1
    assert resumed.result.lines[-1] == f"saved checkpoint to {resumed.checkpoint} (episode 3)"
    assert int(load_checkpoint(resumed.checkpoint)["state/episode"]) == 3


def test_resume_continues_the_running_mean(resumed):
    ((total, mean),) = parse_train_log(resumed.result.lines).episodes
    assert mean == pytest.approx(
        float(resumed.before["state/running_mean"]) * 0.99 + total * 0.01, abs=1e-6
    )


def test_resume_without_an_update_keeps_weights_and_rmsprop_state_and_grows_pending(resumed):
    after = load_checkpoint(resumed.checkpoint)
    assert parse_train_log(resumed.result.lines).batches == []
    for name in (
        "hidden/weights",
        "hidden/biases",
        "output/weights",
        "output/biases",
        "mean_square/hidden/weights",
        "mean_square/output/weights",
    ):
        np.testing.assert_array_equal(after[name], resumed.before[name], err_msg=name)
    assert resumed.before["pending/numbers"].tolist() == []
    assert after["pending/numbers"].tolist() == [2]
    steps = int(read_progress(resumed.model_dir)[2]["steps"])
    assert after["pending/steps"].tolist() == [steps]
    assert (
        len(after["pending/labels"])
        == len(after["pending/rewards"])
        == len(after["pending/nnz"])
        == steps
    )
    assert set(np.unique(after["pending/labels"])) <= {0, 1, 2}
    rewards = after["pending/rewards"]
    assert float(rewards.sum()) == parse_train_log(resumed.result.lines).episodes[0][0]
    np.testing.assert_array_equal(after["pending/ends"], rewards != 0)  # Pong's: every point
    assert (
        len(after["pending/indices"])
        == len(after["pending/signs"])
        == int(after["pending/nnz"].sum())
    )


def test_progress_csv_continues_across_resume_and_drops_stale_and_torn_rows(resumed):
    rows = read_progress(resumed.model_dir)
    assert [int(r["episode"]) for r in rows] == [0, 1, 2]
    assert (
        f"{resumed.model_dir / 'progress.csv'}: skipped 1 torn or malformed row"
        in resumed.result.lines
    )
    assert rows[:2] == resumed.before_progress
    assert STALE_REWARD not in {r["reward"] for r in rows}
    total, mean = parse_train_log(resumed.result.lines).episodes[0]
    assert float(rows[2]["reward"]) == total
    assert float(rows[2]["running_mean"]) == pytest.approx(mean, abs=1e-6)


# --- stopping with a signal, or by force ------------------------------------------------


@pytest.mark.parametrize(
    "signum, envs, wait_for",
    [
        (
            signal.SIGINT,
            2,
            POINT_RE,
        ),  # Ctrl-C part-way through the first episode, with worker processes
        (signal.SIGTERM, 1, EPISODE_RE),  # after the first finished episode, in this process
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_signal_stops_training_cleanly_and_saves(tmp_path, signum, envs, wait_for):
    model_dir = tmp_path / "m"
    run = LiveRun(
        ["--envs", envs, "--model-dir", model_dir, "--record", "videos", "--record-every", 1],
        tmp_path,
    )
    try:
        run.wait_for(wait_for)
        run.process.send_signal(signum)
        returncode, stderr = run.finish()
    finally:
        run.kill()
    seen = run.seen

    assert returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    finished = len(parse_train_log(seen).episodes)
    checkpoint = model_dir / "model_pong.npz"
    if finished == 0:  # stopped during the first episode: nothing to save, nothing written over
        assert not checkpoint.exists() and not SAVED_RE.match(seen[-1])
    else:
        assert seen[-1] == f"saved checkpoint to {checkpoint} (episode {finished})"
        assert int(load_checkpoint(checkpoint)["state/episode"]) == finished
    videos = sorted(path.name for path in (tmp_path / "videos").glob("*.mp4"))
    assert videos == [f"episode-{n:06d}.mp4" for n in range(finished)], (
        "only finished episodes keep a video"
    )
    assert [int(r["episode"]) for r in read_progress(model_dir)] == list(range(finished))
    assert list(model_dir.glob("*.tmp")) == []


def test_workers_end_by_themselves_when_the_trainer_is_killed(tmp_path):
    """kill -9 of the trainer part-way through a batch: its worker processes
    notice and end. --envs above the batch size is capped, with one line."""
    run = LiveRun(["--envs", 3, "--batch-size", 2, "--model-dir", tmp_path / "m"], tmp_path)
    try:
        run.wait_for(POINT_RE)  # both workers are playing
        workers, left = run.kill_9()
    finally:
        run.kill()
    assert left == [], f"worker processes {left} of {workers} outlived the trainer"
    assert "--envs 3 is more than the batch size: 2 episodes are played at once" in run.seen
    assert len(workers) == 2


def test_one_training_run_per_folder_while_play_and_plot_work_beside_it(tmp_path):
    model_dir = tmp_path / "m"
    first = LiveRun(
        ["--envs", 1, "--batch-size", 1, "--save-every", 1, "--model-dir", model_dir], tmp_path
    )
    try:
        first.wait_for(PROGRESS_RE)  # a checkpoint and log rows to read
        boards = sorted(p.name for p in (model_dir / "tensorboard").iterdir())
        second = run_script(["--episodes", 1, "--model-dir", model_dir], tmp_path)
        lock_after_second = (model_dir / ".lock").read_text()
        boards_after_second = sorted(p.name for p in (model_dir / "tensorboard").iterdir())
        plot = run_script(["--plot", "--model-dir", model_dir], tmp_path)
        play = run_script(["--play", 1, "--envs", 1, "--model-dir", model_dir], tmp_path)
        first.process.send_signal(signal.SIGINT)
        returncode, stderr = first.finish()
    finally:
        first.kill()

    assert_one_line_error(second)
    assert second.stderr_lines[0] == (
        f"{SCRIPT.name}: error: another training run (pid {first.process.pid}) "
        f"is using {model_dir}: "
        "one run per folder (--play and --plot work beside it)"
    )
    assert lock_after_second == f"{first.process.pid}\n", "the second run took the lock"
    assert boards_after_second == boards, "the second run wrote TensorBoard events"
    assert plot.returncode == 0, plot.describe()
    assert play.returncode == 0, play.describe()
    assert returncode == 0, stderr
    episode = int(load_checkpoint(model_dir / "model_pong.npz")["state/episode"])
    assert (
        first.seen[-1] == f"saved checkpoint to {model_dir / 'model_pong.npz'} (episode {episode})"
    )
    assert [int(r["episode"]) for r in read_progress(model_dir)] == list(range(episode))


# --- bad input ---------------------------------------------------------------------------


def write_corrupt_checkpoint(pong, model_dir):
    model_dir.mkdir()
    (model_dir / "model_pong.npz").write_bytes(np.random.default_rng(0).bytes(4096))


def write_hidden_200_checkpoint(pong, model_dir):
    model = new_policy(pong, 200, 1)
    pong.save_checkpoint(
        str(model_dir / "model_pong.npz"),
        model,
        pong.make_optimizer(model, 1e-4, 0.99),
        5,
        -20.0,
        [],
    )


def write_file_at_model_dir(pong, model_dir):
    model_dir.write_text("a file where the model folder should be")


def write_file_at_videos(pong, model_dir):
    (model_dir.parent / "videos").write_text("a file where the video folder should be")


def snapshot(path):
    """The bytes of a file, or of every file in a folder."""
    if path.is_file():
        return path.read_bytes()
    return {p.name: p.read_bytes() for p in path.iterdir()} if path.exists() else {}


BAD_INPUTS = {
    "resume-without-checkpoint": (["--resume", "--episodes", 1], None, {}),
    "resume-corrupt-checkpoint": (["--resume", "--episodes", 1], write_corrupt_checkpoint, {}),
    "resume-other-hidden-size": (
        ["--resume", "--episodes", 1, "--hidden", 100],
        write_hidden_200_checkpoint,
        {},
    ),
    "negative-batch-size": (["--batch-size", -1], None, {}),
    "zero-learning-rate": (["--learning-rate", 0], None, {}),
    "unknown-flag": (["--unknown-flag"], None, {}),
    "render-without-display": (
        ["--render", "--episodes", 1],
        None,
        {"DISPLAY": None, "WAYLAND_DISPLAY": None},
    ),
    "play-without-checkpoint": (["--play", 1], None, {}),
    "plot-without-progress": (["--plot"], None, {}),
    "model-dir-is-a-file": (["--episodes", 1], write_file_at_model_dir, {}),
    "record-dir-is-a-file": (["--episodes", 1, "--record", "videos"], write_file_at_videos, {}),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(pong, tmp_path, case):
    argv, prepare, env_changes = BAD_INPUTS[case]
    model_dir = tmp_path / "m"
    if prepare is not None:
        prepare(pong, model_dir)
    before = snapshot(model_dir)

    result = run_script([*argv, "--model-dir", model_dir], tmp_path, env=script_env(**env_changes))

    assert_one_line_error(result)
    assert result.stderr_lines[-1].startswith(f"{SCRIPT.name}: error: ")
    assert snapshot(model_dir) == before, (
        "a refused command must leave the model directory as it was"
    )
    if case.startswith(("resume", "play")):
        assert str(model_dir / "model_pong.npz") in result.stderr
    if case.startswith("plot"):
        assert str(model_dir / "progress.csv") in result.stderr


def test_a_negative_seed_is_refused_with_one_line(tmp_path):
    """numpy's seeds are >= 0: --seed -1 is bad input, refused before anything is made."""
    model_dir = tmp_path / "m"
    result = run_script(
        ["--seed", -1, "--episodes", 1, "--batch-size", 1, "--envs", 1, "--model-dir", model_dir],
        tmp_path,
    )
    assert_one_line_error(result)
    assert "argument --seed: must be >= 0, got -1" in result.stderr
    assert not model_dir.exists()


def test_help_lists_every_flag(tmp_path):
    result = run_script(["--help"], tmp_path)
    assert result.returncode == 0, result.describe()
    for flag in (
        "--render",
        "--resume",
        "--episodes",
        "--batch-size",
        "--learning-rate",
        "--gamma",
        "--decay-rate",
        "--hidden",
        "--init",
        "--seed",
        "--model-dir",
        "--save-every",
        "--envs",
        "--play",
        "--record",
        "--restart",
        "--record-every",
        "--record-scale",
        "--record-gif",
        "--plot",
        "--model",
    ):
        assert re.search(rf"^\s+{flag}\b", result.stdout, re.M), flag
    assert result.stderr == ""


def test_a_restart_over_an_old_run_says_so_and_restarts_its_logs(train_run, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(train_run.model_dir, model_dir)
    old_events = set((model_dir / "tensorboard").glob("events.out.tfevents*"))
    result = run_script(
        ["--restart", "--episodes", 1, "--batch-size", 1, "--envs", 1, "--model-dir", model_dir],
        tmp_path,
    )
    assert result.returncode == 0, result.describe()
    assert (
        f"starting over: the run in {model_dir} is replaced when this one first saves "
        "(until then, stopping leaves it as it was)" in result.lines
    )
    assert [row["episode"] for row in read_progress(model_dir)] == ["0"]
    events = set((model_dir / "tensorboard").glob("events.out.tfevents*"))
    assert events and not events & old_events, "the old run's curves go with it"
    assert int(load_checkpoint(model_dir / "model_pong.npz")["state/episode"]) == 1


def test_a_format_1_checkpoint_gets_one_line_and_exit_2_and_stays_as_it_was(train_run, tmp_path):
    """A checkpoint written with Keras' RMSprop (format 1) is no longer read: --play and
    --resume each say so in one line, and the file is left untouched."""
    from test_units import as_format_1

    model_dir = tmp_path / "m"
    shutil.copytree(train_run.model_dir, model_dir)
    checkpoint = model_dir / "model_pong.npz"
    np.savez(checkpoint, **as_format_1(load_checkpoint(checkpoint)))
    before = checkpoint.read_bytes()
    expected = (
        f"tutorial_atari_pong.py: error: {checkpoint} has checkpoint format 1; "
        "this script reads format 2 only"
    )
    for args in (
        ["--play", 1, "--envs", 1, "--model", checkpoint],
        ["--resume", "--episodes", 1, "--model-dir", model_dir],
    ):
        result = run_script(args, tmp_path)
        assert_one_line_error(result)
        assert result.stderr_lines == [expected], result.describe()
    assert checkpoint.read_bytes() == before
