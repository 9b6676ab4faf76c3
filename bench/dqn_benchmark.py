"""Benchmark of dqn_atari_pong.py: its update and its training loop beside plain tf.keras, its
replay memory's bytes and its peak RSS.

In one run, side by side, each variant in its own subprocess (so its peak RSS is its own), in
--rounds alternating rounds:

  own        the project's training loop (dqn_atari_pong.Learner) on the real Pong-v0, learning
             from the first steps, for --steps agent steps; each part of the loop timed: the
             emulator (steps and frames), the memory (storing, states, sampling), acting (the
             network's Q-values), the update, and the rest (bookkeeping)
  keras      the same loop with the update and the acting of a plain tf.keras DQN, written here
             as the reference: the same network as keras.layers, the same batch, optimizer and
             Huber loss, eager GradientTape as Keras' own DQN example writes it, its states as
             float32 (batch, 84, 84, 4) arrays made in numpy

and in each of those processes, after the loop, --updates updates on batches sampled from its
memory, timed one by one: the project's (sampling included), the plain Keras one (its sampling
and conversion included), and the same Keras step compiled with tf.function (a second, stronger
reference).

Then the memory: a process that fills a replay memory of --memory transitions (the default's
size) with frames, makes 100 updates, saves the training state and reads it back (as a resume
does), against the same with a memory of 1,000: their peak RSS, and the difference over the
memory's bytes.

Prints a table, then as its last line one JSON object.

    python bench/dqn_benchmark.py                             # ~6 minutes here
    python bench/dqn_benchmark.py --steps 2000 --updates 50 --rounds 1 --memory 20000   # quick
"""

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOOP_VARIANTS = ("own", "keras")
PARTS = ("emulator", "memory", "acting", "update")  # the rest of the loop is bookkeeping


def peak_rss_mb():
    """This process's peak resident set size in MB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def import_dqn():
    """dqn_atari_pong from the repository root, with TensorFlow and the emulator imported."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import dqn_atari_pong

    dqn_atari_pong.import_libraries()
    return dqn_atari_pong


def learner(dqn, memory, learning_starts, directory):
    args, _ = dqn.parse_args(
        [
            "--memory",
            str(memory),
            "--learning-starts",
            str(learning_starts),
            "--epsilon-steps",
            "1000",
            "--model-dir",
            directory,
        ]
    )
    return dqn.Learner(args)


# --- The reference: a plain tf.keras DQN --------------------------------------


def keras_network(keras, n_actions):
    """The same network as the project's, as plain keras layers."""
    return keras.Sequential(
        [
            keras.Input((84, 84, 4)),
            keras.layers.Conv2D(16, 8, strides=4, activation="relu"),
            keras.layers.Conv2D(32, 4, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(n_actions),
        ]
    )


class KerasDQN:
    """A plain tf.keras DQN's acting and update, as a Keras user would write them: states as
    float32 arrays in [0, 1], channels last; Q-values by calling the model; the update with
    GradientTape, keras' Huber loss and Adam with the project's settings."""

    def __init__(self, tf, memory, n_actions, gamma_value, adam_epsilon, learning_rate_value):
        keras = tf.keras
        self.tf = tf
        self.memory = memory
        self.online = keras_network(keras, n_actions)
        self.target = keras_network(keras, n_actions)
        self.target.set_weights(self.online.get_weights())
        self.optimizer = keras.optimizers.Adam(learning_rate_value, epsilon=adam_epsilon)
        self.loss = keras.losses.Huber()
        self.gamma = gamma_value
        self.n_actions = n_actions
        self.compiled_step = tf.function(self.step)

    @staticmethod
    def floats(frames):
        return frames.transpose(0, 2, 3, 1).astype("float32") / 255.0

    def q_values(self, state):
        return self.online(self.floats(state), training=False).numpy()[0]

    def step(self, states, actions, rewards, terminals, next_states):
        tf = self.tf
        future = tf.reduce_max(self.target(next_states, training=False), axis=1)
        targets = rewards + self.gamma * (1.0 - terminals) * future
        with tf.GradientTape() as tape:
            values = self.online(states, training=True)
            taken = tf.reduce_sum(values * tf.one_hot(actions, self.n_actions), axis=1)
            loss = self.loss(targets, taken)
        gradients = tape.gradient(loss, self.online.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.online.trainable_variables, strict=True))
        return loss

    def batch(self, rng, batch_size):
        states, actions, rewards, terminals, next_states = self.memory.sample(batch_size, rng)
        return self.floats(states), actions, rewards, terminals, self.floats(next_states)

    def update(self, rng, batch_size, compiled=False):
        step = self.compiled_step if compiled else self.step
        return float(step(*self.batch(rng, batch_size)))


# --- Variants (each runs in its own subprocess) --------------------------------


def timed(function, totals, part):
    """function, adding its seconds to totals[part] at each call."""

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[part] += time.perf_counter() - started

    return wrapper


def instrument(run, totals):
    """Time each part of the loop: the real functions run, wrapped."""
    run.env.step = timed(run.env.step, totals, "emulator")
    run.frame = timed(run.frame, totals, "emulator")
    for method in ("step", "state", "sample"):  # not add: step calls it (an episode's first
        # frame, stored by add alone, counts as bookkeeping)
        setattr(run.memory, method, timed(getattr(run.memory, method), totals, "memory"))
    run.q_fn = timed(run.q_fn, totals, "acting")
    run.update_fn = timed(run.update_fn, totals, "update")


def variant_loop(args, keras_update):
    """The training loop for args.steps agent steps (the episode under way finished), then
    args.updates updates timed one by one, for each update path."""
    dqn = import_dqn()
    with tempfile.TemporaryDirectory() as directory:
        run = learner(dqn, max(args.steps, 4 * dqn.batch_size), dqn.batch_size, directory)
        reference = KerasDQN(
            dqn.tf,
            run.memory,
            run.n_actions,
            run.args.gamma,
            dqn.ADAM_EPSILON,
            run.args.learning_rate,
        )
        if keras_update:
            run.q_fn = reference.q_values
            run.update_fn = lambda *batch: reference.step(
                *(reference.floats(b) if b.ndim == 4 else b for b in batch)
            )
        run.play(say=lambda line: None)  # warm-up: graphs traced, pages touched
        totals = dict.fromkeys(PARTS, 0.0)
        instrument(run, totals)
        first, started = run.steps, time.perf_counter()
        while run.steps - first < args.steps:
            run.play(say=lambda line: None)
        seconds = time.perf_counter() - started
        steps_played = run.steps - first
        shares = {part: totals[part] / seconds for part in PARTS}  # before the timed updates add
        shares["bookkeeping"] = 1 - sum(shares.values())
        updates = update_times(dqn, run, reference, args.updates)
        run.close()
    return {
        "steps": steps_played,
        "seconds": seconds,
        "steps_per_second": steps_played / seconds,
        "shares": shares,
        "update_ms": updates,
        "peak_rss_mb": peak_rss_mb(),
    }


def update_times(dqn, run, reference, count):
    """Median milliseconds of one update, sampling included, for each path, interleaved."""
    import numpy as np

    rng = np.random.default_rng(0)
    paths = {
        "own": lambda: float(run.update_fn(*run.memory.sample(dqn.batch_size, rng))),
        "keras": lambda: reference.update(rng, dqn.batch_size),
        "keras_compiled": lambda: reference.update(rng, dqn.batch_size, compiled=True),
    }
    times = {name: [] for name in paths}
    for path in paths.values():
        path()  # traced before the clock starts
    for _ in range(count):
        for name, path in paths.items():
            started = time.perf_counter()
            path()
            times[name].append(1000 * (time.perf_counter() - started))
    return {name: float(np.median(values)) for name, values in times.items()}


def variant_memory(args):
    """A memory of args.memory transitions filled, updated from, saved and read back."""
    import numpy as np

    dqn = import_dqn()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        run = learner(dqn, args.memory, dqn.batch_size, directory)
        frames = rng.integers(0, 256, (64, 84, 84), np.uint8)  # any pixels take the same bytes
        run.memory.add(frames[0], first=True)
        for i in range(1, args.memory):
            run.memory.step(i % run.n_actions, 0.0, False, frames[i % len(frames)])
        for _ in range(100):
            run.update_fn(*run.memory.sample(dqn.batch_size, rng))
        path = os.path.join(directory, "dqn_pong.npz")
        dqn.save(run, path, None)
        memory_bytes = sum(
            getattr(run.memory, name).nbytes
            for name in ("frames", "actions", "rewards", "terminals", "firsts", "acted")
        )
        network_bytes = sum(w.numpy().nbytes for w in run.online.trainable_weights)
        run.close()
        run_args = run.args
        del run  # its memory goes: the resume below reads the saved one back
        gc.collect()
        saved = dqn.read_q_checkpoint(path)
        resumed = dqn.Learner(run_args, saved, dqn.exact_training(directory, saved, run_args))
        exact = resumed.exact
        resumed.close()
    return {
        "memory": args.memory,
        "memory_bytes": memory_bytes,
        "network_bytes": network_bytes,
        "resumed_exactly": exact,
        "peak_rss_mb": peak_rss_mb(),
    }


# --- The run: variants side by side, the table, the JSON ------------------------


def run_variant(name, args):
    """One variant in its own process: this file with --variant; its last line is JSON."""
    command = [sys.executable, os.path.abspath(__file__), "--variant", name]
    for flag in ("steps", "updates", "memory"):
        command += [f"--{flag}", str(getattr(args, flag))]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"dqn_benchmark.py: variant {name} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def summary(rounds, memories):
    """The ratios the issue asks for, each the median over the rounds."""
    own = [r["own"] for r in rounds]
    keras = [r["keras"] for r in rounds]
    full, tiny = memories
    over = (full["peak_rss_mb"] - tiny["peak_rss_mb"]) * 2**20 / full["memory_bytes"]
    return {
        "loop_steps_per_second": {
            "own": median([o["steps_per_second"] for o in own]),
            "keras": median([k["steps_per_second"] for k in keras]),
        },
        "loop_own_over_keras": median(
            [o["steps_per_second"] / k["steps_per_second"] for o, k in zip(own, keras, strict=True)]
        ),
        "update_ms": {
            path: median([o["update_ms"][path] for o in own])
            for path in ("own", "keras", "keras_compiled")
        },
        "update_speed_own_over_keras": median(
            [o["update_ms"]["keras"] / o["update_ms"]["own"] for o in own]
        ),
        "update_speed_own_over_keras_compiled": median(
            [o["update_ms"]["keras_compiled"] / o["update_ms"]["own"] for o in own]
        ),
        "own_loop_shares": {
            part: median([o["shares"][part] for o in own]) for part in (*PARTS, "bookkeeping")
        },
        "memory": {
            "transitions": full["memory"],
            "bytes": full["memory_bytes"],
            "network_bytes": full["network_bytes"],
            "peak_rss_mb": full["peak_rss_mb"],
            "peak_rss_mb_with_1000": tiny["peak_rss_mb"],
            "peak_rss_over_memory_bytes": over,
            "resumed_exactly": full["resumed_exactly"],
        },
    }


def print_table(rounds, result):
    print(
        f"{'round':>5} {'variant':>7} {'steps':>7} {'steps/s':>8} {'update ms':>10} {'RSS MB':>7}"
    )
    for number, variants in enumerate(rounds, 1):
        for name, v in variants.items():
            print(
                f"{number:>5} {name:>7} {v['steps']:>7} {v['steps_per_second']:>8.1f} "
                f"{v['update_ms']['own' if name == 'own' else 'keras']:>10.2f} "
                f"{v['peak_rss_mb']:>7.0f}"
            )
    update = result["update_ms"]
    shares = result["own_loop_shares"]
    memory_ = result["memory"]
    print(
        f"update, ms (medians): own {update['own']:.2f}, keras {update['keras']:.2f}, "
        f"keras compiled {update['keras_compiled']:.2f}; own's speed over keras "
        f"{result['update_speed_own_over_keras']:.2f}x, over keras compiled "
        f"{result['update_speed_own_over_keras_compiled']:.2f}x"
    )
    print(
        f"loop, agent steps/s: own {result['loop_steps_per_second']['own']:.1f}, keras "
        f"{result['loop_steps_per_second']['keras']:.1f} ({result['loop_own_over_keras']:.2f}x)"
    )
    print(
        "own loop's time: "
        + ", ".join(f"{part} {100 * share:.1f}%" for part, share in shares.items())
        + f"; emulator + memory + bookkeeping "
        f"{100 * (1 - shares['acting'] - shares['update']):.1f}%"
    )
    print(
        f"memory of {memory_['transitions']} transitions: {memory_['bytes'] / 1e6:.1f} MB; "
        f"peak RSS {memory_['peak_rss_mb']:.0f} MB, with 1,000: "
        f"{memory_['peak_rss_mb_with_1000']:.0f} MB; the difference is "
        f"{memory_['peak_rss_over_memory_bytes']:.2f}x the memory's bytes"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000, help="agent steps per loop")
    parser.add_argument("--updates", type=int, default=200, help="updates timed per path")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the loops")
    parser.add_argument("--memory", type=int, default=100000, help="the memory's transitions")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        if args.variant in LOOP_VARIANTS:
            result = variant_loop(args, keras_update=args.variant == "keras")
        else:
            args.memory = int(args.variant.split("-")[1])
            result = variant_memory(args)
        print(json.dumps(result))
        return
    rounds = []
    for number in range(args.rounds):
        order = LOOP_VARIANTS if number % 2 == 0 else LOOP_VARIANTS[::-1]
        rounds.append({name: run_variant(name, args) for name in order})
    memories = [run_variant(f"memory-{size}", args) for size in (args.memory, 1000)]
    result = summary(rounds, memories)
    print_table(rounds, result)
    print(json.dumps({"rounds": rounds, **result}))


if __name__ == "__main__":
    main()
