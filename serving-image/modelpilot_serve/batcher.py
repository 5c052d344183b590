"""Adaptive batching: concurrent requests merged into one predict call, results split back exactly.

Policy: when the model is idle a request runs at once (a lone request never waits for batch-mates);
while a predict call runs, arriving requests queue up, and the next call takes all queued requests
that can be merged with the oldest one, up to `max_batch_size` rows. `max_delay` only applies when
more requests are already being received: the batch then waits for them that long at most. Under load
batches grow by themselves; at low load latency is the model's own.

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
from .fastparse import build_frame, numeric_layout
from .loader import LoadedModel

log = logging.getLogger(__name__)

#: Lone requests whose predicts take less than this (moving average) run on the event loop.
INLINE_BELOW_MS = 20.0


@dataclass
class Result:
    """Predictions for one request (or the error it gets)."""

    predictions: Any = None
    error: ServingError | None = None
    #: MLflow's unified LLM input: the response is not wrapped in {"predictions": ...}.
    unwrapped: bool = False


class Runner:
    """Runs decoded requests through the model, the way `mlflow models serve` would. Synchronous."""

    def __init__(self, model: LoadedModel, mode: str = "auto") -> None:
        self.model = model
        self.layout = numeric_layout(model.input_schema)
        meta = model.pyfunc.metadata
        hinted = getattr(meta, "_is_signature_from_type_hint", lambda: False)()
        allowed, self.merge_reason = may_merge(mode, model.flavors, getattr(meta, "metadata", None))
        if hinted:
            allowed, self.merge_reason = False, "the signature comes from type hints (inputs are passed raw)"
        #: Models whose signature comes from type hints get their `inputs` raw (no DataFrame parsing),
        #: exactly as MLflow does; merging rows is only done for parsed inputs of row-independent models.
        self.can_merge = allowed

    def _parse_standard(self, doc: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        """Data and params of a document in one of the four standard formats."""
        from mlflow.pyfunc.scoring_server import infer_and_parse_data

        doc = dict(doc)
        params = doc.pop("params", None)
        frame = build_frame(doc, self.layout) if self.layout else None
        return (frame if frame is not None else infer_and_parse_data(doc, self.model.input_schema)), params

    def run_one(self, request: protocol.Request) -> Result:
        from mlflow.pyfunc.scoring_server import _parse_json_data, parse_csv_input, parse_parquet_input

        schema = self.model.input_schema
        unwrapped = False
        try:
            if self.can_merge and request.merge_key is not None and request.doc is not None:
                data, params = self._parse_standard(request.doc)
            elif request.content_type == "text/csv":
                try:
                    text = request.body.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise BadRequest(f"the CSV body is not valid UTF-8: {exc}") from None
                data, params = parse_csv_input(io.StringIO(text), schema=schema), None
            elif request.content_type == "application/vnd.apache.parquet":
                data, params = parse_parquet_input(io.BytesIO(request.body)), None
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
            return Result(self.model.predict(data, params), unwrapped=unwrapped)
        except Exception as exc:
            return Result(error=from_mlflow(exc))

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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._task: asyncio.Task[None] | None = None
        #: Requests being received/decoded right now (they may join the next batch).
        self.arriving = 0
        #: Run a lone request on the event loop instead of the predict thread, when predicts are fast.
        self.inline = True
        #: Moving average of lone predict calls (ms); None until measured.
        self._solo_ms: float | None = None
        self._last_batch = 0

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
            lone = len(batch) == 1 and not self._queue and not self.arriving
            started = loop.time()
            try:
                if lone and self.inline and self._solo_ms is not None and self._solo_ms < INLINE_BELOW_MS:
                    # A lone, fast request with nothing else in sight: predicting right here saves the
                    # thread hand-off (and its GIL round trips), most of the latency we would add. Slow
                    # models always run on the predict thread, so probes and timeouts stay responsive.
                    results = self._run_batch([batch[0].request])
                else:
                    results = await loop.run_in_executor(self._executor, self._run_batch,
                                                         [i.request for i in batch])
            except Exception as exc:
                log.exception("Batch failed unexpectedly")
                results = [Result(error=from_mlflow(exc))] * len(batch)
            if lone:
                took = (loop.time() - started) * 1000
                self._solo_ms = took if self._solo_ms is None else 0.8 * self._solo_ms + 0.2 * took
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
