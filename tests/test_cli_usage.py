"""Bad input: one line naming the option, the rule and the value, exit 2, no traceback.

Most cases call :func:`bufdemo.cli.main` in this process, the function the console
script runs; a few go through ``python -m bufdemo`` in a subprocess, so that the real
entry point (interpreter start, ``__main__``, exit status) stays covered.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from bufdemo import analysis
from bufdemo.cli import app, main, option_for
from bufdemo.errors import ConfigError
from bufdemo.experiment.config import RunConfig
from bufdemo.lecture.loadgen import LoadConfig
from bufdemo.net import Address, parse_address
from tests.procs import complete_run

BUFDEMO = [sys.executable, "-m", "bufdemo"]
TO = ["send", "--to", "127.0.0.1:5000"]
LOAD = ["load", "--to", "127.0.0.1:7"]
ASYNCIO = ["run", "--mode", "asyncio"]
WBL = "--write-buffer-limits"

# (argv, the option named, the rule, the value as the message shows it; None: no value)
USAGE_CASES = [
    # run: every option, every rule
    (["run", "--messages", "0"], "--messages", "between 1 and 100000000", "got 0"),
    (["run", "--messages", "-5"], "--messages", "between 1 and", "got -5"),
    (["run", "-n", "999999999999"], "--messages", "between 1 and", "got 999999999999"),
    (["run", "--messages", "100000001"], "--messages", "between 1 and 100000000", "got 100000001"),
    (["run", "--messages", "abc"], "--messages", "valid integer", "got 'abc'"),
    (["run", "--messages", "1e12"], "--messages", "valid integer", "got '1e12'"),
    (["run", "--messages", "1.5"], "--messages", "valid integer", "got '1.5'"),
    (["run", "--size", "10"], "--size", "24-byte frame header", "got 10"),
    (["run", "--size", "0"], "--size", "between 24 and 16777216", "got 0"),
    (["run", "--size", "23"], "--size", "24-byte frame header", "got 23"),
    (["run", "--size", "16777217"], "--size", "between 24 and 16777216", "got 16777217"),
    (["run", "--size", "99999999999"], "--size", "between 24 and", "got 99999999999"),
    (["run", "--recv-delay", "-0.001"], "--recv-delay", ">= 0.0 and <= 10.0", "got -0.001"),
    (["run", "-d", "-1"], "--recv-delay", ">= 0.0 and <= 10.0", "got -1.0"),
    (["run", "--recv-delay", "nan"], "--recv-delay", "finite", "got nan"),
    (["run", "--recv-delay", "inf"], "--recv-delay", "finite", "got inf"),
    (["run", "--recv-delay", "fast"], "--recv-delay", "valid number", "got 'fast'"),
    (["run", "--recv-delay", "100"], "--recv-delay", "<= 10.0", "got 100.0"),
    (["run", "--sndbuf", "0"], "--sndbuf", "between 1 and 1073741824", "got 0"),
    (["run", "--sndbuf", "-1"], "--sndbuf", "between 1 and", "got -1"),
    (["run", "--sndbuf", "big"], "--sndbuf", "valid integer", "got 'big'"),
    (["run", "--sndbuf", "2147483648"], "--sndbuf", "between 1 and 1073741824", "got 2147483648"),
    (["run", "--rcvbuf", "0"], "--rcvbuf", "between 1 and", "got 0"),
    (["run", "--rcvbuf", "4294967296"], "--rcvbuf", "between 1 and", "got 4294967296"),
    (["run", "--rcvbuf", "1.5"], "--rcvbuf", "valid integer", "got '1.5'"),
    (["run", "--mode", "poll"], "--mode", "is not one of 'blocking', 'select'", "'poll'"),
    (["run", "--sample-interval", "0"], "--sample-interval", ">= 0.0001", "got 0.0"),
    (["run", "--sample-interval", "5"], "--sample-interval", "<= 1.0", "got 5.0"),
    (["run", "--sample-interval", "0.00001"], "--sample-interval", ">= 0.0001", "got 1e-05"),
    (["run", "--timeout", "0"], "--timeout", "> 0.0", "got 0.0"),
    (["run", "--timeout", "-1"], "--timeout", "> 0.0", "got -1.0"),
    (["run", "--timeout", "nan"], "--timeout", "finite", "got nan"),
    (["run", "--timeout", "1e9"], "--timeout", "<= 604800", "got 1000000000.0"),
    (["run", "--no-plot", "--json", "-o", "x", "--size", "23"], "--size", "24-byte", "got 23"),
    (["run", "--no-such-option"], "--no-such-option", "No such option", None),
    # the asyncio modes' transport limits (issue 13)
    (["run", WBL, "64k"], WBL, "HIGH or HIGH,LOW", "got '64k'"),
    (["run", WBL, "1,2,3"], WBL, "HIGH or HIGH,LOW", "got '1,2,3'"),
    ([*ASYNCIO, WBL, "0"], WBL, "between 1 and", "got 0"),
    ([*ASYNCIO, WBL, "100,200"], WBL, "LOW must be between 0 and HIGH (100)", "got 200"),
    (["run", WBL, "65536"], WBL, "asyncio modes only", "got mode 'blocking'"),
    ([*TO, "--mode", "asyncio-nodrain", WBL, "x,1"], WBL, "HIGH or HIGH,LOW", "got 'x,1'"),
    (["run", "--mode", "asyncio-drain"], "--mode", "is not one of", "'asyncio-drain'"),
    # run over a link (--netns): refused before anything needs root
    (["run", "--link-rate", "20mbit"], "--link-rate", "needs --netns", None),
    (["run", "--mtu", "1500"], "--mtu", "needs --netns", None),
    (["run", "--link-delay", "10ms"], "--link-delay", "needs --netns", None),
    (["run", "--netns", "--link-rate", "fast"], "--link-rate", "number with a unit", "'fast'"),
    (["run", "--netns", "--link-rate", "20parsec"], "--link-rate", "unit must be", "'20parsec'"),
    (["run", "--netns", "--link-rate", "1bit"], "--link-rate", "between 8kbit", "'1bit'"),
    (["run", "--netns", "--link-queue", "50ms"], "--link-queue", "needs --link-rate", None),
    (
        ["run", "--netns", "--link-rate", "1mbit", "--link-queue", "5 apples"],
        "--link-queue",
        "must be bytes (b, kb, mb) or time",
        "'5 apples'",
    ),
    (
        ["run", "--netns", "--link-rate", "1mbit", "--link-queue", "20s"],
        "--link-queue",
        "<= 10 s",
        "'20s'",
    ),
    (["run", "--netns", "--mtu", "100"], "--mtu", "between 576 and 65535", "got 100"),
    (["run", "--netns", "--link-delay", "soon"], "--link-delay", "number with a unit", "'soon'"),
    (["run", "--netns", "--link-loss", "200%"], "--link-loss", "percentage", "'200%'"),
    # send: the same rules, plus the address and the token
    ([*TO, "--size", "8"], "--size", "24-byte frame header", "got 8"),
    ([*TO, "--messages", "0"], "--messages", "between 1 and", "got 0"),
    ([*TO, "--sndbuf", "0"], "--sndbuf", "between 1 and", "got 0"),
    ([*TO, "--timeout", "soon"], "--timeout", "valid number", "got 'soon'"),
    ([*TO, "--sample-interval", "-1"], "--sample-interval", ">= 0.0001", "got -1.0"),
    ([*TO, "--mode", "poll"], "--mode", "is not one of", "'poll'"),
    ([*TO, "--json", "--size", "8"], "--size", "24-byte frame header", "got 8"),
    (["send", "--to", "localhost"], "--to", "expected HOST:PORT", "got 'localhost'"),
    (["send", "--to", "localhost:"], "--to", "expected HOST:PORT", "got 'localhost:'"),
    (["send", "--to", ":80"], "--to", "expected HOST:PORT", "got ':80'"),
    (["send", "--to", "127.0.0.1:0"], "--to", "port must be 1-65535", "got 0"),
    (["send", "-t", "127.0.0.1:70000"], "--to", "port must be 1-65535", "got 70000"),
    (["send", "--to", "127.0.0.1:http"], "--to", "port must be a number", "got 'http'"),
    (["send", "--to", "host:port"], "--to", "port must be a number", "got 'port'"),
    (["send", "--to", "[::1]:99999"], "--to", "port must be 1-65535", "got 99999"),
    (["send", "--to", "::1:80"], "--to", "[ADDR]:PORT", "got '::1:80'"),
    (["send"], "--to", "Missing option", None),
    ([*TO, "--token", "xyz"], "--token", "32 hex digits", "got 'xyz'"),
    ([*TO, "--token", "abcd"], "--token", "32 hex digits", "got 4 characters"),
    # receive
    (["receive", "--listen", "127.0.0.1"], "--listen", "expected HOST:PORT", "got '127.0.0.1'"),
    (["receive", "-l", "127.0.0.1:-1"], "--listen", "port must be a number", "got '-1'"),
    (["receive", "--listen", "127.0.0.1:65536"], "--listen", "port must be 0-65535", "got 65536"),
    (["receive", "--listen", "bad host:80"], "--listen", "must not contain spaces", "'bad host'"),
    (["receive", "--listen", "[::1:80"], "--listen", "[ADDR]:PORT", "got '[::1:80'"),
    (["receive", "--json", "--listen", "x"], "--listen", "expected HOST:PORT", "got 'x'"),
    (["receive", "--max-size", "3"], "--max-size", "between 24 (the frame header)", "got 3"),
    (["receive", "--max-size", "99999999999"], "--max-size", "and 16777216", "got 99999999999"),
    (["receive", "--max-size", "-1"], "--max-size", "between 24", "got -1"),
    (["receive", "--recv-delay", "-1"], "--recv-delay", ">= 0.0", "got -1.0"),
    (["receive", "--recv-delay", "inf"], "--recv-delay", "finite", "got inf"),
    (["receive", "--rcvbuf", "-5"], "--rcvbuf", "between 1 and", "got -5"),
    (["receive", "--timeout", "-2"], "--timeout", "> 0.0", "got -2.0"),
    (["receive", "--token", "0" * 31], "--token", "32 hex digits", f"got '{'0' * 31}'"),
    (["receive", "--token", "zz" * 16], "--token", "32 hex digits", f"got '{'zz' * 16}'"),
    # the analysis commands and the command itself
    (["report"], "RUN", "Missing argument", None),
    (["plot"], "RUN", "Missing argument", None),
    (["nosuchcommand"], "nosuchcommand", "No such command", None),
    # the lecture's commands: the same names and flags
    (["load"], "--to", "give --to HOST:PORT, or --compare", None),
    (["load", "-t", "nowhere"], "--to", "expected HOST:PORT", "got 'nowhere'"),
    ([*LOAD, "--compare"], "--compare", "cannot be combined with --to", None),
    ([*LOAD, "--clients", "0"], "--clients", "between 1 and 10000", "got 0"),
    ([*LOAD, "-c", "x"], "--clients", "valid integer", "got 'x'"),
    ([*LOAD, "-n", "0"], "--messages", "between 1 and", "got 0"),
    ([*LOAD, "--size", "8"], "--size", "between 32 and", "got 8"),
    ([*LOAD, "--timeout", "0"], "--timeout", "> 0", "got 0.0"),
    ([*LOAD, "--plot", "x.png"], "--plot", "needs --compare", None),
    (["load", "--compare", "--models", "fork,fiber"], "--models", "must be one of", "'fiber'"),
    (["serve", "--model", "coroutine"], "--model", "must be one of fork, thread", "'coroutine'"),
    (["serve", "-m", "epoll", "-l", "127.0.0.1:70000"], "--listen", "0-65535", "got 70000"),
    (["serve", "-m", "epoll", "--listen", "localhost"], "--listen", "HOST:PORT", "'localhost'"),
    (["lab", "run", "quantum"], "NAME", "unknown experiment", "'quantum'"),
    (["client", "nowhere"], "HOST:PORT", "expected HOST:PORT", "got 'nowhere'"),
    # --send-rate, --notsent-lowat and sweep's lists (issue 11)
    (["run", "--send-rate", "0"], "--send-rate", "> 0.0", "got 0.0"),
    (["run", "--send-rate", "-5"], "--send-rate", "> 0.0", "got -5.0"),
    (["run", "--send-rate", "nan"], "--send-rate", "finite", "got nan"),
    (["run", "--send-rate", "lots"], "--send-rate", "valid number", "got 'lots'"),
    (["send", "-t", "127.0.0.1:5000", "--send-rate", "0"], "--send-rate", "> 0.0", "got 0.0"),
    (["run", "--notsent-lowat", "0"], "--notsent-lowat", "between 1 and", "got 0"),
    (["run", "--notsent-lowat", "-1"], "--notsent-lowat", "between 1 and", "got -1"),
    (["run", "--notsent-lowat", "x"], "--notsent-lowat", "valid integer", "got 'x'"),
    (["sweep", "quantum=1,2"], "OPTION=V1,V2,...", "cannot sweep --quantum", "'quantum=1,2'"),
    (["sweep", "send-rate"], "OPTION=V1,V2,...", "must be OPTION=V1,V2", "'send-rate'"),
    (["sweep", "--send-rate", "5,,6"], "--send-rate", "comma-separated list", "'5,,6'"),
    (["sweep", "--send-rate", "5,x"], "--send-rate", "comma-separated list", "'5,x'"),
    (["sweep", "--send-rate", "500,-1"], "--send-rate", "> 0.0", "got -1.0"),
    (["sweep", "--sndbuf", "auto,0"], "--sndbuf", "between 1 and", "got 0"),
    (["sweep", "--notsent-lowat", "0,16384"], "--notsent-lowat", "between 1 and", "got 0"),
    (["sweep", "--send-rate", "500"], "OPTION=V1,V2,...", "two or more values", None),
    (["sweep"], "OPTION=V1,V2,...", "two or more values", None),
    (
        ["sweep", "--send-rate", "1,2", "--size", "100,200"],
        "OPTION=V1,V2,...",
        "one option at a time",
        None,
    ),
    (["sweep", "size=100,200", "--size", "300"], "OPTION=V1,V2,...", "given twice", None),
    (
        ["sweep", "--mode", "blocking,fast"],
        "--mode",
        "modes (blocking, select, asyncio, asyncio-nodrain)",
        None,
    ),
    (["sweep", "-n", "0", "--send-rate", "1,2"], "--messages", "between 1 and", "got 0"),
]


def _ids(cases: list[tuple[list[str], str, str, str | None]]) -> list[str]:
    return [" ".join(argv) for argv, *_ in cases]


def _check_one_usage_line(
    code: int, stdout: str, stderr: str, option: str, rule: str, value: str | None
) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    (line,) = stderr.splitlines()  # exactly one line
    assert line.startswith("bufdemo: usage error: "), line
    assert option in line, line
    assert rule in line, line
    if value is not None:
        assert value in line, line
    assert stdout == ""


@pytest.mark.parametrize(("argv", "option", "rule", "value"), USAGE_CASES, ids=_ids(USAGE_CASES))
def test_bad_input_is_one_line_naming_option_rule_and_value_exit_2(
    argv: list[str],
    option: str,
    rule: str,
    value: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    _check_one_usage_line(code, captured.out, captured.err, option, rule, value)
    assert list(tmp_path.iterdir()) == []  # nothing half-created


# Through the real entry point: a library rule, a parser rule, a missing option, a
# missing command, and a rule of the lecture's commands.
ENTRY_POINT_CASES = [
    (["run", "--recv-delay", "-1"], "--recv-delay", ">= 0.0 and <= 10.0", "got -1.0"),
    (["run", "--messages", "abc"], "--messages", "valid integer", "got 'abc'"),
    (["send"], "--to", "Missing option", None),
    (["nosuchcommand"], "nosuchcommand", "No such command", None),
    (["load", "-t", "127.0.0.1:7", "--clients", "0"], "--clients", "between 1 and", "got 0"),
]


@pytest.mark.parametrize(
    ("argv", "option", "rule", "value"), ENTRY_POINT_CASES, ids=_ids(ENTRY_POINT_CASES)
)
def test_bad_input_through_python_m_bufdemo(
    argv: list[str], option: str, rule: str, value: str | None, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [*BUFDEMO, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False
    )
    _check_one_usage_line(proc.returncode, proc.stdout, proc.stderr, option, rule, value)
    assert list(tmp_path.iterdir()) == []


# -- settings and options ------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "option"),
    [
        ("recv_delay", "--recv-delay"),
        ("sample_interval", "--sample-interval"),
        ("messages", "--messages"),
        ("plot", "--no-plot"),
        ("experiment", "NAME"),
        ("--listen", "--listen"),
        ("HOST:PORT", "HOST:PORT"),
    ],
)
def test_a_setting_is_named_as_the_option_the_user_typed(setting: str, option: str) -> None:
    assert option_for(setting) == option


def _options_of_every_command() -> set[str]:
    names: set[str] = set()
    todo = [typer.main.get_command(app)]
    while todo:
        command = todo.pop()
        todo.extend(getattr(command, "commands", {}).values())
        for param in command.params:
            names.update(param.opts)
    return names


def test_every_setting_maps_to_an_option_that_exists() -> None:
    """A ConfigError about any field must name an option a user can type."""
    options = _options_of_every_command()
    run_fields = [f.name for f in dataclasses.fields(RunConfig)]
    # A load's host and port come from --to, parsed (and checked) before LoadConfig.
    load_fields = [f.name for f in dataclasses.fields(LoadConfig) if f.name not in ("host", "port")]
    for name in run_fields + load_fields:
        assert option_for(name) in options, name


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (OSError(28, "No space left on device"), "OSError: [Errno 28] No space left on device"),
        (ValueError("a bug"), "InternalError: ValueError: a bug (BUFDEMO_DEBUG=1 shows where)"),
    ],
)
def test_an_oserror_or_a_bug_is_a_runtime_failure_not_a_usage_error(
    error: Exception,
    line: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fail(run_dir: Path) -> analysis.Run:
        raise error

    monkeypatch.delenv("BUFDEMO_DEBUG", raising=False)
    monkeypatch.setattr(analysis, "load_run", fail)
    assert main(["report", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.err == line + "\n"
    assert captured.out == ""


def test_config_is_frozen_and_validated_once() -> None:
    cfg = RunConfig(messages=10)
    with pytest.raises(AttributeError):
        cfg.messages = 5  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"^size: must be between 24 and") as caught:
        RunConfig(size=23)
    assert caught.value.setting == "size"
    assert "token" not in cfg.as_dict()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000", Address("127.0.0.1", 5000)),
        ("[::1]:80", Address("::1", 80)),
        ("localhost:0", Address("localhost", 0)),
    ],
)
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text, "--to") == expected


def test_loopback_detection() -> None:
    assert Address("127.0.0.1", 1).is_loopback
    assert Address("::1", 1).is_loopback
    assert Address("localhost", 1).is_loopback
    assert not Address("10.1.2.3", 1).is_loopback
    assert not Address("0.0.0.0", 1).is_loopback


# -- report / plot on a run directory that is not usable ----------------------------------


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) run directory to damage copies of."""
    return complete_run(tmp_path_factory.mktemp("good"), messages=20, recv_delay=0)


def _damage(run: Path, how: str) -> None:
    if how == "missing":
        shutil.rmtree(run)
    elif how == "no meta.json":
        (run / "meta.json").unlink()
    elif how == "corrupt meta.json":
        (run / "meta.json").write_text('{"format_version": 1, "config": {')
    elif how == "newer format version":
        meta = json.loads((run / "meta.json").read_text())
        meta["format_version"] = 99
        (run / "meta.json").write_text(json.dumps(meta))
    elif how == "truncated table":
        data = (run / "sends.csv").read_bytes()
        (run / "sends.csv").write_bytes(data[:5])  # cut inside the header
    elif how == "corrupt table":
        (run / "consumed.csv").write_bytes(b"seq,t_read_ns,t_start_ns,t_end_ns,intact\n0,x,y\n")


BAD_RUN_DIRS = [
    ("report", "missing", "no such run directory"),
    ("plot", "missing", "no such run directory"),
    ("report", "no meta.json", "not a run directory (no meta.json)"),
    ("report", "corrupt meta.json", "corrupt json"),
    ("report", "newer format version", "run format 99 is newer than this bufdemo reads"),
    ("plot", "newer format version", "run format 99 is newer than this bufdemo reads"),
    ("report", "truncated table", "sends.csv: missing column(s)"),
    ("plot", "corrupt table", "consumed.csv: truncated or corrupt table"),
]


@pytest.mark.parametrize(("command", "how", "message"), BAD_RUN_DIRS)
def test_report_and_plot_on_an_unusable_run_directory_fail_in_one_line(
    good_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    how: str,
    message: str,
) -> None:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    _damage(run, how)
    assert main([command, str(run)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    (line,) = captured.err.splitlines()
    assert line.startswith("RunFormatError: ")
    assert message in line
    assert captured.out == ""


def test_a_bad_run_directory_through_python_m_bufdemo(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*BUFDEMO, "report", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"RunFormatError: {tmp_path / 'nothing'}: no such run directory\n"
    assert proc.stdout == ""


def test_ctrl_c_while_the_command_imports_is_an_exit_not_a_traceback() -> None:
    """The command's imports take a while; a Ctrl-C then (here raised by the import of
    typer itself, the first of them) exits 130 with one line."""
    script = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'typer':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from bufdemo.cli import main\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 130
    assert proc.stderr == "interrupted\n"


_THREADS_AFTER_NUMPY = (
    "import os, bufdemo.cli, numpy; "
    "print(len(os.listdir('/proc/self/task')), os.environ['OPENBLAS_NUM_THREADS'])"
)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="no /proc/self/task here")
@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("2", "2")])
def test_the_command_starts_no_blas_threads_unless_the_user_asks(
    given: str | None, expected: str
) -> None:
    """numpy's OpenBLAS would start a spinning thread per CPU; the command starts none,
    and a user's own OPENBLAS_NUM_THREADS is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    out = subprocess.run(
        [sys.executable, "-c", _THREADS_AFTER_NUMPY], env=env, capture_output=True, text=True,
        check=True,
    ).stdout.split()  # fmt: skip
    assert out[1] == expected
    if given is None:
        assert out[0] == "1"  # the main thread alone
