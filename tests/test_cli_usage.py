"""Bad input: one line naming the option and the rule, exit 2, never a traceback.

Each case runs the real console script in a subprocess, as a user would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from demo.config import Address, RunConfig, parse_address
from demo.errors import ConfigError

BUFDEMO = [sys.executable, "-m", "demo"]

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
