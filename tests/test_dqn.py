"""dqn_atari_pong.py (issue 56): its replay memory, its Q-learning target and loss, its epsilon
schedule, and the script run as a user runs it: a short run on the real Pong-v0, an exact resume,
kill -9 around its saves, and bad input refused in one line."""

import copy
import dataclasses
import importlib.util
import sys
import types
from unittest import mock

import numpy as np
import pytest
from helpers import DQN_SCRIPT

# --- The script as a module ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dqn():
    """dqn_atari_pong.py as a module, without TensorFlow (which it imports in import_libraries):
    enough for the replay memory and the epsilon schedule."""
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
    online = dqn.build_q_network(input_name, 3, 11, name=f"test_online_{input_name}")
    target = dqn.build_q_network(input_name, 3, 23, name=f"test_target_{input_name}")
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
