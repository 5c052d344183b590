"""The HTTP layer: a bare ASGI app (routes → data plane → model), run by uvicorn.

Why no web framework: at thousands of requests per second on two cores, a framework's routing,
request objects and middleware cost more than the model's share of a batched predict call. Routes
are a handful of exact paths; every error is a `ServingError` turned into JSON in one place
(`_send_error`); nothing here can leak a traceback to a client.

The event loop only moves bytes and answers probes: decoding and encoding of large bodies run on the
codec threads, predicts on the predict thread (see batcher.py). Each prediction request has one
deadline, `--request-timeout` from the moment its headers are in, over every phase (body, decode,
queue, predict, encode).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from . import auth, errors, health, httpproto, metrics, payloadlog, protocol, reference, v2
from .batcher import Batcher, Result, Runner
from .errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    Timeout,
    UnsupportedMediaType,
)
from .loader import LoadedModel, load, name_from_uri, version_from_uri
from .settings import ServeSettings

log = logging.getLogger("modelpilot_serve")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"

#: Bodies larger than this are decoded, and their answers encoded, on a codec thread.
OFFLOAD_BYTES = 64 * 1024


class ClientGone(Exception):
    pass


@dataclass
class Call:
    """One prediction request on its way: its phase (for the timeout's answer), and its body for the payload log."""

    phase: str = "body"
    body: bytes = b""
    content_type: str = ""


def encode_mlflow(result: Result) -> bytes:
    """Exactly the bytes `mlflow models serve` writes for these predictions."""
    from mlflow.pyfunc.scoring_server import predictions_to_json, unwrapped_predictions_to_json

    buf = io.StringIO()
    if result.unwrapped:
        unwrapped_predictions_to_json(result.predictions, buf)
    else:
        predictions_to_json(result.predictions, buf)
    return buf.getvalue().encode()


class ScoringApp:
    def __init__(self, settings: ServeSettings, model: LoadedModel | None = None) -> None:
        self.settings = settings
        errors.EXPOSE_MODEL_ERRORS = settings.expose_errors
        httpproto.configure(max_header_bytes=settings.max_header_bytes, header_timeout=settings.header_timeout,
                            max_connections=settings.max_connections)
        self._predicting = 0
        self.model: LoadedModel | None = None
        self.load_error: str | None = None
        self.batcher: Batcher | None = None
        self._decode_mlflow: Callable[[bytes, str | None], protocol.Request] = protocol.decode
        self.shutting_down = False
        self._preloaded = model
        self.name = settings.model_name or name_from_uri(settings.model_uri)
        self.version = settings.model_version or version_from_uri(settings.model_uri)
        self.guard = auth.from_settings(settings.auth_mode, settings.auth_resource, settings.auth_audience,
                                        settings.auth_api_keys_dir)
        self.payload_log = None if not settings.payload_log_url else payloadlog.PayloadLogger(
            settings.payload_log_url, settings.payload_log_sample_rate, settings.payload_log_queue, self.name,
            self.version, settings.namespace, settings.track, settings.payload_log_cpu_share)
        if isinstance(self.guard, auth.KubernetesAuth):
            self.guard.on_review = metrics.AUTH_REVIEWS.labels(self.name, self.version).inc
        labels = (self.name, self.version)
        self._latency = {ep: metrics.LATENCY.labels(*labels, ep) for ep in ("invocations", "v2_infer")}
        self._in_flight = metrics.IN_FLIGHT.labels(*labels)
        self._batch_size = metrics.BATCH_SIZE.labels(*labels)
        self._codes: dict[tuple[str, int], Any] = {}
        self._codec = ThreadPoolExecutor(max_workers=2, thread_name_prefix="codec")
        self._heartbeat: asyncio.Task[None] | None = None
        self.drift: reference.Gauges | None = None
        self.runner: Runner | None = None
        metrics.READY.labels(*labels).set(0)

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.model is not None and self.batcher is not None and not self.shutting_down

    def _load(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            model = self._preloaded or load(self.settings.model_uri, Path(self.settings.cache_dir),
                                            self.name, self.version)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("Could not load %s: %s", self.settings.model_uri, self.load_error)
            return
        loop.call_soon_threadsafe(self._loaded, model)
        # after readiness: a slow registry or artifact store delays drift metrics, never predictions
        loop.call_soon_threadsafe(self._drift_loaded, reference.load(self.settings, self.name, self.version))

    def _drift_loaded(self, observers: reference.Observers) -> None:
        self.drift = reference.Gauges(observers.monitor, self.name, self.version)
        if (observers.monitor or observers.bins) and self.runner is not None:
            self.runner.observe = observers.observe

    def _loaded(self, model: LoadedModel) -> None:
        runner = self.runner = Runner(model, self.settings.batching_mode, self.settings.max_decoded_bytes)
        model.batching = "merged" if runner.can_merge else "per-request"
        log.info("Batching: %s (%s)", model.batching, runner.merge_reason)
        self.batcher = Batcher(runner.run_batch, self.settings.max_batch_size if runner.can_merge else 1,
                               self.settings.max_batch_delay_ms / 1000.0, on_batch=self._batch_size.observe)
        self.batcher.start()
        self._decode_mlflow = functools.partial(protocol.decode, layout=runner.frame_layout)
        self.model = model
        metrics.LOAD_SECONDS.labels(self.name, self.version).set(model.load_seconds)
        metrics.READY.labels(self.name, self.version).set(1)
        log.info("Ready: serving %s version %s", self.name, self.version or "(local)")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # The predict thread holds the GIL in pandas/sklearn code; a shorter switch interval lets the
        # event loop accept and answer requests in between instead of stalling up to 5 ms each time.
        sys.setswitchinterval(0.001)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                loop = asyncio.get_running_loop()
                if self.payload_log is not None:
                    self.payload_log.start()
                threading.Thread(target=self._load, args=(loop,), name="model-loader", daemon=True).start()
                health_dir = os.environ.get("MODELPILOT_HEALTH_DIR")
                if health_dir:
                    self._heartbeat = loop.create_task(self._beat(health.Heartbeat(Path(health_dir))))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.shutting_down = True
                if self._heartbeat is not None:
                    self._heartbeat.cancel()
                if self.drift is not None:
                    self.drift.stop()
                metrics.READY.labels(self.name, self.version).set(0)
                if self.batcher is not None:
                    await self.batcher.stop()
                if self.payload_log is not None:  # what is queued goes out, within a few seconds
                    await self.payload_log.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _beat(self, heartbeat: health.Heartbeat) -> None:
        """Tell the probe process, a few times a second, that this loop turns and whether we are ready."""
        try:
            while True:
                heartbeat.beat(self.ready)
                await asyncio.sleep(0.2)
        finally:
            heartbeat.close()

    # -- ASGI entry point ------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if self.guard is not None and not _open(path):
                await self._check_caller(scope)
            if path == "/invocations":
                _allow(method, "POST")
                await self._invocations(scope, receive, send)
            elif path in ("/ping", "/health"):
                _allow(method, "GET", "HEAD")
                await self._ping(send)
            elif path.startswith("/v2"):
                await self._v2(scope, receive, send, path.rstrip("/"), method)
            elif path == "/metrics":
                _allow(method, "GET")
                body, ctype = metrics.render()
                await _send(send, 200, body, ctype.encode())
            elif path == "/version":
                _allow(method, "GET")
                from mlflow.version import VERSION

                await _send(send, 200, VERSION.encode(), JSON)
            else:
                raise NotFound(f"no route for {path}; try POST /invocations or /v2/models/{self.name}/infer")
        except ServingError as exc:
            await _send(send, exc.status, exc.body(), JSON, exc.headers)
        except ClientGone:
            return
        except Exception:
            log.exception("Unexpected error on %s %s", method, path)
            with contextlib.suppress(Exception):  # the response may have started already
                await _send(send, 500, ServingError("internal error; see the server log").body(), JSON)

    async def _check_caller(self, scope: Scope) -> None:
        """Before the body is read: an unauthenticated caller never gets to send 10 MB."""
        assert self.guard is not None
        try:
            await self.guard.check(scope["headers"])
        except auth.Unauthorized as exc:
            metrics.AUTH_FAILURES.labels(self.name, self.version,
                                         "unverifiable" if isinstance(exc, auth.Unverifiable) else "unauthenticated"
                                         ).inc()
            raise
        except auth.Forbidden:
            metrics.AUTH_FAILURES.labels(self.name, self.version, "forbidden").inc()
            raise

    # -- MLflow scoring protocol -------------------------------------------------------------------
    async def _ping(self, send: Send) -> None:
        if self.ready:
            await _send(send, 200, b"\n", JSON)
        else:
            raise self._not_ready()

    def _not_ready(self) -> NotReady:
        if self.shutting_down:
            return NotReady("shutting down")
        if self.load_error:
            return NotReady(f"the model failed to load: {self.load_error}")
        return NotReady("the model is still loading")

    async def _answer(self, endpoint: str, scope: Scope, send: Send, produce: Callable[[Call], Awaitable[bytes]]
                      ) -> None:
        """Run one prediction endpoint: readiness, errors → JSON, in-flight gauge, latency, status counts,
        payload log."""
        started = time.perf_counter()
        self._in_flight.inc()
        self._predicting += 1
        status, answer = 500, b""
        call = Call()
        try:
            if not self.ready:
                raise self._not_ready()
            if self._predicting > self.settings.max_in_flight:
                raise Overloaded(f"over {self.settings.max_in_flight} requests in progress; retry shortly")
            try:
                async with asyncio.timeout(self.settings.request_timeout):
                    body = await produce(call)
            except TimeoutError:
                if call.phase == "body":
                    raise RequestTimeout(f"the request body did not arrive within {self.settings.request_timeout:g}s"
                                         ) from None
                raise Timeout(f"no answer within the request timeout of {self.settings.request_timeout:g}s"
                              ) from None
            status, answer = 200, body
            await _send(send, 200, body, JSON)
        except ServingError as exc:
            status, answer = exc.status, exc.body()
            await _send(send, status, answer, JSON, exc.headers)
        finally:
            self._predicting -= 1
            self._in_flight.dec()
            self._observe(endpoint, status, started)
        if self.payload_log is not None and call.body and self.payload_log.sampled():
            latency_ms = (time.perf_counter() - started) * 1000
            self.payload_log.offer(lambda: payloadlog.Exchange(
                payloadlog.request_id(_header(scope, b"x-request-id")), endpoint, call.body, call.content_type,
                answer, status, latency_ms, payloadlog.now()))

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def produce(call: Call) -> bytes:
            request, big = await self._decode(scope, receive, self._decode_mlflow, call)
            body: bytes = await self._off_loop(big, encode_mlflow, await self._predict(request))
            return body

        await self._answer("invocations", scope, send, produce)

    async def _off_loop(self, big: bool, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args), on a codec thread when the data is big (so the event loop stays free)."""
        if not big:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._codec, fn, *args)

    async def _decode(self, scope: Scope, receive: Receive, decoder: Callable[[bytes, str | None], protocol.Request],
                      call: Call) -> tuple[protocol.Request, bool]:
        """The decoded request, and whether it is big (its answer is then encoded off the loop too)."""
        assert self.batcher is not None
        body = await _read_body(scope, receive, self.settings.max_body_bytes)
        content_type = _header(scope, b"content-type")
        call.phase = "work"
        if self.payload_log is not None:  # (only then: it keeps the body alive until the answer is sent)
            call.body, call.content_type = body, content_type or ""
        big = len(body) > OFFLOAD_BYTES
        self.batcher.arriving += 1  # complete and being decoded: a batch may wait for it
        try:
            return await self._off_loop(big, decoder, body, content_type), big
        except ServingError:
            raise
        except Exception as exc:
            raise BadRequest(f"could not read the request: {type(exc).__name__}: {exc}") from None
        finally:
            self.batcher.arriving -= 1

    async def _predict(self, request: protocol.Request) -> Result:
        assert self.batcher is not None
        result = await self.batcher.submit(request)
        if result.error is not None:
            raise result.error  # a model failure was logged with its error id where it was classified
        return result

    def _observe(self, endpoint: str, status: int, started: float) -> None:
        self._latency[endpoint].observe(time.perf_counter() - started)
        key = (endpoint, status)
        counter = self._codes.get(key)
        if counter is None:
            counter = self._codes[key] = metrics.REQUESTS.labels(self.name, self.version, endpoint, str(status))
        counter.inc()

    # -- Open Inference Protocol v2 ----------------------------------------------------------------
    async def _v2(self, scope: Scope, receive: Receive, send: Send, path: str, method: str) -> None:
        if path == "/v2":
            _allow(method, "GET")
            await _send(send, 200, orjson.dumps({"name": "modelpilot", "version": _version(),
                                                 "extensions": []}), JSON)
            return
        if path == "/v2/health/live":
            _allow(method, "GET", "HEAD")
            await _send(send, 200, b'{"live":true}', JSON)
            return
        if path == "/v2/health/ready":
            _allow(method, "GET", "HEAD")
            if not self.ready:
                raise self._not_ready()
            await _send(send, 200, b'{"ready":true}', JSON)
            return
        parts = path.split("/")  # ['', 'v2', 'models', name, ('versions', v)?, action?]
        if len(parts) < 4 or parts[2] != "models":
            raise NotFound(f"no route for {path}")
        name, rest = parts[3], parts[4:]
        if len(rest) >= 2 and rest[0] == "versions":
            if self.version and rest[1] != self.version:
                raise NotFound(f"model {name!r} version {rest[1]!r} is not served here (serving {self.version})")
            rest = rest[2:]
        if name != self.name:
            raise NotFound(f"model {name!r} is not served here; this server serves {self.name!r}")
        action = rest[0] if rest else ""
        if not rest:
            _allow(method, "GET")
            if not self.ready or self.model is None:
                raise self._not_ready()
            await _send(send, 200, orjson.dumps(v2.metadata(self.model, self.name, self.version)), JSON)
        elif action == "ready" and len(rest) == 1:
            _allow(method, "GET", "HEAD")
            if not self.ready:
                raise self._not_ready()
            await _send(send, 200, orjson.dumps({"name": self.name, "ready": True}), JSON)
        elif action == "infer" and len(rest) == 1:
            _allow(method, "POST")
            await self._v2_infer(scope, receive, send)
        else:
            raise NotFound(f"no route for {path}")

    async def _v2_infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def produce(call: Call) -> bytes:
            assert self.model is not None
            schema = self.model.input_schema
            request_id: list[str] = []

            def decoder(body: bytes, content_type: str | None) -> protocol.Request:
                doc, rid = v2.to_mlflow(body, schema)
                request_id.append(rid or str(uuid.uuid4()))
                return protocol.decode(orjson.dumps(doc), "application/json")

            request, big = await self._decode(scope, receive, decoder, call)
            result = await self._predict(request)

            def encode() -> bytes:
                return orjson.dumps({"model_name": self.name, "model_version": self.version,
                                     "id": request_id[0], "outputs": v2.outputs(result.predictions)})

            body: bytes = await self._off_loop(big, encode)
            return body

        await self._answer("v2_infer", scope, send, produce)


# -- small helpers ------------------------------------------------------------------------------------
def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise MethodNotAllowed(f"{method} is not allowed here; use {' or '.join(allowed)}")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    encoding = (_header(scope, b"content-encoding") or "identity").strip().lower()
    if encoding != "identity":  # never inflated here: a 10 MB gzip body can stand for gigabytes
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body has {int(declared)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, content_type: bytes,
                extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


def _version() -> str:
    from . import __version__

    return __version__


def create_app() -> ScoringApp:
    """uvicorn factory: settings come from MODELPILOT_* variables (set by the CLI for its workers)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return ScoringApp(ServeSettings.from_env())


__all__ = ["ScoringApp", "create_app"]


#: Paths every caller may reach whatever the auth mode: the kubelet's probes and Prometheus.
OPEN_PATHS = frozenset({"/ping", "/health", "/metrics", "/v2/health/live", "/v2/health/ready"})


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path.rstrip("/") in OPEN_PATHS
