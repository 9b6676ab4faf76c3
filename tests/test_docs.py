"""The documentation stays honest: every relative link (and image) in README.md
and docs/*.md points at a file that exists, and at a heading that exists where
it names one in a Markdown file; the README stays short; the README's two
commands are the ones .ci/run runs; and every figure of the README's results is
recomputed from the committed logs, checkpoints' settings and sweep study, or
stands beside its exact --play command in its run's README. No TensorFlow, no
training, no --play: a few seconds, most of them reading the progress.csv files."""

import csv
import datetime
import functools
import itertools
import json
import pathlib
import re
import sqlite3

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README] + sorted((ROOT / "docs").glob("*.md"))
CI = ROOT / ".ci" / "run"

INSTALL_COMMAND = "pip install -r requirements.txt"
TRAIN_COMMAND = "python tutorial_atari_pong.py"
TEST_COMMAND = "pip install -r requirements.txt -r tests/requirements.txt && python -m pytest"
QUICK_TEST_COMMAND = TEST_COMMAND + ' -m "not slow"'  # conftest.py: every e2e test is slow
MAX_README_LINES = 250

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.M | re.S)
INLINE_CODE = re.compile(r"(`+).+?\1", re.S)
INLINE_LINK = re.compile(
    r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]*)[^)]*\)"
)  # [text](target "title"), ![alt](target)
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)  # [name]: target
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)


def prose(text):
    """The text without code blocks and code spans, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(page):
    text = prose(page.read_text(encoding="utf-8"))
    found = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text) + HTML_LINK.findall(text)
    return [target.strip("<>") for target in found]


def relative(target):
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) and not target.startswith("//")


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    seen, result = {}, set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            result.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return result


def code_lines(page):
    """The lines inside the page's fenced code blocks, comments cut off."""
    lines = []
    for block in FENCE.finditer(page.read_text(encoding="utf-8")):
        for line in block.group(0).splitlines()[1:-1]:
            lines.append(re.sub(r"\s+#.*$", "", line).strip())
    return lines


def ci_commands():
    """.ci/run's command lines, comments and echo lines aside."""
    return [
        line.strip()
        for line in CI.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith(("#", "echo "))
    ]


def test_the_pages_exist():
    assert (ROOT / "docs").is_dir() and len(PAGES) > 1


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page):
    broken = []
    for target in links(page):
        if not target or not relative(target):
            continue  # http(s), mailto and the like are not ours to check here
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_finder_finds_links_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        'a [page](docs/x.md#y) ![img](i.png "t") `[no](code.md)` <img src="h.gif">\n\n'
        "```\n[no](fence.md)\n```\n# A heading's name\n# A heading's name\n",
        encoding="utf-8",
    )
    assert links(page) == ["docs/x.md#y", "i.png", "h.gif"]
    assert anchors(page) == {"a-headings-name", "a-headings-name-1"}
    assert slug("Trying the tutorial's What next") == "trying-the-tutorials-what-next"
    assert (
        not relative("https://example.com")
        and not relative("mailto:a@b.c")
        and relative("docs/a.md")
    )


def test_the_readme_is_at_most_250_lines():
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= MAX_README_LINES, f"README.md has {count} lines; move detail into docs/"


def test_the_readme_gives_the_install_train_and_two_test_commands():
    lines = code_lines(README)
    for command in (INSTALL_COMMAND, TRAIN_COMMAND, QUICK_TEST_COMMAND, TEST_COMMAND):
        assert command in lines, command


def test_the_readmes_checkout_size_is_the_tracked_files():
    """The clone-size paragraph's checkout: the tracked files' sizes in MiB (as `du -sh` counts,
    give or take its blocks), within 2%; the .git sizes are measured, dated, by hand."""
    import subprocess

    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout ({listed.stderr.strip()})")
    files = [ROOT / name for name in listed.stdout.split("\0") if name]
    mib = sum(path.stat().st_size for path in files if path.is_file()) / 2**20
    stated = re.search(r"the checkout is (\d+) MB either way", words(README.read_text("utf-8")))
    assert stated, "README.md no longer says how big the checkout is"
    assert abs(int(stated.group(1)) - mib) <= 0.02 * mib, f"the tracked files are {mib:.0f} MiB"


def test_ci_runs_the_readmes_test_command():
    """.ci/run echoes the command it runs, then runs exactly that line; so does the README."""
    script = CI.read_text(encoding="utf-8")
    echoed = re.findall(r'^\s*echo "\+ (pip install [^"]*pytest[^"]*)"\s*$', script, re.M)
    assert echoed == [TEST_COMMAND], echoed
    assert TEST_COMMAND in ci_commands()
    assert echoed[0] in code_lines(README)


def test_ci_installs_and_runs_what_the_readmes_train_command_does():
    """The train command's two halves, installing the requirements and running the script, are
    what .ci/run does on each end of the Python range (there with a virtualenv's pip and python)."""
    commands = "\n".join(ci_commands())
    assert re.search(r"pip\"? install (--quiet )?-r requirements\.txt\b", commands), (
        "CI does not install the requirements"
    )
    assert re.search(r"python\"? tutorial_atari_pong\.py\b", commands), "CI does not run the script"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (ROOT / target.partition("#")[0]).resolve() for target in links(README) if relative(target)
    }
    unlinked = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"README.md links no docs/{', docs/'.join(unlinked)}"


# --- The README's results: each figure from a command named beside it or a committed file -------
#
# The figures of the README's results (the "Results" section and the "What our sweep found"
# paragraph) are recomputed here from what is committed: each run's progress.csv, the
# checkpoints' settings and the sweep's studies.db. A `--play` figure, which needs the network
# to play, must stand beside its exact command in the committed README of its run; its 95%
# interval and sums are recomputed. Every other number in those parts must be one of these, or
# one of the few named below that are not measurements (sizes of windows, the tutorial's claims).

WALL_GAP_SECONDS = 120  # as --plot counts hours: a gap this long between two episodes is a stop
WINDOW = 1000  # --plot's window: the last, or best, 1,000 episodes
BLOCK = 5000  # --plot's blocks of episodes
PRETRAINED = "models/pretrained"
KERAS = "models/keras-rmsprop"
TRIAL_2 = "models/lr0.00416-decay0.934-he-normal"
TRIAL_9 = "models/lr0.00407-decay0.988-he-normal"
LONG_RUNS = [f"{setting}/seed-{seed}" for setting in (TRIAL_2, TRIAL_9) for seed in (1, 2)]
SHIPPED = f"{TRIAL_9}/seed-1/episode-25000.npz"
STUDY = ROOT / "models" / "sweep" / "studies.db"
PLAY = "python tutorial_atari_pong.py --play 100 --envs 1 --seed {seed} --model {model}"
# (the run README that documents it, the checkpoint, the --play seed): games won of 100
PLAYED = {
    ("models/pretrained/README.md", f"{PRETRAINED}/model_pong.npz", 1): 88,
    ("models/pretrained/README.md", f"{PRETRAINED}/model_pong.npz", 2): 90,
    (f"{TRIAL_9}/README.md", SHIPPED, 1): 94,
    (f"{TRIAL_9}/README.md", SHIPPED, 2): 97,
    (f"{TRIAL_9}/README.md", SHIPPED, 3): 97,
}
# Numbers in those parts that are not measurements: the tutorial's claim ("almost never loses"
# after 30,000 episodes, read as 90% of 1,000 games in a row), issue 24's +15 a game, seeds,
# the size of a window or block, the confidence of an interval, the cores of the machine.
NOT_MEASURED = {"30,000", "90", "+15", "1", "2", "3", "1,000", "5,000", "95", "100"}

NUMBER = re.compile(
    r"(?:(?<![\w.,])[+-])?(?<![\w.,])(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:e-?\d+)?)"
)


def wilson(successes, trials, z=1.96):
    """The 95% Wilson interval of a share, as the script's --play prints it: 'LOW-HIGH%'."""
    share, spread = successes / trials, z * z / trials
    centre = (share + spread / 2) / (1 + spread)
    half = z * (share * (1 - share) / trials + spread / (4 * trials)) ** 0.5 / (1 + spread)
    return f"{100 * max(0.0, centre - half):.0f}-{100 * min(1.0, centre + half):.0f}%"


def rate(value):
    """A learning rate as the README writes it: 1e-4, 4e-3."""
    return f"{value:.0e}".replace("e-0", "e-")


def percent(share):
    return f"{100 * share:.1f}%"


@functools.cache
def run(folder):
    """What --plot prints of a run, and its last running mean, from its progress.csv."""
    with open(ROOT / folder / "progress.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["episode"]) for row in rows] == list(range(len(rows))), folder
    won = [int(row["points_won"]) for row in rows]
    lost = [int(row["points_lost"]) for row in rows]
    reward = [float(row["reward"]) for row in rows]
    mean = [float(row["running_mean"]) for row in rows]
    steps = list(itertools.accumulate(int(row["steps"]) for row in rows))
    times = [datetime.datetime.fromisoformat(row["wall_time"]).timestamp() for row in rows]
    gaps = [0.0] + [b - a for a, b in zip(times, times[1:], strict=False)]
    hours = list(itertools.accumulate(g if 0 <= g < WALL_GAP_SECONDS else 0 for g in gaps))
    hours = [h / 3600 for h in hours]
    games = [0, *itertools.accumulate(r > 0 for r in reward)]
    rewards = [0, *itertools.accumulate(reward)]
    points_won, points_lost = [0, *itertools.accumulate(won)], [0, *itertools.accumulate(lost)]

    def shares(start, end):
        """Points won, games won over episodes start..end-1."""
        w, ls = points_won[end] - points_won[start], points_lost[end] - points_lost[start]
        return w / (w + ls), (games[end] - games[start]) / (end - start)

    n = len(rows)
    starts = range(n - WINDOW + 1)
    best_games = max(starts, key=lambda s: (games[s + WINDOW] - games[s], -s))
    best_reward = max(starts, key=lambda s: (rewards[s + WINDOW] - rewards[s], -s))
    first_above = next(i for i, m in enumerate(mean) if m > 0)
    for_good = max(i for i, m in enumerate(mean) if m <= 0) + 1
    return {
        "episodes": n,
        "hours": hours[-1],
        "running_mean": mean[-1],
        "last": shares(n - WINDOW, n),
        "blocks": [shares(s, min(s + BLOCK, n)) for s in range(0, n, BLOCK)],
        "best_games": (shares(best_games, best_games + WINDOW)[1], best_games),
        "best_reward": (rewards[best_reward + WINDOW] - rewards[best_reward]) / WINDOW,
        "first_above": (first_above, steps[first_above], hours[first_above]),
        "for_good": (for_good, steps[for_good], hours[for_good]),
    }


@functools.cache
def study(study_name="what-next"):
    """The README's sweep's trials, read only from studies.db (which holds other studies too):
    number -> state, params, user attrs."""
    connection = sqlite3.connect(f"file:{STUDY}?mode=ro", uri=True)
    try:
        trials = {
            trial_id: {"number": number, "state": state, "params": {}, "attrs": {}}
            for trial_id, number, state in connection.execute(
                "SELECT trial_id, number, state FROM trials JOIN studies USING (study_id) "
                "WHERE study_name = ?",
                (study_name,),
            )
        }
        for trial_id, name, value, distribution in connection.execute(
            "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params"
        ):
            if trial_id in trials:
                choices = json.loads(distribution)["attributes"].get("choices")
                trials[trial_id]["params"][name] = choices[int(value)] if choices else value
        for trial_id, key, value in connection.execute(
            "SELECT trial_id, key, value_json FROM trial_user_attributes"
        ):
            if trial_id in trials:
                trials[trial_id]["attrs"][key] = json.loads(value)
    finally:
        connection.close()
    return {trial["number"]: trial for trial in trials.values()}


def checkpoint_settings(path):
    import numpy as np  # a requirement of the script; only the small arrays are read

    with np.load(ROOT / path, allow_pickle=False) as arrays:
        return {
            name.split("/")[1]: arrays[name].item()
            for name in arrays.files
            if "/" in name and name.split("/")[0] in ("config", "state")
        }


def readme_part(start, end):
    """The README from the line that starts with `start` up to the next that starts with `end`."""
    text = README.read_text(encoding="utf-8")
    begin = text.index(start)
    return text[begin : text.index(end, begin + len(start))]


def words(text):
    """Prose as one line: code spans and link targets out, runs of white space one space."""
    text = re.sub(r"\]\([^)]*\)", "]", INLINE_CODE.sub("`", text))
    return re.sub(r"\s+", " ", text)


def numbers(text):
    return NUMBER.findall(words(text))


def play_figures():
    """--play figures: each beside its exact command in its run's README, as 'won N of 100'."""
    missing = []
    for (page, model, seed), won in PLAYED.items():
        command = PLAY.format(seed=seed, model=model)
        lines = [
            line
            for line in (ROOT / page).read_text(encoding="utf-8").splitlines()
            if command in " ".join(line.split())
        ]
        if not any(f"won {won} of 100 ({wilson(won, 100)})" in line for line in lines):
            missing.append(
                f"{page}: no line with `{command}` and 'won {won} of 100 ({wilson(won, 100)})'"
            )
    assert not missing, "; ".join(missing)
    return PLAYED


def results_expected():
    """The README's results section: its table's cells and the phrases of its prose, computed."""
    pretrained, keras = run(PRETRAINED), run(KERAS)
    settings = checkpoint_settings(f"{PRETRAINED}/model_pong.npz")
    played = play_figures()
    seed_1 = played[("models/pretrained/README.md", f"{PRETRAINED}/model_pong.npz", 1)]
    seed_2 = played[("models/pretrained/README.md", f"{PRETRAINED}/model_pong.npz", 2)]
    text = (ROOT / "models/pretrained/README.md").read_text(encoding="utf-8")
    points = re.search(
        re.escape(PLAY.format(seed=1, model=f"{PRETRAINED}/model_pong.npz"))
        + r".*?([\d,]+) of ([\d,]+) points",
        text,
    )
    assert points, "models/pretrained/README.md: no points won beside the seed 1 --play command"
    won, played_points = (int(g.replace(",", "")) for g in points.groups())
    rows = {
        PRETRAINED: [f"{seed_1} ({wilson(seed_1, 100)})", percent(won / played_points)],
        KERAS: ["no checkpoint", "no checkpoint"],
    }
    for folder, figures in ((PRETRAINED, pretrained), (KERAS, keras)):
        rows[folder] = [
            f"{figures['episodes']:,}",
            f"{figures['hours']:.2f}",
            f"{figures['running_mean']:+.2f}",
            percent(figures["last"][1]),
            percent(figures["last"][0]),
        ] + rows[folder]
    best_share, best_start = pretrained["best_games"]
    blocks = pretrained["blocks"][-3:]
    phrases = [
        f"batch size {settings['batch_size']}, learning rate {rate(settings['learning_rate'])}",
        f"gamma {settings['gamma']}, decay {settings['decay_rate']}, hidden {settings['hidden']}",
        f"(with `--seed 2`: {seed_2}, {wilson(seed_2, 100)})",
        f"by {pretrained['episodes']:,} episodes (best {percent(best_share)}, episodes "
        f"{best_start:,}-{best_start + WINDOW - 1:,})",
        "(" + ", ".join(percent(points) for points, _ in blocks) + ")",
        "(" + ", ".join(percent(games) for _, games in blocks) + ")",
    ]
    return rows, phrases


def sweep_expected():
    """'What our sweep found': its phrases, computed from studies.db, the logs and --play's."""
    trials = study()
    finished = [t for t in trials.values() if t["state"] in ("COMPLETE", "PRUNED")]
    complete = [t for t in finished if t["state"] == "COMPLETE"]
    pruned = sorted((t for t in finished if t["state"] == "PRUNED"), key=lambda t: t["number"])
    episodes = {t["attrs"]["episodes"] for t in complete}
    assert len(episodes) == 1, episodes
    (episodes,) = episodes
    ranked = sorted(complete, key=lambda t: -t["attrs"]["mean_reward"])
    best, tutorial, tenfold = ranked[0], trials[0], trials[1]
    long_runs = [run(folder) for folder in LONG_RUNS]
    assert {r["episodes"] for r in long_runs} == {30000}
    best_games = [r["best_games"][0] for r in long_runs]
    shipped = [PLAYED[(f"{TRIAL_9}/README.md", SHIPPED, seed)] for seed in (1, 2, 3)]
    assert checkpoint_settings(SHIPPED)["episode"] == 25000

    assert rate(ranked[0]["params"]["learning_rate"]) == rate(ranked[1]["params"]["learning_rate"])
    assert best["params"]["init"] == ranked[1]["params"]["init"] == "he-normal"
    names = " and ".join(", ".join(str(t["attrs"]["episodes"]) for t in pruned).rsplit(", ", 1))
    return [
        f"{len(finished)} settings, each with seeds 1 and 2",
        f"{len(complete)} trained their {episodes:,} episodes and {len(pruned)} were pruned early "
        f"({names} episodes)",
        f"{sum(t['attrs']['hours'] for t in finished):.2f} hours of this machine",
        f"about {rate(best['params']['learning_rate'])} (He-normal weights",
        f"scored {best['attrs']['mean_reward']:.2f} over the last {episodes // 10} episodes",
        f"the tutorial's {rate(tutorial['params']['learning_rate'])} at "
        f"{tutorial['attrs']['mean_reward']:.2f} ({rate(tenfold['params']['learning_rate'])}: "
        f"{tenfold['attrs']['mean_reward']:.2f})",
        f"trained on to {long_runs[0]['episodes']:,} episodes with seeds 1 and 2",
        f"after {min(r['first_above'][1] for r in long_runs) / 1e6:.1f} million agent steps "
        f"against the tutorial's setting's {run(PRETRAINED)['first_above'][1] / 1e6:.1f} million",
        f"(their best 1,000: {percent(min(best_games))} to {percent(max(best_games))})",
        f"never did in {run(PRETRAINED)['episodes']:,} episodes",
        "seed 1 at episode 25,000",
        f"won {shipped[0]}, {shipped[1]} and {shipped[2]} of 100 at `--play 100 --envs 1` with "
        "seeds 1, 2 and 3",
        f"({sum(shipped)} of 300, 95% interval {wilson(sum(shipped), 300)})",
        f"(best: {max(r['best_reward'] for r in long_runs):+.2f} over 1,000 episodes)",
    ]


def test_the_readmes_results_table_is_what_the_logs_and_play_give():
    rows, _ = results_expected()
    table = [
        line for line in readme_part("## Results", "## ").splitlines() if line.startswith("| [")
    ]
    found = {}
    for line in table:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        found[re.search(r"\]\(([^)]*)/README\.md\)", cells[0]).group(1)] = cells[2:]
    assert found == rows


def test_the_readmes_results_prose_is_what_the_logs_and_play_give():
    _, phrases = results_expected()
    prose = words(readme_part("## Results", "## "))
    missing = [phrase for phrase in phrases if words(phrase) not in prose]
    assert not missing, f"README.md's Results no longer say: {missing}"


def test_the_readmes_sweep_findings_are_what_the_study_logs_and_play_give():
    paragraph = words(readme_part("**What our sweep found**", "The table, figure"))
    missing = [phrase for phrase in sweep_expected() if words(phrase) not in paragraph]
    assert not missing, f"README.md's 'What our sweep found' no longer says: {missing}"


def test_the_readmes_time_to_beat_the_built_in_player_is_the_logs():
    pretrained = run(PRETRAINED)
    (first, _, first_hours), (good, _, good_hours) = (
        pretrained["first_above"],
        pretrained["for_good"],
    )
    expected = (
        f"after {first_hours:.2f} hours of training ({first:,} episodes) and for good after "
        f"{good_hours:.2f} hours ({good:,})"
    )
    assert expected in words(readme_part("## Quick start", "## Results"))


def test_every_number_in_the_readmes_results_is_accounted_for():
    """A number in the results that is neither recomputed above nor named as no measurement
    fails: a figure changed by hand, or a new one with no source, shows up here."""
    rows, phrases = results_expected()
    known = set(NOT_MEASURED)
    for text in [cell for cells in rows.values() for cell in cells] + phrases + sweep_expected():
        known.update(numbers(text))
    parts = readme_part("## Results", "## ") + readme_part("**What our sweep found**", "The table")
    unexplained = [number for number in numbers(parts) if number not in known]
    assert not unexplained, (
        f"README.md's results have numbers no command or committed file here gives: {unexplained}"
    )
