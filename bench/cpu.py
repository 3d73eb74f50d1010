"""CPU seconds spent by processes and their descendants (from /proc), to say where a
saturated machine's cores go: CPU ms per request of each process during a load run."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system seconds) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _processes() -> tuple[dict[int, int], dict[int, float]]:
    """Every process's parent and CPU seconds."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (s := _stat(int(entry.name))) is not None:
            parents[int(entry.name)], times[int(entry.name)] = s
    return parents, times


def _tree(pid: int, parents: dict[int, int]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, parent in parents.items() if parent == p]
    return out


def cpu_seconds(pid: int, descendants: bool = True) -> float:
    """CPU seconds of ``pid`` (every thread) and, unless told not to, its live descendants."""
    if not descendants:
        own = _stat(pid)
        return own[1] if own else 0.0
    parents, times = _processes()
    return sum(times.get(p, 0.0) for p in _tree(pid, parents))


def process_tree(pid: int) -> frozenset[int]:
    """``pid`` and its live descendants (a restarted child shows as a new pid)."""
    return frozenset(_tree(pid, _processes()[0]))


def snapshot(pids: dict[str, int], alone: frozenset[str] = frozenset()) -> dict[str, float]:
    """CPU seconds of each named process with its descendants; those named in ``alone``
    without them (the benchmark process, whose children are the servers it measures)."""
    return {name: cpu_seconds(pid, name not in alone) for name, pid in pids.items()}


def per_request_ms(before: dict[str, float], after: dict[str, float],
                   requests: int) -> dict[str, float]:
    """CPU ms per request of each named process between two snapshots."""
    return {name: 1000 * (after[name] - before[name]) / max(1, requests) for name in after}
