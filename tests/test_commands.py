"""Every command of README.md and docs/*.md runs as pasted (issue 57): the lines of each ```bash
block of a page, in order, in a fresh copy of the repository's files (what a fresh clone checks
out), end with exit status 0 and leave every committed file as it was, but those the page's
commands are asked to write. A command that would run for hours or until Ctrl-C, or needs what a
test machine lacks, is listed in SHORT with the short form run in its place, or in NOT_RUN with
why it is not run here; both lists must name commands that are in the pages."""

import hashlib
import os
import re
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, script_env

pytestmark = pytest.mark.e2e

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
ONE_EPISODE = "--episodes 1 --batch-size 1 --envs 1"
DQN_SMALL = "--memory 2000 --learning-starts 500 --epsilon-steps 500"  # updates from step 500

# Commands run in a shorter form: the same command with fewer episodes, trials or games.
SHORT = {
    "python tutorial_atari_pong.py": f"python tutorial_atari_pong.py {ONE_EPISODE}",
    "python tutorial_atari_pong.py --play 5 --record videos/": (
        "python tutorial_atari_pong.py --play 1 --record videos/"
    ),
    "python sweep.py --trials 20 --episodes 3000 --seeds 2": (
        "python sweep.py --trials 1 --episodes 2 --seeds 2"
    ),
    "python sweep.py --trials 20 --episodes 3000 --seeds 2 --study batch-5 -- --batch-size 5": (
        "python sweep.py --trials 1 --episodes 2 --seeds 2 --study batch-5 -- --batch-size 5"
    ),
    "python bench/benchmark.py": None,  # the page's next line is its quick check, run as pasted
    "python tutorial_atari_pong.py --learning-rate 0.004 --decay-rate 0.988": (
        f"python tutorial_atari_pong.py --learning-rate 0.004 --decay-rate 0.988 {ONE_EPISODE}"
    ),
    "python tutorial_atari_pong.py --resume": "python tutorial_atari_pong.py --resume --episodes 1",
    "python tutorial_atari_pong.py --play 100 --envs 1 --model models/pretrained/model_pong.npz": (
        "python tutorial_atari_pong.py --play 1 --envs 1 --model models/pretrained/model_pong.npz"
    ),
    "python tutorial_atari_pong.py --play 100 --envs 1 --model models/pretrained/model_pong.npz "
    "--seed 2": (
        "python tutorial_atari_pong.py --play 1 --envs 1 --model models/pretrained/model_pong.npz "
        "--seed 2"
    ),
    "python tutorial_atari_pong.py --play 5 --record videos/ --model models/pretrained/"
    "model_pong.npz": (
        "python tutorial_atari_pong.py --play 1 --record videos/ --model "
        "models/pretrained/model_pong.npz"
    ),
    "python tutorial_atari_pong.py --resume --model-dir models/lr0.00416-decay0.934-he-normal/"
    "seed-1 --seed 1 --envs 1 --learning-rate 0.0041552021005716745 --decay-rate "
    "0.9341913185587041 --init he-normal --episodes 28500": (
        "python tutorial_atari_pong.py --resume --model-dir models/lr0.00416-decay0.934-he-normal/"
        "seed-1 --seed 1 --envs 1 --learning-rate 0.0041552021005716745 --decay-rate "
        "0.9341913185587041 --init he-normal --episodes 1"
    ),
    "python tutorial_atari_pong.py --envs 1 --model-dir runs/lr1e-4 > runs/lr1e-4.log &": (
        f"python tutorial_atari_pong.py {ONE_EPISODE} --model-dir runs/lr1e-4 > runs/lr1e-4.log &"
    ),
    "python tutorial_atari_pong.py --envs 1 --model-dir runs/lr3e-4 --learning-rate 3e-4 > "
    "runs/lr3e-4.log &": (
        f"python tutorial_atari_pong.py {ONE_EPISODE} --model-dir runs/lr3e-4 --learning-rate 3e-4"
        " > runs/lr3e-4.log &"
    ),
    "python tutorial_atari_pong.py --network cnn --envs 1 --seed 1 --model-dir runs/cnn/seed-1 "
    "--learning-rate 0.00416 --decay-rate 0.934 --init he-normal": (
        f"python tutorial_atari_pong.py --network cnn {ONE_EPISODE} --seed 1 --model-dir "
        "runs/cnn/seed-1 --learning-rate 0.00416 --decay-rate 0.934 --init he-normal"
    ),
    "timeout -s TERM 3h python tutorial_atari_pong.py --game Breakout --envs 1 --seed $seed "
    "--model-dir runs/breakout/seed-$seed --learning-rate 0.00407 --decay-rate 0.988 --init "
    "he-normal > runs/breakout-$seed.log &": (
        "timeout -s TERM 3h python tutorial_atari_pong.py --game Breakout --envs 1 --seed $seed "
        "--model-dir runs/breakout/seed-$seed --learning-rate 0.00407 --decay-rate 0.988 --init "
        "he-normal --episodes 2 --batch-size 2 > runs/breakout-$seed.log &"
    ),
    "python dqn_atari_pong.py": f"python dqn_atari_pong.py --steps 600 {DQN_SMALL}",
    "python dqn_atari_pong.py --resume": "python dqn_atari_pong.py --resume --steps 1200",
    "python dqn_atari_pong.py --play 5": "python dqn_atari_pong.py --play 1",
    "python dqn_atari_pong.py --input difference --model-dir runs/dqn-difference": (
        f"python dqn_atari_pong.py --input difference --model-dir runs/dqn-difference --steps 600 "
        f"{DQN_SMALL}"
    ),
    "python dqn_atari_pong.py --seed 1 --model-dir runs/dqn/seed-1": (
        f"python dqn_atari_pong.py --seed 1 --model-dir runs/dqn/seed-1 --steps 600 {DQN_SMALL}"
    ),
    "python tutorial_atari_pong.py --play 100 --model runs/breakout/seed-1/model_breakout.npz": (
        "python tutorial_atari_pong.py --play 1 --model runs/breakout/seed-1/model_breakout.npz"
    ),
}
# Commands not run here, and why.
NOT_RUN = {
    "pip install -r requirements.txt": "installing: this test runs in the installed environment",
    "pip install -r requirements.txt -r tests/requirements.txt && python -m pytest": (
        "the test suite itself, of which this test is a part"
    ),
    'pip install -r requirements.txt -r tests/requirements.txt && python -m pytest -m "not slow"': (
        "the quick part of the test suite, which runs with it"
    ),
    "python tutorial_atari_pong.py --play 5 --render": "a window: tests/test_render.py under Xvfb",
    "python tutorial_atari_pong.py --play 5 --render --model models/pretrained/model_pong.npz": (
        "a window: tests/test_render.py under Xvfb"
    ),
    "tensorboard --logdir models": "a server until Ctrl-C: test_watch.py reads what it shows",
    "python sweep.py --trials 40 --episodes 3000 --seeds 2 --storage "
    "postgresql://USER:PASSWORD@HOST/DB --study lr-decay-init": (
        "a PostgreSQL server: tests/test_sweep.py runs one where .ci/run provides it"
    ),
    "python sweep.py --report --storage postgresql://USER:PASSWORD@HOST/DB --study lr-decay-init": (
        "a PostgreSQL server: tests/test_sweep.py runs one where .ci/run provides it"
    ),
}
# What a page's commands write over committed files when run as pasted, and why.
WRITTEN = {
    "docs/results.md": ["docs/runs_compared.png", "docs/episode-000000.gif"],  # --output, --record
    "docs/what-next.md": ["docs/cnn-vs-mlp.png"],  # --output
    # how the shipped study and runs were made: the study, and a resume of a shipped run
    "docs/sweep.md": ["models/sweep/", "models/lr0.00416-decay0.934-he-normal/seed-1/"],
}


def commands(block):
    """A bash block's commands: continued lines joined, end-of-line comments cut off."""
    text = block.replace("\\\n", " ")
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines()]
    return [" ".join(line.split()) for line in lines if line and not line.startswith("#")]


def page_commands(page):
    return [commands(block) for block in BASH_BLOCK.findall(page.read_text(encoding="utf-8"))]


def script(blocks):
    """The page's blocks as one bash script, each command as pasted or its short form; it waits
    for what a block left running in the background."""
    lines = ["set -e"]
    for block in blocks:
        for command in block:
            if command in NOT_RUN:
                continue
            short = SHORT.get(command, command)
            if short is not None:
                lines.append(short)
        lines.append("wait")
    return "\n".join(lines) + "\n"


def repository_files():
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout ({listed.stderr.strip()})")
    names = sorted(set(filter(None, listed.stdout.split("\0"))))
    return [name for name in names if (REPO / name).is_file()]


def fresh_copy(names, folder):
    """The files as a fresh clone holds them. Checkpoints and logs, which the commands replace
    whole (os.replace) and never write in place, are hard links where the disk allows."""
    for name in names:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith((".npz", "progress.csv")):
            try:
                os.link(REPO / name, target)
                continue
            except OSError:
                pass
        shutil.copy2(REPO / name, target)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_short_forms_and_exceptions_name_commands_of_the_pages():
    found = {command for page in PAGES for block in page_commands(page) for command in block}
    assert not set(SHORT) - found, "stale SHORT entries"
    assert not set(NOT_RUN) - found, "stale NOT_RUN entries"


@pytest.mark.parametrize(
    "page",
    [page for page in PAGES if page_commands(page)],
    ids=lambda page: str(page.relative_to(REPO)),
)
def test_every_command_of_the_page_runs_as_pasted_in_a_fresh_clone(page, tmp_path):
    names = repository_files()
    clone = tmp_path / "pong-pg"
    fresh_copy(names, clone)
    before = {name: digest(clone / name) for name in names}
    env = script_env(PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("DISPLAY", None)
    commands_run = script(page_commands(page))
    done = subprocess.run(
        ["bash", "-c", commands_run],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, (
        f"{commands_run}\nexit {done.returncode}\n--- stdout (tail)\n{done.stdout[-3000:]}"
        f"\n--- stderr (tail)\n{done.stderr[-3000:]}"
    )
    written = tuple(WRITTEN.get(str(page.relative_to(REPO)), ()))
    changed = [
        name
        for name in names
        if not name.startswith(written) and digest(clone / name) != before[name]
    ]
    assert not changed, f"{page.name}'s commands changed committed files: {changed}"
