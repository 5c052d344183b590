"""Adaptive batching: concurrent requests merged into one predict call, results split back exactly.

Policy: when the model is idle a request runs at once (a lone request never waits for batch-mates);
while a predict call runs, arriving requests queue up, and the next call takes all queued requests
that can be merged with the oldest one, up to `max_batch_size` rows. `max_delay` only applies when
more requests are already being decoded (their bodies complete: a stalled upload is never waited
for): the batch then waits for them that long at most. Under load batches grow by themselves; at low
load latency is the model's own.

Every predict runs on the predict thread, never on the event loop (which must answer probes). A
predict that every one of its callers has given up on (their deadlines passed) is abandoned: its
thread finishes on its own and the next batch gets a fresh thread, so one stuck call does not turn
the requests after it into timeouts. At most `MAX_ABANDONED` such threads run at once; beyond that
the batcher waits (the model is then really stuck, and requests time out).

A merged batch that fails (a request with a wrong column, a model that raises on one row) is re-run
request by request, so one bad request never poisons its batch-mates.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import protocol
from .batching_policy import may_merge
from .errors import BadRequest, ServingError, from_mlflow
from .fastparse import build_frame, frame_from_parquet, numeric_layout
from .loader import LoadedModel

log = logging.getLogger(__name__)

#: Abandoned predict threads that may still be running before the batcher stops abandoning.
MAX_ABANDONED = 2


@dataclass
class Result:
    """Predictions for one request (or the error it gets)."""

    predictions: Any = None
    error: ServingError | None = None
    #: MLflow's unified LLM input: the response is not wrapped in {"predictions": ...}.
    unwrapped: bool = False


class Runner:
    """Runs decoded requests through the model, the way `mlflow models serve` would. Synchronous."""

    def __init__(self, model: LoadedModel, mode: str = "auto", max_decoded_bytes: int = 128 * 2**20) -> None:
        self.model = model
        self.max_decoded_bytes = max_decoded_bytes
        self.layout = numeric_layout(model.input_schema)
        meta = model.pyfunc.metadata
        hinted = getattr(meta, "_is_signature_from_type_hint", lambda: False)()
        allowed, self.merge_reason = may_merge(mode, model.flavors, getattr(meta, "metadata", None))
        if hinted:
            allowed, self.merge_reason = False, "the signature comes from type hints (inputs are passed raw)"
        #: Models whose signature comes from type hints get their `inputs` raw (no DataFrame parsing),
        #: exactly as MLflow does; merging rows is only done for parsed inputs of row-independent models.
        self.can_merge = allowed
        #: Where the standard formats become a DataFrame of these numeric columns (not for type-hinted
        #: signatures, whose inputs MLflow passes raw), big bodies may be parsed straight into it.
        self.frame_layout = None if hinted else self.layout
        #: Called with each predicted batch's input frame and predictions (data drift); never raises.
        self.observe: Callable[[Any, Any], None] | None = None

    def _parse_standard(self, doc: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        """Data and params of a document in one of the four standard formats."""
        from mlflow.pyfunc.scoring_server import infer_and_parse_data

        doc = dict(doc)
        params = doc.pop("params", None)
        frame = build_frame(doc, self.layout) if self.layout else None
        return (frame if frame is not None else infer_and_parse_data(doc, self.model.input_schema)), params

    def run_one(self, request: protocol.Request) -> Result:
        from mlflow.pyfunc.scoring_server import _parse_json_data, parse_csv_input

        schema = self.model.input_schema
        unwrapped = False
        try:
            if request.frame is not None:
                data, params = request.frame, None
            elif self.can_merge and request.merge_key is not None and request.doc is not None:
                data, params = self._parse_standard(request.doc)
            elif request.content_type == "text/csv":
                try:
                    request.body.decode("utf-8")  # checked, then dropped: a StringIO would hold 4 bytes a char
                except UnicodeDecodeError as exc:
                    raise BadRequest(f"the CSV body is not valid UTF-8: {exc}") from None
                data, params = parse_csv_input(io.BytesIO(request.body), schema=schema), None
            elif request.content_type == "application/vnd.apache.parquet":
                data, params = frame_from_parquet(request.body, self.max_decoded_bytes), None
            else:
                source: Any = dict(request.doc) if request.doc is not None else request.body
                parsed = _parse_json_data(source, self.model.pyfunc.metadata, schema)
                data, params, unwrapped = parsed.data, parsed.params, parsed.is_unified_llm_input
        except ServingError as exc:
            return Result(error=exc)
        except Exception as exc:
            err = from_mlflow(exc)
            return Result(error=BadRequest(err.message) if err.status >= 500 else err)
        try:
            predictions = self.model.predict(data, params)
        except Exception as exc:
            return Result(error=from_mlflow(exc))
        if self.observe is not None:
            self.observe(data, predictions)
        return Result(predictions, unwrapped=unwrapped)

    def run_batch(self, requests: list[protocol.Request]) -> list[Result]:
        if len(requests) == 1:
            return [self.run_one(requests[0])]
        try:
            data, params = self._parse_standard(protocol.merge(requests))
            predictions = self.model.predict(data, params)
            parts = protocol.split(predictions, [r.rows for r in requests])
        except Exception:
            parts = None
        if parts is None:
            return [self.run_one(r) for r in requests]
        if self.observe is not None:
            self.observe(data, predictions)
        return [Result(p) for p in parts]


@dataclass
class _Item:
    request: protocol.Request
    future: asyncio.Future[Result]


class Batcher:
    def __init__(self, run_batch: Callable[[list[protocol.Request]], list[Result]], max_batch_size: int,
                 max_delay_s: float, on_batch: Callable[[int], None] | None = None) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay_s = max(0.0, max_delay_s)
        self._on_batch = on_batch or (lambda _n: None)
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._executor = self._new_executor()
        self._task: asyncio.Task[None] | None = None
        #: Requests whose bodies are complete and being decoded right now (they may join the next batch).
        self.arriving = 0
        #: Predict calls given up on that are still running on their own threads.
        self.abandoned_running = 0
        self._last_batch = 0

    @staticmethod
    def _new_executor() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, request: protocol.Request) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(request, future))
        self._wake.set()
        return await future

    def _queued_rows(self) -> int:
        return sum(max(i.request.rows, 1) for i in self._queue)

    def _take(self) -> list[_Item]:
        first = self._queue.popleft()
        batch = [first]
        key = first.request.merge_key
        if key is None or self.max_batch_size == 1:
            return batch
        rows = first.request.rows
        keep: deque[_Item] = deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # timed out or cancelled while queued
                continue
            if item.request.merge_key == key and rows + item.request.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.request.rows
            else:
                keep.append(item)
        self._queue.extendleft(reversed(keep))
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(0)  # let requests that arrived in the same tick join
            if self.max_delay_s and (self.arriving or self._last_batch > 1):
                # Under load (the last batch had company, or requests are being received right now)
                # a short wait fills the batch: the model's fixed per-call cost is then shared by more
                # requests. A lone request at low load never gets here.
                deadline = loop.time() + self.max_delay_s
                expected = max(self._last_batch, 2)  # about as many as last time are on their way
                while (self._queued_rows() < self.max_batch_size and len(self._queue) < expected
                       and loop.time() < deadline):
                    await asyncio.sleep(min(0.0005, deadline - loop.time()))
            while self._queue and self._queue[0].future.done():
                self._queue.popleft()
            if not self._queue:
                continue
            batch = self._take()
            self._last_batch = len(batch)
            self._on_batch(sum(max(i.request.rows, 1) for i in batch))
            futures = [i.future for i in batch]
            work = loop.run_in_executor(self._executor, self._run_batch, [i.request for i in batch])
            if not await self._wait_or_abandon(work, futures):
                continue
            try:
                results = work.result()
            except Exception as exc:
                log.exception("Batch failed unexpectedly")
                results = [Result(error=from_mlflow(exc))] * len(batch)
            for future, result in zip(futures, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _wait_or_abandon(self, work: asyncio.Future[list[Result]],
                               callers: list[asyncio.Future[Result]]) -> bool:
        """Wait for `work`; False if every caller gave up first and the call was left to its thread."""
        while not work.done():
            waiting = [f for f in callers if not f.done()]
            if not waiting and self.abandoned_running < MAX_ABANDONED:
                self._abandon(work)
                return False
            watched: list[asyncio.Future[Any]] = [work, *waiting]
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        return True

    def _abandon(self, work: asyncio.Future[list[Result]]) -> None:
        log.warning("A predict call outlived the deadline of every request in it; it is left to finish on "
                    "its own thread and the next requests get a fresh one")
        self.abandoned_running += 1

        def finished(done: asyncio.Future[list[Result]]) -> None:
            self.abandoned_running -= 1
            if not done.cancelled() and done.exception() is not None:
                log.warning("The abandoned predict call failed: %s", done.exception())

        work.add_done_callback(finished)
        self._executor.shutdown(wait=False)
        self._executor = self._new_executor()
