"""Apply: the only writes to children, under one rule — never touch what is not ours.

A child is ours when its controller ownerReference carries our uid. An object of another owner (or
of none) under a name we need is a conflict: it is reported, and nothing at all is written until it
is gone. Unwanted children are deleted only when they are ours. An object that already holds every
field we would apply is not written (no request, no resourceVersion change).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from .desired import Desired
from .kube import KubeError
from .names import ANNOTATION_APPLIED
from .observe import ChildKey, World, describe

log = logging.getLogger(__name__)


class Writer(Protocol):
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]: ...

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool: ...


@dataclass(frozen=True)
class Applied:
    #: Children as they are after the writes (what status reads from).
    objects: dict[ChildKey, dict[str, Any] | None]
    #: Objects in the way: (kind name) texts; when set, nothing was written.
    conflicts: tuple[str, ...] = ()
    #: The first write the API server refused: (kind name, its message); later writes were not tried.
    failure: tuple[str, str] | None = None


def contains(live: Any, wanted: Any) -> bool:
    """Whether `live` already holds every field of `wanted` (server-side defaults may add more)."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (isinstance(live, list) and len(live) == len(wanted)
                and all(contains(a, b) for a, b in zip(live, wanted, strict=True)))
    return bool(live == wanted)


def stamped(wanted: dict[str, Any]) -> dict[str, Any]:
    """`wanted` with a digest of itself in an annotation: a field dropped from the render changes the
    digest, so it is applied (and removed) although the live object still "contains" the rest."""
    digest = hashlib.sha256(json.dumps(wanted, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    meta = wanted["metadata"]
    return {**wanted, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}),
                                                           ANNOTATION_APPLIED: digest}}}


def _current(live: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """The live object holds what we would apply, and what we applied last is what we would apply now."""
    return contains(live.get("metadata"), wanted["metadata"]) and all(
        contains(live.get(k), v) for k, v in wanted.items() if k not in ("apiVersion", "kind", "metadata"))


def apply_children(writer: Writer, world: World, desired: Desired, field_manager: str) -> Applied:
    objects = dict(world.objects)
    namespace = world.owner.namespace
    for key in desired.objects:
        if objects.get(key) is None:
            # the world may come from label-selected watches, which never show someone else's object
            # under this name: ask the API server before creating anything
            objects[key] = writer.get(key[0], key[1], namespace, key[2])
    in_the_way = World(world.owner, objects, world.gateway_api).foreign(list(desired.objects))
    if in_the_way:
        return Applied(objects, tuple(describe(k) for k in in_the_way))
    for key, unstamped in desired.objects.items():
        wanted = stamped(unstamped)
        live = objects.get(key)
        if live is not None and _current(live, wanted):
            continue
        try:
            objects[key] = writer.apply(wanted, field_manager)
        except KubeError as exc:
            if exc.status in (401, 429) or exc.status >= 500:
                raise  # the API server's own trouble: retried with backoff, nothing to tell the tenant
            log.warning("Applying %s in %s failed: %s", describe(key), namespace, exc.message)
            return Applied(objects, failure=(describe(key), exc.message))
        log.info("%s %s/%s", "Updated" if live is not None else "Created", namespace, f"{key[1]} {key[2]}")
    for key, fields in desired.handover.items():
        if world.owner.controls(objects.get(key)):  # co-owns these fields, so our own apply may drop them
            objects[key] = writer.apply(fields, field_manager + "-handover")
    for key in desired.unwanted:
        if world.owned(key) is None:
            continue  # absent, or someone else's: not ours to delete
        writer.delete(key[0], key[1], namespace, key[2])
        objects[key] = None
        log.info("Deleted %s/%s", namespace, describe(key))
    return Applied(objects)
