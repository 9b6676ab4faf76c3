"""dqn_atari_pong.py (issue 56): its replay memory, its Q-learning target and loss, its epsilon
schedule, and the script run as a user runs it: a short run on the real Pong-v0, an exact resume,
kill -9 around its saves, and bad input refused in one line."""

import copy
import dataclasses
import hashlib
import importlib.util
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from unittest import mock

import numpy as np
import pytest
from helpers import (
    CHECKPOINT_NAME,
    DQN_CHECKPOINT_NAME,
    DQN_SCRIPT,
    PLAY_RE,
    PLAY_SUMMARY_RE,
    POINT_RE,
    REPO,
    LiveRun,
    Result,
    assert_one_line_error,
    load_checkpoint,
    parse_train_log,
    read_progress,
    run_script,
    running_means,
    script_env,
)

# --- The script as a module ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dqn():
    """dqn_atari_pong.py as a module, without TensorFlow (which it imports in import_libraries):
    enough for the replay memory, the epsilon schedule and reading checkpoints."""
    sys.path.insert(0, str(DQN_SCRIPT.parent))  # as when it runs: the tutorial beside it
    spec = importlib.util.spec_from_file_location("dqn_under_test", DQN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # Its import sets TensorFlow's thread counts in os.environ: other tests' subprocesses must not
    # inherit them.
    with mock.patch.dict("os.environ"):
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dqn_tf(dqn):
    """The module with TensorFlow, TensorLayer and the emulator imported (~5 s)."""
    dqn.import_libraries()
    return dqn


# --- The replay memory ---------------------------------------------------------------------

SIDE = 2  # the memory's frames: 2 x 2 pixels carry a frame's number


def numbered_frame(number):
    """A frame that carries its number (the order in which it was added), base 256, in its first
    row."""
    frame = np.zeros((SIDE, SIDE), np.uint8)
    frame[0] = number % 256, number // 256
    return frame


def frame_numbers(frames):
    """The numbers of frames of any leading shape."""
    return frames[..., 0, 0].astype(np.int64) + 256 * frames[..., 0, 1].astype(np.int64)


@dataclasses.dataclass
class Played:
    """What was added to a memory, written down by hand: for each frame, its episode's first
    frame; for each frame acted on, the action, the clipped reward and whether the game ended."""

    first_of: list = dataclasses.field(default_factory=list)
    transitions: dict = dataclasses.field(default_factory=dict)

    @property
    def total(self):
        return len(self.first_of)

    def state(self, number, history):
        """The state ending at frame `number`: the history frames up to it, its episode's first
        frame in place of any from before that episode."""
        return [max(number - back, self.first_of[number]) for back in range(history - 1, -1, -1)]


def play_into(memory, lengths, rng, played=None, cut=()):
    """Feed memory episodes of these lengths (agent steps) as play_episode does, writing down
    what was added. Each ends in a terminal step, except those whose index is in cut (episodes
    cut at the step limit). Before every step, the state the agent acts on is checked."""
    played = played or Played()
    for index, length in enumerate(lengths):
        number = first = played.total
        memory.add(numbered_frame(number), first=True)
        played.first_of.append(first)
        for step in range(length):
            acting_on = frame_numbers(memory.state()[0]).tolist()
            assert acting_on == played.state(number, memory.history), f"frame {number}"
            action, reward = int(rng.integers(3)), float(rng.choice([-1.0, 0.0, 1.0]))
            terminal = step == length - 1 and index not in cut
            memory.step(action, reward, terminal, numbered_frame(number + 1))
            played.transitions[number] = (action, reward, terminal)
            played.first_of.append(first)
            number += 1
    return played


def test_an_episode_s_first_states_are_padded_with_its_first_frame(dqn):
    memory = dqn.ReplayMemory(100, 4, SIDE)
    play_into(memory, [5], np.random.default_rng(0))  # frames 0-5; the next episode starts at 6
    memory.add(numbered_frame(6), first=True)
    states = [frame_numbers(memory.state()[0]).tolist()]
    for number in range(7, 11):
        memory.step(0, 0.0, False, numbered_frame(number))
        states.append(frame_numbers(memory.state()[0]).tolist())
    assert states == [
        [6, 6, 6, 6],
        [6, 6, 6, 7],
        [6, 6, 7, 8],
        [6, 7, 8, 9],
        [7, 8, 9, 10],
    ]
    sampled, _, _, _, next_states = memory.sample(200, np.random.default_rng(1))
    starting_at_6 = frame_numbers(sampled)[:, -1] == 6
    assert starting_at_6.any()
    assert (frame_numbers(sampled[starting_at_6]) == [6, 6, 6, 6]).all()
    assert (frame_numbers(next_states[starting_at_6]) == [6, 6, 6, 7]).all()


@pytest.mark.parametrize(
    "capacity, history",
    [(1000, 4), (23, 4), (5, 4), (9, 2)],
    ids=["no-wraparound", "wraparound", "smallest-memory", "difference-input"],
)
def test_sampled_transitions_are_those_added_whole_and_never_reach_past_the_oldest_frame(
    dqn, capacity, history
):
    rng = np.random.default_rng(capacity)
    memory = dqn.ReplayMemory(capacity, history, SIDE)
    # One- and two-step episodes too, at the end as well: the smallest memories then hold
    # several episodes' last frames.
    lengths = [1, 2, *rng.integers(1, 12, 40).tolist(), 1, 2, 1]
    played = play_into(memory, lengths, rng, cut={3, 10})
    oldest = max(0, played.total - capacity)
    assert memory.size == min(played.total, capacity)

    states, actions, rewards, terminals, next_states = memory.sample(4000, rng)
    assert states.shape == next_states.shape == (4000, history, SIDE, SIDE)
    assert (actions.dtype, rewards.dtype, terminals.dtype) == (np.int32, np.float32, np.float32)
    sampled = set()
    for row in range(4000):
        numbers = frame_numbers(states[row]).tolist()
        following = frame_numbers(next_states[row]).tolist()
        acted_on = numbers[-1]
        sampled.add(acted_on)
        assert acted_on in played.transitions, f"frame {acted_on} was not acted on"
        assert numbers == played.state(acted_on, history), f"the state ending at {acted_on}"
        assert following == played.state(acted_on + 1, history), f"the state after {acted_on}"
        assert following == [*numbers[1:], acted_on + 1], "not shifted by one frame"
        assert len({played.first_of[n] for n in numbers + following}) == 1, "two episodes mixed"
        assert min(numbers) >= oldest, f"reaches back to {min(numbers)}, before {oldest}"
        action, reward, terminal = played.transitions[acted_on]
        assert (actions[row], rewards[row], terminals[row]) == (action, reward, float(terminal))

    last_frames = set(range(oldest, played.total)) - set(played.transitions)
    assert len(last_frames) >= 2 and not sampled & last_frames
    # Every transition whose frames are all still stored is drawn (4000 draws, fewer than 400 of
    # them): none is left out.
    whole = {n for n in played.transitions if n - (history - 1) >= oldest}
    assert whole <= sampled, f"never drawn: {sorted(whole - sampled)}"
    assert any(played.transitions[n][2] for n in sampled), "no terminal transition drawn"


@pytest.mark.parametrize("capacity", [1000, 23], ids=["no-wraparound", "wraparound"])
def test_a_memory_saved_and_loaded_into_a_fresh_one_samples_and_goes_on_identically(
    dqn, tmp_path, capacity
):
    memory = dqn.ReplayMemory(capacity, 4, SIDE)
    played = play_into(memory, [7, 3, 9, 1, 12], np.random.default_rng(2))
    path = str(tmp_path / "memory.npz")
    dqn.pong.save_arrays(path, memory.arrays())  # as a checkpoint keeps it
    loaded = dqn.ReplayMemory(capacity, 4, SIDE)
    loaded.load(dqn.pong.load_arrays(path))

    def samples(of):
        return of.sample(64, np.random.default_rng(3))

    for original, reloaded in zip(samples(memory), samples(loaded), strict=True):
        np.testing.assert_array_equal(original, reloaded)
    # Both go on alike: the cursor and the size came back too.
    play_into(memory, [6, 8], np.random.default_rng(4), played=copy.deepcopy(played))
    play_into(loaded, [6, 8], np.random.default_rng(4), played=copy.deepcopy(played))
    for original, reloaded in zip(samples(memory), samples(loaded), strict=True):
        np.testing.assert_array_equal(original, reloaded)
    np.testing.assert_array_equal(memory.state(), loaded.state())


# --- The epsilon schedule ------------------------------------------------------------------


def test_epsilon_is_1_until_learning_starts_then_falls_in_a_line_then_stays(dqn):
    args = types.SimpleNamespace(learning_starts=100, epsilon_steps=200, epsilon_end=0.1)
    at = [dqn.epsilon_at(step, args) for step in (0, 50, 100, 150, 200, 299, 300, 301, 10**6)]
    np.testing.assert_allclose(at, [1, 1, 1, 0.775, 0.55, 0.1045, 0.1, 0.1, 0.1], rtol=1e-12)


def test_epsilon_greedy_explores_with_probability_epsilon_and_then_never_asks_the_network(dqn):
    best = 2

    def q_fn(state):
        asked.append(state)
        return np.array([0.1, -0.5, 0.7])

    rng = np.random.default_rng(12)
    for epsilon in (0.0, 0.25, 1.0):
        asked = []
        choices = np.array([dqn.epsilon_greedy(q_fn, "s", epsilon, rng, 3) for _ in range(8000)])
        explored = 1 - len(asked) / len(choices)  # a greedy choice asks the network once
        assert abs(explored - epsilon) < 0.02, f"epsilon {epsilon}: explored {explored}"
        assert all(state == "s" for state in asked)
        shares = np.bincount(choices, minlength=3) / len(choices)
        # an exploring draw picks each of the 3 actions alike, the best one included
        expected = np.full(3, epsilon / 3) + (1 - epsilon) * (np.arange(3) == best)
        np.testing.assert_allclose(shares, expected, atol=0.02, err_msg=f"epsilon {epsilon}")


# --- The Q-learning target and the Huber loss ------------------------------------------------


def test_huber_is_half_the_square_up_to_1_and_linear_beyond(dqn_tf):
    errors = np.array([-3.5, -1.0, -0.25, 0.0, 0.5, 1.0, 1.5, 10.0], np.float32)
    expected = [3.0, 0.5, 0.03125, 0.0, 0.125, 0.5, 1.0, 9.5]
    np.testing.assert_allclose(dqn_tf.huber(dqn_tf.tf.constant(errors)).numpy(), expected)


def test_network_input_is_the_stack_as_channels_in_0_1_or_the_last_frame_minus_the_one_before(
    dqn_tf,
):
    frames = np.random.default_rng(6).integers(0, 256, (3, 4, 84, 84), dtype=np.uint8)
    stacked = dqn_tf.network_input(frames, "stack").numpy()
    np.testing.assert_allclose(stacked, frames.transpose(0, 2, 3, 1) / 255.0, rtol=1e-6)
    pairs = (frames[:, :2, :80, :80] > 128).astype(np.uint8)  # the tutorial's frames: 0 and 1
    difference = dqn_tf.network_input(pairs, "difference").numpy()
    expected = pairs[:, 1].astype(np.float32) - pairs[:, 0]
    np.testing.assert_array_equal(difference, expected[..., None])


def test_the_update_s_compiled_input_is_network_input_to_the_bit_for_every_byte(dqn_tf):
    """XLA makes the update's input in one pass, to the same numbers as TensorFlow's graph made
    them: a change would make a run trained before it and one after differ."""
    frames = np.resize(np.arange(256, dtype=np.uint8), (2, 4, 84, 84))
    graph = dqn_tf.tf.function(dqn_tf.network_input, autograph=False)
    for input_name, batch in (("stack", frames), ("difference", frames[:, :2, :80, :80] % 2)):
        compiled = dqn_tf.compiled_input(input_name)(batch).numpy()
        plain = graph(batch, input_name).numpy()
        assert compiled.dtype == plain.dtype and compiled.tobytes() == plain.tobytes()


def q_values(dqn, model, states, input_name):
    return model(dqn.network_input(states, input_name)).numpy().astype(np.float64)


def huber_loss(targets, values):
    """The mean Huber loss, in numpy."""
    errors = np.abs(targets - values)
    return np.mean(np.where(errors <= 1, 0.5 * errors**2, errors - 0.5))


@pytest.mark.parametrize("input_name", ["stack", "difference"])
def test_the_update_s_loss_is_the_huber_loss_of_the_q_learning_target_before_its_step(
    dqn_tf, input_name
):
    """The target: the reward alone where the game ended, else reward + gamma * the target
    network's highest Q-value of the next state."""
    dqn, tf = dqn_tf, dqn_tf.tf
    history, side = dqn.INPUTS[input_name]
    online = dqn.build_q_network(input_name, 3, 11)
    target = dqn.build_q_network(input_name, 3, 23)
    # Next states worth about 3 to the target network, so that leaving out the discounted
    # next value of a transition that did not end the game, or adding it to one that did, moves
    # the error well out of [-1, 1].
    target.trainable_weights[-1].assign(tf.constant([3.0, 2.5, 3.5]))
    optimizer = dqn.make_optimizer("adam", 1e-3, online)
    gamma = 0.9
    rng = np.random.default_rng(8)
    count = 16
    top = 256 if input_name == "stack" else 2
    states = rng.integers(0, top, (count, history, side, side), dtype=np.uint8)
    next_states = rng.integers(0, top, (count, history, side, side), dtype=np.uint8)
    actions = rng.integers(0, 3, count).astype(np.int32)
    rewards = rng.choice([-1.0, 0.0, 1.0, 0.5], count).astype(np.float32)
    terminals = (np.arange(count) % 2).astype(np.float32)  # every other one ended the game
    values = q_values(dqn, online, states, input_name)[np.arange(count), actions]
    next_values = q_values(dqn, target, next_states, input_name).max(axis=1)
    targets = rewards + gamma * np.where(terminals == 1, 0.0, next_values)
    expected = huber_loss(targets, values)
    errors = np.abs(targets - values)
    assert (errors < 1).any() and (errors > 1).any(), "both parts of the Huber loss in play"
    target_before = [w.numpy() for w in target.trainable_weights]
    online_before = [w.numpy() for w in online.trainable_weights]

    update = dqn.make_update_fn(online, target, optimizer, gamma, input_name)
    loss = float(update(states, actions, rewards, terminals, next_states))

    assert loss == pytest.approx(expected, rel=1e-5)
    # The test tells the right target from the likely wrong ones.
    online_next = q_values(dqn, online, next_states, input_name).max(axis=1)
    wrong = {
        "terminals ignored": huber_loss(rewards + gamma * next_values, values),
        "the online network's next values": huber_loss(
            rewards + gamma * (1 - terminals) * online_next, values
        ),
        "the squared error": np.mean((targets - values) ** 2) / 2,
    }
    for name, wrong_loss in wrong.items():
        assert abs(wrong_loss - expected) > 0.05 * expected, name
    # The step moved the online network towards the targets; the target network stayed.
    for weight, before in zip(target.trainable_weights, target_before, strict=True):
        np.testing.assert_array_equal(weight.numpy(), before)
    assert any(
        not np.array_equal(weight.numpy(), before)
        for weight, before in zip(online.trainable_weights, online_before, strict=True)
    )
    after = q_values(dqn, online, states, input_name)[np.arange(count), actions]
    assert huber_loss(targets, after) < expected


# --- The script run as a user runs it: a subprocess on the real Pong-v0 ---------------------

# Short runs: updates from the memory's 500th frame, one every 8 agent steps; epsilon falls to
# its end over the next 1,000 steps; the memory of 2,000 frames wraps around in the second
# episode; a save after every episode. An episode of the untrained agent is ~800-1,400 steps.
FLAGS = [
    "--memory",
    2000,
    "--learning-starts",
    500,
    "--batch-size",
    8,
    "--train-every",
    8,
    "--epsilon-steps",
    1000,
    "--save-every",
    1,
]
KEPT = ["--learning-rate", 0.0005, "--target-every", 500]  # not defaults: a resume keeps them
RESUMED_RE = re.compile(
    r"^resumed from (.+) at step (\d+), episode (\d+)"
    r"( \(exactly: memory, target, optimizer, generators\))?$"
)
EPISODE_OVER_RE = re.compile(
    r"^episode (\d+) over \((\d+) steps, (\d+) in all, epsilon (\d\.\d{3})\)\.\.\.\.\.\. "
    r"(\d+) updates \((?:mean loss \d+\.\d{5}|none yet)\) in \d+\.\d{2}s$"
)
STEP_RE = re.compile(r"^step (\d+): episode (\d+), epsilon \d\.\d{3}, .*; saved (.+)$")


def run_dqn(args, cwd, **options):
    return run_script(args, cwd, script=DQN_SCRIPT, **options)


@dataclasses.dataclass
class DqnRun:
    model_dir: pathlib.Path
    result: Result

    @property
    def checkpoint(self):
        return self.model_dir / DQN_CHECKPOINT_NAME

    def arrays(self):
        return load_checkpoint(self.checkpoint)

    def steps(self):
        return int(self.arrays()["state/steps"])


def dqn_run(tmp_path_factory, name, *flags, copy_of=None, prepare=None):
    """The script run with flags and --model-dir, in a new folder (with a copy of another run's
    folder, if any)."""
    cwd = tmp_path_factory.mktemp(name)
    model_dir = cwd / "m"
    if copy_of is not None:
        shutil.copytree(copy_of.model_dir, model_dir)
    if prepare is not None:
        prepare(model_dir)
    return DqnRun(model_dir, run_dqn([*flags, "--model-dir", model_dir], cwd))


@pytest.fixture(scope="module")
def first_episode_run(tmp_path_factory):
    """One episode: --steps 1 (a run ends with the episode under way)."""
    run = dqn_run(tmp_path_factory, "first", "--steps", 1, *FLAGS, *KEPT)
    assert run.result.returncode == 0, run.result.describe()
    return run


@pytest.fixture(scope="module")
def two_episode_run(tmp_path_factory, first_episode_run):
    """Two episodes in one go: --steps one past the first episode's end (the same episode: the
    same seed)."""
    steps = first_episode_run.steps() + 1
    return dqn_run(tmp_path_factory, "two", "--steps", steps, *FLAGS, *KEPT)


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, first_episode_run):
    """first_episode_run's folder resumed with no flag but --steps, to two_episode_run's end."""
    steps = first_episode_run.steps() + 1
    return dqn_run(
        tmp_path_factory, "resumed", "--resume", "--steps", steps, copy_of=first_episode_run
    )


def expected_updates(episode_steps, memory, learning_starts, train_every, first_step=0):
    """The updates of a run: one every train_every agent steps once the memory holds
    learning_starts frames (each episode's first frame, then one frame a step)."""
    updates, frames, step = 0, 0, first_step
    for length in episode_steps:
        frames += 1
        for _ in range(length):
            step, frames = step + 1, frames + 1
            updates += min(frames, memory) >= learning_starts and step % train_every == 0
    return updates


def npz_names(model_dir):
    return sorted(path.name for path in model_dir.glob("*.npz"))


@pytest.mark.e2e
def test_a_short_run_prints_the_tutorial_s_lines_and_leaves_its_log_and_checkpoints(
    dqn, two_episode_run
):
    run = two_episode_run
    assert run.result.returncode == 0, run.result.describe()
    assert "Traceback" not in run.result.stderr
    rows = read_progress(run.model_dir)
    assert [int(row["episode"]) for row in rows] == [0, 1]
    steps = [int(row["steps"]) for row in rows]
    rewards = [float(row["reward"]) for row in rows]
    log = parse_train_log(run.result.lines)
    means = running_means(rewards)
    assert [total for total, _ in log.episodes] == rewards
    assert [mean for _, mean in log.episodes] == pytest.approx(means, abs=1e-6)
    assert [float(row["running_mean"]) for row in rows] == pytest.approx(means, abs=1e-6)
    for number, row in enumerate(rows):
        points = log.points[number]
        assert [game for game, _, _ in points] == list(range(len(points)))
        assert sum(reward > 0 for _, reward, _ in points) == int(row["points_won"])
        assert sum(reward < 0 for _, reward, _ in points) == int(row["points_lost"])
        assert sum(reward for _, reward, _ in points) == float(row["reward"])
    over = [EPISODE_OVER_RE.match(line) for line in run.result.lines]
    over = [match for match in over if match]
    assert [(int(m[1]), int(m[2]), int(m[3])) for m in over] == [
        (0, steps[0], steps[0]),
        (1, steps[1], sum(steps)),
    ]

    arrays = dqn.read_q_checkpoint(str(run.checkpoint), "Pong")
    assert int(arrays["state/steps"]) == sum(steps)
    assert int(arrays["state/episode"]) == 2
    updates = expected_updates(steps, memory=2000, learning_starts=500, train_every=8)
    assert int(arrays["state/updates"]) == updates == sum(int(m[5]) for m in over)
    # epsilon: 1 to step 500, then down by 0.99 over 1,000 steps to 0.01
    for m in over:
        expected = max(0.01, 1 - 0.99 * max(0, int(m[3]) - 500) / 1000)
        assert float(m[4]) == pytest.approx(expected, abs=0.0005), m[0]
    assert float(arrays["state/epsilon"]) == pytest.approx(float(over[-1][4]), abs=0.0005)
    assert str(arrays["config/algorithm"]) == "dqn" and str(arrays["config/input"]) == "stack"
    assert float(arrays["config/learning_rate"]) == 0.0005
    assert int(arrays["config/target_every"]) == 500 and int(arrays["config/memory"]) == 2000
    assert npz_names(run.model_dir) == [DQN_CHECKPOINT_NAME, f"training-{sum(steps)}.npz"]
    assert list(run.model_dir.glob("*.tmp")) == []
    saves = [STEP_RE.match(line) for line in run.result.lines]
    assert [(int(m[1]), int(m[2]), m[3]) for m in saves if m] == [
        (steps[0], 1, str(run.checkpoint))
    ]
    assert run.result.lines[-1] == (
        f"saved checkpoint to {run.checkpoint} (step {sum(steps)}, episode 2)"
    )


@pytest.mark.e2e
def test_play_prints_a_line_an_episode_and_the_tutorial_s_summary(two_episode_run, tmp_path):
    before = fingerprint(two_episode_run.model_dir)
    result = run_dqn(["--play", 2, "--model-dir", two_episode_run.model_dir], tmp_path)
    assert result.returncode == 0, result.describe()
    played = [m for m in map(PLAY_RE.match, result.lines) if m]
    assert [int(m[1]) for m in played] == [0, 1]
    for m in played:
        won, lost = int(m[2]), int(m[3])
        assert max(won, lost) == 21 and m[4] == ("won" if won > lost else "lost")
    summary = PLAY_SUMMARY_RE.match(result.lines[-1])
    assert summary, result.describe()
    assert summary[1] == "2" and summary[2] == str(two_episode_run.checkpoint)
    assert int(summary[3]) == sum(m[4] == "won" for m in played) and summary[4] == "2"
    assert int(summary[8]) == sum(int(m[2]) for m in played)
    assert int(summary[9]) == sum(int(m[2]) + int(m[3]) for m in played)
    assert fingerprint(two_episode_run.model_dir) == before, "--play wrote to the run's folder"


def fingerprint(model_dir):
    """Every file of a run folder but its lock, by path, with its bytes' sha256."""
    return {
        str(path.relative_to(model_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


def assert_same_arrays(one, other, context):
    assert sorted(one) == sorted(other), context
    for name in one:
        assert one[name].dtype == other[name].dtype, f"{context}: {name}"
        assert one[name].tobytes() == other[name].tobytes(), f"{context}: {name} differs"


@pytest.mark.e2e
def test_a_resume_goes_on_exactly_as_the_run_in_one_go(
    first_episode_run, two_episode_run, resumed_run
):
    assert two_episode_run.result.returncode == 0, two_episode_run.result.describe()
    assert resumed_run.result.returncode == 0, resumed_run.result.describe()
    first_steps = first_episode_run.steps()
    lines = resumed_run.result.lines
    assert (
        f"resumed from {resumed_run.checkpoint} at step {first_steps}, episode 1 "
        "(exactly: memory, target, optimizer, generators)"
    ) in lines
    assert f"settings changed since the checkpoint: --steps 1 -> {first_steps + 1}" in lines

    assert_same_arrays(resumed_run.arrays(), two_episode_run.arrays(), "the checkpoint")
    steps = two_episode_run.steps()
    assert npz_names(resumed_run.model_dir) == npz_names(two_episode_run.model_dir)
    assert_same_arrays(
        load_checkpoint(resumed_run.model_dir / f"training-{steps}.npz"),
        load_checkpoint(two_episode_run.model_dir / f"training-{steps}.npz"),
        "the training state",
    )

    def timeless(rows):
        return [{k: v for k, v in row.items() if k not in ("seconds", "wall_time")} for row in rows]

    assert timeless(read_progress(resumed_run.model_dir)) == timeless(
        read_progress(two_episode_run.model_dir)
    )


@pytest.mark.e2e
def test_a_resume_with_no_flags_keeps_the_checkpoint_s_settings(resumed_run):
    assert resumed_run.result.returncode == 0, resumed_run.result.describe()
    arrays = resumed_run.arrays()
    assert float(arrays["config/learning_rate"]) == 0.0005
    assert int(arrays["config/target_every"]) == 500
    assert int(arrays["config/memory"]) == 2000 and int(arrays["config/learning_starts"]) == 500
    assert int(arrays["config/save_every"]) == 1 and int(arrays["config/batch_size"]) == 8


@pytest.mark.e2e
def test_a_resume_without_its_training_state_says_not_exact_in_one_line_and_goes_on(
    tmp_path_factory, first_episode_run
):
    """As from git: the weights only. A flag given changes its setting, said in one line."""
    first_steps = first_episode_run.steps()
    training = f"training-{first_steps}.npz"
    run = dqn_run(
        tmp_path_factory,
        "not-exact",
        "--resume",
        "--steps",
        first_steps + 1,
        "--learning-rate",
        0.0002,
        copy_of=first_episode_run,
        prepare=lambda model_dir: (model_dir / training).unlink(),
    )
    assert run.result.returncode == 0, run.result.describe()
    lines = run.result.lines
    not_exact = [line for line in lines if "not exact" in line]
    assert len(not_exact) == 1 and not_exact[0].startswith(
        f"not exact: no {run.model_dir / training} "
    ), not_exact
    assert "the memory starts empty" in not_exact[0]
    assert f"resumed from {run.checkpoint} at step {first_steps}, episode 1" in lines
    assert lines.index(not_exact[0]) < lines.index(
        f"resumed from {run.checkpoint} at step {first_steps}, episode 1"
    )
    assert (
        f"settings changed since the checkpoint: --steps 1 -> {first_steps + 1}, "
        "--learning-rate 0.0005 -> 0.0002"
    ) in lines
    arrays = run.arrays()
    assert float(arrays["config/learning_rate"]) == 0.0002
    assert int(arrays["config/target_every"]) == 500
    assert int(arrays["state/episode"]) == 2
    # The memory started empty: the second episode's updates waited for 500 frames of its own.
    second_steps = int(arrays["state/steps"]) - first_steps
    updates_after = expected_updates([second_steps], 2000, 500, 8, first_step=first_steps)
    first_updates = int(first_episode_run.arrays()["state/updates"])
    assert int(arrays["state/updates"]) == first_updates + updates_after
    assert npz_names(run.model_dir) == [
        DQN_CHECKPOINT_NAME,
        f"training-{arrays['state/steps']}.npz",
    ]


# --- kill -9 around the saves; a fresh start over a run; --restart ---------------------------

# No updates until the memory's 3,000th frame (the third episode), then few: the kills are about
# the files, and each episode ends in a save.
KILL_FLAGS = [
    "--memory",
    3000,
    "--learning-starts",
    3000,
    "--batch-size",
    8,
    "--train-every",
    50,
    "--save-every",
    1,
]

# Runs dqn_atari_pong.py's main() in a fresh interpreter after a patch of the module: argv is
# [script, patch code, flags...]; the patch sees the module as `dqn`.
PATCHED_MAIN = """
import importlib.util, os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
spec = importlib.util.spec_from_file_location("dqn_atari_pong", sys.argv[1])
dqn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dqn)
exec(sys.argv[2])
dqn.main(sys.argv[3:])
"""

# kill -9 of itself as the second file of a save is about to land (the first in place, the
# other not), whichever of the checkpoint and the training state the script writes first.
KILL_BETWEEN_THE_FILES_OF_A_SAVE = """
import signal
replace, landed = os.replace, []
def replace_or_die(source, destination):
    if destination.endswith(".npz"):
        if landed:
            os.kill(os.getpid(), signal.SIGKILL)
        landed.append(destination)
    replace(source, destination)
os.replace = replace_or_die
"""


def run_patched(patch, args, cwd):
    done = subprocess.run(
        [sys.executable, "-c", PATCHED_MAIN, str(DQN_SCRIPT), patch, *map(str, args)],
        cwd=cwd,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,  # a guard against a hang
    )
    return Result(args, done.returncode, done.stdout, done.stderr)


def assert_resumable(dqn, model_dir, context):
    """Every .npz loads whole; the checkpoint is one of this script's, and its own training state
    is there; progress.csv's whole rows number the episodes from 0, at least up to the
    checkpoint's. Returns the checkpoint's steps."""
    for path in model_dir.glob("*.npz"):
        load_checkpoint(path)  # raises on a torn file
    arrays = dqn.read_q_checkpoint(str(model_dir / DQN_CHECKPOINT_NAME), "Pong")
    steps, episode = int(arrays["state/steps"]), int(arrays["state/episode"])
    assert (model_dir / f"training-{steps}.npz").exists(), f"{context}: no training state"
    numbers = [int(row["episode"]) for row in read_progress(model_dir, torn_end=True)]
    assert numbers[:episode] == list(range(episode)), f"{context}: progress.csv {numbers}"
    return steps


def kill_at(run, context):
    """kill -9 now; the script starts no process of its own, and is gone."""
    started, left = run.kill_9()
    assert started == [] and left == [], f"{context}: processes {started}, left {left}"
    assert run.process.returncode == -signal.SIGKILL, f"{context}: it had ended by itself"


@pytest.mark.e2e
def test_kill_9_around_the_saves_leaves_a_run_that_resumes_exactly_and_finishes(dqn, tmp_path):
    model_dir = tmp_path / "m"

    # At a random instant after the second episode: its row in progress.csv, its save.
    run = LiveRun([*KILL_FLAGS, "--model-dir", model_dir], tmp_path, script=DQN_SCRIPT)
    try:
        first_save = int(run.wait_for(STEP_RE)[1])
        run.wait_for(EPISODE_OVER_RE)
        delay = random.uniform(0, 0.3)
        time.sleep(delay)  # a random instant, not a wait for anything
        kill_at(run, f"kill 1 (+{delay:.3f}s)")
    finally:
        run.kill()
    steps = assert_resumable(dqn, model_dir, f"kill 1 (+{delay:.3f}s)")
    assert steps >= first_save

    # Between the two files of the final save (its only save: one episode).
    killed = run_patched(
        KILL_BETWEEN_THE_FILES_OF_A_SAVE,
        ["--resume", "--steps", steps + 1, "--model-dir", model_dir],
        tmp_path,
    )
    assert killed.returncode == -signal.SIGKILL, killed.describe()
    assert (
        f"resumed from {model_dir / DQN_CHECKPOINT_NAME} at step {steps}, episode " in killed.stdout
    )
    assert "(exactly: memory, target, optimizer, generators)" in killed.stdout
    assert len(list(model_dir.glob("*.npz.*.tmp"))) == 1, "the second file, written, not in place"
    assert assert_resumable(dqn, model_dir, "kill 2") == steps

    last = run_dqn(["--resume", "--steps", steps + 1, "--model-dir", model_dir], tmp_path)
    assert last.returncode == 0, last.describe()
    assert (
        f"resumed from {model_dir / DQN_CHECKPOINT_NAME} at step {steps}, episode " in last.stdout
    )
    assert "(exactly: memory, target, optimizer, generators)" in last.stdout
    final = assert_resumable(dqn, model_dir, "the last run")
    assert final > steps
    assert list(model_dir.glob("*.tmp")) == []
    assert npz_names(model_dir) == [DQN_CHECKPOINT_NAME, f"training-{final}.npz"]
    rows = read_progress(model_dir)
    assert [int(row["episode"]) for row in rows] == list(range(len(rows)))
    assert sum(int(row["steps"]) for row in rows) == final


@pytest.mark.e2e
def test_a_fresh_start_in_a_folder_holding_a_run_is_refused_naming_both_ways_on(
    first_episode_run, tmp_path
):
    model_dir = tmp_path / "m"
    shutil.copytree(first_episode_run.model_dir, model_dir)
    before = fingerprint(model_dir)
    result = run_dqn(["--steps", 1, *FLAGS, "--model-dir", model_dir], tmp_path)
    assert_one_line_error(result)
    assert result.stderr_lines[0].startswith(f"{DQN_SCRIPT.name}: error: {model_dir} holds a run")
    assert "--resume continues it" in result.stderr and "--restart starts over" in result.stderr
    assert fingerprint(model_dir) == before


@pytest.mark.e2e
def test_a_restart_replaces_the_old_run_only_at_its_first_save(first_episode_run, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(first_episode_run.model_dir, model_dir)
    before = fingerprint(model_dir)
    flags = ["--restart", "--seed", 2, "--steps", 1, *FLAGS, "--model-dir", model_dir]

    run = LiveRun(flags, tmp_path, script=DQN_SCRIPT)
    try:
        run.wait_for(re.compile(r"^starting over: "))
        run.wait_for(POINT_RE)  # the new run's first episode is under way: nothing saved yet
        run.process.send_signal(signal.SIGSTOP)  # held still while its folder is read
        during = fingerprint(model_dir)
        run.process.send_signal(signal.SIGCONT)
        returncode, stderr = run.finish(timeout=240)
    finally:
        run.kill()
    assert {name: digest for name, digest in during.items() if ".restart" not in name} == before
    assert any(name.startswith(".restart/") for name in during), "the new run is staged apart"

    assert returncode == 0, stderr
    arrays = load_checkpoint(model_dir / DQN_CHECKPOINT_NAME)
    assert int(arrays["config/seed"]) == 2 and int(arrays["state/episode"]) == 1
    old = first_episode_run.arrays()
    assert not np.array_equal(arrays["conv1/filters"], old["conv1/filters"])
    rows = read_progress(model_dir)
    assert [int(row["episode"]) for row in rows] == [0]
    assert int(rows[0]["steps"]) == int(arrays["state/steps"])
    assert npz_names(model_dir) == [DQN_CHECKPOINT_NAME, f"training-{arrays['state/steps']}.npz"]
    assert not (model_dir / ".restart").exists()


# --- Bad input: exit 2, one line, no traceback, nothing written ------------------------------

BAD_FLAGS = {
    "zero-steps": (["--steps", 0], "argument --steps: must be > 0, got 0"),
    "negative-memory": (["--memory", -5], "argument --memory: must be > 0, got -5"),
    "zero-batch-size": (["--batch-size", 0], "argument --batch-size: must be > 0, got 0"),
    "negative-seed": (["--seed", -1], "argument --seed: must be >= 0, got -1"),
    "epsilon-end-above-1": (["--epsilon-end", 1.5], "argument --epsilon-end: must be in [0, 1]"),
    "learning-starts-above-memory": (
        ["--memory", 3000, "--learning-starts", 4000],
        "--learning-starts must be at most --memory",
    ),
    "batch-size-above-learning-starts": (
        ["--learning-starts", 32, "--batch-size", 64],
        "--learning-starts must be at least --batch-size",
    ),
    "memory-below-two-states": (
        ["--memory", 7, "--learning-starts", 4, "--batch-size", 4],
        "--memory must be at least 8 with --input stack",
    ),
    "play-with-a-training-flag": (
        ["--play", 2, "--steps", 100],
        "--steps does nothing with --play",
    ),
    "until-without-plot": (["--until", 5], "--until does nothing with training"),
    "record-gif-without-record": (
        ["--play", 1, "--record-gif", 10],
        "--record-gif does nothing without --record",
    ),
    "unknown-input": (["--input", "colour"], "argument --input: invalid choice: 'colour'"),
    "resume-and-restart": (["--resume", "--restart"], "--resume and --restart are opposites"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", BAD_FLAGS)
def test_bad_flags_exit_2_with_one_line(tmp_path, case):
    flags, message = BAD_FLAGS[case]
    model_dir = tmp_path / "m"
    result = run_dqn([*flags, "--model-dir", model_dir], tmp_path)
    assert_one_line_error(result)
    assert result.stderr_lines[0].startswith(f"{DQN_SCRIPT.name}: error: "), result.stderr
    assert message in result.stderr, result.stderr
    assert not model_dir.exists()


def truncated_checkpoint(run):
    def prepare(model_dir):
        data = run.checkpoint.read_bytes()
        (model_dir / DQN_CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])

    return prepare


def tutorial_checkpoint(model_dir):
    shutil.copy(REPO / "models" / "pretrained" / CHECKPOINT_NAME, model_dir / DQN_CHECKPOINT_NAME)


CUT_SHORT = "{checkpoint} is an .npz archive cut short: it cannot be read"
BAD_CHECKPOINTS = {
    "play-without-checkpoint": (["--play", 1], None, "no checkpoint at {checkpoint}"),
    "resume-without-checkpoint": (["--resume"], None, "no checkpoint at {checkpoint}"),
    "resume-truncated-checkpoint": (["--resume"], "truncated", CUT_SHORT),
    "play-tutorial-checkpoint": (
        ["--play", 1],
        tutorial_checkpoint,
        "{checkpoint} is not a checkpoint of this script (the tutorial's policies play with "
        "tutorial_atari_pong.py --play)",
    ),
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_a_missing_or_bad_checkpoint_exits_2_with_one_line(first_episode_run, tmp_path, case):
    flags, prepare, message = BAD_CHECKPOINTS[case]
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    if prepare == "truncated":
        prepare = truncated_checkpoint(first_episode_run)
    if prepare is not None:
        prepare(model_dir)
    before = fingerprint(model_dir)
    result = run_dqn([*flags, "--model-dir", model_dir], tmp_path)
    assert_one_line_error(result)
    checkpoint = model_dir / DQN_CHECKPOINT_NAME
    assert result.stderr_lines[0] == (
        f"{DQN_SCRIPT.name}: error: {message.format(checkpoint=checkpoint)}"
    )
    assert fingerprint(model_dir) == before
    assert sorted(path.name for path in model_dir.iterdir()) == sorted(before)


def changed(**changes):
    """A change to a checkpoint's arrays: names with a value are set, those with None removed."""

    def change(arrays):
        for name, value in changes.items():
            if value is None:
                del arrays[name]
            else:
                arrays[name] = np.asarray(value)

    return change


DAMAGED_CHECKPOINTS = {
    "other-game": (
        changed(**{"config/game": "Breakout"}),
        "plays Breakout, this run has --game Pong",
    ),
    "other-format": (changed(**{"state/format": 2}), "has checkpoint format 2; this script reads"),
    "no-algorithm": (changed(**{"config/algorithm": None}), "is not a checkpoint of this script"),
    "no-input": (changed(**{"config/input": None}), "is not a checkpoint of this script ("),
    "unknown-input": (changed(**{"config/input": "colour"}), "(bad settings)"),
    "negative-steps": (changed(**{"state/steps": -1}), "(bad settings)"),
    "missing-weight": (
        changed(**{"hidden/weights": None}),
        "holds no hidden/weights of shape (2592, 256)",
    ),
    "wrong-shape": (
        changed(**{"output/biases": np.zeros(6, np.float32)}),
        "holds no output/biases of shape (3,)",
    ),
    "non-finite-weight": (
        changed(**{"output/biases": np.array([0, np.nan, 0], np.float32)}),
        "holds non-finite values in output/biases: unusable",
    ),
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", DAMAGED_CHECKPOINTS)
def test_read_q_checkpoint_refuses_a_checkpoint_damaged_inside_saying_what_is_wrong(
    dqn, first_episode_run, tmp_path, case
):
    change, message = DAMAGED_CHECKPOINTS[case]
    arrays = first_episode_run.arrays()
    dqn.read_q_checkpoint(str(first_episode_run.checkpoint), "Pong")  # undamaged: read
    change(arrays)
    path = tmp_path / DQN_CHECKPOINT_NAME
    np.savez(path, **arrays)
    with pytest.raises(dqn.pong.CheckpointError) as refused:
        dqn.read_q_checkpoint(str(path), "Pong")
    assert str(refused.value).startswith(str(path)) and message in str(refused.value)


# --- The settings a resume keeps are checked against each other -----------------------------


@pytest.mark.e2e
def test_a_resume_may_shrink_the_memory_to_no_less_than_its_own_learning_starts(
    first_episode_run, tmp_path
):
    model_dir = tmp_path / "m"
    shutil.copytree(first_episode_run.model_dir, model_dir)
    result = run_dqn(
        ["--resume", "--memory", 1000, "--steps", 1, "--model-dir", model_dir], tmp_path
    )
    assert result.returncode == 0, result.describe()
    assert "settings changed since the checkpoint: --memory 2000 -> 1000" in result.lines


@pytest.mark.e2e
def test_a_resume_refuses_learning_starts_above_the_checkpoint_s_memory(
    first_episode_run, tmp_path
):
    model_dir = tmp_path / "m"
    shutil.copytree(first_episode_run.model_dir, model_dir)
    before = fingerprint(model_dir)
    result = run_dqn(
        ["--resume", "--learning-starts", 2500, "--steps", 1, "--model-dir", model_dir], tmp_path
    )
    assert_one_line_error(result)
    assert "--learning-starts must be at most --memory" in result.stderr
    assert fingerprint(model_dir) == before


def test_another_game_keeps_its_run_in_its_own_folder_unless_told_where(dqn):
    args, _ = dqn.parse_args(["--game", "Breakout"])
    assert args.model_dir == os.path.join("models", "dqn", "breakout")
    assert dqn.checkpoint_path(args) == os.path.join(
        "models", "dqn", "breakout", "dqn_breakout.npz"
    )
    args, _ = dqn.parse_args(["--game", "Breakout", "--model-dir", "elsewhere"])
    assert dqn.checkpoint_path(args) == os.path.join("elsewhere", "dqn_breakout.npz")
    args, _ = dqn.parse_args([])
    assert dqn.checkpoint_path(args) == os.path.join("models", "dqn", "dqn_pong.npz")
