"""Watching a policy: --play, videos, TensorBoard scalars and --plot."""
import glob
import shutil

import numpy as np
import pytest

from helpers import PLAY_RE, PLAY_SUMMARY_RE, count_video_frames, read_progress, run_script

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
    for w, l, m in zip(won, lost, scores):
        assert max(w, l) == 21
        assert m[4] == ("won" if w > l else "lost")
    summary = PLAY_SUMMARY_RE.match(lines[2])
    assert summary, lines[2]
    assert int(summary[1]) == 2 and summary[2] == str(trained.checkpoint)
    assert int(summary[3]) == sum(w > l for w, l in zip(won, lost)) and int(summary[4]) == 2
    assert int(summary[5]) == sum(won)
    assert int(summary[6]) == sum(won) + sum(lost)
    assert float(summary[7]) == pytest.approx(100 * sum(won) / (sum(won) + sum(lost)), abs=0.05)
    assert float(summary[8]) == pytest.approx(np.mean(np.array(won) - np.array(lost)), abs=1e-6)
    assert "Traceback" not in result.stderr


def test_play_learns_nothing(play_run, trained):
    _, _, checkpoint_before = play_run
    assert trained.checkpoint.read_bytes() == checkpoint_before
    assert [int(r["episode"]) for r in read_progress(trained.model_dir)] == [0, 1]


def test_play_records_every_episode_as_an_mp4(play_run):
    cwd, _, _ = play_run
    assert sorted(p.name for p in (cwd / "videos").iterdir()) == ["episode-000000.mp4", "episode-000001.mp4"]
    frames, shapes = count_video_frames(cwd / "videos" / "episode-000000.mp4")
    assert frames > 100
    assert shapes == {(210, 160, 3)}


def test_record_creates_a_missing_directory(trained, tmp_path):
    result = run_script(["--play", 1, "--record", "videos/new", "--model-dir", trained.model_dir], tmp_path)
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
    assert shapes == {(210, 160, 3)}


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
    assert set(scalars) == {"episode/reward", "episode/points_won", "episode/points_lost", "episode/steps",
                            "episode/seconds", "episode/running_mean"}
    assert scalars["episode/reward"] == {int(r["episode"]): float(r["reward"]) for r in rows}
    assert scalars["episode/steps"] == {int(r["episode"]): float(r["steps"]) for r in rows}
    assert scalars["episode/points_won"] == {int(r["episode"]): float(r["points_won"]) for r in rows}
    for row in rows:
        assert scalars["episode/seconds"][int(row["episode"])] == pytest.approx(float(row["seconds"]), abs=1e-5)
        assert scalars["episode/running_mean"][int(row["episode"])] == pytest.approx(float(row["running_mean"]),
                                                                                   abs=1e-5)


def test_plot_draws_the_learning_curve_png(trained, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(trained.model_dir, model_dir)
    result = run_script(["--plot", "--model-dir", model_dir], tmp_path)
    assert result.returncode == 0, result.describe()
    output = model_dir / "learning_curve.png"
    assert result.lines == [f"wrote {output}"]
    data = output.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    import matplotlib.image
    image = matplotlib.image.imread(output)
    assert image.shape[:2] == (700, 1000)  # figsize (10, 7) at 100 dpi
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10, "the picture is a single colour"
    assert "Traceback" not in result.stderr


def test_plot_skips_a_torn_last_row_and_says_so(trained, tmp_path):
    """A hard kill can leave half a row at the end of progress.csv."""
    model_dir = tmp_path / "m"
    shutil.copytree(trained.model_dir, model_dir)
    with open(model_dir / "progress.csv", "a", newline="") as f:
        f.write("2,-1")
    result = run_script(["--plot", "--model-dir", model_dir], tmp_path)
    assert result.returncode == 0, result.describe()
    assert result.lines == [f"{model_dir / 'progress.csv'}: skipped 1 torn or malformed rows",
                            f"wrote {model_dir / 'learning_curve.png'}"]
    assert (model_dir / "learning_curve.png").stat().st_size > 10_000
