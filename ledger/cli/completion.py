"""`ledger completion bash|zsh`: a shell completion script generated from the argparse parser itself, so a
new command, flag or choice completes without anyone touching the script (and no dependency is needed).

Both scripts work the same way: walk the words typed so far to find the (sub)command, then offer the values
of the flag just typed (its choices, files or directories), or else the command's subcommands, flags and
positional choices. Only `ledger` runs to build the script; completing never starts Python.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.cli.common import EXIT_OK

SHELLS = ("bash", "zsh")


@dataclass(frozen=True, slots=True)
class Word:
    """Something to offer: a subcommand, a flag or a positional choice, with what it is for."""

    text: str
    help: str


@dataclass(frozen=True, slots=True)
class Value:
    """What a flag takes: one of `choices`, a file, a directory, or anything (`kind` = "any")."""

    kind: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Command:
    """One (sub)command: its words, in order (`ledger events publish`), and what may follow it."""

    path: str
    subcommands: tuple[Word, ...]
    flags: tuple[Word, ...]
    positional_choices: tuple[Word, ...]
    values: dict[str, Value]  # by flag


def register(subcommands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "completion",
        help="print a bash or zsh completion script",
        description="Print a completion script for SHELL, generated from ledger's own commands. bash: "
        '`eval "$(ledger completion bash)"` in ~/.bashrc, or save it as '
        "/etc/bash_completion.d/ledger. zsh: save it as `_ledger` in a directory on $fpath (before "
        'compinit runs), or `eval "$(ledger completion zsh)"` in ~/.zshrc after compinit.',
    )
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace, _settings: Any) -> int:
    commands = walk(args.root_parser)
    print(bash_script(commands) if args.shell == "bash" else zsh_script(commands), end="")
    return EXIT_OK


def _help(action: argparse.Action | None) -> str:
    """A help text as a completion menu shows it: its first sentence on one line, without the trailing
    "(env ...; default: ...)" of the settings' flags, at most 70 characters."""
    text = " ".join(str(getattr(action, "help", None) or "").replace("%%", "%").split())
    text = re.sub(r" \(env .*$", "", text).split(". ")[0].rstrip(".")
    return text if len(text) <= 70 else text[:67].rstrip() + "..."


_DIRECTORIES = {"root", "data_dir"}  # flags whose value is a directory (--data-dir is typed by the settings)


def _value(action: argparse.Action) -> Value:
    if action.choices is not None:
        return Value("choice", tuple(str(c) for c in action.choices))
    if action.dest in _DIRECTORIES:
        return Value("dir")
    if action.type is Path:
        return Value("file")
    return Value("any")


def walk(parser: argparse.ArgumentParser, path: str = "ledger") -> list[Command]:
    """Every (sub)command of `parser`, parents first."""
    subcommands: list[Word] = []
    flags: list[Word] = []
    positional: list[Word] = []
    values: dict[str, Value] = {}
    children: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice for choice in action._choices_actions}
            for name, child in action.choices.items():
                subcommands.append(Word(name, _help(helps.get(name))))
                children += walk(child, f"{path} {name}")
        elif action.option_strings:
            if action.help == argparse.SUPPRESS:
                continue
            flags += [Word(flag, _help(action)) for flag in action.option_strings]
            if action.nargs != 0:
                values.update(dict.fromkeys(action.option_strings, _value(action)))
        elif action.choices is not None:
            positional += [Word(str(choice), _help(action)) for choice in action.choices]
    own = Command(path, tuple(subcommands), tuple(flags), tuple(positional), values)
    return [own, *children]


def _quote(text: str) -> str:
    """`text` in single quotes, for either shell."""
    return "'" + text.replace("'", "'\\''") + "'"


def _walk_patterns(commands: list[Command]) -> tuple[str, str]:
    """The case patterns both shells walk the typed words with: a subcommand, a positional choice."""
    paths = "|".join(f'"{c.path} {s.text}"' for c in commands for s in c.subcommands)
    chosen = "|".join(f'"{c.path} {p.text}"' for c in commands for p in c.positional_choices)
    return paths, chosen or '""'


def _value_cases(commands: list[Command], reply: Callable[[str, Value], str], pattern: str) -> list[str]:
    """One case line per flag that takes a value: `pattern` (with {key}) and the shell's `reply`."""
    return [
        f"        {pattern.format(key=f'{command.path} {flag}')} {reply(flag, value)}; return ;;"
        for command in commands
        for flag, value in command.values.items()
    ]


def _bash_reply(flag: str, value: Value) -> str:
    if value.kind == "choice":
        return f'COMPREPLY=($(compgen -W {_quote(" ".join(value.choices))} -- "$cur"))'
    if value.kind in ("dir", "file"):
        option = "-d" if value.kind == "dir" else "-f"
        return f'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen {option} -- "$cur"))'
    return "COMPREPLY=()"


def _zsh_reply(flag: str, value: Value) -> str:
    if value.kind == "choice":
        return f"compadd -- {' '.join(_quote(c) for c in value.choices)}"
    if value.kind in ("dir", "file"):
        return "_files -/" if value.kind == "dir" else "_files"
    return f"_message {_quote('value for ' + flag)}"


def bash_script(commands: list[Command]) -> str:
    paths, chosen = _walk_patterns(commands)
    value_cases = _value_cases(commands, _bash_reply, '"{key}")')
    word_cases = []
    for command in commands:
        words = " ".join(w.text for w in (*command.subcommands, *command.flags))
        choices = " ".join(p.text for p in command.positional_choices)
        line = f'        "{command.path}") words={_quote(words)}'
        if choices:
            line += f"; (( chosen )) || words+={_quote(' ' + choices)}"
        word_cases.append(line + " ;;")
    return f"""# bash completion for ledger (generated by `ledger completion bash`)
_ledger() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" cmd="ledger" words="" chosen=0 i
    (( COMP_CWORD > 0 )) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for (( i = 1; i < COMP_CWORD; i++ )); do
        case "$cmd ${{COMP_WORDS[i]}}" in
            {paths}) cmd="$cmd ${{COMP_WORDS[i]}}"; chosen=0 ;;
            {chosen}) chosen=1 ;;
        esac
    done
    case "$cmd $prev" in
{chr(10).join(value_cases)}
    esac
    case "$cmd" in
{chr(10).join(word_cases)}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _ledger ledger
"""


def zsh_script(commands: list[Command]) -> str:
    paths, chosen = _walk_patterns(commands)
    value_cases = _value_cases(commands, _zsh_reply, '("{key}")')
    word_cases = []
    for command in commands:
        words = [f"{w.text}:{w.help}" for w in (*command.subcommands, *command.flags)]
        choices = [f"{p.text}:{p.help}" for p in command.positional_choices]
        line = f'        ("{command.path}") items=({" ".join(_quote(w) for w in words)})'
        if choices:
            line += f"; (( chosen )) || items+=({' '.join(_quote(c) for c in choices)})"
        word_cases.append(line + " ;;")
    return f"""#compdef ledger
# zsh completion for ledger (generated by `ledger completion zsh`)
_ledger() {{
    local cmd="ledger" prev="${{words[CURRENT-1]}}" chosen=0 i
    local -a items
    for (( i = 2; i < CURRENT; i++ )); do
        case "$cmd ${{words[i]}}" in
            ({paths}) cmd="$cmd ${{words[i]}}"; chosen=0 ;;
            ({chosen}) chosen=1 ;;
        esac
    done
    case "$cmd $prev" in
{chr(10).join(value_cases)}
    esac
    case "$cmd" in
{chr(10).join(word_cases)}
    esac
    _describe -t ledger 'ledger' items
}}
if [[ "${{funcstack[1]}}" == _ledger ]]; then
    _ledger "$@"
else
    compdef _ledger ledger
fi
"""
