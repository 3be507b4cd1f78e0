"""The ``bufdemo`` command: one typer app, two products, one error policy.

The experiment's commands (``run``, ``send``, ``receive``, ``plot``, ``report``) live in
:mod:`bufdemo.experiment.cli`, the lecture's (``serve``, ``client``, ``load``, ``lab``) in
:mod:`bufdemo.lecture.cli`; this module joins them and owns what happens to an error:
usage errors exit 2, runtime failures exit 1 as ``ErrorName: message``, Ctrl-C exits
130. No traceback reaches the user (``BUFDEMO_DEBUG=1`` shows one for a bug).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Annotated

import typer
from bufdemo import __version__
from bufdemo.console import one_line
from bufdemo.errors import BufdemoError, ConfigError
from bufdemo.experiment import cli as experiment_cli
from bufdemo.lecture import cli as lecture_cli
from typer.exceptions import TyperException

__all__ = ["app", "main"]

app = typer.Typer(
    name="bufdemo",
    help=(
        "See TCP backpressure: a fast sender stalls and resumes behind a slow receiver, "
        "measured on the real kernel.\n\n"
        "Start with:  bufdemo run --recv-delay 0.001"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"bufdemo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print bufdemo's version and exit.",
            callback=_show_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """See TCP backpressure: a fast sender stalls and resumes behind a slow receiver,
    measured on the real kernel.

    Start with:  bufdemo run --recv-delay 0.001
    """


experiment_cli.register(app)
lecture_cli.register(app)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: run the app, turn every error into one line.

    Usage errors (typer's parser, or :class:`ConfigError` from validation) exit 2;
    :class:`BufdemoError` exits with its code; Ctrl-C exits 130. Anything else is a
    bug: one line here, the traceback with ``BUFDEMO_DEBUG=1``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name="bufdemo", standalone_mode=False)
    except ConfigError as exc:
        one_line(f"bufdemo: usage error: {exc}")
        return 2
    except BufdemoError as exc:
        one_line(f"{type(exc).__name__}: {exc}")
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        one_line("interrupted")
        return 130
    except TyperException as exc:  # the parser's usage errors
        if type(exc).__name__ == "NoArgsIsHelpError":  # not public; typer tests it so too
            typer.echo(exc.format_message())
            return 0
        one_line(f"bufdemo: usage error: {exc.format_message()}")
        return exc.exit_code
    except OSError as exc:  # the file system refused (a full disk, a read-only folder)
        one_line(f"{type(exc).__name__}: {exc}")
        return 1
    except Exception as exc:
        if os.environ.get("BUFDEMO_DEBUG"):
            raise
        one_line(f"InternalError: {type(exc).__name__}: {exc} (BUFDEMO_DEBUG=1 shows where)")
        return 1
    return code if isinstance(code, int) else 0
