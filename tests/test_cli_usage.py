"""Bad input: one line naming the option and the rule, exit 2, never a traceback.

Each case runs the real console script in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bufdemo.errors import ConfigError
from bufdemo.experiment.config import RunConfig
from bufdemo.net import Address, parse_address

BUFDEMO = [sys.executable, "-m", "bufdemo"]

USAGE_CASES = [
    (["run", "--messages", "0"], "--messages"),
    (["run", "--messages", "-5"], "--messages"),
    (["run", "--messages", "abc"], "--messages"),
    (["run", "--messages", "1e12"], "--messages"),
    (["run", "--messages", "999999999999"], "--messages"),
    (["run", "--size", "10"], "--size"),
    (["run", "--size", "0"], "--size"),
    (["run", "--size", "99999999999"], "--size"),
    (["run", "--recv-delay", "-0.001"], "--recv-delay"),
    (["run", "--recv-delay", "nan"], "--recv-delay"),
    (["run", "--recv-delay", "inf"], "--recv-delay"),
    (["run", "--recv-delay", "fast"], "--recv-delay"),
    (["run", "--recv-delay", "100"], "--recv-delay"),
    (["run", "--sndbuf", "0"], "--sndbuf"),
    (["run", "--sndbuf", "-1"], "--sndbuf"),
    (["run", "--sndbuf", "big"], "--sndbuf"),
    (["run", "--rcvbuf", "0"], "--rcvbuf"),
    (["run", "--rcvbuf", "4294967296"], "--rcvbuf"),
    (["run", "--mode", "poll"], "--mode"),
    (["run", "--sample-interval", "0"], "--sample-interval"),
    (["run", "--sample-interval", "5"], "--sample-interval"),
    (["run", "--timeout", "0"], "--timeout"),
    (["run", "--timeout", "-1"], "--timeout"),
    (["run", "--no-such-option"], "--no-such-option"),
    (["send", "--to", "localhost"], "--to"),
    (["send", "--to", "localhost:"], "--to"),
    (["send", "--to", ":80"], "--to"),
    (["send", "--to", "127.0.0.1:0"], "--to"),
    (["send", "--to", "127.0.0.1:70000"], "--to"),
    (["send", "--to", "127.0.0.1:http"], "--to"),
    (["send", "--to", "::1:80"], "--to"),
    (["send"], "--to"),
    (["send", "--to", "127.0.0.1:9", "--token", "xyz"], "--token"),
    (["send", "--to", "127.0.0.1:9", "--token", "abcd"], "--token"),
    (["receive", "--listen", "127.0.0.1"], "--listen"),
    (["receive", "--listen", "127.0.0.1:-1"], "--listen"),
    (["receive", "--max-size", "3"], "--max-size"),
    (["receive", "--recv-delay", "-1"], "--recv-delay"),
    (["nosuchcommand"], "nosuchcommand"),
]


@pytest.mark.parametrize(("argv", "option"), USAGE_CASES, ids=[" ".join(a) for a, _ in USAGE_CASES])
def test_bad_input_exits_2_with_one_line_naming_the_option(
    argv: list[str], option: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [*BUFDEMO, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert option in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "runs").exists()  # nothing half-created


def test_config_is_frozen_and_validated_once() -> None:
    cfg = RunConfig(messages=10)
    with pytest.raises(AttributeError):
        cfg.messages = 5  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"--size: must be between 24 and"):
        RunConfig(size=23)
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


# -- every option, every rule: the message names the option *and* the rule ---------------

TO = ["send", "--to", "127.0.0.1:5000"]

RULE_CASES = [
    (["run", "--size", "23"], "--size", "24-byte frame header"),
    ([*TO, "--size", "8"], "--size", "24-byte frame header"),
    (["run", "--size", "16777217"], "--size", "between 24 and 16777216"),
    (["run", "--messages", "100000001"], "--messages", "between 1 and 100000000"),
    (["run", "--messages", "1.5"], "--messages", "valid integer"),
    ([*TO, "--messages", "0"], "--messages", "between 1 and"),
    (["run", "--recv-delay", "11"], "--recv-delay", "<= 10.0"),
    (["receive", "--recv-delay", "inf"], "--recv-delay", "finite"),
    (["run", "--sndbuf", "2147483648"], "--sndbuf", "between 1 and 1073741824"),
    ([*TO, "--sndbuf", "0"], "--sndbuf", "between 1 and"),
    (["run", "--rcvbuf", "1.5"], "--rcvbuf", "valid integer"),
    (["receive", "--rcvbuf", "-5"], "--rcvbuf", "between 1 and"),
    (["run", "--timeout", "nan"], "--timeout", "finite"),
    (["run", "--timeout", "1e9"], "--timeout", "<= 604800"),
    (["receive", "--timeout", "-2"], "--timeout", "> 0.0"),
    ([*TO, "--timeout", "soon"], "--timeout", "valid number"),
    (["run", "--sample-interval", "0.00001"], "--sample-interval", ">= 0.0001"),
    ([*TO, "--sample-interval", "-1"], "--sample-interval", ">= 0.0001"),
    ([*TO, "--mode", "poll"], "--mode", "is not one of"),
    (["receive", "--listen", "127.0.0.1:65536"], "--listen", "port must be 0-65535"),
    (["receive", "--listen", "bad host:80"], "--listen", "must not contain spaces"),
    (["receive", "--listen", "[::1:80"], "--listen", "[ADDR]:PORT"),
    (["receive", "--listen", "127.0.0.1:"], "--listen", "expected HOST:PORT"),
    (["send", "--to", "host:port"], "--to", "port must be a number"),
    (["send", "--to", "[::1]:99999"], "--to", "port must be 1-65535"),
    (["receive", "--token", "0" * 31], "--token", "32 hex digits"),
    (["receive", "--token", "zz" * 16], "--token", "32 hex digits"),
    (["receive", "--max-size", "99999999999"], "--max-size", "24 (the frame header)"),
    (["receive", "--max-size", "-1"], "--max-size", "between 24"),
    (["report"], "run_dir", "Missing argument"),
]


@pytest.mark.parametrize(
    ("argv", "option", "rule"), RULE_CASES, ids=[" ".join(a) for a, _, _ in RULE_CASES]
)
def test_bad_value_names_the_option_and_the_rule_in_one_line_exit_2(
    argv: list[str], option: str, rule: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [*BUFDEMO, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("bufdemo: usage error: ")
    assert option in line
    assert rule in line
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing half-created


# -- report / plot on a run directory that is not usable ----------------------------------


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) run directory to damage copies of."""
    from bufdemo.experiment.run import run_experiment

    out = tmp_path_factory.mktemp("good")
    result = run_experiment(RunConfig(messages=20, recv_delay=0, out=out, plot=False))
    assert result.complete, result.reason
    return result.run_dir


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
    good_run: Path, tmp_path: Path, command: str, how: str, message: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    _damage(run, how)
    proc = subprocess.run(
        [*BUFDEMO, command, str(run)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("RunFormatError: ")
    assert message in line
