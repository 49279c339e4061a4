"""The server's long work (suggesting cells, adapting a model, teaching the finder): one job at a
time, in the background.

A job is queued by a request that is answered at once (202 and the job's id); one thread takes
the jobs in turn, and the page polls GET /v1/jobs/ID for its state and progress. One at a time
because a second training run would only halve the speed of both on a few cores, and the model
thread that answers classify requests needs its share too; so the job thread also runs torch with
fewer threads than the machine has (`threads`).

Every job's record is written to DATA/jobs.json when it changes state. A job still queued or
running when the server stopped is failed at the next start, with an error that says so: it is
reported, never silently lost (nothing half-made is listed: see registry.py).
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import traceback
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..core.errors import WbcnetError
from ..core.files import write_text_atomic
from .datadir import Unavailable
from .registry import now

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
INTERRUPTED = "interrupted: the server stopped before this job finished; start it again"
KEEP = 200  # job records kept in jobs.json, newest


@dataclass
class Job:
    id: str
    kind: str                     # "suggest", "adapt" or "finder"
    lab: str
    state: str = QUEUED
    progress: float = 0.0         # 0..1
    message: str = "waiting for the job before it"
    model: str | None = None      # adapt, finder: the new model's name; suggest: the model that chose the cells
    parent: str | None = None     # adapt, finder: the model it starts from
    created: str | None = None
    started: str | None = None
    finished: str | None = None
    error: str | None = None      # one line, when failed


@contextmanager
def torch_threads(n: int | None):
    """Torch's threads for this thread while a job runs, then torch's number before. Set only
    around a job: torch also hands its number to every thread that starts using it meanwhile, and
    the model thread, started before, keeps its own."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Stopped(Exception):
    """Raised inside a job's progress callback once the server is stopping: the job ends there."""


# run(job, on_progress) does the work and returns the message the job finishes with.
Work = Callable[[Job, Callable[[float, str], None]], str]


class Jobs:
    def __init__(self, path: Path, threads: int | None = None):
        self.path, self.threads = path, threads
        self._jobs: dict[str, Job] = {}
        self._work: dict[str, Work] = {}
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if path.exists():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
                known = {f.name for f in fields(Job)}
                found = [Job(**{k: v for k, v in d.items() if k in known}) for d in saved]
            except (ValueError, TypeError, AttributeError) as e:
                raise WbcnetError(f"{path}: not a jobs file wbcnet can read ({e}); move it away to start afresh "
                                  f"(the labs and models beside it are not affected)") from None
            for job in found:
                if job.state in (QUEUED, RUNNING):
                    job.state, job.error, job.finished = FAILED, INTERRUPTED, now()
                    job.message = "interrupted"
                self._jobs[job.id] = job
            self._save()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="wbcnet-jobs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop taking jobs. A job running now is stopped at its next progress report (a training
        epoch can't be cut), and its thread is not waited for: the server's shutdown must not hang
        on it. Nothing it finishes after this is written down; the next start reports it."""
        self._closed.set()
        self._queue.put(None)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:12]

    def submit(self, kind: str, lab: str, work: Work, job_id: str | None = None, **fields) -> Job:
        if self._closed.is_set():
            raise Unavailable("the server is stopping; it takes no new jobs")
        job = Job(job_id or self.new_id(), kind, lab, created=now(), **fields)
        with self._lock:
            self._jobs[job.id] = job
            self._work[job.id] = work
            self._save()
        self._queue.put(job.id)
        return replace(job)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return replace(job) if job else None

    def all(self) -> list[Job]:
        """Every job, oldest first."""
        with self._lock:
            return [replace(j) for j in self._jobs.values()]

    def ahead(self, job_id: str) -> int:
        """Jobs that will run before this queued one (the running one included)."""
        with self._lock:
            order = [j.id for j in self._jobs.values() if j.state in (QUEUED, RUNNING)]
        return order.index(job_id) if job_id in order else 0

    def pending(self, kind: str) -> list[Job]:
        return [j for j in self.all() if j.kind == kind and j.state in (QUEUED, RUNNING)]

    def wait(self, job_id: str, timeout: float) -> Job | None:
        """Block until the job has ended (tests, scripts); the page polls instead."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job is None or job.state in (DONE, FAILED):
                return job
            time.sleep(0.05)
        return self.get(job_id)

    def _save(self) -> None:
        """jobs.json, with the lock held; not once the server is stopping (another server may own the
        folder by then, a test's second app)."""
        if self._closed.is_set():
            return
        kept = list(self._jobs.values())[-KEEP:]  # in the order they were made
        write_text_atomic(self.path, json.dumps([asdict(j) for j in kept], indent=1))

    def _update(self, job: Job, **changes) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(job, k, v)
            if "state" in changes:
                self._save()

    def _loop(self) -> None:
        while not self._closed.is_set():
            job_id = self._queue.get()
            if job_id is None or self._closed.is_set():
                return
            job, work = self._jobs[job_id], self._work.pop(job_id)
            self._update(job, state=RUNNING, started=now(), message="starting")

            def on_progress(fraction: float, message: str, job=job) -> None:
                if self._closed.is_set():
                    raise Stopped()
                with self._lock:
                    job.progress = min(1.0, max(job.progress, float(fraction)))
                    job.message = str(message)[:200]

            try:
                with torch_threads(self.threads):
                    message = work(replace(job), on_progress)
            except Stopped:
                return
            except Exception as e:  # a job's failure is its record's, never the server's
                if self._closed.is_set():
                    return
                reason = str(e) if isinstance(e, (WbcnetError, OSError)) else f"{type(e).__name__}: {e}"
                if not isinstance(e, WbcnetError):  # a bug: its traceback for whoever runs the server
                    print(f"wbcnet serve: job {job.id} failed:", file=sys.stderr)
                    traceback.print_exc()
                self._update(job, state=FAILED, finished=now(), message="failed",
                             error=(reason.splitlines() or ["failed"])[0][:500])
                continue
            if self._closed.is_set():
                return
            self._update(job, state=DONE, finished=now(), progress=1.0, message=message)
