"""Shared fixtures: real loopback TCP pairs with small buffers; what a test needs of the host.

A test that needs a system tool or root says so through :func:`require_tool`,
:func:`require_root` or :func:`require_nofile`. Where it is missing the test SKIPS with a
reason naming the Debian package (or what to do), unless ``BUFDEMO_REQUIRE_TOOLS=1`` is set
(CI sets it after installing the tools): then it FAILS, so a missing install step cannot
pass unnoticed.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import settings
from hypothesis.database import InMemoryExampleDatabase

Pair = tuple[socket.socket, socket.socket]

REQUIRE_ENV = "BUFDEMO_REQUIRE_TOOLS"


def tools_required() -> bool:
    """True when the environment promises every tool and privilege (CI)."""
    return os.environ.get(REQUIRE_ENV) == "1"


def missing(reason: str) -> NoReturn:
    """Skip for ``reason``; fail instead where BUFDEMO_REQUIRE_TOOLS=1 promised it."""
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 requires it)", pytrace=False)
    pytest.skip(reason)


# Where the libraries the tests drive keep state in the user's home (matplotlib's font
# cache, the notebook kernel's connection file and history): a temporary directory per
# session instead, inherited by every process the tests start.
_STATE_DIRS = {
    "MPLCONFIGDIR": "matplotlib",
    "IPYTHONDIR": "ipython",
    "JUPYTER_RUNTIME_DIR": "jupyter",
}
_STATE_KEY = pytest.StashKey[tuple[Path, dict[str, str | None]]]()


def pytest_configure(config: pytest.Config) -> None:
    """The tests write only to temporary directories.

    Library state goes to a per-session temporary directory (not the home directory).
    Where the checkout is read-only, pytest's cache and Hypothesis's example database
    (both kept in it when it is writable) quietly do without, instead of warning (a
    warning fails a test here).
    """
    state = Path(tempfile.mkdtemp(prefix="bufdemo-tests-"))
    saved = {var: os.environ.get(var) for var in _STATE_DIRS}
    config.stash[_STATE_KEY] = (state, saved)
    for var, name in _STATE_DIRS.items():
        (state / name).mkdir()
        os.environ[var] = str(state / name)
    # Build matplotlib's font cache there now, once: not in each process the tests start.
    import matplotlib.font_manager  # noqa: F401

    config.addinivalue_line("filterwarnings", "ignore::pytest.PytestCacheWarning")
    examples = Path(".hypothesis")
    if not os.access(examples if examples.exists() else Path.cwd(), os.W_OK):
        settings.register_profile("read-only-checkout", database=InMemoryExampleDatabase())
        settings.load_profile("read-only-checkout")


def pytest_unconfigure(config: pytest.Config) -> None:
    state, saved = config.stash[_STATE_KEY]
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    shutil.rmtree(state, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Report a skip from :func:`missing` at the test that needs the tool, not here."""
    report = yield
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and longrepr[0] == __file__:
        path, line, _ = item.reportinfo()
        report.longrepr = (str(path), (line or 0) + 1, longrepr[2])
    return report


def require_tool(name: str, package: str, *, variant: str | None = None) -> str:
    """The path of system tool ``name`` from Debian package ``package``.

    ``variant``: a word the tool's ``-h`` output must contain, for a tool that exists in
    incompatible flavours (``nc``: only OpenBSD netcat has the syntax the tests use).
    """
    path = shutil.which(name)
    if path is None:
        missing(f"{name} not installed: apt-get install {package}")
    if variant is not None:
        probe = subprocess.run(
            [path, "-h"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
        if variant.lower() not in (probe.stdout + probe.stderr).lower():
            missing(f"{path} is not {variant} {name}: apt-get install {package}")
    return path


def require_root(why: str) -> None:
    """Root, for ``why`` (e.g. network namespaces)."""
    if os.geteuid() != 0:
        missing(f"needs root for {why}: run the tests as root")


def require_nofile(needed: int) -> None:
    """At least ``needed`` open descriptors for this process (and the servers it starts)."""
    from bufdemo.lecture.loadgen import raise_nofile_limit  # the product's own way

    soft = raise_nofile_limit(needed)
    if soft < needed:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        missing(f"needs {needed} open files, the hard limit is {hard}: raise it (ulimit -Hn)")


@pytest.fixture
def tcp_pair() -> Iterator[Callable[..., Pair]]:
    """Make connected (client, server) pairs on 127.0.0.1; buffers set before connect."""
    made: list[socket.socket] = []

    def make(sndbuf: int | None = None, rcvbuf: int | None = None) -> Pair:
        listener = socket.socket()
        made.append(listener)
        if rcvbuf is not None:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.socket()
        made.append(client)
        if sndbuf is not None:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
        made.append(server)
        return client, server

    yield make
    for sock in made:
        sock.close()


def fill(sock: socket.socket, chunk: int = 1024) -> int:
    """Write without blocking until the kernel refuses more; return bytes accepted."""
    sock.setblocking(False)
    total = 0
    try:
        while True:
            total += sock.send(b"x" * chunk)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return total
