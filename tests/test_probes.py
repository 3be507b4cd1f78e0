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


# What moves while the queues stand still: tcp_info's time counters, which only grow
# (the window stays shut, so rwnd_limited_us and busy_time_us go on counting), and the
# clock and the zero-window probes the sender's persist timer sends (probes, backoff).
GROWING = frozenset({"rwnd_limited_us", "sndbuf_limited_us", "busy_time_us"})
MOVING = GROWING | {"t_ns", "probes", "backoff"}


@linux_only
def test_raw_answers_parse_to_what_the_field_readers_read(tcp_pair: Callable[..., Pair]) -> None:
    """probes.RawSample keeps the kernel's answers as bytes and parses many at once: with
    the queues still, every field equals what tcp_info_reader and meminfo_reader read."""
    client, server = window_closed(tcp_pair)
    raw = probes.RawSample.of(client)
    assert raw is not None
    infos = raw.tcp_info() + raw.tcp_info() + raw.tcp_info()
    mems = raw.meminfo() + raw.meminfo() + raw.meminfo()
    fields = raw.parse(infos, mems)
    info = probes.tcp_info_reader(client)()
    mem = probes.meminfo_reader(client)()
    assert info is not None
    assert mem is not None
    for name, value in [
        *zip(probes.SAMPLED_TCP_INFO, info, strict=True),
        *zip(probes.SAMPLED_MEMINFO, mem, strict=True),
    ]:
        if name in GROWING:  # read after the raw answers: as large or larger
            assert fields[name].tolist() == sorted(fields[name].tolist()), name
            assert fields[name][-1] <= value, name
        elif name not in MOVING:
            assert fields[name].tolist() == [value] * 3, name
    assert fields["notsent_bytes"][0] > 0  # the window is closed: not all zeros
    assert raw.queue_out() == probes.queue_out(client)
    assert raw.queue_out() > 0
    assert raw_of(server).queue_in() == probes.queue_in(server)
    assert raw_of(server).queue_in() > 0


def raw_of(sock: socket.socket) -> probes.RawSample:
    raw = probes.RawSample.of(sock)
    assert raw is not None
    return raw


def test_no_raw_reader_where_a_probe_is_missing() -> None:
    """A socket without tcp_info or the queue ioctls (UDP, a listener) gets None: its
    sampler parses field by field, MISSING for what the kernel does not answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert probes.RawSample.of(udp) is None
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        assert probes.RawSample.of(listener) is None


@linux_only
def test_a_sampler_parses_what_it_staged_and_keeps_time_order_through_a_fallback(
    tcp_pair: Callable[..., Pair], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raw samples are parsed every STAGED_ROWS samples without anyone asking (what is
    held unparsed stays bounded); a raw reading that fails is taken field by field
    instead, after the staged rows, with the same values; a peer's reset is sampled."""
    from bufdemo.experiment.recorder import STAGED_ROWS, Sampler

    client, server = window_closed(tcp_pair)
    sampler = Sampler(client, 0.001, lambda: 7)
    for _ in range(STAGED_ROWS + 3):
        sampler.sample()
    assert sampler.table.pending == STAGED_ROWS  # parsed on its own, the last 3 staged
    assert sampler.rows == STAGED_ROWS + 3

    def failing(self: probes.RawSample) -> bytes:
        raise OSError("tcp_info failed")

    with monkeypatch.context() as m:
        m.setattr(probes.RawSample, "tcp_info", failing)
        sampler.sample()
    assert sampler.table.pending == STAGED_ROWS + 4  # the staged rows first, then it
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    server.close()  # linger 0: a reset; the sender's queue is thrown away

    def reset() -> bool:
        mem = probes.sk_meminfo(client)
        return mem is not None and mem["wmem_queued"] == 0

    wait_until(reset, SETTLE, "the reset")
    sampler.sample()
    columns = sampler.columns
    assert sampler.rows == STAGED_ROWS + 5
    t = columns["t_ns"].tolist()
    assert t == sorted(t)
    assert set(columns["count"]) == {7}
    before = {name: col[-3] for name, col in columns.items() if name not in MOVING}
    parsed = {name: col[-2] for name, col in columns.items() if name not in MOVING}
    assert parsed == before  # the queues were still: the same values either way
    assert columns["wmem_queued"][-2] > 0
    assert columns["wmem_queued"][-1] == 0  # after the reset: the queue's memory freed


@linux_only
def test_raw_and_parsed_samples_are_the_same_rows(tcp_pair: Callable[..., Pair]) -> None:
    """Sampler(raw=False) parses each probe as it reads it (as where RawSample is not
    available): with the queues still, its rows equal the raw sampler's, t_ns aside."""
    from bufdemo.experiment.recorder import Sampler

    client, _server = window_closed(tcp_pair)
    raw, parsed = Sampler(client, 0.001, lambda: 3), Sampler(client, 0.001, lambda: 3, raw=False)
    for sampler in (raw, parsed, raw, parsed):
        sampler.sample()
    rows = [
        [{n: col[i] for n, col in s.columns.items() if n not in MOVING} for i in (0, 1)]
        for s in (raw, parsed)
    ]
    assert rows[0] == rows[1]
    for name in GROWING:  # taken in turn: raw, parsed, raw, parsed
        taken = [raw.columns[name][0], parsed.columns[name][0]]
        taken += [raw.columns[name][1], parsed.columns[name][1]]
        assert taken == sorted(taken), name
    assert rows[0][0]["outq"] > 0


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
