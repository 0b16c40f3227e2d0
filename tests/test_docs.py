"""Every command the README and docs show still runs: each `python <script> ...` line of a markdown
file is parsed by its script's own parser, so a renamed script, sub-command or flag fails here.
(Parsing checks names and types, not that the run succeeds; the commands' behaviour has its own
tests.)"""
import re
import shlex
from pathlib import Path

import pytest

import eval as E
import phendiff
import train
from tools import prepare

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md",
        ROOT / "checkpoints" / "README.md"]
SCRIPTS = {"phendiff.py": phendiff.get_parser, "eval.py": E.get_parser,
           "tools/prepare.py": prepare.get_parser}


def commands():
    """(file, command line) for every `python <script>.py ...` or torchrun line of the docs, with
    continuation lines joined and shell variables ($D) dropped."""
    found = []
    for doc in DOCS:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        for line in text.splitlines():
            m = re.search(r"(?:python|--nproc_per_node=\d+)\s+((?:tools/)?\w+\.py\b[^`|#]*)", line)
            if m and (m.group(1).split()[0] in SCRIPTS or m.group(1).startswith("train.py")):
                found.append((doc.relative_to(ROOT).as_posix(), m.group(1).strip()))
    return sorted(set(found))


def parse(command):
    """The problems of a documented command: an unknown script, sub-command or flag (the values
    may be placeholders such as DIR, so they are not parsed)."""
    words = [w for w in shlex.split(command.replace("...", "")) if not w.startswith("$")]
    script, argv = words[0], words[1:]
    if script == "train.py":  # the method's flags exist only once --method is known
        method = argv[argv.index("--method") + 1] if "--method" in argv else "phendiff"
        parser = train.files.Parser(prog="train.py")
        train.common_flags(parser)
        train.method_flags(parser, train.M.method_class(method))
    else:
        parser = SCRIPTS[script]()
        subs = parser._subparsers._group_actions[0].choices
        if not argv or argv[0] not in subs:
            return [f"no sub-command of {sorted(subs)}"]
        parser = subs[argv[0]]
    offered = {o for a in parser._actions for o in a.option_strings}
    flags = {w.split("=")[0] for w in argv if w.startswith("--")}
    # as argparse: an unambiguous prefix of a flag is that flag
    return sorted(f for f in flags if sum(o.startswith(f) for o in offered) != 1
                  and f not in offered)


@pytest.mark.parametrize("doc, command", commands())
def test_documented_command_parses(doc, command):
    problems = parse(command)
    assert not problems, f"{doc}: `{command}`: {problems}"


def test_the_docs_show_commands():
    assert len(commands()) > 30
