"""Watching a policy: --play, videos, TensorBoard scalars and --plot."""

import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import (
    PLAY_RE,
    PLAY_SUMMARY_RE,
    REPO,
    Result,
    count_video_frames,
    read_progress,
    run_script,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained(train_run):
    assert train_run.result.returncode == 0, train_run.result.describe()
    return train_run


@pytest.fixture(scope="module")
def play_run(trained, tmp_path_factory):
    """--play 2 with the trained checkpoint, recording both episodes."""
    cwd = tmp_path_factory.mktemp("play")
    (cwd / "videos").mkdir()
    checkpoint_before = trained.checkpoint.read_bytes()
    result = run_script(["--play", 2, "--record", "videos", "--model-dir", trained.model_dir], cwd)
    assert result.returncode == 0, result.describe()
    return cwd, result, checkpoint_before


def test_play_prints_one_score_line_per_episode_and_a_summary_that_adds_up(play_run, trained):
    _, result, _ = play_run
    lines = result.lines
    assert len(lines) == 3, result.stdout
    scores = [PLAY_RE.match(line) for line in lines[:2]]
    assert all(scores), lines
    assert sorted(int(m[1]) for m in scores) == [0, 1]
    won = [int(m[2]) for m in scores]
    lost = [int(m[3]) for m in scores]
    for ours, theirs, m in zip(won, lost, scores, strict=True):
        assert max(ours, theirs) == 21
        assert m[4] == ("won" if ours > theirs else "lost")
    summary = PLAY_SUMMARY_RE.match(lines[2])
    assert summary, lines[2]
    assert int(summary[1]) == 2 and summary[2] == str(trained.checkpoint)
    games_won = sum(ours > theirs for ours, theirs in zip(won, lost, strict=True))
    assert int(summary[3]) == games_won and int(summary[4]) == 2
    assert int(summary[5]) == round(100 * games_won / 2)
    interval = {0: (0, 66), 1: (9, 91), 2: (34, 100)}[
        games_won
    ]  # Wilson, 95%, of n = 2 (hand-computed)
    assert (int(summary[6]), int(summary[7])) == interval
    assert int(summary[8]) == sum(won)
    assert int(summary[9]) == sum(won) + sum(lost)
    assert float(summary[10]) == pytest.approx(100 * sum(won) / (sum(won) + sum(lost)), abs=0.05)
    assert float(summary[11]) == pytest.approx(np.mean(np.array(won) - np.array(lost)), abs=1e-6)
    assert "Traceback" not in result.stderr


def test_play_plays_the_same_first_episode_whatever_envs_is(tmp_path):
    """Episode 0 of --play is drawn from the seed alone: one process or two workers, the same
    game (the shipped agent's, whose scores vary from game to game); and one episode is "1
    episode"."""
    shipped = ["--model", REPO / "models" / "pretrained" / "model_pong.npz"]
    alone = run_script(["--play", 1, "--envs", 1, *shipped], tmp_path)
    pooled = run_script(["--play", 3, "--envs", 2, *shipped], tmp_path)
    assert alone.returncode == 0 and pooled.returncode == 0, (alone.describe(), pooled.describe())
    first = [line for line in alone.lines if PLAY_RE.match(line)]
    pooled_lines = [line for line in pooled.lines if PLAY_RE.match(line)]
    assert [PLAY_RE.match(line).group(1) for line in pooled_lines] == ["0", "1", "2"]
    assert len(first) == 1 and first[0] == pooled_lines[0]
    assert alone.lines[-1].startswith("played 1 episode with ")
    assert pooled.lines[-1].startswith("played 3 episodes with ")


def test_play_learns_nothing(play_run, trained):
    _, _, checkpoint_before = play_run
    assert trained.checkpoint.read_bytes() == checkpoint_before
    assert [int(r["episode"]) for r in read_progress(trained.model_dir)] == [0, 1]


def test_play_records_every_episode_as_an_mp4(play_run):
    cwd, _, _ = play_run
    assert sorted(p.name for p in (cwd / "videos").iterdir()) == [
        "episode-000000.mp4",
        "episode-000001.mp4",
    ]
    frames, shapes = count_video_frames(cwd / "videos" / "episode-000000.mp4")
    assert frames > 100
    assert shapes == {(630, 480, 3)}  # 210x160 frames, each pixel a 3x3 block


def test_record_creates_a_missing_directory(trained, tmp_path):
    result = run_script(
        ["--play", 1, "--record", "videos/new", "--model-dir", trained.model_dir], tmp_path
    )
    assert result.returncode == 0, result.describe()
    assert "Traceback" not in result.stderr
    assert (tmp_path / "videos" / "new" / "episode-000000.mp4").is_file()


def test_training_video_has_one_frame_per_observation(pool_run):
    """--record-every 2 during training: episode 0 only, the first and every
    following observation, the last one included: steps + 1 frames."""
    assert pool_run.result.returncode == 0, pool_run.result.describe()
    videos = pool_run.cwd / "videos"
    assert sorted(p.name for p in videos.iterdir()) == ["episode-000000.mp4"]
    steps = int(read_progress(pool_run.model_dir)[0]["steps"])
    frames, shapes = count_video_frames(videos / "episode-000000.mp4")
    assert frames == steps + 1
    assert shapes == {(630, 480, 3)}  # 210x160 frames, each pixel a 3x3 block


def read_scalars(directory):
    import tensorflow as tf

    scalars = {}
    for path in sorted(glob.glob(str(directory / "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return scalars


def test_tensorboard_scalars_match_progress_csv(trained):
    rows = read_progress(trained.model_dir)
    scalars = read_scalars(trained.model_dir / "tensorboard")
    assert set(scalars) == {
        "episode/reward",
        "episode/points_won",
        "episode/points_lost",
        "episode/steps",
        "episode/seconds",
        "episode/running_mean",
    }
    assert scalars["episode/reward"] == {int(r["episode"]): float(r["reward"]) for r in rows}
    assert scalars["episode/steps"] == {int(r["episode"]): float(r["steps"]) for r in rows}
    assert scalars["episode/points_won"] == {
        int(r["episode"]): float(r["points_won"]) for r in rows
    }
    for row in rows:
        assert scalars["episode/seconds"][int(row["episode"])] == pytest.approx(
            float(row["seconds"]), abs=1e-5
        )
        assert scalars["episode/running_mean"][int(row["episode"])] == pytest.approx(
            float(row["running_mean"]), abs=1e-5
        )


def test_plot_draws_the_learning_curve_png(trained, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(trained.model_dir, model_dir)
    result = run_script(["--plot", "--model-dir", model_dir], tmp_path)
    assert result.returncode == 0, result.describe()
    output = model_dir / "learning_curve.png"
    assert (
        result.lines[0].startswith(f"{model_dir}: 2 episodes in ")
        and result.lines[-1] == f"wrote {output}"
    )
    data = output.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    import matplotlib.image

    image = matplotlib.image.imread(output)
    assert image.shape[:2] == (800, 1000)  # figsize (10, 8) at 100 dpi
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10, (
        "the picture is a single colour"
    )
    assert "Traceback" not in result.stderr


def test_plot_skips_a_torn_last_row_and_says_so(trained, tmp_path):
    """A hard kill can leave half a row at the end of progress.csv."""
    model_dir = tmp_path / "m"
    shutil.copytree(trained.model_dir, model_dir)
    with open(model_dir / "progress.csv", "a", newline="") as f:
        f.write("2,-1")
    result = run_script(["--plot", "--model-dir", model_dir], tmp_path)
    assert result.returncode == 0, result.describe()
    assert result.lines[0] == f"{model_dir / 'progress.csv'}: skipped 1 torn or malformed row"
    assert result.lines[1].startswith(f"{model_dir}: 2 episodes in ")
    assert result.lines[-1] == f"wrote {model_dir / 'learning_curve.png'}"
    assert (model_dir / "learning_curve.png").stat().st_size > 10_000


def test_record_gif_keeps_the_first_steps_with_exact_colours_at_3x(pong, trained, tmp_path):
    """--record-gif 60: a looping GIF of the first 60 observations at 30 frames
    a second (GIF's 3/100 s), each pixel an exact 3x3 block of the game's own
    colour; Pillow merges repeated frames into longer ones."""
    from PIL import Image, ImageSequence

    result = run_script(
        [
            "--play",
            1,
            "--envs",
            1,
            "--record",
            "gifs",
            "--record-gif",
            60,
            "--model-dir",
            trained.model_dir,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.describe()
    assert sorted(p.name for p in (tmp_path / "gifs").iterdir()) == ["episode-000000.gif"]
    with Image.open(tmp_path / "gifs" / "episode-000000.gif") as gif:
        assert gif.info["loop"] == 0
        frames = [
            (np.asarray(frame.convert("RGB")), frame.info["duration"])
            for frame in ImageSequence.Iterator(gif)
        ]
    assert sum(duration for _, duration in frames) == 60 * 30
    assert {frame.shape for frame, _ in frames} == {(630, 480, 3)}
    env_seed, _ = pong.seeds(1, 0)  # --seed 1, episode 0: the emulator --play --envs 1 starts with
    env = pong.make_env(env_seed)
    env.reset()
    first_observation = env.ale.getScreenRGB()
    env.close()
    assert np.array_equal(frames[0][0], first_observation.repeat(3, axis=0).repeat(3, axis=1))


def write_progress(directory, running_means, points_won, wall_times=None):
    directory.mkdir(parents=True)
    wall_times = wall_times or ["2026-01-01T00:00:00"] * len(points_won)
    with open(directory / "progress.csv", "w") as f:
        f.write("episode,reward,running_mean,points_won,points_lost,steps,seconds,wall_time\n")
        for episode, (mean, won, time) in enumerate(
            zip(running_means, points_won, wall_times, strict=True)
        ):
            f.write(f"{episode},{2 * won - 21},{mean},{won},21,1000,0.250,{time}\n")


def test_plot_of_several_folders_draws_one_line_per_run_in_one_figure(pong, tmp_path, capsys):
    slow, fast = tmp_path / "runs" / "lr1e-4", tmp_path / "runs" / "lr3e-4"
    write_progress(slow, [-20.0, -19.5, -19.0, -18.5], [0, 1, 2, 3])
    write_progress(fast, [-20.0, -18.0, -16.0], [1, 3, 5])
    figure = pong.plot(pong.parse_args(["--plot", str(slow), str(fast)]))
    output = tmp_path / "runs" / "learning_curve.png"
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {output}"
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    top, bottom = figure.axes
    means = {
        line.get_label(): list(line.get_ydata())
        for line in top.get_lines()
        if not line.get_label().startswith("_")
    }  # the zero line has no label
    assert means == {
        "lr1e-4 (4 episodes)": [-20.0, -19.5, -19.0, -18.5],
        "lr3e-4 (3 episodes)": [-20.0, -18.0, -16.0],
    }, "each run named by its folder, as the folder that holds them all has it"
    # window: a tenth of the shortest run, so 1 episode; each lost 21 points; in the run's colour
    colours = [line.get_color() for line in top.get_lines() if line.get_label() in means]
    won = [list(line.get_ydata()) for line in bottom.get_lines() if line.get_color() in colours]
    assert won == [
        pytest.approx([0, 100 / 22, 200 / 23, 300 / 24]),
        pytest.approx([100 / 22, 300 / 24, 500 / 26]),
    ]


def test_plot_prints_each_run_at_2_and_5_million_agent_steps(pong, tmp_path, capsys):
    """Runs whose episodes differ in length are compared at equal agent steps: each row of
    write_progress plays 1,000, so 2 million are reached at episode 1999."""
    run = tmp_path / "run"
    write_progress(run, [i / 1000 for i in range(6000)], [7] * 6000)
    pong.plot(pong.parse_args(["--plot", str(run)]))
    lines = [line for line in capsys.readouterr().out.splitlines() if "agent steps (" in line]
    assert lines == [
        f"    {m} million agent steps (episode {m * 1000 - 1}, 0.00 h): running mean +{m}.00, "
        "points won 25.0% over the 600 episodes before"
        for m in (2, 5)
    ]


def test_plot_against_steps_draws_each_seed_by_its_agent_steps(pong, tmp_path):
    """--against steps: the x axis is agent steps, so a setting's seeds, whose episodes differ
    in length, are drawn one by one, not as their mean by episode."""
    first, second = tmp_path / "trial" / "seed-1", tmp_path / "trial" / "seed-2"
    write_progress(first, [-20.0, -19.0, -18.0], [1, 2, 3])
    write_progress(second, [-20.0, -17.0], [1, 4])
    figure = pong.plot(pong.parse_args(["--plot", str(first), str(second), "--against", "steps"]))
    top, bottom = figure.axes
    lines = {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for line in top.get_lines()
        if not line.get_label().startswith("_")
    }
    assert lines == {
        "trial/seed-1 (3 episodes)": ([0.001, 0.002, 0.003], [-20.0, -19.0, -18.0]),
        "trial/seed-2 (2 episodes)": ([0.001, 0.002], [-20.0, -17.0]),
    }
    assert bottom.get_xlabel() == "million agent steps"


def test_plot_prints_shares_won_and_hours_of_training_before_each_mark(pong, tmp_path, capsys):
    """Points and games won over the window before each mark (a milestone or
    the last episode), and hours of training, where a gap of 2 minutes or
    more between two episodes is a stop."""
    run = tmp_path / "run"
    times = [f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}" for i in range(5998)] + [
        "2026-01-01T05:00:00",
        "2026-01-01T05:00:01",
    ]  # a stop of over 3 hours before the last two episodes
    won = [
        21 if i % 4 == 0 and i >= 2500 else 7 for i in range(6000)
    ]  # from 2500 a quarter won (each lost 21)
    write_progress(run, [0.0] * 6000, won, times)
    pong.plot(pong.parse_args(["--plot", str(run)]))
    lines = [line for line in capsys.readouterr().out.splitlines() if "agent steps (" not in line]
    quarter = f"points won  {100 * (21 + 3 * 7) / (42 + 3 * 28):.1f}%, games won  25.0%"
    assert lines[:5] == [
        f"{run}: 6000 episodes in 1.67 hours of training; over the 600 episodes before each mark, "
        "and over all since the mark before:",
        f"    5000 episodes: {quarter},  1.39 hours; episodes 0-4999: "
        f"points won  {100 * (625 * 21 + 4375 * 7) / (625 * 42 + 4375 * 28):4.1f}%, "
        "games won  12.5%",
        f"    6000 episodes: {quarter},  1.67 hours; episodes 5000-5999: {quarter}",
        "  running mean first above 0: not yet",
        "  above 0 from then on: not yet",
    ]
    assert lines[-1] == f"wrote {run / 'learning_curve.png'}"


def test_plot_prints_where_the_running_mean_first_went_above_0_and_18_and_where_it_stayed(
    pong, tmp_path, capsys
):
    """Each row of write_progress plays 1,000 agent steps, one second apart."""
    run = tmp_path / "run"
    times = [f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}" for i in range(4000)]
    means = [-1.0] * 1000 + [0.5] * 800 + [-0.1] * 200 + [0.2] * 1600 + [18.5] * 400
    write_progress(run, means, [10] * 4000, times)  # above 0 at 1000, for good from 2000
    pong.plot(pong.parse_args(["--plot", str(run)]))
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith(("  running mean first", "  above"))] == [
        "  running mean first above 0: episode 1000, after 1.0 million agent steps and "
        f"{1000 / 3600:.2f} hours (3000 episodes ago)",
        "  above 0 from then on: episode 2000, after 2.0 million agent steps and "
        f"{2000 / 3600:.2f} hours (2000 episodes ago)",
        "  running mean first above +18: episode 3600, after 3.6 million agent steps and "
        f"{3600 / 3600:.2f} hours (400 episodes ago)",
    ]


def best_lines(lines):
    """--plot's lines on the best stretches of a run."""
    return [line for line in lines if line.startswith("  best ")]


def test_plot_prints_the_best_stretch_and_where_90_percent_of_games_were_first_won(
    pong, tmp_path, capsys
):
    """Over the window (a tenth of the run here: 100 episodes), and over 1,000, the best shares
    and mean reward in a row; the first stretch of the window with 90% of the games won: the
    tutorial's "almost never loses"."""
    run = tmp_path / "run"
    won = [
        21 if 400 <= i < 490 else 10 for i in range(1000)
    ]  # episodes 400-489 won, all others lost
    times = [f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}" for i in range(1000)]
    write_progress(run, [1.0] * 1000, won, times)
    pong.plot(pong.parse_args(["--plot", str(run)]))
    lines = capsys.readouterr().out.splitlines()
    # a game counts as won when its reward (2 * won - 21) is above 0: 90 of the 100 episodes
    # 390-489 and 400-499
    assert best_lines(lines) == [
        "  best 100 episodes in a row: games won 90.0% (episodes 390-489), points won "
        f"{100 * (90 * 21 + 10 * 10) / (90 * 42 + 10 * 31):.1f}% (episodes 390-489), "
        f"mean reward {(90 * 21 + 10 * -1) / 100:+.2f} (episodes 390-489)",
        "  best 1000 episodes in a row: games won 9.0% (episodes 0-999), points won "
        f"{100 * (90 * 21 + 910 * 10) / (90 * 42 + 910 * 31):.1f}% (episodes 0-999), "
        f"mean reward {(90 * 21 + 910 * -1) / 1000:+.2f} (episodes 0-999)",
    ]
    assert lines[-2] == (
        "  90% of games won over 100 episodes in a row: first over episodes 390-489, after 0.5 "
        f"million agent steps and {489 / 3600:.2f} hours"
    )


def test_plot_says_not_yet_while_no_stretch_won_90_percent_of_games(pong, tmp_path, capsys):
    run = tmp_path / "run"
    write_progress(
        run, [1.0] * 100, [0 if i % 5 == 0 else 21 for i in range(100)]
    )  # 8 of any 10 in a row won
    pong.plot(pong.parse_args(["--plot", str(run)]))
    lines = capsys.readouterr().out.splitlines()
    best = best_lines(lines)
    assert [line[: line.index(":")] for line in best] == [
        "  best 10 episodes in a row",
        "  best 100 episodes in a row",
    ], "the window (a tenth of the run) and 100; not 1,000, more than the run has"
    assert best[0].startswith("  best 10 episodes in a row: games won 80.0% (episodes 0-9), ")
    assert lines[-2] == "  90% of games won over 10 episodes in a row: not yet"


@pytest.mark.parametrize(
    "means, expected",
    [
        ([-1.0, 1.0, -1.0, 1.0, 1.0], (1, 3)),
        ([1.0, 1.0], (0, 0)),
        ([-1.0, 0.0], (None, None)),
        ([1.0, -1.0], (0, None)),
    ],
)
def test_crossings_of_0_by_the_running_mean(pong, means, expected):
    assert pong.crossings({"running_mean": np.array(means)}) == expected


def test_plot_names_the_folder_without_progress_csv_in_one_line(pong, tmp_path, capsys):
    write_progress(tmp_path / "a", [-20.0], [1])
    (tmp_path / "b").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        pong.main(["--plot", str(tmp_path / "a"), str(tmp_path / "b")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{os.path.basename(sys.argv[0])}: error: cannot read {tmp_path / 'b' / 'progress.csv'} "
        "(No such file or directory)"
    ]
    assert not (tmp_path / "learning_curve.png").exists()


HEAVY_MODULES = ("tensorflow", "tensorlayer", "ale_py", "gymnasium")


def imported_modules(result):
    """The top-level modules a run imported, from `python -X importtime`'s lines on stderr."""
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.split("|")[-1].strip().split(".")[0])
    return names


@pytest.mark.parametrize(
    "args, status",
    [(["--help"], 0), (["--batch-size", "0"], 2), (["--play", "1", "--episodes", "2"], 2)],
    ids=["help", "bad-value", "idle-flag"],
)
def test_help_and_refused_flags_import_no_tensorflow(tmp_path, args, status):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "tutorial_atari_pong.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == status, done.stderr[-2000:]
    modules = imported_modules(Result(args, done.returncode, done.stdout, done.stderr))
    assert "numpy" in modules, "the importtime lines were read"
    assert not modules & set(HEAVY_MODULES)


def test_the_script_copied_alone_trains_plays_and_plots(tmp_path):
    """The script imports no other file of the project: alone in an empty folder, it trains,
    plays, records and plots, and --plot imports neither TensorFlow nor the emulator."""
    alone = tmp_path / "alone" / "tutorial_atari_pong.py"
    alone.parent.mkdir()
    shutil.copy(REPO / "tutorial_atari_pong.py", alone)
    small = ["--envs", 1, "--hidden", 8, "--model-dir", "m"]
    trained = run_script(
        [
            "--episodes",
            1,
            "--batch-size",
            1,
            *small,
            "--record",
            "v",
            "--record-every",
            1,
            "--record-gif",
            5,
        ],
        alone.parent,
        script=alone,
    )
    assert trained.returncode == 0, trained.describe()
    assert trained.lines[-1] == "saved checkpoint to m/model_pong.npz (episode 1)"
    assert sorted(p.name for p in (alone.parent / "v").iterdir()) == ["episode-000000.gif"]
    played = run_script(["--play", 1, *small], alone.parent, script=alone)
    assert played.returncode == 0, played.describe()
    assert PLAY_SUMMARY_RE.match(played.lines[-1]), played.lines[-1]
    plotted = run_script(["--plot", "m"], alone.parent, script=alone)
    assert plotted.returncode == 0, plotted.describe()
    assert plotted.lines[-1] == f"wrote {alone.parent / 'm' / 'learning_curve.png'}"
    assert (alone.parent / "m" / "learning_curve.png").stat().st_size > 10_000
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(alone), "--plot", "m"],
        cwd=alone.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    modules = imported_modules(Result([], done.returncode, done.stdout, done.stderr))
    assert done.returncode == 0 and "matplotlib" in modules, done.stderr[-2000:]
    assert not modules & set(HEAVY_MODULES)


def test_tensorboard_shows_each_model_folder_as_its_own_run(trained, tmp_path):
    """`tensorboard --logdir runs` names a run by its folder under runs/."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    for name in ("a", "b"):
        shutil.copytree(trained.model_dir, tmp_path / "runs" / name)
    runs = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "runs")).Reload().Runs()
    assert set(runs) == {"a/tensorboard", "b/tensorboard"}
