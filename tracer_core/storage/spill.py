"""The spill file: traces that could not reach the store, kept as JSONL beside it until replayed.

Any process (and any thread) may append; one process at a time takes the whole file for replay by
renaming it under an exclusive `flock`, so a trace is replayed once. Replay skips traces already
in the store (same task, source, input and creation time), so a replay cut short by a crash
between its commit and the removal of the taken file does not write a trace twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields

from tracer_core.errors import InvalidTraceError
from tracer_core.storage.trace import Trace, validate

log = logging.getLogger("tracer.store")

_TRACE_FIELDS = {f.name for f in fields(Trace)}
TAKEN_MARK = ".replaying."


class SpillFile:
    """Append-only JSONL of traces at `path`, safe between threads and processes."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, traces: Sequence[Trace]) -> None:
        """Append `traces` (raises OSError if the file cannot be written)."""
        lines = "".join(json.dumps(_spill_record(t), ensure_ascii=False) + "\n" for t in traces)
        with self._lock:
            while True:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX)
                    if _same_file(fh, self.path):  # not taken for replay while we waited
                        fh.write(lines)
                        fh.flush()
                        return

    def waiting(self) -> bool:
        """Whether there are spilled traces to replay (the spill file, or one a dead replayer left)."""
        return self.path.exists() or bool(self._orphans())

    def _orphans(self) -> list[pathlib.Path]:
        return [p for p in self.path.parent.glob(self.path.name + TAKEN_MARK + "*") if not _owner_alive(p)]

    def take(self) -> list[pathlib.Path]:
        """Rename the spill file (and orphans of dead replayers) for replay; [] if there is none."""
        taken = self._orphans()
        try:
            with open(self.path, "r+", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                if _same_file(fh, self.path):
                    target = self.path.with_name(f"{self.path.name}{TAKEN_MARK}{os.getpid()}.{time.time_ns()}")
                    os.rename(self.path, target)
                    taken.append(target)
        except FileNotFoundError:
            pass
        return taken

    def replay(self, store_new: Callable[[list[Trace]], int]) -> int:
        """Move every spilled trace into the store with `store_new`; returns how many were new.

        If the store refuses, the traces go back to the spill file and the error is raised.
        """
        replayed = 0
        for path in self.take():
            traces = read_spill(path)
            try:
                replayed += store_new(traces) if traces else 0
            except Exception:
                self.append(traces)
                path.unlink(missing_ok=True)
                raise
            path.unlink(missing_ok=True)
            if traces:
                log.warning("replayed %d spilled traces from %s into the store", len(traces), path.name)
        return replayed


def read_spill(path: pathlib.Path) -> list[Trace]:
    """The traces of a spill file; a torn or unreadable line (a crash mid-write) is logged and skipped."""
    traces: list[Trace] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                traces.append(validate(Trace(**{k: v for k, v in data.items() if k in _TRACE_FIELDS and k != "id"})))
            except (ValueError, TypeError, AttributeError, InvalidTraceError) as exc:
                log.error("spill file %s line %d is unreadable and is skipped: %s", path.name, number, exc)
    return traces


def _spill_record(trace: Trace) -> dict:
    record = asdict(trace)
    record.pop("id", None)
    return record


def _same_file(fh, path: pathlib.Path) -> bool:
    try:
        return os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _owner_alive(path: pathlib.Path) -> bool:
    """Whether the process that took this spill file for replay still runs."""
    try:
        pid = int(path.name.rsplit(TAKEN_MARK, 1)[1].split(".", 1)[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
