"""Kopf wiring: watch events only enqueue work; the reconcile does everything.

Only `on.event` handlers are used. They are stateless in kopf: no finalizers, no
`last-handled-configuration` annotation, no progress annotations on the user's object, so the
operator never writes to anything but `status` and its own children (Argo CD stays in sync).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from . import metrics
from .cache import CHILDREN, WATCHED, Cache
from .config import Settings
from .events import EventRecorder
from .kube import Kube, KubeError
from .leader import LeaderElector, LeaseConfig, own_namespace
from .names import API_VERSION, GROUP, KIND, LABEL_DEPLOYMENT, MANAGED_BY, PLURAL, VERSION
from .reconciler import Reconciler
from .resolver import Key
from .webhook import Receiver, WebhookServer
from .workqueue import Stalled, WorkQueue, error_backoff

#: Liveness fails when work has been overdue this long and no reconcile finished meanwhile.
STALL_SECONDS = 120.0

log = logging.getLogger(__name__)


MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}


class _State:
    cache: Cache | None = None
    queue: WorkQueue[Key] | None = None
    reconciler: Reconciler | None = None
    events: EventRecorder | None = None
    task: asyncio.Task[None] | None = None
    elector: LeaderElector | None = None
    election: asyncio.Task[None] | None = None


state = _State()


def _reconcile(key: Key) -> float | None:
    assert state.reconciler is not None
    with metrics.RECONCILE_SECONDS.time():
        try:
            result = state.reconciler.reconcile(*key)
        except Exception as exc:
            if isinstance(exc, KubeError) and (exc.status == 404 or "being terminated" in exc.message):
                # the namespace is going away with everything in it: nothing left to converge
                log.info("Skipping %s/%s: %s", *key, exc.message)
                metrics.RECONCILES.labels(result="skipped").inc()
                return None
            metrics.RECONCILES.labels(result="error").inc()
            raise
    metrics.RECONCILES.labels(result="ok").inc()
    log.debug("Reconciled %s/%s (next look in %s)", *key, "never" if result is None else f"{result:.1f}s")
    return result


def _enqueue(key: Key, urgent: bool = False) -> None:
    if state.queue is not None:
        state.queue.add(key, urgent=urgent)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    config = Settings.from_env()
    settings.posting.enabled = False  # our own Events are written by the reconcile, with reasons
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    for group, version, plural, *_kind in CHILDREN:
        # filtered by the API server: other teams' Deployments and Services never reach this process
        settings.watching.label_selectors[group, version, plural] = "app.kubernetes.io/managed-by=" + MANAGED_BY
    kube = Kube.from_environment()
    state.cache = Cache(kube, WATCHED)
    state.queue = WorkQueue(_reconcile, workers=config.reconcile_workers,
                            error_delay=lambda _k, n: error_backoff(config.retry_base_seconds, n))
    # a registry answer that moved a version (or a canary analysis result) goes ahead of child events
    work = state.queue
    state.events = events = EventRecorder(kube).start()  # Events off the reconcile's path
    state.reconciler = Reconciler(kube, config, enqueue=lambda key: work.add_threadsafe(key, urgent=True),
                                  cache=state.cache, events=events)
    metrics.QUEUE_DEPTH.set_function(lambda: len(work))
    metrics.EVENTS_PENDING.set_function(events.pending)
    metrics.QUEUE_OLDEST.set_function(work.oldest_wait)
    state.reconciler.outbound.start()
    state.reconciler.resolver.start_refresher()
    if config.webhook_port:
        if not config.webhook_secret:
            raise kopf.PermanentError("MODELPILOT_WEBHOOK_PORT needs MODELPILOT_WEBHOOK_SECRET (MLflow's HMAC secret)")
        resolver, queue = state.reconciler.resolver, state.queue
        WebhookServer(Receiver(config.webhook_secret, resolver.expedite, leading=lambda: queue.active),
                      config.webhook_port).start()
    if config.leader_election:
        namespace = config.leader_election_namespace or own_namespace()
        if not namespace:
            raise kopf.PermanentError("leader election needs MODELPILOT_LEADER_ELECTION_NAMESPACE or POD_NAMESPACE")
        state.queue.active = False  # a standby until the lease is ours
        metrics.LEADER.set(0)
        state.elector = LeaderElector(
            Kube(kube.cfg, user_agent="modelpilot-leader-election", counted=False),
            LeaseConfig(namespace, config.leader_election_id, lease_duration=config.lease_duration_seconds,
                        renew_deadline=config.renew_deadline_seconds, retry_period=config.retry_period_seconds),
            on_started=state.queue.activate)
        state.election = asyncio.create_task(state.elector.run())
    else:
        metrics.LEADER.set(1)
    state.task = asyncio.create_task(state.queue.run())
    log.info("modelpilot operator started (default tracking URI: %s)",
             config.default_tracking_uri or "none")


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if state.election is not None:
        state.election.cancel()
    if state.task is not None:
        state.task.cancel()
    if state.queue is not None:
        state.queue.shutdown()
    if state.reconciler is not None:
        state.reconciler.resolver.stop_refresher()
        state.reconciler.outbound.stop()
    if state.elector is not None:
        await asyncio.to_thread(state.elector.release)  # first: the standby need not wait for the Events
    if state.events is not None:
        await asyncio.to_thread(state.events.stop)


# Index handlers fill the cache: kopf runs them for every object of the initial listings and holds
# every other handler back until all listings are in, so no reconcile reads a cache that is still
# filling (and mistakes a child not listed yet for a missing one). Deletions come through the
# event handlers, which run after them and only enqueue.
def _indexer(api_version: str, kind: str) -> Any:
    def index(body: kopf.Body, **_: Any) -> None:
        if state.cache is not None:
            state.cache.put(api_version, kind, dict(body))
    return index


def _news(api_version: str, kind: str, event: kopf.RawEvent) -> bool:
    """Record a watch event in the cache; False when it is only the echo of one of our own writes (the
    reconcile that wrote it saw the answer already: reconciling again would only find nothing to do)."""
    obj: Any = event.get("object")
    if state.cache is None or not isinstance(obj, dict):
        return True
    if event.get("type") == "DELETED":
        meta = obj.get("metadata") or {}
        state.cache.remove(api_version, kind, meta.get("namespace") or "", meta.get("name") or "")
        return True
    state.cache.put(api_version, kind, obj)  # the index handler put this version already: a lookup, no copy
    return not state.cache.echo(api_version, kind, obj)


kopf.index(GROUP, VERSION, PLURAL, id="cache-modeldeployments")(_indexer(API_VERSION, KIND))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def modeldeployment_event(event: kopf.RawEvent, name: str, namespace: str | None, **_: Any) -> None:
    if _news(API_VERSION, KIND, event) and namespace:
        _enqueue((namespace, name), urgent=True)  # created, edited or deleted by someone: ahead of child events


def _watch_child(group: str, version: str, plural: str, api_version: str, kind: str) -> None:
    async def child_event(event: kopf.RawEvent, labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
        owner = labels.get(LABEL_DEPLOYMENT)
        if _news(api_version, kind, event) and owner and namespace:
            _enqueue((namespace, owner))

    kopf.index(group, version, plural, labels=MANAGED, id=f"cache-{plural}")(_indexer(api_version, kind))
    kopf.on.event(group, version, plural, labels=MANAGED, id=f"enqueue-owner-of-{plural}")(child_event)


for _child in CHILDREN:
    _watch_child(*_child)


@kopf.on.probe(id="queue")
def queue_length(**_: Any) -> int:
    """Keys waiting or running; liveness fails (HTTP 500) when the queue makes no progress."""
    if state.queue is None:
        return 0
    try:
        state.queue.check_progress(STALL_SECONDS)
    except Stalled as exc:
        raise kopf.PermanentError(str(exc)) from None
    return len(state.queue)
