"""The review's weak spots in the suite (issue 23): that workers, seeds and
resumed runs play the episodes they should, that the training flags reach the
update, and the error paths no other test runs.

Every run trains in a folder of its own: a second fresh run in a folder that
holds a run is refused."""

import dataclasses
import os
import pathlib
import re
import shutil
import signal
import types

import numpy as np
import pytest
from helpers import (
    CHECKPOINT_NAME,
    POINT_RE,
    PROGRESS_RE,
    SCRIPT,
    LiveRun,
    assert_one_line_error,
    descendants,
    left_after,
    load_checkpoint,
    parse_train_log,
    read_progress,
    run_script,
    script_env,
)

pytestmark = pytest.mark.e2e

SMALL = ["--envs", 1, "--hidden", 8]  # one process, a small network: where neither is the point
HIDDEN = 8
RMSPROP_EPSILON = 1e-10  # tf.compat.v1.train.RMSPropOptimizer's default


@dataclasses.dataclass
class Trained:
    cwd: pathlib.Path
    model_dir: pathlib.Path
    result: object  # helpers.Result

    @property
    def checkpoint(self):
        return self.model_dir / CHECKPOINT_NAME

    @property
    def arrays(self):
        return load_checkpoint(self.checkpoint)

    @property
    def log(self):
        return parse_train_log(self.result.lines)

    @property
    def steps(self):
        """progress.csv's steps, by episode number."""
        return {int(row["episode"]): int(row["steps"]) for row in read_progress(self.model_dir)}


def train(tmp_path_factory, name, *flags, copy_from=None):
    """A run to completion in a new folder; with copy_from, in a copy of that run's
    model folder."""
    cwd = tmp_path_factory.mktemp(name)
    model_dir = cwd / "m"
    if copy_from is not None:
        shutil.copytree(copy_from.model_dir, model_dir)
    run = Trained(cwd, model_dir, run_script([*flags, "--model-dir", model_dir], cwd))
    assert run.result.returncode == 0, run.result.describe()
    return run


def pending(arrays):
    """The checkpoint's unfinished batch: {episode number: its arrays}."""
    episodes, step, nz = {}, 0, 0
    for number, steps in zip(
        arrays["pending/numbers"].tolist(), arrays["pending/steps"].tolist(), strict=True
    ):
        nnz = arrays["pending/nnz"][step : step + steps].astype(np.int64)
        count = int(nnz.sum())
        episodes[number] = types.SimpleNamespace(
            steps=steps,
            nnz=nnz,
            indices=arrays["pending/indices"][nz : nz + count].astype(np.int64),
            signs=arrays["pending/signs"][nz : nz + count].astype(np.float64),
            labels=arrays["pending/labels"][step : step + steps].astype(np.int64),
            rewards=arrays["pending/rewards"][step : step + steps].astype(np.float64),
        )
        step, nz = step + steps, nz + count
    return episodes


def wait_for_point_of(run, episode):
    """Wait for the first point line of that episode."""
    while int(run.wait_for(POINT_RE)[1]) != episode:
        pass


# --- runs shared by the tests below ---------------------------------------------


@pytest.fixture(scope="module")
def seed1_run(tmp_path_factory):
    """Episode 0 of seed 1, kept as pending (no update: the batch is 10), so
    the checkpoint holds the initial weights and the whole episode."""
    return train(
        tmp_path_factory, "seed1", "--seed", 1, "--episodes", 1, "--batch-size", 10, *SMALL
    )


@pytest.fixture(scope="module")
def seed1_again_run(tmp_path_factory):
    return train(
        tmp_path_factory, "seed1-again", "--seed", 1, "--episodes", 1, "--batch-size", 10, *SMALL
    )


@pytest.fixture(scope="module")
def seed2_run(tmp_path_factory):
    return train(
        tmp_path_factory, "seed2", "--seed", 2, "--episodes", 1, "--batch-size", 10, *SMALL
    )


@pytest.fixture(scope="module")
def seed1_resumed_run(tmp_path_factory, seed1_run):
    """seed1_run resumed for one more episode, still without an update: both
    episodes are pending, played with the same weights."""
    return train(
        tmp_path_factory,
        "seed1-resumed",
        "--resume",
        "--seed",
        1,
        "--episodes",
        1,
        "--batch-size",
        10,
        *SMALL,
        copy_from=seed1_run,
    )


@pytest.fixture(scope="module")
def two_workers_run(tmp_path_factory):
    """Episodes 0 and 1 played at once by two worker processes; the batch (3)
    is larger, so both stay pending."""
    return train(
        tmp_path_factory,
        "two-workers",
        "--envs",
        2,
        "--episodes",
        2,
        "--batch-size",
        3,
        "--hidden",
        HIDDEN,
    )


@pytest.fixture(scope="module")
def two_workers_resumed_run(tmp_path_factory, two_workers_run):
    """two_workers_run resumed for the batch's third episode: the update covers
    2 pending + 1 new."""
    return train(
        tmp_path_factory,
        "two-workers-resumed",
        "--resume",
        "--envs",
        2,
        "--episodes",
        1,
        "--batch-size",
        3,
        "--hidden",
        HIDDEN,
        copy_from=two_workers_run,
    )


LEARNING_RATE, DECAY_RATE, GAMMA = 0.01, 0.9, 0.95  # none of them the default


@pytest.fixture(scope="module")
def optimizer_run(tmp_path_factory):
    """seed1_run's first episode (same seed and network), then one update with
    a learning rate, decay and gamma that are not the defaults."""
    return train(
        tmp_path_factory,
        "optimizer",
        "--seed",
        1,
        "--episodes",
        1,
        "--batch-size",
        1,
        "--learning-rate",
        LEARNING_RATE,
        "--decay-rate",
        DECAY_RATE,
        "--gamma",
        GAMMA,
        *SMALL,
    )


# --- which episodes are played ----------------------------------------------------


def test_two_workers_play_different_episodes(two_workers_run):
    """Each worker seeds its emulator and sampling apart: with one seed for
    both, the two episodes of a batch would be the same game twice."""
    episodes = pending(two_workers_run.arrays)
    assert sorted(episodes) == [0, 1]
    first, second = episodes[0], episodes[1]
    assert [first.steps, second.steps] == [two_workers_run.steps[0], two_workers_run.steps[1]]
    assert not (first.steps == second.steps and np.array_equal(first.labels, second.labels)), (
        "both workers played the same actions: they share their random numbers"
    )


def test_the_same_seed_plays_the_same_first_episode(seed1_run, seed1_again_run):
    assert seed1_run.log.points[0] == seed1_again_run.log.points[0], "the point lines differ"
    assert seed1_run.steps == seed1_again_run.steps
    first, again = pending(seed1_run.arrays)[0], pending(seed1_again_run.arrays)[0]
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.rewards, again.rewards)
    np.testing.assert_array_equal(first.indices, again.indices)


def test_another_seed_plays_another_first_episode(seed1_run, seed2_run):
    first, other = pending(seed1_run.arrays)[0], pending(seed2_run.arrays)[0]
    assert not (first.steps == other.steps and np.array_equal(first.labels, other.labels))


def test_a_resumed_run_draws_fresh_numbers(seed1_run, seed1_resumed_run):
    """Episode 1 after resuming is played with the same weights as episode 0
    (no update between them): if the resumed run reseeded as the first did, it
    would replay episode 0 action for action."""
    episodes = pending(seed1_resumed_run.arrays)
    assert sorted(episodes) == [0, 1]
    before = pending(seed1_run.arrays)[0]
    np.testing.assert_array_equal(
        episodes[0].labels, before.labels, err_msg="the pending episode 0 changed"
    )
    assert sorted(seed1_resumed_run.log.points) == [1]
    assert not (
        episodes[1].steps == before.steps and np.array_equal(episodes[1].labels, before.labels)
    ), "the resumed run replayed episode 0"


# --- the training flags reach the update --------------------------------------------


def discounted(rewards, gamma):
    """The tutorial's returns: discounted back from each point, reset at every point."""
    returns, running = np.zeros(len(rewards)), 0.0
    for t in reversed(range(len(rewards))):
        running = (0.0 if rewards[t] != 0 else running) * gamma + rewards[t]
        returns[t] = running
    return returns


def policy_gradient(weights, episode, gamma):
    """The gradient of tl.rein.cross_entropy_reward_loss (sum over steps of
    cross entropy times standardised return) for one episode, by hand in
    float64, from its sparse difference frames."""
    hidden_w, hidden_b, output_w, output_b = (np.asarray(w, np.float64) for w in weights)
    returns = discounted(episode.rewards, gamma)
    returns = returns - returns.mean()
    returns = returns / returns.std()
    rows = np.repeat(np.arange(episode.steps), episode.nnz)
    pre = np.tile(hidden_b, (episode.steps, 1))
    np.add.at(pre, rows, episode.signs[:, None] * hidden_w[episode.indices])
    active = pre > 0
    hidden = np.where(active, pre, 0.0)
    logits = hidden @ output_w + output_b
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    d_logits = probs
    d_logits[np.arange(episode.steps), episode.labels] -= 1
    d_logits *= returns[:, None]
    d_hidden = np.where(active, d_logits @ output_w.T, 0.0)
    d_hidden_w = np.zeros_like(hidden_w)
    np.add.at(d_hidden_w, episode.indices, episode.signs[:, None] * d_hidden[rows])
    return [d_hidden_w, d_hidden.sum(axis=0), hidden.T @ d_logits, d_logits.sum(axis=0)]


def tf1_rmsprop_first_step(gradients, lr, decay):
    """TF1's RMSProp from a mean square of 1: ms = decay + (1 - decay) g^2,
    step = lr g / sqrt(ms + eps)."""
    mean_squares = [decay + (1 - decay) * g**2 for g in gradients]
    return [
        lr * g / np.sqrt(ms + RMSPROP_EPSILON)
        for g, ms in zip(gradients, mean_squares, strict=True)
    ], mean_squares


PARAMETERS = ["hidden/weights", "hidden/biases", "output/weights", "output/biases"]


def test_learning_rate_decay_and_gamma_shape_the_update(seed1_run, optimizer_run):
    """The first update's step and mean square are TF1 RMSProp's for the given
    --learning-rate and --decay-rate, on the gradient with --gamma's returns."""
    assert optimizer_run.log.points[0] == seed1_run.log.points[0], (
        "not the same first episode: nothing to compare"
    )
    assert optimizer_run.log.batches == [(1, seed1_run.steps[0])]
    initial, after = seed1_run.arrays, optimizer_run.arrays
    episode = pending(initial)[0]
    weights = [initial[name] for name in PARAMETERS]
    steps, mean_squares = tf1_rmsprop_first_step(
        policy_gradient(weights, episode, GAMMA), LEARNING_RATE, DECAY_RATE
    )
    default_gamma_steps, _ = tf1_rmsprop_first_step(
        policy_gradient(weights, episode, 0.99), LEARNING_RATE, DECAY_RATE
    )
    for name, step, mean_square, default_gamma_step in zip(
        PARAMETERS, steps, mean_squares, default_gamma_steps, strict=True
    ):
        taken = initial[name].astype(np.float64) - after[name].astype(np.float64)
        tolerance = 1e-3 * np.abs(step).max()
        assert np.abs(default_gamma_step - step).max() > 10 * tolerance, (
            f"{name}: gamma 0.99 would pass too"
        )
        np.testing.assert_allclose(
            taken, step, rtol=1e-3, atol=tolerance, err_msg=f"{name}: the step"
        )
        np.testing.assert_allclose(
            after["mean_square/" + name],
            mean_square,
            rtol=1e-5,
            atol=1e-7,
            err_msg=f"{name}: the mean square",
        )


def test_the_step_size_is_the_learning_rate_over_the_root_mean_square(seed1_run, optimizer_run):
    """The same rule read off the checkpoint alone: g^2 = (ms - decay) / (1 - decay),
    |step| = lr |g| / sqrt(ms), wherever g is large enough to be read from a float32 ms."""
    initial, after = seed1_run.arrays, optimizer_run.arrays
    compared = 0
    for name in PARAMETERS:
        mean_square = after["mean_square/" + name].astype(np.float64)
        readable = mean_square - DECAY_RATE > 1e-3
        g = np.sqrt((mean_square[readable] - DECAY_RATE) / (1 - DECAY_RATE))
        taken = np.abs(initial[name].astype(np.float64) - after[name].astype(np.float64))[readable]
        np.testing.assert_allclose(
            taken, LEARNING_RATE * g / np.sqrt(mean_square[readable]), rtol=1e-2, err_msg=name
        )
        compared += int(readable.sum())
    assert compared > 0


def test_hidden_sets_the_size_of_the_network_that_is_trained(seed1_run, optimizer_run):
    arrays = optimizer_run.arrays
    assert arrays["hidden/weights"].shape == (6400, HIDDEN)
    assert arrays["hidden/biases"].shape == (HIDDEN,)
    assert arrays["output/weights"].shape == (HIDDEN, 3)
    assert arrays["mean_square/hidden/weights"].shape == (6400, HIDDEN)
    assert int(arrays["config/hidden"]) == HIDDEN
    assert (
        f"  num of params: {6400 * HIDDEN + HIDDEN + HIDDEN * 3 + 3}" in optimizer_run.result.lines
    )
    assert any(
        re.match(rf"^  param +0: hidden/weights:0 +\(6400, {HIDDEN}\) ", line)
        for line in optimizer_run.result.lines
    )
    assert not np.array_equal(arrays["hidden/weights"], seed1_run.arrays["hidden/weights"]), (
        "no update"
    )


# --- resuming with a pending batch ----------------------------------------------------


def test_the_update_after_resuming_counts_the_pending_episodes(
    two_workers_run, two_workers_resumed_run
):
    steps = two_workers_resumed_run.steps
    assert sorted(steps) == [0, 1, 2]
    assert steps[0] == two_workers_run.steps[0] and steps[1] == two_workers_run.steps[1]
    assert two_workers_resumed_run.log.batches == [(3, steps[0] + steps[1] + steps[2])]
    after = two_workers_resumed_run.arrays
    assert int(after["state/episode"]) == 3
    assert after["pending/numbers"].tolist() == [] and after["pending/steps"].tolist() == []
    for name in PARAMETERS:
        assert not np.array_equal(after[name], two_workers_run.arrays[name]), f"{name}: no update"


# --- saving every N episodes, and what a start cleans up --------------------------------

STALE_FILES = [
    "model_pong.npz.4242.tmp",
    "progress.csv.4242.tmp",
]  # a killed run's half-written files


@pytest.fixture(scope="module")
def save_every_2_run(tmp_path_factory):
    """Three episodes with --save-every 2, watched as they come, in a folder
    where a killed run left its temporary files next to a file of the user's."""
    cwd = tmp_path_factory.mktemp("save-every-2")
    model_dir = cwd / "m"
    model_dir.mkdir()
    for name in STALE_FILES:
        (model_dir / name).write_bytes(b"half written")
    (model_dir / "notes.txt").write_text("the user's own file")
    run = LiveRun(
        ["--save-every", 2, "--episodes", 3, "--batch-size", 1, *SMALL, "--model-dir", model_dir],
        cwd,
    )
    seen = {}
    try:
        wait_for_point_of(run, 0)
        seen["stale at the first point"] = sorted(p.name for p in model_dir.glob("*.tmp"))
        wait_for_point_of(run, 1)
        seen["checkpoint after episode 0"] = (model_dir / CHECKPOINT_NAME).exists()
        wait_for_point_of(run, 2)
        seen["checkpoint episode after episode 1"] = int(
            load_checkpoint(model_dir / CHECKPOINT_NAME)["state/episode"]
        )
        returncode, stderr = run.finish()
    finally:
        run.kill()
    return types.SimpleNamespace(
        cwd=cwd,
        model_dir=model_dir,
        lines=run.seen,
        returncode=returncode,
        stderr=stderr,
        seen=seen,
    )


def test_save_every_2_saves_at_every_2nd_episode_and_at_the_end(save_every_2_run):
    run = save_every_2_run
    assert run.returncode == 0, run.stderr
    checkpoint = run.model_dir / CHECKPOINT_NAME
    assert run.seen["checkpoint after episode 0"] is False
    assert run.seen["checkpoint episode after episode 1"] == 2
    saved_at = [(int(m[1]), m[2]) for m in map(PROGRESS_RE.match, run.lines) if m]
    assert saved_at == [(2, str(checkpoint))]
    assert run.lines[-1] == f"saved checkpoint to {checkpoint} (episode 3)"
    assert int(load_checkpoint(checkpoint)["state/episode"]) == 3
    assert [int(row["episode"]) for row in read_progress(run.model_dir)] == [0, 1, 2]


def test_a_start_removes_stale_temporary_files_and_nothing_else(save_every_2_run):
    run = save_every_2_run
    assert run.seen["stale at the first point"] == [], (
        "still there when the first episode was played"
    )
    assert list(run.model_dir.glob("*.tmp")) == []
    assert (run.model_dir / "notes.txt").read_text() == "the user's own file"


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["--episodes", 1, "--envs", 1],
        ["--resume", "--episodes", 1, "--envs", 1],
        ["--play", 1, "--envs", 1],
    ],
    ids=["train", "resume", "play"],
)
def test_model_naming_a_folder_is_one_line_exit_2(tmp_path, command):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's own file")
    result = run_script([*command, "--model", folder], tmp_path)
    assert_one_line_error(result)
    assert str(folder) in result.stderr_lines[0]
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert not any(
        (tmp_path / name).exists() for name in ("progress.csv", "tensorboard", CHECKPOINT_NAME)
    )


def test_a_dying_worker_is_one_line_and_leaves_the_last_checkpoint(tmp_path):
    """kill -9 of one worker part-way through the second batch: one line on
    stderr, a non-zero exit, the episodes played so far saved, and no
    process left behind."""
    model_dir = tmp_path / "m"
    run = LiveRun(
        [
            "--envs",
            2,
            "--batch-size",
            2,
            "--save-every",
            2,
            "--episodes",
            4,
            "--hidden",
            HIDDEN,
            "--model-dir",
            model_dir,
        ],
        tmp_path,
    )
    try:
        assert int(run.wait_for(PROGRESS_RE)[1]) == 2
        wait_for_point_of(run, 2)  # both workers are a few points into episodes 2 and 3
        workers = descendants(run.process.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        returncode, stderr = run.finish()
    finally:
        run.kill()
    assert left_after(workers, seconds=10) == [], "processes left behind"
    assert returncode not in (0, -9), returncode
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "an episode worker process died" in lines[0], stderr
    saved = int(
        load_checkpoint(model_dir / CHECKPOINT_NAME)["state/episode"]
    )  # the whole episodes are kept
    assert saved >= 2 and [int(row["episode"]) for row in read_progress(model_dir)] == list(
        range(saved)
    )
    assert list(model_dir.glob("*.tmp")) == []


# --- --render without xvfb-run ------------------------------------------------------------


def test_render_with_an_empty_display_is_one_line_exit_2_before_anything_else(tmp_path):
    """--play --render where DISPLAY is set but empty (an ssh session without
    X forwarding): the display is the error, not the missing checkpoint."""
    result = run_script(
        ["--play", 1, "--render", "--model-dir", tmp_path / "m"],
        tmp_path,
        env=script_env(DISPLAY="", WAYLAND_DISPLAY=None),
    )
    assert_one_line_error(result)
    assert result.stderr_lines[0].startswith(f"{SCRIPT.name}: error: --render needs a display")
    assert "DISPLAY" in result.stderr_lines[0]
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "display, wayland, accepted",
    [
        ("", None, False),
        (None, None, False),
        (":99", None, True),
        (None, "wayland-0", True),
        ("", "", False),
    ],
    ids=["empty-display", "no-display", "x11", "wayland", "both-empty"],
)
def test_render_accepts_x11_or_wayland_and_refuses_neither(
    pong, monkeypatch, display, wayland, accepted
):
    for name, value in (("DISPLAY", display), ("WAYLAND_DISPLAY", wayland)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(pong.sys, "platform", "linux")
    if accepted:
        assert pong.parse_args(["--render"]).render
    else:
        with pytest.raises(SystemExit) as refused:
            pong.parse_args(["--render"])
        assert refused.value.code == 2
    assert not pong.parse_args([]).render  # without --render no display is needed


def test_render_plays_in_this_process_in_a_window_whatever_envs_says(pong, monkeypatch):
    """--render implies --envs 1: a window per worker process is not what a user asked for."""
    opened = []
    monkeypatch.setattr(
        pong, "make_env", lambda env_seed, render_mode, game_name: opened.append(render_mode) or 0
    )
    monkeypatch.setenv("DISPLAY", ":99")  # the window is not opened: make_env is replaced
    player = pong.make_player(pong.parse_args(["--render", "--envs", "2"]), 0, 1)
    assert isinstance(player, pong.LocalPlayer)
    assert opened == ["human"]


def test_a_window_uses_sdls_software_renderer_and_no_audio(pong, monkeypatch):
    """ALE's SDL window through OpenGL loads Mesa, whose LLVM crashes next to
    TensorFlow's (tests/test_render.py shows it on Xvfb): the environment must
    ask SDL for its software renderer before the emulator opens a window."""
    for name in ("SDL_RENDER_DRIVER", "SDL_FRAMEBUFFER_ACCELERATION", "SDL_AUDIODRIVER"):
        monkeypatch.delenv(name, raising=False)
    made = []

    def make(name, **options):
        made.append(
            (
                name,
                options,
                {
                    key: pong.os.environ.get(key)
                    for key in (
                        "SDL_RENDER_DRIVER",
                        "SDL_FRAMEBUFFER_ACCELERATION",
                        "SDL_AUDIODRIVER",
                    )
                },
            )
        )
        return types.SimpleNamespace(unwrapped=types.SimpleNamespace(reset=lambda seed=None: None))

    monkeypatch.setattr(pong, "gym", types.SimpleNamespace(make=make))
    pong.make_env(7, "human")
    ((name, options, sdl),) = made
    assert name == "Pong-v0" and options["render_mode"] == "human"
    assert sdl == {
        "SDL_RENDER_DRIVER": "software",
        "SDL_FRAMEBUFFER_ACCELERATION": "0",
        "SDL_AUDIODRIVER": "dummy",
    }
