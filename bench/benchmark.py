"""Benchmark of tutorial_atari_pong.py's training loop and update.

In one run, for the same number of agent steps, side by side:

  emulator   the bare emulator: Pong-v0, random actions from [1, 2, 3], one process
  ceiling    K such emulator processes at once, K = the own loop's worker count
             (--envs), the steps split evenly among them: the machine's limit
  reference  bench/reference_loop.py: the straightforward TensorLayer loop (dense
             float32 frames, eager forward per step, dense update every batch)
  own        the project's real training loop, tutorial_atari_pong.main(), at its
             default settings (its --envs default included)

and separately the project's update path (update_policy) on one 100,000-step
batch of synthetic sparse difference frames.

Each variant runs in its own subprocess (this file re-invoked with --variant),
so its peak RSS is its own. The own loop runs first, for --episodes episodes
(by default three batches, so three updates and the idle workers at the end of
each batch are in its figure); the agent steps it played (from its
progress.csv) are then played by the emulator, the ceiling and the reference
loop.

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


def variant_own(args):
    """tutorial_atari_pong.main() for --episodes episodes. The loop is timed
    from the end of train()'s setup (ProgressLog created, just before its
    loop starts) to the return of its last update_policy call (--save-every is
    set past the run, so nothing else follows in the loop); the whole call is
    timed as well. The hooks only observe: the real functions run. One of them
    wraps play_episode, in the worker processes too (they are forked after
    it is in place), to count each episode's CPU seconds and preemptions."""
    tap = import_project()
    marks = {"updates": 0, "update_steps": 0, "update_seconds": 0.0, "episodes": []}
    original_log, original_update, original_play = (
        tap.ProgressLog,
        tap.update_policy,
        tap.play_episode,
    )

    class TimedProgressLog(original_log):
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

    tap.ProgressLog, tap.update_policy, tap.play_episode = (
        TimedProgressLog,
        timed_update_policy,
        counted_play_episode,
    )
    argv = [
        "--episodes",
        str(args.episodes),
        "--model-dir",
        args.model_dir,
        "--save-every",
        str(10**9),
    ]
    if args.batch_size is not None:
        argv += ["--batch-size", str(args.batch_size)]
    if args.envs is not None:
        argv += ["--envs", str(args.envs)]
    log_path = os.path.join(args.model_dir, "stdout.txt")
    try:
        with open(log_path, "w") as log, contextlib.redirect_stdout(log):
            started = time.perf_counter()
            tap.main(argv)
            whole = time.perf_counter() - started
    finally:
        tap.ProgressLog, tap.update_policy, tap.play_episode = (
            original_log,
            original_update,
            original_play,
        )
    with open(os.path.join(args.model_dir, "progress.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    steps = sum(int(row["steps"]) for row in rows)
    if "loop_start" in marks and "loop_end" in marks:
        seconds, timed = (
            marks["loop_end"] - marks["loop_start"],
            "training loop, updates included (hooks)",
        )
    else:  # the hooks did not fire (renamed functions?): fall back to the whole call
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
        "envs": tap.parse_args(argv).envs,
        "batch_size": tap.parse_args(argv).batch_size,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_children_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),
    }
    if "loop_end" in marks:
        result["trainer_cpu_seconds"] = marks["trainer_end"][0] - marks["trainer_start"][0]
        result["machine"] = machine_shares(marks["machine_start"], marks["machine_end"])
    return result


def synthetic_episodes(tap, total_steps, rng, first_number=0):
    """Episodes of synthetic difference frames that look like real ones to the
    update: per step nnz ~ Poisson(19) clipped to [0, 80] (0 on an episode's
    first step), distinct sorted pixel indices, signs +-1, labels 0..2,
    a +-1 reward every ~60 steps and a point on each episode's last step."""
    import numpy as np

    episodes, number, left = [], first_number, total_steps
    while left > 0:
        steps = min(left, int(rng.integers(1100, 1301)))
        if 0 < left - steps < 200:  # no tiny last episode
            steps = left
        nnz = np.clip(rng.poisson(19, steps), 0, 80).astype(np.int16)
        nnz[0] = 0
        rows = np.repeat(np.arange(steps), nnz)
        indices = rng.integers(0, 6400, rows.size)
        while True:  # redraw repeated pixels within a step until all are distinct
            order = np.lexsort((indices, rows))
            rows, indices = rows[order], indices[order]
            repeated = np.flatnonzero((rows[1:] == rows[:-1]) & (indices[1:] == indices[:-1])) + 1
            if repeated.size == 0:
                break
            indices[repeated] = rng.integers(0, 6400, repeated.size)
        signs = rng.choice(np.array([-1, 1], np.int8), rows.size)
        labels = rng.integers(0, 3, steps).astype(np.int8)
        rewards = np.zeros(steps, np.int8)
        point = -1
        while True:
            point += int(rng.integers(30, 91))
            if point >= steps - 1:
                break
            rewards[point] = rng.choice([-1, 1], p=[0.9, 0.1])
        rewards[-1] = rng.choice([-1, 1], p=[0.9, 0.1])
        episodes.append(tap.Episode(number, nnz, indices.astype(np.int16), signs, labels, rewards))
        number, left = number + 1, left - steps
    return episodes


def variant_update(args):
    """One update_policy call on an args.update_steps-step synthetic batch,
    after a warm-up call on a small batch (tracing the tf.function)."""
    import numpy as np

    tap = import_project()
    model = tap.build_policy(tap.hidden, tap.seed)
    optimizer = tap.make_optimizer(model, tap.learning_rate, tap.decay_rate)
    model.eval()
    gradient_fn = tap.make_gradient_fn(model)
    rng = np.random.default_rng(args.seed)
    tap.update_policy(model, optimizer, gradient_fn, synthetic_episodes(tap, 2000, rng), tap.gamma)
    rss_after_warmup = current_rss_mb()
    episodes = synthetic_episodes(tap, args.update_steps, rng)
    nnz_mean = float(np.mean(np.concatenate([e.nnz for e in episodes])))
    rss_before = current_rss_mb()
    started = time.perf_counter()
    steps = tap.update_policy(model, optimizer, gradient_fn, episodes, tap.gamma)
    seconds = time.perf_counter() - started
    return {
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
    first_start, last_end = min(r["started"] for r in results), max(r["ended"] for r in results)
    return {
        "processes": processes,
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


def main(argv=None):
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
        help="steps in the synthetic update batch",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=5,
        help=(
            "times the own loop and its ceiling are timed back to back (the median round is shown)"
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
    args = parser.parse_args(argv)
    if args.variant:
        return run_variant(args)

    started = time.perf_counter()
    common = ["--seed", str(args.seed)] + (
        [] if args.batch_size is None else ["--batch-size", str(args.batch_size)]
    )

    # The own loop and its ceiling, side by side, in --rounds rounds. A
    # virtual machine's speed drifts by tens of per cent within a minute, so
    # each own run is bracketed by ceiling runs, one just before and one just
    # after (each shared with the neighbouring round), and its ratio is to
    # their mean: a steady drift cancels. A first own run, not counted, gives
    # the worker count and step count for the first ceiling, and warms the
    # caches that the first TensorFlow import fills.
    def own_run():
        with tempfile.TemporaryDirectory(prefix="pong-bench-") as model_dir:
            own = spawn(
                "own",
                common
                + ["--episodes", str(args.episodes), "--model-dir", model_dir]
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

    warm_up = own_run()
    before = spawn_ceiling(warm_up["envs"], warm_up["steps"], args.seed, args.timeout)
    rounds = []
    for _ in range(args.rounds):
        own = own_run()
        after = spawn_ceiling(own["envs"], own["steps"], args.seed, args.timeout)
        ceiling = bracketed(before, after)
        rounds.append((own["steps"] / own["seconds"] / ceiling["summed_steps_per_s"], own, ceiling))
        before = after
    ratios = [ratio for ratio, _, _ in rounds]
    breakdowns = [where_time_went(own, ceiling) for _, own, ceiling in rounds]
    _, own, ceiling = sorted(rounds, key=lambda r: r[0])[(len(rounds) - 1) // 2]
    results = {"own": own, "ceiling": ceiling}
    steps = own["steps"]
    batch_size = own["batch_size"]  # the project's default unless --batch-size
    results["emulator"] = spawn("emulator", common + ["--steps", str(steps)], args.timeout)
    if not args.skip_reference:
        results["reference"] = spawn(
            "reference",
            ["--seed", str(args.seed), "--batch-size", str(batch_size), "--steps", str(steps)],
            args.timeout,
        )
    update = spawn("update", common + ["--update-steps", str(args.update_steps)], args.timeout)

    rate = {name: r["steps"] / r["seconds"] for name, r in results.items()}
    rate["ceiling"] = ceiling["summed_steps_per_s"]
    print(
        f"Pong-v0 training loop benchmark: {steps} agent steps each "
        f"(own loop: {own['episodes']} episodes, --envs {own['envs']}, batch size {batch_size})"
    )
    print()
    print(
        f"{'variant':<11}{'steps':>8}{'updates':>9}{'seconds':>9}{'steps/s':>10}{'x emulator':>12}"
        f"{'x ceiling':>11}{'peak RSS MB':>13}{'update s':>10}"
    )
    for name in ("emulator", "ceiling", "reference", "own"):
        if name not in results:
            continue
        r = results[name]
        print(
            f"{name:<11}{r['steps']:>8}{r['updates']:>9}{r['seconds']:>9.2f}{rate[name]:>10.0f}"
            f"{rate[name] / rate['emulator']:>12.2f}{rate[name] / rate['ceiling']:>11.2f}"
            f"{r['peak_rss_mb']:>13.0f}"
            f"{fmt(r.get('update_seconds') if r['updates'] else None, '.2f'):>10}"
        )
    print(
        f"{'update':<11}{update['steps']:>8}{1:>9}{update['seconds']:>9.2f}{'':>10}{'':>12}{'':>11}"
        f"{update['peak_rss_mb']:>13.0f}{update['seconds']:>10.2f}"
    )
    print()
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
        f"update: update_policy on {update['steps']} synthetic steps "
        f"in {update['episodes']} episodes "
        f"(mean {update['nnz_mean']:.1f} changed pixels per step), after a warm-up; RSS "
        f"{update['rss_before_update_mb']:.0f} MB before, "
        f"peak {update['peak_rss_mb']:.0f} MB for the whole process."
    )
    print(
        "rounds: own / ceiling, each own run between two ceiling runs: "
        f"{', '.join(format(r, '.2f') for r in ratios)}; the table shows the median round."
    )
    print(
        "where each round's ratio went (own | ceiling): workers playing, "
        "the rest waiting at batch ends and for updates | on a CPU while playing | "
        "agent steps per CPU second | preemptions per second | machine idle, stolen"
    )
    for number, b in enumerate(breakdowns, 1):
        machine = " | ".join(
            f"{m['idle']:.0%}, {m['steal']:.0%}" if m else "-"
            for m in (b["own_machine"], b["ceiling_machine"])
        )
        print(
            f"  round {number}: {b['ratio']:.2f} = {b['own_playing_share']:.0%} playing | "
            f"{b['own_on_cpu_share']:.0%} {b['ceiling_on_cpu_share']:.0%} | "
            f"{b['own_steps_per_cpu_s']:.0f} {b['ceiling_steps_per_cpu_s']:.0f} | "
            f"{b['own_preemptions_per_s']:.1f} {b['ceiling_preemptions_per_s']:.1f} | {machine}; "
            f"trainer {b['own_trainer_cpu_share']:.0%} of a CPU"
        )
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
    summary = {
        "steps": steps,
        "steps_per_s": rate,
        "ratio_vs_emulator": rate["own"] / rate["emulator"],
        "ratio_vs_reference": rate["own"] / rate["reference"] if "reference" in rate else None,
        "ratio_vs_ceiling": rate["own"] / rate["ceiling"],
        "ratio_vs_ceiling_rounds": ratios,
        "ratio_vs_ceiling_breakdown": breakdowns,
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
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
