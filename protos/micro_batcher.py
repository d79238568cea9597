"""Micro-batching: items from concurrent callers share one model call.

A serving helper for every service (the encoder's towers, the LM's pooling models): it imports
nothing but the standard library and `protos.errors`.

One worker thread owns the model. A caller hands its items over and blocks; the worker takes
the waiting requests and runs them in one call, then hands each caller its slice. Callers
announce themselves while they preprocess:

    with batcher.incoming() as ticket:
        items = preprocess(...)
        results = ticket.submit(items)  # leaves "incoming" and queues the items atomically

As long as an announced caller is still preprocessing, the worker waits for it (at most
`max_wait_s`), so concurrent requests meet in one batch, while a lone caller never waits.
While a call runs, new requests queue up and form the next batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from protos.errors import Unavailable

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(eq=False, slots=True)
class _Request(Generic[ItemT, ResultT]):
    items: Sequence[ItemT]
    done: threading.Event = field(default_factory=threading.Event)
    results: list[ResultT] | None = None
    error: BaseException | None = None


class Ticket(Generic[ItemT, ResultT]):
    """A caller inside `MicroBatcher.incoming()`."""

    def __init__(self, batcher: MicroBatcher[ItemT, ResultT]) -> None:
        self._batcher = batcher
        self.inside = True

    def submit(self, items: Sequence[ItemT]) -> list[ResultT]:
        """As `MicroBatcher.submit`; the first call also ends the caller's "incoming" state."""
        return self._batcher._submit(items, self)


class MicroBatcher(Generic[ItemT, ResultT]):
    """Runs the items of concurrent `submit` calls through `run_batch` together.

    Args:
        run_batch: items -> one result per item, in order. Called from the worker thread only.
        max_batch_size: a batch takes requests until it holds this many items (a single
            request larger than this still runs whole).
        max_wait_s: how long a batch may wait for callers still inside `incoming()`.
    """

    def __init__(
        self,
        run_batch: Callable[[list[ItemT]], list[ResultT]],
        *,
        max_batch_size: int = 32,
        max_wait_s: float = 0.005,
        name: str = "micro-batcher",
    ) -> None:
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_s >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._pending: deque[_Request[ItemT, ResultT]] = deque()
        self._num_incoming = 0  # callers preparing items they will submit
        self._closed = False
        self.num_batches = 0
        self.name = name
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    @contextmanager
    def incoming(self) -> Iterator[Ticket[ItemT, ResultT]]:
        """Announces a caller that will submit soon; batches wait (bounded) for it."""
        ticket: Ticket[ItemT, ResultT] = Ticket(self)
        with self._cond:
            self._num_incoming += 1
        try:
            yield ticket
        finally:
            with self._cond:
                self._leave(ticket)

    def submit(self, items: Sequence[ItemT]) -> list[ResultT]:
        """Blocks until `items` ran; returns their results or raises the batch's error."""
        return self._submit(items, None)

    def _submit(
        self, items: Sequence[ItemT], ticket: Ticket[ItemT, ResultT] | None
    ) -> list[ResultT]:
        request: _Request[ItemT, ResultT] = _Request(items)
        with self._cond:
            if ticket is not None:
                self._leave(ticket)
            if not items:
                return []
            if self._closed:
                raise Unavailable(f"{self.name} is shutting down")
            self._pending.append(request)
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.results is not None
        return request.results

    def _leave(self, ticket: Ticket[ItemT, ResultT]) -> None:
        """Ends a ticket's "incoming" state; the caller holds `_cond`."""
        if ticket.inside:
            ticket.inside = False
            self._num_incoming -= 1
            self._cond.notify_all()

    def close(self) -> None:
        """Runs the requests already submitted, then stops the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join()

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _next_batch(self) -> list[_Request[ItemT, ResultT]] | None:
        """Waits for a request, then (bounded) for callers still preparing; None once closed."""
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.max_wait_s
            while self._num_incoming and self._num_pending_items() < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [self._pending.popleft()]
            num_items = len(batch[0].items)
            while self._pending and num_items + len(self._pending[0].items) <= self.max_batch_size:
                batch.append(self._pending.popleft())
                num_items += len(batch[-1].items)
            return batch

    def _num_pending_items(self) -> int:
        return sum(len(request.items) for request in self._pending)

    def _run(self, batch: list[_Request[ItemT, ResultT]]) -> None:
        try:
            results = self._run_batch([item for request in batch for item in request.items])
            self.num_batches += 1
        except Exception as error:
            if len(batch) > 1:  # NOTE: one caller's failure must not fail the others
                for request in batch:
                    self._run([request])
                return
            batch[0].error = error
            batch[0].done.set()
            return
        start = 0
        for request in batch:
            request.results = results[start : start + len(request.items)]
            start += len(request.items)
            request.done.set()
