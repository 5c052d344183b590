"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does it.

Only the leader reconciles; a standby keeps its watches (so its queue is full when it takes over) and
answers its health checks. The lease is "expired" when its record has not changed for
`lease_duration` by *our* clock (we never compare our clock with the holder's timestamps, so clock
skew between nodes cannot make two leaders). A leader that cannot renew within `renew_deadline`
stops: the process exits, as controller-runtime's managers do, and comes back as a standby. On a
clean shutdown the leader releases the lease, so the standby takes over at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import metrics
from .kube import Kube, KubeError

log = logging.getLogger(__name__)

API = "coordination.k8s.io/v1"


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str = "modelpilot-leader"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def who(self) -> str:
        return self.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def desired_lease(current: dict[str, Any] | None, cfg: LeaseConfig, identity: str) -> dict[str, Any]:
    """The Lease we write to hold (or take) leadership. Pure but for the timestamp."""
    spec = dict((current or {}).get("spec") or {})
    now = _now_micro()
    if spec.get("holderIdentity") != identity:
        spec["acquireTime"] = now
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if current else 0)
    spec.update(holderIdentity=identity, renewTime=now, leaseDurationSeconds=max(1, round(cfg.lease_duration)))
    meta: dict[str, Any] = {"name": cfg.name, "namespace": cfg.namespace}
    if current:
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
    return {"apiVersion": API, "kind": "Lease", "metadata": meta, "spec": spec}


class LeaderElector:
    def __init__(self, kube: Kube, cfg: LeaseConfig, on_started: Callable[[], None],
                 on_lost: Callable[[], None] | None = None) -> None:
        self.kube = kube
        self.cfg = cfg
        self.identity = cfg.who()
        self.on_started = on_started
        self.on_lost = on_lost or _exit_lost
        self.leading = False
        #: The last lease record seen, and when (monotonic) we saw it change.
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._path = f"/apis/{API}/namespaces/{cfg.namespace}/leases"

    def _try(self) -> bool:
        """One attempt to acquire or renew; True when we hold the lease afterwards."""
        current = self.kube.request("GET", f"{self._path}/{self.cfg.name}")
        if current is not None:
            spec = current.get("spec") or {}
            record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseDurationSeconds"))
            now = time.monotonic()
            if record != self._observed:
                self._observed, self._observed_at = record, now
            holder = spec.get("holderIdentity") or ""
            duration = float(spec.get("leaseDurationSeconds") or self.cfg.lease_duration)
            if holder and holder != self.identity and now - self._observed_at < duration:
                return False  # someone else holds a lease that has not expired
        body = desired_lease(current, self.cfg, self.identity)
        try:
            if current is None:
                self.kube.request("POST", self._path, body)
            else:
                self.kube.request("PUT", f"{self._path}/{self.cfg.name}", body)
        except KubeError as exc:
            if exc.status in (409, 422):  # someone else wrote it first
                return False
            raise
        return True

    def release(self) -> None:
        """Give the lease up (on clean shutdown) so a standby takes over without waiting for expiry."""
        if not self.leading:
            return
        try:
            current = self.kube.request("GET", f"{self._path}/{self.cfg.name}")
            if current and (current.get("spec") or {}).get("holderIdentity") == self.identity:
                body = desired_lease(current, self.cfg, self.identity)
                body["spec"].update(holderIdentity="", leaseDurationSeconds=1)
                self.kube.request("PUT", f"{self._path}/{self.cfg.name}", body)
                log.info("Released the leader lease %s/%s", self.cfg.namespace, self.cfg.name)
        except Exception as exc:  # best effort: the lease expires anyway
            log.warning("Could not release the leader lease: %s", exc)
        self.leading = False

    async def run(self) -> None:
        log.info("Waiting for the leader lease %s/%s as %s", self.cfg.namespace, self.cfg.name, self.identity)
        last_renewed = time.monotonic()
        while True:
            try:
                ok = await asyncio.to_thread(self._try)
            except Exception as exc:
                log.warning("Leader election: %s", exc)
                ok = False
            now = time.monotonic()
            if ok:
                last_renewed = now
                if not self.leading:
                    self.leading = True
                    metrics.LEADER.set(1)
                    log.info("Became the leader (lease %s/%s, identity %s)", self.cfg.namespace, self.cfg.name,
                             self.identity)
                    self.on_started()
            elif self.leading and now - last_renewed > self.cfg.renew_deadline:
                self.leading = False
                metrics.LEADER.set(0)
                log.error("Lost the leader lease (not renewed for %.0fs): stopping", now - last_renewed)
                self.on_lost()
                return
            await asyncio.sleep(self.cfg.retry_period)


def _exit_lost() -> None:
    # Like controller-runtime: a former leader must not keep reconciling; the pod restarts as a standby.
    sys.stderr.flush()
    os._exit(1)


def own_namespace() -> str:
    """The namespace this pod runs in (downward API variable, else the service account's), or ''."""
    ns = os.environ.get("POD_NAMESPACE", "")
    if ns:
        return ns
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip()
    except OSError:
        return ""
