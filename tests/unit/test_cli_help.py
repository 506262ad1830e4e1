"""Every option and argument of every `msgw` command says what it is for (issue 16, item 5).

The test walks the parser tree that `gateway.cli` builds (sub-commands of sub-commands too), so a
new option without `help=` fails here rather than in an operator's terminal."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from gateway.cli import build_parser


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", argparse.Action([], dest=name, help=helps.get(name))
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_and_command_has_help_text() -> None:
    missing = [f"{path}: {'/'.join(action.option_strings) or action.dest}"
               for path, action in _walk(build_parser(), "msgw")
               if not (action.help or "").strip() or action.help == argparse.SUPPRESS]
    assert not missing, "without help text:\n" + "\n".join(missing)


def test_the_walk_sees_nested_commands() -> None:
    seen = {path for path, _ in _walk(build_parser(), "msgw")}
    assert {"msgw serve", "msgw send", "msgw queue list", "msgw directory import"} <= seen
