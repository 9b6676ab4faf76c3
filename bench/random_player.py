"""A random player's score in each game of tutorial_atari_pong.py's table, the baseline that
Mnih et al. 2013 give beside each game's results, measured on our emulator and settings.

The player presses uniform random actions from the game's minimal action set, on the script's
own environment (the -v0 game: sticky actions, 2 to 4 frames a step; episodes cut at the
script's MAX_EPISODE_STEPS), seeded. Each game's line gives the mean score over the episodes
with its 95% interval (the normal approximation, as --play prints it), beside the paper's random
player and DQN. The last line is one JSON object.

    python bench/random_player.py --game Breakout --game SpaceInvaders   # 100 episodes each
    python bench/random_player.py                                        # all seven games
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Mnih et al. 2013, Table 1: the random player's and DQN's average total reward.
PAPER_RANDOM = {
    "BeamRider": 354,
    "Breakout": 1.2,
    "Enduro": 0,
    "Pong": -20.4,
    "Qbert": 157,
    "Seaquest": 110,
    "SpaceInvaders": 179,
}
PAPER_DQN = {
    "BeamRider": 4092,
    "Breakout": 168,
    "Enduro": 470,
    "Pong": 20,
    "Qbert": 1952,
    "Seaquest": 1705,
    "SpaceInvaders": 581,
}


def import_project():
    """tutorial_atari_pong from the repository root, with the emulator imported."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import tutorial_atari_pong

    tutorial_atari_pong.import_libraries()
    return tutorial_atari_pong


def random_scores(tap, game_name, episodes, seed):
    """The scores and agent steps of `episodes` episodes of uniform random play."""
    env_seed, rng = tap.seeds(seed, 0)
    env = tap.make_env(env_seed, None, game_name)
    scores = []
    steps = 0
    try:
        for _ in range(episodes):
            env.reset()
            score = 0.0
            ended = False
            played = 0
            while not ended and played < tap.MAX_EPISODE_STEPS:
                _, reward, terminated, truncated, _ = env.step(
                    int(rng.integers(env.action_space.n))
                )
                score += reward
                ended = terminated or truncated
                played += 1
            steps += played
            scores.append(score)
    finally:
        env.close()
    return scores, steps


def parse_args(argv):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--game",
        action="append",
        choices=sorted(PAPER_RANDOM),
        help="a game to measure (repeat for several; default: all seven)",
    )
    parser.add_argument(
        "--episodes", type=int, default=100, help="episodes per game (default: %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seeds the emulator and the actions (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be > 0, got {args.episodes}")
    return args


def main(argv=None):
    args = parse_args(argv)
    tap = import_project()
    results = {}
    for game_name in args.game or list(tap.GAMES):
        started = time.perf_counter()
        scores, steps = random_scores(tap, game_name, args.episodes, args.seed)
        mean, interval = tap.mean_interval(scores)
        between = "no interval" if interval is None else f"{interval[0]:.1f} to {interval[1]:.1f}"
        print(
            f"{game_name}: random player {mean:.1f} (95% interval {between}) over "
            f"{len(scores)} episodes, {steps / len(scores):.0f} agent steps each; "
            f"the paper's random player {PAPER_RANDOM[game_name]}, DQN {PAPER_DQN[game_name]} "
            f"({time.perf_counter() - started:.0f} s)"
        )
        results[game_name] = {
            "episodes": len(scores),
            "seed": args.seed,
            "mean": mean,
            "interval": interval,
            "lowest": min(scores),
            "highest": max(scores),
            "mean_steps": steps / len(scores),
            "paper_random": PAPER_RANDOM[game_name],
            "paper_dqn": PAPER_DQN[game_name],
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
