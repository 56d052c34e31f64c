"""Render edgeagent(1) in roff from the CLI's own argparse parser, so the page never drifts.

    python3 packaging/manpage.py [--date YYYY-MM-DD] > edgeagent.1

build-deb.sh runs it with the packaged wheel first on ``sys.path`` (``PYTHONPATH=wheel``,
``-S``): the page describes exactly the code in the package. Only the standard library is
needed, since ``edgeagent.cli.build_parser`` imports nothing else. Every command, its usage
line, each argument's help, choices and default come from the parser; only the sections a
parser cannot know (files, exit status, see also) are written here.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Iterator

FILES = [
    ("/etc/edgeagent/edgeagent.toml", "the site config the service runs (a conffile: kept across upgrades)"),
    ("/var/lib/edgeagent", "the durable buffer and the status page's users and certificate"),
    ("/opt/edgeagent/venv", "the agent's Python environment, built at install time from /opt/edgeagent/wheels"),
]
SEE_ALSO = r"\fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBsystemd.exec\fR(5)"


def roff(text: str) -> str:
    """Escape prose for roff: backslashes, leading control characters, non-ASCII as named glyphs."""
    out = text.replace("\\", r"\e")
    out = "".join(ch if ord(ch) < 128 else rf"\[u{ord(ch):04X}]" for ch in out)
    lines = [(r"\&" + line) if line.startswith((".", "'")) else line for line in out.splitlines()]
    return "\n".join(lines)


def literal(text: str) -> str:
    """An option, command or usage line: like prose, with each '-' a real minus sign."""
    return roff(text).replace("-", r"\-")


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order --help lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _metavar(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    if action.option_strings:
        return formatter._format_args(action, action.dest.upper()) if action.nargs != 0 else ""
    return formatter._format_args(action, action.dest)


def _arguments(parser: argparse.ArgumentParser) -> Iterator[str]:
    """One ``.TP`` paragraph per argument, help included, the default named when help does not."""
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        metavar = _metavar(parser, action)
        if action.option_strings:
            names = ", ".join(rf"\fB{literal(o)}\fR" for o in action.option_strings)
            head = f"{names} \\fI{literal(metavar)}\\fR" if metavar else names
        else:
            head = rf"\fI{literal(metavar)}\fR"
        text = formatter._expand_help(action) if action.help else ""
        extra = []
        if action.required and action.option_strings:
            extra.append("required")
        shown = action.option_strings and action.nargs != 0 and "default" not in text
        if shown and action.default not in (None, [], argparse.SUPPRESS):
            extra.append(f"default: {action.default}")
        if action.dest == "version" and isinstance(action, argparse._VersionAction):
            text = "print the version and exit"
        if extra:
            text = f"{text}; {'; '.join(extra)}" if text else "; ".join(extra)
        yield f".TP\n{head}\n{roff(text)}" if text else f".TP\n{head}"


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    return f".PP\n.nh\n{literal(usage)}\n.hy"  # wrapped, never hyphenated: REGISTER, not REG-ISTER


def _commands(parser: argparse.ArgumentParser, prefix: str) -> Iterator[str]:
    for name, help_text, sub in _subcommands(parser):
        path = f"{prefix} {name}"
        nested = list(_subcommands(sub))
        yield f'.SS "{literal(path)}"'
        if help_text:
            yield roff(help_text[0].upper() + help_text[1:] + ("" if help_text.endswith(".") else "."))
        if not nested:
            yield _usage(sub)
        yield from _arguments(sub)
        yield from _commands(sub, path)


def render(parser: argparse.ArgumentParser, version: str, date: str, exit_codes: str) -> str:
    """The whole page; ``exit_codes`` is the CLI module's own "Exit codes:" sentence."""
    name = parser.prog
    description = (parser.description or "").rstrip(".")
    lines = [
        f'.TH {name.upper()} 1 "{date}" "{name} {version}" "User Commands"',
        ".SH NAME",
        f"{name} \\- {roff(description[:1].lower() + description[1:])}",
        ".SH SYNOPSIS",
        rf"\fB{name}\fR \fICOMMAND\fR [\fIoptions\fR]",
        ".br",
        rf"\fB{name}\fR \fICOMMAND\fR \fB\-\-help\fR",
        ".br",
        rf"\fB{name}\fR \fB\-\-version\fR",
        ".SH DESCRIPTION",
        roff(f"{parser.description or ''} Each command below prints its own help with --help."),
        ".SH OPTIONS",
        ".TP",
        r"\fB\-h\fR, \fB\-\-help\fR",
        "print the help and exit",
        *_arguments(parser),
        ".SH COMMANDS",
        *_commands(parser, name),
        ".SH EXIT STATUS",
        roff(exit_codes),
        ".SH FILES",
    ]
    for path, what in FILES:
        lines += [".TP", rf"\fI{literal(path)}\fR", roff(what)]
    lines += [".SH SEE ALSO", SEE_ALSO, ""]
    return "\n".join(lines)


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    today = datetime.datetime.fromtimestamp(epoch, datetime.UTC) if epoch else datetime.datetime.now(datetime.UTC)
    args.add_argument("--date", default=today.strftime("%Y-%m-%d"), help="the page's date (SOURCE_DATE_EPOCH)")
    options = args.parse_args()
    os.environ["COLUMNS"] = "10000"  # usage lines unwrapped: roff wraps them

    import edgeagent
    from edgeagent import cli

    exit_codes = next((line.strip() for line in (cli.__doc__ or "").splitlines() if line.startswith("Exit codes")), "")
    sys.stdout.write(render(cli.build_parser(), edgeagent.__version__, options.date, exit_codes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
