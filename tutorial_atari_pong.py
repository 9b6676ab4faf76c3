"""Deep Reinforcement Learning: Pong from pixels, with TensorLayer 2.

A policy network (80x80 difference frame -> 200 relu units -> 3 logits) learns
to play Pong-v0 by policy gradient, as in Karpathy's "Pong from Pixels" and the
TensorLayer tutorial it was ported to. Every point is logged; every
`batch_size` episodes one RMSProp step is applied to
tl.rein.cross_entropy_reward_loss; checkpoints let a later run resume.

    python tutorial_atari_pong.py                          # train until Ctrl-C
    python tutorial_atari_pong.py --resume                 # carry on where it stopped
    python tutorial_atari_pong.py --restart                # start over, replacing the old run
    python tutorial_atari_pong.py --network cnn            # train the convolutional policy
    python tutorial_atari_pong.py --game Breakout          # another game, in models/breakout
    python tutorial_atari_pong.py --play 5                 # watch the score of the policy
    python tutorial_atari_pong.py --play 1 --record videos # ... or a video of its play
    python tutorial_atari_pong.py --plot                   # draw the learning curve
    python tutorial_atari_pong.py --plot runs/a runs/b     # compare two runs
"""

import argparse
import concurrent.futures
import contextlib
import csv
import dataclasses
import datetime
import functools
import glob
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import sys
import textwrap
import threading
import time
import warnings
import zipfile

# One thread for numpy's matrix products (OpenBLAS): the policy's are small, and with the game's
# processes on every core, a second thread only waits for a core (the CNN trained at 0.64-0.66 of
# the MLP's agent steps per second with one, 0.58 with two; the same numbers either way).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

# Defaults: edit them here, or override them with the flags of the same name.
render = False  # show the game in a window (needs a display)
resume = False  # continue from the checkpoint in model_dir
game = "Pong"  # the Atari game: one of GAMES below
network = "mlp"  # the policy: "mlp", the tutorial's 6400->hidden->3, or "cnn", Mnih et al. 2013's
init = "glorot-uniform"  # the weights' initialiser: one of INITIALISERS below (biases start at 0)
image_size = 80  # frames are cropped and downsampled to image_size x image_size
hidden = 200  # units in the hidden layer (of the "mlp"; the "cnn" has 256)
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

NETWORKS = ("mlp", "cnn")
ACTIONS = (1, 2, 3)  # STOP, UP, DOWN in Pong's action set; label = action - 1
MAX_EPISODE_STEPS = 10000  # gym's -v0 games were cut here (ale-py's registrations have no limit)
CHECKPOINT_FORMAT = 2  # the one read and written (format 1 held Keras RMSprop's state)
UPDATE_CHUNK_STEPS = 16384  # steps per gradient chunk: bounds the update's memory


def import_libraries():
    """TensorFlow, TensorLayer and the emulator, for the commands that train or play: --help, a
    refused flag and --plot do without them and start in a fraction of a second. They greet us
    with C++ logs and deprecation notices; the tutorial's own lines are what a reader should see."""
    global ale_py, csr, gym, tf, tl
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow's import logs through absl, past TF_CPP_MIN_LOG_LEVEL: file descriptor 2 goes to
    # /dev/null meanwhile.
    sys.stderr.flush()
    stderr_fd = os.dup(2)
    devnull_fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull_fd, 2)
    try:
        import ale_py
        import gymnasium as gym
        import tensorflow as tf
        import tensorlayer as tl

        # TensorFlow's CSR sparse matrices multiply ~7x faster than tf.sparse on the CPU.
        from tensorflow.python.ops.linalg.sparse import sparse_csr_matrix_ops as csr
    finally:
        os.dup2(stderr_fd, 2)
        os.close(stderr_fd)
        os.close(devnull_fd)
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    # v0's settings are the tutorial's
    warnings.filterwarnings("ignore", message=r".*-v0 is out of date.*")
    gym.register_envs(ale_py)


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


def plural(count, noun):
    """'1 episode', '2 episodes'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


# --- Games and their frames --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Game:
    """A row of the table of games: what the script knows of each."""

    env: str  # gymnasium's id: -v0, the tutorial's sticky actions and 2-4 frames a step
    rows: tuple  # the play field, screen[top:bottom, left:right], becomes 80 x 80
    columns: tuple
    background: tuple  # palette indices of the field that are not things
    actions: tuple  # the policy's actions, as indices of the game's minimal action set
    restart: str  # where the discounted return restarts: at each "point", or each lost "life"
    changing_background: bool = False  # each frame's commonest colour is background too


def minimal(count):
    """All of a game's minimal action set."""
    return tuple(range(count))


# The seven games of Mnih et al. 2013; fields and colours read off real screens (how-it-works.md).
# Pong's are the tutorial's. BeamRider's field flashes after each hit and Enduro's ground changes
# colour with the time of day: their commonest colour is background too. A game without lives
# (Pong, Enduro) restarts the return at each point, or only at its end.
GAMES = {
    "Pong": Game("Pong-v0", (35, 195), (0, 160), (34, 228), ACTIONS, "point"),
    "BeamRider": Game("BeamRider-v0", (44, 180), (8, 160), (0, 164), minimal(9), "life", True),
    "Breakout": Game("Breakout-v0", (32, 192), (8, 152), (0,), minimal(4), "life"),
    "Enduro": Game("Enduro-v0", (51, 155), (8, 160), (), minimal(9), "life", True),
    "Qbert": Game("Qbert-v0", (14, 198), (8, 152), (0, 148, 184), minimal(6), "life"),
    "Seaquest": Game("Seaquest-v0", (46, 153), (8, 160), (0, 144, 146), minimal(18), "life"),
    "SpaceInvaders": Game("SpaceInvaders-v0", (31, 195), (8, 160), (0,), minimal(6), "life"),
}
BACKGROUND = GAMES["Pong"].background  # Pong's two background colours, as palette indices


def prepro(screen):
    """210x160 screen of palette indices -> 6400 bools: True where something is drawn. The
    tutorial's crop, every 2nd row and column, and its two background reds (144, 109), which are
    these two colours'."""
    field = screen[35:195:2, ::2].copy()  # contiguous, the comparisons run faster
    return ((field != BACKGROUND[0]) & (field != BACKGROUND[1])).ravel()


def blocks(start, stop):
    """Split start:stop into image_size blocks of 1 to 3 pixels (a span of up to 240): each
    block's first, second and last pixel, as three index arrays (the same pixel where the block
    has fewer)."""
    edges = start + np.arange(image_size + 1) * (stop - start) // image_size
    first = edges[:-1]
    last = edges[1:] - 1
    return first, np.minimum(first + 1, last), last


def frame_function(game_name):
    """The game's prepro: Pong's is the tutorial's. In the others, a pixel of the 80 x 80 frame is
    drawn where any pixel of its block of the field is: their shots, 1 pixel wide, would fall
    between every 2nd column."""
    if game_name == "Pong":
        return prepro
    rules = GAMES[game_name]
    (top, bottom), (left, right) = rules.rows, rules.columns
    rows = [row - top for row in blocks(top, bottom)]
    columns = [column - left for column in blocks(left, right)]

    def game_prepro(screen):
        field = screen[top:bottom, left:right]
        colours = rules.background
        if rules.changing_background:
            colours = (*colours, np.bincount(field.ravel(), minlength=256).argmax())
        marks = field != colours[0]
        for colour in colours[1:]:
            marks &= field != colour
        by_rows = marks.take(rows[0], 0) | marks.take(rows[1], 0) | marks.take(rows[2], 0)
        return (
            by_rows.take(columns[0], 1) | by_rows.take(columns[1], 1) | by_rows.take(columns[2], 1)
        ).ravel()

    return game_prepro


def diff_frame(current, previous):
    """What moved, sparsely (~99.7% of a difference frame is 0): the indices (int16) of the pixels
    that changed and the signs (int8) of current - previous."""
    changed = (current != previous).nonzero()[0]
    signs = current[changed].astype(np.int8) * np.int8(2) - np.int8(1)
    return changed.astype(np.int16), signs


# --- Policy ----------------------------------------------------------------

# --init: the tutorial's Xavier/Glorot-uniform, and the usual others (Keras' names); the truncated
# normal is TensorLayer's default.
INITIALISERS = {
    "glorot-uniform": "GlorotUniform",
    "glorot-normal": "GlorotNormal",
    "he-uniform": "HeUniform",
    "he-normal": "HeNormal",
    "truncated-normal": "TruncatedNormal",
}


def initialiser(name, seed_value):
    """The named initialiser of the weights, seeded."""
    if name == "truncated-normal":
        return tf.keras.initializers.TruncatedNormal(stddev=0.05, seed=seed_value)
    return getattr(tf.keras.initializers, INITIALISERS[name])(seed=seed_value)


def build_policy(
    hidden_units, seed_value, init_name=init, input_size=image_size * image_size, n_actions=3
):
    """The tutorial's network: weights from the named initialiser, zero biases; a logit per
    action."""
    inputs = tl.layers.Input([None, input_size], name="input")
    x = tl.layers.Dense(
        hidden_units,
        act=tf.nn.relu,
        W_init=initialiser(init_name, seed_value),
        b_init=tl.initializers.zeros(),
        name="hidden",
    )(inputs)
    outputs = tl.layers.Dense(
        n_actions,
        W_init=initialiser(init_name, seed_value + 1),
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
            f"(mean: {value.mean():<18.12f}, median: {np.median(value):<18.12f}, "
            f"std: {value.std():<18.12f})"
        )
    print(f"  num of params: {sum(int(np.prod(w.shape)) for w in model.trainable_weights)}")


def weight_key(weight):
    """'hidden/weights:0' -> 'hidden/weights', the name a checkpoint stores."""
    return weight.name.split(":")[0]


def action_probabilities(weights, changed, signs):
    """Softmax of the policy for one sparse difference frame, in numpy: the model's layers, summing
    the ~20 rows of the hidden weights that the frame selects instead of multiplying 6400 zeros."""
    hidden_w, hidden_b, output_w, output_b = weights
    activations = hidden_b + signs.astype(np.float32) @ hidden_w.take(changed, axis=0)
    logits = np.maximum(activations, 0, out=activations) @ output_w + output_b
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def sample_action(probs, rng):
    """Draw an action (its index: Pong's STOP, UP or DOWN is 0, 1 or 2) with the policy's
    probabilities: the first whose cumulative probability exceeds a uniform draw."""
    return int(np.count_nonzero(rng.random() >= np.cumsum(probs[:-1])))


# --- The convolutional policy: --network cnn ---------------------------------

# Mnih et al. 2013's network on the tutorial's 80x80 difference frame, as one channel: 16 filters
# 8x8 stride 4 (19x19 windows), 32 filters 4x4 stride 2 (8x8 positions), 256 relu units.
CONV1_FILTERS = 16
CONV2_FILTERS = 32
CNN_HIDDEN = 256
CONV1_TAPS = 8 * 8  # a conv1 window's pixels
CONV2_TAPS = 4 * 4  # a conv2 position's windows
WINDOWS_SIDE = (image_size - 8) // 4 + 1  # conv1's windows: 19 x 19
WINDOWS = WINDOWS_SIDE * WINDOWS_SIDE
POSITIONS_SIDE = (WINDOWS_SIDE - 4) // 2 + 1  # conv2's positions: 8 x 8
POSITIONS = POSITIONS_SIDE * POSITIONS_SIDE
CNN_CHUNK_STEPS = 4096  # the update's chunks: larger ones are no faster here, and hold more memory


def build_cnn_policy(seed_value, init_name=init, n_actions=3):
    """The convolutional network: weights from the named initialiser, zero biases."""
    zeros = tl.initializers.zeros()
    inputs = tl.layers.Input([None, image_size, image_size, 1], name="input")
    x = tl.layers.Conv2d(
        CONV1_FILTERS,
        (8, 8),
        (4, 4),
        act=tf.nn.relu,
        padding="VALID",
        W_init=initialiser(init_name, seed_value),
        b_init=zeros,
        in_channels=1,
        name="conv1",
    )(inputs)
    x = tl.layers.Conv2d(
        CONV2_FILTERS,
        (4, 4),
        (2, 2),
        act=tf.nn.relu,
        padding="VALID",
        W_init=initialiser(init_name, seed_value + 1),
        b_init=zeros,
        in_channels=CONV1_FILTERS,
        name="conv2",
    )(x)
    x = tl.layers.Flatten(name="flatten")(x)
    x = tl.layers.Dense(
        CNN_HIDDEN,
        act=tf.nn.relu,
        W_init=initialiser(init_name, seed_value + 2),
        b_init=zeros,
        name="hidden",
    )(x)
    outputs = tl.layers.Dense(
        n_actions, W_init=initialiser(init_name, seed_value + 3), b_init=zeros, name="output"
    )(x)
    return tl.models.Model(inputs=inputs, outputs=outputs, name="policy")


def windows_of_cells(size, kernel, stride):
    """For a VALID convolution whose kernel is twice its stride, each input cell's windows and
    its tap in each: two (size * size + 1, 4) arrays. A cell in fewer than 4 windows, and the
    spare last cell, name the spare window out * out."""
    out = (size - kernel) // stride + 1
    rows, cols = np.divmod(np.arange(size * size), size)
    windows = []
    taps = []
    for up in (0, 1):
        for left in (0, 1):
            row = rows // stride - up
            col = cols // stride - left
            tap_row = rows - row * stride
            tap_col = cols - col * stride
            inside = (row >= 0) & (row < out) & (col >= 0) & (col < out)
            inside &= (tap_row < kernel) & (tap_col < kernel)
            windows.append(np.where(inside, row * out + col, out * out))
            taps.append(np.where(inside, tap_row * kernel + tap_col, 0))
    spare = [[out * out] * 4], [[0] * 4]
    return np.vstack([np.stack(windows, 1), spare[0]]), np.vstack([np.stack(taps, 1), spare[1]])


def cells_of_windows(size, kernel, stride):
    """For a VALID convolution, each window's input cells in tap order: (out * out, kernel ** 2)."""
    out = (size - kernel) // stride + 1
    ranges = [np.arange(n) for n in (out, out, kernel, kernel)]
    row, col, tap_row, tap_col = np.meshgrid(*ranges, indexing="ij")
    cells = (row * stride + tap_row) * size + col * stride + tap_col
    return cells.reshape(out * out, kernel * kernel)


PIXEL_WINDOWS, PIXEL_TAPS = windows_of_cells(image_size, 8, 4)  # conv1: each pixel's windows
WINDOW_POSITIONS, _ = windows_of_cells(WINDOWS_SIDE, 4, 2)  # conv2: positions reading each window
POSITION_WINDOWS = cells_of_windows(WINDOWS_SIDE, 4, 2)  # conv2: the windows each position reads


def cnn_base(weights):
    """The convolutional policy's activations for a frame without motion (the biases alone):
    conv1's (with a spare row), conv2's and the hidden layer's before its relu."""
    conv1_w, conv1_b, conv2_w, conv2_b, hidden_w, hidden_b = weights[:6]
    conv1 = np.tile(np.maximum(conv1_b, 0), (WINDOWS + 1, 1))
    patches = conv1[POSITION_WINDOWS].reshape(POSITIONS, -1)
    conv2 = np.maximum(patches @ conv2_w.reshape(-1, CONV2_FILTERS) + conv2_b, 0)
    return conv1, conv2, conv2.ravel() @ hidden_w + hidden_b


def distinct(keys, count):
    """The distinct keys (each below count), sorted: np.unique's answer by marking, without its
    sort."""
    marks = np.zeros(count, bool)
    marks[keys] = True
    return np.flatnonzero(marks)


def marked(keys, count):
    """distinct(keys, count), and for every value below count its place among them (-1: not a
    key)."""
    distinct_keys = distinct(keys, count)
    place = np.full(count, -1, np.int32)
    place[distinct_keys] = np.arange(len(distinct_keys), dtype=np.int32)
    return distinct_keys, place


def cnn_action_probabilities(weights, base, changed, signs):
    """Softmax of the convolutional policy for one sparse difference frame, in numpy. A changed
    pixel alters at most 4 of conv1's windows, each of which at most 4 of conv2's positions: only
    those are computed, and the hidden layer adds what they change to its base (cnn_base)."""
    conv1_w, conv1_b, conv2_w, conv2_b, hidden_w, _, output_w, output_b = weights
    conv1_base, conv2_base, hidden_base = base
    changed_windows = PIXEL_WINDOWS[changed]
    windows, place = marked(changed_windows, WINDOWS + 1)  # with the spare window
    patches = np.zeros((len(windows), CONV1_TAPS), np.float32)
    patches[place[changed_windows].ravel(), PIXEL_TAPS[changed].ravel()] = np.repeat(signs, 4)
    conv1 = conv1_base.copy()
    conv1[windows] = np.maximum(patches @ conv1_w.reshape(CONV1_TAPS, -1) + conv1_b, 0)
    positions = distinct(WINDOW_POSITIONS[windows], POSITIONS + 1)
    positions = positions[positions < POSITIONS]
    patches = conv1[POSITION_WINDOWS[positions]].reshape(len(positions), CONV2_TAPS * CONV1_FILTERS)
    conv2 = np.maximum(patches @ conv2_w.reshape(-1, CONV2_FILTERS) + conv2_b, 0)
    change = (conv2 - conv2_base[positions]).ravel()
    rows_changed = hidden_w.reshape(POSITIONS, -1, CNN_HIDDEN)[positions].reshape(-1, CNN_HIDDEN)
    hidden_units = np.maximum(hidden_base + change @ rows_changed, 0)
    logits = hidden_units @ output_w + output_b
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def chunk_layout(indices, signs, n_steps):
    """What the update computes from for a chunk's changed pixels, (step, pixel) and sign: only
    the conv1 windows and conv2 positions that motion touched (~17 and ~10 a step of 361 and 64),
    as every other one holds the still frame's value. Returns conv1's patches as CSR entries (row:
    a touched window, column: its tap) with their values and the number of touched windows; then
    per touched (position, step), in that order, the conv1 rows its 16 windows read (the last, the
    still window's, where untouched), its step, and how many there are at each position."""
    windows = PIXEL_WINDOWS[indices[:, 1]]
    inside = windows < WINDOWS
    window_keys = (indices[:, :1] * WINDOWS + windows)[inside]
    touched_windows, window_rows = marked(window_keys, n_steps * WINDOWS)
    patches = np.zeros(len(touched_windows) * CONV1_TAPS, np.int8)  # a changed pixel: +-1
    entry_keys = window_rows[window_keys] * CONV1_TAPS + PIXEL_TAPS[indices[:, 1]][inside]
    patches[entry_keys] = np.broadcast_to(signs[:, None], windows.shape)[inside]
    entry_keys = np.flatnonzero(patches != 0)  # row-major, as CSR wants; a bool array is faster
    entries = np.stack(np.divmod(entry_keys, CONV1_TAPS), axis=1)
    window_steps, windows = np.divmod(touched_windows, WINDOWS)
    positions = WINDOW_POSITIONS[windows]
    position_keys = (positions * n_steps + window_steps[:, None])[positions < POSITIONS]
    pairs = distinct(position_keys, POSITIONS * n_steps)
    pair_positions, pair_steps = np.divmod(pairs, n_steps)
    read_rows = window_rows[pair_steps[:, None] * WINDOWS + POSITION_WINDOWS[pair_positions]]
    read_rows[read_rows < 0] = len(touched_windows)
    return (
        entries,
        patches[entry_keys].astype(np.float32),
        np.int64(len(touched_windows)),
        read_rows.astype(np.int32),
        pair_steps.astype(np.int32),
        np.bincount(pair_positions, minlength=POSITIONS).astype(np.int32),
    )


def probabilities_function(weights):
    """The policy that chooses the actions, from its weights as numpy arrays: the tutorial's
    network (four arrays) or the convolutional one (eight), whose base is computed once here."""
    if len(weights) == 4:
        return functools.partial(action_probabilities, weights)
    return functools.partial(cnn_action_probabilities, weights, cnn_base(weights))


# --- Returns and the update ------------------------------------------------


def discounted(episode, gamma_value):
    """The rewards discounted back to the steps that led to them, restarting after each of the
    episode's ends: in Pong every point (the tutorial's discount_episode_rewards resets at every
    reward), in the other games each lost life."""
    pieces = np.split(episode.rewards.astype(np.float32), np.flatnonzero(episode.ends[:-1]) + 1)
    return np.concatenate(
        [tl.rein.discount_episode_rewards(piece, gamma_value, mode=1) for piece in pieces]
    )


def batch_returns(episodes, gamma_value):
    """Each step's return (discounted), then zero mean and unit variance over the batch (all-equal
    returns become 0). The undecided last point of a Pong episode cut at MAX_EPISODE_STEPS: its
    steps get 0, no credit either way, and are left out."""
    returns = np.concatenate([discounted(e, gamma_value) for e in episodes])
    last_ends = [np.flatnonzero(e.ends).max(initial=-1) for e in episodes]
    decided = np.concatenate(
        [np.arange(e.steps) <= last for e, last in zip(episodes, last_ends, strict=True)]
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
    """frames @ weights for a CSR matrix of frames, with a gradient for the weights alone
    (frames^T @ upstream, by an explicit transpose: adjoint_a=True sums in an order that varies from
    call to call, so reruns would drift)."""

    @tf.custom_gradient
    def product(w):
        def gradient(upstream):
            transposed = csr.sparse_matrix_transpose(frames, tf.float32)
            return csr.sparse_matrix_mat_mul(transposed, upstream)

        return csr.sparse_matrix_mat_mul(frames, w), gradient

    return product(weights)


def gathered(rows, index):
    """tf.gather(rows, index), whose gradient adds up each row's reads by a sparse product: TF's
    own (an unsorted segment sum) was the update's slowest operation."""

    @tf.custom_gradient
    def gather(table):
        def gradient(upstream):
            reads = tf.size(index, tf.int64)
            read_rows = tf.cast(tf.reshape(index, [-1]), tf.int64)
            selection = csr.sparse_tensor_to_csr_sparse_matrix(
                tf.stack([tf.range(reads), read_rows], axis=1),
                tf.ones([reads]),
                tf.stack([reads, tf.shape(table, tf.int64)[0]]),
            )
            transposed = csr.sparse_matrix_transpose(selection, tf.float32)
            flat = tf.reshape(upstream, [reads, -1])
            return csr.sparse_matrix_mat_mul(transposed, flat)

        return tf.gather(table, index), gradient

    return gather(rows)


def summed_by_step(values, steps, n_steps):
    """tf.math.unsorted_segment_sum(values, steps, n_steps), whose gradient is a plain gather: TF's
    own also masks out negative steps (there are none), which took longer than the gather."""

    @tf.custom_gradient
    def total(rows):
        return tf.math.unsorted_segment_sum(rows, steps, n_steps), lambda up: tf.gather(up, steps)

    return total(values)


def chunk_signature():
    """What a gradient function takes: a chunk of n_steps difference frames and their labels and
    returns."""
    return [
        tf.TensorSpec([None, 2], tf.int64),  # (step, pixel) of each changed pixel
        tf.TensorSpec([None], tf.float32),  # its sign
        tf.TensorSpec([], tf.int64),  # steps in the chunk
        tf.TensorSpec([None], tf.int32),  # each step's action label
        tf.TensorSpec([None], tf.float32),  # each step's return
    ]


def make_gradient_fn(model):
    """A function from chunks (batch_chunks) to their gradients of the tutorial's loss, each by a
    compiled function: the model's layers, with a sparse product in the first."""
    hidden_layer = model.get_layer("hidden")
    output_layer = model.get_layer("output")

    # Autograph is off, here and in make_cnn_gradient_fn: nothing branches on a tensor, and
    # autograph's converted copies of the code, written to TMPDIR, would be left there by a kill -9
    @tf.function(input_signature=chunk_signature(), autograph=False)
    def chunk_gradient(indices, signs, n_steps, labels, returns):
        with tf.GradientTape() as tape:
            dense_shape = tf.stack([n_steps, hidden_layer.W.shape[0]])
            frames = csr.sparse_tensor_to_csr_sparse_matrix(indices, signs, dense_shape)
            hidden_in = sparse_product(frames, hidden_layer.W) + hidden_layer.b
            logits = output_layer(hidden_layer.act(hidden_in))
            loss = tl.rein.cross_entropy_reward_loss(logits, labels, returns)
        return tape.gradient(loss, model.trainable_weights)

    chunk_gradient.get_concrete_function()  # trace now, not during the first update
    return lambda chunks: (chunk_gradient(*chunk) for chunk in chunks)


def make_cnn_gradient_fn(model):
    """The same for the convolutional policy, computed where motion is (chunk_layout): conv1 as a
    sparse product of the touched windows' patches with its filters, conv2 at the touched
    positions, and the hidden layer as the still frame's activations plus what each touched
    position changes, position by position. Equal to the model's layers on the whole frames."""
    conv1, conv2, hidden_layer, output_layer = (
        model.get_layer(name) for name in ("conv1", "conv2", "hidden", "output")
    )

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2], tf.int64),  # conv1's patches: (touched window, tap)
            tf.TensorSpec([None], tf.float32),  # and its value
            tf.TensorSpec([], tf.int64),  # touched windows
            tf.TensorSpec([None, CONV2_TAPS], tf.int32),  # per touched position: its windows' rows
            tf.TensorSpec([None], tf.int32),  # its step
            tf.TensorSpec([POSITIONS], tf.int32),  # touched (position, step)s at each position
            tf.TensorSpec([], tf.int64),  # steps in the chunk
            tf.TensorSpec([None], tf.int32),  # each step's action label
            tf.TensorSpec([None], tf.float32),  # each step's return
        ],
        autograph=False,
    )
    def chunk_gradient(entries, values, n_windows, windows, steps, counts, n_steps, *targets):
        with tf.GradientTape() as tape:
            patches = csr.sparse_tensor_to_csr_sparse_matrix(
                entries, values, tf.stack([n_windows, CONV1_TAPS])
            )
            filters = tf.reshape(conv1.W, [CONV1_TAPS, CONV1_FILTERS])
            still_window = conv1.act(conv1.b)
            moved_windows = conv1.act(sparse_product(patches, filters) + conv1.b)
            window_rows = tf.concat([moved_windows, still_window[None]], axis=0)
            filters = tf.reshape(conv2.W, [CONV2_TAPS * CONV1_FILTERS, CONV2_FILTERS])
            reads = tf.reshape(gathered(window_rows, windows), [-1, CONV2_TAPS * CONV1_FILTERS])
            moved = conv2.act(reads @ filters + conv2.b)
            still = conv2.act(tf.tile(still_window, [CONV2_TAPS])[None] @ filters + conv2.b)
            still_hidden = tf.tile(still, [1, POSITIONS]) @ hidden_layer.W + hidden_layer.b
            # unstack, not [p] 64 times: its gradient stacks 64 slices instead of adding 64
            # zero-padded copies of the whole matrix (the same numbers, 7% faster)
            rows_by_position = tf.unstack(
                tf.reshape(hidden_layer.W, [POSITIONS, CONV2_FILTERS, CNN_HIDDEN])
            )
            changes = tf.split(moved - still, counts, num=POSITIONS)
            products = [
                change @ rows for change, rows in zip(changes, rows_by_position, strict=True)
            ]
            moved_hidden = summed_by_step(tf.concat(products, 0), steps, n_steps)
            logits = output_layer(hidden_layer.act(still_hidden + moved_hidden))
            loss = tl.rein.cross_entropy_reward_loss(logits, *targets)
        return tape.gradient(loss, model.trainable_weights)

    chunk_gradient.get_concrete_function()  # trace now, not during the first update
    return lambda chunks: (chunk_gradient(*laid_out) for laid_out in layouts_ahead(chunks))


def laid_out(chunk):
    """A chunk as the convolutional policy's gradient function takes it: its layout first."""
    indices, signs, n_steps, labels, returns = chunk
    return *chunk_layout(indices, signs, n_steps), n_steps, labels, returns


def layouts_ahead(chunks):
    """The chunks laid out, in turn: while the caller computes with one, a thread lays out the
    next (numpy and TensorFlow let go of Python's lock), which takes ~12% off the update."""
    with concurrent.futures.ThreadPoolExecutor(1) as layouts:
        coming = None
        for chunk in chunks:
            following = layouts.submit(laid_out, chunk)
            if coming is not None:
                yield coming.result()
            coming = following
        if coming is not None:
            yield coming.result()


@dataclasses.dataclass
class Episode:
    """One played episode, compactly: per step the changed pixels (their indices and signs end to
    end for all steps), the action's label, the reward, and whether the return restarts after it.
    """

    number: int
    nnz: np.ndarray  # changed pixels per step, int16
    indices: np.ndarray  # int16, sum(nnz) of them
    signs: np.ndarray  # int8, -1 or 1
    labels: np.ndarray  # int8, the action's index (Pong: action - 1)
    rewards: np.ndarray  # int16 (Pong: -1, 0 or 1)
    ends: np.ndarray  # bool: a point ended (Pong), a life was lost or the episode ended (others)
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
        join("rewards", np.int16),
        join("ends", bool),
    )


def batch_chunks(batch, returns, chunk_steps):
    """The batch in chunks of chunk_steps steps, as the gradient functions take them: the changed
    pixels as (step, pixel) indices and their signs, the steps, labels and returns."""
    row_ends = np.cumsum(batch.nnz, dtype=np.int64)
    for start in range(0, batch.steps, chunk_steps):
        stop = min(start + chunk_steps, batch.steps)
        first_pixel = row_ends[start - 1] if start else 0
        end_pixel = row_ends[stop - 1]
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), batch.nnz[start:stop])
        pixels = batch.indices[first_pixel:end_pixel].astype(np.int64)
        yield (
            np.stack([rows, pixels], axis=1),
            batch.signs[first_pixel:end_pixel].astype(np.float32),
            np.int64(stop - start),
            batch.labels[start:stop].astype(np.int32),
            returns[start:stop].astype(np.float32),
        )


def update_policy(
    model, optimizer, gradient_fn, episodes, gamma_value, chunk_steps=UPDATE_CHUNK_STEPS
):
    """One RMSProp step on the batch. The loss sums over steps, so chunks' gradients add up: exact,
    in bounded memory."""
    batch = concatenate(episodes)
    chunks = batch_chunks(batch, batch_returns(episodes, gamma_value), chunk_steps)
    total = [tf.zeros_like(w) for w in model.trainable_weights]
    for grads in gradient_fn(chunks):
        total = [t + g for t, g in zip(total, grads, strict=True)]
    require_finite(
        total, "the batch's gradient is not finite (NaN or infinity) and was not applied"
    )
    optimizer.apply_gradients(zip(total, model.trainable_weights, strict=True))
    require_finite(
        model.trainable_weights, "the update made the weights non-finite (NaN or infinity)"
    )
    return batch.steps


def make_optimizer(model, learning_rate_value, decay_rate_value):
    """The tutorial's tf.train.RMSPropOptimizer (TensorFlow 1), not Keras' RMSprop: its mean square
    starts at 1, not 0, so the first updates step by about lr * g, not 10 * lr * sign(g)
    (docs/how-it-works.md)."""
    optimizer = tf.compat.v1.train.RMSPropOptimizer(learning_rate_value, decay=decay_rate_value)
    # Its slots appear at the first apply_gradients. A zero gradient creates
    # them without moving any weight; the mean square then goes back to 1.
    optimizer.apply_gradients([(tf.zeros_like(w), w) for w in model.trainable_weights])
    for mean_square in mean_squares(optimizer, model).values():
        mean_square.assign(tf.ones_like(mean_square))
    return optimizer


def mean_squares(optimizer, model):
    """RMSProp's state by checkpoint name: each weight's mean square of its gradient. (Its other
    slot, momentum, holds only the last step: with momentum 0 it never enters the next one.)"""
    return {
        "mean_square/" + weight_key(w): optimizer.get_slot(w, "rms")
        for w in model.trainable_weights
    }


# --- Playing an episode ----------------------------------------------------


def make_env(env_seed, render_mode=None, game_name=game):
    if render_mode == "human":
        # ALE draws through SDL. Its OpenGL path loads Mesa, whose LLVM clashes with the LLVM inside
        # TensorFlow (a segfault); SDL's software renderer needs no GL. The game is silent, so no
        # audio device either.
        os.environ.setdefault("SDL_RENDER_DRIVER", "software")
        os.environ.setdefault("SDL_FRAMEBUFFER_ACCELERATION", "0")
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    # The bare emulator env, without gymnasium's checking wrappers, and with RAM as its observation:
    # 128 bytes, where RGB would be converted every step. prepro reads the screen's palette indices.
    env = gym.make(GAMES[game_name].env, obs_type="ram", render_mode=render_mode).unwrapped
    env.reset(seed=env_seed)  # seeds once: reseeding every episode reloads the ROM (~90 ms)
    return env


def point_line(number, point, seconds, reward):
    """The tutorial's line for a point (it calls it a game); !!!!!!!! when the network won it."""
    cheer = "  !!!!!!!!" if reward > 0 else ""
    return f"episode {number}: game {point} took {seconds:.5f}s, reward: {reward:f}{cheer}"


def play_episode(
    env, game_name, weights, rng, number, say=print, should_stop=lambda: False, video=None
):
    """Play one episode with the policy, until the game ends (in Pong a side has 21 points) or for
    MAX_EPISODE_STEPS steps; return it as an Episode, or None if told to stop part-way. say() gets
    one line per point of Pong."""
    rules = GAMES[game_name]
    prepro_screen = frame_function(game_name)
    probabilities = probabilities_function(weights)
    env.reset()
    screen = env.ale.getScreen()
    previous = prepro_screen(screen)  # the first step sees no motion
    lives = env.ale.lives()
    steps = []
    point = 0
    started = point_started = time.perf_counter()
    terminated = truncated = False
    try:
        if video is not None:  # one frame per observation: the first, then one after each step
            video.add(env.ale.getScreenRGB())
        while not (terminated or truncated or len(steps) == MAX_EPISODE_STEPS):
            if should_stop():
                return None
            current = prepro_screen(screen)
            changed, changed_signs = diff_frame(current, previous)
            previous = current
            label = sample_action(probabilities(changed, changed_signs), rng)
            _, reward, terminated, truncated, info = env.step(rules.actions[label])
            env.ale.getScreen(screen)
            if video is not None:
                video.add(env.ale.getScreenRGB())
            life_lost = info["lives"] < lives
            lives = info["lives"]
            end = reward != 0 if rules.restart == "point" else life_lost or terminated
            steps.append((changed, changed_signs, label, reward, end))
            if rules.restart == "point" and end:
                now = time.perf_counter()
                say(point_line(number, point, now - point_started, reward))
                point += 1
                point_started = now
    finally:
        if video is not None:
            video.close()
    indices, signs, labels, rewards, ends = zip(*steps, strict=True)
    ends = np.array(ends)
    ends[-1] |= rules.restart == "life"  # a cut episode: its last life's rewards count as they are
    return Episode(
        number,
        np.array([len(i) for i in indices], np.int16),
        np.concatenate(indices),
        np.concatenate(signs),
        np.array(labels, np.int8),
        np.array(rewards, np.int16),
        ends,
        time.perf_counter() - started,
    )


def seeds(*entropy):
    """An emulator seed and an action-sampling generator from (seed, first episode, ...): a resumed
    run draws fresh numbers instead of replaying the first run's."""
    sequence = np.random.SeedSequence(list(entropy))
    return int(sequence.generate_state(1)[0]), np.random.default_rng(sequence)


# --- Training --------------------------------------------------------------


def stop_flag():
    """From now on Ctrl-C and SIGTERM only set a flag; returns its test. The loops check it at safe
    points, so a checkpoint is never written half-way through an update."""
    requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: requested.set())
    return requested.is_set


def running_mean_after(running_mean, reward):
    """The tutorial's running mean of the episode reward (the first episode starts it)."""
    return reward if running_mean is None else running_mean * 0.99 + reward * 0.01


class Training:
    """A training run's state: the policy, its optimizer, the episode counter, the running mean,
    the unfinished batch and the log. A --restart's run lives in `staging` until its first save
    replaces the old run with it."""

    def __init__(self, args, path, staging, arrays):
        self.args = args
        self.path = path
        self.directory = os.path.dirname(path) or "."
        self.staging = staging
        self.log = None
        n_actions = len(GAMES[args.game].actions)
        if args.network == "cnn":
            self.model = build_cnn_policy(args.seed, args.init, n_actions)
        else:
            self.model = build_policy(args.hidden, args.seed, args.init, n_actions=n_actions)
        self.optimizer = make_optimizer(self.model, args.learning_rate, args.decay_rate)
        self.episode = 0
        self.running_mean = None
        self.batch = []
        if arrays is not None:
            self.episode, self.running_mean, self.batch = restore(
                arrays, self.model, self.optimizer
            )
            mean = "none yet" if self.running_mean is None else f"{self.running_mean:f}"
            print(f"resumed from {path} at episode {self.episode}, running mean {mean}")
        self.model.eval()
        print_policy(self.model)
        if args.network == "cnn":
            self.gradient_fn = make_cnn_gradient_fn(self.model)
        else:
            self.gradient_fn = make_gradient_fn(self.model)
        self.log = ProgressLog(staging or self.directory, self.episode)

    def weights(self):
        return [w.numpy() for w in self.model.trainable_weights]

    def add(self, episode):
        """A finished episode: its line, the running mean, the log and the batch."""
        self.running_mean = running_mean_after(self.running_mean, episode.reward)
        print(
            f"resetting env. episode reward total was {episode.reward:f}. "
            f"running mean: {self.running_mean:f}"
        )
        self.log.add(episode, self.running_mean)
        self.batch.append(episode)
        self.episode += 1

    def update(self):
        """One RMSProp step on the batch, which then starts afresh."""
        started = time.perf_counter()
        chunk = CNN_CHUNK_STEPS if self.args.network == "cnn" else UPDATE_CHUNK_STEPS
        steps = update_policy(
            self.model, self.optimizer, self.gradient_fn, self.batch, self.args.gamma, chunk
        )
        print(
            f"batch over ({len(self.batch)} episodes, {steps} steps)...... updated parameters "
            f"in {time.perf_counter() - started:.2f}s"
        )
        self.batch = []

    def save(self):
        """The checkpoint; a --restart's first save then replaces the old run's files."""
        self.log.summary.flush()  # first: the log may run ahead of the checkpoint, never behind it
        name = os.path.basename(self.path)
        settings = {setting: getattr(self.args, setting) for setting in SETTINGS}
        if self.args.network != "mlp":  # a checkpoint without it holds the tutorial's network
            settings["network"] = self.args.network
        if self.args.game != "Pong":  # ... and without these, Pong's
            settings["game"] = self.args.game
            settings["actions"] = GAMES[self.args.game].actions
        save_checkpoint(
            os.path.join(self.staging or self.directory, name),
            self.model,
            self.optimizer,
            self.episode,
            self.running_mean,
            self.batch,
            settings,
        )
        if self.staging is None:
            return
        self.log.close()
        open(os.path.join(self.staging, "saved"), "w").close()
        finish_restart(self.directory)
        self.staging = None
        self.log = ProgressLog(self.directory, self.episode)

    def close(self):
        if self.log is not None:
            self.log.close()


def progress_line(training, first_episode, steps_played, elapsed):
    """Every save_every episodes: the speed so far and the running mean."""
    per_hour = (training.episode - first_episode) / elapsed * 3600
    return (
        f"episode {training.episode}: {per_hour:.0f} episodes/hour, "
        f"{steps_played / elapsed:.0f} agent steps/s, "
        f"elapsed {datetime.timedelta(seconds=round(elapsed))}, "
        f"running mean {training.running_mean:f}; saved {training.path}"
    )


def train_loop(training, player, stop):
    """The tutorial's loop: play a batch of episodes with the current policy, update it, and save
    every save_every episodes, until told to stop or --episodes are played."""
    args = training.args
    first_episode = training.episode
    last_episode = None if args.episodes is None else first_episode + args.episodes
    if training.batch and training.episode % args.batch_size == 0:
        training.update()  # a whole batch that an older version left pending
    started = time.perf_counter()
    steps_played = 0
    while not stop() and (last_episode is None or training.episode < last_episode):
        batch_end = (training.episode // args.batch_size + 1) * args.batch_size
        if last_episode is not None:
            batch_end = min(batch_end, last_episode)
        numbers = range(training.episode, batch_end)
        for episode in player.play(training.weights(), numbers, print, stop):
            training.add(episode)
            steps_played += episode.steps
        if training.episode % args.batch_size == 0 and training.batch:
            training.update()  # even when told to stop: a whole batch is never carried over
        saves_before = (training.episode - len(numbers)) // args.save_every
        if training.episode // args.save_every > saves_before and not stop():
            training.save()
            elapsed = time.perf_counter() - started
            print(progress_line(training, first_episode, steps_played, elapsed))
    if training.episode > first_episode:  # a stop before the first episode overwrites nothing
        training.save()
        print(f"saved checkpoint to {training.path} (episode {training.episode})")


def train(args):
    stop = stop_flag()
    path = checkpoint_path(args)
    arrays, staging, lock = claim_folder(args, path)  # the lock is held until train() returns
    first_episode = 0 if arrays is None else int(arrays["state/episode"])
    player = make_player(args, first_episode, args.record_every)  # before TensorFlow's threads
    training = None
    try:
        training = Training(args, path, staging, arrays)
        train_loop(training, player, stop)
    except NonFiniteError as error:
        intact = saved_state(path, args.hidden, naming_it=True)
        episode = training.episode if training else first_episode
        fail(f"training stopped at episode {episode}, nothing saved: {error}; {intact}", status=1)
    except WorkerError as error:  # the episodes played so far are whole: keep them
        training.save()
        fail(f"training stopped at episode {training.episode}: {error}; saved {path}", status=1)
    finally:
        player.close()
        if training is not None:
            training.close()
            staging = training.staging
        if staging is not None:  # a restart that never saved: the old run stays as it was
            shutil.rmtree(staging, ignore_errors=True)


# --- Checkpoints -----------------------------------------------------------

SETTINGS = ("learning_rate", "decay_rate", "gamma", "batch_size", "seed")  # kept as config/NAME
# What --resume takes from the checkpoint unless given: these, and the network's kind and size.
RESUMED_SETTINGS = (*SETTINGS, "network", "hidden")


def checkpoint_arrays(model, optimizer, episode, running_mean, pending, settings):
    """Everything a checkpoint holds, by name: plain numpy arrays, no pickle."""
    hidden_w = model.get_layer("hidden").W
    batch = concatenate(pending)
    arrays = {weight_key(w): w.numpy() for w in model.trainable_weights}
    arrays.update({name: v.numpy() for name, v in mean_squares(optimizer, model).items()})
    arrays.update({f"config/{name}": np.asarray(value) for name, value in settings.items()})
    running_mean_or_nan = np.nan if running_mean is None else running_mean
    arrays.update(
        {
            "state/format": np.int64(CHECKPOINT_FORMAT),
            "state/episode": np.int64(episode),
            "state/running_mean": np.float64(running_mean_or_nan),
            "config/input_size": np.int64(hidden_w.shape[0]),
            "config/hidden": np.int64(hidden_w.shape[1]),
            "pending/steps": np.array([e.steps for e in pending], np.int64),
            "pending/numbers": np.array([e.number for e in pending], np.int64),
            "pending/nnz": batch.nnz,
            "pending/indices": batch.indices,
            "pending/signs": batch.signs,
            "pending/labels": batch.labels,
            "pending/rewards": batch.rewards,
            "pending/ends": batch.ends,
        }
    )
    return arrays


def save_checkpoint(path, model, optimizer, episode, running_mean, pending, settings=None):
    """Write weights, RMSProp state, counters, settings and the unfinished batch to path
    atomically. Non-finite weights are refused: the last good file stays."""
    problem = "the weights are not finite (NaN or infinity) and were not saved"
    require_finite(model.trainable_weights, problem)
    save_arrays(
        path, checkpoint_arrays(model, optimizer, episode, running_mean, pending, settings or {})
    )


def save_arrays(path, arrays):
    """Write arrays to path as an .npz archive atomically: a temporary file, flushed to the disk,
    then os.replace. A kill or a full disk leaves the last file as it was."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"  # per process: nothing two processes write can collide
    try:
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as error:  # a full disk, say: the last checkpoint stays, the torn one goes
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError):  # a failed write names no file: name the checkpoint
            error.filename = path
            error.filename2 = None
        raise


def load_arrays(path):
    """A checkpoint's arrays, read without pickle. A file that is not an .npz archive, or holds
    Python objects, is not one this script wrote: say so, and never suggest unpickling it."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            cut_short = f.read(4) == b"PK\x03\x04"  # how an .npz archive starts, then no end
        if cut_short:  # this script writes whole files or none: a copy that did not finish
            raise CheckpointError(f"{path} is an .npz archive cut short: it cannot be read")
        raise CheckpointError(f"{path} is not a checkpoint this script wrote (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except ValueError:  # an array of Python objects, which only pickle could read
        raise CheckpointError(
            f"{path} is not a checkpoint this script wrote (it holds Python objects)"
        ) from None
    except Exception as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {error})"
        ) from None


def weight_shapes(network_name, hidden_units, input_size=image_size * image_size, n_actions=3):
    """The policy's weights by checkpoint name, in the model's order, with their shapes."""
    if network_name == "cnn":
        return {
            "conv1/filters": (8, 8, 1, CONV1_FILTERS),
            "conv1/biases": (CONV1_FILTERS,),
            "conv2/filters": (4, 4, CONV1_FILTERS, CONV2_FILTERS),
            "conv2/biases": (CONV2_FILTERS,),
            "hidden/weights": (POSITIONS * CONV2_FILTERS, CNN_HIDDEN),
            "hidden/biases": (CNN_HIDDEN,),
            "output/weights": (CNN_HIDDEN, n_actions),
            "output/biases": (n_actions,),
        }
    return {
        "hidden/weights": (input_size, hidden_units),
        "hidden/biases": (hidden_units,),
        "output/weights": (hidden_units, n_actions),
        "output/biases": (n_actions,),
    }


def checkpoint_network(arrays):
    """The network a checkpoint holds: one without config/network holds the tutorial's."""
    return str(arrays["config/network"]) if "config/network" in arrays else "mlp"


def checkpoint_game(arrays):
    """The game a checkpoint's policy plays: one without config/game plays Pong."""
    return str(arrays["config/game"]) if "config/game" in arrays else "Pong"


def check_policy(path, arrays, network_name, game_name):
    """Refuse a checkpoint of another network or game than the run's (None: any), or of a game
    whose actions are no longer the table's."""
    trained = {"network": checkpoint_network(arrays), "game": checkpoint_game(arrays)}
    for flag, wanted in (("network", network_name), ("game", game_name)):
        if wanted is not None and wanted != trained[flag]:
            raise CheckpointError(
                f"{path} holds a --{flag} {trained[flag]} policy, this run has --{flag} {wanted}"
            )
    if trained["game"] not in GAMES:
        raise CheckpointError(f"{path} plays {trained['game']}, a game this script does not know")
    actions = tuple(arrays.get("config/actions", np.array(ACTIONS)).tolist())
    if actions != GAMES[trained["game"]].actions:
        raise CheckpointError(
            f"{path} chooses among {trained['game']}'s actions {actions}, this script among "
            f"{GAMES[trained['game']].actions}"
        )


def read_checkpoint(
    path, hidden_units=None, input_size=image_size * image_size, network_name=None, game_name=None
):
    """Load and check a checkpoint (numpy only, no pickle) for a network of hidden_units (None: the
    checkpoint's own, as --play takes it), the named network and game (None: the checkpoint's
    own). Raises CheckpointError."""
    arrays = load_arrays(path)
    if "state/format" not in arrays:
        raise CheckpointError(f"{path} is not a checkpoint of this script (no 'state/format')")
    if int(arrays["state/format"]) != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {int(arrays['state/format'])}; "
            f"this script reads format {CHECKPOINT_FORMAT} only"
        )
    check_policy(path, arrays, network_name, game_name)
    if hidden_units is None:
        hidden_units = len(arrays.get("hidden/biases", ()))
    n_actions = len(GAMES[checkpoint_game(arrays)].actions)
    shapes = weight_shapes(checkpoint_network(arrays), hidden_units, input_size, n_actions)
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


def pending_episodes(arrays):
    """The unfinished batch a checkpoint holds, split back into its episodes."""
    if len(arrays.get("pending/steps", ())) == 0:
        return []
    step_cuts = np.cumsum(arrays["pending/steps"])[:-1]
    nnz = np.split(arrays["pending/nnz"], step_cuts)
    pixel_cuts = np.cumsum([int(n.sum()) for n in nnz])[:-1]
    indices = np.split(arrays["pending/indices"], pixel_cuts)
    signs = np.split(arrays["pending/signs"], pixel_cuts)
    labels = np.split(arrays["pending/labels"], step_cuts)
    rewards = np.split(arrays["pending/rewards"], step_cuts)
    # Checkpoints from before other games hold Pong's, whose points are its ends.
    ends = np.split(arrays.get("pending/ends", arrays["pending/rewards"] != 0), step_cuts)
    fields = zip(arrays["pending/numbers"], nnz, indices, signs, labels, rewards, ends, strict=True)
    return [Episode(int(number), *rest) for number, *rest in fields]


def restore(arrays, model, optimizer):
    """Assign a read checkpoint; return (episode, running mean, the unfinished batch)."""
    for weight in model.trainable_weights:
        weight.assign(arrays[weight_key(weight)])
    for name, mean_square in mean_squares(optimizer, model).items():
        mean_square.assign(arrays[name])
    running_mean = float(arrays["state/running_mean"])
    running_mean_or_none = None if np.isnan(running_mean) else running_mean
    return int(arrays["state/episode"]), running_mean_or_none, pending_episodes(arrays)


# --- Players: this process or worker processes; videos ---------------------


@dataclasses.dataclass
class Recording:
    """--record: every `every`-th episode as a video in directory, each pixel a scale x scale
    block."""

    directory: str
    every: int
    scale: int
    gif_steps: int | None  # a GIF of each episode's first gif_steps steps instead of an MP4

    def path(self, number):
        name = f"episode-{number:06d}.{'gif' if self.gif_steps else 'mp4'}"
        return os.path.join(self.directory, name) if number % self.every == 0 else None


class Video:
    """One frame per agent step, each pixel a scale x scale block (sharp, no blur): an MP4 at 30
    frames a second, or a GIF, assembled in memory (about 1.5 MB a frame at scale 3) and so of the
    first `limit` frames only."""

    def __init__(self, path, scale, limit=None):
        import imageio.v2 as imageio  # only needed with --record

        self.path = path
        self.scale = scale
        self.limit = limit
        self.frames = 0
        if path.endswith(".gif"):  # Pillow's writer: an exact palette, as Pong has 9 colours
            self.writer = imageio.get_writer(path, duration=30, loop=0)  # ms: GIF counts 1/100 s
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


class LocalPlayer:
    """--envs 1: the plain sequential loop, in this process."""

    def __init__(self, entropy, game_name=game, render_mode=None, recording=None):
        env_seed, self.rng = seeds(*entropy)
        self.env = make_env(env_seed, render_mode, game_name)
        self.game = game_name
        self.recording = recording

    def play(self, weights, numbers, say, should_stop):
        for number in numbers:
            path = self.recording and self.recording.path(number)
            video = path and Video(path, self.recording.scale, self.recording.gif_steps)
            episode = play_episode(
                self.env, self.game, weights, self.rng, number, say, should_stop, video
            )
            if episode is None:
                # An unfinished episode leaves no video (ffmpeg makes the file at the first frame).
                if path and os.path.exists(path):
                    os.remove(path)
                return
            yield episode

    def close(self):
        self.env.close()


def worker_main(connection, trainer_ends, entropy, game_name, recording):
    """A worker process: plays each episode it is sent, by number, with the weights sent with it,
    and sends back point lines and finished episodes. It ends when the trainer has gone, however:
    its next recv or send fails."""
    # Ctrl-C, or a `kill` that reaches the whole group, is the trainer's to handle: it saves, then
    # stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for end in trainer_ends:  # forked copies of the trainer's ends would keep our pipe open
        end.close()

    def send_line(line):
        connection.send(("line", line))

    try:
        player = LocalPlayer(entropy, game_name, None, recording)
        while True:
            number, weights = connection.recv()
            for episode in player.play(weights, [number], send_line, lambda: False):
                connection.send(("episode", episode))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the trainer has gone: nothing left to do
    except Exception as error:  # the trainer says it in one line
        with contextlib.suppress(OSError):
            connection.send(("error", f"{type(error).__name__}: {error}"))


class WorkerPool:
    """--envs K > 1: K worker processes play a batch's episodes concurrently, each whole episode in
    one process, all with the same weights. Worker 0 draws the plain loop's numbers and plays the
    first episode, so that episode is the same whatever --envs is."""

    def __init__(self, count, entropy, game_name=game, recording=None):
        # fork, not spawn: workers start in milliseconds and never touch TensorFlow.
        context = multiprocessing.get_context("fork")
        self.connections = []
        self.processes = []
        self.playing = {}  # connection -> the episode number its worker plays
        self.recording = recording
        for i in range(count):
            ours, theirs = context.Pipe()
            worker_entropy = entropy + (i,) if i else entropy
            process = context.Process(
                target=worker_main,
                daemon=True,
                args=(theirs, self.connections + [ours], worker_entropy, game_name, recording),
            )
            process.start()
            theirs.close()
            self.connections.append(ours)
            self.processes.append(process)

    def receive(self, connection):
        """A worker's next message: ("line", text) or ("episode", Episode)."""
        try:
            kind, payload = connection.recv()
        except EOFError:
            raise WorkerError("an episode worker process died (killed from outside?)") from None
        if kind == "error":
            raise WorkerError(f"an episode worker process failed: {payload}")
        return kind, payload

    def play(self, weights, numbers, say, should_stop):
        """Yield the episodes in order of number, whichever worker finishes first. The log reads as
        if they were played in turn: the oldest unfinished episode's point lines are said as they
        come, later ones' held."""
        todo = list(numbers)
        idle = list(self.connections)
        finished = {}
        held = {}
        for number in numbers:
            for line in held.pop(number, []):
                say(line)
            while number not in finished:
                while todo and idle:
                    connection = idle.pop(0)
                    self.playing[connection] = todo.pop(0)
                    connection.send((self.playing[connection], weights))
                if should_stop():
                    return
                for connection in multiprocessing.connection.wait(list(self.playing), timeout=0.2):
                    kind, payload = self.receive(connection)
                    if kind == "line" and self.playing[connection] == number:
                        say(payload)
                    elif kind == "line":
                        held.setdefault(self.playing[connection], []).append(payload)
                    else:
                        idle.append(connection)
                        finished[self.playing.pop(connection)] = payload
            yield finished.pop(number)

    def close(self):
        for connection, process in zip(self.connections, self.processes, strict=True):
            connection.close()
            process.kill()
            process.join()
        for number in self.playing.values():  # unfinished episodes leave no broken videos
            path = self.recording and self.recording.path(number)
            if path and os.path.exists(path):
                os.remove(path)


def make_player(args, first_episode, record_every_value):
    entropy = (args.seed, first_episode)
    recording = None
    if args.record:
        recording = Recording(args.record, record_every_value, args.record_scale, args.record_gif)
    if args.envs == 1 or args.render:
        return LocalPlayer(entropy, args.game, "human" if args.render else None, recording)
    return WorkerPool(args.envs, entropy, args.game, recording)


# --- The run's folder: checkpoint, progress log, lock ------------------------


def checkpoint_path(args):
    """--model, or the game's file in --model-dir: model_pong.npz, model_breakout.npz, ..."""
    game_name = args.game or "Pong"
    name = model_file_name if game_name == "Pong" else f"model_{game_name.lower()}"
    return args.model or os.path.join(args.model_dir, name + ".npz")


# The agent this project ships for each game it trained (from the script's folder): what --play
# and --plot show before you have trained a run of your own in the default folder.
HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED = {
    "Pong": "models/lr0.00407-decay0.988-he-normal/seed-1/episode-25000.npz",
    "Breakout": "models/breakout-lr0.00407-decay0.988-he-normal/seed-2/model_breakout.npz",
    "SpaceInvaders": "models/spaceinvaders-lr0.00407-decay0.988-he-normal/seed-1/"
    "model_spaceinvaders.npz",
}


def shipped_agent(args, own_run):
    """The checkpoint of the agent this project ships for the game, where --play or --plot finds no
    run of your own (own_run: its checkpoint or log) in the game's default folder; None for --model,
    another folder, or a game with no shipped agent."""
    game_name = args.game or "Pong"
    default_folder = (
        model_dir if game_name == "Pong" else os.path.join(model_dir, game_name.lower())
    )
    if args.model or args.model_dir != default_folder or os.path.exists(own_run):
        return None
    if game_name not in SHIPPED:
        return None
    return from_here(os.path.join(HERE, SHIPPED[game_name]))


def from_here(path):
    """An absolute path as the path from the current folder, where it lies inside it."""
    return os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path


WALL_GAP_SECONDS = 120  # between two episodes' wall times, a gap this long is a stop, not training


def read_progress(path, say_skipped=True):
    """progress.csv's rows that are whole (a hard kill may leave a torn last row, without its line
    end) and well-formed: an episode number, finite numbers, a wall time. One line says how many
    others were skipped."""
    # Bytes that are not UTF-8 make their row malformed.
    with open(path, newline="", errors="replace") as f:
        lines = f.read().splitlines(keepends=True)[1:]
    rows = []
    for line in lines:
        with contextlib.suppress(csv.Error, StopIteration, ValueError):
            row = dict(zip(ProgressLog.FIELDS, next(csv.reader([line])), strict=True))
            datetime.datetime.fromisoformat(row["wall_time"])
            numbers = [float(row[name]) for name in ProgressLog.FIELDS[1:-1]]
            if line.endswith("\n") and int(row["episode"]) >= 0 and np.isfinite(numbers).all():
                rows.append(row)
    if say_skipped and len(lines) > len(rows):
        print(f"{path}: skipped {plural(len(lines) - len(rows), 'torn or malformed row')}")
    return rows


def progress_rows(folder, episodes_wanted=math.inf, say_skipped=False):
    """A folder's progress.csv rows for episodes 0..episodes_wanted-1, each once, in order, up to
    the first missing one (a resume rewrites the file whole); none if there is no file."""
    try:
        rows = read_progress(os.path.join(folder, "progress.csv"), say_skipped)
    except FileNotFoundError:
        return []
    by_episode = {}
    for row in rows:
        by_episode.setdefault(int(row["episode"]), row)
    ordered = []
    while len(ordered) < episodes_wanted and len(ordered) in by_episode:
        ordered.append(by_episode[len(ordered)])
    return ordered


def hours_trained(rows):
    """The hours of training up to each row: the wall-clock between episodes, leaving out the gaps
    of stops."""
    times = [datetime.datetime.fromisoformat(row["wall_time"]).timestamp() for row in rows]
    gaps = np.diff(np.array(times), prepend=times[:1])
    return np.cumsum(np.where((gaps >= 0) & (gaps < WALL_GAP_SECONDS), gaps, 0)) / 3600


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
            # Each episode once, in order; rows past the checkpoint are a run's that died before
            # saving.
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
            for name in self.FIELDS[1:-1]:  # as in the csv
                tf.summary.scalar(f"episode/{name}", float(row[name]))

    def close(self):
        self.file.close()
        self.summary.close()


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
    """One training run per folder: a lock on directory/.lock, which the kernel releases when this
    process ends, however it ends. A POSIX record lock (lockf), because forked workers do not
    inherit it."""
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
            f"another training run (pid {lock.read().strip() or '?'}) is using {directory}: "
            "one run per folder (--play and --plot work beside it)"
        )
    lock.truncate(0)
    print(os.getpid(), file=lock, flush=True)  # for the message of a second run
    return lock


def saved_state(path, hidden_units, naming_it=False):
    """For an error while training: the checkpoint that is still intact, if any."""
    try:
        episode = int(read_checkpoint(path, hidden_units)["state/episode"])
    except CheckpointError as error:
        return str(error)
    named = f"{path} " if naming_it else ""
    return f"the checkpoint {named}of episode {episode} is intact"


RESTART = ".restart"  # a --restart's new run lives in this subfolder until its first save


def finish_restart(directory):
    """Complete a --restart whose first save was under way (it marked its folder 'saved'), or drop
    one that never saved: the old run stays whole."""
    staging = os.path.join(directory, RESTART)
    if not os.path.isdir(staging):
        return
    if os.path.exists(os.path.join(staging, "saved")):
        for name in sorted(set(os.listdir(staging)) - {"saved"}):  # redone until all are done
            new = os.path.join(staging, name)
            old = os.path.join(directory, name)
            if os.path.isdir(new):
                shutil.rmtree(old, ignore_errors=True)
            os.replace(new, old)
    shutil.rmtree(staging)


def earlier_run(path, directory):
    """What the folder holds of an earlier run ('' if nothing): a fresh start never destroys it
    unasked."""
    log = os.path.join(directory, "progress.csv")
    episodes = len(read_progress(log)) if os.path.exists(log) else 0
    found = []
    if os.path.exists(path):
        found.append(f"the checkpoint {path}")
    if episodes:
        found.append(f"{plural(episodes, 'episode')} in {log}")
    return " and ".join(found)


def continuing(path):
    """What --resume would do with an earlier run: continue it, or why it cannot."""
    try:
        read_checkpoint(path)
    except CheckpointError as error:
        return f"--resume cannot continue it ({error}); "
    return "--resume continues it, "


def resumed_settings(arrays, args, given, names):
    """--resume carries on with the run's settings: each of names (args' attributes) whose
    config/NAME the checkpoint holds becomes the checkpoint's value, unless given (the flags the
    command line set, given_flags) holds it. Returns '--flag old -> new' for each given with
    another value."""
    changes = []
    for name in names:
        if "config/" + name not in arrays:
            continue
        trained = arrays["config/" + name].item()
        if name not in given:
            setattr(args, name, trained)
        elif trained != getattr(args, name):
            changes.append(f"{flag_name(name)} {trained} -> {getattr(args, name)}")
    return changes


def resumable(path, args):
    """The checkpoint --resume continues, checked, and the run's settings as it holds them but for
    the flags given, which one line names; one line on stderr if it cannot be continued."""
    hidden_units = args.hidden if "hidden" in args.given else None  # None: the checkpoint's own
    network_name = args.network if "network" in args.given else None
    arrays = read_checkpoint(path, hidden_units, network_name=network_name, game_name=args.game)
    changes = resumed_settings(arrays, args, args.given, RESUMED_SETTINGS)
    if args.network == "cnn" and "hidden" in args.given:
        fail(f"{path} holds a --network cnn policy: --hidden does nothing with it")
    pending = len(arrays.get("pending/steps", []))
    trained_batch = arrays.get("config/batch_size")
    if pending and trained_batch is not None and int(trained_batch) != args.batch_size:
        fail(
            f"{path} holds {plural(pending, 'episode')} of an unfinished batch of "
            f"{int(trained_batch)}: resume with --batch-size {int(trained_batch)} (or without "
            "it), or change it at a batch end"
        )
    if changes:
        print("settings changed since the checkpoint: " + ", ".join(changes))
    return arrays


def claim_folder(args, path):
    """Lock the run's folder and tidy what a killed run left; return the checkpoint to resume
    (None for a fresh start), the staging folder of a --restart (or None) and the lock."""
    directory = os.path.dirname(path) or "."
    restart_left = os.path.isdir(os.path.join(directory, RESTART))  # a kill in a first save
    arrays = resumable(path, args) if args.resume and not restart_left else None
    writable_directory(directory, "the checkpoint and logs")
    if os.path.isdir(path):
        fail(f"{path} is a directory, not a checkpoint file")
    lock = lock_folder(directory)
    # Half-written by a killed run: with the lock held, no one else writes here.
    stale = glob.glob(glob.escape(path) + ".*.tmp")
    stale += glob.glob(glob.escape(directory) + "/progress.csv.*.tmp")
    for temporary in stale:
        os.remove(temporary)
    finish_restart(directory)
    staging = None
    if args.resume and restart_left:
        arrays = resumable(path, args)
    elif not args.resume and (found := earlier_run(path, directory)):
        if not args.restart:
            fail(
                f"{directory} holds a run ({found}): {continuing(path)}"
                "--restart starts over and replaces it when the new run first saves"
            )
        staging = os.path.join(directory, RESTART)
        os.makedirs(staging)
        print(
            f"starting over: the run in {directory} is replaced when this one first saves "
            "(until then, stopping leaves it as it was)"
        )
    return arrays, staging, lock


# --- Watching --------------------------------------------------------------


def wilson_interval(successes, trials, z=1.96):
    """The 95% Wilson score interval of a share: unlike p +- z*sqrt(p(1-p)/n), it stays within
    [0, 1] and does not shrink to a point at 0 of n or n of n."""
    if trials == 0:
        return 0.0, 1.0
    share = successes / trials
    spread = z * z / trials
    centre = (share + spread / 2) / (1 + spread)
    half = z * (share * (1 - share) / trials + spread / (4 * trials)) ** 0.5 / (1 + spread)
    return max(0.0, centre - half), min(1.0, centre + half)


def play_summary(results, path):
    """--play's last line: games won with their 95% interval, points won, the mean reward."""
    played = len(results)
    games_won = sum(e.points_won > e.points_lost for e in results)
    low, high = wilson_interval(games_won, played)
    points_won = sum(e.points_won for e in results)
    points_played = sum(e.points_won + e.points_lost for e in results)
    mean_reward = np.mean([e.reward for e in results]) if results else 0
    return (
        f"played {plural(played, 'episode')} with {path}: "
        f"won {games_won} of {played} ({100 * games_won / max(played, 1):.0f}%, "
        f"95% interval {100 * low:.0f}-{100 * high:.0f}%), "
        f"points won {points_won} of {points_played} "
        f"({100 * points_won / max(points_played, 1):.1f}%), "
        f"mean episode reward {mean_reward:f}"
    )


def mean_interval(scores):
    """The mean score and its 95% interval, by the normal approximation: mean +- 1.96 standard
    errors (None for fewer than two scores)."""
    mean = float(np.mean(scores))
    if len(scores) < 2:
        return mean, None
    half = 1.96 * float(np.std(scores, ddof=1)) / math.sqrt(len(scores))
    return mean, (mean - half, mean + half)


def score_summary(results, path):
    """--play's last line in games other than Pong: the mean score with its 95% interval, the
    lowest and the highest."""
    scores = [e.reward for e in results]
    line = f"played {plural(len(scores), 'episode')} with {path}: "
    if not scores:
        return line + "no score"
    mean, interval = mean_interval(scores)
    between = "one episode: no interval"
    if interval:
        between = f"95% interval {interval[0]:.1f} to {interval[1]:.1f}"
    return (
        line + f"mean score {mean:.1f} ({between}), lowest {min(scores):g}, highest {max(scores):g}"
    )


def play_line(episode, game_name):
    """--play's line for an episode: Pong's score, or another game's."""
    if game_name == "Pong":
        won, lost = episode.points_won, episode.points_lost
        return f"episode {episode.number}: {won}-{lost} {'won' if won > lost else 'lost'}"
    return f"episode {episode.number}: score {episode.reward:g}"


def play(args):
    """--play N: the checkpoint's policy plays N episodes; nothing is learnt."""
    path = checkpoint_path(args)
    if shipped := shipped_agent(args, path):
        print(
            f"{args.model_dir} holds no checkpoint of your own yet: playing the agent this project "
            f"ships, {shipped} (train one to play yours)"
        )
        path = shipped
    arrays = read_checkpoint(path, args.hidden, game_name=args.game)
    args.game = checkpoint_game(arrays)
    network_name = checkpoint_network(arrays)
    if network_name == "cnn" and args.hidden is not None:
        fail(
            f"{path} holds a --network cnn policy, whose hidden layer has {CNN_HIDDEN} units: "
            f"--hidden {args.hidden} does nothing with it"
        )
    stop = stop_flag()
    weights = [arrays[name] for name in weight_shapes(network_name, args.hidden)]
    results = []
    player = make_player(args, 0, 1)
    try:
        for episode in player.play(weights, range(args.play), lambda line: None, stop):
            results.append(episode)
            print(play_line(episode, args.game))
    finally:
        player.close()
    print((play_summary if args.game == "Pong" else score_summary)(results, path))


# --- Learning curves: --plot ------------------------------------------------

# The tutorial's claims, as points won: "about 20%" at 15,000 episodes and
# "about 35%" at 20,000; "after 30,000 episodes it almost never loses".
TUTORIAL_CLAIMS = ((15000, 20), (20000, 35))
ALMOST_NEVER_LOSES = 30000
MILESTONE_EVERY = 5000
NEAR_CEILING = 18  # a running mean near the game's ceiling (+21): DQN's milestone (Dopamine's)
STEP_MARKS = (2, 5, 10, 20, 40, 80)  # million agent steps, to compare runs whose episodes differ


def progress_columns(folder):
    """A model folder's progress.csv as columns of numbers, with the hours of training since
    episode 0."""
    source = os.path.join(folder, "progress.csv")
    try:
        with open(source):  # a missing file is an error here, not a run that has not started
            pass
        rows = progress_rows(folder, say_skipped=True)
    except OSError as error:
        fail(f"cannot read {source} ({error.strerror or error})")
    if not rows:
        fail(f"{source} has no episodes yet")
    names = ("episode", "reward", "running_mean", "points_won", "points_lost", "steps")
    columns = {name: np.array([float(row[name]) for row in rows]) for name in names}
    columns["hours"] = hours_trained(rows)
    columns["agent_steps"] = np.cumsum(columns["steps"]) / 1e6
    columns["game"] = folder_game(folder)
    return columns


def folder_game(folder):
    """The game of a model folder's run, as its checkpoint says (this script's model_GAME.npz or
    dqn_atari_pong.py's dqn_GAME.npz; Pong where there is none)."""
    for pattern in ("model_*.npz", "dqn_*.npz"):
        for path in sorted(glob.glob(os.path.join(glob.escape(folder), pattern))):
            with contextlib.suppress(CheckpointError, KeyError, ValueError):
                return checkpoint_game(load_arrays(path))
    return "Pong"


def up_to(folder, run, column, until):
    """A run's columns up to the episode at which `column` (the x axis) reaches `until`: the run as
    it stood there, so that runs of different lengths are drawn and compared over the same
    stretch."""
    if until is None:
        return run
    kept = int(np.searchsorted(run[column], until, side="right"))
    if not kept:
        fail(f"--until {until:g}: {folder}'s first episode ends beyond it")
    return {name: values[:kept] if name != "game" else values for name, values in run.items()}


def moving_mean(values, window):
    """The mean over each `window` values in a row."""
    return np.convolve(values, np.ones(window), "valid") / window


def print_score_milestones(folder, run, scores, window):
    """For games other than Pong: the mean score over the `window` episodes before each
    5,000-episode mark, and the best `window` episodes in a row."""
    episodes = len(run["episode"])
    steps = run["agent_steps"]
    stretch = plural(window, "episode")
    print(
        f"{folder}: {plural(episodes, 'episode')} ({steps[-1]:.1f} million agent steps) in "
        f"{run['hours'][-1]:.2f} hours of training; the mean score over the {stretch} before each "
        "mark:"
    )
    for mark in [*range(MILESTONE_EVERY, episodes, MILESTONE_EVERY), episodes]:
        print(
            f"  {mark:>6} episodes: {scores[mark - window]:8.2f}, "
            f"{steps[mark - 1]:.1f} million agent steps, {run['hours'][mark - 1]:5.2f} hours"
        )
    at = int(np.argmax(scores))
    print(f"  best {stretch} in a row: {scores[at]:.2f} (episodes {at}-{at + window - 1})")


def shares_won(run, window):
    """Per cent of points and of games won over each `window` episodes in a row."""

    def total(values):
        return np.convolve(values, np.ones(window), "valid")

    won = total(run["points_won"])
    lost = total(run["points_lost"])
    return 100 * won / np.maximum(won + lost, 1), 100 * total(run["reward"] > 0) / window


def crossings(run, level=0):
    """Where the running mean first went above `level` (0: beating the built-in player), and where
    its last stretch above it began: (first, last), episode indexes, None where there is none."""
    above = run["running_mean"] > level
    below = np.flatnonzero(~above)
    first = int(np.argmax(above)) if above.any() else None
    last = int(below[-1]) + 1 if below.size else 0
    return first, (last if last < len(above) else None)


def setting_seeds(folder):
    """A setting's seed-N folders that hold a progress.csv, in the order of N: none for a folder
    that holds a run itself."""
    if os.path.exists(os.path.join(folder, "progress.csv")):
        return []
    logs = glob.glob(os.path.join(glob.escape(folder), "seed-*", "progress.csv"))
    seeds = [os.path.dirname(log) for log in logs]
    seeds = [seed for seed in seeds if re.fullmatch(r"seed-\d+", os.path.basename(seed))]
    return sorted(seeds, key=lambda seed: int(seed.rsplit("-", 1)[1]))


def seed_groups(folders, by_setting=True):
    """The lines of a figure by name: with by_setting, the seed-N folders of one setting (a sweep
    trial's, a shipped setting's) are one group, and any other folder is a run alone. Each is named
    by its path from the folder that holds all the settings (alone, by the setting's name), so
    that the names are the same from any current folder."""
    groups = {}
    settings = set()
    for folder in folders:
        path = os.path.abspath(folder)
        is_seed = re.fullmatch(r"seed-\d+", os.path.basename(path))
        setting = os.path.dirname(path) if is_seed else path
        settings.add(os.path.dirname(setting))
        groups.setdefault(setting if by_setting else path, []).append(folder)
    common = os.path.commonpath(settings)
    return {os.path.relpath(path, common): group for path, group in groups.items()}


def print_milestone_table(run, shares, window):
    """The shares won over the window before each 5,000-episode mark, and over all since the
    mark before."""
    points, games = shares
    episodes = len(run["episode"])
    marks = [*range(MILESTONE_EVERY, episodes, MILESTONE_EVERY), episodes]
    for start, mark in zip([0, *marks], marks, strict=False):
        block = {name: values[start:mark] for name, values in run.items()}
        block_points, block_games = (share[0] for share in shares_won(block, mark - start))
        print(
            f"  {mark:>6} episodes: points won {points[mark - window]:5.1f}%, games won "
            f"{games[mark - window]:5.1f}%, {run['hours'][mark - 1]:5.2f} hours; "
            f"episodes {start}-{mark - 1}: points won {block_points:5.1f}%, "
            f"games won {block_games:5.1f}%"
        )


def print_milestones(folder, run, shares, window):
    """The shares won before each 5,000-episode mark and at each of STEP_MARKS, where the running
    mean crossed 0 and +18, the best stretches of `window`, 100 and 1,000 episodes, and when the
    tutorial's "almost never loses" was first met."""
    points, games = shares
    stretch = plural(window, "episode")
    print(
        f"{folder}: {plural(len(run['episode']), 'episode')} in {run['hours'][-1]:.2f} hours of "
        f"training; over the {stretch} before each mark, and over all since the mark before:"
    )
    print_milestone_table(run, shares, window)
    steps = run["agent_steps"]
    for millions in STEP_MARKS:
        if steps[-1] >= millions and (at := int(np.searchsorted(steps, millions))):
            print(
                f"  {millions:>3} million agent steps (episode {at}, {run['hours'][at]:.2f} h): "
                f"running mean {run['running_mean'][at]:+.2f}, points won "
                f"{points[max(at - window + 1, 0)]:.1f}% over the {stretch} before"
            )
    print_crossings(run)
    for length in sorted({window, 100, 1000}):
        if length <= len(steps):
            print_best_stretch(run, shares if length == window else shares_won(run, length), length)
    # The tutorial's "almost never loses", and how far any stretch of the run has come towards it.
    reached = np.flatnonzero(games >= 90)
    where = "not yet"
    if reached.size:
        end = int(reached[0]) + window - 1
        where = f"first over episodes {end - window + 1}-{end}, {after(run, end)}"
    print(f"  90% of games won over {stretch} in a row: {where}")


def after(run, at):
    """How long a run had trained by the end of episode `at`."""
    return (
        f"after {run['agent_steps'][at]:.1f} million agent steps and {run['hours'][at]:.2f} hours"
    )


def print_crossings(run):
    """Where the running mean first went above 0 (beating the built-in player), where it stayed
    above, and where it first went above NEAR_CEILING."""
    first, last = crossings(run)
    near_ceiling, _ = crossings(run, NEAR_CEILING)
    for label, at in (
        ("running mean first above 0", first),
        ("above 0 from then on", last),
        (f"running mean first above +{NEAR_CEILING}", near_ceiling),
    ):
        where = "not yet"
        if at is not None:
            ago = plural(len(run["episode"]) - at, "episode")
            where = f"episode {at}, {after(run, at)} ({ago} ago)"
        print(f"  {label}: {where}")


def print_best_stretch(run, shares, length):
    """The most games won, points won and the best mean reward over `length` episodes in a row."""
    points, games = shares
    rewards = moving_mean(run["reward"], length)
    best = []
    for name, series, form in (
        ("games won", games, "{:.1f}%"),
        ("points won", points, "{:.1f}%"),
        ("mean reward", rewards, "{:+.2f}"),
    ):
        at = int(np.argmax(series))
        best.append(f"{name} {form.format(series[at])} (episodes {at}-{at + length - 1})")
    print(f"  best {plural(length, 'episode')} in a row: " + ", ".join(best))


SEED_STYLES = ("-", "--", ":", "-.")  # a setting's seeds: thin lines of its colour, in turn
AXES = {"episodes": "episode", "steps": "agent_steps", "hours": "hours"}  # --against: the column
AXIS_LABELS = {
    "episode": "episode",
    "agent_steps": "million agent steps",
    "hours": "hours of training",
}


def draw_group(axes, name, group, runs, lower, window, colour=None, against="episode"):
    """A run alone: a line in each panel. A setting's seeds: each a thin line to its own last
    episode, and their mean, bold, over the episodes that all of them reached; colour: the
    setting's, each seed in a line style of its own, or None for a setting alone in its figure
    (named by the title): each seed in a colour of its own, their mean black. lower: each run's
    series of the bottom panel; against: the x axis, a column of the runs."""
    top, bottom = axes
    alone = len(group) == 1
    prefix = f"{name}, " if colour else ""
    for index, folder in enumerate(group):
        run = runs[folder]
        seed_name = os.path.basename(os.path.normpath(folder)).replace("-", " ")
        label = f"{name if alone else prefix + seed_name} ({len(run['episode']):,} episodes)"
        style = {"linewidth": 2 if alone else 0.8, "color": colour or f"C{index % 10}"}
        if colour and not alone:
            style["linestyle"] = SEED_STYLES[index % len(SEED_STYLES)]
        top.plot(run[against], run["running_mean"], label=label, **style)
        bottom.plot(run[against][window - 1 :], lower[folder], **style)
    if alone:
        return
    length = min(len(runs[folder]["episode"]) for folder in group)
    x = runs[group[0]][against][:length]
    style = {"linewidth": 2.5, "color": colour or "black"}
    mean = np.mean([runs[folder]["running_mean"][:length] for folder in group], axis=0)
    label = f"{prefix}mean of the {len(group)} seeds (episodes 0-{length - 1:,}: all reached them)"
    top.plot(x, mean, label=label, **style)
    lower_mean = np.mean([lower[folder][: length - window + 1] for folder in group], axis=0)
    bottom.plot(x[window - 1 :], lower_mean, **style)


def draw_tutorial_claims(bottom, last_episode):
    """The tutorial's claims as marks named in the legend, not as text that may cross a curve."""
    claims = [(episodes, share) for episodes, share in TUTORIAL_CLAIMS if episodes <= last_episode]
    if claims:
        label = "tutorial: about " + ", ".join(f"{share}% at {n:,}" for n, share in claims)
        bottom.plot(*zip(*claims, strict=True), "k*", markersize=10, label=label + " episodes")
    if last_episode >= ALMOST_NEVER_LOSES:
        label = f'tutorial: "almost never loses" after {ALMOST_NEVER_LOSES:,} episodes'
        bottom.axvline(ALMOST_NEVER_LOSES, color="black", linestyle=":", linewidth=1, label=label)


def plotted_folders(args):
    """The runs --plot draws: each DIR, a setting's folder as its seeds; without DIR, --model-dir's
    run or, where the default folder holds none of your own yet, the shipped agent's setting,
    said in one line."""
    folders = args.plot
    if not folders:
        folder = os.path.dirname(checkpoint_path(args)) or "."
        if shipped := shipped_agent(args, os.path.join(folder, "progress.csv")):
            folder = os.path.dirname(os.path.dirname(shipped))
            print(
                f"{args.model_dir} holds no run of your own yet: drawing the runs "
                f"of the agent this project ships, {folder} (train one to draw yours)"
            )
        folders = [folder]
    return [seed for folder in folders for seed in setting_seeds(folder) or [folder]]


def figure_path(args, folders):
    """Where --plot writes: --output; else learning_curve.png in the folder that holds the runs,
    unless that is a shipped run's folder (one with a README.md, as each of models/'s has; models/
    itself holds yours), whose committed figure stays as it is: then MODEL_DIR/FOLDER.png. With
    the line that says so."""
    common = os.path.commonpath([os.path.abspath(folder) for folder in folders])
    shipped = os.path.exists(os.path.join(common, "README.md"))
    chosen = args.output
    if chosen or not shipped or common == os.path.join(HERE, "models"):
        output = chosen or os.path.join(common, "learning_curve.png")
        return output, f"wrote {output}"
    output = os.path.join(args.model_dir, os.path.basename(common) + ".png")
    kept = from_here(os.path.join(common, "learning_curve.png"))
    return output, f"wrote {output} (the shipped {kept} stays as it is; --output PATH to choose)"


def draw_figure(runs, lower, window, against):
    """The figure of --plot: the running means above, the points won (Pong) or the mean score
    below, a line per run or seed and a setting's mean (episodes only); the legend below them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    game_name = next(iter(runs.values()))["game"]
    figure, axes = plt.subplots(
        2, 1, figsize=(10, 8), sharex=True, height_ratios=[2, 1], layout="constrained"
    )
    top, bottom = axes
    groups = seed_groups(runs, by_setting=against == "episode")
    if len(runs) == 1:  # one run: every episode as a dot behind its mean
        (run,) = runs.values()
        top.plot(run[against], run["reward"], ".", markersize=2, alpha=0.3, label="episode reward")
    for index, (name, group) in enumerate(groups.items()):
        colour = f"C{index % 10}" if len(groups) > 1 else None
        draw_group(axes, name, group, runs, lower, window, colour, against)
    stretch = plural(window, "episode")
    if game_name == "Pong" and against == "episode":
        draw_tutorial_claims(bottom, max(run["episode"][-1] for run in runs.values()))
    if game_name == "Pong":
        top.set(ylim=(-21.5, 21.5), ylabel="running mean of the reward\n(points won - lost)")
        bottom.set(ylim=(0, 100), ylabel=f"% of points won\n(last {stretch})")
        bottom.axhline(50, color="grey", linewidth=0.8)  # a point won as often as lost
        top.axhline(0, color="grey", linewidth=0.8)  # a game won as often as lost
    else:
        top.set(ylabel="running mean of the score")
        bottom.set(ylabel=f"mean score\n(last {stretch})")
    title = f"{game_name} from pixels: " + ", ".join(groups)
    lines = textwrap.wrap(title, 100, break_long_words=False, break_on_hyphens=False)
    top.set_title("\n".join(lines), fontsize="medium")  # long folder names: on two lines
    bottom.set(xlabel=AXIS_LABELS[against])
    # below the panels, where it covers no line; it holds both panels' labelled lines
    figure.legend(loc="outside lower center", ncols=2, fontsize="small")
    return figure


def plot(args):
    """--plot [DIR ...]: the learning curves of model folders of one game in one figure (written
    where figure_path says), and for each a table of how it stood before each milestone. Returns
    the figure."""
    folders = plotted_folders(args)
    column = AXES[args.against]
    runs = {
        folder: up_to(folder, progress_columns(folder), column, args.until) for folder in folders
    }
    game_name = runs[folders[0]]["game"]
    if others := [folder for folder, run in runs.items() if run["game"] != game_name]:
        fail(f"--plot draws runs of one game: {folders[0]} is {game_name}'s, {others[0]} is not")
    output, written = figure_path(args, folders)
    writable_directory(os.path.dirname(output) or ".", "the figure")
    window = max(1, min(1000, min(len(run["episode"]) for run in runs.values()) // 10))
    if game_name == "Pong":
        shares = {folder: shares_won(run, window) for folder, run in runs.items()}
        lower = {folder: share[0] for folder, share in shares.items()}
    else:
        lower = {folder: moving_mean(run["reward"], window) for folder, run in runs.items()}
    for folder, run in runs.items():
        if game_name == "Pong":
            print_milestones(folder, run, shares[folder], window)
        else:
            print_score_milestones(folder, run, lower[folder], window)
    figure = draw_figure(runs, lower, window, column)
    figure.savefig(output, dpi=100)
    print(written)
    return figure


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
png_path = checked(str, lambda v: v.lower().endswith(".png"), "a .png file")


def parser_and_flag(doc):
    """A parser described by a script's docstring (its first line, its last paragraph as the
    examples) whose errors are one line, and flag(name, help, **options), which adds a flag whose
    --help gives its default."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n")[0],
        epilog="examples:\n" + doc.split("\n\n")[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the examples as written
    )
    parser.error = lambda message: fail(f"{message} (see --help)")  # one line, not a usage block

    def flag(name, help, **options):
        default = options.get("default")
        if default not in (None, False):  # --help gives a flag's default where it has one
            help += " (default: %(default)s)"
        parser.add_argument(name, help=help, **options)

    return parser, flag


def make_parser():
    """The flags, each with its default from the block at the top. Three groups below, each a table
    of one statement a flag, in --help's order."""
    parser, flag = parser_and_flag(__doc__)
    training_flags(flag)
    policy_flags(flag)
    output_flags(flag)
    return parser


def switch_flags(flag, render_value, resume_value):
    """The tutorial's two switches, render and resume (their defaults from a defaults block), and
    --restart: dqn_atari_pong.py's too."""
    true = "store_true"
    flag(
        "--render", "show the game in a window (needs a display)", action=true, default=render_value
    )
    flag(
        "--resume",
        "continue training from the checkpoint, at its settings (a flag given changes one)",
        action=true,
        default=resume_value,
    )
    flag(
        "--restart",
        "start afresh in a folder that holds a run (replaced at the first save)",
        action=true,
    )


def training_flags(flag):
    """The tutorial's two switches (render, resume) and a training run's flags: where it starts,
    how long, the update's settings."""
    switch_flags(flag, render, resume)
    flag(
        "--episodes",
        "play this many more episodes, save and exit (default: until Ctrl-C)",
        type=positive_int,
    )
    flag("--batch-size", "episodes per RMSProp update", type=positive_int, default=batch_size)
    flag("--learning-rate", "RMSProp learning rate", type=positive_float, default=learning_rate)
    flag("--gamma", "reward discount factor", type=discount, default=gamma)
    flag("--decay-rate", "RMSProp decay of the mean square", type=decay, default=decay_rate)


def policy_flags(flag):
    """The flags of what is learned and how it plays: the game, the network, the seed, the
    workers, where the run lives."""
    flag(
        "--game",
        "the Atari game; one other than Pong keeps its run in MODEL_DIR/GAME (lower case) "
        "unless --model-dir is given",
        choices=GAMES,
        default=game,
    )
    flag(
        "--network",
        "the policy: the tutorial's mlp or Mnih et al. 2013's cnn",
        choices=NETWORKS,
        default=network,
    )
    flag("--hidden", "units in the hidden layer of the mlp", type=positive_int, default=hidden)
    flag(
        "--init", "the weights' initialiser (biases start at 0)", choices=INITIALISERS, default=init
    )
    flag(
        "--seed",
        "seeds the weights, the emulator and the action sampling",
        type=non_negative_int,
        default=seed,
    )
    flag(
        "--envs",
        "episodes played at once, one process each (1: the plain loop in this "
        "process; default: one per core on Linux, else 1)",
        type=positive_int,
        default=envs,
    )
    flag(
        "--model-dir",
        "where the checkpoint, progress.csv and TensorBoard logs go",
        default=model_dir,
    )
    flag(
        "--model",
        f"checkpoint file to use instead of MODEL_DIR/{model_file_name}.npz (another game's: "
        "MODEL_DIR/model_GAME.npz, GAME in lower case)",
    )
    flag(
        "--save-every",
        "episodes between checkpoints and progress lines",
        type=positive_int,
        default=save_every,
    )


def output_flags(flag):
    """The flags that play, record or plot a checkpoint's runs rather than (or besides) train."""
    flag(
        "--play",
        "play N episodes with the checkpoint's policy, learn nothing",
        type=positive_int,
        metavar="N",
    )
    flag("--record", "save episodes as MP4 videos in DIR (30 frames a second)", metavar="DIR")
    flag(
        "--record-every",
        "with --record during training: episodes between videos",
        type=positive_int,
        default=record_every,
    )
    flag(
        "--record-scale",
        "with --record: draw each pixel as an N x N block (3: 480x630)",
        type=positive_int,
        default=record_scale,
    )
    flag(
        "--record-gif",
        "with --record: GIFs of each episode's first STEPS steps instead of "
        "MP4s (about 1.5 MB a step in memory)",
        type=positive_int,
        metavar="STEPS",
    )
    flag(
        "--plot",
        "draw learning_curve.png of --model-dir's progress.csv (before you train: the shipped "
        "agent's), or of each DIR's in one figure (a setting's DIR: its seed-N folders), and "
        "print the shares won every 5,000 episodes and the milestones; train nothing",
        nargs="*",
        metavar="DIR",
    )
    figure_flags(flag)


def figure_flags(flag):
    """How --plot draws: the x axis, how far along it, where the figure goes. dqn_atari_pong.py's
    too."""
    flag(
        "--against",
        "with --plot: the x axis, episodes, (agent) steps or hours of training; runs compared by "
        "steps or hours are drawn one by one, not as a setting's seeds and their mean",
        choices=AXES,
        default="episodes",
    )
    flag(
        "--until",
        "with --plot: each run up to X on the x axis (episodes, million agent steps or hours), "
        "its milestones as they stood there",
        type=positive_float,
        metavar="X",
    )
    flag(
        "--output",
        "with --plot: write the figure to this .png file (default: learning_curve.png in the "
        "folder of the runs drawn; for the runs this project ships, MODEL_DIR/FOLDER.png)",
        type=png_path,
        metavar="PATH",
    )


# The flags each command uses: another command refuses them rather than ignore them.
PLOT_FLAGS = {"plot", "against", "until", "output"}  # and, without DIR, those that find the run
PLAY_FLAGS = {"play", "render", "seed", "envs", "hidden", "model_dir", "model", "record", "game"}
RECORDING_FLAGS = {"record_scale", "record_gif"}  # with --record, for play and training alike
TRAINING_FLAGS = {"resume", "restart", "episodes", "batch_size", "learning_rate", "gamma"}
TRAINING_FLAGS |= {"decay_rate", "init", "save_every", "record_every", "network"}
TRAINING_FLAGS |= PLAY_FLAGS - {"play"} | RECORDING_FLAGS


def flag_name(dest):
    return "--" + dest.replace("_", "-")


def given_flags(parser, argv=None):
    """The flags the command line set, as argparse's dests, whatever their values (a flag given at
    its default is given): the command line parsed again into a namespace that already holds every
    dest, where argparse fills in no default. Any parser: dqn_atari_pong.py's too."""
    unset = object()
    namespace = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args(argv)), unset))
    parsed = vars(parser.parse_args(argv, namespace))
    return {dest for dest, value in parsed.items() if value is not unset}


def refuse_idle_flags(args, parser):
    """A flag that would do nothing in the command chosen (training, --play or --plot) is refused
    in one line, as a misspelt one is: args.given holds the flags the command line set."""
    given = args.given
    if "play" in given and "plot" in given:
        parser.error("--play and --plot are separate commands")
    if "resume" in given and "restart" in given:
        parser.error("--resume and --restart are opposites: choose one")
    if "plot" in given:
        command = "--plot"
        used = PLOT_FLAGS | (set() if args.plot else {"model_dir", "model", "game"})
    elif "play" in given:
        command = "--play"
        used = PLAY_FLAGS | RECORDING_FLAGS
    else:
        command = "training"
        used = TRAINING_FLAGS
    for dest in given:
        if dest not in used:
            parser.error(f"{flag_name(dest)} does nothing with {command}")
    for dest in given:
        if dest in RECORDING_FLAGS | {"record_every"} and "record" not in given:
            parser.error(f"{flag_name(dest)} does nothing without --record")


def resolve_envs(args, parser):
    """--envs: the number of cores by default, never more than the episodes played at once."""
    episodes_at_once = args.play or args.batch_size
    if (
        args.envs is None
    ):  # workers are forked: tested on Linux; macOS's libraries are unsafe to fork
        on_linux = sys.platform.startswith("linux")
        args.envs = min(len(os.sched_getaffinity(0)), episodes_at_once) if on_linux else 1
    elif args.envs > 1 and "fork" not in multiprocessing.get_all_start_methods():
        parser.error(
            f"--envs {args.envs} needs worker processes started by fork, which this platform "
            "lacks; use --envs 1"
        )
    elif args.envs > episodes_at_once:
        if not args.play:
            at_once = "1 episode is" if args.batch_size == 1 else f"{args.batch_size} episodes are"
            print(f"--envs {args.envs} is more than the batch size: {at_once} played at once")
        args.envs = episodes_at_once


def parse_args(argv=None):
    """The flags, checked; args.given holds those the command line set (given_flags)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    args.given = given = given_flags(parser, argv)
    refuse_idle_flags(args, parser)
    if args.network == "cnn" and "hidden" in given:
        parser.error(
            f"--hidden does nothing with --network cnn (its hidden layer has {CNN_HIDDEN})"
        )
    if args.play and "hidden" not in given:
        args.hidden = None  # the checkpoint's own
    if args.play and "game" not in given:
        args.game = None  # the checkpoint's own
    if args.game not in (None, "Pong") and "model_dir" not in given:
        args.model_dir = os.path.join(args.model_dir, args.game.lower())
    resolve_envs(args, parser)
    has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if args.render and sys.platform.startswith("linux") and not has_display:
        fail(
            "--render needs a display, and none is set (DISPLAY is empty); run without --render, "
            "or use --record DIR"
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    training = args.plot is None and not args.play
    try:
        if args.plot is not None:
            plot(args)
            return
        if args.record:
            writable_directory(args.record, "videos")
        import_libraries()
        if args.play:
            play(args)
        else:
            train(args)
    except CheckpointError as error:
        fail(error)
    except WorkerError as error:
        fail(error, status=1)
    except OSError as error:  # the disk, not the program: one line, and what is still safe
        message = f"{error.strerror or error}: {error.filename}" if error.filename else str(error)
        if training:
            message += f" ({saved_state(checkpoint_path(args), args.hidden)})"
        fail(message, status=1)


if __name__ == "__main__":
    # Ctrl-C while starting up ends the program quietly: nothing to save yet.
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))
    main()
