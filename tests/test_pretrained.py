"""The shipped model holds its own against Pong's built-in player."""

import pathlib

import numpy as np

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
