"""bench/dqn_benchmark.py still runs: tiny arguments (one round, short loops, a small memory), every
variant, and a last line of JSON whose ratios are the ones its rounds measured. No timing is
asserted: the targets are checked by reading the benchmark's output, not by a test."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARK = ROOT / "bench" / "dqn_benchmark.py"
MEMORY = 5000


@pytest.fixture(scope="module")
def run():
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCHMARK),
            *("--steps", "800", "--updates", "5", "--rounds", "1", "--memory", str(MEMORY)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout, json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
def test_the_loops_play_what_was_asked_and_their_ratio_is_theirs(run):
    stdout, result = run
    (only,) = result["rounds"]
    assert set(only) == {"own", "keras"}
    for variant in only.values():
        assert variant["steps"] >= 800
        assert variant["steps_per_second"] == pytest.approx(
            variant["steps"] / variant["seconds"], rel=1e-9
        )
    assert result["loop_own_over_keras"] == pytest.approx(
        only["own"]["steps_per_second"] / only["keras"]["steps_per_second"], rel=1e-9
    )
    assert "own's speed over keras" in stdout


@pytest.mark.e2e
def test_the_update_is_timed_for_every_path_and_the_loop_is_taken_apart(run):
    _, result = run
    own = result["rounds"][0]["own"]
    assert set(result["update_ms"]) == {"own", "keras", "keras_compiled"}
    assert all(math.isfinite(ms) and ms > 0 for ms in result["update_ms"].values())
    assert result["update_speed_own_over_keras"] == pytest.approx(
        own["update_ms"]["keras"] / own["update_ms"]["own"], rel=1e-9
    )
    shares = result["own_loop_shares"]
    assert set(shares) == {"emulator", "memory", "acting", "update", "bookkeeping"}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["bookkeeping"] >= 0  # the parts are timed apart, none inside another
    assert all(shares[part] > 0 for part in ("emulator", "memory", "acting", "update"))


@pytest.mark.e2e
def test_the_memory_s_bytes_are_its_arrays_and_a_full_memory_resumes_exactly(run):
    _, result = run
    memory = result["memory"]
    assert memory["transitions"] == MEMORY
    # 84 x 84 frames, an action byte, a float32 reward and three flags per transition
    assert memory["bytes"] == MEMORY * (84 * 84 + 1 + 4 + 3)
    assert memory["network_bytes"] == 4 * 676915  # the printout's num of params, float32
    assert memory["resumed_exactly"] is True
    assert memory["peak_rss_over_memory_bytes"] == pytest.approx(
        (memory["peak_rss_mb"] - memory["peak_rss_mb_with_1000"]) * 2**20 / memory["bytes"]
    )
