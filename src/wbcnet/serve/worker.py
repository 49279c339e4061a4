"""The one thread that runs the model for the server.

A PyTorch model is not safe to run from several threads at once (Grad-CAM swaps hooks in and out,
and predict_logits may change its memory layout), and two cores gain nothing from two forward
passes side by side. So every request hands its work to this thread and waits on a future;
the event loop never runs the model.

Classification jobs that are waiting when the thread comes free are run as one batch (up to
`max_batch` images) and the answer is cut back into each job's own rows: under load a request
costs a share of one forward pass instead of a pass of its own, and an idle server adds no delay
to wait for company. Every other job (a count, a Grad-CAM map) runs alone, in arrival order.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..inference.runner import Predictions, run_model

_STOP = object()


@dataclass
class _Classify:
    images: np.ndarray      # uint8 (n, 3, S, S)
    future: Future


@dataclass
class _Call:
    fn: Callable            # fn(model, meta) -> anything
    future: Future


def take(pred: Predictions, start: int, stop: int) -> Predictions:
    """Rows start:stop of a batch's predictions, as if they had been run alone."""
    def cut(a):
        return None if a is None else a[start:stop]

    return Predictions(pred.logits[start:stop], pred.probs[start:stop], pred.temperature,
                       cut(pred.shift_score), cut(pred.unfamiliar))


class ModelWorker:
    """Owns `model` on a thread of its own; `classify` and `call` return futures."""

    def __init__(self, model, meta, batch_size: int = 64, max_batch: int = 256):
        self.model, self.meta = model, meta
        self.batch_size, self.max_batch = batch_size, max_batch
        # Classification so far (written by the model's thread only): requests, the forward
        # passes they shared, and images; /healthz shows it, the load benchmark reads it.
        self.stats = {"requests": 0, "batches": 0, "images": 0}
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="wbcnet-model", daemon=True)
        self._thread.start()

    def classify(self, images: np.ndarray) -> Future:
        """Predictions for uint8 images (n, 3, S, S), possibly computed in a batch with others."""
        future: Future = Future()
        self._jobs.put(_Classify(images, future))
        return future

    def call(self, fn: Callable) -> Future:
        """fn(model, meta), run on the model's thread with nothing else running."""
        future: Future = Future()
        self._jobs.put(_Call(fn, future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        held = None  # a job taken from the queue while gathering a batch, run next
        while True:
            job, held = (held if held is not None else self._jobs.get()), None
            if job is _STOP:
                return
            if isinstance(job, _Call):
                _settle(job.future, lambda: job.fn(self.model, self.meta))
                continue
            batch, n = [job], len(job.images)
            while n < self.max_batch:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(more, _Classify):
                    held = more
                    break
                batch.append(more)
                n += len(more.images)
            self._run(batch)

    def _run(self, batch: list[_Classify]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            images = live[0].images if len(live) == 1 else np.concatenate([j.images for j in live])
            pred = run_model(self.model, self.meta, images, self.batch_size)
        except BaseException as e:  # every waiting request must hear of it, not hang
            for j in live:
                j.future.set_exception(e)
            return
        self.stats["requests"] += len(live)
        self.stats["batches"] += 1
        self.stats["images"] += len(images)
        start = 0
        for j in live:
            j.future.set_result(take(pred, start, start + len(j.images)))
            start += len(j.images)


def _settle(future: Future, fn: Callable) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as e:
        future.set_exception(e)
