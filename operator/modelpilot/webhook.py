"""MLflow registry webhooks: an alias moved → its followers hear of it in seconds, not at the next refresh.

MLflow (3.3+) POSTs `model_version_alias.created` / `.deleted` events signed with HMAC-SHA256 over
`<delivery id>.<timestamp>.<body>` (`X-MLflow-Signature: v1,<base64>`, `X-MLflow-Timestamp`,
`X-MLflow-Delivery-Id`). This endpoint checks the signature in constant time and the timestamp's
freshness, drops replays, and then only *expedites*: every followed registry question about that
model is asked again at once by the refresher, which enqueues the followers if the answer changed.
So a webhook never carries a version into a Deployment (the registry stays the source of truth: a
lost webhook only delays to the next refresh, a forged one costs one registry call), and a flood is
bounded twice: a token bucket answers 429 past its rate, and each model is expedited at most once a
second.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import Counter

log = logging.getLogger(__name__)

WEBHOOKS = Counter("modelpilot_webhooks_total", "MLflow webhooks received, by result", ["result"])
PATH = "/webhooks/mlflow"
MAX_BODY = 64 * 1024
#: A delivery whose timestamp is further than this from our clock is refused (replays, stale retries).
TOLERANCE_SECONDS = 300
EVENTS = {("model_version_alias", "created"), ("model_version_alias", "deleted")}


@dataclass(frozen=True)
class Verdict:
    status: int
    result: str
    model: str | None = None


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class Receiver:
    """Decides about one delivery (pure but for its replay memory, rate bucket and clock)."""

    def __init__(self, secret: str, expedite: Callable[[str], int], rate: float = 20.0, burst: int = 50,
                 clock: Callable[[], float] = time.time, leading: Callable[[], bool] = lambda: True) -> None:
        self.secret = secret
        self.expedite = expedite
        self.leading = leading
        self.rate, self.burst = rate, burst
        self.clock = clock
        self._tokens = float(burst)
        self._filled_at = clock()
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._expedited: dict[str, float] = {}
        self._lock = threading.Lock()

    def _take_token(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._filled_at) * self.rate)
        self._filled_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def receive(self, headers: dict[str, str], body: bytes) -> Verdict:
        now = self.clock()
        if not self.leading():
            # a standby follows nothing: MLflow retries 503s, and the Service may pick the leader next
            return Verdict(503, "standby")
        with self._lock:
            if len(body) > MAX_BODY:
                return Verdict(413, "malformed")
            delivery = headers.get("x-mlflow-delivery-id", "")
            stamp = headers.get("x-mlflow-timestamp", "")
            sent = headers.get("x-mlflow-signature", "")
            if not delivery or not stamp.isdigit() or not sent:
                return Verdict(401, "unsigned")
            if not hmac.compare_digest(sent.encode(), signature(self.secret, delivery, stamp, body).encode()):
                return Verdict(401, "bad_signature")
            if abs(now - int(stamp)) > TOLERANCE_SECONDS:
                return Verdict(400, "stale")
            if not self._take_token(now):  # only signed deliveries count: strangers cannot drain it
                return Verdict(429, "rate_limited")
            if delivery in self._seen:
                return Verdict(200, "replayed")
            self._seen[delivery] = now
            forget_before = now - 2 * TOLERANCE_SECONDS
            while len(self._seen) > 10_000 or (self._seen and next(iter(self._seen.values())) < forget_before):
                self._seen.popitem(last=False)
        try:
            event = json.loads(body)
            entity, action, data = event["entity"], event["action"], event["data"]
            model = data["name"]
            if not isinstance(model, str) or not model:
                raise ValueError("no model name")
        except (ValueError, KeyError, TypeError):
            return Verdict(400, "malformed")
        if (entity, action) not in EVENTS:
            return Verdict(200, "ignored")
        with self._lock:
            if now - self._expedited.get(model, 0.0) < 1.0:
                return Verdict(202, "coalesced", model)
            self._expedited[model] = now
            if len(self._expedited) > 10_000:
                self._expedited = {m: t for m, t in self._expedited.items() if now - t < 60}
        self.expedite(model)
        return Verdict(202, "accepted", model)


class WebhookServer:
    """The receiver behind an aiohttp server on a thread of its own (kopf's loop answers probes)."""

    def __init__(self, receiver: Receiver, port: int, host: str = "0.0.0.0") -> None:
        self.receiver = receiver
        self.port, self.host = port, host
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.content.read(MAX_BODY + 1)
        verdict = self.receiver.receive({k.lower(): v for k, v in request.headers.items()}, body)
        WEBHOOKS.labels(result=verdict.result).inc()
        if verdict.status >= 400:
            log.warning("Refused an MLflow webhook from %s: %s", request.remote, verdict.result)
        elif verdict.result == "accepted":
            log.info("MLflow webhook: model %s changed aliases; refreshing who follows it", verdict.model)
        return web.json_response({"result": verdict.result}, status=verdict.status)

    def start(self) -> None:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=MAX_BODY)
            app.router.add_post(PATH, self._handle)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, self.host, self.port).start())
            self._started.set()
            loop.run_forever()

        threading.Thread(target=run, name="webhooks", daemon=True).start()
        self._started.wait(10)
        log.info("Listening for MLflow webhooks on port %d at %s", self.port, PATH)
