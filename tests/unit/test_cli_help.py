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


def _tree(parser: argparse.ArgumentParser, command: str) -> list[tuple[str, tuple[str, ...], str | None]]:
    return sorted((path, tuple(action.option_strings), action.dest)
                  for path, action in _walk(parser, "msgw") if path.split()[1:2] == [command])


def test_a_command_line_builds_only_its_command_and_parses_the_same() -> None:
    """`msgw directory add …` imports one command module, not seventeen (the server's imports
    cost most of a second per CLI call); what it parses is what the whole parser parses."""
    from gateway.cli import COMMAND_MODULES, modules_for

    whole = build_parser()
    top = next(a for a in whole._actions if isinstance(a, argparse._SubParsersAction))
    for command in top.choices:
        modules = modules_for(["--", command] if command.startswith("-") else [command, "--help"])
        assert len(modules) < len(COMMAND_MODULES)
        assert _tree(build_parser(modules), command) == _tree(whole, command), command
    assert modules_for(["--help"]) == modules_for(["no-such-command"]) == modules_for([]) == COMMAND_MODULES
    assert modules_for(["certs", "tokens"]) == modules_for(["tokens"]) == ("certs", "tokens")


def test_only_the_named_command_module_is_imported(tmp_path) -> None:  # noqa: ANN001
    import subprocess
    import sys

    code = ("import sys; from gateway import cli; cli.build_parser(cli.modules_for(['directory', 'lookup', 'x']));"
            "print(sorted(m for m in sys.modules if m.startswith('gateway.commands.') and not m.endswith('.common')),"
            " 'gateway.server.smtp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "['gateway.commands.directory'] False"
