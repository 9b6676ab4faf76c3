"""Deep Q-learning on Pong from pixels: the algorithm of Mnih et al. 2013, beside the tutorial's.

The tutorial's "What next" points to *Playing Atari with Deep Reinforcement Learning*. This is
that paper's DQN on the tutorial's game: a convolutional network (16 filters 8x8 stride 4, 32
filters 4x4 stride 2, 256 relu units, one Q-value per action) reads the last four grey 84x84
frames and learns by Q-learning from a replay memory, with a target network, rewards clipped to
[-1, 1], the Huber loss and epsilon-greedy play. The games, the run folder and its lock, the
progress log, --plot and the play summaries are tutorial_atari_pong.py's.

    python dqn_atari_pong.py                          # train to 10 million agent steps
    python dqn_atari_pong.py --resume                 # carry on where it stopped
    python dqn_atari_pong.py --input difference       # the tutorial's difference frame instead
    python dqn_atari_pong.py --play 5                 # watch the score of the learnt policy
    python dqn_atari_pong.py --play 1 --record videos # ... or a video of its play
    python dqn_atari_pong.py --plot models/dqn models/pretrained --against steps
"""

import ast
import dataclasses
import datetime
import glob
import os
import shutil
import signal
import sys
import threading
import time

# One core a run: two seeds train side by side on a 2-core machine, and one thread makes the
# numbers the same on every run, which --resume's exactness rests on.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
import cv2  # noqa: E402
import numpy as np  # noqa: E402

import tutorial_atari_pong as pong  # noqa: E402

# Defaults: edit them here, or override them with the flags of the same name.
render = False  # show the game in a window (needs a display)
resume = False  # continue from the checkpoint in model_dir
game = "Pong"  # the Atari game: Pong or another of the paper's seven (tutorial_atari_pong.GAMES)
input_frames = "stack"  # the paper's last 4 grey 84x84 frames, or "difference": the tutorial's
steps = 10_000_000  # train until this many agent steps in all
memory = 100_000  # the replay memory's capacity in transitions (one 84x84 frame each: 706 MB)
learning_starts = 50_000  # transitions in the memory before the first update
batch_size = 32  # transitions per update
optimizer = "adam"  # "adam" (Dopamine's better runs) or "rmsprop" (the paper's)
learning_rate = 1e-4
gamma = 0.99  # discount factor for rewards
train_every = 4  # agent steps between updates
target_every = 1_000  # agent steps between copies of the online network into the target network
epsilon_steps = 250_000  # agent steps over which epsilon falls from 1, once learning has started
epsilon_end = 0.01  # the exploration left after that
play_epsilon = 0.05  # --play's exploration, the paper's evaluation epsilon
init = "glorot-uniform"  # the weights' initialiser (biases start at 0)
model_dir = os.path.join("models", "dqn")
save_every = 250_000  # agent steps between checkpoints (taken at the end of the episode)
seed = 1

INPUTS = {"stack": (4, 84), "difference": (2, pong.image_size)}  # frames per state, their side
ADAM_EPSILON = 1.5e-4  # Dopamine's and Rainbow's: Adam's default 1e-7 divides by ~0 early on
RMSPROP = {"rho": 0.95, "epsilon": 0.01, "centered": True}  # the Nature paper's RMSProp
CHECKPOINT_FORMAT = 1


def import_libraries():
    """The tutorial's import of TensorFlow, TensorLayer and the emulator, quiet; their names
    here."""
    global tf, tl
    pong.import_libraries()
    tf, tl = pong.tf, pong.tl


# --- Frames and states ------------------------------------------------------


def frame_function(game_name, input_name):
    """What the memory keeps of each screen: the paper's grey 84x84 picture of the play field
    (the table's rows and columns, shrunk by area), or the tutorial's 80x80 frame of what is
    drawn, as 0 and 1."""
    rules = pong.GAMES[game_name]
    (top, bottom), (left, right) = rules.rows, rules.columns
    screen = np.empty((210, 160), np.uint8)
    if input_name == "difference":
        prepro = pong.frame_function(game_name)

        def drawn(ale):
            ale.getScreen(screen)
            return prepro(screen).reshape(pong.image_size, pong.image_size).astype(np.uint8)

        return drawn

    def grey(ale):
        ale.getScreenGrayscale(screen)
        field = screen[top:bottom, left:right]
        return cv2.resize(field, (84, 84), interpolation=cv2.INTER_AREA)

    return grey


def network_input(frames, input_name):
    """A batch of states, uint8 (batch, frames, side, side), as the network reads them: the frames
    as channels in [0, 1], or the last minus the one before (the tutorial's difference frame)."""
    values = tf.cast(frames, tf.float32)
    if input_name == "difference":
        return (values[:, 1] - values[:, 0])[..., None]
    return tf.transpose(values / 255.0, [0, 2, 3, 1])


def compiled_input(input_name):
    """network_input in one pass of XLA over a batch, where TensorFlow's graph makes three (cast,
    scale, transpose): a fifth of the update's time, and the same numbers (both multiply by
    1/255, where eager TensorFlow divides by 255)."""
    return tf.function(
        lambda frames: network_input(frames, input_name), autograph=False, jit_compile=True
    )


# --- The replay memory ------------------------------------------------------


class ReplayMemory:
    """The last `capacity` frames, each stored once, and what followed each: the action taken, the
    clipped reward, and whether the game ended. A state is the `history` frames ending at one,
    padded at an episode's start with its first frame; transition i leads from the state ending at
    frame i to the one ending at frame i + 1. An episode's last frame takes a slot of its own."""

    def __init__(self, capacity, history, side):
        self.capacity = capacity
        self.history = history
        self.frames = np.zeros((capacity, side, side), np.uint8)  # touched (resident) as filled
        self.actions = np.zeros(capacity, np.uint8)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminals = np.zeros(capacity, bool)
        self.firsts = np.zeros(capacity, bool)  # the frame starts an episode
        self.acted = np.zeros(capacity, bool)  # an action was taken there: its successor is stored
        self.cursor = 0  # the slot written next
        self.size = 0

    def add(self, frame, first):
        self.frames[self.cursor] = frame
        self.firsts[self.cursor] = first
        self.acted[self.cursor] = False
        self.cursor = (self.cursor + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def step(self, action, reward, terminal, next_frame):
        """The newest frame's transition, and the frame it led to."""
        newest = (self.cursor - 1) % self.capacity
        self.actions[newest] = action
        self.rewards[newest] = reward
        self.terminals[newest] = terminal
        self.add(next_frame, False)
        self.acted[newest] = True

    def frame_slots(self, ends, length):
        """For each slot in ends, the slots of the `length` frames ending there, oldest first;
        those before its episode's first frame are that frame."""
        slots = (ends[:, None] + np.arange(1 - length, 1)) % self.capacity
        for k in range(length - 2, -1, -1):
            starts = self.firsts[slots[:, k + 1]]
            slots[:, k] = np.where(starts, slots[:, k + 1], slots[:, k])
        return slots

    def state(self):
        """The state ending at the newest frame, as a batch of one: what the agent acts on."""
        newest = np.array([(self.cursor - 1) % self.capacity])
        return self.frames[self.frame_slots(newest, self.history)]

    def sampleable(self, slots):
        """Transitions whose states are whole: acted on, and (once the memory has wrapped) not
        reaching back past the oldest frame."""
        if self.size < self.capacity:
            return self.acted[slots]
        return self.acted[slots] & ((slots - self.cursor) % self.capacity >= self.history - 1)

    def sample(self, count, rng):
        """count transitions drawn uniformly: states, actions, rewards, terminals, next states."""
        slots = rng.integers(0, self.size, count)
        while not (whole := self.sampleable(slots)).all():
            slots[~whole] = rng.integers(0, self.size, np.count_nonzero(~whole))
        frames = self.frames[self.frame_slots((slots + 1) % self.capacity, self.history + 1)]
        return (
            frames[:, :-1],
            self.actions[slots].astype(np.int32),
            self.rewards[slots],
            self.terminals[slots].astype(np.float32),
            frames[:, 1:],
        )

    def arrays(self):
        """What a checkpoint keeps: the filled part (no copy) and the counters."""
        fields = ("frames", "actions", "rewards", "terminals", "firsts", "acted")
        filled = {f"memory/{name}": getattr(self, name)[: self.size] for name in fields}
        return {
            **filled,
            "memory/cursor": np.int64(self.cursor),
            "memory/size": np.int64(self.size),
        }

    def load(self, arrays):
        """A checkpoint's memory. A full one's arrays are taken as they are read: no second copy
        of hundreds of MB."""
        self.size = int(arrays["memory/size"])
        self.cursor = int(arrays["memory/cursor"])
        for name in ("frames", "actions", "rewards", "terminals", "firsts", "acted"):
            saved = arrays[f"memory/{name}"]
            if self.size == self.capacity and saved.shape == getattr(self, name).shape:
                setattr(self, name, saved)
            else:
                getattr(self, name)[: self.size] = saved


# --- The Q-network and its update ------------------------------------------


def build_q_network(input_name, n_actions, seed_value, init_name=init):
    """Mnih et al. 2013's network: one Q-value per action; weights from the named initialiser,
    zero biases."""
    history, side = INPUTS[input_name]
    channels = 1 if input_name == "difference" else history
    zeros = tl.initializers.zeros()
    inputs = tl.layers.Input([None, side, side, channels], name="input")
    x = tl.layers.Conv2d(
        16,
        (8, 8),
        (4, 4),
        act=tf.nn.relu,
        padding="VALID",
        W_init=pong.initialiser(init_name, seed_value),
        b_init=zeros,
        in_channels=channels,
        name="conv1",
    )(inputs)
    x = tl.layers.Conv2d(
        32,
        (4, 4),
        (2, 2),
        act=tf.nn.relu,
        padding="VALID",
        W_init=pong.initialiser(init_name, seed_value + 1),
        b_init=zeros,
        in_channels=16,
        name="conv2",
    )(x)
    x = tl.layers.Flatten(name="flatten")(x)
    x = tl.layers.Dense(
        256,
        act=tf.nn.relu,
        W_init=pong.initialiser(init_name, seed_value + 2),
        b_init=zeros,
        name="hidden",
    )(x)
    outputs = tl.layers.Dense(
        n_actions, W_init=pong.initialiser(init_name, seed_value + 3), b_init=zeros, name="output"
    )(x)
    model = tl.models.Model(inputs=inputs, outputs=outputs)  # named by TensorLayer: unique
    model.eval()  # no dropout or batch norm: only TensorLayer's bookkeeping
    return model


def huber(errors):
    """The Huber loss of each error (delta 1): squared near 0, linear beyond, so one surprising
    reward cannot throw the network's weights far."""
    small = tf.minimum(tf.abs(errors), 1.0)
    return 0.5 * small * small + (tf.abs(errors) - small)


def make_update_fn(online, target, optimizer_, gamma_value, input_name):
    """One step of Q-learning on a sampled batch: the target network says what each next state is
    worth (nothing after the game's end); the online network's Q-value of the action taken moves
    towards reward + gamma * that."""

    floats = compiled_input(input_name)

    @tf.function(autograph=False)
    def update(states, actions, rewards, terminals, next_states):
        next_values = tf.reduce_max(target(floats(next_states)), axis=1)
        targets = rewards + gamma_value * (1.0 - terminals) * next_values
        with tf.GradientTape() as tape:
            values = online(floats(states))
            taken = tf.gather(values, actions, batch_dims=1)
            loss = tf.reduce_mean(huber(targets - taken))
        gradients = tape.gradient(loss, online.trainable_weights)
        optimizer_.apply_gradients(zip(gradients, online.trainable_weights, strict=True))
        return loss

    return update


def make_q_fn(online, input_name):
    """The online network's Q-values of one state (a compiled graph: the cost of acting). Called
    as a concrete function, which skips tf.function's matching of arguments to graphs: a third of
    the call's time."""

    @tf.function(autograph=False, jit_compile=True)
    def q_values(state):
        return online(network_input(state, input_name))[0]

    history, side = INPUTS[input_name]
    graph = q_values.get_concrete_function(tf.TensorSpec([1, history, side, side], tf.uint8))
    return lambda state: graph(tf.constant(state)).numpy()


def copy_weights(source, destination):
    for weight, value in zip(destination.trainable_weights, source.trainable_weights, strict=True):
        weight.assign(value)


def make_optimizer(name, learning_rate_value, model):
    """Adam or RMSProp, with its slots made now (a checkpoint's are assigned to them)."""
    if name == "adam":
        optimizer_ = tf.keras.optimizers.Adam(learning_rate_value, epsilon=ADAM_EPSILON)
    else:
        optimizer_ = tf.keras.optimizers.RMSprop(learning_rate_value, **RMSPROP)
    optimizer_.build(model.trainable_weights)
    return optimizer_


def epsilon_at(step, args):
    """Epsilon-greedy's exploration: 1 until learning starts, then falling in a straight line to
    epsilon_end over epsilon_steps agent steps."""
    progress = max(0, step - args.learning_starts) / args.epsilon_steps
    return max(args.epsilon_end, 1.0 - (1.0 - args.epsilon_end) * progress)


def epsilon_greedy(q_fn, state, epsilon, rng, n_actions):
    """A random action with probability epsilon, else the one of the highest Q-value (the
    network is not asked when the draw explores)."""
    if rng.random() < epsilon:
        return int(rng.integers(n_actions))
    return int(np.argmax(q_fn(state)))


# --- Playing an episode -----------------------------------------------------


@dataclasses.dataclass
class EpisodeResult:
    """An episode as the progress log and the play summaries read it."""

    number: int
    reward: float
    points_won: int
    points_lost: int
    steps: int
    seconds: float


def play_episode(
    env, game_name, frame, memory, choose, number, say=print, after_step=None, video=None
):
    """Play one episode, until the game ends or for MAX_EPISODE_STEPS steps, storing each frame
    and transition in memory. choose(state) picks an action's index; after_step() runs after
    each step (the learning). say() gets one line per point of Pong; video, if any, a frame per
    step. Returns an EpisodeResult."""
    actions = pong.GAMES[game_name].actions
    env.reset()
    memory.add(frame(env.ale), first=True)
    rewards = []
    point = 0
    started = point_started = time.perf_counter()
    terminated = truncated = False
    while not (terminated or truncated or len(rewards) == pong.MAX_EPISODE_STEPS):
        if video is not None:
            video.add(env.ale.getScreenRGB())
        label = choose(memory.state())
        _, reward, terminated, truncated, _ = env.step(actions[label])
        memory.step(label, np.clip(reward, -1.0, 1.0), terminated, frame(env.ale))
        rewards.append(reward)
        if after_step is not None:
            after_step()
        if game_name == "Pong" and reward != 0:
            now = time.perf_counter()
            say(pong.point_line(number, point, now - point_started, reward))
            point += 1
            point_started = now
    if video is not None:
        video.add(env.ale.getScreenRGB())
        video.close()
    rewards = np.array(rewards)
    return EpisodeResult(
        number,
        float(rewards.sum()),
        int(np.count_nonzero(rewards > 0)),
        int(np.count_nonzero(rewards < 0)),
        len(rewards),
        time.perf_counter() - started,
    )


# --- Training ---------------------------------------------------------------

# The settings a checkpoint keeps as config/NAME; --resume carries on with them.
SETTINGS = (
    "input",
    "steps",
    "memory",
    "learning_starts",
    "batch_size",
    "optimizer",
    "learning_rate",
    "gamma",
    "train_every",
    "target_every",
    "epsilon_steps",
    "epsilon_end",
    "init",
    "save_every",
    "seed",
)


class Learner:
    """A training run's state: the online and target networks, the optimizer, the replay memory,
    the random generator, the emulator and the counters."""

    def __init__(self, args, arrays=None, training=None):
        self.args = args
        self.n_actions = len(pong.GAMES[args.game].actions)
        self.online = build_q_network(args.input, self.n_actions, args.seed, args.init)
        self.target = build_q_network(args.input, self.n_actions, args.seed, args.init)
        self.frame = frame_function(args.game, args.input)
        self.steps = self.episode = self.updates = 0
        self.running_mean = None
        if arrays is not None:
            restore_weights(self.online, arrays)
            self.steps = int(arrays["state/steps"])
            self.episode = int(arrays["state/episode"])
            self.updates = int(arrays["state/updates"])
            running_mean = float(arrays["state/running_mean"])
            self.running_mean = None if np.isnan(running_mean) else running_mean
        self.env = pong.make_env(0, "human" if args.render else None, args.game)
        self.start_afresh()
        self.exact = False  # resumed with the whole training state
        if training is not None:
            try:
                self.restore_training(training)
                self.exact = True
            except (KeyError, ValueError) as error:  # a file damaged inside: begin from the weights
                print(f"not exact: the training state does not fit ({error}); {AFRESH}")
                self.start_afresh()
        self.update_fn = make_update_fn(
            self.online, self.target, self.optimizer, args.gamma, args.input
        )
        self.q_fn = make_q_fn(self.online, args.input)
        self.losses = []

    def start_afresh(self):
        """What a run begins with, or a resume without its training state: an empty memory, the
        target network a copy of the online one, a new optimizer, generators seeded from (seed,
        episode)."""
        history, side = INPUTS[self.args.input]
        self.memory = ReplayMemory(self.args.memory, history, side)
        copy_weights(self.online, self.target)
        self.optimizer = make_optimizer(self.args.optimizer, self.args.learning_rate, self.online)
        env_seed, self.rng = pong.seeds(self.args.seed, self.episode)
        self.env.reset(seed=env_seed)

    def epsilon(self):
        return epsilon_at(self.steps, self.args)

    def choose(self, state):
        return epsilon_greedy(self.q_fn, state, self.epsilon(), self.rng, self.n_actions)

    def after_step(self):
        """The learning, after each agent step: an update every train_every steps once the
        memory holds learning_starts transitions, and the target network's copy every
        target_every steps."""
        self.steps += 1
        args = self.args
        if self.memory.size >= args.learning_starts and self.steps % args.train_every == 0:
            batch = self.memory.sample(args.batch_size, self.rng)
            self.losses.append(float(self.update_fn(*batch)))
            self.updates += 1
        if self.steps % args.target_every == 0:
            copy_weights(self.online, self.target)

    def play(self, say=print):
        """One training episode; its line and the learning's."""
        number = self.episode
        started = time.perf_counter()
        result = play_episode(
            self.env,
            self.args.game,
            self.frame,
            self.memory,
            self.choose,
            number,
            say,
            self.after_step,
        )
        self.running_mean = pong.running_mean_after(self.running_mean, result.reward)
        self.episode += 1
        say(
            f"resetting env. episode reward total was {result.reward:f}. "
            f"running mean: {self.running_mean:f}"
        )
        loss = f"mean loss {np.mean(self.losses):.5f}" if self.losses else "none yet"
        say(
            f"episode {number} over ({result.steps} steps, {self.steps} in all, epsilon "
            f"{self.epsilon():.3f})...... {len(self.losses)} updates ({loss}) in "
            f"{time.perf_counter() - started:.2f}s"
        )
        self.losses = []
        return result

    def weight_arrays(self):
        """The checkpoint that --play needs and git keeps: the online network, the counters, the
        settings."""
        arrays = {pong.weight_key(w): w.numpy() for w in self.online.trainable_weights}
        settings = {f"config/{name}": np.asarray(getattr(self.args, name)) for name in SETTINGS}
        running_mean = np.nan if self.running_mean is None else self.running_mean
        return {
            **arrays,
            **settings,
            "config/algorithm": np.asarray("dqn"),
            "config/game": np.asarray(self.args.game),
            "config/actions": np.asarray(pong.GAMES[self.args.game].actions),
            "state/format": np.int64(CHECKPOINT_FORMAT),
            "state/steps": np.int64(self.steps),
            "state/episode": np.int64(self.episode),
            "state/updates": np.int64(self.updates),
            "state/epsilon": np.float64(self.epsilon()),
            "state/running_mean": np.float64(running_mean),
        }

    def training_arrays(self):
        """The rest of an exact resume: the target network, the optimizer's state, the random
        generators, the emulator (with its own) and the replay memory (hundreds of MB: never in
        git). Taken between episodes, so no episode is ever cut in two."""
        target = {f"target/{pong.weight_key(w)}": w.numpy() for w in self.target.trainable_weights}
        slots = {
            f"optimizer/{v.name}": v.numpy()
            for v in self.optimizer.variables
            if v.name != "learning_rate"  # a setting: the run's own, as --learning-rate says
        }
        emulator = self.env.ale.cloneState(include_rng=True).serialize()
        return {
            **target,
            **slots,
            **self.memory.arrays(),
            "state/steps": np.int64(self.steps),
            "state/rng": np.asarray(repr(self.rng.bit_generator.state)),
            "emulator/state": np.frombuffer(emulator, np.uint8),
            "emulator/rng": np.asarray(repr(self.env.np_random.bit_generator.state)),
        }

    def restore_training(self, training):
        """An exact resume's target network, optimizer, generators, emulator and memory."""
        for weight in self.target.trainable_weights:
            weight.assign(training[f"target/{pong.weight_key(weight)}"])
        for variable in self.optimizer.variables:
            if variable.name != "learning_rate":
                variable.assign(training[f"optimizer/{variable.name}"])
        self.rng.bit_generator.state = ast.literal_eval(str(training["state/rng"]))
        self.env.ale.restoreState(pong.ale_py.ALEState(training["emulator/state"].tobytes()))
        self.env.np_random.bit_generator.state = ast.literal_eval(str(training["emulator/rng"]))
        self.memory.load(training)

    def close(self):
        self.env.close()


# --- Checkpoints ------------------------------------------------------------

AFRESH = (
    "the memory starts empty, the target network is a copy of the online one, the optimizer and "
    "the random generators start afresh"
)


def checkpoint_path(args):
    """--model, or dqn_GAME.npz (lower case) in --model-dir."""
    return args.model or os.path.join(args.model_dir, f"dqn_{(args.game or game).lower()}.npz")


def training_path(directory, steps_done):
    """The exact resume's file of the checkpoint at steps_done agent steps."""
    return os.path.join(directory, f"training-{steps_done}.npz")


def q_weight_shapes(input_name, n_actions):
    """The network's weights by checkpoint name, in the model's order, with their shapes."""
    history, side = INPUTS[input_name]
    channels = 1 if input_name == "difference" else history
    conv2_side = ((side - 8) // 4 + 1 - 4) // 2 + 1
    return {
        "conv1/filters": (8, 8, channels, 16),
        "conv1/biases": (16,),
        "conv2/filters": (4, 4, 16, 32),
        "conv2/biases": (32,),
        "hidden/weights": (conv2_side * conv2_side * 32, 256),
        "hidden/biases": (256,),
        "output/weights": (256, n_actions),
        "output/biases": (n_actions,),
    }


def read_q_checkpoint(path, game_name=None):
    """Load and check a checkpoint of this script (numpy only, no pickle), of game_name (None: any
    game). Raises CheckpointError."""
    arrays = pong.load_arrays(path)
    if str(arrays.get("config/algorithm", "")) != "dqn":
        raise pong.CheckpointError(
            f"{path} is not a checkpoint of this script (the tutorial's policies play with "
            "tutorial_atari_pong.py --play)"
        )
    try:
        if int(arrays["state/format"]) != CHECKPOINT_FORMAT:
            raise pong.CheckpointError(
                f"{path} has checkpoint format {int(arrays['state/format'])}; this script reads "
                f"format {CHECKPOINT_FORMAT} only"
            )
        trained = str(arrays["config/game"])
        input_name = str(arrays["config/input"])
        actions = tuple(arrays["config/actions"].tolist())
        counters = [arrays[f"state/{name}"] for name in ("steps", "episode", "updates")]
    except (KeyError, ValueError) as error:
        raise pong.CheckpointError(f"{path} is not a checkpoint of this script ({error})") from None
    if game_name is not None and trained != game_name:
        raise pong.CheckpointError(f"{path} plays {trained}, this run has --game {game_name}")
    if trained not in pong.GAMES or actions != pong.GAMES[trained].actions:
        raise pong.CheckpointError(f"{path} plays {trained} with actions this script lacks")
    if input_name not in INPUTS or min(counters) < 0:
        raise pong.CheckpointError(f"{path} is not a checkpoint of this script (bad settings)")
    for name, shape in q_weight_shapes(input_name, len(actions)).items():
        if name not in arrays or arrays[name].shape != shape:
            raise pong.CheckpointError(f"{path} holds no {name} of shape {shape}")
        if not np.isfinite(arrays[name]).all():
            raise pong.CheckpointError(f"{path} holds non-finite values in {name}: unusable")
    return arrays


def restore_weights(model, arrays):
    for weight in model.trainable_weights:
        weight.assign(arrays[pong.weight_key(weight)])


def exact_training(directory, arrays, args):
    """The training state that makes a resume exact, or None with one line saying why not."""
    path = training_path(directory, int(arrays["state/steps"]))
    why = None
    if not os.path.exists(path):
        why = f"no {path} (a checkpoint from git, or its folder was lost)"
    elif int(arrays["config/memory"]) != args.memory:
        why = f"--memory changed from {int(arrays['config/memory'])} to {args.memory}"
    elif str(arrays["config/optimizer"]) != args.optimizer:
        why = f"--optimizer changed from {arrays['config/optimizer']} to {args.optimizer}"
    else:
        try:
            return pong.load_arrays(path)
        except pong.CheckpointError as error:
            why = str(error)
    print(f"not exact: {why}; {AFRESH}")
    return None


def tidy(directory, steps_done):
    """Remove the training states of other checkpoints than the one at steps_done (None: all),
    which a kill between two files of a save can leave."""
    for path in glob.glob(os.path.join(glob.escape(directory), "training-*.npz")):
        if path != training_path(directory, steps_done):
            os.remove(path)


def save(learner, path, staging):
    """The training state first, then the checkpoint (each written whole, then renamed), then the
    older training state goes: a kill at any instant leaves a checkpoint and, unless it came from
    git, its own training state. A --restart's first save then replaces the old run."""
    problem = "the weights are not finite (NaN or infinity) and were not saved"
    pong.require_finite(learner.online.trainable_weights, problem)
    directory = staging or os.path.dirname(path) or "."
    pong.save_arrays(training_path(directory, learner.steps), learner.training_arrays())
    pong.save_arrays(os.path.join(directory, os.path.basename(path)), learner.weight_arrays())
    tidy(directory, learner.steps)
    if staging is not None:
        open(os.path.join(staging, "saved"), "w").close()
        pong.finish_restart(os.path.dirname(path) or ".")
        tidy(os.path.dirname(path) or ".", learner.steps)


# --- The run: its folder, its settings, its loop ------------------------------


def claim_run(args, path):
    """Lock the run's folder and tidy what a killed run left; return the checkpoint to resume
    (None for a fresh start), the staging folder of a --restart (or None) and the lock."""
    directory = os.path.dirname(path) or "."
    restart_left = os.path.isdir(os.path.join(directory, pong.RESTART))
    arrays = None
    if args.resume and not restart_left:
        arrays = read_q_checkpoint(path, args.game)
    pong.writable_directory(directory, "the checkpoint and logs")
    if os.path.isdir(path):
        pong.fail(f"{path} is a directory, not a checkpoint file")
    lock = pong.lock_folder(directory)
    for temporary in glob.glob(os.path.join(glob.escape(directory), "*.tmp")):
        os.remove(temporary)  # half-written by a killed run: with the lock held, no one writes
    pong.finish_restart(directory)
    if args.resume and restart_left:
        arrays = read_q_checkpoint(path, args.game)
    staging = None
    if arrays is not None:
        tidy(directory, int(arrays["state/steps"]))
    elif found := pong.earlier_run(path, directory):
        if not args.restart:
            pong.fail(
                f"{directory} holds a run ({found}): --resume continues it, "
                "--restart starts over and replaces it when the new run first saves"
            )
        staging = os.path.join(directory, pong.RESTART)
        os.makedirs(staging)
        print(
            f"starting over: the run in {directory} is replaced when this one first saves "
            "(until then, stopping leaves it as it was)"
        )
    else:
        tidy(directory, None)
    return arrays, staging, lock


def stop_flag():
    """Ctrl-C or SIGTERM: finish the episode under way, save, exit. A second one: exit at once,
    keeping the last checkpoint."""
    requested = threading.Event()

    def handle(signum, frame):
        if requested.is_set():
            raise SystemExit(130)
        requested.set()
        print("stopping: the episode under way is finished and saved (again: stop at once)")

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)
    return requested.is_set


def progress_line(learner, first_steps, elapsed, path):
    """Every save: the speed so far and where the run stands."""
    return (
        f"step {learner.steps}: episode {learner.episode}, epsilon {learner.epsilon():.3f}, "
        f"{(learner.steps - first_steps) / elapsed:.0f} agent steps/s, "
        f"elapsed {datetime.timedelta(seconds=round(elapsed))}, "
        f"running mean {learner.running_mean:f}; saved {path}"
    )


def train_loop(learner, log, path, staging, stop):
    """Play episodes, learning after every step, until --steps agent steps in all (the episode
    under way is finished) or told to stop; save every save_every agent steps, and at the end."""
    args = learner.args
    first_steps = learner.steps
    started = time.perf_counter()
    while learner.steps < args.steps and not stop():
        saves_before = learner.steps // args.save_every
        log.add(learner.play(), learner.running_mean)
        if learner.steps // args.save_every > saves_before and learner.steps < args.steps:
            log = save_and_log(learner, log, path, staging)
            staging = None
            elapsed = time.perf_counter() - started
            print(progress_line(learner, first_steps, elapsed, path))
    if learner.steps > first_steps:  # a stop before the first episode overwrites nothing
        log = save_and_log(learner, log, path, staging)
        staging = None
        print(f"saved checkpoint to {path} (step {learner.steps}, episode {learner.episode})")
    return log, staging


def save_and_log(learner, log, path, staging):
    """A save; the log follows a --restart's files to the run's folder. Returns the log."""
    log.summary.flush()  # first: the log may run ahead of the checkpoint, never behind it
    save(learner, path, staging)
    if staging is None:
        return log
    log.close()
    return pong.ProgressLog(os.path.dirname(path) or ".", learner.episode)


def train(args, given):
    stop = stop_flag()
    path = checkpoint_path(args)
    arrays, staging, lock = claim_run(args, path)  # the lock is held until train() returns
    learner = log = None
    try:
        if arrays is not None:
            if changes := pong.resumed_settings(arrays, args, given, SETTINGS):
                print("settings changed since the checkpoint: " + ", ".join(changes))
            check_settings(args)
            if arrays["state/steps"] >= args.steps:
                print(f"{path} is at step {int(arrays['state/steps'])}: --steps {args.steps} done")
                return
            directory = os.path.dirname(path) or "."
            learner = Learner(args, arrays, exact_training(directory, arrays, args))
            exactly = " (exactly: memory, target, optimizer, generators)" if learner.exact else ""
            print(
                f"resumed from {path} at step {learner.steps}, episode {learner.episode}{exactly}"
            )
        else:
            learner = Learner(args)
        pong.print_policy(learner.online)
        log = pong.ProgressLog(staging or os.path.dirname(path) or ".", learner.episode)
        log, staging = train_loop(learner, log, path, staging, stop)
    except pong.NonFiniteError as error:
        pong.fail(f"training stopped at step {learner.steps}, nothing saved: {error}", status=1)
    finally:
        if log is not None:
            log.close()
        if learner is not None:
            learner.close()
        if staging is not None:  # a restart that never saved: the old run stays as it was
            shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            lock.close()


# --- Watching: --play -------------------------------------------------------


SHIPPED = os.path.join(pong.HERE, "models", "dqn-pong")  # this project's DQN runs, seed-N inside


def own_or_shipped(args):
    """The run --play and --plot use: yours in --model-dir, or where the default folder holds none
    of yours yet, the one this project ships (seed 1's checkpoint, both seeds' curves), said in
    one line."""
    path = checkpoint_path(args)
    own = os.path.exists(path) or os.path.exists(os.path.join(args.model_dir, "progress.csv"))
    if own or args.model or args.model_dir != model_dir or (args.game or game) != "Pong":
        return path
    shipped = pong.from_here(os.path.join(SHIPPED, "seed-1", os.path.basename(path)))
    print(f"{args.model_dir} holds no run of your own yet: using this project's, {shipped}")
    return shipped


def play(args):
    """--play N: the checkpoint's network plays N episodes epsilon-greedily (--play-epsilon);
    nothing is learnt or saved."""
    path = own_or_shipped(args)
    arrays = read_q_checkpoint(path, args.game)
    args.game = str(arrays["config/game"])
    input_name = str(arrays["config/input"])
    n_actions = len(pong.GAMES[args.game].actions)
    online = build_q_network(input_name, n_actions, 0)
    restore_weights(online, arrays)
    q_fn = make_q_fn(online, input_name)
    env_seed, rng = pong.seeds(args.seed)
    env = pong.make_env(env_seed, "human" if args.render else None, args.game)
    history, side = INPUTS[input_name]
    frames = ReplayMemory(history + 1, history, side)  # only the frames of the state
    frame = frame_function(args.game, input_name)
    recording = None
    if args.record:
        recording = pong.Recording(args.record, 1, args.record_scale, args.record_gif)
    stop = stop_flag()
    results = []

    def choose(state):
        return epsilon_greedy(q_fn, state, args.play_epsilon, rng, n_actions)

    try:
        for number in range(args.play):
            if stop():
                break
            video = recording and pong.Video(
                recording.path(number), recording.scale, recording.gif_steps
            )
            result = play_episode(
                env, args.game, frame, frames, choose, number, lambda line: None, video=video
            )
            results.append(result)
            print(pong.play_line(result, args.game))
    finally:
        env.close()
    summary = pong.play_summary if args.game == "Pong" else pong.score_summary
    print(summary(results, path))


# --- Command line -----------------------------------------------------------

probability = pong.checked(float, lambda v: 0 <= v <= 1, "in [0, 1]")


def make_parser():
    """The flags, each with its default from the block at the top. Four groups below, each a table
    of one statement a flag, in --help's order."""
    parser, flag = pong.parser_and_flag(__doc__)
    game_flags(flag)
    learning_flags(flag)
    run_flags(flag)
    play_flags(flag)
    return parser


def game_flags(flag):
    """What is played, on which input, and for how long."""
    count = pong.positive_int
    pong.switch_flags(flag, render, resume)
    flag(
        "--game",
        "the Atari game; one other than Pong keeps its run in MODEL_DIR/GAME (lower case) unless "
        "--model-dir is given",
        choices=pong.GAMES,
        default=game,
    )
    flag(
        "--input",
        "stack: the last 4 grey 84x84 frames; difference: the tutorial's 80x80 difference frame",
        choices=INPUTS,
        default=input_frames,
    )
    flag("--steps", "train until this many agent steps in all", type=count, default=steps)


def learning_flags(flag):
    """The algorithm's settings."""
    count = pong.positive_int
    flag("--memory", "replay memory capacity, in transitions", type=count, default=memory)
    flag(
        "--learning-starts",
        "transitions in memory before the first update",
        type=count,
        default=learning_starts,
    )
    flag("--batch-size", "transitions per update", type=count, default=batch_size)
    flag("--optimizer", "the update's optimizer", choices=("adam", "rmsprop"), default=optimizer)
    flag(
        "--learning-rate",
        "the optimizer's learning rate",
        type=pong.positive_float,
        default=learning_rate,
    )
    flag("--gamma", "reward discount factor", type=pong.discount, default=gamma)
    flag("--train-every", "agent steps between updates", type=count, default=train_every)
    flag(
        "--target-every",
        "agent steps between target network copies",
        type=count,
        default=target_every,
    )
    flag(
        "--epsilon-steps",
        "agent steps over which epsilon falls from 1 once learning starts",
        type=count,
        default=epsilon_steps,
    )
    flag("--epsilon-end", "epsilon after that", type=probability, default=epsilon_end)
    flag(
        "--init",
        "the weights' initialiser (biases start at 0)",
        choices=pong.INITIALISERS,
        default=init,
    )


def run_flags(flag):
    """The run: its seed, its folder, its checkpoints."""
    count = pong.positive_int
    flag(
        "--seed",
        "seeds the weights, the emulator and the exploration",
        type=pong.non_negative_int,
        default=seed,
    )
    flag(
        "--model-dir",
        "where the checkpoint, progress.csv and TensorBoard logs go",
        default=model_dir,
    )
    flag("--model", "checkpoint file to use instead of MODEL_DIR/dqn_GAME.npz")
    flag("--save-every", "agent steps between checkpoints", type=count, default=save_every)


def play_flags(flag):
    """--play, --record and --plot."""
    count = pong.positive_int
    flag(
        "--play",
        "play N episodes with the checkpoint's network, learn nothing",
        type=count,
        metavar="N",
    )
    flag(
        "--play-epsilon",
        "with --play: the chance of a random action",
        type=probability,
        default=play_epsilon,
    )
    flag("--record", "with --play: save episodes as MP4 videos in DIR", metavar="DIR")
    flag(
        "--record-scale",
        "with --record: draw each pixel as an N x N block",
        type=count,
        default=pong.record_scale,
    )
    flag(
        "--record-gif",
        "with --record: GIFs of each episode's first STEPS steps instead",
        type=count,
        metavar="STEPS",
    )
    flag(
        "--plot",
        "draw the learning curves of --model-dir's run, or of each DIR's (a setting's folder: "
        "its seed-N runs; DQN and policy-gradient runs alike), and print their milestones; "
        "train nothing",
        nargs="*",
        metavar="DIR",
    )
    pong.figure_flags(flag)


# The flags each command uses: another command refuses them rather than ignore them.
PLAY_FLAGS = {"play", "play_epsilon", "render", "seed", "model_dir", "model", "game", "record"}
PLAY_FLAGS |= {"record_scale", "record_gif"}
TRAINING_FLAGS = {"render", "resume", "restart", "game", "seed", "model_dir", "model"}
TRAINING_FLAGS |= {"init", "save_every", *SETTINGS}


def check_settings(args):
    """The settings that only go together: one line if they do not."""
    if args.batch_size > args.learning_starts:
        pong.fail("--learning-starts must be at least --batch-size (see --help)")
    if args.learning_starts > args.memory:
        pong.fail("--learning-starts must be at most --memory: updates would never start")
    if args.memory < 2 * INPUTS[args.input][0]:  # room for whole states to sample once it wraps
        pong.fail(
            f"--memory must be at least {2 * INPUTS[args.input][0]} with --input {args.input}"
        )


def parse_args(argv=None):
    """The flags, checked; returns them and the names of those the command line gave."""
    parser = make_parser()
    args = parser.parse_args(argv)
    given = pong.given_flags(parser, argv)
    if "play" in given and "plot" in given:
        parser.error("--play and --plot are separate commands")
    if "resume" in given and "restart" in given:
        parser.error("--resume and --restart are opposites: choose one")
    command, used = "training", TRAINING_FLAGS
    if "plot" in given:
        command, used = "--plot", pong.PLOT_FLAGS | {"model_dir", "model", "game"}
    elif "play" in given:
        command, used = "--play", PLAY_FLAGS
    for name in sorted(given - used):
        parser.error(f"{pong.flag_name(name)} does nothing with {command}")
    for name in sorted(given & {"record_scale", "record_gif"}):
        if "record" not in given:
            parser.error(f"{pong.flag_name(name)} does nothing without --record")
    if args.play and "game" not in given:
        args.game = None  # the checkpoint's own
    if args.game not in (None, "Pong") and "model_dir" not in given:  # as the tutorial's runs
        args.model_dir = os.path.join(args.model_dir, args.game.lower())
    if not args.play and not args.resume:  # a resume checks them once its settings are known
        check_settings(args)
    has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if args.render and sys.platform.startswith("linux") and not has_display:
        pong.fail("--render needs a display, and none is set (DISPLAY is empty)")
    return args, given


def main(argv=None):
    args, given = parse_args(argv)
    training = args.plot is None and not args.play
    try:
        if args.plot is not None:
            if not args.plot and own_or_shipped(args) != checkpoint_path(args):
                args.plot = [pong.from_here(SHIPPED)]
            pong.plot(args)
            return
        if args.record:
            pong.writable_directory(args.record, "videos")
        import_libraries()
        if args.play:
            play(args)
        else:
            train(args, given)
    except pong.CheckpointError as error:
        pong.fail(error)
    except OSError as error:  # the disk, not the program: one line
        message = f"{error.strerror or error}: {error.filename}" if error.filename else str(error)
        if training:
            message += " (the last checkpoint is intact)"
        pong.fail(message, status=1)


if __name__ == "__main__":
    # Ctrl-C while starting up ends the program quietly: nothing to save yet.
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))
    main()
