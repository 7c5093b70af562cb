"""The README's "Identify your animals" runs as written and prints what the README shows.

The test reads the section's commands from README.md itself (the shell variable, `wildreid index` with the
shipped model, `calibrate`, `identify`), runs them in a fresh folder on the generated data they name, and compares the
printed lines with the README's output block: every line shown must appear, with its counts, method names,
query file and decision as shown (decimals may differ from one CPU to another and are compared as numbers,
not digits). The prose's count of queries called new must hold too, and the `wildreid app` line must be a
command the CLI accepts (the app itself runs in tests/test_review_app_browser.py). When the code changes
what these commands print, this test fails and shows the new output to put in the README.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from wildreid.identification.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SECTION = "## Identify your animals"
NUMBER = re.compile(r"\d+\.\d+")
QUERY_LINE = re.compile(r"^(?P<query>\S+): (?P<decision>NEW individual|\S+)  \((?P<method>[\w-]+); top score ")


def quickstart() -> dict:
    """Commands, shown output and claims of the README's section, as the README has them."""
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md lost its {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 3 and [lang for lang, _ in blocks] == ["bash", "", "bash"], \
        "the section should hold the commands, their output and the app command, in that order"
    commands = [shlex.split(line, comments=True) for line in blocks[0][1].replace("\\\n", " ").splitlines()]
    shown = [line for line in blocks[1][1].splitlines() if line.strip() and line.strip() != "..."]
    new = re.search(r"calls (\d+) of\s+the (\d+) new", section)
    assert new, "the README should say how many of the unknown queries the demo model calls new"
    return {"commands": [c for c in commands if c], "shown": shown, "app": shlex.split(blocks[2][1], comments=True),
            "called_new": int(new[1]), "queries": int(new[2])}


def _numbers_close(shown: str, printed: str, tolerance: float) -> bool:
    a, b = [float(x) for x in NUMBER.findall(shown)], [float(x) for x in NUMBER.findall(printed)]
    return len(a) == len(b) and all(abs(x - y) <= tolerance * max(1.0, abs(x)) for x, y in zip(a, b))


@contextmanager
def one_core():
    """Run on one of this process's cores: the commands then match keypoints in this process instead of
    starting a process pool per command (the pools' start-up was most of this test's time), as they would
    on a one-core machine. What they print does not depend on it."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def run_quickstart(folder: Path, capsys) -> list[str]:
    """Run the README's commands in `folder`; the lines the wildreid commands printed."""
    variables, printed = {}, []
    for words in quickstart()["commands"]:
        if len(words) == 1 and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            name, _, value = words[0].partition("=")
            variables[name] = value
            continue
        words = [re.sub(r"\$(\w+)", lambda m: variables[m[1]], word) for word in words]
        if words[:2] == ["python", "train.py"]:
            result = subprocess.run([sys.executable, str(REPO / "train.py"), *words[2:]], cwd=folder,
                                    capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        elif words[0] == "wildreid":
            capsys.readouterr()
            with one_core():
                assert main(words[1:]) == 0, f"{shlex.join(words)} failed"
            printed += capsys.readouterr().out.splitlines()
        else:
            pytest.fail(f"the README's quickstart runs {words[0]!r}, which this test does not know how to run")
    return printed


@pytest.mark.slow
def test_the_readme_quickstart_prints_what_the_readme_shows(tmp_path, monkeypatch, capsys):
    readme = quickstart()
    monkeypatch.chdir(tmp_path)
    printed = run_quickstart(tmp_path, capsys)
    report = "\n".join(["printed:", *printed])

    # Every line the README shows is printed: same words, counts, method names and decisions; decimals close.
    for shown in readme["shown"]:
        same_words = [line for line in printed if NUMBER.sub("#", line) == NUMBER.sub("#", shown)]
        assert same_words, f"README shows a line nothing printed like:\n{shown}\n{report}"
        assert any(_numbers_close(shown, line, 0.05) for line in same_words), \
            f"README's figures drifted from what the commands print:\n{shown}\n{report}"

    # The prose's counts: how many queries, how many called new; every answer names the method it used.
    answers = [m for m in map(QUERY_LINE.match, printed) if m]
    assert len(answers) == readme["queries"], report
    assert sum(m["decision"] == "NEW individual" for m in answers) == readme["called_new"], report
    shown_methods = {m["method"] for m in map(QUERY_LINE.match, readme["shown"]) if m}
    assert shown_methods and {m["method"] for m in answers} == shown_methods, report

    # The app line is a command the CLI takes, on the gallery the quickstart built.
    assert readme["app"][0] == "wildreid"
    args = build_parser().parse_args(readme["app"][1:])
    assert args.command == "app" and (tmp_path / args.gallery / "gallery.json").is_file()


def test_the_quickstart_section_parses():
    """Fast: the section keeps its shape (the slow test above runs it)."""
    readme = quickstart()
    programs = [words[0] for words in readme["commands"] if not re.fullmatch(r"[A-Z_]+=.*", words[0])]
    assert programs == ["wildreid", "wildreid", "wildreid"]
    assert [words[1] for words in readme["commands"] if words[0] == "wildreid"] == ["index", "calibrate", "identify"]
    index = next(words for words in readme["commands"] if words[:2] == ["wildreid", "index"])
    assert "--model" not in index, "the quickstart is the path of a new user: the shipped model, no training"
    assert readme["shown"] and 0 <= readme["called_new"] <= readme["queries"]


def test_the_readme_links_resolve():
    """Every relative link and picture of the README names a file of the repository (the docs site's own
    links are checked by `mkdocs build --strict`)."""
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    missing = [t for t in targets if "://" not in t and not (REPO / t.split("#")[0]).exists()]
    assert targets and not missing, f"README links to missing files: {missing}"
    assert len(text.splitlines()) <= 250, "README.md is the front door: 250 lines at most, the rest in docs/"
