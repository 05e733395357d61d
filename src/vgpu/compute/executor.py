"""vgpud's side of kernel execution: each client process's kernels run in a worker process of
its own (``vgpu.compute.worker``) that maps exactly that process's device memory at its device
addresses.

    executor = Executor([gpu.memory for gpu in gpus], owner=session.id)
    result = executor.run(Job(key, object_code, "entry", launch_bytes, ctas))   # JobResult
    future = executor.submit(job)          # the same without blocking the caller
    executor.close()

Before each job the worker's mappings are brought up to date with the owner's allocations
(``DeviceMemory.generation`` says when anything changed).  A kernel that touches memory the
worker does not map kills the worker: the job answers CUDA_ERROR_ILLEGAL_ADDRESS (700) and
the next job starts a fresh worker.  A job that runs longer than ``VGPU_KERNEL_TIMEOUT``
seconds (unset: no limit) kills the worker too and answers CUDA_ERROR_LAUNCH_TIMEOUT (702).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Protocol, Sequence

from vgpu.compute import jobs
from vgpu.compute.jobs import Job, JobResult
from vgpu.device.memory import Region

log = logging.getLogger(__name__)

ILLEGAL_ADDRESS = 700
LAUNCH_TIMEOUT = 702
ILLEGAL_INSTRUCTION = 715
LAUNCH_FAILED = 719
#: how a worker's death by signal reads to the application
DEATHS = {signal.SIGSEGV: ILLEGAL_ADDRESS, signal.SIGBUS: ILLEGAL_ADDRESS, signal.SIGILL: ILLEGAL_INSTRUCTION}
#: bound on a worker's answer to anything but a job (starting up, mapping memory)
CONTROL_TIMEOUT = 60.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class ExecutorClosed(RuntimeError):
    """The executor was closed before the job ran."""


class WorkerGone(Exception):
    """The worker died or stopped answering; ``result`` is what the job answers."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(result.detail)
        self.result = result


def kernel_timeout() -> float | None:
    """``VGPU_KERNEL_TIMEOUT`` in seconds, or None (no limit)."""
    value = os.environ.get("VGPU_KERNEL_TIMEOUT", "")
    try:
        return float(value) if value and float(value) > 0 else None
    except ValueError:
        log.warning("VGPU_KERNEL_TIMEOUT=%r is not a number of seconds: no limit", value)
        return None


class Reachable(Protocol):
    """Memory an executor maps: the regions an owner may reach, and a counter of changes."""

    generation: int

    def backing(self, owner: int) -> list[Region]: ...


class Executor:
    """Runs one owner's jobs, one at a time, in a worker process that maps its memory."""

    def __init__(self, memories: Sequence[Reachable], owner: int, timeout: float | None = None) -> None:
        """``memories``: what the owner's kernels may reach (the GPUs' device memory, the
        process's page-locked and managed windows)."""
        self.memories = list(memories)
        self.owner = owner
        self.timeout = timeout if timeout is not None else kernel_timeout()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._process: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        #: what the current worker maps, by Region.key
        self._mapped: dict[tuple, Region] = {}
        self._generations: tuple[int, ...] | None = None
        self._loaded: set[str] = set()
        self._closed = False
        self._lock = threading.Lock()
        # the thread that starts workers must live as long as they do: a worker's parent-death
        # signal follows the thread that forked it
        self._thread = threading.Thread(target=self._serve, name=f"vgpu-executor-{owner}", daemon=True)
        self._thread.start()

    @property
    def worker_pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    # the API ----------------------------------------------------------------------------
    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue a job; the future's result is its JobResult."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                future.set_exception(ExecutorClosed("the executor is closed"))
                return future
            self._queue.put((job, future))
        return future

    def run(self, job: Job) -> JobResult:
        return self.submit(job).result()

    def sync_memory(self) -> None:
        """Bring the worker's mappings up to date now (jobs do this themselves)."""
        self.submit(None).result()

    def close(self) -> None:
        """End the worker (whatever it runs) and the executor; queued jobs fail with ExecutorClosed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._kill()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # the dispatcher thread -------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            job, future = item
            if self._closed:
                future.set_exception(ExecutorClosed("the executor is closed"))
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._execute(job))
            except WorkerGone as gone:
                future.set_result(gone.result)
            except BaseException as error:  # noqa: BLE001 - the caller gets it, the thread goes on
                future.set_exception(error)
        self._stop_worker()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[1].set_exception(ExecutorClosed("the executor is closed"))

    def _execute(self, job: Job | None) -> JobResult:
        self._sync()
        if job is None:
            return JobResult(0)
        self._send(jobs.RUN, jobs.encode_run(job, job.key not in self._loaded))
        _, payload, _ = self._receive(self.timeout, LAUNCH_TIMEOUT)
        self._loaded.add(job.key)
        return jobs.decode_done(payload)

    # the worker ------------------------------------------------------------------------
    def _start_worker(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "vgpu.compute.worker", str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
        self._sock = ours
        self._mapped, self._generations, self._loaded = {}, None, set()
        if self._closed:  # close() ran while it started: it must not outlive the executor
            self._kill()

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass

    def _stop_worker(self) -> None:
        self._kill()
        if self._process is not None:
            self._process.wait()
        if self._sock is not None:
            self._sock.close()
        self._process = self._sock = None

    def _send(self, kind: int, payload: bytes, fds: list[int] | None = None) -> None:
        """Send to the worker; if it has died, the answer's EOF says how (_receive)."""
        try:
            jobs.send_frame(self._sock, kind, payload, fds)
        except OSError:
            pass

    def _receive(self, timeout: float | None, overdue: int) -> tuple[int, bytes, list[int]]:
        """The worker's next frame; a dead or overdue worker is ended and raises WorkerGone,
        whose result has the code ``overdue`` after ``timeout`` seconds."""
        self._sock.settimeout(timeout)
        timed_out = False
        try:
            return jobs.recv_frame(self._sock)
        except socket.timeout:
            timed_out = True
            self._kill()
        except (EOFError, ConnectionError):
            pass
        self._process.wait()
        returncode = self._process.returncode
        self._stop_worker()
        if timed_out:
            raise WorkerGone(JobResult(overdue, detail=f"no answer from the kernel worker in {timeout:g} s"))
        if self._closed:
            raise WorkerGone(JobResult(LAUNCH_FAILED, detail="the executor was closed"))
        if returncode < 0:
            number = -returncode
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            log.info("kernel worker of session %d ended by %s", self.owner, name)
            raise WorkerGone(JobResult(DEATHS.get(number, LAUNCH_FAILED), detail=f"the kernel worker got {name}"))
        raise WorkerGone(JobResult(LAUNCH_FAILED, detail=f"the kernel worker exited with status {returncode}"))

    # memory --------------------------------------------------------------------------------
    def _sync(self) -> None:
        """Map what the owner may reach and unmap what it no longer may (on a fresh worker: all)."""
        if self._process is not None and self._process.poll() is not None:
            self._stop_worker()  # it died between jobs (killed from outside)
        if self._process is None:
            self._start_worker()
        generations = tuple(memory.generation for memory in self.memories)
        if generations == self._generations:
            return
        wanted = {region.key: region for memory in self.memories for region in memory.backing(self.owner)}
        gone = [key for key in self._mapped if key not in wanted]
        if gone:
            payload = b"".join(jobs.RANGE.pack(self._mapped[key].address, self._mapped[key].size) for key in gone)
            self._control(jobs.UNMAP, payload)
            for key in gone:
                del self._mapped[key]
        new = [region for key, region in wanted.items() if key not in self._mapped]
        for start in range(0, len(new), jobs.MAX_FDS):
            batch, fds = [], []
            for region in new[start:start + jobs.MAX_FDS]:
                fd = region.store.duplicate()
                if fd is not None:  # None: freed since backing() answered; the next sync drops it
                    batch.append(region)
                    fds.append(fd)
            try:
                payload = b"".join(jobs.REGION.pack(r.address, r.size, r.offset, r.writable) for r in batch)
                if batch:
                    self._control(jobs.MAP, payload, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            self._mapped.update((region.key, region) for region in batch)
        self._generations = generations

    def _control(self, kind: int, payload: bytes, fds: list[int] | None = None) -> None:
        self._send(kind, payload, fds)
        _, answer, _ = self._receive(CONTROL_TIMEOUT, LAUNCH_FAILED)
        failed, address = jobs.STATUS_BODY.unpack(answer)
        if failed:
            # the worker's map is no longer known: start afresh next time
            self._stop_worker()
            detail = f"the kernel worker could not map 0x{address:x}: {os.strerror(failed)}"
            log.warning("session %d: %s", self.owner, detail)
            raise WorkerGone(JobResult(LAUNCH_FAILED, detail=detail))
