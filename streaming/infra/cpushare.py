"""A slower machine on demand: a cgroup v1 ``cpu`` group with a CFS quota.

``cpu_share(0.5)`` makes a group such as ``/sys/fs/cgroup/cpu/streaming-<pid>-<random>``, puts this
process in it, and removes it again when the block ends. Every process started inside the block
(broker, Redis, worker, generator) inherits the group, so together they get ``share`` of the machine.

Decisions:

* The share is of the whole machine: ``quota = share * CPUs * period``, CPUs being the ones this
  process may run on (``os.sched_getaffinity``). ``0.5`` on a 2-CPU machine gives everything in the
  group one CPU in all, ``0.25 / N`` on N CPUs a quarter of one CPU.
* The period is 10 ms, so a throttled group stalls for at most about 10 ms minus its quota at a time;
  a longer period gives the same average but longer stalls (the kernel's default of 100 ms would
  stall a half-CPU group for 50 ms at a stretch, which reads as latency spikes, not a slower CPU).
  Only a share so small that the quota would fall under the kernel's 1 ms minimum gets a longer
  period (the same ratio); under 1 ms per second is refused.
* The group is made under this process's own ``cpu`` group (the root one on a plain machine), so a
  limit already in force still applies; on exit its processes go back to that parent group.
* Only this process is moved (and what it starts later). :meth:`CpuShare.add` moves exactly the pid
  it is given; processes started before the block, or not by us (a system Redis), are never moved.
* Groups left by a crashed run (``streaming-<pid>-*`` whose pid is gone and that hold no process) are
  removed when the next group is made.
* Where the ``cpuacct`` controller is mounted on its own (as here), a twin group there counts the
  group's CPU time, including processes that have exited; otherwise :meth:`CpuShare.cpu_seconds`
  sums the live processes.
* Needs root and cgroup v1; cgroup v2 (``cpu.max``) is not supported by this helper.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from streaming.errors import UserError
from streaming.infra.processes import pid_alive

__all__ = ["CpuShare", "cpu_share", "check_share", "CGROUP_CPU_ROOT"]

CGROUP_CPU_ROOT = Path("/sys/fs/cgroup/cpu")
_CPUACCT_ROOT = Path("/sys/fs/cgroup/cpuacct")
_PREFIX = "streaming-"
_PERIOD_US = 10_000
_MIN_QUOTA_US = 1_000  # the kernel refuses less
_MAX_PERIOD_US = 1_000_000  # ... and a longer period


def check_share(share: float) -> float:
    """Validate a ``--cpu-share`` value: ``0 < share <= 1``, else a one-line :class:`UserError`.

    >>> check_share(0.5)
    0.5
    >>> check_share(1.5)
    Traceback (most recent call last):
    ...
    streaming.errors.UserError: --cpu-share must be a fraction of the machine in (0, 1], not 1.5
    """
    if not (0.0 < share <= 1.0):  # also false for nan
        raise UserError(f"--cpu-share must be a fraction of the machine in (0, 1], not {share}")
    return float(share)


def _limits(share: float, cpus: int) -> tuple[int, int]:
    """``(period_us, quota_us)`` giving ``share`` of ``cpus`` CPUs.

    >>> _limits(0.5, 2)
    (10000, 10000)
    >>> _limits(0.125, 2)
    (10000, 2500)
    >>> _limits(0.01, 2)  # the quota would be 0.2 ms: a longer period keeps the ratio
    (50000, 1000)
    """
    period = _PERIOD_US
    quota = round(share * cpus * period)
    if quota < _MIN_QUOTA_US:
        period = math.ceil(_MIN_QUOTA_US / (share * cpus))
        quota = _MIN_QUOTA_US
        if period > _MAX_PERIOD_US:
            raise UserError(f"--cpu-share {share} is below the kernel's minimum of 1 ms of CPU per second")
    return period, quota


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _own_group(root: Path, controller: str) -> Path:
    """The directory of this process's group in the hierarchy mounted at ``root`` (``root`` if unknown)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if controller in controllers.split(","):
                here = root / rel.lstrip("/")
                return here if here.is_dir() else root
    return root


def _read_pids(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _move(pid: int, group: Path) -> None:
    (group / "cgroup.procs").write_text(f"{pid}\n")


def _rmdir(group: Path) -> None:
    """Move every process in ``group`` to its parent and remove it; a no-op once it is gone."""
    for _ in range(100):  # processes may fork while we move them
        if not group.exists():
            return
        for pid in _read_pids(group):
            with contextlib.suppress(ProcessLookupError):
                _move(pid, group.parent)
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise UserError(f"cannot remove the cgroup {group}: {e.strerror}") from e
        time.sleep(0.01)
    raise UserError(f"cannot remove the cgroup {group}: its processes keep coming back")


def _clean_stale(parent: Path) -> None:
    """Remove ``streaming-<pid>-*`` groups whose creator is gone and that hold no process."""
    for group in parent.glob(f"{_PREFIX}*"):
        try:
            creator = int(group.name[len(_PREFIX) :].split("-")[0])
        except ValueError:
            continue
        if pid_alive(creator) or _read_pids(group):
            continue
        with contextlib.suppress(OSError):
            group.rmdir()


def _mkdir(group: Path) -> None:
    try:
        group.mkdir()
    except PermissionError as e:
        raise UserError(f"--cpu-share needs root: cannot create the cgroup {group} ({e.strerror})") from e
    except OSError as e:
        raise UserError(f"--cpu-share cannot create the cgroup {group}: {e.strerror}") from e


class CpuShare:
    """One cgroup v1 ``cpu`` group: ``share`` of the machine's CPU time.

    ``quota_us = share * online CPUs * period_us``, ``period_us`` = 10 ms (longer only for tiny
    shares). Made on construction, removed by :meth:`close` (or ``with``).
    """

    path: Path
    share: float
    period_us: int
    quota_us: int

    def __init__(self, share: float, *, parent: Path | None = None) -> None:
        self.share = check_share(share)
        self.cpus = _cpus()
        self.period_us, self.quota_us = _limits(self.share, self.cpus)
        root = CGROUP_CPU_ROOT if parent is None else parent
        if not (root / "cpu.cfs_quota_us").exists():
            raise UserError(
                f"--cpu-share needs the cgroup v1 cpu controller mounted at {root} with CFS bandwidth "
                "control (cgroup v2 is not supported by this helper)"
            )
        if parent is None:
            root = _own_group(CGROUP_CPU_ROOT, "cpu")
        if os.geteuid() != 0:
            raise UserError(f"--cpu-share needs root to create a cgroup under {root}")
        _clean_stale(root)
        name = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.path = root / name
        _mkdir(self.path)
        self._acct: Path | None = None
        self._closed = False
        try:
            (self.path / "cpu.cfs_period_us").write_text(f"{self.period_us}\n")
            (self.path / "cpu.cfs_quota_us").write_text(f"{self.quota_us}\n")
            if parent is None and not (self.path / "cpuacct.usage").exists() and (_CPUACCT_ROOT / "cpuacct.usage").exists():
                acct_parent = _own_group(_CPUACCT_ROOT, "cpuacct")
                _clean_stale(acct_parent)
                with contextlib.suppress(OSError):  # only for counting: do without it
                    (acct_parent / name).mkdir()
                    self._acct = acct_parent / name
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"CpuShare({self.share}, path={str(self.path)!r}, quota_us={self.quota_us}, period_us={self.period_us})"

    def describe(self) -> str:
        """One line for the user."""
        return (
            f"cpu share {self.share:g} of {self.cpus} CPUs ({self.share * self.cpus:.3g} CPU in all): "
            f"cgroup {self.path}, {self.quota_us} us every {self.period_us} us"
        )

    def add(self, pid: int) -> None:
        """Move a running process (and so its future children) into the group."""
        try:
            _move(pid, self.path)
        except PermissionError as e:
            raise UserError(f"--cpu-share needs root: cannot move pid {pid} into {self.path} ({e.strerror})") from e
        if self._acct is not None:
            with contextlib.suppress(OSError):
                _move(pid, self._acct)

    def pids(self) -> list[int]:
        return _read_pids(self.path)

    def cpu_seconds(self) -> float:
        """CPU time used in the group: its ``cpuacct.usage`` where there is one, else the live processes' sum."""
        for usage in (self.path / "cpuacct.usage", self._acct / "cpuacct.usage" if self._acct else None):
            if usage is not None:
                with contextlib.suppress(OSError, ValueError):
                    return int(usage.read_text()) / 1e9
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def throttled(self) -> dict[str, int]:
        """``cpu.stat``: ``nr_periods``, ``nr_throttled``, ``throttled_time`` (ns) and whatever else the kernel adds."""
        stat: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    stat[key] = int(value)
        return stat

    def close(self) -> None:
        """Move every process back to the parent group and remove the group; idempotent."""
        if self._closed:
            return
        try:
            if self._acct is not None:
                with contextlib.suppress(UserError):
                    _rmdir(self._acct)
            _rmdir(self.path)
        finally:
            self._closed = not self.path.exists()

    def __enter__(self) -> CpuShare:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@contextlib.contextmanager
def cpu_share(
    share: float | None, *, include_self: bool = True, say: Callable[[str], None] = lambda _m: None
) -> Iterator[CpuShare | None]:
    """Run the block on ``share`` of the machine; with ``share`` None, change nothing and yield None.

    With ``include_self`` this process joins the group, so every child started inside the block
    inherits it. ``say`` gets one line describing the group. The group is removed on exit, also on
    exceptions and KeyboardInterrupt; a failure to remove it then is said, not raised over them.

    >>> with cpu_share(None) as group:
    ...     print(group)
    None
    """
    if share is None:
        yield None
        return
    group = CpuShare(share)
    try:
        if include_self:
            group.add(os.getpid())
        say(group.describe())
        yield group
    except BaseException:
        try:
            group.close()
        except UserError as e:
            say(str(e))
        raise
    group.close()
