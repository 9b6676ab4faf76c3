"""The shipped model holds its own against Pong's built-in player."""

import pathlib

import numpy as np
from helpers import PLAY_SUMMARY_RE, REPO, assert_one_line_error, run_script

PRETRAINED = (
    pathlib.Path(__file__).resolve().parent.parent / "models" / "pretrained" / "model_pong.npz"
)
WEIGHT_NAMES = ("hidden/weights", "hidden/biases", "output/weights", "output/biases")


def points(pong, weights, episodes=5, seed=0):
    """(won, lost) over a few episodes of Pong-v0, the same emulator seed each time."""
    player = pong.LocalPlayer((seed, 0))
    try:
        played = list(player.play(weights, range(episodes), lambda line: None, lambda: False))
    finally:
        player.close()
    return sum(e.points_won for e in played), sum(e.points_lost for e in played)


def test_pretrained_checkpoint_loads_with_the_default_settings(pong):
    arrays = pong.read_checkpoint(str(PRETRAINED), pong.hidden)
    assert int(arrays["state/episode"]) > 0


def test_pretrained_checkpoint_was_trained_with_the_tutorials_optimizer(pong):
    arrays = pong.read_checkpoint(str(PRETRAINED), pong.hidden)
    assert int(arrays["state/format"]) == pong.CHECKPOINT_FORMAT  # format 1 was Keras' RMSprop


def test_pretrained_model_holds_its_own_and_far_outplays_a_random_policy(pong):
    arrays = pong.read_checkpoint(str(PRETRAINED), pong.hidden)
    trained = [arrays[name] for name in WEIGHT_NAMES]
    uniform = [np.zeros_like(w) for w in trained]  # all logits 0: each action with probability 1/3
    won, lost = points(pong, trained)
    # The shipped model wins more than half the points at --play 100; 40% over
    # 5 episodes leaves room for luck. Chance wins one or two points in a hundred.
    assert won / (won + lost) >= 0.4, (won, lost)
    assert points(pong, uniform)[0] < won / 4


def test_play_and_plot_use_the_shipped_agent_before_a_run_of_your_own_and_say_so(tmp_path):
    """A fresh clone's first commands: --play and --plot, with no run in the default folder, show
    the shipped agent and say so in their first line; once a run of your own is there, or a
    folder is named, that is what they use."""
    shipped = REPO / "models" / "lr0.00407-decay0.988-he-normal"
    played = run_script(["--play", 1, "--envs", 1], tmp_path)
    assert played.returncode == 0, played.describe()
    assert played.lines[0] == (
        "models holds no checkpoint of your own yet: playing the agent this project ships, "
        f"{shipped / 'seed-1' / 'episode-25000.npz'} (train one to play yours)"
    )
    assert PLAY_SUMMARY_RE.match(played.lines[-1]), played.lines[-1]

    plotted = run_script(["--plot"], tmp_path)
    assert plotted.returncode == 0, plotted.describe()
    assert plotted.lines[0] == (
        "models holds no run of your own yet: drawing the runs of the agent this project ships, "
        f"{shipped} (train one to draw yours)"
    )
    assert plotted.lines[-1].startswith(
        f"wrote {pathlib.Path('models') / 'lr0.00407-decay0.988-he-normal.png'} (the shipped "
    )
    assert (tmp_path / "models" / "lr0.00407-decay0.988-he-normal.png").stat().st_size > 10_000

    refused = run_script(["--play", 1, "--model-dir", "mine"], tmp_path)
    assert_one_line_error(refused)
    assert "no checkpoint at mine/model_pong.npz" in refused.stderr, "another folder is yours"
