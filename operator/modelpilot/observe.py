"""Observe: one read of every child a ModelDeployment may have, and who controls each.

Why a step of its own: the planner, the applier and the status builder must all reason about the same
snapshot; and the ownership rule (a child is ours only if its controller ownerReference carries our
uid) is decided here once, so no later step can mistake someone else's object for ours.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .names import (
    CANARY,
    GATEWAY_API_VERSION,
    STABLE,
    Owner,
    budget_name,
    deployment_name,
    pinned_version,
    policy_name,
    route_name,
    service_name,
    template_uri,
    track_service_name,
)

log = logging.getLogger(__name__)

#: (apiVersion, kind, name) of one child.
ChildKey = tuple[str, str, str]


class Reader(Protocol):
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...


def deployment_key(owner: Owner, track: str = STABLE) -> ChildKey:
    return ("apps/v1", "Deployment", deployment_name(owner, track))


def service_key(owner: Owner, track: str | None = None) -> ChildKey:
    return ("v1", "Service", service_name(owner) if track is None else track_service_name(owner, track))


def route_key(owner: Owner) -> ChildKey:
    return (GATEWAY_API_VERSION, "HTTPRoute", route_name(owner))


def policy_key(owner: Owner) -> ChildKey:
    return ("networking.k8s.io/v1", "NetworkPolicy", policy_name(owner))


def budget_key(owner: Owner) -> ChildKey:
    return ("policy/v1", "PodDisruptionBudget", budget_name(owner))


def autoscaler_key(owner: Owner) -> ChildKey:
    return ("autoscaling/v2", "HorizontalPodAutoscaler", owner.name)


#: The Prometheus Operator's API (PrometheusRule), where its CRDs are installed.
RULE_API_VERSION = "monitoring.coreos.com/v1"


def rule_key(owner: Owner) -> ChildKey:
    return (RULE_API_VERSION, "PrometheusRule", owner.name)


#: KEDA's API (ScaledObject), where its CRDs are installed.
KEDA_API_VERSION = "keda.sh/v1alpha1"


def scaled_object_key(owner: Owner) -> ChildKey:
    return (KEDA_API_VERSION, "ScaledObject", owner.name)


def child_keys(owner: Owner, gateway_api: bool, prometheus_rules: bool = False, keda: bool = False) -> list[ChildKey]:
    keys = [deployment_key(owner), deployment_key(owner, CANARY), service_key(owner), policy_key(owner),
            budget_key(owner), autoscaler_key(owner)]
    if gateway_api:
        keys += [service_key(owner, STABLE), service_key(owner, CANARY), route_key(owner)]
    if prometheus_rules:
        keys.append(rule_key(owner))
    if keda:
        keys.append(scaled_object_key(owner))
    return keys


def describe(key: ChildKey) -> str:
    return f"{key[1]} {key[2]}"


@dataclass(frozen=True)
class World:
    """What exists now under the names this ModelDeployment's children take."""

    owner: Owner
    objects: dict[ChildKey, dict[str, Any] | None]
    #: Whether the API server serves HTTPRoutes (the Gateway API CRDs are installed).
    gateway_api: bool
    #: Whether it serves PrometheusRules (the Prometheus Operator's CRDs are installed).
    prometheus_rules: bool = False
    #: Whether it serves KEDA's ScaledObjects.
    keda: bool = False

    def live(self, key: ChildKey) -> dict[str, Any] | None:
        """The object under `key`, whoever controls it."""
        return self.objects.get(key)

    def owned(self, key: ChildKey) -> dict[str, Any] | None:
        """The object under `key` if this ModelDeployment controls it, else None."""
        obj = self.objects.get(key)
        return obj if self.owner.controls(obj) else None

    def foreign(self, keys: list[ChildKey]) -> list[ChildKey]:
        """The keys under which an object exists that this ModelDeployment does not control."""
        return [k for k in keys if self.objects.get(k) is not None and not self.owner.controls(self.objects[k])]


def observe(reader: Reader, owner: Owner, gateway_api: bool, prometheus_rules: bool = False,
            keda: bool = False) -> World:
    objects = {key: reader.get(key[0], key[1], owner.namespace, key[2])
               for key in child_keys(owner, gateway_api, prometheus_rules, keda)}
    return World(owner, objects, gateway_api, prometheus_rules, keda)


@dataclass(frozen=True)
class Problem:
    """Why the spec could not be resolved or acted on."""

    reason: str
    message: str


@dataclass(frozen=True)
class Rollout:
    """What the stable Deployment reports (None fields when it does not exist yet)."""

    exists: bool = False
    desired: int = 0
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    available: int = 0
    #: The Deployment controller has seen our latest template.
    observed: bool = False
    #: Deployment condition Progressing=False/ProgressDeadlineExceeded or ReplicaFailure=True.
    failure: str | None = None
    #: The model version the pod template serves.
    template_version: str | None = None

    @classmethod
    def from_deployment(cls, deployment: dict[str, Any] | None) -> Rollout:
        if not deployment:
            return cls()
        spec = deployment.get("spec") or {}
        status = deployment.get("status") or {}
        generation = (deployment.get("metadata") or {}).get("generation", 0)
        failure = None
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                failure = cond.get("message") or "progress deadline exceeded"
            if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                failure = cond.get("message") or "replica failure"
        return cls(
            exists=True,
            desired=int(spec.get("replicas", 1)),
            replicas=int(status.get("replicas", 0)),
            ready=int(status.get("readyReplicas", 0)),
            updated=int(status.get("updatedReplicas", 0)),
            available=int(status.get("availableReplicas", 0)),
            observed=int(status.get("observedGeneration", 0)) >= int(generation),
            failure=failure,
            template_version=pinned_version(template_uri(deployment)),
        )

    @property
    def complete(self) -> bool:
        """Every replica runs the latest template and nothing old is left."""
        return (self.exists and self.observed and self.updated >= self.desired
                and self.replicas == self.updated and self.available >= self.desired)


class Discovery(Protocol):
    def serves(self, api_version: str, plural: str) -> bool: ...


class KindDiscovery:
    """Whether the API server serves a kind of an optional CRD, asked at most once a minute."""

    #: How long the answer is trusted.
    RECHECK_SECONDS = 60.0

    def __init__(self, discovery: Discovery, clock: Callable[[], float], api_version: str, plural: str) -> None:
        self.discovery = discovery
        self.clock = clock
        self.api_version, self.plural = api_version, plural
        self._answer: tuple[bool, float] | None = None

    def served(self) -> bool:
        now = self.clock()
        if self._answer is None or now - self._answer[1] > self.RECHECK_SECONDS:
            try:
                served = self.discovery.serves(self.api_version, self.plural)
            except Exception as exc:
                log.warning("Cannot tell whether %s %s are served: %s", self.api_version, self.plural, exc)
                served = False
            self._answer = (served, now)
        return self._answer[0]

