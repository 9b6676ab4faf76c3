"""--game: the table of games, their frames on real screens, the returns that restart at a lost
life, and every game of the table trained, resumed and played end to end by the real script."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import (
    EPISODE_RE,
    POINT_RE,
    REPO,
    SAVED_RE,
    assert_one_line_error,
    load_checkpoint,
    read_progress,
    rewards_episode,
    run_script,
)

GAMES = ["BeamRider", "Breakout", "Enduro", "Pong", "Qbert", "Seaquest", "SpaceInvaders"]
OTHER_GAMES = [name for name in GAMES if name != "Pong"]
SCORE_LINE_RE = re.compile(r"^episode (\d+): score (-?\d+)$")
SCORE_SUMMARY_RE = re.compile(
    r"^played (\d+) episodes? with (.+): mean score (-?\d+\.\d) "
    r"\((95% interval (-?\d+\.\d) to (-?\d+\.\d)|one episode: no interval)\), "
    r"lowest (-?\d+), highest (-?\d+)$"
)


def test_the_table_holds_the_seven_games_of_mnih_et_al(pong):
    assert sorted(pong.GAMES) == GAMES
    assert pong.GAMES["Pong"].actions == (1, 2, 3)
    assert pong.GAMES["Pong"].restart == "point"
    assert {pong.GAMES[name].restart for name in OTHER_GAMES} == {"life"}


@pytest.mark.parametrize("name", GAMES)
def test_each_game_is_its_v0_environment_with_the_tables_actions(pong, name):
    env = pong.make_env(1, None, name)
    try:
        assert env.spec.id == f"{name}-v0"
        assert env.spec.kwargs["repeat_action_probability"] == 0.25
        assert env.spec.kwargs["frameskip"] == (2, 5)
        minimal = len(env.unwrapped.ale.getMinimalActionSet())
        assert env.action_space.n == minimal
        actions = pong.GAMES[name].actions
        expected = (1, 2, 3) if name == "Pong" else tuple(range(minimal))
        assert actions == expected
    finally:
        env.close()


def real_screens(pong, name, count=300, seed=2):
    """count screens of real play with random actions, every 3rd step from the start."""
    env = pong.make_env(seed, None, name)
    rng = np.random.default_rng(seed)
    screens = []
    try:
        env.reset()
        while len(screens) < count:
            for _ in range(3):
                *_, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
                if terminated or truncated:
                    env.reset()
            screens.append(env.ale.getScreen().copy())
    finally:
        env.close()
    return screens


def slow_frame(pong, name, screen):
    """The frame by definition, pixel by pixel: a pixel is drawn where any pixel of its block of
    the field is not background (nor, where the background changes, the field's commonest
    colour)."""
    rules = pong.GAMES[name]
    (top, bottom), (left, right) = rules.rows, rules.columns
    field = screen[top:bottom, left:right]
    background = set(rules.background)
    if rules.changing_background:
        background.add(int(np.bincount(field.ravel()).argmax()))
    drawn = ~np.isin(field, list(background))
    rows = [i * (bottom - top) // 80 for i in range(81)]  # the blocks' edges
    columns = [i * (right - left) // 80 for i in range(81)]
    frame = np.zeros((80, 80), bool)
    for i in range(80):
        for j in range(80):
            frame[i, j] = drawn[rows[i] : rows[i + 1], columns[j] : columns[j + 1]].any()
    return frame.ravel()


@pytest.mark.parametrize("name", OTHER_GAMES)
def test_each_games_frame_marks_a_pixel_where_its_block_holds_a_thing(pong, name):
    prepro = pong.frame_function(name)
    screens = real_screens(pong, name, count=40)
    frames = [prepro(screen) for screen in screens]
    for screen, frame in zip(screens[::8], frames[::8], strict=True):
        assert frame.shape == (6400,) and frame.dtype == bool
        np.testing.assert_array_equal(frame, slow_frame(pong, name, screen))
    drawn = np.mean([frame.mean() for frame in frames])
    assert 0 < drawn < 0.3, f"{name}: {drawn:.1%} of the frame drawn: background left in"
    moved = [np.count_nonzero(a != b) for a, b in zip(frames, frames[1:], strict=False)]
    assert np.mean(moved) > 1, f"{name}: nothing moves in its difference frames"


def block_of(pixels, start, stop):
    """The 80 x 80 frame's row (or column) that each screen row (or column) falls in."""
    edges = start + np.arange(81) * (stop - start) // 80
    return np.searchsorted(edges, pixels, side="right") - 1


@pytest.mark.parametrize(
    "name, colour, rows, what",
    [
        ("Breakout", 70, (189, 193), "the paddle"),
        ("SpaceInvaders", 196, (185, 195), "the cannon"),
        ("Seaquest", 24, (46, 153), "the submarine"),
    ],
)
def test_the_players_own_thing_is_drawn(pong, name, colour, rows, what):
    """On real screens, wherever the player's paddle, cannon or submarine is (its colour in its
    rows), the frame is drawn; and most of the frame, the background, is not."""
    prepro = pong.frame_function(name)
    rules = pong.GAMES[name]
    seen = 0
    for screen in real_screens(pong, name, count=60):
        frame = prepro(screen).reshape(80, 80)
        ys, xs = np.nonzero(screen[rows[0] : rows[1]] == colour)
        ys = ys + rows[0]
        inside = (xs >= rules.columns[0]) & (xs < rules.columns[1]) & (ys < rules.rows[1])
        if not inside.any():
            continue
        seen += 1
        frame_rows = block_of(ys[inside], *rules.rows)
        frame_columns = block_of(xs[inside], *rules.columns)
        assert frame[frame_rows, frame_columns].all(), f"{what} not drawn in {name}"
        assert frame.mean() < 0.3
    assert seen >= 10, f"{what} ({colour}) seen on only {seen} screens of {name}"


def test_the_tutorials_pong_frame_is_the_pong_rows_frame(pong):
    assert pong.frame_function("Pong") is pong.prepro


# --- returns that restart at a lost life ------------------------------------------------------


def life_episode(pong, rewards, ends):
    episode = rewards_episode(pong, rewards)
    episode.ends = np.array(ends, bool)
    return episode


def test_returns_restart_after_a_lost_life_not_at_each_reward(pong):
    rewards = [0, 1, 0, 4, 0, 0, 7, 0]
    ends = [0, 0, 0, 1, 0, 0, 0, 1]  # a life lost after step 3; the game over after step 7
    got = pong.discounted(life_episode(pong, rewards, ends), 0.5)
    first_life = [0.5 * (1 + 0.5 * 0.5 * 4), 1 + 0.5 * 0.5 * 4, 0.5 * 4, 4]
    second_life = [0.25 * 7, 0.5 * 7, 7, 0]
    np.testing.assert_allclose(got, first_life + second_life, rtol=1e-6)


def test_pongs_returns_are_the_tutorials_reset_at_every_point(pong):
    rng = np.random.default_rng(3)
    rewards = np.zeros(500, np.int16)
    rewards[rng.choice(500, 30, replace=False)] = rng.choice([-1, 1], 30)
    rewards[-1] = 1
    episode = rewards_episode(pong, rewards)
    expected = pong.tl.rein.discount_episode_rewards(rewards.astype(np.float32), 0.99)
    np.testing.assert_array_equal(pong.discounted(episode, 0.99), expected)  # bit for bit


def test_a_life_games_cut_episode_keeps_every_step(pong):
    """Pong leaves out the steps of an undecided last point; a game of lives ends its episodes
    with an end (play_episode marks a cut episode's last step), so every step counts."""
    episode = life_episode(pong, [0, 5, 0, 0, 0, 3], [0, 0, 1, 0, 0, 1])
    returns = pong.batch_returns([episode], 0.9)
    assert np.count_nonzero(returns) == 6
    np.testing.assert_allclose(returns.mean(), 0, atol=1e-6)


# --- the script, end to end, on every game ----------------------------------------------------


@pytest.fixture(scope="module", params=OTHER_GAMES)
def game_run(request, tmp_path_factory):
    """A game trained for one episode, then resumed for another: each with an update."""
    name = request.param
    cwd = tmp_path_factory.mktemp(name.lower())
    flags = ["--game", name, "--episodes", "1", "--batch-size", "1", "--envs", "1"]
    first = run_script(flags, cwd, timeout=600)
    second = run_script([*flags, "--resume"], cwd, timeout=600)
    return name, cwd, first, second


@pytest.mark.e2e
def test_training_another_game_writes_its_run_in_its_own_folder(game_run):
    name, cwd, first, second = game_run
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    folder = cwd / "models" / name.lower()
    checkpoint = folder / f"model_{name.lower()}.npz"
    assert SAVED_RE.match(first.lines[-1]).groups() == (str(checkpoint.relative_to(cwd)), "1")
    assert SAVED_RE.match(second.lines[-1]).groups()[1] == "2"
    assert not any(POINT_RE.match(line) for line in first.lines + second.lines)
    episodes = [line for line in first.lines + second.lines if EPISODE_RE.match(line)]
    assert len(episodes) == 2
    rows = read_progress(folder)
    assert [row["episode"] for row in rows] == ["0", "1"]
    assert [float(row["reward"]) for row in rows] == [
        float(EPISODE_RE.match(line).group(1)) for line in episodes
    ]
    arrays = load_checkpoint(checkpoint)
    assert str(arrays["config/game"]) == name
    n_actions = len(arrays["config/actions"])
    assert arrays["output/weights"].shape == (200, n_actions) and n_actions >= 4
    assert int(arrays["state/episode"]) == 2
    assert "resumed from" in second.stdout


@pytest.mark.e2e
def test_another_games_checkpoint_plays_without_the_game_flag(game_run):
    name, cwd, _, _ = game_run
    checkpoint = cwd / "models" / name.lower() / f"model_{name.lower()}.npz"
    result = run_script(["--play", "1", "--model", str(checkpoint), "--envs", "1"], cwd)
    assert result.returncode == 0, result.stderr
    assert SCORE_LINE_RE.match(result.lines[-2]), result.lines[-2]
    summary = SCORE_SUMMARY_RE.match(result.lines[-1])
    assert summary and summary.group(1) == "1" and summary.group(4) == "one episode: no interval"
    assert summary.group(3) == f"{float(SCORE_LINE_RE.match(result.lines[-2]).group(2)):.1f}"


@pytest.mark.e2e
def test_another_games_checkpoint_is_refused_for_pong(game_run):
    name, cwd, _, _ = game_run
    checkpoint = cwd / "models" / name.lower() / f"model_{name.lower()}.npz"
    for flags in (["--play", "1", "--game", "Pong"], ["--resume", "--episodes", "1"]):
        result = run_script([*flags, "--model", str(checkpoint)], cwd)
        assert result.returncode == 2
        assert_one_line_error(result)
        assert f"holds a --game {name} policy, this run has --game Pong" in result.stderr


@pytest.mark.e2e
def test_the_convolutional_policy_plays_another_game_with_a_logit_per_action(tmp_path):
    flags = ["--game", "Breakout", "--network", "cnn", "--episodes", "1", "--batch-size", "1"]
    result = run_script([*flags, "--envs", "1"], tmp_path)
    assert result.returncode == 0, result.stderr
    checkpoint = tmp_path / "models" / "breakout" / "model_breakout.npz"
    arrays = load_checkpoint(checkpoint)
    assert (str(arrays["config/network"]), str(arrays["config/game"])) == ("cnn", "Breakout")
    assert arrays["output/weights"].shape == (256, 4)
    played = run_script(["--play", "1", "--model", str(checkpoint), "--envs", "1"], tmp_path)
    assert played.returncode == 0, played.stderr
    assert SCORE_SUMMARY_RE.match(played.lines[-1]), played.lines[-1]


@pytest.mark.e2e
def test_play_prints_the_mean_score_with_its_interval(tmp_path):
    flags = ["--game", "Breakout", "--episodes", "1", "--batch-size", "1", "--envs", "1"]
    assert run_script(flags, tmp_path).returncode == 0
    result = run_script(["--game", "Breakout", "--play", "3", "--envs", "1"], tmp_path)
    assert result.returncode == 0, result.stderr
    scores = [int(SCORE_LINE_RE.match(line).group(2)) for line in result.lines[-4:-1]]
    summary = SCORE_SUMMARY_RE.match(result.lines[-1])
    assert summary, result.lines[-1]
    mean = np.mean(scores)
    half = 1.96 * np.std(scores, ddof=1) / np.sqrt(3)
    assert float(summary.group(3)) == pytest.approx(mean, abs=0.05)
    assert float(summary.group(5)) == pytest.approx(mean - half, abs=0.05)
    assert float(summary.group(6)) == pytest.approx(mean + half, abs=0.05)
    assert (int(summary.group(7)), int(summary.group(8))) == (min(scores), max(scores))
    plot = run_script(["--plot", "models/breakout"], tmp_path)
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "models" / "breakout" / "learning_curve.png").stat().st_size > 10_000
    assert "the mean score over the 1 episode before each mark" in plot.stdout


@pytest.mark.e2e
def test_another_game_is_recorded_as_a_gif_of_its_own_screens(game_run, tmp_path):
    """--record-gif 40 at scale 1: the game's first 40 observations, 210 x 160, at 30 frames a
    second (Pillow merges repeated frames into longer ones)."""
    from PIL import Image, ImageSequence

    name, cwd, _, _ = game_run
    checkpoint = cwd / "models" / name.lower() / f"model_{name.lower()}.npz"
    flags = ["--play", "1", "--model", str(checkpoint), "--envs", "1", "--record", "videos"]
    result = run_script([*flags, "--record-gif", "40", "--record-scale", "1"], tmp_path)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "videos" / "episode-000000.gif") as gif:
        assert gif.size == (160, 210)
        durations = [frame.info["duration"] for frame in ImageSequence.Iterator(gif)]
    assert sum(durations) == 40 * 30


@pytest.mark.e2e
def test_plotting_runs_of_two_games_together_is_refused(tmp_path):
    for name in ("Breakout", "Pong"):
        flags = ["--game", name, "--episodes", "1", "--batch-size", "1", "--envs", "1"]
        assert run_script([*flags, "--model-dir", name], tmp_path).returncode == 0
    result = run_script(["--plot", "Pong", "Breakout"], tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result)
    assert "--plot draws runs of one game: Pong is Pong's, Breakout is not" in result.stderr


@pytest.mark.e2e
def test_the_random_player_scores_each_game_with_an_interval():
    command = [sys.executable, str(REPO / "bench" / "random_player.py"), "--episodes", "3"]
    result = subprocess.run(
        [*command, "--game", "Breakout", "--game", "SpaceInvaders"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    report = json.loads(lines[-1])
    assert sorted(report) == ["Breakout", "SpaceInvaders"]
    for figures in report.values():
        assert figures["episodes"] == 3
        low, high = figures["interval"]
        assert low <= figures["mean"] <= high
        assert figures["lowest"] <= figures["mean"] <= figures["highest"]
        assert figures["mean_steps"] > 100
    assert report["SpaceInvaders"]["mean"] > 0  # random shots hit some aliens
    assert lines[0].startswith("Breakout: random player ")
    assert "the paper's random player 1.2, DQN 168" in lines[0]


def test_the_random_players_help_gives_its_whole_description_and_each_default_once():
    command = [sys.executable, str(REPO / "bench" / "random_player.py"), "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "the baseline that Mnih et al. 2013 give beside each game's results, measured on" in text
    assert "default: all seven)" in text and "(default: None)" not in text
    assert text.count("(default: ") == 2, "--episodes and --seed; --game says 'all seven'"
