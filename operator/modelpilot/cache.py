"""The watch streams' state: reads that cost no API request.

kopf already holds a watch on ModelDeployments and (selected by label on the server) on the children
the operator creates; every event it delivers is put here before the owner is enqueued, so the
reconcile reads the ModelDeployment and its children from memory instead of GETting each of them.
The cache is fed by the watches and by our own writes (the object the API server answered with), and
may lag behind the API server by an event; the reconcile is level-based, so a late event only means
one more reconcile. Objects are kept as compressed JSON (about 1 KB for a Deployment instead of ~15 KB
of Python dicts), so 5,000 ModelDeployments with their children fit in a few tens of MiB, and every
read hands out a fresh copy nobody else holds.

What a label-selected cache cannot know is whether *someone else's* object sits under a child's name
(it does not carry our label, so no watch delivers it). So absence here is never trusted for a write:
`apply_children` GETs a name before creating anything under it. Kinds that are not watched (and
anything not found here) are read from the API server.
"""

from __future__ import annotations

import json
import threading
import zlib
from typing import Any

from .names import API_VERSION, GATEWAY_API_VERSION, KIND
from .observe import Reader

#: (apiVersion, kind, namespace, name)
CacheKey = tuple[str, str, str, str]

#: The children's kinds the operator watches (selected on the server by its managed-by label) and caches:
#: (group, version, plural, apiVersion, kind).
CHILDREN = (
    ("apps", "v1", "deployments", "apps/v1", "Deployment"),
    ("", "v1", "services", "v1", "Service"),
    ("networking.k8s.io", "v1", "networkpolicies", "networking.k8s.io/v1", "NetworkPolicy"),
    ("policy", "v1", "poddisruptionbudgets", "policy/v1", "PodDisruptionBudget"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "autoscaling/v2", "HorizontalPodAutoscaler"),
    ("monitoring.coreos.com", "v1", "prometheusrules", "monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh", "v1alpha1", "scaledobjects", "keda.sh/v1alpha1", "ScaledObject"),
    ("gateway.networking.k8s.io", "v1", "httproutes", GATEWAY_API_VERSION, "HTTPRoute"),
)
#: (apiVersion, kind) of everything the watches deliver to the cache.
WATCHED = frozenset({(API_VERSION, KIND), *((c[3], c[4]) for c in CHILDREN)})


def _int(rv: str | None) -> int | None:
    try:
        return int(rv) if rv is not None else None
    except ValueError:  # resourceVersions are opaque to clients; etcd's are integers
        return None


class Cache:
    """A thread-safe map of the objects the watches delivered, with a fallback reader for misses."""

    def __init__(self, fallback: Reader, watched: frozenset[tuple[str, str]] = WATCHED) -> None:
        self.fallback = fallback
        #: (apiVersion, kind) whose objects the watches deliver.
        self.watched = frozenset(watched)
        #: key → (resourceVersion, zlib-compressed JSON of the object)
        self._objects: dict[CacheKey, tuple[str | None, bytes]] = {}
        #: resourceVersions our own writes produced, whose watch events are echoes (see `echo`).
        self._echoes: dict[CacheKey, str] = {}
        self._lock = threading.Lock()

    def put(self, api_version: str, kind: str, obj: dict[str, Any], ours: bool = False) -> None:
        """Record `obj` unless an object newer than it is already recorded (watch events and our own
        writes' answers race). `ours`: the API server's answer to our write (its event will be an echo)."""
        meta = obj.get("metadata") or {}
        if not meta.get("name") or (api_version, kind) not in self.watched:
            return
        key = (api_version, kind, meta.get("namespace") or "", meta["name"])
        rv = meta.get("resourceVersion")
        with self._lock:
            old = self._objects.get(key)
        if old is not None and rv is not None and rv == old[0]:
            return  # held already (a reconcile remembers every child it read, changed or not)
        meta = {k: v for k, v in meta.items() if k != "managedFields"}  # the largest part; never read
        slim = {**obj, "apiVersion": api_version, "kind": kind, "metadata": meta}
        blob = zlib.compress(json.dumps(slim, separators=(",", ":")).encode(), 1)
        with self._lock:
            old = self._objects.get(key)
            new_rv, old_rv = _int(rv), _int(old[0]) if old is not None else None
            if old is None or new_rv is None or old_rv is None or new_rv >= old_rv:
                self._objects[key] = (rv, blob)
            if ours and rv and (old is None or rv != old[0]):
                self._echoes[key] = rv

    def echo(self, api_version: str, kind: str, obj: dict[str, Any]) -> bool:
        """Whether a watch event carries exactly what one of our writes produced: the reconcile that
        wrote it has seen it already, so it needs no reconcile of its own."""
        meta = obj.get("metadata") or {}
        key = (api_version, kind, meta.get("namespace") or "", meta.get("name") or "")
        with self._lock:
            expected = self._echoes.get(key)
            if expected is None:
                return False
            if expected == meta.get("resourceVersion"):
                del self._echoes[key]
                return True
            rv = _int(meta.get("resourceVersion"))
            if rv is None or not expected.isdigit() or rv > int(expected):
                del self._echoes[key]  # a later change (or one we cannot order): our echo is past
            return False

    def remove(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((api_version, kind, namespace, name), None)
            self._echoes.pop((api_version, kind, namespace, name), None)

    def cached(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """What the watches say exists (None: absent, or not delivered yet)."""
        with self._lock:
            entry = self._objects.get((api_version, kind, namespace, name))
        return None if entry is None else dict(json.loads(zlib.decompress(entry[1])))

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object from memory; else from the API server (a kind not watched, or not delivered yet)."""
        obj = self.cached(api_version, kind, namespace, name)
        if obj is not None or ((api_version, kind) in self.watched and kind != KIND):
            # a watched child that is absent here is absent as far as reading goes; writes re-check
            return obj
        return self.fallback.get(api_version, kind, namespace, name)

    def held(self) -> list[CacheKey]:
        """The keys of every object held (a snapshot)."""
        with self._lock:
            return list(self._objects)
