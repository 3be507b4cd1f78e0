"""The errors bufdemo raises, named by who is at fault.

    BufdemoError                 base: the CLI prints "ErrorName: message", exit 1
    ├── ConfigError              a setting is invalid (the user's input): exit 2
    ├── ProtocolError            the peer sent bytes that are not bufdemo frames
    ├── PeerError                the connection failed outside our control
    │                            (refused, reset, broken pipe, timed out); __cause__ kept
    ├── RunDirError              a run directory cannot be created or written
    ├── RunFormatError           a run directory cannot be read: missing, damaged, or a
    │                            newer format (also a ValueError)
    └── Interrupted              Ctrl-C/SIGTERM after something was recorded: exit 130

Messages are lowercase, one line, and name the rule and the value that broke it.
"""

from __future__ import annotations

__all__ = [
    "BufdemoError",
    "ConfigError",
    "Interrupted",
    "PeerError",
    "ProtocolError",
    "RunDirError",
    "RunFormatError",
]


class BufdemoError(Exception):
    """Base of every error bufdemo raises on purpose."""

    exit_code = 1


class ConfigError(BufdemoError, ValueError):
    """An option or setting has an invalid value; ``option`` names it."""

    exit_code = 2

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


class ProtocolError(BufdemoError):
    """The peer sent bytes that do not decode as bufdemo frames."""


class PeerError(BufdemoError):
    """The connection failed for a reason outside this process (reset, refused, ...)."""


class RunDirError(BufdemoError):
    """A run directory could not be created or written."""


class RunFormatError(BufdemoError, ValueError):
    """A run directory is missing, unreadable, or not in a format this version reads."""


class Interrupted(BufdemoError):
    """Ctrl-C after something was recorded: exit 130, naming the kept run directory."""

    exit_code = 130
