"""Remove the shared segments (and manifests) that dead runs left behind.

The daemon calls ``sweep(state_dir)`` at start, before it creates its own run's segments;
it is also safe to call at any time, from any process.

Rule (``run_is_dead``, pure): a run is dead when its manifest says ``closed``, when its pid
does not exist (or is a zombie), or when the pid exists but started at another time than
the manifest recorded (the pid was recycled).  Without a manifest only the pid decides, so
a live run is never touched — the price is that a dead run whose pid was recycled *and*
whose manifest is lost keeps its segments until that pid goes too.

Names that do not parse as ``agora.<pid>-<token>.<purpose>.<n>`` are not ours and are
never touched, even if they start with "agora".
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import psutil

from .errors import InvalidArgument
from .segment import PREFIX, SHM_DIR, Manifest, RunId, parse_segment_name, unlink_segment

__all__ = ["sweep", "run_is_dead"]

_START_TOLERANCE = 1.0  # seconds: psutil's create_time is derived from boot time + jiffies


def run_is_dead(manifests: list[dict[str, Any]], pid_started: float | None) -> bool:
    """Pure: does this run's owner no longer exist?  ``pid_started`` None = no such pid.

    ``manifests`` are the readable manifests of the run (one per owner tag, maybe none).
    """
    if pid_started is None:
        return True
    if manifests and all(m.get("state") == "closed" for m in manifests):
        return True
    recorded = [m.get("started") for m in manifests]
    return any(isinstance(r, (int, float)) and abs(r - pid_started) > _START_TOLERANCE for r in recorded)


def _pid_started(pid: int) -> float | None:
    """Start time of a live pid; None if it is gone or a zombie (dead, not yet reaped)."""
    if pid == os.getpid():
        return psutil.Process().create_time()
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except psutil.NoSuchProcess:
        return None


def _manifests(state_dir: str | None) -> dict[str, list[tuple[str, dict[str, Any] | None]]]:
    """run id -> [(path, content)] for every manifest file in state_dir."""
    if state_dir is None or not os.path.isdir(state_dir):
        return {}
    out: dict[str, list[tuple[str, dict[str, Any] | None]]] = defaultdict(list)
    for entry in os.listdir(state_dir):
        run_text = entry[len("shm."):].split(".")[0]
        if entry.startswith("shm.") and entry.endswith(".json") and _is_run_id(run_text):
            path = os.path.join(state_dir, entry)
            out[run_text].append((path, Manifest.read(path)))
    return out


def _is_run_id(text: str) -> bool:
    try:
        RunId.parse(text)
        return True
    except InvalidArgument:
        return False


def _segments_by_run() -> dict[str, list[str]]:
    runs: dict[str, list[str]] = defaultdict(list)
    for entry in os.listdir(SHM_DIR):
        parsed = parse_segment_name(entry) if entry.startswith(PREFIX + ".") else None
        if parsed is not None:
            runs[str(parsed[0])].append(entry)
    return runs


def sweep(state_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Unlink every agora segment of a dead run; return the names removed (sorted).

    With ``state_dir``, manifests there refine the verdict (closed runs, recycled pids) and
    the manifests of dead runs are deleted too.
    """
    manifests = _manifests(os.fspath(state_dir) if state_dir is not None else None)
    segments = _segments_by_run()
    removed: list[str] = []
    for run_text in sorted(set(segments) | set(manifests)):
        files = manifests.get(run_text, [])
        readable = [m for _, m in files if m is not None]
        if not run_is_dead(readable, _pid_started(RunId.parse(run_text).pid)):
            continue
        removed += [n for n in segments.get(run_text, []) if unlink_segment(n)]
        for path, _ in files:
            _remove_manifest(path)
    return sorted(removed)


def _remove_manifest(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # removed concurrently: the goal (no manifest) holds
