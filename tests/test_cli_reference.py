"""docs/cli.md is generated from the argument parser and must match it."""

from __future__ import annotations

from pathlib import Path

from rlm.cli import build_parser
from rlm.cli_reference import generate

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_docs_cli_md_matches_the_parser():
    assert DOC.read_text() == generate(), "docs/cli.md is stale: run `make cli-docs`"


def test_every_subcommand_and_option_is_in_the_reference():
    text = generate()
    parser = build_parser()
    for action in parser._actions:
        for name, sub in getattr(action, "choices", None) and action.choices.items() or []:
            assert f"## `rlm {name}`" in text
            for option in sub._actions:
                for flag in option.option_strings:
                    if flag in ("-h", "--help"):
                        continue
                    assert f"`{flag}`" in text, (name, flag)
