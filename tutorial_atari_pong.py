"""Deep Reinforcement Learning: Pong from pixels, with TensorLayer 2.

A policy network (80x80 difference frame -> 200 relu units -> 3 logits) learns
to play Pong-v0 by policy gradient, as in Karpathy's "Pong from Pixels" and the
TensorLayer tutorial it was ported to. Every point is logged; every
`batch_size` episodes one RMSProp step is applied to
tl.rein.cross_entropy_reward_loss; checkpoints let a later run resume.

    python tutorial_atari_pong.py                          # train until Ctrl-C
    python tutorial_atari_pong.py --resume                 # carry on where it stopped
    python tutorial_atari_pong.py --restart                # start over (the old run goes at the first save)
    python tutorial_atari_pong.py --play 5                 # watch the score of the policy
    python tutorial_atari_pong.py --play 1 --record videos # ... or a video of its play
    python tutorial_atari_pong.py --plot                   # draw the learning curve
    python tutorial_atari_pong.py --plot runs/a runs/b     # compare two runs
"""

import argparse
import contextlib
import csv
import dataclasses
import datetime
import glob
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import threading
import time
import warnings

# Defaults: edit them here, or override them with the flags of the same name.
render = False  # show the game in a window (needs a display)
resume = False  # continue from the checkpoint in model_dir
init = "glorot-uniform"  # the weights' initialiser: one of INITIALISERS below (biases start at 0)
image_size = 80  # frames are cropped and downsampled to image_size x image_size
hidden = 200  # units in the hidden layer
batch_size = 10  # episodes per parameter update
learning_rate = 1e-4
gamma = 0.99  # discount factor for rewards
decay_rate = 0.99  # RMSProp decay of the mean square of the gradient
model_dir = "models"
model_file_name = "model_pong"
save_every = 100  # episodes between checkpoints (and progress lines)
record_every = 100  # with --record, episodes between videos during training
record_scale = 3  # with --record, each pixel becomes a record_scale x record_scale block
seed = 1
envs = None  # episodes played at once, one worker process each; None: one per core on Linux, else 1

if __name__ == "__main__":  # Ctrl-C while starting up ends the program quietly: nothing to save yet
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

# TensorFlow and the emulator greet us with C++ logs and deprecation notices;
# the tutorial's own lines are what a reader should see.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's import logs through absl, past TF_CPP_MIN_LOG_LEVEL: file descriptor 2 goes to /dev/null meanwhile.
sys.stderr.flush()
stderr_fd, devnull_fd = os.dup(2), os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull_fd, 2)
try:
    import ale_py
    import gymnasium as gym
    import numpy as np
    import tensorflow as tf
    import tensorlayer as tl

    # TensorFlow's CSR sparse matrices multiply ~7x faster than tf.sparse on the CPU.
    from tensorflow.python.ops.linalg.sparse import sparse_csr_matrix_ops as csr
finally:
    os.dup2(stderr_fd, 2)
    os.close(stderr_fd)
    os.close(devnull_fd)

ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
warnings.filterwarnings(
    "ignore", message=r".*Pong-v0 is out of date.*"
)  # v0's settings are the tutorial's
gym.register_envs(ale_py)

ACTIONS = (1, 2, 3)  # STOP, UP, DOWN in Pong's action set; label = action - 1
MAX_EPISODE_STEPS = 10000  # gym's Pong-v0 cut episodes here (ale-py's registration has no limit)
CHECKPOINT_FORMAT = (
    2  # the one read and written (format 1 held Keras RMSprop's state, no longer read)
)
UPDATE_CHUNK_STEPS = 16384  # steps per gradient chunk: bounds the update's memory


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, or made for other settings."""


class NonFiniteError(Exception):
    """A NaN or an infinity in a gradient or the weights: never applied, never saved."""


class WorkerError(Exception):
    """An episode worker process that failed or was killed."""


def fail(message, status=2):
    """One line on stderr and exit status 2: bad flags, checkpoints, displays."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


# --- Frames ----------------------------------------------------------------

BACKGROUND = (34, 228)  # Pong's two background colours, as palette indices


def prepro(screen):
    """210x160 screen of palette indices -> 6400 bools: True where something is drawn. The tutorial's crop,
    every 2nd row and column, and its two background reds (144, 109), which are these two colours'."""
    field = screen[35:195:2, ::2].copy()  # contiguous, the comparisons run faster
    return ((field != BACKGROUND[0]) & (field != BACKGROUND[1])).ravel()


def diff_frame(current, previous):
    """What moved, sparsely (~99.7% of a difference frame is 0): the indices (int16) of the pixels that changed
    and the signs (int8) of current - previous."""
    changed = (current != previous).nonzero()[0]
    return changed.astype(np.int16), current[changed].astype(np.int8) * np.int8(2) - np.int8(1)


# --- Policy ----------------------------------------------------------------

# --init: the tutorial's Xavier/Glorot-uniform, and the usual others; the truncated normal is TensorLayer's default.
INITIALISERS = {
    "glorot-uniform": tf.keras.initializers.GlorotUniform,
    "glorot-normal": tf.keras.initializers.GlorotNormal,
    "he-uniform": tf.keras.initializers.HeUniform,
    "he-normal": tf.keras.initializers.HeNormal,
    "truncated-normal": lambda seed: tf.keras.initializers.TruncatedNormal(stddev=0.05, seed=seed),
}


def build_policy(hidden_units, seed_value, init_name=init, input_size=image_size * image_size):
    """The tutorial's network: weights from the named initialiser, zero biases."""
    weights = INITIALISERS[init_name]
    inputs = tl.layers.Input([None, input_size], name="input")
    x = tl.layers.Dense(
        hidden_units,
        act=tf.nn.relu,
        W_init=weights(seed=seed_value),
        b_init=tl.initializers.zeros(),
        name="hidden",
    )(inputs)
    outputs = tl.layers.Dense(
        len(ACTIONS),
        W_init=weights(seed=seed_value + 1),
        b_init=tl.initializers.zeros(),
        name="output",
    )(x)
    return tl.models.Model(inputs=inputs, outputs=outputs, name="policy")


def print_policy(model):
    """The model and one line per parameter, in the tutorial's format."""
    print(model)
    for i, weight in enumerate(model.trainable_weights):
        value = weight.numpy()
        print(
            f"  param {i:3d}: {weight.name:20s} {str(value.shape):15s} {value.dtype.name} "
            f"(mean: {value.mean():<18.12f}, median: {np.median(value):<18.12f}, std: {value.std():<18.12f})"
        )
    print(f"  num of params: {sum(int(np.prod(w.shape)) for w in model.trainable_weights)}")


def weight_key(weight):
    """'hidden/weights:0' -> 'hidden/weights', the name a checkpoint stores."""
    return weight.name.split(":")[0]


def action_probabilities(weights, changed, signs):
    """Softmax of the policy for one sparse difference frame, in numpy: the model's layers, summing the ~20
    rows of the hidden weights that the frame selects instead of multiplying 6400 zeros."""
    hidden_w, hidden_b, output_w, output_b = weights
    activations = hidden_b + signs.astype(np.float32) @ hidden_w.take(changed, axis=0)
    logits = np.maximum(activations, 0, out=activations) @ output_w + output_b
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def sample_action(probs, rng):
    """Draw STOP, UP or DOWN with the policy's probabilities."""
    u = (
        rng.random()
    )  # the first action whose cumulative probability exceeds u (int: numpy bools do not subtract)
    return ACTIONS[2 - int(u < probs[0]) - int(u < probs[0] + probs[1])]


# --- Returns and the update ------------------------------------------------


def batch_returns(episodes, gamma_value):
    """Each step's return: each point's reward discounted back to the steps that led to it (resetting at every
    point), then zero mean and unit variance over the batch (all-equal returns become 0). The undecided last
    point of an episode cut at MAX_EPISODE_STEPS: its steps get 0, no credit either way, and are left out."""
    returns = np.concatenate(
        [
            tl.rein.discount_episode_rewards(e.rewards.astype(np.float32), gamma_value)
            for e in episodes
        ]
    )
    decided = np.concatenate(
        [np.arange(e.steps) <= np.flatnonzero(e.rewards).max(initial=-1) for e in episodes]
    )
    centred = returns[decided] - returns[decided].mean()
    std = centred.std()
    standardised = np.zeros_like(returns)
    standardised[decided] = centred / std if std > 0 else centred
    return standardised


def require_finite(tensors, problem):
    if not all(np.isfinite(t.numpy()).all() for t in tensors):
        raise NonFiniteError(problem)


def sparse_product(frames, weights):
    """frames @ weights for a CSR matrix of frames, with a gradient for the weights alone (frames^T @ upstream, by
    an explicit transpose: adjoint_a=True sums in an order that varies from call to call, so reruns would drift)."""

    @tf.custom_gradient
    def product(w):
        return csr.sparse_matrix_mat_mul(frames, w), lambda upstream: csr.sparse_matrix_mat_mul(
            csr.sparse_matrix_transpose(frames, tf.float32), upstream
        )

    return product(weights)


def make_gradient_fn(model):
    """A compiled function: gradient of the tutorial's loss on one chunk of n_steps difference frames, given as
    (step, pixel) indices and signs. The model's layers, with a sparse product in the first."""
    hidden_layer, output_layer = model.get_layer("hidden"), model.get_layer("output")

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2], tf.int64),
            tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.float32),
        ]
    )
    def chunk_gradient(indices, signs, n_steps, labels, returns):
        with tf.GradientTape() as tape:
            dense_shape = tf.stack([n_steps, hidden_layer.W.shape[0]])
            frames = csr.sparse_tensor_to_csr_sparse_matrix(indices, signs, dense_shape)
            logits = output_layer(
                hidden_layer.act(sparse_product(frames, hidden_layer.W) + hidden_layer.b)
            )
            loss = tl.rein.cross_entropy_reward_loss(logits, labels, returns)
        return tape.gradient(loss, model.trainable_weights)

    chunk_gradient.get_concrete_function()  # trace now, not during the first update
    return chunk_gradient


@dataclasses.dataclass
class Episode:
    """One played episode, compactly: per step the changed pixels (their indices and signs end to end for all
    steps), the action's label and the reward."""

    number: int
    nnz: np.ndarray  # changed pixels per step, int16
    indices: np.ndarray  # int16, sum(nnz) of them
    signs: np.ndarray  # int8, -1 or 1
    labels: np.ndarray  # int8, action - 1
    rewards: np.ndarray  # int8, -1, 0 or 1
    seconds: float = 0.0

    @property
    def steps(self):
        return len(self.labels)

    @property
    def points_won(self):
        return int(np.count_nonzero(self.rewards > 0))

    @property
    def points_lost(self):
        return int(np.count_nonzero(self.rewards < 0))

    @property
    def reward(self):
        return float(self.rewards.sum())


def concatenate(episodes):
    """Join episodes into one batch (an Episode whose number is the first's)."""

    def join(name, dtype):
        return np.concatenate([getattr(e, name) for e in episodes] or [np.zeros(0, dtype)])

    return Episode(
        episodes[0].number if episodes else 0,
        join("nnz", np.int16),
        join("indices", np.int16),
        join("signs", np.int8),
        join("labels", np.int8),
        join("rewards", np.int8),
    )


def update_policy(
    model, optimizer, gradient_fn, episodes, gamma_value, chunk_steps=UPDATE_CHUNK_STEPS
):
    """One RMSProp step on the batch. The loss sums over steps, so chunks' gradients add up: exact, in bounded memory."""
    returns = batch_returns(episodes, gamma_value)
    batch = concatenate(episodes)
    row_ends = np.cumsum(batch.nnz, dtype=np.int64)
    total = [tf.zeros_like(w) for w in model.trainable_weights]
    for start in range(0, batch.steps, chunk_steps):
        stop = min(start + chunk_steps, batch.steps)
        lo, hi = (row_ends[start - 1] if start else 0), row_ends[stop - 1]
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), batch.nnz[start:stop])
        indices = np.stack([rows, batch.indices[lo:hi].astype(np.int64)], axis=1)
        grads = gradient_fn(
            indices,
            batch.signs[lo:hi].astype(np.float32),
            np.int64(stop - start),
            batch.labels[start:stop].astype(np.int32),
            returns[start:stop].astype(np.float32),
        )
        total = [t + g for t, g in zip(total, grads)]
    require_finite(
        total, "the batch's gradient is not finite (NaN or infinity) and was not applied"
    )
    optimizer.apply_gradients(zip(total, model.trainable_weights))
    require_finite(
        model.trainable_weights, "the update made the weights non-finite (NaN or infinity)"
    )
    return batch.steps


def make_optimizer(model, learning_rate_value, decay_rate_value):
    """The tutorial's tf.train.RMSPropOptimizer (TensorFlow 1), not Keras' RMSprop: its mean square starts at 1,
    not 0, so the first updates step by about lr * g, not 10 * lr * sign(g) (docs/how-it-works.md)."""
    optimizer = tf.compat.v1.train.RMSPropOptimizer(learning_rate_value, decay=decay_rate_value)
    # Its slots appear at the first apply_gradients. A zero gradient creates
    # them without moving any weight; the mean square then goes back to 1.
    optimizer.apply_gradients([(tf.zeros_like(w), w) for w in model.trainable_weights])
    for mean_square in mean_squares(optimizer, model).values():
        mean_square.assign(tf.ones_like(mean_square))
    return optimizer


def mean_squares(optimizer, model):
    """RMSProp's state by checkpoint name: each weight's mean square of its gradient. (Its other slot, momentum,
    holds only the last step: with momentum 0 it never enters the next one.)"""
    return {
        "mean_square/" + weight_key(w): optimizer.get_slot(w, "rms")
        for w in model.trainable_weights
    }


# --- Checkpoints -----------------------------------------------------------

SETTINGS = (
    "learning_rate",
    "decay_rate",
    "gamma",
    "batch_size",
)  # kept in a checkpoint as config/NAME


def save_checkpoint(path, model, optimizer, episode, running_mean, pending, settings=None):
    """Write weights, RMSProp state, counters, settings and the unfinished batch to path atomically (a temporary
    file, then os.replace). Non-finite weights are refused: the last good file stays."""
    require_finite(
        model.trainable_weights, "the weights are not finite (NaN or infinity) and were not saved"
    )
    hidden_w, batch = model.get_layer("hidden").W, concatenate(pending)
    arrays = {
        **{weight_key(w): w.numpy() for w in model.trainable_weights},
        **{name: v.numpy() for name, v in mean_squares(optimizer, model).items()},
        **{f"config/{name}": np.asarray(value) for name, value in (settings or {}).items()},
        "state/format": np.int64(CHECKPOINT_FORMAT),
        "state/episode": np.int64(episode),
        "state/running_mean": np.float64(np.nan if running_mean is None else running_mean),
        "config/input_size": np.int64(hidden_w.shape[0]),
        "config/hidden": np.int64(hidden_w.shape[1]),
        "pending/steps": np.array([e.steps for e in pending], np.int64),
        "pending/numbers": np.array([e.number for e in pending], np.int64),
        "pending/nnz": batch.nnz,
        "pending/indices": batch.indices,
        "pending/signs": batch.signs,
        "pending/labels": batch.labels,
        "pending/rewards": batch.rewards,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"  # per process: nothing two processes write can collide
    try:
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except (
        BaseException
    ) as error:  # a full disk, say: the previous checkpoint stays, the half-written one goes
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError):
            error.filename, error.filename2 = (
                path,
                None,
            )  # a failed write names no file: name the checkpoint
        raise


def read_checkpoint(path, hidden_units, input_size=image_size * image_size):
    """Load and check a checkpoint (numpy only, no pickle). Raises CheckpointError."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {error})"
        ) from None
    if "state/format" not in arrays:
        raise CheckpointError(f"{path} is not a checkpoint of this script (no 'state/format')")
    if int(arrays["state/format"]) != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {int(arrays['state/format'])}; "
            f"this script reads format {CHECKPOINT_FORMAT} only"
        )
    shapes = {
        "hidden/weights": (input_size, hidden_units),
        "hidden/biases": (hidden_units,),
        "output/weights": (hidden_units, len(ACTIONS)),
        "output/biases": (len(ACTIONS),),
    }
    expected = {
        **shapes,
        **{"mean_square/" + name: shape for name, shape in shapes.items()},
        "state/episode": (),
        "state/running_mean": (),
    }
    for name, shape in expected.items():
        if name not in arrays:
            raise CheckpointError(f"{path} is not a checkpoint of this script (no '{name}')")
        if arrays[name].shape != shape:
            found = arrays.get("config/hidden", "?")
            raise CheckpointError(
                f"{path} holds {name} of shape {arrays[name].shape}, expected {shape} "
                f"(it was trained with --hidden {found}, this run has --hidden {hidden_units})"
            )
        if not np.isfinite(arrays[name]).all() and name != "state/running_mean":
            raise CheckpointError(
                f"{path} holds non-finite values (NaN or infinity) in {name}: it cannot be used"
            )
    return arrays


def restore(arrays, model, optimizer):
    """Assign a read checkpoint; return (episode, running mean, the unfinished batch split back into episodes)."""
    for weight in model.trainable_weights:
        weight.assign(arrays[weight_key(weight)])
    for name, mean_square in mean_squares(optimizer, model).items():
        mean_square.assign(arrays[name])
    running_mean, pending = float(arrays["state/running_mean"]), []
    if "pending/steps" in arrays:
        step_cuts = np.cumsum(arrays["pending/steps"])[:-1]
        nnz = np.split(arrays["pending/nnz"], step_cuts)
        pixel_cuts = np.cumsum([int(n.sum()) for n in nnz])[:-1]
        indices, signs = (
            np.split(arrays[name], pixel_cuts) for name in ("pending/indices", "pending/signs")
        )
        labels, rewards = (
            np.split(arrays[name], step_cuts) for name in ("pending/labels", "pending/rewards")
        )
        episodes = zip(arrays["pending/numbers"], nnz, indices, signs, labels, rewards)
        pending = [Episode(int(number), *fields) for number, *fields in episodes]
    return int(arrays["state/episode"]), (None if np.isnan(running_mean) else running_mean), pending


# --- Playing ---------------------------------------------------------------


def make_env(env_seed, render_mode=None):
    if render_mode == "human":
        # ALE draws through SDL. Its OpenGL path loads Mesa, whose LLVM clashes with the LLVM inside TensorFlow
        # (a segfault); SDL's software renderer needs no GL. The game is silent, so no audio device either.
        for name, value in (
            ("SDL_RENDER_DRIVER", "software"),
            ("SDL_FRAMEBUFFER_ACCELERATION", "0"),
            ("SDL_AUDIODRIVER", "dummy"),
        ):
            os.environ.setdefault(name, value)
    # The bare emulator env, without gymnasium's checking wrappers, and with RAM as its observation: 128 bytes,
    # where RGB would be converted every step. prepro reads the screen's palette indices instead.
    env = gym.make("Pong-v0", obs_type="ram", render_mode=render_mode).unwrapped
    env.reset(seed=env_seed)  # seeds once: reseeding every episode reloads the ROM (~90 ms)
    return env


@dataclasses.dataclass
class Recording:
    """--record: every `every`-th episode as a video in directory, each pixel a scale x scale block."""

    directory: str
    every: int
    scale: int
    gif_steps: int | None  # a GIF of each episode's first gif_steps steps instead of an MP4

    def path(self, number):
        name = f"episode-{number:06d}.{'gif' if self.gif_steps else 'mp4'}"
        return os.path.join(self.directory, name) if number % self.every == 0 else None


class Video:
    """One frame per agent step, each pixel a scale x scale block (sharp, no blur): an MP4 at 30 frames a second,
    or a GIF, assembled in memory (about 1.5 MB a frame at scale 3) and so of the first `limit` frames only."""

    def __init__(self, path, scale, limit=None):
        import imageio.v2 as imageio  # only needed with --record

        self.path, self.scale, self.limit, self.frames = path, scale, limit, 0
        if path.endswith(".gif"):  # Pillow's writer: an exact palette, as Pong has 9 colours
            self.writer = imageio.get_writer(path, duration=30, loop=0)  # ms: GIF counts in 1/100 s
        else:
            self.writer = imageio.get_writer(
                path,
                fps=30,
                codec="libx264",
                macro_block_size=2,
                quality=7,
                ffmpeg_log_level="error",
            )

    def add(self, frame):
        if self.limit is None or self.frames < self.limit:
            self.writer.append_data(frame.repeat(self.scale, axis=0).repeat(self.scale, axis=1))
            self.frames += 1

    def close(self):
        self.writer.close()


def play_episode(env, weights, rng, number, say=print, should_stop=lambda: False, video=None):
    """Play one episode with the policy, until a side has 21 points or for MAX_EPISODE_STEPS steps; return it
    as an Episode, or None if told to stop part-way. say() gets one line per point."""
    env.reset()
    screen = env.ale.getScreen()
    previous, steps, game, started = (
        prepro(screen),
        [],
        0,
        time.perf_counter(),
    )  # the first step sees no motion
    point_started, terminated, truncated = started, False, False
    try:
        if video is not None:  # one frame per observation: the first, then one after each step
            video.add(env.ale.getScreenRGB())
        while not (terminated or truncated or len(steps) == MAX_EPISODE_STEPS):
            if should_stop():
                return None
            current = prepro(screen)
            changed, changed_signs = diff_frame(current, previous)
            previous = current
            action = sample_action(action_probabilities(weights, changed, changed_signs), rng)
            _, reward, terminated, truncated, _ = env.step(action)
            env.ale.getScreen(screen)
            if video is not None:
                video.add(env.ale.getScreenRGB())
            steps.append((changed, changed_signs, action - 1, reward))
            if reward != 0:
                now = time.perf_counter()
                say(
                    f"episode {number}: game {game} took {now - point_started:.5f}s, reward: {reward:f}"
                    + ("  !!!!!!!!" if reward > 0 else "")
                )
                game, point_started = game + 1, now
    finally:
        if video is not None:
            video.close()
    indices, signs, labels, rewards = zip(*steps)
    return Episode(
        number,
        np.array([len(i) for i in indices], np.int16),
        np.concatenate(indices),
        np.concatenate(signs),
        np.array(labels, np.int8),
        np.array(rewards, np.int8),
        time.perf_counter() - started,
    )


def seeds(*entropy):
    """An emulator seed and an action-sampling generator from (seed, first episode, ...): a resumed run draws
    fresh numbers instead of replaying the first run's."""
    sequence = np.random.SeedSequence(list(entropy))
    return int(sequence.generate_state(1)[0]), np.random.default_rng(sequence)


class LocalPlayer:
    """--envs 1: the plain sequential loop, in this process."""

    def __init__(self, entropy, render_mode=None, recording=None):
        env_seed, self.rng = seeds(*entropy)
        self.env = make_env(env_seed, render_mode)
        self.recording = recording

    def play(self, weights, numbers, say, should_stop):
        for number in numbers:
            path = self.recording and self.recording.path(number)
            video = path and Video(path, self.recording.scale, self.recording.gif_steps)
            episode = play_episode(self.env, weights, self.rng, number, say, should_stop, video)
            if (
                episode is None
            ):  # an unfinished episode leaves no video (ffmpeg makes the file at the first frame)
                if path and os.path.exists(path):
                    os.remove(path)
                return
            yield episode

    def close(self):
        self.env.close()


def worker_main(connection, trainer_ends, entropy, recording):
    """A worker process: plays each episode it is sent, by number, with the weights sent with it, and sends back
    point lines and finished episodes. It ends when the trainer has gone, however: its next recv or send fails."""
    # Ctrl-C, or a `kill` that reaches the whole group, is the trainer's to handle: it saves, then stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for (
        end
    ) in trainer_ends:  # forked copies of the trainer's ends would keep our pipe open after it dies
        end.close()
    try:
        player = LocalPlayer(entropy, None, recording)
        while True:
            number, weights = connection.recv()
            for episode in player.play(
                weights, [number], lambda line: connection.send(("line", line)), lambda: False
            ):
                connection.send(("episode", episode))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the trainer has gone: nothing left to do
    except Exception as error:  # the trainer says it in one line
        with contextlib.suppress(OSError):
            connection.send(("error", f"{type(error).__name__}: {error}"))


class WorkerPool:
    """--envs K > 1: K worker processes play a batch's episodes concurrently, each whole episode in one
    process, all with the same weights."""

    def __init__(self, count, entropy, recording=None):
        # fork, not spawn: workers start in milliseconds and never touch TensorFlow.
        context = multiprocessing.get_context("fork")
        self.connections, self.processes, self.playing, self.recording = [], [], {}, recording
        for i in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=worker_main,
                daemon=True,
                args=(theirs, self.connections + [ours], entropy + (i,), recording),
            )
            process.start()
            theirs.close()
            self.connections.append(ours)
            self.processes.append(process)

    def play(self, weights, numbers, say, should_stop):
        """Yield the episodes in order of number, whichever worker finishes first. The log reads as if they were
        played in turn: the oldest unfinished episode's point lines are said as they come, later ones' held."""
        todo, idle, finished, held = list(numbers), list(self.connections), {}, {}
        for number in numbers:
            for line in held.pop(number, []):
                say(line)
            while number not in finished:
                while todo and idle:
                    connection = idle.pop()
                    self.playing[connection] = todo.pop(0)
                    connection.send((self.playing[connection], weights))
                if should_stop():
                    return
                for connection in multiprocessing.connection.wait(list(self.playing), timeout=0.2):
                    try:
                        kind, payload = connection.recv()
                    except EOFError:
                        raise WorkerError(
                            "an episode worker process died (killed from outside?)"
                        ) from None
                    if kind == "error":
                        raise WorkerError(f"an episode worker process failed: {payload}")
                    if kind == "line" and self.playing[connection] == number:
                        say(payload)
                    elif kind == "line":
                        held.setdefault(self.playing[connection], []).append(payload)
                    else:
                        idle.append(connection)
                        finished[self.playing.pop(connection)] = payload
            yield finished.pop(number)

    def close(self):
        for connection, process in zip(self.connections, self.processes):
            connection.close()
            process.kill()
            process.join()
        for number in self.playing.values():  # unfinished episodes leave no broken videos
            if self.recording and (path := self.recording.path(number)) and os.path.exists(path):
                os.remove(path)


def make_player(args, first_episode, record_every_value):
    entropy = (args.seed, first_episode)
    recording = (
        Recording(args.record, record_every_value, args.record_scale, args.record_gif)
        if args.record
        else None
    )
    if args.envs == 1 or args.render:
        return LocalPlayer(entropy, "human" if args.render else None, recording)
    return WorkerPool(args.envs, entropy, recording)


# --- Training --------------------------------------------------------------


def stop_flag():
    """From now on Ctrl-C and SIGTERM only set a flag; returns its test. The loops check it at safe
    points, so a checkpoint is never written half-way through an update."""
    requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: requested.set())
    return requested.is_set


def read_progress(path):
    """progress.csv's rows that are whole (a hard kill may leave a torn last row, without its line end) and
    well-formed: an episode number, finite numbers, a wall time. One line says how many others were skipped."""
    with open(
        path, newline="", errors="replace"
    ) as f:  # bytes that are not UTF-8 make their row malformed
        lines = f.read().splitlines(keepends=True)[1:]
    rows = []
    for line in lines:
        with contextlib.suppress(csv.Error, StopIteration, ValueError):
            row = dict(zip(ProgressLog.FIELDS, next(csv.reader([line])), strict=True))
            datetime.datetime.fromisoformat(row["wall_time"])
            numbers_finite = all(np.isfinite(float(row[name])) for name in ProgressLog.FIELDS[1:-1])
            if line.endswith("\n") and int(row["episode"]) >= 0 and numbers_finite:
                rows.append(row)
    if len(lines) > len(rows):
        print(f"{path}: skipped {len(lines) - len(rows)} torn or malformed rows")
    return rows


class ProgressLog:
    """progress.csv and TensorBoard scalars, one row per episode."""

    FIELDS = [
        "episode",
        "reward",
        "running_mean",
        "points_won",
        "points_lost",
        "steps",
        "seconds",
        "wall_time",
    ]

    def __init__(self, directory, first_episode):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "progress.csv")
        board = os.path.join(directory, "tensorboard")
        kept = []
        if first_episode > 0 and os.path.exists(self.path):
            # Each episode once, in order; rows past the checkpoint are a run's that died before saving.
            rows = {int(row["episode"]): row for row in read_progress(self.path)}
            kept = [rows[number] for number in sorted(rows) if number < first_episode]
        else:  # a fresh run: the old curves go with the old checkpoint
            shutil.rmtree(board, ignore_errors=True)
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(temporary, "w", newline="") as f:  # the whole log must survive a kill here
            writer = csv.DictWriter(f, self.FIELDS)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(temporary, self.path)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, self.FIELDS)
        self.summary = tf.summary.create_file_writer(board)

    def add(self, episode, running_mean):
        row = {
            "episode": episode.number,
            "reward": episode.reward,
            "running_mean": f"{running_mean:.6f}",
            "points_won": episode.points_won,
            "points_lost": episode.points_lost,
            "steps": episode.steps,
            "seconds": f"{episode.seconds:.3f}",
            "wall_time": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        self.writer.writerow(row)
        self.file.flush()  # each row in one whole write: a kill never leaves half of one behind
        with self.summary.as_default(step=episode.number):
            for name in (
                "reward",
                "running_mean",
                "points_won",
                "points_lost",
                "steps",
                "seconds",
            ):  # as in the csv
                tf.summary.scalar(f"episode/{name}", float(row[name]))

    def close(self):
        self.file.close()
        self.summary.close()


def checkpoint_path(args):
    return args.model or os.path.join(args.model_dir, model_file_name + ".npz")


def writable_directory(path, purpose):
    """Create path if needed; stop with one line if it cannot take files."""
    if os.path.exists(path) and not os.path.isdir(path):
        fail(f"cannot use {path} for {purpose}: it is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        fail(f"cannot use {path} for {purpose} ({error.strerror})")
    if not os.access(path, os.W_OK | os.X_OK):
        fail(f"cannot use {path} for {purpose} (not writable)")


def lock_folder(directory):
    """One training run per folder: a lock on directory/.lock, which the kernel releases when this process ends,
    however it ends. A POSIX record lock (lockf), because forked workers do not inherit it."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock (see README)
        return None
    lock = open(os.path.join(directory, ".lock"), "a+")
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        lock.seek(0)
        fail(
            f"another training run (pid {lock.read().strip() or '?'}) is using {directory}: one run per folder "
            "(--play and --plot work beside it)"
        )
    lock.truncate(0)
    print(os.getpid(), file=lock, flush=True)  # for the message of a second run
    return lock


def saved_state(path, hidden_units, naming_it=False):
    """For an error while training: the checkpoint that is still intact, if any."""
    try:
        episode = int(read_checkpoint(path, hidden_units)["state/episode"])
        return f"the checkpoint {path + ' ' if naming_it else ''}of episode {episode} is intact"
    except CheckpointError as error:
        return str(error)


RESTART = ".restart"  # a --restart's new run lives in this subfolder until its first save


def finish_restart(directory, checkpoint_name):
    """Complete a --restart whose first save was under way (it marked its folder 'saved'), or drop one that never
    saved: the old run stays whole."""
    staging = os.path.join(directory, RESTART)
    if not os.path.isdir(staging):
        return
    saved = os.path.exists(os.path.join(staging, "saved"))
    for name in (
        checkpoint_name,
        "progress.csv",
        "tensorboard",
    ):  # each move is redone until all are done
        new, old = os.path.join(staging, name), os.path.join(directory, name)
        if saved and os.path.exists(new):
            if os.path.isdir(new):
                shutil.rmtree(old, ignore_errors=True)
            os.replace(new, old)
    shutil.rmtree(staging)


def earlier_run(path, directory):
    """What the folder holds of an earlier run ('' if nothing): a fresh start never destroys it unasked."""
    log = os.path.join(directory, "progress.csv")
    episodes = len(read_progress(log)) if os.path.exists(log) else 0
    return " and ".join(
        ([f"the checkpoint {path}"] if os.path.exists(path) else [])
        + ([f"{episodes} episodes in {log}"] if episodes else [])
    )


def settings_changed(arrays, args):
    """'--flag was -> now' for each setting the checkpoint was trained with that this run changes."""
    return [
        f"--{name.replace('_', '-')} {arrays['config/' + name].item()} -> {getattr(args, name)}"
        for name in SETTINGS
        if "config/" + name in arrays and arrays["config/" + name].item() != getattr(args, name)
    ]


def resumable(path, args):
    """The checkpoint --resume continues, checked; one line if it cannot be."""
    arrays = read_checkpoint(path, args.hidden)
    pending, trained_batch = len(arrays.get("pending/steps", [])), arrays.get("config/batch_size")
    if pending and trained_batch is not None and int(trained_batch) != args.batch_size:
        fail(
            f"{path} holds {pending} episodes of an unfinished batch of {int(trained_batch)}: "
            f"resume with --batch-size {int(trained_batch)}, or change it at a batch end"
        )
    return arrays


def apply_update(model, optimizer, gradient_fn, batch, gamma_value):
    started = time.perf_counter()
    steps = update_policy(model, optimizer, gradient_fn, batch, gamma_value)
    print(
        f"batch over ({len(batch)} episodes, {steps} steps)...... updated parameters "
        f"in {time.perf_counter() - started:.2f}s"
    )


def train(args):
    stop = stop_flag()
    path = checkpoint_path(args)
    directory = os.path.dirname(path) or "."
    restart_left = os.path.isdir(
        os.path.join(directory, RESTART)
    )  # by a run killed during its first save
    arrays, staging = (resumable(path, args) if args.resume and not restart_left else None), None
    writable_directory(directory, "the checkpoint and logs")
    if os.path.isdir(path):
        fail(f"{path} is a directory, not a checkpoint file")
    lock = lock_folder(directory)  # held until train() returns or the process dies
    for stale in glob.glob(glob.escape(path) + ".*.tmp") + glob.glob(
        glob.escape(directory) + "/progress.csv.*.tmp"
    ):
        os.remove(
            stale
        )  # half-written by a killed run: with the lock held, no one else writes here
    finish_restart(directory, os.path.basename(path))
    if args.resume and restart_left:
        arrays = resumable(path, args)
    elif not args.resume and (found := earlier_run(path, directory)):
        if not args.restart:
            fail(
                f"{directory} holds a run ({found}): --resume continues it, "
                "--restart starts over and replaces it when the new run first saves"
            )
        staging = os.path.join(directory, RESTART)
        os.makedirs(staging)
        print(
            f"starting over: the run in {directory} is replaced when this one first saves "
            "(until then, stopping leaves it as it was)"
        )
    first_episode = 0 if arrays is None else int(arrays["state/episode"])
    episode, log = first_episode, None
    player = make_player(
        args, first_episode, args.record_every
    )  # before TensorFlow starts its threads
    try:
        model = build_policy(args.hidden, args.seed, args.init)
        optimizer = make_optimizer(model, args.learning_rate, args.decay_rate)
        running_mean, batch = None, []
        if arrays is not None:
            episode, running_mean, batch = restore(arrays, model, optimizer)
            print(
                f"resumed from {path} at episode {episode}, running mean "
                + ("none yet" if running_mean is None else f"{running_mean:f}")
            )
            if changes := settings_changed(arrays, args):
                print("settings changed since the checkpoint: " + ", ".join(changes))
        model.eval()
        print_policy(model)
        gradient_fn = make_gradient_fn(model)
        log = ProgressLog(staging or directory, episode)
        settings = {name: getattr(args, name) for name in SETTINGS}

        def save():
            nonlocal log, staging
            log.summary.flush()  # first: the log may run ahead of the checkpoint, never behind it
            save_checkpoint(
                os.path.join(staging or directory, os.path.basename(path)),
                model,
                optimizer,
                episode,
                running_mean,
                batch,
                settings,
            )
            if staging is None:
                return
            log.close()  # a restart's first save: its files replace the old run's
            open(os.path.join(staging, "saved"), "w").close()
            finish_restart(directory, os.path.basename(path))
            log, staging = ProgressLog(directory, episode), None

        if (
            batch and episode % args.batch_size == 0
        ):  # a whole batch that an older version left pending
            apply_update(model, optimizer, gradient_fn, batch, args.gamma)
            batch = []
        last_episode = None if args.episodes is None else episode + args.episodes
        started, steps_played = time.perf_counter(), 0
        while not stop() and (last_episode is None or episode < last_episode):
            batch_end = (episode // args.batch_size + 1) * args.batch_size
            numbers = range(
                episode, batch_end if last_episode is None else min(batch_end, last_episode)
            )
            for done in player.play(
                [w.numpy() for w in model.trainable_weights], numbers, print, stop
            ):
                running_mean = (
                    done.reward
                    if running_mean is None
                    else running_mean * 0.99 + done.reward * 0.01
                )
                print(
                    f"resetting env. episode reward total was {done.reward:f}. running mean: {running_mean:f}"
                )
                log.add(done, running_mean)
                batch.append(done)
                steps_played += done.steps
                episode += 1
            if (
                episode % args.batch_size == 0 and batch
            ):  # even when told to stop: a batch is never carried over whole
                apply_update(model, optimizer, gradient_fn, batch, args.gamma)
                batch = []
            if (
                episode // args.save_every > (episode - len(numbers)) // args.save_every
                and not stop()
            ):
                save()
                elapsed = time.perf_counter() - started
                print(
                    f"episode {episode}: {(episode - first_episode) / elapsed * 3600:.0f} episodes/hour, "
                    f"{steps_played / elapsed:.0f} agent steps/s, elapsed {datetime.timedelta(seconds=round(elapsed))}, "
                    f"running mean {running_mean:f}; saved {path}"
                )
        if episode > first_episode:  # a stop before the first episode writes nothing over anything
            save()
            print(f"saved checkpoint to {path} (episode {episode})")
    except NonFiniteError as error:
        fail(
            f"training stopped at episode {episode}, nothing saved: {error}; "
            + saved_state(path, args.hidden, naming_it=True),
            status=1,
        )
    except WorkerError as error:  # the episodes played so far are whole: keep them
        save()
        fail(f"training stopped at episode {episode}: {error}; saved {path}", status=1)
    finally:
        player.close()
        if log is not None:
            log.close()
        if staging is not None:  # a restart that never saved: the old run stays as it was
            shutil.rmtree(staging, ignore_errors=True)


# --- Watching --------------------------------------------------------------


def wilson_interval(successes, trials, z=1.96):
    """The 95% Wilson score interval of a share: unlike p +- z*sqrt(p(1-p)/n), it stays within [0, 1] and does
    not shrink to a point at 0 of n or n of n."""
    if trials == 0:
        return 0.0, 1.0
    share, spread = successes / trials, z * z / trials
    centre = (share + spread / 2) / (1 + spread)
    half = z * (share * (1 - share) / trials + spread / (4 * trials)) ** 0.5 / (1 + spread)
    return max(0.0, centre - half), min(1.0, centre + half)


def play(args):
    """--play N: the checkpoint's policy plays N episodes; nothing is learnt."""
    path = checkpoint_path(args)
    arrays = read_checkpoint(path, args.hidden)
    stop = stop_flag()
    weights = [
        arrays[name]
        for name in ("hidden/weights", "hidden/biases", "output/weights", "output/biases")
    ]
    results = []
    player = make_player(args, 0, 1)
    try:
        for episode in player.play(weights, range(args.play), lambda line: None, stop):
            results.append(episode)
            won, lost = episode.points_won, episode.points_lost
            print(f"episode {episode.number}: {won}-{lost} {'won' if won > lost else 'lost'}")
    finally:
        player.close()
    games_won = sum(e.points_won > e.points_lost for e in results)
    low, high = wilson_interval(games_won, len(results))
    won_points, played_points = (
        sum(e.points_won for e in results),
        sum(e.points_won + e.points_lost for e in results),
    )
    print(
        f"played {len(results)} episodes with {path}: won {games_won} of {len(results)} "
        f"({100 * games_won / max(len(results), 1):.0f}%, 95% interval {100 * low:.0f}-{100 * high:.0f}%), "
        f"points won {won_points} of {played_points} ({100 * won_points / max(played_points, 1):.1f}%), "
        f"mean episode reward {np.mean([e.reward for e in results]) if results else 0:f}"
    )


def plot(args):
    """--plot [DIR ...]: sweep.py draws the curves, as it reads progress.csv files without TensorFlow."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import sweep
    except ImportError as error:
        fail(
            f"--plot needs sweep.py beside {os.path.basename(__file__)}: it draws the curves ({error})"
        )
    try:
        return sweep.plot(args.plot or [os.path.dirname(checkpoint_path(args)) or "."])
    except sweep.SweepError as error:
        fail(error)


# --- Command line ----------------------------------------------------------


def checked(kind, test, requirement):
    """An argparse type: kind(text), refused unless test(value) holds."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


positive_int = checked(int, lambda v: v > 0, "> 0")
non_negative_int = checked(int, lambda v: v >= 0, ">= 0")
positive_float = checked(float, lambda v: 0 < v < float("inf"), "> 0")
discount = checked(float, lambda v: 0 < v <= 1, "in (0, 1]")
decay = checked(float, lambda v: 0 <= v < 1, "in [0, 1)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="examples:\n" + __doc__.split("\n\n")[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # the examples as written
    parser.error = lambda message: fail(
        f"{message} (see --help)"
    )  # bad flags: one line, not a usage block

    def flag(*names, **options):  # --help gives a flag's default where it has one
        suffix = "" if options.get("default") in (None, False) else " (default: %(default)s)"
        parser.add_argument(*names, **{**options, "help": options["help"] + suffix})

    flag(
        "--render",
        action="store_true",
        default=render,
        help="show the game in a window (needs a display; implies --envs 1)",
    )
    flag(
        "--resume",
        action="store_true",
        default=resume,
        help="continue training from the checkpoint",
    )
    flag(
        "--restart",
        action="store_true",
        help="start afresh in a folder that holds a run: it is replaced when the new run first saves",
    )
    flag(
        "--episodes",
        type=positive_int,
        help="play this many more episodes, save and exit (default: until Ctrl-C)",
    )
    flag("--batch-size", type=positive_int, default=batch_size, help="episodes per RMSProp update")
    flag(
        "--learning-rate", type=positive_float, default=learning_rate, help="RMSProp learning rate"
    )
    flag("--gamma", type=discount, default=gamma, help="reward discount factor")
    flag("--decay-rate", type=decay, default=decay_rate, help="RMSProp decay of the mean square")
    flag("--hidden", type=positive_int, default=hidden, help="units in the hidden layer")
    flag(
        "--init",
        choices=INITIALISERS,
        default=init,
        help="the weights' initialiser (biases start at 0)",
    )
    flag(
        "--seed",
        type=non_negative_int,
        default=seed,
        help="seeds the weights, the emulator and the action sampling",
    )
    flag(
        "--envs",
        type=positive_int,
        default=envs,
        help="episodes played at once, one process each (1: the plain loop in this process; "
        "default: one per core on Linux, else 1)",
    )
    flag(
        "--model-dir",
        default=model_dir,
        help="where the checkpoint, progress.csv and TensorBoard logs go",
    )
    flag("--model", help=f"checkpoint file to use instead of MODEL_DIR/{model_file_name}.npz")
    flag(
        "--save-every",
        type=positive_int,
        default=save_every,
        help="episodes between checkpoints and progress lines",
    )
    flag(
        "--play",
        type=positive_int,
        metavar="N",
        help="play N episodes with the checkpoint's policy, learn nothing",
    )
    flag(
        "--record",
        metavar="DIR",
        help="save episodes as MP4 videos in DIR (30 frames a second, one per agent step)",
    )
    flag(
        "--record-every",
        type=positive_int,
        default=record_every,
        help="with --record during training: episodes between videos",
    )
    flag(
        "--record-scale",
        type=positive_int,
        default=record_scale,
        help="with --record: draw each pixel as an N x N block (3: 480x630 videos)",
    )
    flag(
        "--record-gif",
        type=positive_int,
        metavar="STEPS",
        help="with --record: GIFs of each episode's first STEPS steps instead of MP4s (about 1.5 MB a step in memory)",
    )
    flag(
        "--plot",
        nargs="*",
        metavar="DIR",
        help="draw learning_curve.png of --model-dir's progress.csv, or of each DIR's in one figure, and print "
        "the shares won every 5,000 episodes and the milestones; train nothing",
    )
    args = parser.parse_args(argv)
    if args.play and args.plot is not None:
        parser.error("--play and --plot are separate commands")
    if args.resume and args.restart:
        parser.error("--resume and --restart are opposites: choose one")
    episodes_at_once = args.play or args.batch_size
    if (
        args.envs is None
    ):  # workers are forked: tested on Linux; macOS's libraries are unsafe to fork
        args.envs = (
            min(len(os.sched_getaffinity(0)), episodes_at_once)
            if sys.platform.startswith("linux")
            else 1
        )
    elif args.envs > 1 and "fork" not in multiprocessing.get_all_start_methods():
        parser.error(
            f"--envs {args.envs} needs worker processes started by fork, which this platform lacks; "
            "use --envs 1"
        )
    elif args.envs > episodes_at_once:
        if not args.play:
            print(
                f"--envs {args.envs} is more than the batch size: {args.batch_size} episodes are played at once"
            )
        args.envs = episodes_at_once
    if (
        args.render
        and sys.platform.startswith("linux")
        and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    ):
        fail(
            "--render needs a display, and none is set (DISPLAY is empty); run without --render, or use --record DIR"
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.record and args.plot is None:
        writable_directory(args.record, "videos")
    try:
        if args.plot is not None:
            plot(args)
        elif args.play:
            play(args)
        else:
            train(args)
    except CheckpointError as error:
        fail(error)
    except WorkerError as error:
        fail(error, status=1)
    except OSError as error:  # the disk, not the program: one line, and what is still safe
        message = f"{error.strerror or error}: {error.filename}" if error.filename else str(error)
        if not (args.play or args.plot):
            message += f" ({saved_state(checkpoint_path(args), args.hidden)})"
        fail(message, status=1)


if __name__ == "__main__":
    main()
