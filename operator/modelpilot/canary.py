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

from dataclasses import dataclass, field
from typing import Any

from .canary_state import (
    INCONCLUSIVE,
    MANUAL,
    PAUSED,
    PROMOTING,
    RUNNING,
    STARTING,
    WAITING,
    CanaryState,
    format_time,
    parse_time,
)
from .durations import format_duration
from .names import ANNOTATION_ABORT, ANNOTATION_PROMOTE
from .registry import ResolvedModel
from .spec import CanarySpec, DeploymentSpec

__all__ = ["INCONCLUSIVE", "MANUAL", "PAUSED", "PENDING", "PROMOTING", "RUNNING", "STARTING", "WAITING",
           "Observed", "Plan", "Verdict", "analysis_window", "plan", "step_deadline"]

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
    #: status.canary as last written (None: no canary) and status.rejected.
    previous: CanaryState | None
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
    status: CanaryState | None = None
    rejected: dict[str, Any] | None = None
    #: A rollout ended: status.lastRollout.
    finished: dict[str, Any] | None = None
    #: (type, reason, message) Events to record.
    events: list[tuple[str, str, str]] = field(default_factory=list)
    #: Seconds until the planner wants to look again (None: no timer needed).
    requeue: float | None = None


# -- analysis timing ---------------------------------------------------------------------------------
def _step_index(canary: CanarySpec, state: CanaryState) -> int:
    """The current step's index; the steps may have been edited mid-rollout (past the last: the last)."""
    return min(max(state.step, 1), len(canary.steps)) - 1


def step_deadline(canary: CanarySpec, state: CanaryState | None) -> float | None:
    """Epoch seconds at which the current step's pause ends (None: not holding a timed step)."""
    if state is None or state.phase not in (RUNNING, INCONCLUSIVE):
        return None
    pause = canary.steps[_step_index(canary, state)].pause_seconds
    started = parse_time(state.step_started_at)
    if pause is None or started is None:
        return None
    return started + pause


def analysis_window(canary: CanarySpec, state: CanaryState | None, now: float) -> float | None:
    """The PromQL range (seconds) when the current step's analysis is due now, else None."""
    deadline = step_deadline(canary, state)
    if state is None or deadline is None or now < deadline or canary.analysis is None:
        return None
    last = state.analysed_at
    if state.phase == INCONCLUSIVE and last is not None and now < last + RETRY_SECONDS:
        return None  # ask Prometheus again after RETRY_SECONDS, not on every event
    if canary.analysis.window_seconds:
        return canary.analysis.window_seconds
    return max(canary.steps[_step_index(canary, state)].pause_seconds or 0.0, 1.0)


# -- the planner -------------------------------------------------------------------------------------
def plan(spec: DeploymentSpec, obs: Observed, now: float, verdict: Verdict | None = None) -> Plan:
    """Decide the next state from the observations; `verdict` is the analysis run for a due step."""
    canary = spec.canary
    if canary is None:
        result = Plan(stable=obs.target or obs.stable)
        if obs.previous is not None:
            result.events.append(("Normal", "CanaryRemoved",
                                  f"spec.canary was removed: all traffic back to version "
                                  f"{(result.stable.version if result.stable else '?')}, canary version "
                                  f"{obs.previous.version} stopped"))
        return result
    if not canary.progressive:
        return _manual(canary, obs, now)
    return _progressive(canary, obs, now, verdict)


def _manual(canary: CanarySpec, obs: Observed, now: float) -> Plan:
    result = Plan(stable=obs.target or obs.stable)
    stable = result.stable
    previous = obs.previous
    cand = obs.candidate
    if cand is None and previous is not None:
        cand = previous.resolved  # registry trouble: keep what runs
    result.rejected = _still_rejected(obs.rejected, obs.candidate)
    if cand is None or stable is None:
        return result
    if cand.same_version(stable):
        if previous is not None:
            result.events.append(("Normal", "CanaryStopped",
                                  f"{canary.model_uri} now resolves to the stable version {cand.version}: "
                                  "canary stopped"))
        return result
    if obs.annotations.get(ANNOTATION_ABORT) == cand.version:
        return _roll_back(result, cand, f"aborted with the {ANNOTATION_ABORT} annotation", now)
    if result.rejected and result.rejected.get("version") == cand.version:
        return result
    if obs.router_problem:
        result.status = _state(cand, previous, STARTING, 0, now, obs.router_problem)
        return result
    result.canary = cand
    result.weight = canary.weight if obs.canary_ready else 0
    phase = MANUAL if obs.canary_ready else STARTING
    message = (f"manual canary: version {cand.version} receives {canary.weight}% of traffic"
               if obs.canary_ready else f"starting canary version {cand.version}")
    result.status = _state(cand, previous, phase, result.weight, now, message)
    if previous is None or previous.version != cand.version:
        result.events.append(("Normal", "CanaryStarted",
                              f"canary {canary.model_uri} version {cand.version} started beside stable "
                              f"version {stable.version} at {canary.weight}% of traffic"))
    return result


def _hold_paused(result: Plan, previous: CanaryState) -> Plan:
    """The registry cannot be asked: hold everything where it is, never promote."""
    held = previous.resolved
    result.canary = held
    result.weight = previous.weight
    status = previous.with_(message="paused: the registry cannot be reached; the rollout waits")
    if previous.phase == PROMOTING:
        result.stable = held
    else:
        status = status.with_(phase=PAUSED, paused_phase=previous.paused_phase if previous.phase == PAUSED
                              else previous.phase)
    result.status = status
    result.requeue = RETRY_SECONDS
    return result


def _progressive(canary: CanarySpec, obs: Observed, now: float, verdict: Verdict | None) -> Plan:
    previous = obs.previous
    stable = obs.stable
    if stable is None:
        # Nothing serves yet: the first version is deployed directly (there is nothing to compare with).
        return Plan(stable=obs.target)
    result = Plan(stable=stable, rejected=_still_rejected(obs.rejected, obs.candidate))
    cand = obs.candidate
    if cand is None:
        return result if previous is None else _hold_paused(result, previous)

    if previous is not None and previous.phase == PAUSED:
        # The registry answers again: resume where the rollout was.
        previous = previous.with_(phase=previous.paused_phase or RUNNING, paused_phase=None)

    if cand.same_version(stable):
        if previous is not None and previous.phase == PROMOTING and previous.version == cand.version:
            return _promote(result, cand, previous, obs, now)  # status.model already names it
        if previous is not None:
            result.finished = _finished(previous.version, "Cancelled",
                                        f"the candidate URI moved back to the stable version {stable.version}", now)
            result.events.append(("Normal", "CanaryCancelled",
                                  f"rollout of version {previous.version} cancelled: the candidate now "
                                  f"resolves to the stable version {stable.version}"))
        return result

    if previous is not None and previous.version != cand.version:
        result.events.append(("Normal", "CanaryRestarted",
                              f"the candidate moved from version {previous.version} to {cand.version} "
                              "during the rollout: restarting at step 1"))
        result.finished = _finished(previous.version, "Superseded", f"superseded by version {cand.version}", now)
        previous = None

    if obs.annotations.get(ANNOTATION_ABORT) == cand.version and (previous is not None
                                                                  or not _rejected(result, cand)):
        return _roll_back(result, cand, f"aborted with the {ANNOTATION_ABORT} annotation", now)
    if previous is None and _rejected(result, cand):
        return result  # rolled back before: not retried until the candidate moves
    if obs.router_problem:
        result.status = _state(cand, previous, STARTING, 0, now, obs.router_problem)
        return result

    if previous is None:
        result.events.append(("Normal", "CanaryStarted",
                              f"new version {cand.version} enters as canary beside stable version "
                              f"{stable.version}; {len(canary.steps)} step(s) to promotion"))
        previous = CanaryState.for_version(cand, now, step=1, phase=STARTING)

    result.canary = cand
    phase = previous.phase
    step = _step_index(canary, previous) + 1
    weight = previous.weight

    if phase != PROMOTING and obs.annotations.get(ANNOTATION_PROMOTE) == cand.version:
        result.events.append(("Normal", "PromotionRequested",
                              f"version {cand.version} promoted with the {ANNOTATION_PROMOTE} annotation"))
        phase = PROMOTING
    if phase != PROMOTING and obs.canary_failure:
        return _roll_back(result, cand, f"the canary pods failed: {obs.canary_failure}", now)

    if phase == STARTING:
        if not obs.canary_ready:
            result.status = _state(cand, previous, STARTING, 0, now, f"starting canary version {cand.version}")
            return result
        return _enter_step(result, canary, cand, previous, 1, now)

    if phase in (RUNNING, INCONCLUSIVE, WAITING):
        held = _walk_step(result, canary, cand, previous, phase, step, weight, now, verdict)
        if held is not None:
            return held
        if step < len(canary.steps):
            passed = f" (step {step} passed{': ' + verdict.message if verdict else ''})"
            entered = _enter_step(result, canary, cand, previous, step + 1, now, passed)
            if verdict is not None and entered.status is not None:
                entered.status = entered.status.with_(analysis=verdict.to_status(format_time(now)))
            return entered
        result.events.append(("Normal", "Promoting",
                              f"version {cand.version} passed all {len(canary.steps)} step(s)"
                              f"{': ' + verdict.message if verdict else ''}; promoting to stable"))
        if verdict is not None:
            previous = previous.with_(analysis=verdict.to_status(format_time(now)))

    return _promote(result, cand, previous.with_(weight=weight), obs, now)


def _walk_step(result: Plan, canary: CanarySpec, cand: ResolvedModel, previous: CanaryState, phase: str, step: int,
               weight: int, now: float, verdict: Verdict | None) -> Plan | None:
    """Hold the current step (returns the plan), roll back, or return None when the step passed."""
    steps = len(canary.steps)
    result.weight = weight
    if canary.steps[step - 1].pause_seconds is None:
        result.status = _state(cand, previous, WAITING, weight, now,
                               f"step {step}/{steps}: {weight}% of traffic; waiting for "
                               f"`kubectl annotate mdep <name> {ANNOTATION_PROMOTE}={cand.version}`")
        return result
    deadline = step_deadline(canary, previous)
    if deadline is not None and now < deadline:
        result.status = _state(cand, previous, phase, weight, now, previous.message)
        result.requeue = deadline - now
        return result
    if canary.analysis is None:
        return None
    if verdict is not None and verdict.outcome == PENDING:
        # Prometheus is being asked: hold the step; its answer re-enqueues the reconcile
        result.status = _state(cand, previous, phase, weight, now, previous.message)
        result.requeue = RETRY_SECONDS
        return result
    if verdict is None and phase == INCONCLUSIVE:
        # between retries of an inconclusive analysis: hold, say nothing new
        result.status = _state(cand, previous, INCONCLUSIVE, weight, now, previous.message)
        result.requeue = max((previous.analysed_at or now) + RETRY_SECONDS - now, 1.0)
        return result
    if verdict is None or verdict.outcome not in ("pass", "fail"):
        message = verdict.message if verdict else "analysis pending"
        result.status = _state(cand, previous, INCONCLUSIVE, weight, now,
                               f"step {step}/{steps}: {message}; the rollout waits")
        if verdict is not None:
            result.status = result.status.with_(analysis=verdict.to_status(format_time(now)))
        if phase != INCONCLUSIVE:
            result.events.append(("Warning", "AnalysisInconclusive",
                                  f"version {cand.version} step {step}: {message}; not promoting on missing data, "
                                  "retrying"))
        result.requeue = RETRY_SECONDS
        return result
    if verdict.outcome == "fail":
        failed = _roll_back(result, cand, f"analysis failed at step {step}: {verdict.message}", now)
        failed.finished = {**(failed.finished or {}), "analysis": verdict.to_status(format_time(now))}
        return failed
    return None


def _promote(result: Plan, cand: ResolvedModel, previous: CanaryState, obs: Observed, now: float) -> Plan:
    """Stable rolls to the canary's version while the canary keeps its share; then the canary goes."""
    weight = previous.weight
    result.stable = cand
    result.canary = cand
    result.weight = weight
    if obs.stable_version == cand.version and obs.stable_complete:
        result.canary = None
        result.weight = 0
        result.status = None
        result.finished = _finished(previous.version, "Promoted", f"version {cand.version} passed and was promoted",
                                    now)
        result.events.append(("Normal", "Promoted",
                              f"version {cand.version} is now stable on every replica; canary removed"))
        return result
    result.status = _state(cand, previous, PROMOTING, weight, now,
                           f"promoting version {cand.version}: rolling the stable track to it")
    return result


def _enter_step(result: Plan, canary: CanarySpec, cand: ResolvedModel, previous: CanaryState, step: int,
                now: float, why: str = "") -> Plan:
    spec_step = canary.steps[step - 1]
    phase = WAITING if spec_step.pause_seconds is None else RUNNING
    hold = ("until promoted" if spec_step.pause_seconds is None
            else f"for {format_duration(spec_step.pause_seconds)}")
    message = f"step {step}/{len(canary.steps)}: {spec_step.weight}% of traffic to version {cand.version} {hold}"
    result.weight = spec_step.weight
    result.status = _state(cand, previous.with_(step=step, step_started_at=format_time(now)), phase,
                           spec_step.weight, now, message)
    result.events.append(("Normal", "CanaryStep", message + why))
    if spec_step.pause_seconds is not None:
        result.requeue = spec_step.pause_seconds
    return result


def _state(cand: ResolvedModel, previous: CanaryState | None, phase: str, weight: int, now: float,
           message: str) -> CanaryState:
    """status.canary for `cand`: the rollout's progress carried over, the router's facts left to plan.decide."""
    fresh = CanaryState.for_version(cand, now, phase=phase, weight=weight, message=message)
    if previous is None:
        return fresh
    return fresh.with_(started_at=previous.started_at or fresh.started_at, step=previous.step,
                       step_started_at=previous.step_started_at, analysis=previous.analysis)


def _finished(version: str, result: str, reason: str, now: float) -> dict[str, Any]:
    return {"version": version, "result": result, "reason": reason, "time": format_time(now)}


def _roll_back(result: Plan, cand: ResolvedModel, reason: str, now: float) -> Plan:
    result.canary = None
    result.weight = 0
    result.status = None
    result.rejected = {"version": cand.version, "name": cand.name, "reason": reason, "time": format_time(now)}
    result.finished = _finished(cand.version, "RolledBack", reason, now)
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
