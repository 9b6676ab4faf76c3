"""The shipped model plays better than chance."""
import pathlib

import numpy as np

PRETRAINED = pathlib.Path(__file__).resolve().parent.parent / "models" / "pretrained" / "model_pong.npz"
WEIGHT_NAMES = ("hidden/weights", "hidden/biases", "output/weights", "output/biases")


def points_won(pong, weights, episodes=5, seed=0):
    """Points won over a few episodes of Pong-v0, the same emulator seed each time."""
    player = pong.LocalPlayer((seed, 0))
    try:
        return sum(e.points_won for e in player.play(weights, range(episodes), lambda line: None, lambda: False))
    finally:
        player.close()


def test_pretrained_checkpoint_loads_with_the_default_settings(pong):
    arrays = pong.read_checkpoint(str(PRETRAINED), pong.hidden)
    assert int(arrays["state/episode"]) > 0


def test_pretrained_model_wins_more_points_than_a_random_policy(pong):
    arrays = pong.read_checkpoint(str(PRETRAINED), pong.hidden)
    trained = [arrays[name] for name in WEIGHT_NAMES]
    uniform = [np.zeros_like(w) for w in trained]  # all logits 0: each action with probability 1/3
    assert points_won(pong, trained) > points_won(pong, uniform)
