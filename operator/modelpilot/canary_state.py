"""The state of a running canary, typed: read from `status.canary` once, written back once.

Why: a rollout must survive an operator restart, so its state lives in the ModelDeployment's status.
Reading it field by field with `.get` all over the planner let a typo or a type change go unnoticed;
this frozen dataclass is the one place that knows the status layout.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from .registry import ResolvedModel

#: Phases of status.canary.phase.
STARTING = "Starting"  # canary pods starting; no traffic yet
RUNNING = "Running"  # holding a step's weight for its pause
WAITING = "WaitingForPromotion"  # a step without pause: waits for the promote annotation
INCONCLUSIVE = "Inconclusive"  # the analysis had no (or not enough) data: waiting, never promoting
PAUSED = "Paused"  # the registry cannot be asked: nothing moves
PROMOTING = "Promoting"  # stable is rolling to the canary's version
MANUAL = "Manual"  # a manual canary at a fixed weight


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: status key ← field name, where they differ.
_KEYS = {"started_at": "startedAt", "step_started_at": "stepStartedAt", "paused_phase": "pausedPhase",
         "desired_weight": "desiredWeight", "mirror_percent": "mirrorPercent"}


@dataclass(frozen=True)
class CanaryState:
    """status.canary: which version runs as canary, where its rollout stands, and what the router does."""

    version: str
    #: The canary's model as status.model writes it (name, version, runId, ...).
    model: dict[str, Any]
    phase: str = STARTING
    #: Percent of traffic the canary gets (effective, once the router has spoken).
    weight: int = 0
    step: int = 1
    started_at: str | None = None
    step_started_at: str | None = None
    message: str = ""
    #: The last analysis: {result, message, time, values}.
    analysis: dict[str, Any] | None = None
    #: While Paused: the phase to resume.
    paused_phase: str | None = None
    # What the router really does (filled in by plan.decide).
    router: str | None = None
    desired_weight: int | None = None
    replicas: dict[str, int] | None = None
    mirror_percent: int | None = None

    @property
    def resolved(self) -> ResolvedModel:
        return ResolvedModel.from_status(self.model)

    @property
    def analysed_at(self) -> float | None:
        return parse_time((self.analysis or {}).get("time"))

    @classmethod
    def for_version(cls, cand: ResolvedModel, now: float, **changes: Any) -> CanaryState:
        return cls(version=cand.version, model=cand.to_status(cand.pinned), started_at=format_time(now),
                   **changes)

    @classmethod
    def from_status(cls, raw: Any) -> CanaryState | None:
        """None when there is no canary (or what status holds cannot be one)."""
        if not isinstance(raw, dict) or not raw.get("version") or not isinstance(raw.get("model"), dict):
            return None
        model = raw["model"]
        if not model.get("name") or not model.get("version"):
            return None

        def number(key: str, default: int) -> int:
            value = raw.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else default

        def text(key: str) -> str | None:
            value = raw.get(key)
            return value if isinstance(value, str) else None

        replicas = raw.get("replicas")
        return cls(
            version=str(raw["version"]), model=dict(model), phase=text("phase") or STARTING,
            weight=number("weight", 0), step=max(number("step", 1), 1), started_at=text("startedAt"),
            step_started_at=text("stepStartedAt"), message=text("message") or "",
            analysis=raw["analysis"] if isinstance(raw.get("analysis"), dict) else None,
            paused_phase=text("pausedPhase"), router=text("router"),
            desired_weight=raw.get("desiredWeight") if isinstance(raw.get("desiredWeight"), int) else None,
            replicas=dict(replicas) if isinstance(replicas, dict) else None,
            mirror_percent=raw.get("mirrorPercent") if isinstance(raw.get("mirrorPercent"), int) else None,
        )

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[_KEYS.get(f.name, f.name)] = value
        return out

    def with_(self, **changes: Any) -> CanaryState:
        return replace(self, **changes)
