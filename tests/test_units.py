"""Unit tests of the script's functions, against hand-computed values."""

import math
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorlayer as tl
from helpers import (
    PROGRESS_FIELDS,
    REPO,
    load_checkpoint,
    new_policy,
    rewards_episode,
    standardised,
)

SCREEN_SHAPE = (210, 160)  # the emulator's screen, one palette index per pixel
BACKGROUND = 34  # the playing field's colour (red 144 in RGB)
LOWER_BACKGROUND = 228  # the other background colour (red 109)
PADDLE = 200


def blank_screen(value=BACKGROUND):
    return np.full(SCREEN_SHAPE, value, np.uint8)


# --- prepro ------------------------------------------------------------------


def test_prepro_returns_6400_booleans(pong):
    out = pong.prepro(blank_screen())
    assert out.shape == (6400,)
    assert out.dtype == bool


@pytest.mark.parametrize("background", [BACKGROUND, LOWER_BACKGROUND])
def test_prepro_erases_both_background_colours(pong, background):
    assert not pong.prepro(blank_screen(background)).any()


def test_prepro_marks_kept_pixels_at_row_major_index(pong):
    screen = blank_screen()
    expected = np.zeros(6400, bool)
    for k, j in [(0, 0), (0, 79), (5, 7), (40, 40), (79, 0), (79, 79)]:
        screen[35 + 2 * k, 2 * j] = PADDLE
        expected[k * 80 + j] = True
    np.testing.assert_array_equal(pong.prepro(screen), expected)


def test_prepro_marks_every_other_colour(pong):
    screen = blank_screen()
    for j, value in enumerate([0, 14, 33, 35, 56, 138, 200, 210, 227, 250]):
        screen[35, 2 * j] = value
    out = pong.prepro(screen)
    assert out[:10].all() and out.sum() == 10


def test_prepro_ignores_odd_rows_odd_columns_and_outside_the_crop(pong):
    screen = blank_screen()
    screen[36, 0] = PADDLE  # odd row inside the crop (35 + 1)
    screen[35, 1] = PADDLE  # odd column
    screen[0:35, :] = PADDLE  # score area above the field
    screen[34, :] = PADDLE
    screen[195:, :] = PADDLE  # below the field
    assert not pong.prepro(screen).any()


def test_prepro_last_kept_row_is_193(pong):
    screen = blank_screen()
    screen[193, 0] = PADDLE
    assert np.flatnonzero(pong.prepro(screen)).tolist() == [79 * 80]


# --- difference frames ---------------------------------------------------------


def test_diff_frame_is_current_minus_previous_at_the_changed_pixels(pong):
    previous = np.zeros(6400, bool)
    current = np.zeros(6400, bool)
    previous[[1, 2, 6399]] = True
    current[[0, 1, 4, 6398]] = True
    indices, signs = pong.diff_frame(current, previous)
    assert indices.dtype == np.int16 and signs.dtype == np.int8
    assert indices.tolist() == [0, 2, 4, 6398, 6399]
    assert signs.tolist() == [1, -1, 1, 1, -1]
    dense = current.astype(np.int8) - previous.astype(np.int8)
    np.testing.assert_array_equal(dense[indices], signs)
    assert np.count_nonzero(dense) == len(indices)


def test_diff_frame_of_two_equal_frames_is_empty(pong):
    frame = np.zeros(6400, bool)
    frame[::7] = True
    indices, signs = pong.diff_frame(
        frame, frame.copy()
    )  # as on an episode's first step: no motion yet
    assert indices.dtype == np.int16 and signs.dtype == np.int8
    assert len(indices) == 0 and len(signs) == 0


# --- the policy -------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy(pong):
    return new_policy(pong, 200, 1)


def test_policy_layers_and_parameter_shapes(policy):
    assert [layer.name for layer in policy.all_layers] == ["input", "hidden", "output"]
    assert [w.name for w in policy.trainable_weights] == [
        "hidden/weights:0",
        "hidden/biases:0",
        "output/weights:0",
        "output/biases:0",
    ]
    assert [tuple(w.shape) for w in policy.trainable_weights] == [
        (6400, 200),
        (200,),
        (200, 3),
        (3,),
    ]
    assert sum(int(np.prod(w.shape)) for w in policy.trainable_weights) == 1280803


def test_policy_biases_start_at_zero(policy):
    assert not policy.get_layer("hidden").b.numpy().any()
    assert not policy.get_layer("output").b.numpy().any()


@pytest.mark.parametrize("layer, fan_in, fan_out", [("hidden", 6400, 200), ("output", 200, 3)])
def test_policy_weights_are_glorot_uniform(policy, layer, fan_in, fan_out):
    weights = policy.get_layer(layer).W.numpy()
    limit = math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(weights).max() <= limit
    assert weights.std() == pytest.approx(
        math.sqrt(2 / (fan_in + fan_out)), rel=0.05
    )  # 0.0174, 0.0993
    assert abs(weights.mean()) < 0.1 * weights.std()


def test_policy_weights_depend_on_the_seed(pong, policy):
    again = new_policy(pong, 200, 1)
    other = new_policy(pong, 200, 2)
    np.testing.assert_array_equal(
        again.get_layer("hidden").W.numpy(), policy.get_layer("hidden").W.numpy()
    )
    assert not np.array_equal(
        other.get_layer("hidden").W.numpy(), policy.get_layer("hidden").W.numpy()
    )


def random_sparse_frame(rng, count=20, size=6400):
    indices = np.sort(rng.choice(size, count, replace=False)).astype(np.int16)
    signs = rng.choice(np.array([-1, 1], np.int8), count)
    return indices, signs


def dense(indices, signs, size=6400):
    frame = np.zeros(size, np.float32)
    frame[indices] = signs
    return frame


def test_action_probabilities_equal_softmax_of_the_tensorlayer_model(pong):
    model = new_policy(pong, 200, 3)
    rng = np.random.default_rng(0)
    # non-zero biases, so that the numpy path must add them too
    model.get_layer("hidden").b.assign(rng.normal(0, 0.05, 200).astype(np.float32))
    model.get_layer("output").b.assign(np.array([0.3, -0.2, 0.1], np.float32))
    weights = [w.numpy() for w in model.trainable_weights]
    frames = [random_sparse_frame(rng, count) for count in (1, 20, 20, 60, 300)]
    frames.append((np.zeros(0, np.int16), np.zeros(0, np.int8)))  # nothing moved
    for indices, signs in frames:
        expected = tf.nn.softmax(model(dense(indices, signs)[None])).numpy()[0]
        got = pong.action_probabilities(weights, indices, signs)
        assert got.shape == (3,)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        assert got.sum() == pytest.approx(1.0, abs=1e-6)


def test_action_probabilities_of_an_empty_frame_with_zero_biases_are_uniform(pong, policy):
    weights = [w.numpy() for w in policy.trainable_weights]
    probs = pong.action_probabilities(weights, np.zeros(0, np.int16), np.zeros(0, np.int8))
    np.testing.assert_allclose(probs, [1 / 3] * 3, rtol=1e-6)


def test_importing_the_script_gives_numpy_one_thread_unless_the_user_chose():
    code = "import os, tutorial_atari_pong, numpy; print(os.environ['OPENBLAS_NUM_THREADS'])"
    for chosen, expected in ((None, "1"), ("2", "2")):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        if chosen:
            env["OPENBLAS_NUM_THREADS"] = chosen
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected


# --- sampling -------------------------------------------------------------------


@pytest.mark.parametrize(
    "probs, label", [((1, 0, 0), 0), ((0, 1, 0), 1), ((0, 0, 1), 2), ((0, 0, 0, 1), 3)]
)
def test_sample_action_with_a_certain_policy_always_draws_that_action(pong, probs, label):
    rng = np.random.default_rng(0)
    assert {pong.sample_action(np.array(probs, np.float32), rng) for _ in range(2000)} == {label}


def test_sample_action_frequencies_follow_the_probabilities(pong):
    rng = np.random.default_rng(123)
    probs = np.array([0.2, 0.5, 0.3])
    draws = np.array([pong.sample_action(probs, rng) for _ in range(20000)])
    assert set(np.unique(draws)) == {0, 1, 2}
    frequencies = [np.mean(draws == label) for label in (0, 1, 2)]
    np.testing.assert_allclose(frequencies, probs, atol=0.02)
    six = np.array([0.1, 0.05, 0.3, 0.15, 0.25, 0.15])  # a game with six actions
    draws = np.array([pong.sample_action(six, rng) for _ in range(20000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=6) / len(draws), six, atol=0.02)


def test_sample_action_is_reproducible_with_a_seeded_generator(pong):
    probs = np.array([0.3, 0.3, 0.4])

    def draws():
        rng = np.random.default_rng(7)
        return [pong.sample_action(probs, rng) for _ in range(50)]

    first = draws()
    assert first == draws()
    assert len(set(first)) == 3


# --- returns -----------------------------------------------------------------------


def one_episode_returns(pong, rewards, gamma):
    """batch_returns of a batch of one episode with these rewards."""
    return pong.batch_returns([rewards_episode(pong, rewards)], gamma)


def test_returns_are_discounted_back_from_each_point_resetting_at_every_point(pong):
    np.testing.assert_allclose(
        one_episode_returns(pong, [0, 0, 1, 0, -1], 0.99),
        standardised([0.9801, 0.99, 1, -0.99, -1]),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        one_episode_returns(pong, [0, 0, -1, 0, 1], 0.5),
        standardised([-0.25, -0.5, -1, 0.5, 1]),
        rtol=1e-5,
    )


def test_returns_of_the_int8_rewards_of_an_episode_are_float32(pong):
    returns = one_episode_returns(pong, [0, -1, 0, 1], 0.99)
    assert returns.dtype == np.float32
    np.testing.assert_allclose(returns, standardised([-0.99, -1, 0.99, 1]), rtol=1e-5)


def test_returns_have_mean_0_and_std_1_over_the_batch(pong):
    rewards = np.zeros(1000, np.int8)
    rewards[9::10] = np.random.default_rng(0).choice([-1, 1], 100)
    out = one_episode_returns(pong, rewards, 0.99)
    assert out.mean() == pytest.approx(0, abs=1e-5)
    assert out.std() == pytest.approx(1, abs=1e-5)


def test_all_equal_returns_become_zeros_not_nan(pong):
    out = one_episode_returns(pong, [0, 0, 1], 1.0)  # undiscounted: 1, 1, 1
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out, np.zeros(3))


# --- the update ---------------------------------------------------------------------


def make_episode(pong, number, rng, steps, point_every=6, size=6400):
    """An Episode of random sparse frames, labels and a point every few steps."""
    nnz, indices, signs = [], [], []
    for step in range(steps):
        count = (
            0 if step == 0 else int(rng.integers(0, 30))
        )  # the first frame of an episode is empty
        i, s = random_sparse_frame(rng, count, size)
        nnz.append(count)
        indices.append(i)
        signs.append(s)
    rewards = np.zeros(steps, np.int8)
    rewards[point_every - 1 :: point_every] = rng.choice(
        np.array([-1, 1], np.int8), len(rewards[point_every - 1 :: point_every])
    )
    return pong.Episode(
        number,
        np.array(nnz, np.int16),
        np.concatenate(indices),
        np.concatenate(signs),
        rng.integers(0, 3, steps).astype(np.int8),
        rewards,
        rewards != 0,
    )


def make_batch(pong, seed=0):
    rng = np.random.default_rng(seed)
    return [
        make_episode(pong, 0, rng, 23),
        make_episode(pong, 1, rng, 17, point_every=5),
        make_episode(pong, 2, rng, 9, point_every=9),
    ]


def hand_returns(episodes, gamma):
    """Discounted per episode (resetting at points), standardised over the
    batch's decided steps; the steps after an episode's last point, which a
    cut episode leaves undecided, get 0."""
    all_returns, decided = [], []
    for episode in episodes:
        running, returns = 0.0, []
        for reward in episode.rewards[::-1]:
            running = float(reward) if reward != 0 else running * gamma
            returns.append(running)
        all_returns.extend(returns[::-1])
        last_point = max(np.flatnonzero(episode.rewards), default=-1)
        decided.extend(step <= last_point for step in range(episode.steps))
    returns, decided = np.array(all_returns), np.array(decided)
    standardised = np.zeros_like(returns)
    standardised[decided] = (returns[decided] - returns[decided].mean()) / returns[decided].std()
    return standardised.astype(np.float32)


def dense_gradients(model, episodes, gamma):
    """The tutorial's loss on the dense frames, differentiated by a GradientTape."""
    frames = np.stack([dense(i, s) for e in episodes for i, s in split_frames(e)])
    labels = np.concatenate([e.labels for e in episodes]).astype(np.int32)
    with tf.GradientTape() as tape:
        loss = tl.rein.cross_entropy_reward_loss(
            model(frames), labels, hand_returns(episodes, gamma)
        )
    return [g.numpy() for g in tape.gradient(loss, model.trainable_weights)]


def split_frames(episode):
    ends = np.cumsum(episode.nnz)
    starts = ends - episode.nnz
    return [(episode.indices[a:b], episode.signs[a:b]) for a, b in zip(starts, ends, strict=True)]


class GradientRecorder:
    """Stands in for the optimizer to capture what update_policy applies."""

    def __init__(self):
        self.calls = []

    def apply_gradients(self, grads_and_vars):
        self.calls.append([(np.array(g), v) for g, v in grads_and_vars])


def fresh_policy(pong, seed=5):
    return new_policy(pong, 200, seed)


def assert_gradients_close(got, expected):
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5 * np.abs(e).max())


@pytest.mark.parametrize("chunk_steps", [1, 7, 16384])
def test_update_policy_applies_the_dense_gradient_whatever_the_chunk_size(pong, chunk_steps):
    model = fresh_policy(pong)
    episodes = make_batch(pong)
    expected = dense_gradients(model, episodes, 0.99)
    recorder = GradientRecorder()
    steps = pong.update_policy(
        model, recorder, pong.make_gradient_fn(model), episodes, 0.99, chunk_steps=chunk_steps
    )
    assert steps == 23 + 17 + 9
    assert len(recorder.calls) == 1, "one optimizer step per batch"
    applied = recorder.calls[0]
    assert [v.name for _, v in applied] == [w.name for w in model.trainable_weights]
    assert_gradients_close([g for g, _ in applied], expected)
    assert np.abs(applied[0][0]).max() > 0  # the comparison is not between two zero gradients


def test_the_sparse_gradient_is_bit_identical_from_call_to_call(pong):
    """A run repeats itself only if its updates do: on a batch the size of a real one
    (~15,000 steps of ~20 changed pixels), TensorFlow's CSR product with adjoint_a=True came
    out different in the last bits on 7 of 8 repeats; the explicit transpose that
    sparse_product uses sums in one order."""
    rng = np.random.default_rng(3)
    n_steps, changed = 15000, 20
    pixels = np.unique(
        np.stack(
            [
                np.repeat(np.arange(n_steps), changed),
                rng.integers(0, pong.image_size**2, n_steps * changed),
            ],
            axis=1,
        ),
        axis=0,
    )
    signs = rng.choice([-1.0, 1.0], len(pixels)).astype(np.float32)
    labels = rng.integers(0, 3, n_steps).astype(np.int32)
    returns = rng.normal(0, 1, n_steps).astype(np.float32)
    gradient_fn = pong.make_gradient_fn(fresh_policy(pong))

    def gradients():
        chunk = (pixels.astype(np.int64), signs, np.int64(n_steps), labels, returns)
        (grads,) = gradient_fn([chunk])
        return [g.numpy() for g in grads]

    first = gradients()
    assert np.abs(first[0]).max() > 0
    for _ in range(8):
        for got, expected in zip(gradients(), first, strict=True):
            np.testing.assert_array_equal(got, expected)


def one_weight(values):
    """A stand-in model with one weight, for the optimizer alone."""
    return types.SimpleNamespace(
        trainable_weights=[tf.Variable(np.array(values, np.float32), name="w")]
    )


def test_make_optimizer_starts_tf1_rmsprop_with_mean_square_1_without_moving_a_weight(pong):
    model = fresh_policy(pong)
    before = [w.numpy().copy() for w in model.trainable_weights]
    optimizer = pong.make_optimizer(model, 1e-4, 0.99)
    assert isinstance(optimizer, tf.compat.v1.train.RMSPropOptimizer)
    for b, w in zip(before, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(w.numpy(), b)
        assert np.all(optimizer.get_slot(w, "rms").numpy() == 1)
        assert np.all(optimizer.get_slot(w, "momentum").numpy() == 0)
    assert set(pong.mean_squares(optimizer, model)) == {
        "mean_square/hidden/weights",
        "mean_square/hidden/biases",
        "mean_square/output/weights",
        "mean_square/output/biases",
    }


def test_first_two_rmsprop_steps_by_hand_with_the_default_settings(pong):
    """TF1 RMSProp: ms = decay * ms + (1 - decay) * g^2, w -= lr * g / sqrt(ms + 1e-10),
    ms starting at 1."""
    args = pong.parse_args([])
    model = one_weight(
        [0.0, 0.0, 0.0]
    )  # at 0 the weights are the steps, to float32's full precision
    optimizer = pong.make_optimizer(model, args.learning_rate, args.decay_rate)
    w = model.trainable_weights[0]
    optimizer.apply_gradients([(tf.constant([0.5, -0.1, 0.0]), w)])
    # ms = 0.99 + 0.01 * [0.25, 0.01, 0] = [0.9925, 0.9901, 0.99]
    np.testing.assert_allclose(
        optimizer.get_slot(w, "rms").numpy(), [0.9925, 0.9901, 0.99], rtol=1e-7
    )
    # steps 1e-4 * [0.5, -0.1, 0] / sqrt(ms + 1e-10)
    first = np.array([-5.0188561e-05, 1.0049871e-05, 0.0])
    np.testing.assert_allclose(w.numpy(), first, rtol=1e-6)
    optimizer.apply_gradients([(tf.constant([-2.0, 0.0, 1e-3]), w)])
    # ms = 0.99 * ms + 0.01 * [4, 0, 1e-6] = [1.022575, 0.980199, 0.98010001]
    np.testing.assert_allclose(
        optimizer.get_slot(w, "rms").numpy(), [1.022575, 0.980199, 0.98010001], rtol=1e-7
    )
    # steps 1e-4 * [-2, 0, 1e-3] / sqrt(ms + 1e-10)
    np.testing.assert_allclose(w.numpy(), first + [1.9778002e-04, 0.0, -1.0101010e-07], rtol=1e-6)


def test_rmsprop_epsilon_is_tf1s_1e_10(pong):
    """Visible only where the mean square is tiny: with it at 0 and g = 1e-6,
    the step is lr * g / sqrt(0.01 g^2 + eps) = 1e-5 for eps = 1e-10 (3.2e-7 for Keras' 1e-7)."""
    model = one_weight([0.0])
    optimizer = pong.make_optimizer(model, 1e-4, 0.99)
    w = model.trainable_weights[0]
    optimizer.get_slot(w, "rms").assign([0.0])
    optimizer.apply_gradients([(tf.constant([1e-6]), w)])
    np.testing.assert_allclose(
        w.numpy(), [-1e-4 * 1e-6 / math.sqrt(0.01 * 1e-12 + 1e-10)], rtol=1e-5
    )


def tf1_rmsprop(weights, mean_squares, gradients, lr=1e-4, decay=0.99):
    """One step of the tutorial's optimizer in float64 numpy."""
    mean_squares = [
        decay * m + (1 - decay) * g.astype(np.float64) ** 2
        for m, g in zip(mean_squares, gradients, strict=True)
    ]
    weights = [
        w - lr * g / np.sqrt(m + 1e-10)
        for w, g, m in zip(weights, gradients, mean_squares, strict=True)
    ]
    return weights, mean_squares


def test_update_policy_takes_two_tf1_rmsprop_steps_on_the_dense_gradients(pong):
    """The real update path (chunked sparse gradient, then the optimizer)
    against the dense tape gradient and the formula, for two batches."""
    model, reference = fresh_policy(pong), fresh_policy(pong)
    optimizer = pong.make_optimizer(model, 1e-4, 0.99)
    gradient_fn = pong.make_gradient_fn(model)
    weights = [w.numpy().astype(np.float64) for w in reference.trainable_weights]
    squares = [np.ones_like(w) for w in weights]
    for seed in (1, 2):
        episodes = make_batch(pong, seed=seed)
        for r, w in zip(reference.trainable_weights, weights, strict=True):
            r.assign(w.astype(np.float32))
        gradients = dense_gradients(reference, episodes, 0.99)
        previous = [w.numpy() for w in model.trainable_weights]
        pong.update_policy(model, optimizer, gradient_fn, episodes, 0.99, chunk_steps=7)
        weights, squares = tf1_rmsprop(weights, squares, gradients)
        for w, p, expected, ms, name in zip(
            model.trainable_weights,
            previous,
            weights,
            squares,
            pong.mean_squares(optimizer, model),
            strict=True,
        ):
            step, expected_step = w.numpy() - p, expected - p
            assert np.abs(expected_step).max() > 1e-6, name  # the weights really moved
            # to float32 rounding: of the weight (its spacing), and of the gradient, whose sums run
            # in another order sparsely than densely (1e-4 of the step, 1e-5 of the largest step)
            error = np.abs(step - expected_step)
            bound = (
                1e-4 * np.abs(expected_step)
                + 1e-5 * np.abs(expected_step).max()
                + 2 * np.spacing(np.abs(p))
            )
            assert np.all(error <= bound), (name, float((error / bound).max()))
            np.testing.assert_allclose(
                pong.mean_squares(optimizer, model)[name].numpy(), ms, rtol=1e-5, err_msg=name
            )


# --- checkpoints -------------------------------------------------------------------


@pytest.fixture
def trained(pong):
    """A model and optimizer after one real update, so every slot is non-zero."""
    model = fresh_policy(pong, seed=11)
    optimizer = pong.make_optimizer(model, 1e-4, 0.99)
    pong.update_policy(
        model, optimizer, pong.make_gradient_fn(model), make_batch(pong, seed=2), 0.99
    )
    return model, optimizer


def assert_same_episodes(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.number == e.number
        for name in ("nnz", "indices", "signs", "labels", "rewards"):
            np.testing.assert_array_equal(getattr(g, name), getattr(e, name), err_msg=name)
            assert getattr(g, name).dtype == getattr(e, name).dtype, name


def test_checkpoint_round_trip_restores_everything(pong, trained, tmp_path):
    model, optimizer = trained
    pending = make_batch(pong, seed=3)[:2]
    pending[0].number, pending[1].number = 20, 21
    path = str(tmp_path / "ck.npz")
    pong.save_checkpoint(path, model, optimizer, 22, -20.25, pending)

    other = fresh_policy(pong, seed=12)
    other_optimizer = pong.make_optimizer(other, 1e-4, 0.99)
    episode, running_mean, restored_pending = pong.restore(
        pong.read_checkpoint(path, 200), other, other_optimizer
    )

    assert episode == 22
    assert running_mean == -20.25
    for w, o in zip(model.trainable_weights, other.trainable_weights, strict=True):
        np.testing.assert_array_equal(o.numpy(), w.numpy())
    saved, restored = pong.mean_squares(optimizer, model), pong.mean_squares(other_optimizer, other)
    assert (
        set(saved)
        == set(restored)
        == {
            "mean_square/hidden/weights",
            "mean_square/hidden/biases",
            "mean_square/output/weights",
            "mean_square/output/biases",
        }
    )
    for name in saved:
        assert np.any(saved[name].numpy() != 1), name  # moved away from the start by the update
        np.testing.assert_array_equal(restored[name].numpy(), saved[name].numpy(), err_msg=name)
    assert_same_episodes(restored_pending, pending)


def test_checkpoint_round_trip_without_running_mean_or_pending(pong, trained, tmp_path):
    model, optimizer = trained
    path = str(tmp_path / "ck.npz")
    pong.save_checkpoint(path, model, optimizer, 0, None, [])
    other = fresh_policy(pong)
    other_optimizer = pong.make_optimizer(other, 1e-4, 0.99)
    episode, running_mean, pending = pong.restore(
        pong.read_checkpoint(path, 200), other, other_optimizer
    )
    assert (episode, running_mean, pending) == (0, None, [])


def test_a_resumed_run_applies_the_same_next_update_as_one_that_never_stopped(pong, tmp_path):
    steady = fresh_policy(pong, seed=13)
    steady_optimizer = pong.make_optimizer(steady, 1e-4, 0.99)
    steady_gradient = pong.make_gradient_fn(steady)
    pong.update_policy(steady, steady_optimizer, steady_gradient, make_batch(pong, seed=4), 0.99)
    path = str(tmp_path / "ck.npz")
    pong.save_checkpoint(path, steady, steady_optimizer, 10, -20.5, [])

    resumed = fresh_policy(pong, seed=14)
    resumed_optimizer = pong.make_optimizer(resumed, 1e-4, 0.99)
    pong.restore(pong.read_checkpoint(path, 200), resumed, resumed_optimizer)
    next_batch = make_batch(pong, seed=5)
    pong.update_policy(steady, steady_optimizer, steady_gradient, next_batch, 0.99)
    pong.update_policy(resumed, resumed_optimizer, pong.make_gradient_fn(resumed), next_batch, 0.99)
    for s, r in zip(steady.trainable_weights, resumed.trainable_weights, strict=True):
        np.testing.assert_array_equal(r.numpy(), s.numpy(), err_msg=s.name)
    for name, square in pong.mean_squares(steady_optimizer, steady).items():
        np.testing.assert_array_equal(
            pong.mean_squares(resumed_optimizer, resumed)[name].numpy(),
            square.numpy(),
            err_msg=name,
        )


def as_format_1(arrays):
    """A checkpoint as the Keras-RMSprop script wrote it: format 1, its mean
    squares under rmsprop/..., and Keras' step count."""
    old = {name: value for name, value in arrays.items() if not name.startswith("mean_square/")}
    old.update(
        {
            "rmsprop/" + name[len("mean_square/") :]: value
            for name, value in arrays.items()
            if name.startswith("mean_square/")
        }
    )
    old.update({"state/format": np.int64(1), "rmsprop/iterations": np.int64(3)})
    return old


@pytest.mark.parametrize("found", [1, 3])  # 1: Keras RMSprop's, no longer read; 3: none yet
def test_read_checkpoint_refuses_an_unknown_format(pong, trained, tmp_path, found):
    model, optimizer = trained
    path = tmp_path / "ck.npz"
    pong.save_checkpoint(str(path), model, optimizer, 1, 0.0, [])
    arrays = load_checkpoint(path)
    np.savez(
        path, **(as_format_1(arrays) if found == 1 else {**arrays, "state/format": np.int64(found)})
    )
    assert (
        expect_checkpoint_error(pong, path)
        == f"{path} has checkpoint format {found}; this script reads format 2 only"
    )


def test_checkpoint_is_plain_numpy_without_pickle(pong, trained, tmp_path):
    model, optimizer = trained
    path = tmp_path / "ck.npz"
    pong.save_checkpoint(str(path), model, optimizer, 4, 1.5, make_batch(pong)[:1])
    arrays = load_checkpoint(path)
    assert all(a.dtype != object for a in arrays.values())
    np.testing.assert_array_equal(arrays["hidden/weights"], model.get_layer("hidden").W.numpy())
    assert int(arrays["state/episode"]) == 4
    assert float(arrays["state/running_mean"]) == 1.5
    assert (int(arrays["config/input_size"]), int(arrays["config/hidden"])) == (6400, 200)


def test_checkpoint_save_creates_the_directory(pong, trained, tmp_path):
    model, optimizer = trained
    path = tmp_path / "a" / "b" / "ck.npz"
    pong.save_checkpoint(str(path), model, optimizer, 1, 0.0, [])
    assert int(load_checkpoint(path)["state/episode"]) == 1


def crash_during_savez(*args, **kwargs):
    args[0].write(b"PK\x03\x04 half a zip")
    raise OSError("disk full")


def crash_on_replace(*args, **kwargs):
    raise OSError("power cut")


@pytest.mark.parametrize(
    "target, crash", [("np.savez", crash_during_savez), ("os.replace", crash_on_replace)]
)
def test_failed_save_leaves_the_previous_checkpoint_intact(
    pong, trained, tmp_path, monkeypatch, target, crash
):
    model, optimizer = trained
    path = tmp_path / "ck.npz"
    pong.save_checkpoint(str(path), model, optimizer, 1, -21.0, [])
    before = path.read_bytes()
    saved_biases = model.get_layer("output").b.numpy()

    module_name, function = target.split(".")
    monkeypatch.setattr(getattr(pong, module_name), function, crash)
    model.get_layer("output").b.assign([1.0, 2.0, 3.0])
    with pytest.raises(OSError) as error:
        pong.save_checkpoint(str(path), model, optimizer, 2, -20.0, make_batch(pong)[:1])
    monkeypatch.undo()
    assert error.value.filename == str(path), "the error names the checkpoint it could not save"

    assert path.read_bytes() == before
    arrays = pong.read_checkpoint(str(path), 200)
    assert int(arrays["state/episode"]) == 1
    np.testing.assert_array_equal(arrays["output/biases"], saved_biases)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"], (
        "the half-written file is removed"
    )


def test_temporary_files_are_named_per_process(pong, trained, tmp_path, monkeypatch):
    """The checkpoint's and progress.csv's temporary files: two processes
    writing in one folder can never collide."""
    replaced, replace = [], os.replace
    monkeypatch.setattr(
        os,
        "replace",
        lambda source, target: (replaced.append((source, target)), replace(source, target)),
    )
    model, optimizer = trained
    pong.save_checkpoint(str(tmp_path / "ck.npz"), model, optimizer, 1, -21.0, [])
    pong.ProgressLog(str(tmp_path), 0).close()
    monkeypatch.undo()
    assert replaced == [
        (str(tmp_path / f"ck.npz.{os.getpid()}.tmp"), str(tmp_path / "ck.npz")),
        (str(tmp_path / f"progress.csv.{os.getpid()}.tmp"), str(tmp_path / "progress.csv")),
    ]


def expect_checkpoint_error(pong, path, hidden=200):
    with pytest.raises(pong.CheckpointError) as error:
        pong.read_checkpoint(str(path), hidden)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_read_checkpoint_missing_file(pong, tmp_path):
    expect_checkpoint_error(pong, tmp_path / "nothing.npz")


def test_read_checkpoint_random_bytes(pong, tmp_path):
    path = tmp_path / "ck.npz"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    expect_checkpoint_error(pong, path)


def test_read_checkpoint_empty_file(pong, tmp_path):
    path = tmp_path / "ck.npz"
    path.write_bytes(b"")
    expect_checkpoint_error(pong, path)


def test_read_checkpoint_truncated_file(pong, trained, tmp_path):
    model, optimizer = trained
    path = tmp_path / "ck.npz"
    pong.save_checkpoint(str(path), model, optimizer, 1, 0.0, [])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = expect_checkpoint_error(pong, path)
    assert message == f"{path} is an .npz archive cut short: it cannot be read"


def test_a_fresh_start_over_a_cut_short_checkpoint_advises_only_restart(
    pong, trained, tmp_path, capsys
):
    """--resume cannot continue a checkpoint that cannot be read: the refusal of a fresh start
    says why instead of advising it."""
    model, optimizer = trained
    path = tmp_path / "m" / "model_pong.npz"
    pong.save_checkpoint(str(path), model, optimizer, 1, 0.0, [])
    path.write_bytes(path.read_bytes()[:1000])
    args = pong.parse_args(["--episodes", "1", "--envs", "1", "--model-dir", str(path.parent)])
    with pytest.raises(SystemExit) as exit_info:
        pong.claim_folder(args, str(path))
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"--resume cannot continue it ({path} is an .npz archive cut short" in line
    assert "--restart starts over" in line and "--resume continues" not in line


def test_a_text_file_named_npz_is_not_a_checkpoint_this_script_wrote(pong, tmp_path):
    path = tmp_path / "ck.npz"
    path.write_text("these are my notes, not weights\n")
    message = expect_checkpoint_error(pong, path)
    assert message == f"{path} is not a checkpoint this script wrote (not an .npz archive)"


def test_an_npz_of_python_objects_is_refused_without_suggesting_to_unpickle_it(pong, tmp_path):
    path = tmp_path / "ck.npz"
    np.savez(path, **{"state/format": np.array([{"a": 1}], dtype=object)})
    message = expect_checkpoint_error(pong, path)
    assert message == f"{path} is not a checkpoint this script wrote (it holds Python objects)"
    assert "pickle" not in message


def test_read_checkpoint_of_another_program(pong, tmp_path):
    path = tmp_path / "ck.npz"
    np.savez(path, something=np.zeros(3))
    expect_checkpoint_error(pong, path)


def test_read_checkpoint_with_other_hidden_size(pong, trained, tmp_path):
    model, optimizer = trained
    path = tmp_path / "ck.npz"
    pong.save_checkpoint(str(path), model, optimizer, 1, 0.0, [])
    message = expect_checkpoint_error(pong, path, hidden=100)
    assert "200" in message and "100" in message


# --- the command line ------------------------------------------------------------


def test_parse_args_defaults_come_from_the_top_of_the_script(pong):
    args = pong.parse_args([])
    assert (pong.render, pong.resume, pong.batch_size, pong.learning_rate) == (
        False,
        False,
        10,
        1e-4,
    )
    assert (pong.gamma, pong.decay_rate, pong.hidden, pong.model_dir) == (0.99, 0.99, 200, "models")
    assert args.render is False and args.resume is False
    assert args.batch_size == 10
    assert args.learning_rate == 1e-4
    assert args.gamma == 0.99
    assert args.decay_rate == 0.99
    assert args.hidden == 200
    assert args.model_dir == "models"
    assert args.seed == 1
    assert args.save_every == 100
    assert args.record_every == 100 and args.record_scale == 3 and args.record_gif is None
    assert (
        args.episodes is None and args.play is None and args.record is None and args.model is None
    )
    assert args.plot is None
    assert 1 <= args.envs <= 10


def test_parse_args_follows_edits_of_the_defaults_block(pong, monkeypatch):
    monkeypatch.setattr(pong, "batch_size", 3)
    monkeypatch.setattr(pong, "learning_rate", 5e-3)
    monkeypatch.setattr(pong, "model_dir", "elsewhere")
    args = pong.parse_args([])
    assert (args.batch_size, args.learning_rate, args.model_dir) == (3, 5e-3, "elsewhere")


def test_parse_args_flags(pong):
    args = pong.parse_args(
        [
            "--resume",
            "--episodes",
            "3",
            "--batch-size",
            "4",
            "--learning-rate",
            "0.001",
            "--gamma",
            "0.9",
            "--decay-rate",
            "0.5",
            "--hidden",
            "50",
            "--seed",
            "7",
            "--model-dir",
            "x",
            "--save-every",
            "2",
            "--envs",
            "3",
        ]
    )
    assert (
        args.resume,
        args.episodes,
        args.batch_size,
        args.learning_rate,
        args.gamma,
        args.decay_rate,
        args.hidden,
        args.seed,
        args.model_dir,
        args.save_every,
        args.envs,
    ) == (True, 3, 4, 0.001, 0.9, 0.5, 50, 7, "x", 2, 3)


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch-size", "-1"],
        ["--batch-size", "0"],
        ["--batch-size", "abc"],
        ["--learning-rate", "0"],
        ["--learning-rate", "-0.1"],
        ["--gamma", "1.5"],
        ["--gamma", "0"],
        ["--decay-rate", "1"],
        ["--hidden", "0"],
        ["--episodes", "0"],
        ["--envs", "0"],
        ["--save-every", "0"],
        ["--record-every", "0"],
        ["--play", "0"],
        ["--play", "1", "--plot"],
        ["--unknown-flag"],
        ["--record-scale", "0"],
        ["--record-gif", "0", "--record", "v"],
    ],
)
def test_parse_args_rejects_bad_values_with_status_2(pong, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pong.parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_parse_args_plot_takes_any_number_of_folders(pong):
    assert pong.parse_args(["--plot"]).plot == []
    assert pong.parse_args(["--plot", "runs/a", "runs/b"]).plot == ["runs/a", "runs/b"]
    assert pong.parse_args(["--plot", "--model-dir", "runs/a"]).model_dir == "runs/a"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--play", "2", "--episodes", "5"], "--episodes does nothing with --play"),
        (["--play", "2", "--batch-size", "5"], "--batch-size does nothing with --play"),
        (["--play", "2", "--resume"], "--resume does nothing with --play"),
        (["--play", "2", "--learning-rate", "0.1"], "--learning-rate does nothing with --play"),
        (["--play", "2", "--init", "he-normal"], "--init does nothing with --play"),
        (["--play", "2", "--save-every", "5"], "--save-every does nothing with --play"),
        (["--play", "2", "--record", "v", "--record-every", "2"], "--record-every does nothing"),
        (["--record-every", "5"], "--record-every does nothing without --record"),
        (["--record-gif", "5"], "--record-gif does nothing without --record"),
        (["--play", "2", "--record-scale", "2"], "--record-scale does nothing without --record"),
        (["--plot", "--envs", "1"], "--envs does nothing with --plot"),
        (["--plot", "--seed", "2"], "--seed does nothing with --plot"),
        (["--plot", "--render"], "--render does nothing with --plot"),
        (["--plot", "runs/a", "--model-dir", "runs/b"], "--model-dir does nothing with --plot"),
        (["--plot", "--record", "v"], "--record does nothing with --plot"),
        (["--against", "steps"], "--against does nothing with training"),
        (["--play", "2", "--against", "steps"], "--against does nothing with --play"),
        (["--plot", "runs/a", "--game", "Breakout"], "--game does nothing with --plot"),
        (["--resume", "--restart"], "--resume and --restart are opposites"),
    ],
)
def test_a_flag_that_would_do_nothing_is_refused_in_one_line(pong, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pong.parse_args(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_flags_are_judged_as_given_not_by_the_defaults_block(pong, monkeypatch):
    monkeypatch.setattr(pong, "resume", True)
    assert pong.parse_args(["--play", "2"]).play == 2, "resume = True at the top is no flag"
    args = pong.parse_args(["--play", "2", "--hidden", "8", "--seed", "3", "--envs", "1"])
    assert (args.hidden, args.seed, args.envs) == (8, 3, 1)
    args = pong.parse_args(["--play", "1", "--record", "v", "--record-gif", "5"])
    assert (args.record, args.record_gif) == ("v", 5)


def test_help_shows_only_real_defaults_and_ends_with_the_examples(pong, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pong.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    words = " ".join(text.split())
    assert "(default: None)" not in words and "(default: False)" not in words
    assert (
        "(default: until Ctrl-C)" in words
        and "(default: 10)" in words
        and "(default: models)" in words
    )
    examples = [line.strip() for line in pong.__doc__.split("\n\n")[-1].strip().splitlines()]
    for command in ("tutorial_atari_pong.py  ", "--resume", "--play", "--record", "--plot"):
        assert any(command in line for line in examples), command
    assert [line.strip() for line in text.rstrip().splitlines()[-len(examples) - 1 :]] == [
        "examples:",
        *examples,
    ]


@pytest.mark.parametrize(
    "successes, trials, low, high",
    [
        (14, 20, 0.4810, 0.8545),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (1, 2, 0.0945, 0.9055),
        (0, 0, 0.0, 1.0),
    ],
)
def test_wilson_interval_on_known_counts(pong, successes, trials, low, high):
    assert pong.wilson_interval(successes, trials) == pytest.approx((low, high), abs=5e-5)


def test_video_draws_each_pixel_as_a_block_and_a_gif_keeps_the_first_frames(pong, tmp_path):
    import imageio.v3 as imageio

    frames = (
        np.random.default_rng(0).integers(0, 4, (5, 7, 6, 3), dtype=np.uint8) * 60
    )  # few colours, as in Pong
    video = pong.Video(str(tmp_path / "clip.gif"), 2, limit=3)
    for frame in frames:
        video.add(frame)
    video.close()
    written = imageio.imread(tmp_path / "clip.gif", index=None)[..., :3]
    assert np.array_equal(written, frames[:3].repeat(2, axis=1).repeat(2, axis=2))


@pytest.mark.parametrize("checks_before_stop", [0, 3])
def test_an_episode_stopped_part_way_leaves_no_video(pong, tmp_path, checks_before_stop):
    """A stop part-way through an episode (Ctrl-C during --play --record) removes its
    unfinished video, whether ffmpeg has written anything yet or not."""
    checks = []
    player = pong.LocalPlayer((1, 0), recording=pong.Recording(str(tmp_path), 1, 3, None))
    weights = [
        np.zeros((6400, 200), np.float32),
        np.zeros(200, np.float32),
        np.zeros((200, 3), np.float32),
        np.zeros(3, np.float32),
    ]
    try:
        played = list(
            player.play(
                weights,
                [0],
                lambda line: None,
                lambda: checks.append(1) or len(checks) > checks_before_stop,
            )
        )
    finally:
        player.close()
    assert played == [] and len(checks) == checks_before_stop + 1
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_path_is_model_dir_model_pong_npz_unless_model_is_given(pong):
    assert pong.checkpoint_path(pong.parse_args(["--model-dir", "d"])) == os.path.join(
        "d", "model_pong.npz"
    )
    assert pong.checkpoint_path(pong.parse_args(["--model", "x/y.npz"])) == "x/y.npz"


@pytest.mark.parametrize("saved_episode", [40, None])
def test_an_io_error_while_training_is_one_line_naming_the_file_and_the_intact_checkpoint(
    pong, trained, tmp_path, monkeypatch, capsys, saved_episode
):
    checkpoint = tmp_path / "model_pong.npz"
    if saved_episode is not None:
        pong.save_checkpoint(str(checkpoint), *trained, saved_episode, -20.0, [])

    def disk_full(args):
        raise OSError(28, "No space left on device", str(checkpoint))

    monkeypatch.setattr(pong, "train", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        pong.main(["--episodes", "1", "--model-dir", str(tmp_path)])
    assert exit_info.value.code == 1
    intact = (
        f"the checkpoint of episode {saved_episode} is intact"
        if saved_episode
        else f"no checkpoint at {checkpoint}"
    )
    assert capsys.readouterr().err.splitlines() == [
        f"{pathlib.Path(sys.argv[0]).name}: error: No space left on device: {checkpoint} ({intact})"
    ]


# --- progress.csv ------------------------------------------------------------


def progress_row(number, wall_time="2026-01-01T00:00:00"):
    return f"{number},-21.0,-21.000000,0,21,1000,1.000,{wall_time}\r\n"


def write_progress(path, *rows):
    path.write_text(",".join(PROGRESS_FIELDS) + "\r\n" + "".join(rows), newline="")


def test_read_progress_keeps_whole_well_formed_rows_and_says_how_many_it_skipped(
    pong, tmp_path, capsys
):
    path = tmp_path / "progress.csv"
    write_progress(
        path,
        progress_row(0),
        "1,-21.0\r\n",
        progress_row(2).replace("-21.0", "x", 1),
        progress_row(3),
        progress_row(4).replace("\r\n", ",extra\r\n"),
        progress_row(5, wall_time="2026-01-01T0")[:-2],
    )
    assert [row["episode"] for row in pong.read_progress(str(path))] == ["0", "3"]
    assert capsys.readouterr().out == f"{path}: skipped 4 torn or malformed rows\n"


def test_resumed_progress_log_keeps_each_episode_below_the_checkpoint_once_in_order(pong, tmp_path):
    path = tmp_path / "progress.csv"
    write_progress(
        path,
        progress_row(0),
        progress_row(2),
        progress_row(1),
        progress_row(1),
        progress_row(3),
        "2",
    )
    pong.ProgressLog(str(tmp_path), 3).close()
    with open(path, newline="") as f:
        assert f.read() == ",".join(PROGRESS_FIELDS) + "\r\n" + progress_row(0) + progress_row(
            1
        ) + progress_row(2)


def test_progress_log_writes_each_row_whole_at_once(pong, tmp_path):
    """A hard kill loses at most the episode in hand: each row reaches the
    file as it is logged, whole."""
    log = pong.ProgressLog(str(tmp_path), 0)
    try:
        log.add(make_batch(pong)[0], -21.0)
        with open(tmp_path / "progress.csv", newline="") as f:
            lines = f.read().splitlines(keepends=True)
    finally:
        log.close()
    assert len(lines) == 2 and lines[1].startswith("0,") and lines[1].endswith("\r\n")


def test_git_ignores_what_runs_leave_in_the_shipped_model_folder():
    names = [
        "models/pretrained/.lock",
        "models/pretrained/model_pong.npz.12345.tmp",
        "models/pretrained/progress.csv.12345.tmp",
        "models/pretrained/tensorboard/events.out.tfevents.1",
    ]
    result = subprocess.run(
        ["git", "check-ignore", *names], cwd=REPO, capture_output=True, text=True
    )
    if result.returncode == 128:
        pytest.skip(f"not a git checkout ({result.stderr.strip()})")
    assert result.stdout.splitlines() == names


def test_a_count_of_one_is_singular_in_what_the_script_prints(pong, tmp_path, capsys):
    assert [pong.plural(n, "episode") for n in (0, 1, 2)] == [
        "0 episodes",
        "1 episode",
        "2 episodes",
    ]
    (tmp_path / "progress.csv").write_text(
        "episode,reward,running_mean,points_won,points_lost,steps,seconds,wall_time\n"
        "0,-21,-21,0,21,900,1.0,2026-12-01T10:00:00\n0,-21"
    )
    rows = pong.read_progress(str(tmp_path / "progress.csv"))
    assert len(rows) == 1
    run = pong.progress_columns(str(tmp_path))
    pong.print_milestones(str(tmp_path), run, pong.shares_won(run, 1), 1)
    printed = capsys.readouterr().out
    assert f"{tmp_path / 'progress.csv'}: skipped 1 torn or malformed row\n" in printed
    assert f"{tmp_path}: 1 episode in 0.00 hours of training; over the 1 episode before" in printed
    assert "best 1 episode in a row: " in printed
    assert "90% of games won over 1 episode in a row: not yet" in printed
