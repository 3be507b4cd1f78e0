"""The errors bufdemo raises, named by who is at fault.

    BufdemoError                 base: the CLI prints "ErrorName: message", exit 1
    ├── ConfigError              a setting is invalid (the user's input): exit 2;
    │                            ``.setting`` names it as the library knows it
    ├── ProtocolError            the peer sent bytes that are not bufdemo frames
    ├── PeerError                the connection failed outside our control
    │   │                        (refused, reset, broken pipe); __cause__ kept
    │   └── PeerTimeout          a wait for the peer outlasted the run's timeout: the
    │                            peer is stuck or absent, not gone
    ├── RunDirError              a run directory cannot be created or written
    ├── RunFormatError           a run directory cannot be read: missing, damaged, or a
    │                            newer format (also a ValueError)
    └── Interrupted              Ctrl-C/SIGTERM after something was recorded: exit 130

Messages are lowercase, one line, and name the rule and the value that broke it.
A library error never names a command-line flag: a :class:`ConfigError` carries the
setting's name (``recv_delay``, a field of the config object); the CLI maps it to its
option.
"""

from __future__ import annotations

__all__ = [
    "BufdemoError",
    "ConfigError",
    "Interrupted",
    "PeerError",
    "PeerTimeout",
    "ProtocolError",
    "RunDirError",
    "RunFormatError",
]


class BufdemoError(Exception):
    """Base of every error bufdemo raises on purpose."""

    exit_code = 1


class ConfigError(BufdemoError, ValueError):
    """A setting has an invalid value; ``setting`` names it (``"recv_delay"``): the field
    of the config object, or what the caller said the value was (``parse_address``)."""

    exit_code = 2

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


class ProtocolError(BufdemoError):
    """The peer sent bytes that do not decode as bufdemo frames."""


class PeerError(BufdemoError):
    """The connection failed for a reason outside this process (reset, refused, ...)."""


class PeerTimeout(PeerError):
    """The peer did not answer within the run's timeout (it is stuck, or never came)."""


class RunDirError(BufdemoError):
    """A run directory could not be created or written."""


class RunFormatError(BufdemoError, ValueError):
    """A run directory is missing, unreadable, or not in a format this version reads."""


class Interrupted(BufdemoError):
    """Ctrl-C after something was recorded: exit 130, naming the kept run directory."""

    exit_code = 130
