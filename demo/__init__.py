"""bufdemo: see TCP send-buffer backpressure on real sockets, real processes, the real kernel.

Two products share this package and only a few pieces (errors, addresses, probes):

- :mod:`bufdemo.experiment`: the backpressure experiment. A receiver process consumes at
  a chosen pace, a sender process pushes as fast as the kernel accepts; every send is
  recorded, every blocking send logged with the queues around it, and a run directory
  written in the format of :mod:`bufdemo.runformat`.
- :mod:`bufdemo.lecture`: the socket lecture: fork/thread/select/poll/epoll servers, a
  line client, a load generator and lab experiments that measure the lecture's claims.

:mod:`bufdemo.analysis` reads run directories; it never touches a socket.

    from bufdemo import RunConfig, run_experiment, analysis
    result = run_experiment(RunConfig(messages=10_000, recv_delay=0.0005))
    run = analysis.load_run(result.run_dir)
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from bufdemo.errors import BufdemoError, ConfigError, PeerError, ProtocolError, RunDirError
from bufdemo.net import Address, parse_address
from bufdemo.runformat import FORMAT_VERSION

__all__ = [
    "FORMAT_VERSION",
    "Address",
    "BufdemoError",
    "ConfigError",
    "Mode",
    "PeerError",
    "Progress",
    "ProtocolError",
    "RunConfig",
    "RunDirError",
    "RunResult",
    "__version__",
    "analysis",
    "create_run_dir",
    "parse_address",
    "run_experiment",
]

if TYPE_CHECKING:
    from bufdemo import analysis
    from bufdemo.experiment.config import Mode, RunConfig
    from bufdemo.experiment.run import Progress, RunResult, create_run_dir, run_experiment

    __version__: str

# The experiment's API, imported on first use: every process bufdemo starts imports this
# package first (``python -m bufdemo.<module>``, multiprocessing's spawned sides), and
# the orchestration behind run_experiment is most of the package's import time.
_LAZY = {
    "Mode": "bufdemo.experiment.config",
    "RunConfig": "bufdemo.experiment.config",
    "Progress": "bufdemo.experiment.run",
    "RunResult": "bufdemo.experiment.run",
    "create_run_dir": "bufdemo.experiment.run",
    "run_experiment": "bufdemo.experiment.run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    # ``bufdemo.analysis`` loads pandas and matplotlib: only when asked for, so that the
    # sender and receiver processes (which import bufdemo) start without them.
    if name == "analysis":
        return import_module("bufdemo.analysis")
    if name == "__version__":
        # Read from the installed distribution only when asked for: importlib.metadata
        # (with email, zipfile, csv) is about a third of an interpreter's start-up with
        # bufdemo, paid by every sender and receiver process a run spawns.
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("bufdemo")
        except PackageNotFoundError:  # pragma: no cover - imported from a bare source tree
            found = "0+unknown"
        globals()["__version__"] = found
        return found
    raise AttributeError(f"module 'bufdemo' has no attribute {name!r}")
