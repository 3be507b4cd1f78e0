"""Probes on a real loopback pair: the numbers come from the kernel, not from us."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from bufdemo import probes

from tests.conftest import Pair, fill

linux_only = pytest.mark.skipif(not probes.IS_LINUX, reason="Linux ioctls and tcp_info layout")


@linux_only
def test_granted_buffer_is_twice_the_request(tcp_pair: Callable[..., Pair]) -> None:
    client, server = tcp_pair(sndbuf=8192, rcvbuf=8192)
    assert probes.buffer_sizes(client).sndbuf == 16384
    assert probes.buffer_sizes(server).rcvbuf == 16384


@linux_only
def test_send_queue_grows_when_nobody_reads(tcp_pair: Callable[..., Pair]) -> None:
    client, server = tcp_pair(sndbuf=16384, rcvbuf=16384)
    assert probes.queue_out(client) == 0
    accepted = fill(client)
    outq = probes.queue_out(client)
    inq = probes.queue_in(server)
    assert outq is not None
    assert inq is not None
    # Everything accepted is either still in the sender's queue or in the receiver's.
    assert outq > 0
    assert inq > 0
    assert outq <= accepted
    # Payload queued stays below the truesize limit: SO_SNDBUF counts overhead too.
    assert outq < 2 * 16384
    unsent = probes.queue_out_unsent(client)
    assert unsent is not None
    assert 0 <= unsent <= outq


@linux_only
def test_tcp_info_sees_the_closed_window(tcp_pair: Callable[..., Pair]) -> None:
    client, server = tcp_pair(sndbuf=65536, rcvbuf=8192)
    fill(client)
    info = probes.tcp_info(client)
    assert info is not None
    assert info["notsent_bytes"] == probes.queue_out_unsent(client)
    server_info = probes.tcp_info(server)
    assert server_info is not None
    assert server_info["rcv_wnd"] is not None
    read = probes.tcp_info_reader(client)()
    assert read is not None
    assert len(read) == len(probes.SAMPLED_TCP_INFO)


@linux_only
def test_queue_probes_return_none_on_a_listening_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert probes.queue_out(listener) is None
        assert probes.queue_in(listener) is None


def test_sysctls_missing_are_none_not_invented(tmp_path: Path) -> None:
    (tmp_path / "net/ipv4").mkdir(parents=True)
    (tmp_path / "net/ipv4/tcp_wmem").write_text("4096\t16384\t4194304\n")
    values = probes.read_sysctls(tmp_path)
    assert values["tcp_wmem"] == [4096, 16384, 4194304]
    assert values["wmem_max"] is None


def test_netstat_parses_tcpext_and_is_none_without_procfs(tmp_path: Path) -> None:
    path = tmp_path / "netstat"
    path.write_text(
        "TcpExt: SyncookiesSent TCPToZeroWindowAdv\nTcpExt: 0 42\nIpExt: InNoRoutes\nIpExt: 3\n"
    )
    assert probes.netstat_counters(path) == {"SyncookiesSent": 0, "TCPToZeroWindowAdv": 42}
    assert probes.netstat_counters(tmp_path / "absent") is None


def test_host_info_names_the_kernel_and_python() -> None:
    info = probes.host_info()
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    if probes.IS_LINUX:
        assert info["sysctls"]["tcp_wmem"] is not None
