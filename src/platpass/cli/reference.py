"""The command-line reference, generated from the argparse parsers so it cannot drift.

Two renderings of the same parsers:

* :func:`markdown` is the documentation site's CLI reference page (``docs/cli.md`` is
  filled in by ``docs/hooks.py`` at build time): every command's ``--help`` text exactly
  as ``platpass COMMAND --help`` prints it at :data:`WIDTH` columns.
* :func:`manpage` is ``platpass(1)`` in roff (``man 7 man``), installed by
  ``scripts/install`` into ``$PLATPASS_MAN/man1/platpass.1``.

``python3 -m platpass.cli.reference markdown|man [-o FILE]`` writes either one.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import sys
from collections.abc import Iterator, Sequence

from platpass import __version__

#: Terminal width the reference is rendered at (argparse reads ``COLUMNS``).
WIDTH = 80


def docs_epilog(command: str | None = None) -> str:
    """The last line of ``platpass [COMMAND] --help``: where the documentation is.

    The site is built from ``docs/`` of the source tree (``mkdocs build``); its CLI
    reference page (``cli/``) is generated from these parsers, one section per command.
    """
    page = f"cli/#{anchor(command)}" if command else "cli/"
    return f"Documentation: man platpass; docs site (docs/) page {page}"


def anchor(command: str) -> str:
    """The HTML id of a command's section in the CLI reference (``platpass-guest-dt``)."""
    return "platpass-" + command


@contextlib.contextmanager
def _columns(width: int = WIDTH) -> Iterator[None]:
    """argparse wraps help at ``COLUMNS``: hold it at ``width`` while rendering."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _subparsers_action(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError("the platpass parser has no subcommands")


def commands(
    parser: argparse.ArgumentParser | None = None,
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Every subcommand as ``(name, one-line help, parser)``, in ``--help`` order."""
    if parser is None:
        from platpass.cli import build_parser

        parser = build_parser()
    sub = _subparsers_action(parser)
    helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    return [(name, helps.get(name, ""), p) for name, p in sub.choices.items()]


def help_text(command: str | None = None) -> str:
    """``platpass [COMMAND] --help`` as printed at :data:`WIDTH` columns."""
    from platpass.cli import build_parser

    with _columns():
        parser = build_parser([command] if command else [])
        if command is None:
            return parser.format_help()
        sub: argparse.ArgumentParser = _subparsers_action(parser).choices[command]
        return sub.format_help()


def markdown() -> str:
    """The CLI reference page (Markdown for the documentation site)."""
    from platpass.cli import build_parser

    with _columns():
        parser = build_parser()
        out = [
            "<!-- Generated from the argparse parsers by platpass.cli.reference at build "
            "time; do not edit. -->",
            "",
            "# Command-line reference",
            "",
            "Every command's `--help`, exactly as `platpass COMMAND --help` prints it in an "
            f"{WIDTH}-column terminal. The same text is the `platpass(1)` man page "
            "(`man platpass`, installed by `scripts/install`). The guide pages explain what "
            "each option is for; this page is the complete list.",
            "",
            "| command | what it does |",
            "| --- | --- |",
        ]
        cmds = commands(parser)
        out += [f"| [`{name}`](#{anchor(name)}) | {summary} |" for name, summary, _ in cmds]
        out += ["", "## `platpass` {#platpass}", "", "```text", parser.format_help().rstrip(),
                "```", ""]
        for name, summary, sub in cmds:
            out += [f"## `platpass {name}` {{#{anchor(name)}}}", "", summary[:1].upper()
                    + summary[1:] + ".", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- man page

def _roff(text: str) -> str:
    """Escape text for roff: backslashes, and a leading dot or quote on any line."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.split("\n"))


def _para(text: str) -> str:
    return _roff(re.sub(r"\s+", " ", text).strip())


def _options(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    lines: list[str] = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if a.help is not argparse.SUPPRESS
                   and not isinstance(a, argparse._SubParsersAction)]
        if not actions:
            continue
        for action in actions:
            invocation = formatter._format_action_invocation(action)
            lines += [".TP", f"\\fB{_roff(invocation)}\\fR"]
            if action.help:
                lines.append(_para(formatter._expand_help(action)))
    return lines


def manpage(date: datetime.date | None = None) -> str:
    """``platpass(1)`` in roff, from the same parsers as ``--help``."""
    from platpass.cli import build_parser

    day = (date or _source_date()).isoformat()
    with _columns():
        parser = build_parser()
        cmds = commands(parser)
        out = [
            '.\\" Generated from the argparse parsers by platpass.cli.reference; do not edit.',
            f'.TH PLATPASS 1 "{day}" "platpass {__version__}" "User Commands"',
            ".SH NAME",
            "platpass \\- " + _para(parser.description or ""),
            ".SH SYNOPSIS",
            ".B platpass",
            "[\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
            ".SH DESCRIPTION",
            _para("platpass judges every device of a device tree (scan), serves the ones that "
                  "cannot master the bus as VFIO devices over vfio-user (serve, assign, up), "
                  "writes their guest device-tree nodes (guest-dt) and shows the whole path "
                  "on a simulated board (demo). Each command is described below with its "
                  "options; platpass COMMAND --help prints the same."),
            ".SH COMMANDS",
        ]
        for name, summary, _ in cmds:
            out += [".TP", f"\\fB{name}\\fR", _para(summary)]
        for name, _, sub in cmds:
            out += [f'.SH "PLATPASS {name.upper()}"', ".nf",
                    _roff(sub.format_usage().strip()), ".fi"]
            if sub.description:
                out += [".PP", _para(sub.description)]
            out += _options(sub)
        out += [
            ".SH EXAMPLES",
            ".nf",
            _roff("platpass demo                  # the whole path on the simulated board\n"
                  "platpass scan                  # this host's devices, with verdicts\n"
                  "platpass assign /soc/serial@ff1a0000 --socket /run/platpass/uart2.sock\n"
                  "platpass guest-dt /soc/serial@ff1a0000 --flavour crosvm -o uart2.dtbo\n"
                  "platpass release /soc/serial@ff1a0000"),
            ".fi",
            ".SH EXIT STATUS",
            _para("0 on success; 1 when platpass refuses or fails (the reason is on "
                  "standard error, prefixed platpass: error:); 2 for a usage error."),
            ".SH FILES",
            ".TP", "\\fI/run/platpass/assignments.json\\fR",
            _para("devices assign has bound, with their original drivers."),
            ".TP", "\\fI/etc/platpass/*.toml\\fR",
            _para("configurations of platpass up and platpass@.service."),
            ".SH SEE ALSO",
            _para("The platpass documentation: docs/ in the platpass source (getting "
                  "started, the safety model and every verdict rule, the TOML reference, "
                  "operations, benchmarks), built with mkdocs build."),
        ]
    return "\n".join(out) + "\n"


def _source_date() -> datetime.date:
    """SOURCE_DATE_EPOCH when set (reproducible builds), else today."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).date()
    return datetime.date.today()


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m platpass.cli.reference markdown|man [-o FILE]``."""
    ap = argparse.ArgumentParser(prog="python3 -m platpass.cli.reference",
                                 description="Write the CLI reference or the man page.")
    ap.add_argument("what", choices=("markdown", "man"))
    ap.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    args = ap.parse_args(argv)
    text = markdown() if args.what == "markdown" else manpage()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
