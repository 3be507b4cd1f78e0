"""Every lab experiment's verdict and the numbers behind it, on the real kernel.

Each test runs the experiment and checks the verdict *and* the measurements that decide
it, so an experiment that hard-coded "holds" would still fail here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from bufdemo.lecture import lab
from bufdemo.lecture.lab import deadpeer
from bufdemo.lecture.lab._core import LabResult
from tests.conftest import missing, require_root, require_tool

CLI = [sys.executable, "-m", "bufdemo", "lab"]
NAMES = [
    "sender-close",
    "receiver-close",
    "dead-peer",
    "reconnect",
    "nagle",
    "writable",
    "buffer-sizes",
    "small-window",
    "slow-client",
]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def ran(name: str) -> LabResult:
    result = lab.run(name)
    assert result.name == name
    assert result.claim == lab.EXPERIMENTS[name].claim
    assert result.explanation  # the numbers, in words
    return result


def test_the_registry_has_every_experiment_of_the_issue() -> None:
    assert list(lab.EXPERIMENTS) == NAMES


def test_sender_close_delivers_everything_still_queued() -> None:
    r = ran("sender-close")
    ev = r.evidence
    assert r.holds
    assert ev["sender_queue_at_close_SIOCOUTQ"] > 0  # the claim needs data left to deliver
    assert ev["bytes_read_after_close_returned"] == ev["bytes_accepted_by_send"]
    assert ev["content_identical_sha256"] is True
    assert ev["stream_ended_with"].startswith("FIN")


def test_receiver_close_with_unread_data_resets_the_peer() -> None:
    r = ran("receiver-close")
    ev = r.evidence
    assert r.holds
    assert ev["unread_bytes_at_close_SIOCINQ"] == 4096
    reset = ev["peer_after_close_with_unread_data"]
    assert reset["recv"] == "ECONNRESET"
    assert reset["send"] in ("EPIPE", "ECONNRESET")
    assert reset["tcp_state_after_recv"] == "CLOSE"
    orderly = ev["peer_after_close_with_everything_read"]
    assert orderly["recv"].startswith("b''")
    assert orderly["tcp_state_after_recv"] == "CLOSE_WAIT"
    assert ev["TCPAbortOnClose_delta_this_namespace"] >= 1  # namespace-wide: >=, not ==


def _stopped_contrast_holds(ev: dict[str, Any]) -> None:
    stopped = ev["sigstopped_peer"]
    assert stopped["acked_by_stopped_peers_kernel"] > 0  # its kernel still ACKs
    assert stopped["at_full"]["snd_wnd"] == 0
    assert stopped["at_full"]["SIOCOUTQNSD_unsent"] == stopped["at_full"]["SIOCOUTQ"]
    assert stopped["blocked_send_outcome"] == "still blocked"
    assert stopped["after_wait"]["tcp_state"] == "ESTABLISHED"


@pytest.mark.netns
@pytest.mark.slow
def test_dead_peer_in_its_own_namespace_times_out_and_a_stopped_one_still_acks() -> None:
    require_root("network namespaces (ip netns add)")
    ip = require_tool("ip", "iproute2")
    r = ran("dead-peer")
    ev = r.evidence
    if ev["netns"] != "used":  # root, yet no namespaces: e.g. a container without CAP_SYS_ADMIN
        missing(f"network namespaces unavailable here: {ev['netns']}")
    assert r.holds, r.explanation
    dead = ev["dead_peer_link_down"]
    assert dead["bytes_accepted_after_link_down"] > 0
    # Nothing acknowledged after the link went down: everything accepted is still queued.
    assert dead["at_full"]["SIOCOUTQ"] == dead["bytes_accepted_after_link_down"]
    assert dead["blocked_send_outcome"] == "ETIMEDOUT"
    assert 0.9 <= dead["failed_after_s_since_first_unacked_write"] <= 2.5
    _stopped_contrast_holds(ev)
    # The namespace and the veth pair are gone.
    listed = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, check=True)
    assert f"bufdemo-lab-{os.getpid()}" not in listed.stdout
    links = subprocess.run([ip, "link", "show"], capture_output=True, text=True, check=True)
    assert f"bdl{os.getpid()}h" not in links.stdout


@pytest.mark.slow
def test_dead_peer_without_namespaces_says_so_and_runs_the_sigstop_contrast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deadpeer, "_netns_refusal", lambda: "needs root (ip netns add)")
    r = ran("dead-peer")
    assert r.evidence["netns"] == "not permitted: needs root (ip netns add)"
    assert r.evidence["dead_peer_link_down"] is None
    assert any("network namespaces not permitted" in line for line in r.explanation)
    _stopped_contrast_holds(r.evidence)
    assert r.holds


def test_reconnect_starts_empty_and_leaves_the_old_queue_alone() -> None:
    r = ran("reconnect")
    ev = r.evidence
    assert r.holds
    assert ev["old_socket_queue_SIOCOUTQ"] > 0
    assert ev["new_socket_queue_at_start_SIOCOUTQ"] == 0
    assert ev["new_connection_receiver_SIOCINQ_at_start"] == 0
    assert ev["new_connection_received"] == "first message on the new connection"
    assert ev["new_connection_extra_bytes"] == 0
    assert ev["old_socket_queue_after_reconnect"] == ev["old_socket_queue_SIOCOUTQ"]
    assert ev["old_socket_state_after_reconnect"] == "ESTABLISHED"
    assert ev["old_socket_fd_after_application_close"] == -1


def test_nagle_merges_writes_and_no_mode_keeps_message_boundaries() -> None:
    r = ran("nagle")
    assert r.holds
    for mode in ("nagle_on", "tcp_nodelay"):
        run = r.evidence[mode]
        assert run["bytes_received"] == 2000 * 10
        assert run["messages_recovered_by_newline_framing"] == 2000
        assert run["recv_calls"] != 2000 or set(run["first_recv_sizes"]) != {10}
        assert 0 < run["data_segments_sent"] <= 2000
    assert r.evidence["nagle_on"]["data_segments_sent"] < 2000


def test_writable_follows_the_two_thirds_rule_at_both_edges() -> None:
    r = ran("writable")
    ev = r.evidence
    assert r.holds
    sndbuf, threshold = ev["sndbuf"], ev["two_thirds_of_sndbuf"]
    assert sndbuf == 32768  # 16384 requested, doubled
    assert ev["observations_breaking_the_2/3_rule"] == 0
    assert ev["last_writable"]["wmem_queued"] <= threshold
    assert ev["select_stopped_writable"]["wmem_queued"] > threshold
    # select() said no while send() could still queue more: the buffer was not full.
    assert ev["send_still_accepted_after_select_stopped"] > 0
    assert ev["buffer_full_EAGAIN"]["wmem_queued"] > ev["select_stopped_writable"]["wmem_queued"]
    assert ev["last_unwritable_while_draining"]["wmem_queued"] > threshold
    assert ev["writable_again"]["wmem_queued"] <= threshold
    assert ev["lecture_simplification_writable_until_full"] is False


def test_buffer_sizes_double_clamp_and_autotune_and_are_not_8k() -> None:
    r = ran("buffer-sizes")
    ev = r.evidence
    assert r.holds
    assert ev["setsockopt_8192"]["sndbuf"] == 16384
    assert ev["setsockopt_8192"]["rcvbuf"] == 16384
    assert ev["setsockopt_huge"]["sndbuf"] == 2 * ev["sysctls"]["wmem_max"]
    assert ev["setsockopt_huge"]["rcvbuf"] == 2 * ev["sysctls"]["rmem_max"]
    assert ev["fresh_unconnected"]["sndbuf"] == ev["sysctls"]["tcp_wmem"][1]
    assert ev["fresh_unconnected"]["rcvbuf"] == ev["sysctls"]["tcp_rmem"][1]
    grown = ev["unset_after_16MiB"]
    assert grown["receiver_rcvbuf_after"] > grown["receiver_rcvbuf_before"]
    assert ev["checks"]["lecture_8k_default_matches"] is False


@pytest.mark.slow
def test_small_window_stalls_on_the_probe_timer_only_when_set_after_the_handshake() -> None:
    r = ran("small-window")
    ev = r.evidence
    assert r.holds, r.explanation
    trapped = ev["rcvbuf_8192_set_after_handshake"]
    assert trapped["bytes"] == ev["transfer_bytes"]
    assert trapped["stalls"] >= 2
    assert trapped["stall_s_min"] >= 0.18  # the persist timer: >= TCP_RTO_MIN, 200 ms
    assert trapped["sender_mss"] > trapped["receiver_rcvbuf"] // 2
    assert ev["both_sides_idle_during_stalls"] is True
    assert ev["default_buffers"]["stalls"] == 0
    assert ev["rcvbuf_8192_set_before_listen"]["sender_mss"] < trapped["sender_mss"]


# -- the command line -----------------------------------------------------------------


def test_lab_list_names_every_experiment_and_its_claim() -> None:
    proc = run_cli("list")
    assert proc.returncode == 0
    # The table's rows: a name in the first column starts one, the claim's words follow
    # down the second column, wrapped.
    claims: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.split("│")[1:-1]]
            if cells[0]:
                claims[cells[0]] = []
            claims[list(claims)[-1]].append(cells[1])
    assert list(claims) == NAMES
    for name, words in claims.items():
        assert " ".join(words).split() == lab.EXPERIMENTS[name].claim.split(), name


def test_lab_run_json_is_the_same_result_as_data() -> None:
    proc = run_cli("run", "buffer-sizes", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"name", "claim", "holds", "verdict", "evidence", "explanation", "seconds"}
    assert data["name"] == "buffer-sizes"
    assert data["holds"] is True
    assert data["verdict"] == "holds"
    assert data["evidence"]["setsockopt_8192"]["sndbuf"] == 16384


def test_lab_run_prints_the_verdict_and_the_numbers() -> None:
    proc = run_cli("run", "receiver-close")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("receiver-close: HOLDS")
    assert "  evidence:" in lines
    assert any("recv: ECONNRESET" in line for line in lines)


def test_unknown_experiment_is_a_usage_error() -> None:
    proc = run_cli("run", "quantum-tunnel")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "NAME: unknown experiment 'quantum-tunnel'; choose one of: sender-close" in proc.stderr
