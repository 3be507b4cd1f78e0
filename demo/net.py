"""Addresses shared by the experiment and the lecture: parse ``HOST:PORT``, say whether
it is loopback, and turn a timeout into the ``struct timeval`` the kernel's own waits take.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from bufdemo.errors import ConfigError

__all__ = ["Address", "parse_address", "timeval"]


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def timeval(seconds: float) -> bytes:
    """A ``struct timeval`` for SO_SNDTIMEO / SO_RCVTIMEO (how a run's ``timeout``
    reaches the kernel's own waits)."""
    sec = int(seconds)
    return struct.pack("ll", sec, int((seconds - sec) * 1e6))


def parse_address(text: str, what: str, *, allow_port_zero: bool = True) -> Address:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6).

    ``what`` names the value for the :class:`ConfigError` a malformed one raises (its
    ``setting``): the caller knows where the text came from (the CLI passes its option,
    ``"--listen"``).
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise ConfigError(what, f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(what, f"write an IPv6 address as [ADDR]:PORT, got {text!r}")
    if not port_text.isdigit():
        raise ConfigError(what, f"port must be a number 0-65535, got {port_text!r}")
    port = int(port_text)
    lowest = 0 if allow_port_zero else 1
    if not lowest <= port <= 65535:
        raise ConfigError(what, f"port must be {lowest}-65535, got {port}")
    if any(c.isspace() for c in host):
        raise ConfigError(what, f"host must not contain spaces, got {host!r}")
    return Address(host, port)
