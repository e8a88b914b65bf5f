"""The host's side of a worker process (bench/harness/worker.py): start it, hand it one shape at a time, read back
what the shape's child measured, and end it.

    with Worker(folder, process=1) as worker:
        for message in worker.measure(request, guard_s):
            ...  # {"record": ...}, {"process": ...}, then {"end": exit code}

A run starts all its workers at once (`Pool`): their start overlaps the host's own and each other's, and none is still
starting while another one times.

A child that dies (a crash in a strategy, out of memory, killed) ends its shape, not the run: `measure` ends with the
child's exit code, and the host records the shape's unfinished cases. A child silent for `guard_s` (a call that hangs
in native code, where no time limit inside the process can reach it) is killed.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.errors import BenchError
from bench.harness import fresh

STARTUP_S = 300.0  # the worker imports torch and plans the run before its first shape


class WorkerError(BenchError):
    pass


class Worker:
    """One worker process of a run, driven over its stdin and stdout (one JSON object per line)."""

    def __init__(self, folder: Path, process: int):
        self.process = process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.harness.worker", str(Path(folder).resolve()), str(process)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=fresh.timing_env(),
            start_new_session=True)  # a Ctrl-C at the terminal reaches the host, which stops after the current shape
        self.child: int | None = None
        self._pending = b""  # bytes read past the last whole line
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)
        self._started: WorkerError | bool = False  # True once it said it is ready; the error if it never will

    def wait_started(self) -> None:
        """Return once the worker has started (imported torch, planned the run, warmed the strategies: ~5 s here);
        WorkerError if it did not."""
        if self._started is False:
            ready = self._read(STARTUP_S)
            self._started = True if ready is not None and "ready" in ready else WorkerError(
                f"worker process {self.process} did not start (exit code {self.proc.poll()}); see the lines above")
        if isinstance(self._started, WorkerError):
            self.close()
            raise self._started

    def measure(self, request: dict[str, Any], guard_s: float) -> Iterator[dict[str, Any]]:
        """Send one shape; yield what its child writes, then {"end": exit code} (negative: the signal that ended
        it). Silent for `guard_s`: the child is killed and the end says so."""
        self.wait_started()
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        killed = False
        while True:
            message = self._read(guard_s)
            if message is None and self.proc.poll() is not None:
                raise WorkerError(f"worker process {self.process} ended (exit code {self.proc.returncode})")
            if message is None:
                self._kill_child()
                killed = True
                continue
            if "child" in message:
                self.child = message["child"]
                continue
            if "end" in message:
                self.child = None
                yield message | {"killed_after_s": guard_s if killed else None}
                return
            yield message

    def _read(self, timeout_s: float) -> dict[str, Any] | None:
        """The next JSON line, or None after `timeout_s` of silence or at the end of the stream. Lines are cut from
        raw reads: a buffered reader could hold lines that select() no longer sees."""
        deadline = time.monotonic() + timeout_s
        while True:
            line, newline, rest = self._pending.partition(b"\n")
            if newline:
                self._pending = rest
                try:
                    return json.loads(line)
                except json.JSONDecodeError:  # not ours (the worker's stdout is its protocol; prints go to stderr)
                    continue
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                return None
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                return None
            self._pending += chunk

    def _kill_child(self) -> None:
        if self.child is not None:
            try:
                os.kill(self.child, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """End the worker (and a child still running)."""
        self._kill_child()
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._selector.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Pool:
    """A run's worker processes, started together when the run starts: each one's start (~5 s here) overlaps the
    host's (pytest's import and collection) and the others', instead of opening its pass. A worker waiting for its
    pass reads its stdin and uses no CPU.

        pool = Pool(folder, processes=2)
        worker = pool.take(1)  # once every worker of the pool has started: none starts while another one times
        ...
        pool.close()  # the workers no pass took
    """

    def __init__(self, folder: Path, processes: int):
        self._waiting: dict[int, Worker] = {}
        try:
            for process in range(1, processes + 1):
                self._waiting[process] = Worker(folder, process)
        except BaseException:
            self.close()
            raise

    def take(self, process: int) -> Worker:
        """Worker `process`, once every worker still waiting has started; WorkerError if it did not start."""
        for worker in self._waiting.values():
            try:
                worker.wait_started()
            except WorkerError:
                pass  # its own pass raises it, if it comes
        worker = self._waiting.pop(process)
        worker.wait_started()
        return worker

    def close(self) -> None:
        for worker in self._waiting.values():
            worker.close()
        self._waiting.clear()
