"""What the library tells its users points at things that exist: every command-line flag named in the source is one
of `locfedmix`'s own (or torchrun's, or one that Flower's commands list in their help), and the repository never
sends a reader to notes it does not contain."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from locfedmix import UserError, run, validate
from locfedmix.cli import _parser

ROOT = Path(__file__).parent.parent
TORCHRUN_FLAGS = {"--nproc_per_node"}  # named where a distributed run explains how it was launched


def our_flags() -> set[str]:
    flags = set()
    parsers = [_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            flags.update(option for option in action.option_strings if option.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return flags


def flower_flags() -> set[str]:
    """The flags Flower's commands accept, as their --help lists them (the deployment drives these commands)."""
    bin_dir = Path(sys.executable).parent
    commands = [["flower-superlink"], ["flower-supernode"], ["flwr", "run"], ["flwr", "supernode", "register"]]
    flags = set()
    for command in commands:
        text = subprocess.run([str(bin_dir / command[0]), *command[1:], "--help"], capture_output=True, text=True,
                              env={"COLUMNS": "200", "PATH": str(bin_dir)}).stdout
        flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z_-]*[a-z]", text))
    return flags


def test_every_flag_the_source_names_exists():
    named = {(path.relative_to(ROOT).as_posix(), flag) for path in (ROOT / "src").rglob("*.py")
             for flag in re.findall(r"(?<![\w-])--[a-z][a-z_-]*[a-z]", path.read_text())}
    known = our_flags() | TORCHRUN_FLAGS
    flower = {(path, flag) for path, flag in named if flag not in known and "/deploy/" in path}
    assert {(path, flag) for path, flag in named if flag not in known} - flower == set()
    assert {flag for _, flag in flower} - flower_flags() == set()


def test_no_file_refers_to_notes_outside_the_repository():
    outside = ("DESIGN" + ".md", "paper" + ".md")  # spelled apart, so that this file does not name them
    folders = ("src", "docs", "tests", "benchmarks", "configs", "scripts")
    files = [p for folder in folders for p in (ROOT / folder).rglob("*")
             if p.is_file() and p.suffix in {".py", ".md", ".toml", ".sh", ""}]
    files += [ROOT / "README.md", ROOT / "Makefile", ROOT / "SECURITY.md"]
    hits = [f"{p.relative_to(ROOT)}: {name}" for p in files for name in outside
            if name in p.read_text(errors="replace")]
    assert hits == []


def test_the_python_api_is_told_its_own_argument_names(tmp_path):
    """A Python caller who writes into an existing run is told `overwrite=True`, not only a flag it cannot pass."""
    config = validate({"algorithm": "psl", "dataset": "synthetic", "n_clients": 2, "samples_per_client": 8,
                       "rounds": 1, "batch_size": 8})
    run(config, tmp_path / "run", progress=False)
    with pytest.raises(UserError, match=r"overwrite=True in Python") as info:
        run(config, tmp_path / "run", progress=False)
    assert "resume=True" in str(info.value)
