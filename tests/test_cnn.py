"""The convolutional policy, --network cnn: its numpy forward, its sparse conv1 and its chunked
gradient against TensorLayer's dense model on real Pong-v0 difference frames; its checkpoints; and
the script run with it as a user runs it."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorlayer as tl
from helpers import (
    BATCH_RE,
    EPISODE_RE,
    PLAY_RE,
    PLAY_SUMMARY_RE,
    POINT_RE,
    SAVED_RE,
    SCRIPT,
    assert_one_line_error,
    load_checkpoint,
    new_policy,
    parse_train_log,
    read_progress,
    run_script,
)

CNN_WEIGHTS = {
    "conv1/filters": (8, 8, 1, 16),
    "conv1/biases": (16,),
    "conv2/filters": (4, 4, 16, 32),
    "conv2/biases": (32,),
    "hidden/weights": (2048, 256),  # conv2's 8 x 8 positions x 32 filters, flattened
    "hidden/biases": (256,),
    "output/weights": (256, 3),
    "output/biases": (3,),
}
CNN_PARAMETERS = 534579  # 1040 + 8224 + 524544 + 771
REAL_STEPS = 300


def new_cnn_policy(pong, seed_value=1, bias_seed=None):
    """pong.build_cnn_policy (the name 'policy' released from TensorLayer's registry first). With
    bias_seed, every bias is set to random values, some negative, so that the relu of the
    activations of an empty frame (the numpy forward's base) is neither all 0 nor all linear."""
    tl.models.core._global_model_name_set.discard("policy")
    model = pong.build_cnn_policy(seed_value)
    model.eval()
    if bias_seed is not None:
        rng = np.random.default_rng(bias_seed)
        for name in ("conv1", "conv2", "hidden", "output"):
            bias = model.get_layer(name).b
            bias.assign(rng.normal(0, 0.05, bias.shape).astype(np.float32))
    return model


def weights_of(model):
    return [w.numpy() for w in model.trainable_weights]


@pytest.fixture(scope="module")
def real_frames(pong):
    """REAL_STEPS difference frames of real Pong-v0 with random actions, as play_episode makes
    them: the first has no changed pixel (nothing has moved yet)."""
    env = pong.make_env(3)
    try:
        env.reset()
        screen = env.ale.getScreen()
        previous = pong.prepro(screen)
        rng = np.random.default_rng(0)
        frames = []
        for _ in range(REAL_STEPS):
            current = pong.prepro(screen)
            frames.append(pong.diff_frame(current, previous))
            previous = current
            env.step(int(rng.choice(pong.ACTIONS)))
            env.ale.getScreen(screen)
    finally:
        env.close()
    assert sum(len(changed) == 0 for changed, _ in frames) >= 1
    assert sum(len(changed) > 0 for changed, _ in frames) > REAL_STEPS // 2
    return frames


def edge_frame():
    """Pixels that lie in fewer than 4 of conv1's windows: the corners, the first and last
    columns (which real Pong frames leave alone) and the last row."""
    frame = np.zeros(6400, np.int8)
    frame[[0, 79, 6320, 6399]] = 1
    frame[np.arange(5, 80, 9) * 80] = -1  # column 0
    frame[np.arange(3, 80, 7) * 80 + 79] = 1  # column 79
    frame[79 * 80 + np.arange(2, 78, 5)] = -1  # row 79
    changed = np.flatnonzero(frame).astype(np.int16)
    return changed, frame[changed]


@pytest.fixture(scope="module")
def frames(real_frames):
    return [*real_frames, edge_frame()]


def dense_frames(frames):
    """The difference frames as the dense model takes them: [n, 80, 80, 1] float32."""
    out = np.zeros((len(frames), 6400), np.float32)
    for row, (changed, signs) in zip(out, frames, strict=True):
        row[changed] = signs
    return out.reshape(-1, 80, 80, 1)


def step_pixels(frames):
    """The frames as update_policy hands a chunk over: (step, pixel) int64 and float32 signs."""
    steps = np.repeat(np.arange(len(frames), dtype=np.int64), [len(c) for c, _ in frames])
    pixels = np.concatenate([c for c, _ in frames]).astype(np.int64)
    signs = np.concatenate([s for _, s in frames]).astype(np.float32)
    return np.stack([steps, pixels], axis=1), signs


# --- the numpy forward that chooses the actions ------------------------------------------


def test_numpy_forward_equals_tensorlayers_on_real_frames(pong, frames):
    model = new_cnn_policy(pong, 4, bias_seed=1)
    weights = weights_of(model)
    assert [w.name for w in model.trainable_weights] == [name + ":0" for name in CNN_WEIGHTS]
    assert [w.shape for w in weights] == list(CNN_WEIGHTS.values())
    base = pong.cnn_base(weights)
    conv1_base = base[0][0]  # relu(conv1's biases): some filters' are cut to 0, others not
    assert (conv1_base > 0).any() and (conv1_base == 0).any()

    expected = tf.nn.softmax(model(dense_frames(frames))).numpy()
    chosen = pong.probabilities_function(weights)
    got = np.array([pong.cnn_action_probabilities(weights, base, c, s) for c, s in frames])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(np.array([chosen(c, s) for c, s in frames]), got)
    # the comparison means something: the frames move the probabilities well beyond 1e-5
    empty = [i for i, (changed, _) in enumerate(frames) if len(changed) == 0]
    assert np.abs(expected - expected[empty[0]]).max() > 1e-3


def test_probabilities_function_picks_the_network_by_its_number_of_arrays(pong, frames):
    cnn = weights_of(new_cnn_policy(pong, 2, bias_seed=2))
    mlp = weights_of(new_policy(pong, 200, 2))
    changed, signs = frames[50]
    np.testing.assert_array_equal(
        pong.probabilities_function(cnn)(changed, signs),
        pong.cnn_action_probabilities(cnn, pong.cnn_base(cnn), changed, signs),
    )
    np.testing.assert_array_equal(
        pong.probabilities_function(mlp)(changed, signs),
        pong.action_probabilities(mlp, changed, signs),
    )


# --- conv1 as a sparse product -------------------------------------------------------------


def test_chunk_layout_holds_conv1_wherever_motion_reaches_conv2(pong, frames):
    indices, signs = step_pixels(frames)
    entries, values, n_windows, read_rows, steps, counts = pong.chunk_layout(
        indices, signs, len(frames)
    )
    assert entries.shape == (len(values), 2)
    assert entries[:, 0].min() >= 0 and entries[:, 0].max() < n_windows
    assert entries[:, 1].min() >= 0 and entries[:, 1].max() < 64
    keys = entries[:, 0].astype(np.int64) * 64 + entries[:, 1]
    assert np.all(np.diff(keys) > 0), "entries in strictly increasing row-major order"
    assert set(np.unique(values)) == {-1.0, 1.0}
    assert len(counts) == 64 and counts.sum() == len(steps) == len(read_rows)
    positions = np.repeat(np.arange(64), counts)

    filters = new_cnn_policy(pong, 5).get_layer("conv1").W.numpy()
    patches = np.zeros((n_windows + 1, 64), np.float32)  # the last row: the still window's
    patches[entries[:, 0], entries[:, 1]] = values
    moved = patches @ filters.reshape(64, 16)
    dense = tf.nn.conv2d(dense_frames(frames), filters, 4, "VALID").numpy().reshape(-1, 361, 16)
    windows = pong.POSITION_WINDOWS[positions]  # (pair, tap): the window each pair reads
    np.testing.assert_allclose(
        moved[read_rows], dense[steps[:, None], windows], rtol=1e-5, atol=1e-6
    )
    assert np.abs(dense).max() > 0.1
    # Every (step, position) that is not a pair reads no motion: conv2 holds its still value.
    is_pair = np.zeros((len(frames), 64), bool)
    is_pair[steps, positions] = True
    moving = np.abs(dense[:, pong.POSITION_WINDOWS]).max(axis=(2, 3)) > 0
    assert np.array_equal(is_pair, moving | is_pair) and is_pair.sum() < 0.3 * is_pair.size
    assert is_pair.any(axis=1).sum() > len(frames) // 2


# --- the update ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graded(pong):
    """A CNN with random biases and its compiled chunk gradient (traced once: a few seconds)."""
    model = new_cnn_policy(pong, 6, bias_seed=3)
    return model, pong.make_cnn_gradient_fn(model)


def dense_gradient(model, frames, labels, returns):
    with tf.GradientTape() as tape:
        loss = tl.rein.cross_entropy_reward_loss(model(dense_frames(frames)), labels, returns)
    return [g.numpy() for g in tape.gradient(loss, model.trainable_weights)]


def assert_gradients_close(got, expected):
    for g, e, name in zip(got, expected, CNN_WEIGHTS, strict=True):
        assert g.shape == e.shape, name
        assert np.abs(e).max() > 0, name  # not a comparison of zeros
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5 * np.abs(e).max(), err_msg=name)


def test_the_sparse_chunk_gradient_equals_the_dense_gradient(graded, frames):
    model, gradient_fn = graded
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, len(frames)).astype(np.int32)
    returns = rng.normal(0, 1, len(frames)).astype(np.float32)
    indices, signs = step_pixels(frames)
    (got,) = gradient_fn([(indices, signs, np.int64(len(frames)), labels, returns)])
    assert_gradients_close([g.numpy() for g in got], dense_gradient(model, frames, labels, returns))


def real_episodes(pong, frames, seed):
    """Two Episodes of the real frames (cut at step 170, so that a chunk of 7 spans the two), with
    random labels and a point every 25 steps (the first's last 20 steps decide no point)."""
    rng = np.random.default_rng(seed)
    episodes = []
    for number, part in enumerate((frames[:170], frames[170:])):
        rewards = np.zeros(len(part), np.int8)
        rewards[24::25] = rng.choice(np.array([-1, 1], np.int8), len(rewards[24::25]))
        episodes.append(
            pong.Episode(
                number,
                np.array([len(c) for c, _ in part], np.int16),
                np.concatenate([c for c, _ in part]),
                np.concatenate([s for _, s in part]),
                rng.integers(0, 3, len(part)).astype(np.int8),
                rewards,
                rewards != 0,
            )
        )
    return episodes


class GradientRecorder:
    """Stands in for the optimizer to capture what update_policy applies."""

    def __init__(self):
        self.calls = []

    def apply_gradients(self, grads_and_vars):
        self.calls.append([(np.array(g), v) for g, v in grads_and_vars])


@pytest.mark.parametrize("chunk_steps", [7, 4096])
def test_update_policy_applies_the_dense_gradient_whatever_the_chunk_size(
    pong, graded, real_frames, chunk_steps
):
    model, gradient_fn = graded
    episodes = real_episodes(pong, real_frames, 5)
    returns = pong.batch_returns(episodes, 0.99)
    labels = np.concatenate([e.labels for e in episodes]).astype(np.int32)
    expected = dense_gradient(model, real_frames, labels, returns)
    recorder = GradientRecorder()
    steps = pong.update_policy(model, recorder, gradient_fn, episodes, 0.99, chunk_steps)
    assert steps == REAL_STEPS
    assert len(recorder.calls) == 1, "one optimizer step per batch"
    assert [v.name for _, v in recorder.calls[0]] == [w.name for w in model.trainable_weights]
    assert_gradients_close([g for g, _ in recorder.calls[0]], expected)


def test_update_policy_moves_the_weights_alike_for_chunks_of_7_and_4096_steps(
    pong, graded, real_frames
):
    model, gradient_fn = graded
    start = weights_of(model)
    episodes = real_episodes(pong, real_frames, 6)
    after = {}
    try:
        for chunk_steps in (7, pong.CNN_CHUNK_STEPS):
            for w, value in zip(model.trainable_weights, start, strict=True):
                w.assign(value)
            optimizer = pong.make_optimizer(model, 1e-3, 0.99)
            pong.update_policy(model, optimizer, gradient_fn, episodes, 0.99, chunk_steps)
            after[chunk_steps] = weights_of(model)
    finally:
        for w, value in zip(model.trainable_weights, start, strict=True):
            w.assign(value)
    for s, a, b, name in zip(
        start, after[7], after[pong.CNN_CHUNK_STEPS], CNN_WEIGHTS, strict=True
    ):
        step, other_step = a - s, b - s
        assert np.abs(step).max() > 1e-6, name  # the weights really moved
        bound = 1e-4 * np.abs(step) + 1e-5 * np.abs(step).max() + 2 * np.spacing(np.abs(s))
        assert np.all(np.abs(other_step - step) <= bound), name


# --- checkpoints -----------------------------------------------------------------------------


def with_moved_state(pong, model):
    """An optimizer for model whose every weight and mean square holds seeded random values."""
    optimizer = pong.make_optimizer(model, 1e-4, 0.99)
    rng = np.random.default_rng(8)
    for w in model.trainable_weights:
        w.assign(rng.normal(0, 0.1, w.shape).astype(np.float32))
    for square in pong.mean_squares(optimizer, model).values():
        square.assign(rng.uniform(0.5, 1.5, square.shape).astype(np.float32))
    return optimizer


def test_a_cnn_checkpoint_round_trip_restores_everything(pong, real_frames, tmp_path):
    model = new_cnn_policy(pong, 9)
    optimizer = with_moved_state(pong, model)
    pending = real_episodes(pong, real_frames, 7)[1:]
    pending[0].number = 41
    path = tmp_path / "ck.npz"
    settings = {"learning_rate": 1e-4, "decay_rate": 0.99, "gamma": 0.99, "batch_size": 10}
    pong.save_checkpoint(
        str(path), model, optimizer, 42, -19.5, pending, {**settings, "network": "cnn"}
    )

    arrays = load_checkpoint(path)
    assert str(arrays["config/network"]) == "cnn"
    assert all(arrays[name].shape == shape for name, shape in CNN_WEIGHTS.items())
    for network_name in (None, "cnn"):
        read = pong.read_checkpoint(str(path), network_name=network_name)
        assert pong.checkpoint_network(read) == "cnn"
    other = new_cnn_policy(pong, 10)
    other_optimizer = pong.make_optimizer(other, 1e-4, 0.99)
    episode, running_mean, restored = pong.restore(read, other, other_optimizer)
    assert (episode, running_mean) == (42, -19.5)
    for w, o in zip(model.trainable_weights, other.trainable_weights, strict=True):
        np.testing.assert_array_equal(o.numpy(), w.numpy(), err_msg=w.name)
    saved = pong.mean_squares(optimizer, model)
    restored_squares = pong.mean_squares(other_optimizer, other)
    assert set(saved) == set(restored_squares) == {"mean_square/" + n for n in CNN_WEIGHTS}
    for name, square in saved.items():
        np.testing.assert_array_equal(restored_squares[name].numpy(), square.numpy(), err_msg=name)
    assert [e.number for e in restored] == [41]
    for field in ("nnz", "indices", "signs", "labels", "rewards"):
        np.testing.assert_array_equal(getattr(restored[0], field), getattr(pending[0], field))

    with pytest.raises(pong.CheckpointError) as error:
        pong.read_checkpoint(str(path), network_name="mlp")
    assert str(error.value) == f"{path} holds a --network cnn policy, this run has --network mlp"


def test_training_saves_the_network_only_for_the_cnn(pong, tmp_path, capsys):
    """Training.save: a CNN's checkpoint names its network, an MLP's holds no config/network, as
    before --network existed; each refuses to be read as the other."""
    for network_name in ("mlp", "cnn"):
        folder = tmp_path / network_name
        args = pong.parse_args(
            ["--network", network_name, "--envs", "1", "--model-dir", str(folder)]
        )
        tl.models.core._global_model_name_set.discard("policy")
        path = str(folder / "model_pong.npz")
        training = pong.Training(args, path, None, None)
        try:
            training.episode, training.running_mean = 3, -20.0
            training.save()
        finally:
            training.close()
        arrays = load_checkpoint(path)
        assert ("config/network" in arrays) == (network_name == "cnn")
        assert pong.checkpoint_network(pong.read_checkpoint(path)) == network_name
        other = {"mlp": "cnn", "cnn": "mlp"}[network_name]
        with pytest.raises(pong.CheckpointError) as error:
            pong.read_checkpoint(path, network_name=other)
        assert str(error.value) == (
            f"{path} holds a --network {network_name} policy, this run has --network {other}"
        )
    assert str(load_checkpoint(tmp_path / "cnn" / "model_pong.npz")["config/network"]) == "cnn"
    capsys.readouterr()


class WouldPlay(Exception):
    """Raised in place of making the player: the checkpoint and flags were accepted."""


@pytest.mark.parametrize(
    "network_name",
    [
        "mlp",
        "cnn",
    ],
)
def test_play_with_another_hidden_than_the_checkpoints_is_refused_in_one_line(
    pong, tmp_path, monkeypatch, capsys, network_name
):
    """docs/usage.md: "--play reads the network's size from the checkpoint; --hidden there only
    checks it", and a checkpoint "made with another --hidden" stops the script with one line and
    exit 2. The MLP's checkpoint (200 units) is refused with --hidden 8, and so is the CNN's, whose
    hidden layer has no --hidden."""
    path = tmp_path / "model_pong.npz"
    if network_name == "cnn":
        model, settings = new_cnn_policy(pong, 1), {"network": "cnn"}
    else:
        model, settings = new_policy(pong, 200, 1), {}
    optimizer = pong.make_optimizer(model, 1e-4, 0.99)
    pong.save_checkpoint(str(path), model, optimizer, 1, -21.0, [], settings)
    capsys.readouterr()

    def would_play(*args, **kwargs):
        raise WouldPlay

    monkeypatch.setattr(pong, "stop_flag", lambda: lambda: False)  # keep pytest's Ctrl-C
    monkeypatch.setattr(pong, "make_player", would_play)
    with pytest.raises(SystemExit) as exit_info:
        pong.main(["--play", "1", "--hidden", "8", "--envs", "1", "--model", str(path)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "--hidden 8" in lines[0], lines


# --- the script run with --network cnn ------------------------------------------------------


def cnn_summary_end(lines):
    ends = [i for i, line in enumerate(lines) if line.startswith("  num of params:")]
    assert len(ends) == 1, "\n".join(lines[:20])
    return ends[0]


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """One episode of training with --network cnn, and its update."""
    cwd = tmp_path_factory.mktemp("cnn")
    model_dir = cwd / "m"
    flags = ["--network", "cnn", "--episodes", 1, "--batch-size", 1, "--envs", 1]
    result = run_script([*flags, "--model-dir", model_dir], cwd)
    assert result.returncode == 0, result.describe()
    return model_dir, result


@pytest.mark.e2e
def test_training_with_the_cnn_writes_its_checkpoint_and_the_tutorials_lines(pong, cnn_run):
    model_dir, result = cnn_run
    checkpoint = model_dir / "model_pong.npz"
    lines = result.lines
    end = cnn_summary_end(lines)
    assert lines[end] == f"  num of params: {CNN_PARAMETERS}"
    assert "Traceback" not in result.stderr, result.stderr
    log = parse_train_log(lines)
    assert sorted(log.points) == [0] and len(log.episodes) == 1
    total = sum(reward for _, reward, _ in log.points[0])
    assert log.episodes == [(total, total)]
    steps = int(read_progress(model_dir)[0]["steps"])
    assert log.batches == [(1, steps)]
    assert lines[-1] == f"saved checkpoint to {checkpoint} (episode 1)"
    known = (POINT_RE, EPISODE_RE, BATCH_RE, SAVED_RE)
    assert [line for line in lines[end + 1 :] if not any(r.match(line) for r in known)] == []

    arrays = load_checkpoint(checkpoint)
    assert str(arrays["config/network"]) == "cnn"
    assert int(arrays["state/episode"]) == 1
    for name, shape in CNN_WEIGHTS.items():
        assert arrays[name].shape == shape, name
        assert arrays["mean_square/" + name].shape == shape, name
    # seed 1's CNN, moved by one RMSProp step of at most 10 * lr
    initial = new_cnn_policy(pong, 1)
    for layer, name in (("conv1", "conv1/filters"), ("hidden", "hidden/weights")):
        moved = np.abs(arrays[name] - initial.get_layer(layer).W.numpy())
        assert 0 < moved.max() <= 1e-3, name


@pytest.mark.e2e
def test_resume_continues_a_cnn_run_without_being_told_its_network(cnn_run, tmp_path):
    trained_dir, _ = cnn_run
    model_dir = tmp_path / "m"
    shutil.copytree(trained_dir, model_dir)
    checkpoint = model_dir / "model_pong.npz"
    before = load_checkpoint(checkpoint)
    flags = ["--resume", "--episodes", 1, "--batch-size", 1, "--envs", 1]  # no --network cnn
    result = run_script([*flags, "--model-dir", model_dir], tmp_path)
    assert result.returncode == 0, result.describe()
    mean = float(before["state/running_mean"])
    assert f"resumed from {checkpoint} at episode 1, running mean {mean:f}" in result.lines
    log = parse_train_log(result.lines)
    assert sorted(log.points) == [1] and len(log.episodes) == 1 and len(log.batches) == 1
    assert result.lines[-1] == f"saved checkpoint to {checkpoint} (episode 2)"
    after = load_checkpoint(checkpoint)
    assert str(after["config/network"]) == "cnn" and int(after["state/episode"]) == 2
    assert [int(row["episode"]) for row in read_progress(model_dir)] == [0, 1]
    assert not np.array_equal(after["conv1/filters"], before["conv1/filters"]), "it trained on"


@pytest.mark.e2e
def test_resuming_a_cnn_run_with_network_mlp_is_refused_in_one_line(cnn_run, tmp_path):
    trained_dir, _ = cnn_run
    model_dir = tmp_path / "m"
    shutil.copytree(trained_dir, model_dir)
    checkpoint = model_dir / "model_pong.npz"
    before = {name: (model_dir / name).read_bytes() for name in ("model_pong.npz", "progress.csv")}
    flags = ["--resume", "--network", "mlp", "--episodes", 1]
    result = run_script([*flags, "--model-dir", model_dir], tmp_path)
    assert_one_line_error(result)
    assert result.stderr_lines == [
        f"{SCRIPT.name}: error: {checkpoint} holds a --network cnn policy, "
        "this run has --network mlp"
    ]
    after = {name: (model_dir / name).read_bytes() for name in before}
    assert after == before


@pytest.mark.e2e
def test_play_takes_the_network_from_the_checkpoint(cnn_run, tmp_path):
    trained_dir, _ = cnn_run
    checkpoint = trained_dir / "model_pong.npz"
    before = checkpoint.read_bytes()
    result = run_script(["--play", 1, "--envs", 1, "--model", checkpoint], tmp_path)
    assert result.returncode == 0, result.describe()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.lines) == 2, result.describe()
    episode = PLAY_RE.match(result.lines[0])
    summary = PLAY_SUMMARY_RE.match(result.lines[1])
    assert episode and summary, result.describe()
    assert episode[1] == "0" and summary[1] == "1" and summary[2] == str(checkpoint)
    assert max(int(episode[2]), int(episode[3])) == 21
    assert checkpoint.read_bytes() == before


@pytest.mark.e2e
@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--network", "cnn", "--hidden", "8", "--episodes", "1"],
            "--hidden does nothing with --network cnn (its hidden layer has 256)",
        ),
        (["--play", "1", "--network", "cnn"], "--network does nothing with --play"),
    ],
    ids=["hidden", "play"],
)
def test_flags_the_cnn_cannot_use_are_refused_in_one_line(tmp_path, argv, message):
    model_dir = tmp_path / "m"
    result = run_script([*argv, "--envs", 1, "--model-dir", model_dir], tmp_path, timeout=120)
    assert_one_line_error(result)
    assert result.stderr_lines[0].startswith(f"{SCRIPT.name}: error: {message}")
    assert not model_dir.exists()
