"""A real link in network namespaces: names, commands, clean-up on every exit path, verdict.

The pure parts (rates, queues, names, the ip/tc command lines, tc's JSON, the stale
sweep's rule, the limit verdict) run anywhere. The runs need root and iproute2 and skip
with the reason otherwise; each checks that no namespace of its own remains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from bufdemo import analysis, leftovers
from bufdemo.analysis.limits import limit_shares, verdict
from bufdemo.cli import main
from bufdemo.errors import BufdemoError, ConfigError
from bufdemo.experiment import netns
from bufdemo.experiment.config import RunConfig
from bufdemo.experiment.run import run_experiment
from bufdemo.runformat import ADDED_COLUMNS, LINK_SAMPLES, TX_TIMESTAMPS
from tests.conftest import require_root, require_tool
from tests.procs import Bufdemo, wait_for_checkpoint

# -- pure ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bps"),
    [("20mbit", 20_000_000), ("500kbit", 500_000), ("1gbit", 10**9), ("1mbps", 8_000_000)],
)
def test_rates_in_tc_units(text: str, bps: int) -> None:
    assert netns.parse_rate(text) == bps


def test_queue_in_bytes_or_time() -> None:
    assert netns.parse_queue("64kb") == ("bytes", 65536)
    assert netns.parse_queue("50ms") == ("seconds", 0.05)
    link = netns.LinkSettings(rate_bps=20_000_000, queue="50ms")
    assert link.limit_bytes() == 125_000  # 50 ms of 2.5 MB/s
    assert netns.LinkSettings(rate_bps=8_000, queue="1b").limit_bytes() == 1514  # one packet


def test_names_fit_ifnamsiz_and_differ_per_run() -> None:
    a, b = netns.plan_link(4_194_304, 1), netns.plan_link(4_194_304, 2)
    for plan in (a, b):
        assert len(plan.sender_if) <= 15
        assert len(plan.receiver_if) <= 15
        assert leftovers.owner_of(plan.sender_ns) == 4_194_304
        assert plan.sender_addr.startswith("10.")
        assert plan.sender_addr != plan.receiver_addr
    assert {a.sender_ns, a.receiver_ns}.isdisjoint({b.sender_ns, b.receiver_ns})
    assert a.sender_if != b.sender_if
    assert a.sender_addr != b.sender_addr


def test_commands_put_the_tbf_on_the_senders_egress_and_netem_only_when_asked() -> None:
    plan = netns.plan_link(1234, 1)
    cmds = netns.setup_commands(plan, netns.LinkSettings(rate_bps=20_000_000, mtu=9000))
    tbf = [c for c in cmds if "tbf" in c]
    assert len(tbf) == 1
    assert plan.sender_ns in tbf[0]
    assert plan.sender_if in tbf[0]
    assert "20000000bit" in tbf[0]
    assert any("mtu" in c and "9000" in c for c in cmds)
    assert not any("netem" in c for c in cmds)
    with_delay = netns.setup_commands(plan, netns.LinkSettings(delay="10ms"))
    assert any(c[-3:] == ["netem", "delay", "10000us"] for c in with_delay)


def test_qdisc_stats_from_tc_json() -> None:
    text = json.dumps(
        [
            {"kind": "noqueue", "handle": "0:"},
            {"kind": "tbf", "bytes": 1000, "packets": 3, "drops": 1, "overlimits": 7,
             "backlog": 3028, "qlen": 2},
        ]
    )  # fmt: skip
    stats = netns.parse_qdisc_stats(text)
    assert stats is not None
    assert (stats.backlog_bytes, stats.backlog_packets, stats.drops) == (3028, 2, 1)
    assert netns.parse_qdisc_stats("not json") is None
    assert netns.parse_qdisc_stats("[]") is None


def test_only_resources_of_dead_owners_are_stale() -> None:
    found = [leftovers.Leftover("netns", "bfd-1-1-s", 1), leftovers.Leftover("netns", "x", 2)]
    assert leftovers.stale(found, alive=lambda pid: pid == 1) == [found[1]]
    assert leftovers.owner_of("bfd-77-3-r") == 77
    assert leftovers.owner_of("bfd77s3") == 77
    assert leftovers.owner_of("other-77-3") is None


def test_the_verdict_names_the_largest_share_of_busy_time() -> None:
    assert verdict(limit_shares(10e6, 9e6, 0), has_link_rate=True) == "reader"
    assert verdict(limit_shares(10e6, 0.4e6, 0), has_link_rate=True) == "link"
    assert verdict(limit_shares(10e6, 0.4e6, 0), has_link_rate=False) == "network"
    assert verdict(limit_shares(10e6, 1e6, 8e6), has_link_rate=False) == "send buffer"
    assert verdict(limit_shares(10e6, 4e6, 3e6), has_link_rate=False) == "mixed"
    assert verdict(limit_shares(0, 0, 0), has_link_rate=False) is None


def test_without_root_netns_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["run", "--netns", "--out", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("bufdemo: usage error: --netns: needs root"), line
    assert not list(tmp_path.iterdir())  # refused before any run directory


# -- real links (root) -----------------------------------------------------------------


def _root() -> None:
    require_root("network namespaces")
    require_tool("ip", "iproute2")
    require_tool("tc", "iproute2")


def _namespaces_of(pid: int) -> list[str]:
    try:
        names = os.listdir(netns.NETNS_DIR)
    except OSError:
        return []
    return [n for n in names if leftovers.owner_of(n) == pid]


def _wait_for_namespaces(pid: int, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _namespaces_of(pid)
        if len(found) == 2:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no namespaces of {pid} appeared")


def test_netem_options_fail_at_once_naming_netem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _root()
    try:
        netns.check_netem()
    except ConfigError:
        pass
    else:
        pytest.skip("this kernel has netem: --link-delay works here")
    assert main(["run", "--netns", "--link-delay", "10ms", "--out", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("bufdemo: usage error: --link-delay: needs the netem qdisc"), line
    assert not list(tmp_path.iterdir())
    assert not _namespaces_of(os.getpid())


def test_a_link_run_is_limited_by_the_link_and_leaves_nothing(tmp_path: Path) -> None:
    _root()
    cfg = RunConfig(
        messages=3000,
        recv_delay=0.0,
        out=tmp_path,
        plot=False,
        netns=True,
        link_rate="20mbit",
        timestamps=True,
    )
    result = run_experiment(cfg)
    assert result.complete, result.reason
    assert not _namespaces_of(os.getpid())
    run = analysis.load_run(result.run_dir)
    assert run.meta["link"]["rate_bps"] == 20_000_000
    assert "this run's connection alone" in run.meta["netstat"]["scope"]
    header = (result.run_dir / LINK_SAMPLES.file).read_text().splitlines()[0]
    assert tuple(header.split(",")) == LINK_SAMPLES.columns
    assert len(run.link_samples) >= 2
    assert run.link_samples["backlog_bytes"].max() > 0
    assert (run.sender_samples["snd_mss"].dropna() < 65_000).all()  # a 1500-byte link
    summary = analysis.summarize(run)
    assert summary["limited_by"] == "link"
    assert run.consumed["intact"].all()
    assert len(run.consumed) == 3000
    # Off loopback SCHED is asked for, and the tbf shows between it and SND: some skb
    # waited in the qdisc at least one full packet's time at 20 Mbit/s (0.6 ms).
    stamping = run.meta["sender"]["timestamping"]
    assert stamping["sched_reason"] is None
    assert stamping["last_acked_offset"] == 3000 * 1024 - 1
    stamps = pd.read_csv(result.run_dir / TX_TIMESTAMPS.file)
    first = stamps.groupby(["kind", "offset"])["t_ns"].min()
    queued = (first.loc[0] - first.loc[1]).dropna()
    assert len(queued) > 0
    assert queued.max() >= 1500 * 8 / 20e6 * 1e9


def test_a_failed_link_set_up_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _root()
    real = netns.setup_commands

    def failing(plan: netns.LinkPlan, link: netns.LinkSettings) -> list[list[str]]:
        # A real command that really fails, after both namespaces exist.
        return [*real(plan, link), ["ip", "-n", plan.sender_ns, "link", "set", "nosuch0", "up"]]

    monkeypatch.setattr(netns, "setup_commands", failing)
    cfg = RunConfig(messages=10, out=tmp_path, netns=True)
    with pytest.raises(BufdemoError, match="link set-up failed"):
        run_experiment(cfg, run_dir=tmp_path)
    assert not _namespaces_of(os.getpid())


def test_ctrl_c_and_a_killed_side_leave_nothing(tmp_path: Path) -> None:
    _root()
    slow = ["run", "--netns", "--recv-delay", "0.01", "-n", "100000", "--no-plot"]
    for how in ("ctrl-c", "receiver killed"):
        bd = Bufdemo([*slow, "--out", str(tmp_path / how.split()[0])], cwd=tmp_path)
        try:
            names = _wait_for_namespaces(bd.pid)
            # Both sides started and connected: the receiver has checkpointed a consumed row.
            wait_for_checkpoint(tmp_path / how.split()[0])
            if how == "ctrl-c":
                os.killpg(bd.pid, signal.SIGINT)
            else:
                rns = next(n for n in names if n.endswith("-r"))
                pids = subprocess.run(
                    ["ip", "netns", "pids", rns], capture_output=True, text=True, check=True
                ).stdout.split()
                assert pids, "no process in the receiver's namespace"
                for pid in pids:
                    os.kill(int(pid), signal.SIGKILL)
            code, _, err = bd.finish()
            assert code == (130 if how == "ctrl-c" else 1), err
            assert not _namespaces_of(bd.pid), how
        finally:
            bd.cleanup()


def test_a_sigkilled_runs_namespaces_are_removed_by_cleanup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _root()
    bd = Bufdemo(["run", "--netns", "-n", "100000", "--no-plot", "--out", str(tmp_path)], tmp_path)
    try:
        names = _wait_for_namespaces(bd.pid)
        os.kill(bd.pid, signal.SIGKILL)  # the orchestrator only: its children stop by themselves
        bd.proc.wait(30)
        assert sorted(_namespaces_of(bd.pid)) == sorted(names)  # SIGKILL cannot clean up
    finally:
        bd.cleanup()
    assert main(["cleanup"]) == 0
    out = capsys.readouterr().out
    for name in names:
        assert f"removed netns {name} (owner pid {bd.pid} is gone)" in out
    assert not _namespaces_of(bd.pid)


def test_a_run_written_before_the_link_columns_still_loads(tmp_path: Path) -> None:
    from tests.synthetic import Model, write_run

    write_run(tmp_path, Model(messages=200))
    path = tmp_path / "sender_samples.csv"
    frame = pd.read_csv(path)
    added = [c for c in sorted(ADDED_COLUMNS) if c in frame.columns]  # the samples' own
    assert "busy_time_us" in added
    assert "wmem_queued" in added
    frame.drop(columns=added).to_csv(path, index=False)
    run = analysis.load_run(tmp_path)
    assert run.sender_samples[added].isna().all().all()
    assert run.link_samples.empty
    summary = analysis.summarize(run)
    assert summary["limited_by"] is None  # unknown without busy_time, not a guess
