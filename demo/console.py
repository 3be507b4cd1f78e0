"""What every command prints through: status lines on stderr, results on stdout.

One rule for all of bufdemo's commands, so a result can be piped (``--json | jq``) while
the progress and notes still reach the terminal.
"""

from __future__ import annotations

from rich.console import Console

__all__ = ["err", "one_line", "out"]

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def one_line(message: str) -> None:
    """Print ``message`` on stderr as one line, whatever whitespace it carries."""
    err.print(" ".join(message.split()), markup=False, soft_wrap=True)
