"""``--cpu-share``: a real cgroup v1 cpu group slows what runs in it, and is gone afterwards."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streaming.errors import UserError
from streaming.infra.cpushare import CGROUP_CPU_ROOT, CpuShare, check_share, cpu_share

CPUS = len(os.sched_getaffinity(0))
QUARTER_CORE = 0.25 / CPUS

# waits for a line on stdin, then burns `seconds` of its own CPU time and prints cpu and wall
BUSY = textwrap.dedent(
    """
    import json, sys, time
    seconds = float(sys.argv[1])
    sys.stdin.readline()
    c0, w0 = time.process_time(), time.monotonic()
    x = 0
    while time.process_time() - c0 < seconds:
        for i in range(10_000):
            x += i
    print(json.dumps({"cpu": time.process_time() - c0, "wall": time.monotonic() - w0}))
    """
)


@pytest.fixture(autouse=True)
def cgroup_fs() -> None:
    """This machine kind has a writable cgroup v1 cpu hierarchy: its absence is a failure, not a skip."""
    if not (CGROUP_CPU_ROOT / "cpu.cfs_quota_us").exists():
        pytest.fail(f"the cgroup v1 cpu controller is not mounted at {CGROUP_CPU_ROOT}")
    if os.geteuid() != 0 or not os.access(CGROUP_CPU_ROOT, os.W_OK):
        pytest.fail(f"{CGROUP_CPU_ROOT} is not writable here (uid {os.geteuid()}): these tests need root")


def busy(seconds: float, group: CpuShare | None = None) -> dict[str, float]:
    child = subprocess.Popen([sys.executable, "-c", BUSY, str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if group is not None:
        group.add(child.pid)
    out, _ = child.communicate("go\n", timeout=30)
    assert child.returncode == 0
    result: dict[str, float] = json.loads(out)
    return result


def own_cpu_group() -> str:
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    return next(line.split(":", 2)[2] for line in lines if "cpu" in line.split(":")[1].split(","))


def test_a_quarter_core_makes_a_busy_loop_four_times_slower() -> None:
    free = busy(0.5)
    with cpu_share(QUARTER_CORE, include_self=False) as group:
        assert group is not None
        assert (group.period_us, group.quota_us) == (10_000, 2_500)
        limited = busy(0.5, group)
        stat, used = group.throttled(), group.cpu_seconds()
    figures = f"free: cpu {free['cpu']:.3f} s wall {free['wall']:.3f} s; limited: cpu {limited['cpu']:.3f} s wall {limited['wall']:.3f} s; {stat}"
    assert limited["wall"] >= 2.5 * limited["cpu"], figures
    assert free["wall"] < 2.0 * free["cpu"], figures  # ≈ 1 on an idle machine, < 2 however busy the others keep it
    assert stat["nr_throttled"] > 0 and stat["throttled_time"] > 0, figures
    assert 0.9 * limited["cpu"] <= used <= limited["cpu"] + 0.5, f"cpu_seconds {used:.3f}; {figures}"
    print(figures)


def test_children_started_inside_the_block_inherit_it() -> None:
    script = textwrap.dedent(
        f"""
        import json, subprocess, sys
        from streaming.infra.cpushare import cpu_share
        with cpu_share({QUARTER_CORE!r}, say=lambda m: print(m, file=sys.stderr)) as group:
            out = subprocess.run([sys.executable, "-c", {BUSY!r}, "0.2"], input="go\\n", capture_output=True, text=True, check=True).stdout
        print(json.dumps({{"path": str(group.path), **json.loads(out)}}))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert run.stderr.startswith(f"cpu share {QUARTER_CORE:g} of {CPUS} CPUs"), run.stderr
    assert result["wall"] >= 2.5 * result["cpu"], result
    assert not Path(result["path"]).exists()


def test_this_process_joins_and_leaves() -> None:
    before = own_cpu_group()
    with cpu_share(1.0) as group:
        assert group is not None
        assert os.getpid() in group.pids()
        assert own_cpu_group().endswith("/" + group.path.name)
        assert group.quota_us == CPUS * group.period_us
    assert own_cpu_group() == before
    assert not group.path.exists()
    group.close()  # idempotent


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_group_is_removed_on_an_exception(error: type[BaseException]) -> None:
    with pytest.raises(error), cpu_share(0.5) as group:
        assert group is not None and group.path.is_dir()
        raise error("boom")
    assert group is not None
    assert not group.path.exists()
    assert os.getpid() not in group.pids()


def test_a_stale_group_from_a_crashed_run_is_removed() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    stale = CGROUP_CPU_ROOT / f"streaming-{int(dead.stdout)}-dead00"
    stale.mkdir()
    try:
        with cpu_share(1.0, include_self=False):
            assert not stale.exists()
    finally:
        if stale.exists():
            stale.rmdir()


@pytest.mark.parametrize("share", [0, -1, 1.5, math.nan])
def test_check_share_refuses(share: float) -> None:
    with pytest.raises(UserError, match=r"--cpu-share must be a fraction of the machine in \(0, 1\]"):
        check_share(share)


def test_no_share_changes_nothing() -> None:
    with cpu_share(None) as group:
        assert group is None


def test_without_the_controller_the_error_says_so(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cgroup v1 cpu controller.*cgroup v2 is not supported"):
        CpuShare(0.5, parent=tmp_path)
