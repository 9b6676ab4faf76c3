"""Benchmark of tutorial_atari_pong.py's training loop and update.

In one run, for the same number of agent steps, side by side:

  emulator   the bare emulator: Pong-v0, random actions from [1, 2, 3], one process
  ceiling    K such emulator processes at once, K = the own loop's worker count
             (--envs), the steps split evenly among them: the machine's limit
  reference  bench/reference_loop.py: the straightforward TensorLayer loop (dense
             float32 frames, eager forward per step, dense update every batch)
  own        the project's real training loop, tutorial_atari_pong.main(), at its
             default settings (its --envs default included)
  own cnn    the same loop with --network cnn (Mnih et al. 2013's convolutional
             policy), for the same number of episodes, against its own ceiling

and separately the project's update path (update_policy) on one 100,000-step
batch of real difference frames (Pong played with random actions), for each network.

Each variant runs in its own subprocess (this file re-invoked with --variant),
so its peak RSS is its own. The own loops run first, for --episodes episodes
each (by default three batches, so three updates and the idle workers at the
end of each batch are in their figures); the agent steps the MLP's played
(from its progress.csv) are then played by the emulator and the reference
loop.

The CNN against the MLP: their agent steps per second while training (each
over its ceiling, so the machine's drift between their runs cancels), their
update seconds per 10,000 steps, and where the CNN's extra loop time goes:
into updating (the trainer, while the workers wait) or into playing.

Prints a table, then as its last line one JSON object.

    python bench/benchmark.py                 # default: 30 episodes (~36k steps), 100k update
    python bench/benchmark.py --episodes 1 --batch-size 1 --update-steps 5000   # quick
"""

import argparse
import contextlib
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = ("emulator", "reference", "own")  # each one process; the ceiling is K emulator processes
NETWORKS = ("mlp", "cnn")  # tutorial_atari_pong's --network choices, both timed in each round


# --- Measuring -------------------------------------------------------------


def now():
    """CLOCK_MONOTONIC: one clock for every process on the machine, so the
    start and end times of the ceiling's emulator processes compare."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def peak_rss_mb(who=resource.RUSAGE_SELF):
    """Peak resident set size in MB (ru_maxrss is in KiB on Linux). For
    RUSAGE_CHILDREN it is the largest single waited-for child, not a sum."""
    return resource.getrusage(who).ru_maxrss / 1024


def machine_cpu_times():
    """The machine's CPU time so far, in clock ticks, from /proc/stat's first
    line: busy (user, nice, system, irq, softirq), idle (idle, iowait) and
    steal (taken by the hypervisor for other machines)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (
            int(x) for x in f.readline().split()[1:9]
        )
    return {"busy": user + nice + system + irq + softirq, "idle": idle + iowait, "steal": steal}


def machine_shares(before, after):
    """Shares of the machine's CPU time between two machine_cpu_times()."""
    spent = {key: after[key] - before[key] for key in before}
    total = sum(spent.values()) or 1
    return {key: value / total for key, value in spent.items()}


def process_clock():
    """This process's CPU seconds and involuntary context switches so far
    (times it was made to give up the CPU while it could have run on)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_nivcsw


def current_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def import_project():
    """tutorial_atari_pong from the repository root (the real module, not a copy), with
    TensorFlow and the emulator imported."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import tutorial_atari_pong

    tutorial_atari_pong.import_libraries()
    return tutorial_atari_pong


# --- Variants (each runs in its own subprocess) ------------------------------


def variant_emulator(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    import ale_py
    import gymnasium as gym
    import numpy as np

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    warnings.filterwarnings("ignore", message=r".*Pong-v0 is out of date.*")
    gym.register_envs(ale_py)
    env = gym.make("Pong-v0")
    env.reset(seed=args.seed)
    actions = np.random.default_rng(args.seed).choice([1, 2, 3], size=args.steps).tolist()
    if (
        args.wait_for_go
    ):  # one of the ceiling's processes: start stepping when all of them are ready
        print("ready", flush=True)
        sys.stdin.readline()
    episodes = 0
    cpu_before, switches_before = process_clock()
    started = now()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            episodes += 1
            env.reset()
    ended = now()
    cpu_after, switches_after = process_clock()
    env.close()
    return {
        "steps": args.steps,
        "episodes": episodes,
        "updates": 0,
        "seconds": ended - started,
        "cpu_seconds": cpu_after - cpu_before,
        "preemptions": switches_after - switches_before,
        "started": started,
        "ended": ended,
        "seed": args.seed,
        "timed": "emulator loop only (env built and seeded before the clock starts)",
        "peak_rss_mb": peak_rss_mb(),
    }


def variant_reference(args):
    sys.path.insert(0, HERE)
    import reference_loop

    result = reference_loop.run(args.steps, batch_size=args.batch_size, seed=args.seed)
    result.update(
        timed="loop and updates (env and model built before the clock starts)",
        peak_rss_mb=peak_rss_mb(),
    )
    return result


def timing_hooks(tap, marks):
    """Hooks that observe tutorial_atari_pong's loop and note into `marks`: its start (the
    ProgressLog created, just before train()'s loop), each episode, and each update_policy
    call's time and end. The real functions run. The play_episode hook runs in the worker
    processes too (they are forked after it is in place), to count each episode's CPU seconds
    and preemptions. Returns them as (ProgressLog, update_policy, play_episode)."""

    class TimedProgressLog(tap.ProgressLog):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            marks["machine_start"], marks["trainer_start"] = machine_cpu_times(), process_clock()
            marks["loop_start"] = time.perf_counter()

        def add(self, episode, running_mean):
            nan = float("nan")  # if the play_episode hook did not fire
            marks["episodes"].append(
                (
                    episode.seconds,
                    getattr(episode, "cpu_seconds", nan),
                    getattr(episode, "preemptions", nan),
                )
            )
            return super().add(episode, running_mean)

    original_update, original_play = tap.update_policy, tap.play_episode

    def timed_update_policy(*a, **k):
        t = time.perf_counter()
        steps = original_update(*a, **k)
        marks["loop_end"] = time.perf_counter()
        marks["machine_end"], marks["trainer_end"] = machine_cpu_times(), process_clock()
        marks["updates"] += 1
        marks["update_steps"] += steps
        marks["update_seconds"] += marks["loop_end"] - t
        return steps

    def counted_play_episode(*a, **k):
        cpu_before, switches_before = process_clock()
        episode = original_play(*a, **k)
        if episode is not None:
            cpu_after, switches_after = process_clock()
            episode.cpu_seconds, episode.preemptions = (
                cpu_after - cpu_before,
                switches_after - switches_before,
            )
        return episode

    return TimedProgressLog, timed_update_policy, counted_play_episode


def own_argv(args):
    """main()'s flags for the own variant: --save-every past the run, so that nothing but
    updates follows in the loop."""
    argv = ["--episodes", str(args.episodes), "--model-dir", args.model_dir]
    argv += ["--save-every", str(10**9), "--network", args.network]
    if args.batch_size is not None:
        argv += ["--batch-size", str(args.batch_size)]
    if args.envs is not None:
        argv += ["--envs", str(args.envs)]
    return argv


def variant_own(args):
    """tutorial_atari_pong.main() for --episodes episodes with --network. The loop is timed
    from the end of train()'s setup to the return of its last update_policy call (timing_hooks);
    the whole call is timed as well."""
    tap = import_project()
    marks = {"updates": 0, "update_steps": 0, "update_seconds": 0.0, "episodes": []}
    originals = tap.ProgressLog, tap.update_policy, tap.play_episode
    tap.ProgressLog, tap.update_policy, tap.play_episode = timing_hooks(tap, marks)
    argv = own_argv(args)
    log_path = os.path.join(args.model_dir, "stdout.txt")
    try:
        with open(log_path, "w") as log, contextlib.redirect_stdout(log):
            started = time.perf_counter()
            tap.main(argv)
            whole = time.perf_counter() - started
    finally:
        tap.ProgressLog, tap.update_policy, tap.play_episode = originals
    with open(os.path.join(args.model_dir, "progress.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    result = own_result(marks, rows, whole)
    result.update(
        network=args.network,
        envs=tap.parse_args(argv).envs,
        batch_size=tap.parse_args(argv).batch_size,
        peak_rss_mb=peak_rss_mb(),
        peak_rss_children_mb=peak_rss_mb(resource.RUSAGE_CHILDREN),
    )
    return result


def own_result(marks, rows, whole):
    """The own loop's figures from the hooks' marks and its progress.csv rows; the whole call's
    seconds where the hooks did not fire (renamed functions?)."""
    steps = sum(int(row["steps"]) for row in rows)
    if "loop_start" in marks and "loop_end" in marks:
        seconds, timed = (
            marks["loop_end"] - marks["loop_start"],
            "training loop, updates included (hooks)",
        )
    else:
        seconds, timed = whole, "whole main() call, startup included (hooks did not fire)"
    episode_seconds, episode_cpu, episode_preemptions = (
        (sum(column) for column in zip(*marks["episodes"], strict=True))
        if marks["episodes"]
        else (sum(float(row["seconds"]) for row in rows), float("nan"), float("nan"))
    )
    result = {
        "steps": steps,
        "episodes": len(rows),
        "updates": marks["updates"],
        "episode_seconds": episode_seconds,
        "episode_cpu_seconds": episode_cpu,
        "episode_preemptions": episode_preemptions,
        "update_steps": marks["update_steps"],
        "update_seconds": marks["update_seconds"],
        "seconds": seconds,
        "whole_call_seconds": whole,
        "timed": timed,
    }
    if "loop_end" in marks:
        result["trainer_cpu_seconds"] = marks["trainer_end"][0] - marks["trainer_start"][0]
        result["machine"] = machine_shares(marks["machine_start"], marks["machine_end"])
    return result


RECORDED_STEPS = 20_000  # real difference frames recorded for the update's batch, then reused


def recorded_frames(tap, steps, seed):
    """`steps` real difference frames of Pong-v0 played with random actions, as play_episode makes
    them (a new game where one ends): nnz per step, and the changed pixels' indices and signs."""
    import numpy as np

    env = tap.make_env(seed)
    rng = np.random.default_rng(seed)
    frames = []
    try:
        while len(frames) < steps:
            env.reset()
            screen = env.ale.getScreen()
            previous = tap.prepro(screen)
            terminated = False
            while not terminated and len(frames) < steps:
                current = tap.prepro(screen)
                frames.append(tap.diff_frame(current, previous))
                previous = current
                terminated = env.step(int(rng.choice(tap.ACTIONS)))[2]
                env.ale.getScreen(screen)
    finally:
        env.close()
    nnz = np.array([len(changed) for changed, _ in frames], np.int16)
    indices = np.concatenate([changed for changed, _ in frames])
    return nnz, indices, np.concatenate([signs for _, signs in frames])


def update_episodes(tap, recorded, total_steps, rng, first_number=0):
    """Episodes of real difference frames (recorded_frames', taken in turn, over again when they
    run out) for the update: 1,100-1,300 steps each, random labels, a +-1 point every ~60 steps
    and at each episode's end."""
    import numpy as np

    nnz, indices, signs = recorded
    pixel_starts = np.concatenate([[0], np.cumsum(nnz, dtype=np.int64)])
    episodes, number, left, at = [], first_number, total_steps, 0
    while left > 0:
        steps = min(left, int(rng.integers(1100, 1301)))
        if 0 < left - steps < 200:  # no tiny last episode
            steps = left
        taken = np.arange(at, at + steps) % len(nnz)
        at += steps
        pixels = np.concatenate([np.arange(pixel_starts[s], pixel_starts[s + 1]) for s in taken])
        labels = rng.integers(0, 3, steps).astype(np.int8)
        rewards = np.zeros(steps, np.int16)
        point = -1
        while True:
            point += int(rng.integers(30, 91))
            if point >= steps - 1:
                break
            rewards[point] = rng.choice([-1, 1], p=[0.9, 0.1])
        rewards[-1] = rng.choice([-1, 1], p=[0.9, 0.1])
        frames = (nnz[taken], indices[pixels], signs[pixels])
        episode = tap.Episode(number, *frames, labels, rewards, rewards != 0)
        episodes.append(episode)
        number, left = number + 1, left - steps
    return episodes


def update_parts(tap, network):
    """The network's policy, its optimizer, its gradient function and its chunk size, as
    tutorial_atari_pong's Training builds them."""
    if network == "cnn":
        model = tap.build_cnn_policy(tap.seed)
    else:
        model = tap.build_policy(tap.hidden, tap.seed)
    optimizer = tap.make_optimizer(model, tap.learning_rate, tap.decay_rate)
    model.eval()
    if network == "cnn":
        return model, optimizer, tap.make_cnn_gradient_fn(model), tap.CNN_CHUNK_STEPS
    return model, optimizer, tap.make_gradient_fn(model), tap.UPDATE_CHUNK_STEPS


def variant_update(args):
    """One update_policy call on an args.update_steps-step batch of real frames, for args.network,
    after a warm-up call on a small batch (tracing the tf.function)."""
    import numpy as np

    tap = import_project()
    model, optimizer, gradient_fn, chunk_steps = update_parts(tap, args.network)
    rng = np.random.default_rng(args.seed)
    recorded = recorded_frames(tap, min(RECORDED_STEPS, args.update_steps), args.seed)
    warm_up = update_episodes(tap, recorded, 2000, rng)
    tap.update_policy(model, optimizer, gradient_fn, warm_up, tap.gamma, chunk_steps)
    rss_after_warmup = current_rss_mb()
    episodes = update_episodes(tap, recorded, args.update_steps, rng)
    nnz_mean = float(np.mean(np.concatenate([e.nnz for e in episodes])))
    rss_before = current_rss_mb()
    started = time.perf_counter()
    steps = tap.update_policy(model, optimizer, gradient_fn, episodes, tap.gamma, chunk_steps)
    seconds = time.perf_counter() - started
    return {
        "network": args.network,
        "steps": steps,
        "episodes": len(episodes),
        "nnz_mean": nnz_mean,
        "seconds": seconds,
        "rss_after_warmup_mb": rss_after_warmup,
        "rss_before_update_mb": rss_before,
        "rss_after_update_mb": current_rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_variant(args):
    result = {
        "emulator": variant_emulator,
        "reference": variant_reference,
        "own": variant_own,
        "update": variant_update,
    }[args.variant](args)
    sys.stdout.flush()
    print(json.dumps(result))


# --- The driver ------------------------------------------------------------


def variant_command(variant, extra):
    return [sys.executable, os.path.abspath(__file__), "--variant", variant] + extra


def variant_result(variant, returncode, stdout, stderr):
    """The JSON on a variant's last line of output, or exit with its output."""
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines:
        sys.stderr.write(stdout[-4000:] + stderr[-4000:])
        raise SystemExit(f"benchmark: variant {variant} failed with exit status {returncode}")
    return json.loads(lines[-1])


def spawn(variant, extra, timeout):
    """Run one variant in a fresh interpreter; return its JSON result."""
    try:
        completed = subprocess.run(
            variant_command(variant, extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(f"benchmark: variant {variant} ran past --timeout {timeout:g} s") from None
    return variant_result(variant, completed.returncode, completed.stdout, completed.stderr)


def spawn_ceiling(processes, steps, seed, timeout):
    """The ceiling: `processes` emulator variants at once, seeds seed, seed+1, ...,
    the steps split evenly. Each builds and seeds its env, says "ready", and
    starts its clock only when the driver, having heard all of them, answers
    "go": so they step together, as the own loop's workers do."""
    shares = [steps // processes + (i < steps % processes) for i in range(processes)]
    stderrs = [
        tempfile.TemporaryFile("w+") for _ in shares
    ]  # a file, not a pipe: it never fills and blocks
    children = [
        subprocess.Popen(
            variant_command(
                "emulator", ["--steps", str(share), "--seed", str(seed + i), "--wait-for-go"]
            ),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        for i, (share, stderr) in enumerate(zip(shares, stderrs, strict=True))
    ]
    deadline = time.monotonic() + timeout
    try:
        early_lines = [child.stdout.readline() for child in children]  # "ready", or "" if it died
        machine_before = machine_cpu_times()
        for child in children:
            with contextlib.suppress(
                BrokenPipeError
            ):  # one that died is reported below, with its output
                child.stdin.write("go\n")
                child.stdin.flush()
        results = []
        for child, early, stderr in zip(children, early_lines, stderrs, strict=True):
            stdout, _ = child.communicate(timeout=max(0.0, deadline - time.monotonic()))
            stderr.seek(0)
            results.append(
                variant_result("ceiling", child.returncode, early + stdout, stderr.read())
            )
        machine = machine_shares(machine_before, machine_cpu_times())
    except subprocess.TimeoutExpired:
        raise SystemExit(f"benchmark: variant ceiling ran past --timeout {timeout:g} s") from None
    finally:
        for child, stderr in zip(children, stderrs, strict=True):
            if child.poll() is None:
                child.kill()
                child.wait()
            stderr.close()
    return ceiling_summary(steps, results, machine)


def ceiling_summary(steps, results, machine):
    """One ceiling run's figures from its processes' results: summed rates, and the wall-clock
    from the first start to the last end."""
    first_start, last_end = min(r["started"] for r in results), max(r["ended"] for r in results)
    return {
        "processes": len(results),
        "steps": sum(r["steps"] for r in results),
        "episodes": sum(r["episodes"] for r in results),
        "updates": 0,
        "seconds": last_end - first_start,
        "summed_steps_per_s": sum(r["steps"] / r["seconds"] for r in results),
        "wall_steps_per_s": steps / (last_end - first_start),
        "start_spread_s": max(r["started"] for r in results) - first_start,
        "end_spread_s": last_end - min(r["ended"] for r in results),
        "cpu_seconds": sum(r["cpu_seconds"] for r in results),
        "preemptions": sum(r["preemptions"] for r in results),
        "machine": machine,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "per_process": results,
    }


def bracketed(before, after):
    """The ceiling of one own run: the runs just before and just after it,
    their rates averaged, their processes pooled."""
    runs = (before, after)
    return {
        "processes": after["processes"],
        "steps": after["steps"],
        "episodes": after["episodes"],
        "updates": 0,
        "seconds": after["seconds"],
        **{
            key: sum(run[key] for run in runs) / 2
            for key in ("summed_steps_per_s", "wall_steps_per_s")
        },
        **{
            key: max(run[key] for run in runs)
            for key in ("start_spread_s", "end_spread_s", "peak_rss_mb")
        },
        "cpu_seconds": sum(run["cpu_seconds"] for run in runs),
        "preemptions": sum(run["preemptions"] for run in runs),
        "machine": {key: sum(run["machine"][key] for run in runs) / 2 for key in after["machine"]},
        "per_process": before["per_process"] + after["per_process"],
        "before": before,
        "after": after,
    }


def where_time_went(own, ceiling):
    """One round's own / ceiling ratio taken apart: the share of the workers'
    time spent playing (the rest they wait at batch ends and for updates:
    the algorithm's), the share of playing time they were on a CPU, and the
    agent steps per CPU second; the same for the ceiling's processes, and the
    machine's idle and stolen shares over each."""
    ceiling_seconds = sum(p["seconds"] for p in ceiling["per_process"])
    return {
        "ratio": own["steps"] / own["seconds"] / ceiling["summed_steps_per_s"],
        "own_playing_share": own["episode_seconds"] / (own["envs"] * own["seconds"]),
        "own_on_cpu_share": own["episode_cpu_seconds"] / own["episode_seconds"],
        "ceiling_on_cpu_share": ceiling["cpu_seconds"] / ceiling_seconds,
        "own_steps_per_cpu_s": own["steps"] / own["episode_cpu_seconds"],
        "ceiling_steps_per_cpu_s": sum(p["steps"] for p in ceiling["per_process"])
        / ceiling["cpu_seconds"],
        "own_preemptions_per_s": own["episode_preemptions"] / own["episode_seconds"],
        "ceiling_preemptions_per_s": ceiling["preemptions"] / ceiling_seconds,
        "own_trainer_cpu_share": own.get("trainer_cpu_seconds", float("nan")) / own["seconds"],
        "own_machine": own.get("machine"),
        "ceiling_machine": ceiling["machine"],
    }


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--episodes",
        type=positive_int,
        default=30,
        help="episodes of the project's loop; the others play the same number of agent steps",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="episodes per update, for the own and reference loops (default: the project's)",
    )
    parser.add_argument(
        "--envs",
        type=positive_int,
        default=None,
        help=(
            "worker processes of the own loop, and so processes of the ceiling "
            "(default: the project's)"
        ),
    )
    parser.add_argument(
        "--update-steps",
        type=positive_int,
        default=100_000,
        help="steps in the update's batch",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=5,
        help=(
            "times each network's own loop and its ceiling are timed back to back "
            "(the median round is shown)"
        ),
    )
    parser.add_argument(
        "--skip-reference", action="store_true", help="do not run the reference loop"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--timeout", type=float, default=280, help="seconds allowed to each variant"
    )
    parser.add_argument("--variant", choices=VARIANTS + ("update",), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--wait-for-go", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--network", choices=NETWORKS, default="mlp", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def common_flags(args):
    """The driver's flags that every variant takes."""
    return ["--seed", str(args.seed)] + (
        [] if args.batch_size is None else ["--batch-size", str(args.batch_size)]
    )


def own_run(args, network):
    """One run of the project's training loop with --network `network`, in its own process."""
    with tempfile.TemporaryDirectory(prefix="pong-bench-") as model_dir:
        own = spawn(
            "own",
            common_flags(args)
            + ["--episodes", str(args.episodes), "--model-dir", model_dir, "--network", network]
            + ([] if args.envs is None else ["--envs", str(args.envs)]),
            args.timeout,
        )
    if own["updates"] == 0:
        raise SystemExit(
            f"benchmark: the own loop made no update in {own['episodes']} episodes: "
            f"--episodes must be a multiple of the batch size ({own['batch_size']}); "
            "pass --batch-size too"
        )
    return own


def timed_rounds(args):
    """Each network's own loop and its ceiling, side by side, in --rounds rounds. A virtual
    machine's speed drifts by tens of per cent within a minute, so each own run is bracketed by
    ceiling runs, one just before and one just after (each shared with the neighbouring run),
    and its ratio is to their mean: a steady drift cancels. A round runs the MLP, then the CNN:
    ceiling, MLP, ceiling, CNN, ceiling, MLP, ... A first MLP run, not counted, gives the worker
    count and step count for the first ceiling, and warms the caches that the first TensorFlow
    import fills. Returns each network's rounds as (ratio to the ceiling, own run, ceiling)."""
    warm_up = own_run(args, "mlp")
    before = spawn_ceiling(warm_up["envs"], warm_up["steps"], args.seed, args.timeout)
    rounds = {network: [] for network in NETWORKS}
    for _ in range(args.rounds):
        for network in NETWORKS:
            own = own_run(args, network)
            after = spawn_ceiling(own["envs"], own["steps"], args.seed, args.timeout)
            ceiling = bracketed(before, after)
            ratio = own["steps"] / own["seconds"] / ceiling["summed_steps_per_s"]
            rounds[network].append((ratio, own, ceiling))
            before = after
    return rounds


def median_round(rounds):
    """The round whose ratio to the ceiling is the median (of an even count, the lower)."""
    return sorted(rounds, key=lambda r: r[0])[(len(rounds) - 1) // 2]


def network_figures(rounds, update):
    """One network's figures: its median round's agent steps per second and ratio to the
    ceiling; over all its rounds, its loop's seconds per 10,000 agent steps, split into updating
    (the trainer; the workers wait) and playing (the workers play the batch, and wait for its
    last episode), and its workers' CPU seconds per 10,000 steps while playing; and its update
    of the recorded batch."""
    owns = [own for _, own, _ in rounds]
    per_10k = 10_000 / sum(own["steps"] for own in owns)
    loop = sum(own["seconds"] for own in owns) * per_10k
    updating = sum(own["update_seconds"] for own in owns) * per_10k
    ratio, own, _ = median_round(rounds)
    return {
        "train_steps_per_s": own["steps"] / own["seconds"],
        "ratio_vs_ceiling": ratio,
        "ratio_vs_ceiling_rounds": [r for r, _, _ in rounds],
        "ratio_vs_ceiling_breakdown": [where_time_went(o, c) for _, o, c in rounds],
        "loop_s_per_10k_steps": loop,
        "updating_s_per_10k_steps": updating,
        "playing_s_per_10k_steps": loop - updating,
        "worker_cpu_s_per_10k_steps": sum(o["episode_cpu_seconds"] for o in owns) * per_10k,
        "update_s_per_10k_steps": update["seconds"] / update["steps"] * 10_000,
        "update_100k_s": update["seconds"],
        "peak_rss_100k_mb": update["peak_rss_mb"],
    }


def extra_time(mlp, cnn):
    """Where the CNN's extra loop seconds per 10,000 agent steps go: its updates, or playing
    (its workers' forward, and their waits for a batch's last episode). No shares when the CNN
    was not slower: there is no extra time to share out."""
    extra = {
        part: cnn[f"{part}_s_per_10k_steps"] - mlp[f"{part}_s_per_10k_steps"]
        for part in ("loop", "updating", "playing")
    }
    slower = extra["loop"] > 0
    return {
        "s_per_10k_steps": extra["loop"],
        "updating_s_per_10k_steps": extra["updating"],
        "playing_s_per_10k_steps": extra["playing"],
        "updating_share": extra["updating"] / extra["loop"] if slower else None,
        "playing_share": extra["playing"] / extra["loop"] if slower else None,
    }


def print_table(rows, emulator_rate, updates):
    """rows: (name, result, steps/s, x ceiling); then one row per network's update."""
    print(
        f"{'variant':<11}{'steps':>8}{'updates':>9}{'seconds':>9}{'steps/s':>10}{'x emulator':>12}"
        f"{'x ceiling':>11}{'peak RSS MB':>13}{'update s':>10}"
    )
    for name, r, steps_per_s, x_ceiling in rows:
        print(
            f"{name:<11}{r['steps']:>8}{r['updates']:>9}{r['seconds']:>9.2f}{steps_per_s:>10.0f}"
            f"{steps_per_s / emulator_rate:>12.2f}{x_ceiling:>11.2f}{r['peak_rss_mb']:>13.0f}"
            f"{fmt(r.get('update_seconds') if r['updates'] else None, '.2f'):>10}"
        )
    for network, update in updates.items():
        name = "update" if network == "mlp" else f"update {network}"
        print(
            f"{name:<11}{update['steps']:>8}{1:>9}{update['seconds']:>9.2f}{'':>10}{'':>12}"
            f"{'':>11}{update['peak_rss_mb']:>13.0f}{update['seconds']:>10.2f}"
        )


def print_notes(own, ceiling, update):
    """What the table's figures are, for the MLP's loop, its ceiling and its update."""
    print(
        "seconds: emulator = its step loop; reference = its loop with updates; "
        "own = train()'s loop with updates (the whole main() call, startup included, "
        f"took {own['whole_call_seconds']:.2f} s)."
    )
    print(
        f"own: {own['update_seconds']:.2f} s of its loop in {own['updates']} update(s) "
        "(the tf.function is traced before the loop); its episodes took "
        f"{own['episode_seconds']:.2f} s summed over workers, "
        f"{own['steps'] / own['episode_seconds']:.0f} steps/s per worker while playing."
    )
    brackets = " and ".join(
        " + ".join(format(r["steps"] / r["seconds"], ".0f") for r in run["per_process"])
        for run in (ceiling["before"], ceiling["after"])
    )
    print(
        f"ceiling: {ceiling['processes']} emulator processes at once "
        "(one per worker of the own loop), run just before and just after the own loop; "
        "steps/s is the mean of the two runs' sums of their processes' own "
        f"rates ({brackets}); the processes started within "
        f"{ceiling['start_spread_s'] * 1000:.1f} ms of each other and ended up to "
        f"{ceiling['end_spread_s']:.2f} s apart; from the first start to the last end "
        f"they made {ceiling['wall_steps_per_s']:.0f} steps/s (mean of the two)."
    )
    print(
        "peak RSS: ru_maxrss of the variant's process (ceiling: its largest process). "
        f"own: the trainer process; its {own['envs']} worker processes peaked at "
        f"{own['peak_rss_children_mb']:.0f} MB each at most "
        "(forked from the trainer, so largely shared pages: not additive)."
    )
    print(
        f"update: update_policy on {update['steps']} steps of real frames "
        f"in {update['episodes']} episodes "
        f"(mean {update['nnz_mean']:.1f} changed pixels per step), after a warm-up; RSS "
        f"{update['rss_before_update_mb']:.0f} MB before, "
        f"peak {update['peak_rss_mb']:.0f} MB for the whole process."
    )


def print_breakdowns(label, breakdowns):
    """Each round's own / ceiling ratio taken apart (where_time_went), one line a round."""
    for number, b in enumerate(breakdowns, 1):
        machine = " | ".join(
            f"{m['idle']:.0%}, {m['steal']:.0%}" if m else "-"
            for m in (b["own_machine"], b["ceiling_machine"])
        )
        print(
            f"  {label}round {number}: {b['ratio']:.2f} = {b['own_playing_share']:.0%} playing | "
            f"{b['own_on_cpu_share']:.0%} {b['ceiling_on_cpu_share']:.0%} | "
            f"{b['own_steps_per_cpu_s']:.0f} {b['ceiling_steps_per_cpu_s']:.0f} | "
            f"{b['own_preemptions_per_s']:.1f} {b['ceiling_preemptions_per_s']:.1f} | {machine}; "
            f"trainer {b['own_trainer_cpu_share']:.0%} of a CPU"
        )


def print_rounds(figures):
    """Every round's ratio to the ceiling, and where it went, for each network."""
    for network, f in figures.items():
        print(
            f"rounds, {network}: own / ceiling, each own run between two ceiling runs: "
            f"{', '.join(format(r, '.2f') for r in f['ratio_vs_ceiling_rounds'])}; "
            "the table shows the median round."
        )
    print(
        "where each round's ratio went (own | ceiling): workers playing, "
        "the rest waiting at batch ends and for updates | on a CPU while playing | "
        "agent steps per CPU second | preemptions per second | machine idle, stolen"
    )
    for network, f in figures.items():
        print_breakdowns("" if network == "mlp" else f"{network} ", f["ratio_vs_ceiling_breakdown"])


def print_cnn(mlp, cnn, comparison, update):
    """The CNN against the MLP: training speed, update cost and memory, and where its extra time
    goes."""
    print(
        f"CNN / MLP training agent steps per second: {comparison['cnn_over_mlp']:.2f} "
        "(the median rounds, each against its own ceiling; round by round: "
        f"{', '.join(format(r, '.2f') for r in comparison['cnn_over_mlp_rounds'])})."
    )
    print(
        f"update seconds per 10,000 steps, of the {update['steps']}-step recorded batch: "
        f"mlp {mlp['update_s_per_10k_steps']:.3f}, cnn {cnn['update_s_per_10k_steps']:.3f}; "
        f"in the loop, of real batches: mlp {mlp['updating_s_per_10k_steps']:.3f}, "
        f"cnn {cnn['updating_s_per_10k_steps']:.3f}."
    )
    print(
        f"update cnn: peak RSS {update['peak_rss_mb']:.0f} MB for the whole process "
        f"({update['rss_before_update_mb']:.0f} MB before the {update['steps']}-step batch)."
    )
    for name, f in (("mlp", mlp), ("cnn", cnn)):
        print(
            f"{name}, all rounds, per 10,000 agent steps: loop {f['loop_s_per_10k_steps']:.2f} s "
            f"= updating {f['updating_s_per_10k_steps']:.2f} s + playing "
            f"{f['playing_s_per_10k_steps']:.2f} s (workers on a CPU "
            f"{f['worker_cpu_s_per_10k_steps']:.2f} s, summed)."
        )
    extra = comparison["cnn_extra_time"]
    if extra["updating_share"] is None:
        print("the CNN's loop took no more time per agent step than the MLP's.")
        return
    print(
        f"of the CNN's extra {extra['s_per_10k_steps']:.2f} s per 10,000 agent steps, "
        f"{extra['updating_share']:.0%} is the update, {extra['playing_share']:.0%} acting "
        "(the workers playing, their forward included)."
    )


def compare_networks(figures):
    """The CNN's training speed over the MLP's, from their ratios to the ceiling (so the
    machine's drift between their runs cancels): of the median rounds, and round by round; and
    where the CNN's extra time goes."""
    mlp, cnn = figures["mlp"], figures["cnn"]
    return {
        "cnn_over_mlp": cnn["ratio_vs_ceiling"] / mlp["ratio_vs_ceiling"],
        "cnn_over_mlp_rounds": [
            c / m
            for c, m in zip(
                cnn["ratio_vs_ceiling_rounds"], mlp["ratio_vs_ceiling_rounds"], strict=True
            )
        ],
        "cnn_extra_time": extra_time(mlp, cnn),
    }


def summary(results, rate, update, figures):
    """The last line's object: the MLP's keys as before, then each network's figures."""
    own, ceiling = results["own"], results["ceiling"]
    mlp = figures["mlp"]
    return {
        "steps": own["steps"],
        "steps_per_s": rate,
        "ratio_vs_emulator": rate["own"] / rate["emulator"],
        "ratio_vs_reference": rate["own"] / rate["reference"] if "reference" in rate else None,
        "ratio_vs_ceiling": rate["own"] / rate["ceiling"],
        "ratio_vs_ceiling_rounds": mlp["ratio_vs_ceiling_rounds"],
        "ratio_vs_ceiling_breakdown": mlp["ratio_vs_ceiling_breakdown"],
        "ceiling_processes": ceiling["processes"],
        "ceiling_wall_steps_per_s": ceiling["wall_steps_per_s"],
        "update_100k_s": update["seconds"],
        "update_100k_steps": update["steps"],
        "peak_rss_100k_mb": update["peak_rss_mb"],
        "peak_rss_mb": {name: r["peak_rss_mb"] for name, r in results.items()},
        "own_worker_peak_rss_mb": own["peak_rss_children_mb"],
        "own_envs": own["envs"],
        "own_whole_call_s": own["whole_call_seconds"],
        "update_s_in_loop": {
            name: r.get("update_seconds") for name, r in results.items() if r["updates"]
        },
        "variants": results,
        "update": update,
        "networks": figures,
    }


def median_variants(args, rounds):
    """The MLP's median round (own and its ceiling), and the emulator and the reference loop
    playing its agent steps."""
    _, own, ceiling = median_round(rounds["mlp"])
    results = {"own": own, "ceiling": ceiling}
    results["emulator"] = spawn(
        "emulator", common_flags(args) + ["--steps", str(own["steps"])], args.timeout
    )
    if not args.skip_reference:
        results["reference"] = spawn(
            "reference",
            ["--seed", str(args.seed), "--batch-size", str(own["batch_size"])]
            + ["--steps", str(own["steps"])],
            args.timeout,
        )
    return results


def report(results, rounds, updates, started):
    """The table, the notes and, as the last line, the JSON object."""
    own, ceiling = results["own"], results["ceiling"]
    _, own_cnn, ceiling_cnn = median_round(rounds["cnn"])
    figures = {network: network_figures(rounds[network], updates[network]) for network in NETWORKS}
    comparison = compare_networks(figures)
    rate = {name: r["steps"] / r["seconds"] for name, r in results.items()}
    rate["ceiling"] = ceiling["summed_steps_per_s"]
    table_rows = [
        (name, results[name], rate[name], rate[name] / rate["ceiling"])
        for name in ("emulator", "ceiling", "reference", "own")
        if name in results
    ]
    cnn = figures["cnn"]
    table_rows.append(("own cnn", own_cnn, cnn["train_steps_per_s"], cnn["ratio_vs_ceiling"]))
    print(
        f"Pong-v0 training loop benchmark: {own['steps']} agent steps each "
        f"(own loop: {own['episodes']} episodes, --envs {own['envs']}, "
        f"batch size {own['batch_size']}; own cnn: the same with --network cnn, "
        f"{own_cnn['steps']} agent steps, against its own ceiling)"
    )
    print()
    print_table(table_rows, rate["emulator"], updates)
    print()
    print_notes(own, ceiling, updates["mlp"])
    print_rounds(figures)
    print_cnn(figures["mlp"], cnn, comparison, updates["cnn"])
    print(
        f"own loop: {rate['own'] / rate['ceiling']:.2f}x the ceiling, "
        f"{rate['own'] / rate['emulator']:.2f}x the bare emulator"
        + (
            f", {rate['own'] / rate['reference']:.1f}x the reference loop."
            if "reference" in results
            else "."
        )
    )
    print(f"benchmark wall time {time.perf_counter() - started:.1f} s")
    cnn_variants = {"own": own_cnn, "ceiling": ceiling_cnn, "update": updates["cnn"]}
    print(
        json.dumps(
            summary(results, rate, updates["mlp"], figures)
            | comparison
            | {"cnn_variants": cnn_variants}
        )
    )


def main(argv=None):
    args = parse_args(argv)
    if args.variant:
        return run_variant(args)
    started = time.perf_counter()
    rounds = timed_rounds(args)
    results = median_variants(args, rounds)
    updates = {
        network: spawn(
            "update",
            common_flags(args) + ["--update-steps", str(args.update_steps), "--network", network],
            args.timeout,
        )
        for network in NETWORKS
    }
    report(results, rounds, updates, started)


if __name__ == "__main__":
    main()
