"""Nothing lost by a slip of the hand: a fresh start over a run, Ctrl-C during
start-up, a damaged log, a stop at a batch end, changed settings, a numeric
blow-up, episodes cut where the tutorial's Pong-v0 cut them, and the flags
whose defaults are resolved after parsing."""

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorlayer as tl
from helpers import (
    CHECKPOINT_NAME,
    EPISODE_RE,
    SAVED_RE,
    SCRIPT,
    LiveRun,
    assert_one_line_error,
    descendants,
    left_after,
    load_checkpoint,
    new_policy,
    parse_train_log,
    read_progress,
    rewards_episode,
    run_script,
    script_env,
    standardised,
)

TINY = ["--batch-size", 1, "--envs", 1, "--hidden", 8]

# Runs the script's main() in a fresh interpreter after a patch of the module:
# argv is [script, patch code, flags...]; the patch sees the module as `pong`.
PATCHED_MAIN = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("tutorial_atari_pong", sys.argv[1])
# registered under its name: the workers pickle its classes
pong = sys.modules["tutorial_atari_pong"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pong)
exec(sys.argv[2])
pong.main(sys.argv[3:])
"""


def run_patched(patch, args, cwd, timeout=240):
    """The script with `patch` applied first. The timeout fails a test that hangs."""
    args = [str(a) for a in args]
    done = subprocess.run(
        [sys.executable, "-c", PATCHED_MAIN, str(SCRIPT), patch, *args],
        cwd=cwd,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done


def fingerprint(model_dir):
    """Every file of a run folder but its lock, by path, with its sha256."""
    return {
        str(path.relative_to(model_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A finished 2-episode run: the work a slip of the hand must not destroy."""
    cwd = tmp_path_factory.mktemp("old")
    result = run_script(["--episodes", 2, *TINY, "--model-dir", cwd / "m"], cwd)
    assert result.returncode == 0, result.describe()
    return cwd / "m"


def copy_of(run_dir, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(run_dir, model_dir)
    return model_dir


# --- (1) a fresh start never wipes a run -------------------------------------------------


@pytest.mark.e2e
def test_a_fresh_start_over_a_run_is_refused_naming_both_ways_on(old_run, tmp_path):
    model_dir = copy_of(old_run, tmp_path)
    before = fingerprint(model_dir)
    result = run_script(["--episodes", 1, *TINY, "--model-dir", model_dir], tmp_path)
    assert_one_line_error(result)
    assert "--resume continues it" in result.stderr and "--restart starts over" in result.stderr, (
        result.stderr
    )
    assert f"the checkpoint {model_dir / CHECKPOINT_NAME}" in result.stderr
    assert "2 episodes in" in result.stderr
    assert fingerprint(model_dir) == before, "the refused start changed the old run"


@pytest.mark.e2e
def test_ctrl_c_while_a_restart_starts_up_leaves_the_old_run_exactly_as_it_was(old_run, tmp_path):
    model_dir = copy_of(old_run, tmp_path)
    before = fingerprint(model_dir)
    run = LiveRun(["--restart", "--episodes", 3, *TINY, "--model-dir", model_dir], tmp_path)
    try:
        run.wait_for(re.compile(r"^starting over: "))
        run.process.send_signal(signal.SIGINT)
        returncode, stderr = run.finish()
    finally:
        run.kill()
    assert returncode == 0 and "Traceback" not in stderr, stderr
    assert not any(SAVED_RE.match(line) for line in run.seen), (
        "nothing was played, so nothing may be saved"
    )
    assert fingerprint(model_dir) == before
    assert not (model_dir / ".restart").exists()


@pytest.mark.e2e
def test_a_restart_replaces_the_old_run_at_its_first_save(old_run, tmp_path):
    model_dir = copy_of(old_run, tmp_path)
    old_events = {p.name for p in (model_dir / "tensorboard").iterdir()}
    result = run_script(
        ["--restart", "--episodes", 1, *TINY, "--seed", 3, "--model-dir", model_dir], tmp_path
    )
    assert result.returncode == 0, result.describe()
    assert [row["episode"] for row in read_progress(model_dir)] == ["0"]
    assert int(load_checkpoint(model_dir / CHECKPOINT_NAME)["state/episode"]) == 1
    events = {p.name for p in (model_dir / "tensorboard").iterdir()}
    assert events and not events & old_events, "the old run's curves go with it"
    assert not (model_dir / ".restart").exists()


@pytest.mark.e2e
def test_ctrl_c_before_the_first_episode_writes_no_checkpoint(tmp_path):
    model_dir = tmp_path / "m"
    run = LiveRun(["--episodes", 3, *TINY, "--model-dir", model_dir], tmp_path)
    try:
        run.wait_for(re.compile(r"^  num of params: "))  # set up, the first episode not finished
        run.process.send_signal(signal.SIGINT)
        returncode, stderr = run.finish()
    finally:
        run.kill()
    assert returncode == 0 and "Traceback" not in stderr, stderr
    assert not any(EPISODE_RE.match(line) for line in run.seen)
    assert not (model_dir / CHECKPOINT_NAME).exists()


def test_finish_restart_completes_a_saved_restart_and_drops_an_unsaved_one(pong, tmp_path):
    """A hard kill during a restart's first save leaves its folder marked
    'saved': the next start finishes the moves. Unmarked, it is dropped."""

    def folder(name, marked):
        run = tmp_path / name
        (run / ".restart" / "tensorboard").mkdir(parents=True)
        (run / "tensorboard").mkdir()
        (run / CHECKPOINT_NAME).write_text("old checkpoint")
        (run / "progress.csv").write_text("old log")
        (run / "tensorboard" / "events.out.tfevents.old").write_text("old curve")
        (run / ".restart" / CHECKPOINT_NAME).write_text("new checkpoint")
        (run / ".restart" / "tensorboard" / "events.out.tfevents.new").write_text("new curve")
        if marked:  # killed after the checkpoint moved, before the log did
            (run / CHECKPOINT_NAME).write_text("new checkpoint")
            (run / ".restart" / CHECKPOINT_NAME).unlink()
            (run / ".restart" / "saved").write_text("")
        (run / ".restart" / "progress.csv").write_text("new log")
        return run

    saved = folder("saved", marked=True)
    pong.finish_restart(str(saved))
    assert (saved / CHECKPOINT_NAME).read_text() == "new checkpoint"
    assert (saved / "progress.csv").read_text() == "new log"
    assert [p.name for p in (saved / "tensorboard").iterdir()] == ["events.out.tfevents.new"]
    assert not (saved / ".restart").exists()

    unsaved = folder("unsaved", marked=False)
    pong.finish_restart(str(unsaved))
    assert (unsaved / CHECKPOINT_NAME).read_text() == "old checkpoint"
    assert (unsaved / "progress.csv").read_text() == "old log"
    assert [p.name for p in (unsaved / "tensorboard").iterdir()] == ["events.out.tfevents.old"]
    assert not (unsaved / ".restart").exists()


# --- (2) no hang, no traceback after the workers are forked ------------------------------


@pytest.mark.e2e
def test_a_damaged_progress_csv_is_skipped_with_one_line_and_training_goes_on(old_run, tmp_path):
    model_dir = copy_of(old_run, tmp_path)
    with open(model_dir / "progress.csv", "ab") as f:
        f.write(b"\xff\xfe")
    result = run_script(
        [
            "--resume",
            "--episodes",
            1,
            "--batch-size",
            2,
            "--envs",
            2,
            "--hidden",
            8,
            "--model-dir",
            model_dir,
        ],
        tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.describe()
    assert "Traceback" not in result.stderr
    assert f"{model_dir / 'progress.csv'}: skipped 1 torn or malformed row" in result.lines
    assert [row["episode"] for row in read_progress(model_dir)] == ["0", "1", "2"]


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["train", "play"])
def test_an_error_after_the_workers_are_forked_ends_the_program_and_its_workers(
    old_run, tmp_path, command
):
    """Any exception after the workers are forked (here: building the policy,
    or reading a played episode, fails) must close them: no hang at exit, no
    process left."""
    model_dir = copy_of(old_run, tmp_path)
    patch = (
        "def broken(*a, **k): raise RuntimeError('boom')\n"
        "pong.build_policy = broken\n"
        "pong.Episode.points_won = property(broken)"
    )
    flags = (
        ["--resume", "--episodes", 2, "--batch-size", 2] if command == "train" else ["--play", 2]
    ) + ["--envs", 2, "--hidden", 8, "--model-dir", model_dir]
    process = subprocess.Popen(
        [sys.executable, "-c", PATCHED_MAIN, str(SCRIPT), patch, *map(str, flags)],
        cwd=tmp_path,
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        started = descendants(process.pid)
        process.kill()
        left_after(started, seconds=0)
        pytest.fail("the program hung after the error")
    assert process.returncode != 0
    assert "RuntimeError: boom" in stderr
    assert left_after(descendants(process.pid), seconds=5) == []


# --- (3) a stop at a batch end -----------------------------------------------------------


@pytest.mark.e2e
def test_a_stop_after_a_batch_s_last_episode_still_updates_before_saving(tmp_path):
    """SIGTERM lands after the batch's last episode finished, before its
    update: the update is applied, and the checkpoint keeps no full batch."""
    model_dir = tmp_path / "m"
    patch = (
        "import os, signal\n"
        "add = pong.ProgressLog.add\n"
        "def add_then_stop(self, episode, running_mean):\n"
        "    add(self, episode, running_mean)\n"
        "    if episode.number == 1: os.kill(os.getpid(), signal.SIGTERM)\n"
        "pong.ProgressLog.add = add_then_stop"
    )
    done = run_patched(
        patch, ["--batch-size", 2, "--envs", 1, "--hidden", 8, "--model-dir", model_dir], tmp_path
    )
    assert done.returncode == 0, done.stderr
    log = parse_train_log(done.stdout.splitlines())
    steps = [int(row["steps"]) for row in read_progress(model_dir)]
    assert log.batches == [(2, sum(steps))]
    arrays = load_checkpoint(model_dir / CHECKPOINT_NAME)
    assert int(arrays["state/episode"]) == 2 and len(arrays["pending/steps"]) == 0


@pytest.mark.e2e
def test_a_checkpoint_holding_a_whole_batch_is_updated_first_on_resume(tmp_path):
    """Older versions could save a whole batch unapplied: the resumed run
    applies it first, so no update ever covers two batches."""
    model_dir = tmp_path / "m"
    first = run_script(
        ["--episodes", 2, "--batch-size", 10, "--envs", 1, "--hidden", 8, "--model-dir", model_dir],
        tmp_path,
    )
    assert first.returncode == 0, first.describe()
    arrays = load_checkpoint(model_dir / CHECKPOINT_NAME)
    arrays["config/batch_size"] = np.asarray(2)  # as if stopped at the end of a batch of 2
    np.savez(model_dir / CHECKPOINT_NAME, **arrays)
    steps = [int(row["steps"]) for row in read_progress(model_dir)]
    resumed = run_script(
        [
            "--resume",
            "--episodes",
            1,
            "--batch-size",
            2,
            "--envs",
            1,
            "--hidden",
            8,
            "--model-dir",
            model_dir,
        ],
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.describe()
    assert parse_train_log(resumed.lines).batches == [(2, sum(steps))]
    assert len(load_checkpoint(model_dir / CHECKPOINT_NAME)["pending/steps"]) == 1


# --- (4) episodes cut at the tutorial's 10,000 steps ---------------------------------------


def test_episodes_are_cut_at_pong_v0_s_10000_steps(pong):
    assert pong.MAX_EPISODE_STEPS == 10000


@pytest.mark.e2e
def test_a_cut_episode_ends_at_the_step_limit_and_its_undecided_steps_get_no_credit(tmp_path):
    model_dir = tmp_path / "m"
    done = run_patched(
        "pong.MAX_EPISODE_STEPS = 150",
        ["--episodes", 2, "--batch-size", 10, "--envs", 1, "--hidden", 8, "--model-dir", model_dir],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rows = read_progress(model_dir)
    assert [int(row["steps"]) for row in rows] == [150, 150]
    assert all(int(row["points_won"]) < 21 and int(row["points_lost"]) < 21 for row in rows)


def test_batch_returns_give_undecided_steps_0_and_leave_whole_episodes_as_the_tutorial_does(pong):
    # by hand, resetting at every point: the whole batch below, and the decided steps of the cut one
    discounted = [0.9801, 0.99, 1, -0.99, -1, -0.99, -1]
    whole = [rewards_episode(pong, [0, 0, 1, 0, -1]), rewards_episode(pong, [0, -1])]
    np.testing.assert_allclose(pong.batch_returns(whole, 0.99), standardised(discounted), rtol=1e-5)

    cut = [
        rewards_episode(pong, [0, 0, 1, 0, -1]),
        rewards_episode(pong, [0, -1, 0, 0]),
    ]  # ends undecided
    returns = pong.batch_returns(cut, 0.99)
    np.testing.assert_array_equal(returns[-2:], [0, 0])
    np.testing.assert_allclose(returns[:-2], standardised(discounted), rtol=1e-5)


# --- (5) settings kept in the checkpoint ---------------------------------------------------


@pytest.mark.e2e
def test_the_checkpoint_keeps_its_settings_and_a_resume_says_which_changed(tmp_path):
    model_dir = tmp_path / "m"
    one_small_episode = ["--episodes", 1, "--envs", 1, "--hidden", 8, "--model-dir", model_dir]
    settings = ["--learning-rate", 0.002, "--decay-rate", 0.9, "--gamma", 0.95]
    first = run_script([*one_small_episode, *settings, "--batch-size", 3], tmp_path)
    assert first.returncode == 0, first.describe()
    arrays = load_checkpoint(model_dir / CHECKPOINT_NAME)
    assert {
        name: arrays["config/" + name].item()
        for name in ("learning_rate", "decay_rate", "gamma", "batch_size")
    } == {"learning_rate": 0.002, "decay_rate": 0.9, "gamma": 0.95, "batch_size": 3}
    before = fingerprint(model_dir)

    refused = run_script(["--resume", *one_small_episode, *settings, "--batch-size", 4], tmp_path)
    assert_one_line_error(refused)
    assert (
        "1 episode of an unfinished batch of 3" in refused.stderr
        and "--batch-size 3" in refused.stderr
    )
    assert fingerprint(model_dir) == before

    resumed = run_script(["--resume", *one_small_episode, "--learning-rate", 0.001], tmp_path)
    assert resumed.returncode == 0, resumed.describe()
    changes = [line for line in resumed.lines if line.startswith("settings changed")]
    assert changes == ["settings changed since the checkpoint: --learning-rate 0.002 -> 0.001"], (
        "the flag given changes its setting; the others are the checkpoint's"
    )
    arrays = load_checkpoint(model_dir / CHECKPOINT_NAME)
    assert {
        name: arrays["config/" + name].item()
        for name in ("learning_rate", "decay_rate", "gamma", "batch_size", "seed")
    } == {"learning_rate": 0.001, "decay_rate": 0.9, "gamma": 0.95, "batch_size": 3, "seed": 1}


def resumed_training(pong, argv):
    """The Training that `--resume ARGV` would continue, built in this process (no episode
    played), with the checkpoint's arrays."""
    args = pong.parse_args(["--resume", *argv])
    path = pong.checkpoint_path(args)
    arrays = pong.resumable(path, args)
    tl.models.core._global_model_name_set.discard("policy")  # the name of the model built here
    return args, pong.Training(args, path, None, arrays)


def test_resume_with_no_flags_trains_at_the_checkpoints_settings(pong, tmp_path, capsys):
    """A run trained at other settings than the defaults block's carries on at its own: the
    optimizer that --resume builds has the checkpoint's learning rate and decay, the update its
    gamma and batch size, the players its seed; a flag given changes its setting, in one line."""
    model = new_policy(pong, hidden_units=8)
    optimizer = pong.make_optimizer(model, 0.005, 0.9)
    settings = {"learning_rate": 0.005, "decay_rate": 0.9, "gamma": 0.95, "batch_size": 4}
    path = tmp_path / "m" / CHECKPOINT_NAME
    pong.save_checkpoint(str(path), model, optimizer, 8, -20.0, [], {**settings, "seed": 2})
    capsys.readouterr()

    args, training = resumed_training(pong, ["--envs", "1", "--model-dir", str(path.parent)])
    try:
        assert training.optimizer._learning_rate == 0.005 and training.optimizer._decay == 0.9
        assert (args.gamma, args.batch_size, args.seed, args.hidden) == (0.95, 4, 2, 8)
        assert training.model.get_layer("hidden").W.shape == (6400, 8)
    finally:
        training.close()
    assert "settings changed" not in capsys.readouterr().out

    argv = ["--learning-rate", "0.001", "--envs", "1", "--model-dir", str(path.parent)]
    args, training = resumed_training(pong, argv)
    try:
        assert training.optimizer._learning_rate == 0.001 and training.optimizer._decay == 0.9
        assert (args.gamma, args.batch_size, args.seed) == (0.95, 4, 2)
    finally:
        training.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if "settings changed" in line] == [
        "settings changed since the checkpoint: --learning-rate 0.005 -> 0.001"
    ]


def test_resumed_settings_takes_what_the_checkpoint_holds_but_for_the_flags_given(pong):
    """The function another script (dqn_atari_pong.py) calls with its own parser and names."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--network", default="mlp")
    parser.add_argument("--replay", type=int, default=10)
    argv = ["--gamma", "0.99", "--replay", "20"]
    given = pong.given_flags(parser, argv)
    assert given == {"gamma", "replay"}, "a flag given at its default value is still given"
    args = parser.parse_args(argv)
    arrays = {
        "config/learning_rate": np.asarray(0.005),
        "config/gamma": np.asarray(0.9),
        "config/network": np.asarray("cnn"),
        "config/replay": np.asarray(20),
    }
    names = ("learning_rate", "gamma", "network", "replay", "hidden")
    changes = pong.resumed_settings(arrays, args, given, names)
    assert changes == ["--gamma 0.9 -> 0.99"], "replay was given at the checkpoint's own value"
    assert (args.learning_rate, args.gamma, args.network, args.replay) == (0.005, 0.99, "cnn", 20)
    assert not hasattr(args, "hidden"), "a name the checkpoint does not hold is left alone"
    assert pong.parse_args(["--play", "1", "--seed", "3"]).given == {"play", "seed"}


# --- (6) non-finite numbers are never applied or saved -------------------------------------


@pytest.mark.e2e
def test_a_blown_up_update_stops_training_with_one_line_and_keeps_the_last_good_checkpoint(
    old_run, tmp_path
):
    model_dir = copy_of(old_run, tmp_path)
    before = fingerprint(model_dir)
    result = run_script(
        ["--resume", "--episodes", 3, *TINY, "--learning-rate", 1e38, "--model-dir", model_dir],
        tmp_path,
    )
    assert result.returncode == 1, result.describe()
    assert "Traceback" not in result.stderr and len(result.stderr_lines) == 1, result.stderr
    assert "non-finite" in result.stderr
    assert f"the checkpoint {model_dir / CHECKPOINT_NAME} of episode 2 is intact" in result.stderr
    assert fingerprint(model_dir)[CHECKPOINT_NAME] == before[CHECKPOINT_NAME]


def test_update_policy_refuses_a_non_finite_gradient_and_save_refuses_non_finite_weights(
    pong, tmp_path
):
    model = new_policy(pong, 8)
    optimizer = pong.make_optimizer(model, 1e-4, 0.99)
    before = [w.numpy().copy() for w in model.trainable_weights]

    def nan_gradient(chunks):
        for _ in chunks:
            yield [np.full(w.shape, np.nan, np.float32) for w in model.trainable_weights]

    rewards = np.array([0, 1], np.int8)
    batch = [
        pong.Episode(
            0,
            np.array([1, 1], np.int16),
            np.array([5, 6], np.int16),
            np.array([1, -1], np.int8),
            np.array([0, 2], np.int8),
            rewards,
            rewards != 0,
        )
    ]
    with pytest.raises(pong.NonFiniteError, match="gradient is not finite"):
        pong.update_policy(model, optimizer, nan_gradient, batch, 0.99)
    for b, w in zip(before, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(w.numpy(), b)

    model.trainable_weights[0].assign(np.full(model.trainable_weights[0].shape, np.inf, np.float32))
    with pytest.raises(pong.NonFiniteError):
        pong.save_checkpoint(str(tmp_path / CHECKPOINT_NAME), model, optimizer, 1, 0.0, [])
    assert not (tmp_path / CHECKPOINT_NAME).exists()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "command",
    [["--resume", "--episodes", 1, *TINY], ["--play", 1, "--envs", 1, "--hidden", 8]],
    ids=["resume", "play"],
)
def test_a_checkpoint_with_non_finite_weights_is_refused_on_load(old_run, tmp_path, command):
    model_dir = copy_of(old_run, tmp_path)
    arrays = load_checkpoint(model_dir / CHECKPOINT_NAME)
    arrays["output/biases"][1] = np.nan
    np.savez(model_dir / CHECKPOINT_NAME, **arrays)
    result = run_script([*command, "--model-dir", model_dir], tmp_path)
    assert_one_line_error(result)
    assert "non-finite values (NaN or infinity) in output/biases" in result.stderr


# --- (7) defaults resolved after parsing -----------------------------------------------------


def test_envs_defaults_to_one_per_core_capped_by_the_episodes_at_once(pong, capsys):
    assert pong.parse_args(["--play", "1"]).envs == 1, "--play 1 forks no second emulator"
    assert pong.parse_args(["--batch-size", "1"]).envs == 1
    assert 1 <= pong.parse_args([]).envs <= 10
    assert "more than the batch size" not in capsys.readouterr().out, (
        "said although --envs was not given"
    )
    assert pong.parse_args(["--envs", "4", "--batch-size", "2"]).envs == 2
    assert (
        "--envs 4 is more than the batch size: 2 episodes are played at once"
        in capsys.readouterr().out
    )


def test_envs_is_1_off_linux_and_more_without_fork_is_one_line(pong, monkeypatch, capsys):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert pong.parse_args([]).envs == 1
    monkeypatch.setattr(pong.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with pytest.raises(SystemExit) as exit_info:
        pong.parse_args(["--envs", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "needs worker processes started by fork" in err[0]
        and "--envs 1" in err[0]
    )


def test_resume_and_restart_together_are_refused(pong, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pong.parse_args(["--resume", "--restart"])
    assert exit_info.value.code == 2


# --- --init, the tutorial's third knob --------------------------------------------------------


@pytest.mark.slow
def test_init_default_is_the_tutorial_s_glorot_uniform_and_others_have_their_spread(pong):
    assert pong.parse_args([]).init == "glorot-uniform"
    fan_in, fan_out = 6400, 200
    expected_std = {
        "glorot-uniform": np.sqrt(2 / (fan_in + fan_out)),
        "glorot-normal": np.sqrt(2 / (fan_in + fan_out)),
        "he-uniform": np.sqrt(2 / fan_in),
        "he-normal": np.sqrt(2 / fan_in),
        "truncated-normal": 0.05 * 0.88,
    }
    assert set(expected_std) == set(pong.INITIALISERS)
    for name, std in expected_std.items():
        tl.models.core._global_model_name_set.discard(
            "policy"
        )  # one model named 'policy' at a time
        model = pong.build_policy(200, 1, name)
        hidden_w, hidden_b = model.trainable_weights[0].numpy(), model.trainable_weights[1].numpy()
        assert hidden_w.std() == pytest.approx(std, rel=0.03), name
        assert not hidden_b.any(), "biases start at 0"
        if name.endswith("uniform"):
            assert np.abs(hidden_w).max() <= std * np.sqrt(3) * 1.0001, name
    default = new_policy(pong, 200, 1)
    tl.models.core._global_model_name_set.discard("policy")
    glorot = pong.build_policy(200, 1, "glorot-uniform")
    np.testing.assert_array_equal(
        default.trainable_weights[0].numpy(), glorot.trainable_weights[0].numpy()
    )


@pytest.mark.e2e
def test_init_is_used_by_training_and_an_unknown_name_is_one_line(tmp_path):
    result = run_script(
        ["--episodes", 1, *TINY, "--init", "he-normal", "--model-dir", tmp_path / "m"], tmp_path
    )
    assert result.returncode == 0, result.describe()
    hidden_w = load_checkpoint(tmp_path / "m" / CHECKPOINT_NAME)["hidden/weights"]
    assert hidden_w.std() == pytest.approx(np.sqrt(2 / 6400), rel=0.05)
    bad = run_script(
        ["--episodes", 1, *TINY, "--init", "zeros", "--model-dir", tmp_path / "n"], tmp_path
    )
    assert_one_line_error(bad)
    assert "--init" in bad.stderr
    assert not (tmp_path / "n").exists()


# --- --plot of a sweep trial's seeds ----------------------------------------------------------


def write_seeds(setting, rewards_by_seed):
    """A setting's folder with a progress.csv in seed-1, seed-2, ...: the rewards given, each its
    own running mean, 900 steps an episode, a second apart."""
    for seed, rewards in enumerate(rewards_by_seed, 1):
        folder = setting / f"seed-{seed}"
        folder.mkdir(parents=True)
        rows = ["episode,reward,running_mean,points_won,points_lost,steps,seconds,wall_time"]
        rows += [
            f"{n},{r},{r},{21 + r},21,900,1.0,2026-12-01T10:00:0{n}" for n, r in enumerate(rewards)
        ]
        (folder / "progress.csv").write_text("\n".join(rows) + "\n")


def top_lines(axis):
    """The labelled lines of a panel: label -> y values."""
    return {
        line.get_label(): list(line.get_ydata())
        for line in axis.get_lines()
        if not line.get_label().startswith("_")
    }


def test_plot_draws_each_seed_whole_and_their_mean_over_the_episodes_all_reached(
    pong, tmp_path, capsys
):
    trial = tmp_path / "trial-0001"
    write_seeds(trial, [[-21, -20, -19, -18], [-19, -19, -17]])
    other = tmp_path / "other"
    shutil.copytree(trial / "seed-1", other)
    assert pong.seed_groups([str(trial / "seed-1"), str(trial / "seed-2"), str(other)]) == {
        "trial-0001": [str(trial / "seed-1"), str(trial / "seed-2")],
        "other": [str(other)],
    }

    args = pong.parse_args(["--plot", str(trial / "seed-1"), str(trial / "seed-2"), str(other)])
    figure = pong.plot(args)
    top, bottom = figure.axes
    assert top_lines(top) == {
        "trial-0001, seed 1 (4 episodes)": [-21, -20, -19, -18],
        "trial-0001, seed 2 (3 episodes)": [-19, -19, -17],
        "trial-0001, mean of the 2 seeds (episodes 0-2: all reached them)": [-20, -19.5, -18],
        "other (4 episodes)": [-21, -20, -19, -18],
    }
    widths = {line.get_label(): line.get_linewidth() for line in top.get_lines()}
    assert (
        widths["trial-0001, seed 1 (4 episodes)"]
        < widths["trial-0001, mean of the 2 seeds (episodes 0-2: all reached them)"]
    ), "the seeds thin, their mean bold"
    assert not top.collections, "no band: each seed is its own line"
    assert len([line for line in bottom.get_lines() if len(line.get_xdata()) > 2]) == 4
    assert top.get_title().replace("\n", " ") == "Pong from pixels: trial-0001, other", (
        "the title names each setting once, by its folder"
    )
    assert (tmp_path / "learning_curve.png").exists()
    legend = figure.legends[0]
    assert legend.get_window_extent().y1 < top.get_window_extent().y0, "the legend covers no line"
    assert legend.get_window_extent().y1 < bottom.get_window_extent().y0
    assert capsys.readouterr().out.count(" hours of training; over the ") == 3, (
        "each folder still gets its own table"
    )


def test_plot_of_a_settings_folder_draws_its_seeds_from_anywhere_and_keeps_a_shipped_figure(
    pong, tmp_path, monkeypatch, capsys
):
    """--plot SETTING draws its seed-N folders; the figure's names do not depend on the current
    folder; a folder with a README.md (a run this project ships) keeps its committed figure, and
    the new one goes to MODEL_DIR/SETTING.png, or to --output."""
    setting = tmp_path / "repo" / "models" / "breakout-lr0.001"
    write_seeds(setting, [[1, 2, 3, 4], [2, 2, 5, 6, 7]])
    (setting / "README.md").write_text("a shipped run\n")
    (setting / "learning_curve.png").write_bytes(b"the committed figure")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    figure = pong.plot(pong.parse_args(["--plot", str(setting)]))
    assert set(top_lines(figure.axes[0])) == {
        "seed 1 (4 episodes)",
        "seed 2 (5 episodes)",
        "mean of the 2 seeds (episodes 0-3: all reached them)",
    }
    assert figure.axes[0].get_title() == "Pong from pixels: breakout-lr0.001"
    assert (setting / "learning_curve.png").read_bytes() == b"the committed figure"
    output = elsewhere / "models" / "breakout-lr0.001.png"
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (
        f"wrote {os.path.join('models', 'breakout-lr0.001.png')} (the shipped "
        f"{setting / 'learning_curve.png'} stays as it is; --output PATH to choose)"
    )

    monkeypatch.chdir(setting)
    figure = pong.plot(pong.parse_args(["--plot", "seed-1", "seed-2", "--output", "new.png"]))
    assert figure.axes[0].get_title() == "Pong from pixels: breakout-lr0.001", "named alike"
    assert (setting / "new.png").exists()
    assert capsys.readouterr().out.splitlines()[-1] == "wrote new.png"

    monkeypatch.chdir(tmp_path / "repo")
    pong.plot(pong.parse_args(["--plot", "models/breakout-lr0.001", "--output", "x/y.png"]))
    assert (tmp_path / "repo" / "x" / "y.png").exists(), "--output makes its folder"


def test_plot_against_hours_draws_each_run_by_its_hours_of_training(pong, tmp_path):
    """--against hours: the hours column of each run, seeds one by one, as DQN's runs are
    compared with the tutorial's."""
    write_seeds(tmp_path / "dqn-pong", [[-21, -20, -19], [-21, -21]])
    for seed in (1, 2):  # DQN's checkpoint is no model_*.npz: the runs are Pong's
        np.savez(tmp_path / "dqn-pong" / f"seed-{seed}" / "dqn_pong.npz", weights=np.zeros(1))
    figure = pong.plot(
        pong.parse_args(["--plot", str(tmp_path / "dqn-pong"), "--against", "hours"])
    )
    top, bottom = figure.axes
    lines = {
        line.get_label(): list(line.get_xdata())
        for line in top.get_lines()
        if not line.get_label().startswith("_")
    }
    second = 1 / 3600
    assert lines == {
        "dqn-pong/seed-1 (3 episodes)": pytest.approx([0, second, 2 * second]),
        "dqn-pong/seed-2 (2 episodes)": pytest.approx([0, second]),
    }
    assert bottom.get_xlabel() == "hours of training"


def test_plot_until_draws_and_measures_each_run_as_it_stood_there(pong, tmp_path, capsys):
    """--until X: every run cut at X on the x axis (900 agent steps an episode), so runs of
    different lengths are compared over the same stretch; milestones as they stood there."""
    write_seeds(tmp_path / "trial", [[-21, -20, -19, -18, -17], [-21, -19, -15]])
    folders = [str(tmp_path / "trial" / f"seed-{seed}") for seed in (1, 2)]
    argv = ["--plot", *folders, "--against", "steps", "--until", "0.003"]
    top, _ = pong.plot(pong.parse_args(argv)).axes
    assert {label: list(y) for label, y in top_lines(top).items()} == {
        "trial/seed-1 (3 episodes)": [-21, -20, -19],
        "trial/seed-2 (3 episodes)": [-21, -19, -15],
    }
    out = capsys.readouterr().out
    assert f"{folders[0]}: 3 episodes in 0.00 hours of training" in out
    argv = ["--plot", folders[0], "--until", "1"]  # --against episodes: episodes 0 and 1
    lines = top_lines(pong.plot(pong.parse_args(argv)).axes[0])
    assert {label: list(y) for label, y in lines.items()} == {
        "episode reward": [-21, -20],
        "trial (2 episodes)": [-21, -20],  # by episodes, a seed alone is named by its setting
    }


def test_plot_until_before_a_run_s_first_episode_or_without_plot_is_one_line(
    pong, tmp_path, capsys
):
    write_seeds(tmp_path / "trial", [[-21, -20]])
    folder = str(tmp_path / "trial" / "seed-1")
    for argv, message in (
        (["--plot", folder, "--against", "steps", "--until", "0.0005"], "first episode ends"),
        (["--plot", folder, "--until", "0"], "--until: must be > 0, got 0"),
        (["--until", "5"], "--until does nothing with training"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            pong.plot(pong.parse_args(argv))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_plot_of_a_dqn_run_of_another_game_draws_its_score(pong, tmp_path):
    """The game of a folder is its checkpoint's, dqn_atari_pong.py's dqn_GAME.npz too."""
    write_seeds(tmp_path / "dqn-breakout", [[0, 2, 1]])
    folder = tmp_path / "dqn-breakout" / "seed-1"
    np.savez(folder / "dqn_breakout.npz", **{"config/game": np.array("Breakout")})
    top, bottom = pong.plot(pong.parse_args(["--plot", str(folder)])).axes
    assert top.get_ylabel() == "running mean of the score"
    assert bottom.get_ylabel().startswith("mean score")


def test_plot_names_seed_folders_given_inside_their_setting_by_that_folder(
    pong, tmp_path, monkeypatch
):
    trial = tmp_path / "breakout-lr0.001"
    for seed in (1, 2):
        (trial / f"seed-{seed}").mkdir(parents=True)
    monkeypatch.chdir(trial)
    assert pong.seed_groups(["seed-1", "seed-2"]) == {"breakout-lr0.001": ["seed-1", "seed-2"]}
