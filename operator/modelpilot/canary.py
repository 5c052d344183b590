"""Canary decisions, as pure functions: what should run, at which weight, and what to tell people.

Why pure: a rollout is a small state machine whose state lives in `status.canary` (so an operator
restart resumes at the same step) and whose transitions depend on time, readiness, the registry and
metrics. Keeping the transitions free of I/O lets the unit tests walk every path with a fake clock,
while the reconcile only gathers the observations, runs the analysis when `analysis_window` says one
is due, and applies the `Plan`.

Two modes:
- manual (`canary.model.uri` without steps): the canary URI's version runs beside stable at
  `canary.weight`; stable follows `spec.model.uri` directly.
- progressive (`canary.steps`): stable serves the last promoted version; a new version of the
  candidate URI (`canary.model.uri`, else `spec.model.uri`) starts as canary and walks the steps.
  Each step holds its weight for its pause, then the analysis decides: pass → next step, last step
  passed → promote, fail → roll back. Missing data never promotes: the rollout waits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .durations import format_duration
from .names import ANNOTATION_ABORT, ANNOTATION_PROMOTE
from .registry import ResolvedModel
from .spec import CanarySpec, DeploymentSpec

#: Phases of status.canary.phase.
STARTING = "Starting"  # canary pods starting; no traffic yet
RUNNING = "Running"  # holding a step's weight for its pause
WAITING = "WaitingForPromotion"  # a step without pause: waits for the promote annotation
INCONCLUSIVE = "Inconclusive"  # the analysis had no (or not enough) data: waiting, never promoting
PAUSED = "Paused"  # the registry cannot be asked: nothing moves
PROMOTING = "Promoting"  # stable is rolling to the canary's version
MANUAL = "Manual"  # a manual canary at a fixed weight

#: Verdict outcome while the analysis is still being asked (Prometheus has not answered yet).
PENDING = "pending"

#: How soon an inconclusive analysis or a paused rollout is looked at again (seconds, at most).
RETRY_SECONDS = 15.0


@dataclass(frozen=True)
class Verdict:
    """The outcome of one analysis."""

    outcome: str  # "pass" | "fail" | "inconclusive" | "pending"
    message: str
    values: dict[str, float | None] = field(default_factory=dict)

    def to_status(self, now: str) -> dict[str, Any]:
        out: dict[str, Any] = {"result": self.outcome, "message": self.message, "time": now}
        for key, value in self.values.items():
            if value is not None:
                out[key] = round(value, 6)
        return out


@dataclass(frozen=True)
class Observed:
    """What the reconcile saw, in the shape the planner needs."""

    #: What the stable track serves now (status.model); None before the first deployment.
    stable: ResolvedModel | None
    #: spec.model.uri resolved now; None when the registry failed.
    target: ResolvedModel | None
    #: The canary candidate resolved now (canary.model.uri, else spec.model.uri); None on failure.
    candidate: ResolvedModel | None
    #: status.canary and status.rejected as last written.
    previous: dict[str, Any]
    rejected: dict[str, Any]
    #: The canary Deployment has all its replicas ready / reported a failure.
    canary_ready: bool = False
    canary_failure: str | None = None
    #: The stable Deployment runs `version` on every replica.
    stable_version: str | None = None
    stable_complete: bool = False
    annotations: dict[str, str] = field(default_factory=dict)
    #: A reason the traffic split cannot be done (e.g. the Gateway API is not installed).
    router_problem: str | None = None


@dataclass
class Plan:
    #: The version the stable Deployment runs (None: leave it as it is / nothing yet).
    stable: ResolvedModel | None
    #: The version the canary Deployment runs (None: no canary Deployment).
    canary: ResolvedModel | None = None
    #: Percent of traffic the canary should receive (0 while it starts).
    weight: int = 0
    #: New status.canary (None: no canary) and status.rejected (None: none).
    status: dict[str, Any] | None = None
    rejected: dict[str, Any] | None = None
    #: A rollout ended: status.lastRollout.
    finished: dict[str, Any] | None = None
    #: (type, reason, message) Events to record.
    events: list[tuple[str, str, str]] = field(default_factory=list)
    #: Seconds until the planner wants to look again (None: no timer needed).
    requeue: float | None = None


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- traffic arithmetic ------------------------------------------------------------------------------
def split_replicas(total: int, weight: int) -> tuple[int, int]:
    """(stable, canary) replicas for a replica-ratio split of `total` at `weight` percent.

    The split's granularity is one pod: with N replicas the canary gets a multiple of 100/N percent,
    the nearest one to `weight`. A canary with any weight gets at least one pod and, below 100%,
    stable keeps at least one; so a single-replica deployment runs two pods (50%) while a canary runs.
    Scaled to zero stays at zero.
    """
    if total <= 0:
        return 0, 0
    if weight <= 0:
        return total, 0
    if weight >= 100:
        return 0, total
    if total == 1:
        return 1, 1
    canary = min(max(1, round(total * weight / 100)), total - 1)
    return total - canary, canary


def effective_weight(stable: int, canary: int) -> int:
    """The percentage of requests the canary really gets when a Service spreads them over all pods."""
    total = stable + canary
    return 0 if total == 0 else round(100 * canary / total)


def canary_replicas_for_route(total: int, weight: int) -> int:
    """Canary pods when a router splits requests: enough for its share, at least one."""
    return max(1, math.ceil(max(total, 1) * weight / 100))


# -- analysis timing ---------------------------------------------------------------------------------
def step_deadline(canary: CanarySpec, previous: dict[str, Any]) -> float | None:
    """Epoch seconds at which the current step's pause ends (None: not holding a timed step)."""
    if previous.get("phase") not in (RUNNING, INCONCLUSIVE):
        return None
    index = min(max(int(previous.get("step", 1)), 1), len(canary.steps)) - 1
    pause = canary.steps[index].pause_seconds
    started = parse_time(previous.get("stepStartedAt"))
    if pause is None or started is None:
        return None
    return started + pause


def analysis_window(canary: CanarySpec, previous: dict[str, Any], now: float) -> float | None:
    """The PromQL range (seconds) when the current step's analysis is due now, else None."""
    deadline = step_deadline(canary, previous)
    if deadline is None or now < deadline or canary.analysis is None:
        return None
    last = parse_time((previous.get("analysis") or {}).get("time"))
    if previous.get("phase") == INCONCLUSIVE and last is not None and now < last + RETRY_SECONDS:
        return None  # ask Prometheus again after RETRY_SECONDS, not on every event
    if canary.analysis.window_seconds:
        return canary.analysis.window_seconds
    pause = canary.steps[min(max(int(previous.get("step", 1)), 1), len(canary.steps)) - 1].pause_seconds or 0.0
    return max(pause, 1.0)


# -- the planner -------------------------------------------------------------------------------------
def plan(spec: DeploymentSpec, obs: Observed, now: float, verdict: Verdict | None = None) -> Plan:
    """Decide the next state from the observations; `verdict` is the analysis run for a due step."""
    canary = spec.canary
    if canary is None:
        result = Plan(stable=obs.target or obs.stable)
        if obs.previous.get("version"):
            result.events.append(("Normal", "CanaryRemoved",
                                  f"spec.canary was removed: all traffic back to version "
                                  f"{(result.stable.version if result.stable else '?')}, canary version "
                                  f"{obs.previous['version']} stopped"))
        return result
    if not canary.progressive:
        return _manual(canary, obs, now)
    return _progressive(canary, obs, now, verdict)


def _manual(canary: CanarySpec, obs: Observed, now: float) -> Plan:
    result = Plan(stable=obs.target or obs.stable)
    stable = result.stable
    cand = obs.candidate
    previous = obs.previous
    if cand is None and previous.get("model"):
        cand = ResolvedModel.from_status(previous["model"])  # registry trouble: keep what runs
    result.rejected = _still_rejected(obs.rejected, obs.candidate)
    if cand is None or stable is None:
        return result
    if stable.version == cand.version and stable.name == cand.name:
        if previous.get("version"):
            result.events.append(("Normal", "CanaryStopped",
                                  f"{canary.model_uri} now resolves to the stable version {cand.version}: "
                                  "canary stopped"))
        return result
    if obs.annotations.get(ANNOTATION_ABORT) == cand.version:
        return _roll_back(result, cand, previous, f"aborted with the {ANNOTATION_ABORT} annotation", now)
    if result.rejected and result.rejected.get("version") == cand.version:
        return result
    if obs.router_problem:
        result.status = _status(cand, previous, STARTING, 0, now, obs.router_problem)
        return result
    result.canary = cand
    result.weight = canary.weight if obs.canary_ready else 0
    phase = MANUAL if obs.canary_ready else STARTING
    message = (f"manual canary: version {cand.version} receives {canary.weight}% of traffic"
               if obs.canary_ready else f"starting canary version {cand.version}")
    result.status = _status(cand, previous, phase, result.weight, now, message)
    if previous.get("version") != cand.version:
        result.events.append(("Normal", "CanaryStarted",
                              f"canary {canary.model_uri} version {cand.version} started beside stable "
                              f"version {stable.version} at {canary.weight}% of traffic"))
    return result


def _progressive(canary: CanarySpec, obs: Observed, now: float, verdict: Verdict | None) -> Plan:
    previous = obs.previous
    running = bool(previous.get("version"))
    stable = obs.stable
    if stable is None:
        # Nothing serves yet: the first version is deployed directly (there is nothing to compare with).
        return Plan(stable=obs.target)
    result = Plan(stable=stable, rejected=_still_rejected(obs.rejected, obs.candidate))
    cand = obs.candidate
    if cand is None:
        if not running:
            return result
        # The registry cannot be asked: hold everything where it is, never promote.
        held = ResolvedModel.from_status(previous["model"])
        result.canary = held
        result.weight = int(previous.get("weight", 0))
        if previous.get("phase") == PROMOTING:
            result.stable = held
        result.status = {**previous, "message": "paused: the registry cannot be reached; the rollout waits"}
        if previous.get("phase") != PROMOTING:
            result.status["phase"] = PAUSED
            if previous.get("phase") != PAUSED:
                result.status["pausedPhase"] = previous.get("phase")
        result.requeue = RETRY_SECONDS
        return result

    if running and previous.get("phase") == PAUSED:
        # The registry answers again: resume where the rollout was.
        previous = {k: v for k, v in previous.items() if k != "pausedPhase"} | {
            "phase": obs.previous.get("pausedPhase") or RUNNING}

    if cand.version == stable.version and cand.name == stable.name:
        if running and previous.get("phase") == PROMOTING and previous.get("version") == cand.version:
            return _promote(result, cand, previous, obs, now)  # status.model already names it
        if running:
            result.finished = _finished(previous, "Cancelled",
                                        f"the candidate URI moved back to the stable version {stable.version}", now)
            result.events.append(("Normal", "CanaryCancelled",
                                  f"rollout of version {previous['version']} cancelled: the candidate now "
                                  f"resolves to the stable version {stable.version}"))
        return result

    if running and previous.get("version") != cand.version:
        result.events.append(("Normal", "CanaryRestarted",
                              f"the candidate moved from version {previous['version']} to {cand.version} "
                              "during the rollout: restarting at step 1"))
        result.finished = _finished(previous, "Superseded", f"superseded by version {cand.version}", now)
        previous, running = {}, False

    if obs.annotations.get(ANNOTATION_ABORT) == cand.version and (running or not _rejected(result, cand)):
        return _roll_back(result, cand, previous, f"aborted with the {ANNOTATION_ABORT} annotation", now)
    if not running and _rejected(result, cand):
        return result  # rolled back before: not retried until the candidate moves
    if obs.router_problem:
        result.status = _status(cand, previous, STARTING, 0, now, obs.router_problem)
        return result

    if not running:
        result.events.append(("Normal", "CanaryStarted",
                              f"new version {cand.version} enters as canary beside stable version "
                              f"{stable.version}; {len(canary.steps)} step(s) to promotion"))
        previous = {"startedAt": format_time(now), "step": 1, "phase": STARTING}

    result.canary = cand
    phase = previous.get("phase", STARTING)
    # the steps may have been edited mid-rollout: a step past the new last one is the last one
    step = min(max(int(previous.get("step", 1)), 1), len(canary.steps))
    weight = int(previous.get("weight", 0))

    if phase != PROMOTING and obs.annotations.get(ANNOTATION_PROMOTE) == cand.version:
        result.events.append(("Normal", "PromotionRequested",
                              f"version {cand.version} promoted with the {ANNOTATION_PROMOTE} annotation"))
        phase = PROMOTING
    if phase != PROMOTING and obs.canary_failure:
        return _roll_back(result, cand, previous, f"the canary pods failed: {obs.canary_failure}", now)

    if phase == STARTING:
        if not obs.canary_ready:
            result.status = _status(cand, previous, STARTING, 0, now,
                                    f"starting canary version {cand.version}")
            return result
        return _enter_step(result, canary, cand, previous, 1, now)

    if phase in (RUNNING, INCONCLUSIVE, WAITING):
        deadline = step_deadline(canary, previous)
        index = step - 1
        if canary.steps[index].pause_seconds is None:
            result.weight = weight
            result.status = _status(cand, previous, WAITING, weight, now,
                                    f"step {step}/{len(canary.steps)}: {weight}% of traffic; waiting for "
                                    f"`kubectl annotate mdep <name> {ANNOTATION_PROMOTE}={cand.version}`")
            return result
        if deadline is not None and now < deadline:
            result.weight = weight
            result.status = _status(cand, previous, phase, weight, now, previous.get("message", ""))
            result.requeue = deadline - now
            return result
        if canary.analysis is not None:
            if verdict is not None and verdict.outcome == PENDING:
                # Prometheus is being asked: hold the step; its answer re-enqueues the reconcile
                result.weight = weight
                result.status = _status(cand, previous, phase, weight, now, previous.get("message", ""))
                result.requeue = RETRY_SECONDS
                return result
            if verdict is None and phase == INCONCLUSIVE:
                # between retries of an inconclusive analysis: hold, say nothing new
                result.weight = weight
                result.status = _status(cand, previous, INCONCLUSIVE, weight, now, previous.get("message", ""))
                last = parse_time((previous.get("analysis") or {}).get("time")) or now
                result.requeue = max(last + RETRY_SECONDS - now, 1.0)
                return result
            if verdict is None or verdict.outcome == "inconclusive":
                message = verdict.message if verdict else "analysis pending"
                result.weight = weight
                result.status = _status(cand, previous, INCONCLUSIVE, weight, now,
                                        f"step {step}/{len(canary.steps)}: {message}; the rollout waits")
                if verdict is not None:
                    result.status["analysis"] = verdict.to_status(format_time(now))
                if phase != INCONCLUSIVE:
                    result.events.append(("Warning", "AnalysisInconclusive",
                                          f"version {cand.version} step {step}: {message}; not promoting "
                                          "on missing data, retrying"))
                result.requeue = RETRY_SECONDS
                return result
            if verdict.outcome == "fail":
                failed = _roll_back(result, cand, previous, f"analysis failed at step {step}: {verdict.message}",
                                    now)
                failed.finished = {**(failed.finished or {}), "analysis": verdict.to_status(format_time(now))}
                return failed
            analysis = verdict.to_status(format_time(now))
        else:
            analysis = None
        if step >= len(canary.steps):
            phase = PROMOTING
            result.events.append(("Normal", "Promoting",
                                  f"version {cand.version} passed all {len(canary.steps)} step(s)"
                                  f"{': ' + verdict.message if verdict else ''}; promoting to stable"))
            previous = {**previous, **({"analysis": analysis} if analysis else {})}
        else:
            entered = _enter_step(result, canary, cand, previous, step + 1, now,
                                  f" (step {step} passed{': ' + verdict.message if verdict else ''})")
            if analysis and entered.status is not None:
                entered.status["analysis"] = analysis
            return entered

    return _promote(result, cand, {**previous, "weight": weight}, obs, now)


def _promote(result: Plan, cand: ResolvedModel, previous: dict[str, Any], obs: Observed, now: float) -> Plan:
    """Stable rolls to the canary's version while the canary keeps its share; then the canary goes."""
    weight = int(previous.get("weight", 0))
    result.stable = cand
    result.canary = cand
    result.weight = weight
    if obs.stable_version == cand.version and obs.stable_complete:
        result.canary = None
        result.weight = 0
        result.status = None
        result.finished = _finished(previous, "Promoted", f"version {cand.version} passed and was promoted", now)
        result.events.append(("Normal", "Promoted",
                              f"version {cand.version} is now stable on every replica; canary removed"))
        return result
    result.status = _status(cand, previous, PROMOTING, weight, now,
                            f"promoting version {cand.version}: rolling the stable track to it")
    return result


def _enter_step(result: Plan, canary: CanarySpec, cand: ResolvedModel, previous: dict[str, Any], step: int,
                now: float, why: str = "") -> Plan:
    spec_step = canary.steps[step - 1]
    phase = WAITING if spec_step.pause_seconds is None else RUNNING
    hold = ("until promoted" if spec_step.pause_seconds is None
            else f"for {format_duration(spec_step.pause_seconds)}")
    message = f"step {step}/{len(canary.steps)}: {spec_step.weight}% of traffic to version {cand.version} {hold}"
    result.weight = spec_step.weight
    result.status = _status(cand, {**previous, "step": step, "stepStartedAt": format_time(now)}, phase,
                            spec_step.weight, now, message)
    result.events.append(("Normal", "CanaryStep", message + why))
    if spec_step.pause_seconds is not None:
        result.requeue = spec_step.pause_seconds
    return result


def _status(cand: ResolvedModel, previous: dict[str, Any], phase: str, weight: int, now: float,
            message: str) -> dict[str, Any]:
    out = {k: v for k, v in previous.items() if k in ("startedAt", "step", "stepStartedAt", "analysis")}
    out.setdefault("startedAt", format_time(now))
    out.update({
        "version": cand.version,
        "model": cand.to_status(cand.pinned),
        "phase": phase,
        "weight": weight,
        "message": message,
    })
    return out


def _finished(previous: dict[str, Any], result: str, reason: str, now: float) -> dict[str, Any]:
    return {"version": previous.get("version"), "result": result, "reason": reason, "time": format_time(now)}


def _roll_back(result: Plan, cand: ResolvedModel, previous: dict[str, Any], reason: str, now: float) -> Plan:
    result.canary = None
    result.weight = 0
    result.status = None
    result.rejected = {"version": cand.version, "name": cand.name, "reason": reason, "time": format_time(now)}
    result.finished = {**_finished({**previous, "version": cand.version}, "RolledBack", reason, now)}
    result.events.append(("Warning", "RolledBack",
                          f"version {cand.version} rolled back, all traffic to stable: {reason}. It is not "
                          "retried until the candidate URI moves to another version."))
    return result


def _rejected(result: Plan, cand: ResolvedModel) -> bool:
    return bool(result.rejected and result.rejected.get("version") == cand.version
                and result.rejected.get("name", cand.name) == cand.name)


def _still_rejected(rejected: dict[str, Any], candidate: ResolvedModel | None) -> dict[str, Any] | None:
    """A rejection holds until the candidate is seen at another version (the alias moved again)."""
    if not rejected:
        return None
    if candidate is not None and (candidate.version != rejected.get("version")
                                  or candidate.name != rejected.get("name", candidate.name)):
        return None
    return rejected
