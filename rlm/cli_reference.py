"""The CLI reference (docs/cli.md), generated from the argument parser.

``python -m rlm.cli_reference > docs/cli.md`` (``make cli-docs``) writes it;
``tests/test_cli_reference.py`` fails when the file and the parser disagree.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

HEADER = """# `rlm` command reference

<!-- Generated from the argument parser by `make cli-docs` (python -m rlm.cli_reference);
     tests/test_cli_reference.py checks that it matches. Do not edit by hand. -->

`rlm COMMAND ...` or `python -m rlm COMMAND ...`. Errors are one paragraph on standard
error, starting `rlm: error:`; `rlm --debug COMMAND` (or `RLM_DEBUG=1`) adds the
traceback.
"""


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _usage(parser: argparse.ArgumentParser) -> str:
    # A fixed width, so the text does not depend on the terminal it is generated in.
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        text = parser.format_usage()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return " ".join(text.removeprefix("usage:").split())


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            names = ", ".join(f"`{o}`" for o in action.option_strings)
            if action.nargs != 0:
                metavar = action.metavar or action.dest.upper()
                names += f" `{metavar}`"
        else:
            names = f"`{action.metavar or action.dest}`"
        text = action.help or ""
        if action.choices and not isinstance(action.choices, dict):
            text += f" (one of: {', '.join(map(str, action.choices))})"
        rows.append(f"| {names} | {_cell(text)} |")
    return rows


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, Any]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _choices_actions(parser: argparse.ArgumentParser) -> list[Any]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action._choices_actions)
    return []


def generate() -> str:
    """The whole reference as Markdown."""
    from rlm.cli import build_parser
    from rlm.cli_options import EXIT_CODES, RUN_OPTIONS

    parser = build_parser()
    out = [HEADER]
    out.append("## Exit status\n")
    out.append("| status | meaning |\n|---|---|")
    out += [f"| {code} | {_cell(text)} |" for code, text in EXIT_CODES.items()]
    out.append("")
    out.append("## Commands\n")
    commands = _subparsers(parser)
    helps = {a.dest: a.help for a in _choices_actions(parser)}
    for name in commands:
        out.append(f"- [`rlm {name}`](#rlm-{name}): {_cell(helps.get(name) or '')}")
    out.append("")
    out.append("## Global options\n")
    out.append("| option | meaning |\n|---|---|")
    out += _option_rows(parser)
    out.append("")
    for name, sub in commands.items():
        out.append(f"## `rlm {name}`\n")
        out.append(f"```\n{_usage(sub)}\n```\n")
        if sub.description:
            out.append(_cell(sub.description) + "\n")
        rows = _option_rows(sub)
        if rows:
            out.append("| argument | meaning |\n|---|---|")
            out += rows
            out.append("")
        if name == "run":
            out.append("### Options from the environment and the config file\n")
            out.append(
                "Each option below that is not on the command line comes from its "
                "environment variable, else from the TOML config file (`$RLM_CONFIG` when "
                "set, else `~/.config/rlm/config.toml` when present; keys are the long "
                "option names, e.g. `max-iterations = 10` or `max_iterations = 10`), else "
                "from the default.\n"
            )
            out.append("| option | variable | default |\n|---|---|---|")
            for option in RUN_OPTIONS.values():
                flag = "--" + option.name.replace("_", "-")
                default = "" if option.default is None else f"`{option.default}`"
                out.append(f"| `{flag}` | `{option.env}` | {default} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(generate(), end="")
