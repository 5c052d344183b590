"""Traffic arithmetic: how a canary weight becomes replica counts, and what a replica split really sends.

Pure integer math, kept apart from the planner so its properties are tested on their own
(hypothesis, in tests/unit/test_canary.py).
"""

from __future__ import annotations

import math


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


