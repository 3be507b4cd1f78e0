"""bufdemo's live experiment: real sockets, real processes, the real kernel.

The public surface::

    from demo import RunConfig, run_experiment
    result = run_experiment(RunConfig(messages=10_000, recv_delay=0.0005))
    result.run_dir        # a new run directory; read it with analysis.load_run

Everything that touches a socket lives in this package; ``analysis`` only reads the
run directories it writes (docs/run-format.md).
"""

from demo.config import Address, Mode, RunConfig, parse_address
from demo.errors import BufdemoError, ConfigError, PeerError, ProtocolError, RunDirError
from demo.run import FORMAT_VERSION, Progress, RunResult, create_run_dir, run_experiment

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
    "create_run_dir",
    "parse_address",
    "run_experiment",
]
