"""The documentation stays honest: every relative link (and image) in README.md
and docs/*.md points at a file that exists, and at a heading that exists where
it names one in a Markdown file; the README stays short; and the README's two
commands are the ones .ci/run runs. Text only: no TensorFlow, well under a second."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README] + sorted((ROOT / "docs").glob("*.md"))
CI = ROOT / ".ci" / "run"

TRAIN_COMMAND = "pip install -r requirements.txt && python tutorial_atari_pong.py"
TEST_COMMAND = "pip install -r requirements.txt -r tests/requirements.txt && python -m pytest"
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


def test_the_readme_gives_the_two_commands():
    lines = code_lines(README)
    assert TRAIN_COMMAND in lines and TEST_COMMAND in lines


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
