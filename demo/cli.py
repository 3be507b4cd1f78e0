"""The ``bufdemo`` command: one typer app, two products, one error policy.

The experiment's commands (``run``, ``send``, ``receive``, ``plot``, ``report``) live in
:mod:`bufdemo.experiment.cli`, the lecture's (``serve``, ``client``, ``load``, ``lab``) in
:mod:`bufdemo.lecture.cli`; this module joins them and owns what happens to an error:
usage errors exit 2, runtime failures exit 1 as ``ErrorName: message``, Ctrl-C exits
130. No traceback reaches the user (``BUFDEMO_DEBUG=1`` shows one for a bug).

The library names a bad value by its setting (``recv_delay``, a field of the config
object); :func:`option_for` turns that into the option the user typed (``--recv-delay``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Annotated

# numpy's OpenBLAS starts a thread per CPU at import, and each spins ~0.1 s of CPU
# before it sleeps; bufdemo does no linear algebra, and on 2 CPUs those threads hold up
# the start of a run (docs/benchmarks.md). The processes a run spawns inherit this.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:  # the command's imports take ~0.5 s: a Ctrl-C then is an exit, not a traceback
    import typer
    from typer.exceptions import TyperException

    from bufdemo import __version__
    from bufdemo.console import one_line
    from bufdemo.errors import BufdemoError, ConfigError
    from bufdemo.experiment import cli as experiment_cli
    from bufdemo.experiment import sweep_cli
    from bufdemo.lecture import cli as lecture_cli
except KeyboardInterrupt:
    sys.stderr.write("interrupted\n")
    raise SystemExit(130) from None

__all__ = ["app", "main", "option_for"]

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
sweep_cli.register(app)


# Settings whose option is not "--" + the setting with "-" for "_": the exceptions.
OPTION_FOR_SETTING = {
    "plot": "--no-plot",  # RunConfig.plot is the negation of the flag
    "experiment": "NAME",  # lab run's argument
}


def option_for(setting: str) -> str:
    """The option (or argument) a user typed for a library ``setting``.

    An option name (``--listen``) or an argument's metavar (``NAME``, ``HOST:PORT``) is
    already what the user saw; a field name becomes its option: ``recv_delay`` ->
    ``--recv-delay``, with :data:`OPTION_FOR_SETTING` for the exceptions.
    """
    if setting in OPTION_FOR_SETTING:
        return OPTION_FOR_SETTING[setting]
    if setting.startswith("-") or not setting.islower():
        return setting
    return "--" + setting.replace("_", "-")


def _parser_message(exc: TyperException) -> str:
    """The parser's complaint in bufdemo's form, ``OPTION: rule, got VALUE``, when it
    says which value broke which rule; its own message otherwise.

    typer checks a value's type with pydantic and keeps the pydantic error as the
    cause, which holds the value; typer's message alone does not name it.
    """
    param, cause = getattr(exc, "param", None), exc.__cause__
    try:
        first = cause.errors()[0]  # type: ignore[union-attr]
        value, rule = first["input"], str(first["msg"])
        name = max(param.opts, key=len)  # type: ignore[union-attr]
    except (AttributeError, IndexError, KeyError, TypeError):
        return exc.format_message()
    rule = rule.removeprefix("Value error, ")
    rule = rule[:1].lower() + rule[1:]
    got = "" if repr(value) in rule else f", got {value!r}"
    return f"{name}: {rule}{got}"


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: run the app, turn every error into one line.

    Usage errors (typer's parser, or :class:`ConfigError` from validation, its setting
    named as the option) exit 2; :class:`BufdemoError` exits with its code; Ctrl-C
    exits 130; an OSError that no layer turned into a BufdemoError (the file system
    refused) is a runtime failure, exit 1. Anything else is a bug: one line here, the
    traceback with ``BUFDEMO_DEBUG=1``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name="bufdemo", standalone_mode=False)
    except ConfigError as exc:
        one_line(f"bufdemo: usage error: {option_for(exc.setting)}: {exc.message}")
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
        one_line(f"bufdemo: usage error: {_parser_message(exc)}")
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
