"""Compute a ModelDeployment's status from what the reconcile observed. Pure: time is passed in.

Conditions follow the Kubernetes API conventions: a list keyed by `type`, `status` True/False/Unknown,
a CamelCase `reason`, a sentence in `message`, `lastTransitionTime` that only moves when `status`
changes, and `observedGeneration`. `Ready` summarises the others, so a person (or Argo CD's health
check) can read one condition.

One pure function, `build_status`, makes the whole status and the events that go with it from what
one reconcile observed and decided; the reconcile writes the result once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .autoscaling import autoscaling_status
from .canary import Verdict
from .children import Applied
from .driftcheck import DRIFTING, drift_condition
from .names import Owner, selector_labels
from .observe import ChildKey, Problem, Rollout, autoscaler_key, deployment_key, scaled_object_key
from .plan import Decision
from .registry import ResolvedModel
from .spec import Analysis, CanarySpec
from .thresholds import LATENCY_WITHIN_THRESHOLD, latency_condition

READY = "Ready"
MODEL_RESOLVED = "ModelResolved"
AVAILABLE = "Available"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
STALE = "Stale"
#: Ready comes last: it is computed from the others and summarises them.
CONDITION_ORDER = (MODEL_RESOLVED, AVAILABLE, PROGRESSING, DEGRADED, READY, STALE, LATENCY_WITHIN_THRESHOLD,
                   DRIFTING)
#: A Degraded reason that does not make Ready False: the rollback is done and stable serves as it should.
SETTLED_DEGRADATIONS = ("RolledBack",)

Event = tuple[str, str, str]  # (type, reason, message)


def condition(type_: str, ok: bool | None, reason: str, message: str) -> dict[str, Any]:
    status = "Unknown" if ok is None else "True" if ok else "False"
    return {"type": type_, "status": status, "reason": reason, "message": message}


def merge_conditions(
    previous: list[dict[str, Any]] | None,
    current: list[dict[str, Any]],
    now: str,
    generation: int,
) -> list[dict[str, Any]]:
    """Stamp `observedGeneration` and keep `lastTransitionTime` unless the status flipped."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for cond in current:
        old = before.get(cond["type"])
        changed = old is None or old.get("status") != cond["status"]
        stamped = dict(cond)
        stamped["observedGeneration"] = generation
        stamped["lastTransitionTime"] = now if changed else old.get("lastTransitionTime", now)  # type: ignore[union-attr]
        out.append(stamped)
    return out


@dataclass(frozen=True)
class Facts:
    """What one reconcile observed and decided: everything the status is built from."""

    owner: Owner
    generation: int
    old: dict[str, Any]
    now: str
    url: str
    model_uri: str = ""
    #: The spec cannot be acted upon (the message names the field).
    spec_error: str | None = None
    canary_spec: CanarySpec | None = None
    #: Resolving spec.model.uri failed (the last resolved version may still serve).
    problem: Problem | None = None
    #: An answer from the registry is awaited; the previous ModelResolved condition stands.
    pending: bool = False
    canary_problem: Problem | None = None
    #: What made the operator ask for the stable answer: "lookup" (a reconcile), "poll" or "webhook".
    resolved_via: str = "lookup"
    decision: Decision | None = None
    applied: Applied | None = None
    #: spec.monitoring.maxModelAge in seconds (None: staleness is not watched).
    max_model_age: float | None = None
    #: The registry's newest version of the model, when staleness is watched and the registry said.
    newest: ResolvedModel | None = None
    #: spec.monitoring.latency and the latest judgement of the served version against it.
    latency: Analysis | None = None
    latency_verdict: Verdict | None = None
    #: Whether spec.monitoring.drift is set, and the latest judgement of the served version's drift.
    drift: bool = False
    drift_verdict: Verdict | None = None
    #: (the autoscaling engine in effect, why it is not the one asked for); (None, None) without autoscaling.
    autoscaling: tuple[str | None, str | None] = (None, None)


@dataclass(frozen=True)
class Report:
    status: dict[str, Any]
    events: list[Event]


def build_status(f: Facts) -> Report:
    if f.spec_error is not None:
        conds = [condition(MODEL_RESOLVED, False, "InvalidSpec", f.spec_error),
                 condition(DEGRADED, True, "InvalidSpec", f.spec_error),
                 condition(READY, False, "InvalidSpec", f.spec_error)]
        conditions = merge_conditions(f.old.get("conditions"), conds, f.now, f.generation)
        return Report({"observedGeneration": f.generation, "conditions": conditions},
                      _condition_events(f.old, conditions))
    assert f.decision is not None and f.applied is not None
    plan = f.decision.rollout
    blocked = _blocked(f.applied)
    dep = f.applied.objects.get(deployment_key(f.owner))
    rollout = Rollout.from_deployment(dep if f.owner.controls(dep) else None)
    old_model: dict[str, Any] = f.old.get("model") or {}
    previous_version = old_model.get("version")
    deployed = plan.stable if blocked is None else None
    serving = deployed or (ResolvedModel.from_status(old_model) if rollout.exists and previous_version else None)

    by_type = {c["type"]: c for c in compute_conditions(serving, f.problem, rollout, previous_version)}
    if f.pending:
        old_resolved = next((c for c in f.old.get("conditions") or [] if c.get("type") == MODEL_RESOLVED), None)
        if old_resolved is not None:
            by_type[MODEL_RESOLVED] = {k: old_resolved[k] for k in ("type", "status", "reason", "message")}
    _canary_conditions(by_type, f.canary_spec, f.decision, f.canary_problem)
    if blocked is not None:
        by_type[DEGRADED] = condition(DEGRADED, True, blocked.reason, blocked.message)
    by_type[READY] = _ready(by_type, rollout, serving, previous_version, blocked)
    if f.max_model_age is not None:
        by_type[STALE] = stale_condition(serving, f.max_model_age, f.now, f.newest)
    held = {c.get("type"): c for c in f.old.get("conditions") or []}
    if f.latency is not None:
        by_type[LATENCY_WITHIN_THRESHOLD] = condition(LATENCY_WITHIN_THRESHOLD, *latency_condition(
            f.latency_verdict, f.latency, held.get(LATENCY_WITHIN_THRESHOLD) or {}))
    if f.drift:
        by_type[DRIFTING] = condition(DRIFTING, *drift_condition(f.drift_verdict, held.get(DRIFTING) or {}))
    conditions = merge_conditions(f.old.get("conditions"), [by_type[t] for t in CONDITION_ORDER if t in by_type],
                                  f.now, f.generation)

    status: dict[str, Any] = {
        "observedGeneration": f.generation,
        "conditions": conditions,
        "replicas": rollout.replicas,
        "readyReplicas": rollout.ready,
        "updatedReplicas": rollout.updated,
        "selector": ",".join(f"{k}={v}" for k, v in selector_labels(f.owner).items()),
        "url": f.url,
    }
    children = f.applied.objects

    def ours(key: ChildKey) -> dict[str, Any] | None:
        obj = children.get(key)
        return obj if f.owner.controls(obj) else None

    engine, why = f.autoscaling
    status["autoscaling"] = autoscaling_status(engine, ours(autoscaler_key(f.owner)),
                                               ours(scaled_object_key(f.owner)), ours(deployment_key(f.owner)), why)
    events: list[Event] = []
    if blocked is None:
        status["canary"] = f.decision.canary_status.to_status() if f.decision.canary_status else None
        status["rejected"] = plan.rejected
        if plan.finished is not None:
            status["lastRollout"] = plan.finished
        events += plan.events
    if deployed is not None:
        status["model"] = _model_status(f, deployed, old_model, rollout)
        change = f.old.get("lastVersionChange")
        if previous_version and previous_version != deployed.version:
            change = {"from": previous_version, "to": deployed.version, "time": f.now}
            events.insert(0, ("Normal", "VersionChanged", f"{f.model_uri} moved from version {previous_version} "
                                                           f"to {deployed.version}; rolling out"))
        elif not previous_version:
            events.insert(0, ("Normal", "Resolved",
                              f"Resolved {f.model_uri} to {deployed.name} version {deployed.version}"))
        if change:
            status["lastVersionChange"] = change
        if rollout.complete and rollout.template_version == deployed.version:
            status["knownGoodVersion"] = deployed.version
    return Report(status, events + _condition_events(f.old, conditions))


def _model_status(f: Facts, deployed: ResolvedModel, old: dict[str, Any], rollout: Rollout) -> dict[str, Any]:
    """status.model, with when this version was resolved and what made the operator ask, and since when it
    serves (every pod on it); each kept while the version stays, so a refresh that finds nothing new writes
    nothing."""
    assert f.decision is not None
    model = deployed.to_status(f.decision.stable_from)
    if old.get("version") == deployed.version and old.get("servingSince"):
        model["servingSince"] = old["servingSince"]
    elif rollout.complete and rollout.template_version == deployed.version:
        model["servingSince"] = f.now
    if old.get("version") == deployed.version and old.get("uri") == model["uri"] and old.get("resolvedAt"):
        model["resolvedAt"], model["resolvedBy"] = old["resolvedAt"], old.get("resolvedBy", "poll")
    else:
        model["resolvedAt"] = f.now
        first = not old.get("version") or old.get("uri") != model["uri"]
        model["resolvedBy"] = "spec" if first else "webhook" if f.resolved_via == "webhook" else "poll"
    return model


def _blocked(applied: Applied) -> Problem | None:
    """Why nothing (or not everything) could be written to the children."""
    if applied.conflicts:
        names = ", ".join(applied.conflicts)
        return Problem("NameConflict", f"{names} already exists and is not controlled by this ModelDeployment; "
                       "nothing is changed until it is removed or this ModelDeployment is renamed")
    if applied.failure is not None:
        what, message = applied.failure
        return Problem("ApplyFailed", f"the API server refused {what}: {message}")
    return None


def compute_conditions(resolved: ResolvedModel | None, problem: Problem | None, rollout: Rollout,
                       previous_version: str | None = None) -> list[dict[str, Any]]:
    """The stable track's conditions, Ready included (before canary and write problems are added)."""
    by_type = {c["type"]: c for c in _base_conditions(resolved, problem, rollout, previous_version)}
    by_type[READY] = _ready(by_type, rollout, resolved, previous_version, None)
    return [by_type[t] for t in CONDITION_ORDER if t in by_type]


def _base_conditions(resolved: ResolvedModel | None, problem: Problem | None, rollout: Rollout,
                     previous_version: str | None) -> list[dict[str, Any]]:
    """ModelResolved, Available, Progressing and Degraded for the stable track."""
    conds: list[dict[str, Any]] = []
    if problem is None and resolved is not None:
        conds.append(condition(MODEL_RESOLVED, True, "Resolved", f"resolved to {resolved.name} version "
                               f"{resolved.version}"))
    elif problem is not None:
        keep = (f"; still serving the last resolved version {resolved.version}" if resolved else
                "; nothing deployed until it resolves")
        conds.append(condition(MODEL_RESOLVED, False, problem.reason, problem.message + keep))
    else:
        conds.append(condition(MODEL_RESOLVED, None, "Resolving", "resolving the model URI"))

    if not rollout.exists:
        conds.append(condition(AVAILABLE, False, "NotDeployed", "no serving Deployment exists yet"))
    elif rollout.desired == 0:
        conds.append(condition(AVAILABLE, True, "ScaledToZero", "spec.replicas is 0"))
    elif rollout.available >= 1:
        conds.append(condition(AVAILABLE, True, "MinimumReplicasAvailable",
                               f"{rollout.ready}/{rollout.desired} replicas ready"))
    else:
        conds.append(condition(AVAILABLE, False, "NoReplicasReady", f"0/{rollout.desired} replicas ready"))

    version = resolved.version if resolved else "?"
    if rollout.exists and rollout.failure:
        conds.append(condition(PROGRESSING, False, "RolloutFailed", rollout.failure))
    elif rollout.exists and not rollout.complete:
        conds.append(condition(PROGRESSING, True, "RollingOut", _rolling(rollout, version, previous_version)))
    elif rollout.exists:
        conds.append(condition(PROGRESSING, False, "RolloutComplete", f"all {rollout.desired} replicas run "
                               f"version {version}"))
    else:
        conds.append(condition(PROGRESSING, False, "NotDeployed", "nothing to roll out yet"))

    if problem is not None:
        conds.append(condition(DEGRADED, True, problem.reason, problem.message))
    elif rollout.failure:
        conds.append(condition(DEGRADED, True, "RolloutFailed", rollout.failure))
    else:
        conds.append(condition(DEGRADED, False, "AsExpected", "no problem detected"))
    return conds


def _rolling(rollout: Rollout, version: str, previous_version: str | None) -> str:
    moving = (f"rolling out version {version} (from {previous_version})"
              if previous_version and previous_version != version else f"rolling out version {version}")
    return f"{moving}: {rollout.updated}/{rollout.desired} updated, {rollout.ready} ready"


def _canary_conditions(by_type: dict[str, dict[str, Any]], canary_spec: CanarySpec | None, decision: Decision,
                       canary_problem: Problem | None) -> None:
    """Progressing while a progressive rollout runs; Degraded after a rollback or when the canary can't run."""
    canary_status = decision.canary_status
    if canary_status is not None and canary_spec is not None and canary_spec.progressive:
        by_type[PROGRESSING] = condition(PROGRESSING, True, "CanaryRollout",
                                         f"canary version {canary_status.version}: {canary_status.message}")
    if canary_spec is None or by_type[DEGRADED]["status"] == "True":
        return
    rejected = decision.rollout.rejected
    if decision.router_problem:
        by_type[DEGRADED] = condition(DEGRADED, True, "TrafficRouterUnavailable", decision.router_problem)
    elif canary_problem is not None:
        by_type[DEGRADED] = condition(DEGRADED, True, canary_problem.reason,
                                      f"spec.canary.model.uri: {canary_problem.message}")
    elif rejected:
        by_type[DEGRADED] = condition(DEGRADED, True, "RolledBack",
                                      f"version {rejected.get('version')} was rolled back ({rejected.get('reason')}); "
                                      "stable keeps serving until the candidate moves to another version")


def _ready(by_type: dict[str, dict[str, Any]], rollout: Rollout, serving: ResolvedModel | None,
           previous_version: str | None, blocked: Problem | None) -> dict[str, Any]:
    """Ready, from the other conditions: True only when the stable track serves as the spec asks."""
    if blocked is not None:
        return condition(READY, False, blocked.reason, blocked.message)
    resolved, degraded = by_type[MODEL_RESOLVED], by_type[DEGRADED]
    if resolved["status"] == "False":
        return condition(READY, False, resolved["reason"], resolved["message"])
    if degraded["status"] == "True" and degraded["reason"] not in SETTLED_DEGRADATIONS:
        return condition(READY, False, degraded["reason"], degraded["message"])
    if not rollout.exists:
        if resolved["status"] == "Unknown":
            return condition(READY, False, "Resolving", "resolving the model URI")
        return condition(READY, False, "NotDeployed", "the serving Deployment is being created")
    version = serving.version if serving else "?"
    if not rollout.complete:
        return condition(READY, False, "RollingOut", _rolling(rollout, version, previous_version))
    return condition(READY, True, "Serving", f"serving version {version} with {rollout.ready}/{rollout.desired} "
                     "replicas ready")


def model_age(version: ResolvedModel, now: str) -> float | None:
    """Seconds from a version's registration to `now` (RFC 3339), None when unknown."""
    registered = version.registered_epoch
    return None if registered is None else datetime.fromisoformat(now.replace("Z", "+00:00")).timestamp() - registered


def stale_condition(serving: ResolvedModel | None, max_age: float, now: str,
                    newest: ResolvedModel | None = None) -> dict[str, Any]:
    """Stale=True when the served version was registered longer than `max_age` ago; the reason says
    NewerVersionNotServed when the registry has held a newer version for that long too (promote it)."""
    limit = format_age(max_age)
    if serving is None:
        return condition(STALE, None, "NotServing", "no version serves yet")
    age = model_age(serving, now)
    if age is None:
        return condition(STALE, None, "RegistrationTimeUnknown",
                         f"the registry did not say when version {serving.version} was registered")
    # (no age in the messages: they would change, and be written, on every reconcile)
    if age > max_age:
        served = (f"version {serving.version} was registered at {serving.registered_at}, longer ago than "
                  f"spec.monitoring.maxModelAge ({limit})")
        newer = _later(newest, serving)
        newer_age = model_age(newer, now) if newer is not None else None
        if newer is not None and newer_age is not None and newer_age > max_age:
            return condition(STALE, True, "NewerVersionNotServed",
                             f"{served}, and the registry has held version {newer.version} (registered at "
                             f"{newer.registered_at}) that long too: promote it")
        if newer is not None:
            return condition(STALE, True, "ModelOlderThanMaxAge",
                             f"{served}: promote version {newer.version} (registered at {newer.registered_at}) "
                             "or a newer one")
        return condition(STALE, True, "ModelOlderThanMaxAge", f"{served}: register and promote a newer one")
    return condition(STALE, False, "WithinMaxAge",
                     f"version {serving.version} was registered at {serving.registered_at}; it turns stale "
                     f"{limit} after that")


def _later(newest: ResolvedModel | None, serving: ResolvedModel) -> ResolvedModel | None:
    """`newest` when it is a later version than `serving`."""
    if newest is None or not (newest.version.isdigit() and serving.version.isdigit()):
        return None
    return newest if int(newest.version) > int(serving.version) else None


def format_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}".rstrip("0").rstrip(".") + unit
    return f"{max(seconds, 0):.0f}s"


_OPPOSITE = {"True": "False", "False": "True"}


def _condition_events(old: dict[str, Any], conditions: list[dict[str, Any]]) -> list[Event]:
    """A Warning when resolution starts failing (or fails differently), Normal when it recovers, and a
    Warning when Ready turns to a conflict or a refused write (again when the message changes)."""
    events: list[Event] = []
    before = {c.get("type"): c for c in old.get("conditions") or []}
    after = {c["type"]: c for c in conditions}
    # (condition, the status that is bad news, what else re-announces it, the Normal reason when it clears)
    for type_, bad, again, recovered in ((MODEL_RESOLVED, "False", "reason", "Recovered"),
                                         (LATENCY_WITHIN_THRESHOLD, "False", None, "LatencyRecovered"),
                                         (DRIFTING, "True", "reason", "DriftRecovered"),
                                         (STALE, "True", "message", None)):
        was, now = before.get(type_) or {}, after.get(type_)
        if now is None:
            continue
        if now["status"] == bad and (was.get("status") != bad or (again and was.get(again) != now[again])):
            events.append(("Warning", now["reason"], now["message"]))
        elif recovered and now["status"] == _OPPOSITE[bad] and was.get("status") == bad:
            events.append(("Normal", recovered, now["message"]))
    was, now = before.get(READY) or {}, after.get(READY)
    if now is not None and now["reason"] in ("NameConflict", "ApplyFailed") and (
            was.get("reason") != now["reason"] or was.get("message") != now["message"]):
        events.append(("Warning", now["reason"], now["message"]))
    return events
