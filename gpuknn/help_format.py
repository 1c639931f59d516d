"""How the ``gpuknn`` command's help reads: prose filled to the terminal, examples kept
as written, and every option's default said."""

from __future__ import annotations

import argparse
import textwrap


class HelpFormatter(argparse.HelpFormatter):
    """Fill prose to the terminal's width but keep indented lines (examples, file lists)
    as written, and add each option's default to its help.

    A default is shown as ``(default: VALUE)`` unless the help already names one, or the
    default is None (the help then says what applies) or a flag's False.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines: list[str] = []
        prose: list[str] = []
        for line in [*text.strip("\n").splitlines(), ""]:
            if line and not line[0].isspace():
                prose.append(line)
                if not line.endswith(":"):  # a heading ends its paragraph
                    continue
            if prose:
                lines += textwrap.wrap(" ".join(prose), width, initial_indent=indent,
                                       subsequent_indent=indent, break_on_hyphens=False,
                                       break_long_words=False)
                prose = []
            if not line or line[0].isspace():
                lines.append(indent + line if line else "")
        return "\n".join(lines).rstrip("\n")

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        default = action.default
        if (not text or "default" in text.lower() or not action.option_strings
                or default is None or default is False or default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def subcommand(commands, name: str, summary: str, description: str,
             epilog: str) -> argparse.ArgumentParser:
    """A subcommand whose --help shows ``description``, its options, then ``epilog``."""
    return commands.add_parser(name, help=summary, description=description, epilog=epilog,
                               formatter_class=HelpFormatter)
