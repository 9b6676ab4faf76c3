"""The script reads the emulator in a cheaper way than the tutorial: the bare
env with RAM observations, and the screen's palette indices instead of RGB.
These tests check, on the real Pong-v0, that it sees exactly what the
tutorial's way would see."""

import warnings

import gymnasium as gym
import numpy as np
import pytest


def tutorial_prepro(frame):
    """The tutorial's own preprocessing of an RGB frame (Karpathy's prepro)."""
    field = frame[35:195][::2, ::2, 0].copy()
    field[field == 144] = 0
    field[field == 109] = 0
    field[field != 0] = 1
    return field.astype(np.int8).ravel()


def tutorial_env(seed):
    """Pong-v0 as gym.make gives it: wrapped, RGB observations."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make("Pong-v0")
    observation, _ = env.reset(seed=seed)
    return env, observation


def actions(seed, count):
    """A policy that moves: runs of the same action, so rallies, points and scores change."""
    rng = np.random.default_rng(seed)
    return np.repeat(rng.integers(1, 4, count // 8 + 1), 8)[:count].tolist()


@pytest.mark.parametrize("seed", [0, 7])
def test_script_env_gives_the_same_screens_rewards_and_ends_as_gym_make(pong, seed):
    """Same seed, same actions: the bare env the script steps (RAM
    observations, no wrappers) and gym.make's wrapped RGB env agree on every
    frame, reward and episode end, across episode boundaries."""
    ours = pong.make_env(seed)
    theirs, observation = tutorial_env(seed)
    ends = 0
    try:
        for step, action in enumerate(actions(seed, 6000)):
            np.testing.assert_array_equal(
                ours.ale.getScreenRGB(), observation, err_msg=f"step {step}"
            )
            _, reward, terminated, truncated, _ = ours.step(action)
            observation, their_reward, their_terminated, their_truncated, _ = theirs.step(action)
            assert (reward, terminated, truncated) == (
                their_reward,
                their_terminated,
                their_truncated,
            ), step
            if terminated or truncated:
                ends += 1
                ours.reset()
                observation, _ = theirs.reset()
    finally:
        ours.close()
        theirs.close()
    assert ends >= 1, "the comparison crossed an episode boundary"


def test_prepro_of_the_palette_screen_equals_the_tutorials_prepro_of_rgb(pong):
    """Thousands of real frames (points, scores and both paddles moving):
    bit-identical 80x80 frames both ways."""
    env = pong.make_env(3)
    screen = env.ale.getScreen()
    drawn_somewhere = np.zeros(6400, bool)
    try:
        for step, action in enumerate(actions(3, 8000)):
            expected = tutorial_prepro(env.ale.getScreenRGB())
            np.testing.assert_array_equal(
                pong.prepro(screen).astype(np.int8), expected, err_msg=f"step {step}"
            )
            drawn_somewhere |= expected.astype(bool)
            _, _, terminated, truncated, _ = env.step(action)
            env.ale.getScreen(screen)
            if terminated or truncated:
                env.reset()
                env.ale.getScreen(screen)
    finally:
        env.close()
    assert drawn_somewhere.sum() > 1000, "ball and paddles covered much of the field"


def test_pong_draws_no_other_colour_with_a_background_red(pong):
    """Every palette index Pong draws maps to one RGB colour, and only the two
    background indices have red 144 or 109."""
    env = pong.make_env(5)
    reds = {}
    try:
        for action in actions(5, 3000):
            screen, rgb = env.ale.getScreen(), env.ale.getScreenRGB()
            for index in np.unique(screen):
                reds.setdefault(int(index), set()).update(
                    np.unique(rgb[..., 0][screen == index]).tolist()
                )
            if any(env.step(action)[2:4]):
                env.reset()
    finally:
        env.close()
    assert all(len(r) == 1 for r in reds.values()), reds
    assert {i for i, r in reds.items() if r & {144, 109}} == set(pong.BACKGROUND)
    assert len(reds) >= 6, reds
