"""Leader election's decisions against an in-memory Lease store with the API server's optimistic locking.

The real thing (two operator processes, kill -9, an alias move) is tests/integration/test_leader_election.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modelpilot import leader
from modelpilot.kube import KubeError
from modelpilot.leader import LeaderElector, LeaseConfig


class Leases:
    """GET/POST/PUT of Leases with resourceVersion conflicts, like the API server."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 0

    def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any] | None:
        name = body["metadata"]["name"] if body else path.rsplit("/", 1)[1]
        current = self.objects.get(name)
        if method == "GET":
            return copy.deepcopy(current)
        if method == "POST" and current is not None:
            raise KubeError(409, "already exists", "AlreadyExists")
        if method == "PUT" and (current is None or body["metadata"]["resourceVersion"] !=
                                current["metadata"]["resourceVersion"]):
            raise KubeError(409, "the object has been modified", "Conflict")
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[name] = stored
        return copy.deepcopy(stored)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(leader.time, "monotonic", c.monotonic)
    return c


def elector(store: Leases, who: str) -> LeaderElector:
    return LeaderElector(store, LeaseConfig("ops", identity=who), on_started=lambda: None)  # type: ignore[arg-type]


def test_the_first_takes_the_lease_and_a_second_waits_while_it_is_renewed(clock: Clock) -> None:
    store = Leases()
    a, b = elector(store, "a"), elector(store, "b")
    assert a._try() and not b._try()
    lease = store.objects["modelpilot-leader"]["spec"]
    assert lease["holderIdentity"] == "a" and lease["leaseDurationSeconds"] == 15
    for _ in range(20):  # 40 s of renewals every 2 s: b never takes over
        clock.now += 2
        assert a._try() and not b._try()
    assert store.objects["modelpilot-leader"]["spec"]["holderIdentity"] == "a"


def test_a_lease_not_renewed_for_its_duration_by_our_clock_is_taken(clock: Clock) -> None:
    store = Leases()
    a, b = elector(store, "a"), elector(store, "b")
    assert a._try() and not b._try()
    clock.now += 14  # a is gone; 14 s of silence is not yet expiry
    assert not b._try()
    clock.now += 1.5
    assert b._try()
    spec = store.objects["modelpilot-leader"]["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    assert not a._try(), "the old leader, back, finds b's fresh lease"


def test_a_stale_write_loses_to_the_one_that_came_first(clock: Clock) -> None:
    store = Leases()
    a, b = elector(store, "a"), elector(store, "b")
    assert a._try()
    clock.now += 20
    real_request = store.request

    def racing(method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any] | None:
        if method == "PUT":  # someone renews between our GET and our PUT
            store.objects["modelpilot-leader"]["metadata"]["resourceVersion"] = "other"
        return real_request(method, path, body, **kw)

    store.request = racing  # type: ignore[method-assign]
    assert not b._try()


def test_release_hands_over_at_once(clock: Clock) -> None:
    store = Leases()
    a, b = elector(store, "a"), elector(store, "b")
    assert a._try()
    a.leading = True
    a.release()
    assert store.objects["modelpilot-leader"]["spec"]["holderIdentity"] == ""
    assert b._try()


def test_a_leader_that_cannot_renew_within_the_deadline_stops() -> None:
    import asyncio

    store = Leases()
    events: list[str] = []
    cfg = LeaseConfig("ops", identity="a", lease_duration=0.2, renew_deadline=0.1, retry_period=0.01)
    a = LeaderElector(store, cfg, on_started=lambda: events.append("started"),  # type: ignore[arg-type]
                      on_lost=lambda: events.append("lost"))
    real_request = store.request
    calls = {"n": 0}

    def flaky(method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any] | None:
        calls["n"] += 1
        if calls["n"] > 4:  # the API server becomes unreachable after the first renewals
            raise KubeError(503, "unavailable")
        return real_request(method, path, body, **kw)

    store.request = flaky  # type: ignore[method-assign]
    asyncio.run(asyncio.wait_for(a.run(), 5))
    assert events == ["started", "lost"] and not a.leading
