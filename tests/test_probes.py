"""Probes on a real loopback pair: the numbers come from the kernel, not from us."""

from __future__ import annotations

import platform
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bufdemo import probes
from tests.conftest import Pair, fill
from tests.procs import wait_until

linux_only = pytest.mark.skipif(not probes.IS_LINUX, reason="Linux ioctls and tcp_info layout")
SETTLE = 10.0  # seconds for a delayed ACK on a loaded host: generous, not a claim


@linux_only
def test_granted_buffer_is_twice_the_request(tcp_pair: Callable[..., Pair]) -> None:
    client, server = tcp_pair(sndbuf=8192, rcvbuf=8192)
    assert probes.buffer_sizes(client).sndbuf == 16384
    assert probes.buffer_sizes(server).rcvbuf == 16384


def nothing_in_flight(sock: socket.socket) -> bool:
    """Every byte sent has been acknowledged: SIOCOUTQ (unacked) == SIOCOUTQNSD (unsent)."""
    return probes.queue_out(sock) == probes.queue_out_unsent(sock)


@linux_only
def test_send_queue_grows_when_nobody_reads(tcp_pair: Callable[..., Pair]) -> None:
    client, server = tcp_pair(sndbuf=16384, rcvbuf=16384)
    assert probes.queue_out(client) == 0
    assert probes.queue_in(server) == 0
    accepted = fill(client)
    # The last segments are acknowledged (a delayed ACK) and nothing more can be sent into
    # the closed window: then every byte accepted sits in exactly one of the two queues.
    wait_until(lambda: nothing_in_flight(client), SETTLE, "the last segments to be acked")
    outq = probes.queue_out(client)
    inq = probes.queue_in(server)
    assert outq is not None
    assert inq is not None
    assert outq > 0
    assert inq > 0
    assert outq + inq == accepted
    # Payload queued stays below the truesize limit: SO_SNDBUF counts overhead too.
    assert outq < 2 * 16384


def window_closed(tcp_pair: Callable[..., Pair]) -> Pair:
    """A pair whose receiver never reads, once the sender sees the window closed and
    nothing in flight: its queues then stay still."""
    client, server = tcp_pair(sndbuf=65536, rcvbuf=8192)
    fill(client)

    def closed() -> bool:
        info = probes.tcp_info(client)
        return info is not None and info["snd_wnd"] == 0 and nothing_in_flight(client)

    wait_until(closed, SETTLE, "the sender to see a zero window")
    return client, server


@linux_only
def test_tcp_info_sees_the_closed_window(tcp_pair: Callable[..., Pair]) -> None:
    client, server = window_closed(tcp_pair)
    info = probes.tcp_info(client)
    assert info is not None
    queued = probes.queue_out(client)
    assert queued is not None
    assert queued > 0
    # Everything queued waits for the window: all of it unsent, as tcp_info also says.
    assert info["notsent_bytes"] == probes.queue_out_unsent(client) == queued
    server_info = probes.tcp_info(server)
    assert server_info is not None
    if server_info["rcv_wnd"] is not None:  # tcp_info has rcv_wnd from Linux 6.2 on
        assert server_info["rcv_wnd"] == 0  # the receiver advertised the window closed
    read = probes.tcp_info_reader(client)()
    assert read is not None
    sampled = dict(zip(probes.SAMPLED_TCP_INFO, read, strict=True))
    assert sampled["snd_wnd"] == 0
    assert sampled["notsent_bytes"] == queued
    assert sampled["rcv_wnd"] == info["rcv_wnd"]
    # The sender has been limited by the receiver's window, and the counter only grows.
    assert sampled["rwnd_limited_us"] is not None
    assert info["rwnd_limited_us"] is not None
    assert sampled["rwnd_limited_us"] >= info["rwnd_limited_us"] > 0


@linux_only
def test_a_sample_reads_each_kernel_value_once_and_gets_what_its_own_call_gets(
    tcp_pair: Callable[..., Pair],
) -> None:
    """The sampler takes SO_SNDBUF/SO_RCVBUF from SO_MEMINFO and SIOCOUTQNSD from
    tcp_info's notsent_bytes (the same kernel fields): with the window closed and the
    queues still, each column equals its own system call."""
    from bufdemo.experiment.recorder import Sampler

    client, _server = window_closed(tcp_pair)
    sampler = Sampler(client, 0.001, lambda: 0)
    sampler.sample()
    row = {name: col[-1] for name, col in sampler.columns.items()}
    unsent = probes.queue_out_unsent(client)
    assert unsent is not None
    assert unsent > 0
    assert row["outq_nsd"] == unsent == row["notsent_bytes"] == row["outq"]
    assert row["sndbuf"] == client.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert row["rcvbuf"] == client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    mem = probes.sk_meminfo(client)
    assert mem is not None
    assert row["wmem_queued"] == mem["wmem_queued"] > 0
    assert probes.meminfo_reader(client)() == tuple(mem[n] for n in probes.SAMPLED_MEMINFO)


def test_one_struct_reads_every_field_where_one_read_at_a_time_does() -> None:
    import struct

    from bufdemo.probes import _one_struct

    layout = [(228, "I", 232), (8, "Q", 16), (2, "B", 3), (144, "I", 148)]
    raw = bytearray(280)
    for k, (offset, fmt, _end) in enumerate(layout):
        struct.pack_into(fmt, raw, offset, 100 + k)
    whole, order = _one_struct(layout)
    values = whole.unpack_from(bytes(raw))
    assert [values[k] for k in order] == [100, 101, 102, 103]
    assert whole.size == 232


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
    assert info["kernel"] == platform.release()
    if probes.IS_LINUX:
        wmem = [int(v) for v in Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()]
        assert info["sysctls"]["tcp_wmem"] == wmem
