"""The whole reconcile, fast: an in-memory API (tests/fakes/kube.py), a real-HTTP fake registry, fake clocks.

These run the real pipeline (observe → resolve → plan → desired → apply → status) in milliseconds.
The same behaviours are held against the real API server and MLflow in tests/integration.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest

from hack.proc import wait_for
from modelpilot.checks import PeriodicChecks
from modelpilot.config import Settings
from modelpilot.names import Owner
from modelpilot.reconciler import CONFLICT_RETRY_SECONDS
from modelpilot.spec import InvalidSpec, parse_spec
from modelpilot.thresholds import render_prometheus_rule
from modelpilot.workqueue import Retry, error_backoff
from tests.fakes.harness import NS, Harness
from tests.fakes.kube import FakeKube
from tests.fakes.mlflow import FakeMlflow


@pytest.fixture
def mlflow() -> Iterator[FakeMlflow]:
    server = FakeMlflow()
    server.set_alias("fraud", "champion", "1")
    yield server
    server.close()


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()





@pytest.fixture
def world(kube: FakeKube, mlflow: FakeMlflow) -> Iterator[Harness]:
    w = Harness(kube, mlflow)
    yield w
    w.reconciler.outbound.stop()


def converge(world: Harness, name: str = "m") -> None:
    world.reconcile(name)
    world.kube.settle()
    world.reconcile(name)


# -- the happy path, and writing nothing when nothing changed --------------------------------------------
def test_first_reconcile_creates_children_and_a_restart_writes_nothing(world: Harness) -> None:
    world.apply()
    converge(world)
    assert ("Deployment", "m") in world.kube.children(NS) and ("Service", "m") in world.kube.children(NS)
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Serving")
    assert [c["type"] for c in world.kube.mdep(NS, "m")["status"]["conditions"]][-1] == "Ready"
    assert world.reasons() == ["Resolved"]

    world.kube.writes.clear()
    world.restart()
    world.reconcile()
    world.advance(120)  # past the refresh: the registry is asked again, the answer is the same
    world.reconcile()
    assert world.kube.writes == [], "a restart and a refresh must not write to converged objects"


def test_alias_move_rolls_the_deployment(world: Harness) -> None:
    world.apply(refreshInterval="10s")
    converge(world)
    world.mlflow.set_alias("fraud", "champion", "2")
    world.advance(11)
    world.reconcile()
    dep = world.kube.get("apps/v1", "Deployment", NS, "m")
    assert dep is not None and dep["spec"]["template"]["metadata"]["labels"]["modelpilot.dev/model-version"] == "2"
    assert "VersionChanged" in world.reasons()


def test_a_field_removed_from_the_spec_is_removed_from_the_child(world: Harness) -> None:
    world.apply(nodeSelector={"pool": "gpu"})
    converge(world)
    world.apply()
    world.reconcile()
    dep = world.kube.objects[("apps/v1", "Deployment", NS, "m")]
    assert dep["metadata"]["annotations"]["modelpilot.dev/applied"]
    # the fake merges like SSA would not; what matters is that a changed render is applied at all
    assert ("apply", "Deployment", "m") in world.kube.writes[-3:]


# -- registry trouble ---------------------------------------------------------------------------------
def test_registry_outage_keeps_children_warns_once_and_recovers(world: Harness) -> None:
    world.apply(refreshInterval="5s")
    converge(world)
    world.kube.writes.clear()
    world.mlflow.mode = "down"
    for _ in range(4):
        world.advance(6)
        world.reconcile()
    assert [w for w in world.kube.writes if w[0] != "status"] == [], "children untouched while the registry is down"
    resolved = world.condition("ModelResolved")
    assert (resolved["status"], resolved["reason"]) == ("False", "RegistryUnreachable")
    assert "still serving the last resolved version 1" in resolved["message"]
    assert world.reasons("Warning") == ["RegistryUnreachable"], "one warning, not one per retry"
    assert world.condition("Ready")["status"] == "False"
    world.mlflow.mode = "ok"
    world.advance(6)
    world.reconcile()
    assert world.condition("Ready")["status"] == "True" and "Recovered" in world.reasons()


def test_an_answer_that_is_not_a_registry_is_reported_by_status_and_host_only(world: Harness, mlflow: FakeMlflow,
                                                                               kube: FakeKube) -> None:
    mlflow.mode = "html"
    world.apply()
    world.reconcile()
    resolved = world.condition("ModelResolved")
    assert resolved["reason"] == "NotARegistry" and "HTTP 404" in resolved["message"]
    assert "hunter2" not in str(kube.mdep(NS, "m")["status"]) and "hunter2" not in str(kube.events)


# -- ownership: never touch what is not ours ----------------------------------------------------------------
def foreign(kind: str, name: str, api_version: str = "v1") -> dict[str, Any]:
    spec: dict[str, Any] = ({"selector": {"app": "theirs"}, "ports": [{"port": 80}]} if kind == "Service"
                            else {"replicas": 1, "selector": {"matchLabels": {"app": "theirs"}}})
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": NS}, "spec": spec}


def test_a_foreign_object_under_a_childs_name_is_a_conflict_and_nothing_is_touched(world: Harness) -> None:
    theirs = world.kube.create(foreign("Service", "m"))
    world.apply()
    delay = world.reconcile()
    assert world.kube.get("v1", "Service", NS, "m") == theirs, "the foreign Service is untouched"
    assert world.kube.get("apps/v1", "Deployment", NS, "m") is None, "nothing at all is written"
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NameConflict")
    assert "Service m" in ready["message"]
    assert delay == CONFLICT_RETRY_SECONDS
    world.reconcile()
    assert world.reasons("Warning") == ["NameConflict"], "one Warning event, not one per retry"

    del world.kube.objects[("v1", "Service", NS, "m")]  # the clash is removed: it recovers by itself
    converge(world)
    assert world.condition("Ready")["status"] == "True"


def test_a_foreign_canary_deployment_is_never_deleted(world: Harness) -> None:
    theirs = world.kube.create(foreign("Deployment", "m-canary", "apps/v1"))
    world.apply()
    converge(world)
    assert world.kube.get("apps/v1", "Deployment", NS, "m-canary") == theirs
    assert world.condition("Ready")["status"] == "True", "a name the spec does not need is no conflict"


def test_an_object_controlled_by_another_modeldeployment_is_not_adopted(world: Harness) -> None:
    other = foreign("Service", "m")
    other["metadata"]["ownerReferences"] = [{"apiVersion": "modelpilot.dev/v1alpha1", "kind": "ModelDeployment",
                                             "name": "m", "uid": "someone-else", "controller": True}]
    world.kube.create(other)
    world.apply()
    world.reconcile()
    assert world.condition("Ready")["reason"] == "NameConflict"


# -- writes the API server refuses ---------------------------------------------------------------------------
def test_a_refused_apply_is_reported_and_retried(world: Harness) -> None:
    world.kube.refuse[("Deployment", "m")] = (422, 'Deployment.apps "m" is invalid: spec.template...: quantities')
    world.apply()
    with pytest.raises(Retry):
        world.reconcile()
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
    assert "Deployment m" in ready["message"] and "quantities" in ready["message"]
    assert world.reasons("Warning") == ["ApplyFailed"]
    with pytest.raises(Retry):
        world.reconcile()
    assert world.reasons("Warning") == ["ApplyFailed"], "one event per distinct failure"
    del world.kube.refuse[("Deployment", "m")]
    converge(world)
    assert world.condition("Ready")["status"] == "True"


def test_backoff_is_capped_and_never_overflows() -> None:
    assert [error_backoff(2.0, n) for n in (1, 2, 3)] == [4.0, 8.0, 16.0]
    assert error_backoff(2.0, 5000) == 300.0
    assert error_backoff(2.0, 10**9) == 300.0


# -- credentials only where they were configured ------------------------------------------------------------
def test_the_platform_token_never_goes_to_a_registry_the_tenant_chose(kube: FakeKube, mlflow: FakeMlflow) -> None:
    platform = FakeMlflow()
    platform.set_alias("fraud", "champion", "1")
    world = Harness(kube, platform, default_credentials_secret="platform-auth")
    kube.secrets[(NS, "platform-auth")] = {"token": "PLATFORM-TOKEN"}
    kube.secrets[(NS, "mine")] = {"token": "TENANT-TOKEN"}
    try:
        world.apply("own", registry={"trackingUri": mlflow.url})
        world.apply("own-with-secret", registry={"trackingUri": mlflow.url, "credentialsSecretRef": {"name": "mine"}})
        world.apply("default")
        for name in ("own", "own-with-secret", "default"):
            world.reconcile(name)
        assert {auth for _, auth in mlflow.requests} == {None, "Bearer TENANT-TOKEN"}
        assert {auth for _, auth in platform.requests} == {"Bearer PLATFORM-TOKEN"}

        def secret_refs(name: str) -> set[str]:
            dep = kube.get("apps/v1", "Deployment", NS, name)
            assert dep is not None
            env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
            return {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}

        assert secret_refs("own") == set(), "the pods of a tenant-chosen registry get no platform Secret"
        assert secret_refs("own-with-secret") == {"mine"}
        assert secret_refs("default") == {"platform-auth"}
    finally:
        world.reconciler.outbound.stop()
        platform.close()


def _alias_calls(mlflow: FakeMlflow) -> list[tuple[str, str | None]]:
    return [(path, auth) for path, auth in mlflow.requests if "/registered-models/alias" in path]


def test_one_registry_call_per_alias_per_interval_however_many_share_it(world: Harness) -> None:
    names = [f"m{i}" for i in range(20)]
    for name in names:
        world.apply(name, refreshInterval="30s")
        world.reconcile(name)
        world.advance(1)  # created over 20 s: each one's answer falls due at a different time
    assert len(_alias_calls(world.mlflow)) == 1
    world.mlflow.set_alias("fraud", "champion", "2")
    world.advance(31)
    for name in names:
        world.reconcile(name)
    assert len(_alias_calls(world.mlflow)) == 2, "one call per interval for all twenty"
    for name in names:
        dep = world.kube.get("apps/v1", "Deployment", NS, name)
        assert dep is not None and dep["spec"]["template"]["metadata"]["labels"]["modelpilot.dev/model-version"] == "2"


def test_the_refresher_asks_once_per_interval_and_enqueues_followers_only_when_the_answer_moves(
        world: Harness) -> None:
    resolver = world.reconciler.resolver
    resolver.refreshing = True  # as the operator runs it (its thread calls refresh_due every second)
    names = [f"m{i}" for i in range(10)]
    for name in names:
        world.apply(name, refreshInterval="30s")
        world.converge(name)
    assert world.reconcile("m0") == world.settings.resync_seconds, "no timer per ModelDeployment"
    first = world.status("m0")["model"]
    assert first["resolvedBy"] == "spec" and first["resolvedAt"].endswith("Z")

    def refresh() -> None:
        world.enqueued.clear()
        assert resolver.refresh_due() == 1, "one question, however many follow it"
        wait_for(lambda: not resolver.answers.asking(), 5, "the refresher's answer")

    world.advance(31)
    refresh()
    assert world.enqueued == [] and len(_alias_calls(world.mlflow)) == 2, "same answer: nobody is disturbed"
    world.reconcile("m0")
    assert world.status("m0")["model"] == first, "a refresh that finds nothing new changes nothing"
    world.mlflow.set_alias("fraud", "champion", "2")
    world.advance(31)
    refresh()
    assert sorted(world.enqueued) == sorted((NS, n) for n in names)
    for name in names:
        world.reconcile(name)
        dep = world.kube.get("apps/v1", "Deployment", NS, name)
        assert dep is not None and dep["spec"]["template"]["metadata"]["labels"]["modelpilot.dev/model-version"] == "2"
        moved = world.status(name)["model"]
        assert moved["resolvedBy"] == "poll" and moved["resolvedAt"] >= first["resolvedAt"]
    assert len(_alias_calls(world.mlflow)) == 3


def test_a_webhook_wakes_the_refresher_instead_of_waiting_for_its_next_look(world: Harness) -> None:
    resolver = world.reconciler.resolver
    world.apply("m", refreshInterval="1h")
    resolver.start_refresher(every=3600)  # its own next look is an hour away
    try:
        world.converge("m")
        world.mlflow.set_alias("fraud", "champion", "2")
        world.advance(5)
        world.enqueued.clear()
        assert resolver.expedite("other") == 0
        assert resolver.expedite("fraud") == 1
        wait_for(lambda: world.enqueued == [(NS, "m")], 5, "the answer the webhook asked for")
    finally:
        resolver.stop_refresher()


def test_an_expedited_question_moves_its_followers_long_before_their_refresh(world: Harness) -> None:
    """What an MLflow webhook does: the refresher asks at once, followers take the new answer."""
    resolver = world.reconciler.resolver
    resolver.refreshing = True
    world.apply("m", refreshInterval="1h")
    world.converge("m")
    world.mlflow.set_alias("fraud", "champion", "2")
    world.advance(5)
    assert resolver.answers.expedite("fraud") == 1 and resolver.answers.expedite("other") == 0
    world.enqueued.clear()
    assert resolver.refresh_due() == 1
    wait_for(lambda: not resolver.answers.asking(), 5, "the refresher's answer")
    assert world.enqueued == [(NS, "m")]
    world.reconcile("m")
    dep = world.kube.get("apps/v1", "Deployment", NS, "m")
    assert dep is not None and dep["spec"]["template"]["metadata"]["labels"]["modelpilot.dev/model-version"] == "2"
    assert world.status("m")["model"]["resolvedBy"] == "webhook"


def test_answers_obtained_with_credentials_are_shared_only_with_the_same_secret_of_the_same_namespace(
        world: Harness, kube: FakeKube) -> None:
    for ns in (NS, "team-b"):
        kube.secrets[(ns, "s1")] = {"token": f"{ns}-S1"}
    kube.secrets[(NS, "s2")] = {"token": "S2"}
    world.apply("open")
    world.apply("s1", registry={"credentialsSecretRef": {"name": "s1"}})
    world.apply("s1-again", registry={"credentialsSecretRef": {"name": "s1"}})
    world.apply("s2", registry={"credentialsSecretRef": {"name": "s2"}})
    kube.create({"apiVersion": "modelpilot.dev/v1alpha1", "kind": "ModelDeployment",
                 "metadata": {"name": "s1", "namespace": "team-b"},
                 "spec": {"model": {"uri": "models:/fraud@champion"},
                          "registry": {"credentialsSecretRef": {"name": "s1"}}}})
    for name in ("open", "s1", "s1-again", "s2"):
        world.reconcile(name)
    world.reconciler.reconcile("team-b", "s1")
    assert sorted(auth or "" for _, auth in _alias_calls(world.mlflow)) == [
        "", "Bearer S2", f"Bearer {NS}-S1", "Bearer team-b-S1"]


def test_a_registry_outside_the_allowlist_is_an_invalid_spec(kube: FakeKube, mlflow: FakeMlflow) -> None:
    world = Harness(kube, mlflow, allowed_registry_urls=("https://mlflow.platform.svc",))
    try:
        world.apply(registry={"trackingUri": "http://evil.example:5000"})
        world.reconcile()
        ready = world.condition("Ready")
        assert ready["reason"] == "InvalidSpec" and "spec.registry.trackingUri" in ready["message"]
        assert mlflow.requests == []
    finally:
        world.reconciler.outbound.stop()


# -- a slow registry holds nobody ---------------------------------------------------------------------------
def test_a_trickling_registry_does_not_hold_the_reconcile(world: Harness, mlflow: FakeMlflow) -> None:
    mlflow.mode = "trickle"
    world.apply()
    started = time.monotonic()
    world.reconcile()
    assert time.monotonic() - started < world.settings.outbound_wait_seconds + 1.0
    assert world.condition("ModelResolved")["status"] == "Unknown"
    deadline = time.monotonic() + world.settings.registry_timeout_seconds + 3
    while not world.enqueued and time.monotonic() < deadline:
        time.sleep(0.05)
    assert world.enqueued == [(NS, "m")], "the deadline's answer re-enqueues the ModelDeployment"
    took = time.monotonic() - started
    assert took < world.settings.registry_timeout_seconds * 1.5, f"a total deadline, not per read ({took:.1f}s)"
    world.reconcile()
    resolved = world.condition("ModelResolved")
    assert resolved["reason"] == "RegistryUnreachable" and "did not answer within 2s" in resolved["message"]


# -- a progressive canary walked with the fake clocks ---------------------------------------------------------
def test_progressive_canary_walks_its_steps_and_promotes(world: Harness) -> None:
    world.apply(refreshInterval="5s", replicas=4, traffic={"router": "replicas"},
                canary={"steps": [{"weight": 25, "pause": "1m"}, {"weight": 50, "pause": "1m"}]})
    converge(world)
    world.mlflow.set_alias("fraud", "champion", "2")
    world.advance(6)
    world.reconcile()
    world.kube.settle()
    world.reconcile()

    def replicas() -> tuple[int, int | None]:
        stable = world.kube.get("apps/v1", "Deployment", NS, "m")
        canary = world.kube.get("apps/v1", "Deployment", NS, "m-canary")
        assert stable is not None
        return stable["spec"]["replicas"], canary["spec"]["replicas"] if canary else None

    status = world.kube.mdep(NS, "m")["status"]
    assert status["canary"]["step"] == 1 and replicas() == (3, 1)
    assert status["model"]["version"] == "1", "stable stays on version 1 during the rollout"
    assert world.condition("Progressing")["reason"] == "CanaryRollout"
    world.advance(61)
    world.reconcile()
    world.kube.settle()
    assert world.kube.mdep(NS, "m")["status"]["canary"]["step"] == 2 and replicas() == (2, 2)
    world.advance(61)
    for _ in range(3):
        world.reconcile()
        world.kube.settle()
    status = world.kube.mdep(NS, "m")["status"]
    assert status["model"]["version"] == "2" and "canary" not in status and replicas() == (4, None)
    assert "Promoted" in world.reasons()


@pytest.mark.parametrize(("router", "capacity", "expected"), [
    ("replicas", None, (3, 1)),        # the replica router borrows by default: 4 pods in all
    ("replicas", "borrow", (3, 1)),
    ("replicas", "additive", (4, 1)),  # 25 % beside 4 stable pods: 1 (~20 % of the requests)
    ("gatewayAPI", None, (4, 1)),      # the Gateway API router adds by default
    ("gatewayAPI", "borrow", (3, 1)),  # a GPU cluster without a spare GPU: still 4 pods in all
    ("gatewayAPI", "additive", (4, 1)),
])
def test_canary_capacity_borrows_from_stable_or_adds_to_it(
        world: Harness, router: str, capacity: str | None, expected: tuple[int, int]) -> None:
    canary: dict[str, Any] = {"steps": [{"weight": 25, "pause": "1m"}]}
    if capacity:
        canary["capacity"] = capacity
    traffic: dict[str, Any] = {"router": router}
    if router == "gatewayAPI":
        traffic["gatewayAPI"] = {"parentRefs": [{"name": "gw"}]}
    world.apply(refreshInterval="5s", replicas=4, traffic=traffic, canary=canary)
    converge(world)
    world.mlflow.set_alias("fraud", "champion", "2")
    world.advance(6)
    for _ in range(2):
        world.reconcile()
        world.kube.settle()
    stable = world.kube.get("apps/v1", "Deployment", NS, "m")
    canary_dep = world.kube.get("apps/v1", "Deployment", NS, "m-canary")
    assert stable is not None and canary_dep is not None
    assert (stable["spec"]["replicas"], canary_dep["spec"]["replicas"]) == expected


def test_news_arriving_while_the_refresher_asks_is_not_lost(world: Harness) -> None:
    """A webhook that lands while an older question is in flight: the refresher asks once more."""
    resolver = world.reconciler.resolver
    resolver.refreshing = True
    world.apply("m", refreshInterval="1h")
    world.converge("m")
    answers = resolver.answers
    assert answers.expedite("fraud") == 1
    (question, _), = answers.due()  # being asked now (the answer predates the move)
    assert answers.expedite("fraud") == 1  # the alias moves meanwhile
    answers.answered(question, world.reconciler.resolver.answers.fresh(question, 3600)[0])  # type: ignore[index]
    assert [q for q, _ in answers.due()] == [question], "asked again at once, not in an hour"


# -- reads from the watches' state ------------------------------------------------------------------------------
@pytest.fixture
def cached(kube: FakeKube, mlflow: FakeMlflow) -> Iterator[Harness]:
    w = Harness(kube, mlflow, cached=True)
    yield w
    w.reconciler.outbound.stop()


def test_with_the_watch_cache_a_converged_modeldeployment_costs_no_request(cached: Harness) -> None:
    cached.apply()
    cached.converge()
    assert cached.condition("Ready")["status"] == "True"
    assert [r for r in cached.kube.reads if r[0] != "Secret"] == [("Deployment", "m"), ("Service", "m")], \
        "only the names about to be created are read (to see an object of someone else there)"

    cached.kube.reads.clear()
    cached.kube.writes.clear()
    cached.restart()
    cached.reconcile()  # after the restarted operator's watches listed everything
    cached.advance(120)
    cached.reconcile()
    assert cached.kube.reads == [] and cached.kube.writes == []


def test_with_the_watch_cache_an_object_the_watches_cannot_see_is_still_a_conflict(cached: Harness) -> None:
    theirs = cached.kube.create(foreign("Service", "m"))  # no managed-by label: no watch delivers it
    cached.apply()
    cached.reconcile()
    assert cached.condition("Ready")["reason"] == "NameConflict"
    assert cached.kube.get("v1", "Service", NS, "m") == theirs
    assert cached.kube.get("apps/v1", "Deployment", NS, "m") is None, "nothing at all is written"
    assert cached.reconciler.cache is not None and cached.reconciler.cache.cached("v1", "Service", NS, "m") is None, \
        "someone else's object is never cached: no watch would say when it is gone"

    del cached.kube.objects[("v1", "Service", NS, "m")]
    cached.converge()
    assert cached.condition("Ready")["status"] == "True"


def test_with_the_watch_cache_a_deleted_child_is_recreated_once_its_deletion_is_delivered(cached: Harness) -> None:
    cached.apply()
    cached.reconcile()
    del cached.kube.objects[("apps/v1", "Deployment", NS, "m")]
    cached.reconcile()
    assert cached.kube.get("apps/v1", "Deployment", NS, "m") is not None


def test_a_stale_event_never_replaces_a_newer_object_in_the_cache(kube: FakeKube) -> None:
    from modelpilot.cache import Cache

    cache = Cache(kube)
    new = {"metadata": {"name": "m", "namespace": NS, "resourceVersion": "12", "managedFields": [{"x": 1}]}}
    cache.put("apps/v1", "Deployment", new)
    cache.put("apps/v1", "Deployment", {"metadata": {"name": "m", "namespace": NS, "resourceVersion": "11"}})
    got = cache.get("apps/v1", "Deployment", NS, "m")
    assert got is not None and got["metadata"]["resourceVersion"] == "12"
    assert "managedFields" not in got["metadata"], "the largest part of an object is never kept"
    cache.put("v1", "Secret", {"metadata": {"name": "s", "namespace": NS}})
    assert cache.cached("v1", "Secret", NS, "s") is None, "only what the watches deliver is cached"
    assert cache.get("apps/v1", "Deployment", NS, "other") is None and kube.reads == []
    assert cache.get("modelpilot.dev/v1alpha1", "ModelDeployment", NS, "x") is None and kube.reads == [
        ("ModelDeployment", "x")], "a ModelDeployment not delivered yet is read from the API server"


def test_the_echo_of_our_own_write_is_not_news_but_a_later_change_is(kube: FakeKube) -> None:
    from modelpilot.cache import Cache

    cache = Cache(kube)

    def dep(rv: str) -> dict[str, Any]:
        return {"metadata": {"name": "m", "namespace": NS, "resourceVersion": rv}}

    cache.put("apps/v1", "Deployment", dep("5"))  # the watch delivered it
    cache.put("apps/v1", "Deployment", dep("5"), ours=True)  # a reconcile saw the same: nothing written
    assert not cache.echo("apps/v1", "Deployment", dep("5")), "only what our writes produced is an echo"
    cache.put("apps/v1", "Deployment", dep("7"), ours=True)  # our apply's answer
    assert not cache.echo("apps/v1", "Deployment", dep("6")), "an older change by someone else is news"
    assert cache.echo("apps/v1", "Deployment", dep("7"))
    assert not cache.echo("apps/v1", "Deployment", dep("7")), "an echo is recognised once"
    cache.put("apps/v1", "Deployment", dep("9"), ours=True)
    assert not cache.echo("apps/v1", "Deployment", dep("10")), "the controller's update after our write is news"
    assert not cache.echo("apps/v1", "Deployment", dep("9")), "and our echo is past"


# -- model staleness ---------------------------------------------------------------------------------------------
def test_registration_time_and_serving_since_are_reported_and_kept(world: Harness) -> None:
    world.apply()
    world.reconcile()
    model = world.kube.mdep(NS, "m")["status"]["model"]
    assert model["registeredAt"] == "2026-11-01T00:00:00Z" and "servingSince" not in model  # not rolled out yet
    world.kube.settle()
    world.reconcile()
    since = world.kube.mdep(NS, "m")["status"]["model"]["servingSince"]
    writes = len(world.kube.writes)
    world.reconcile()
    assert world.kube.mdep(NS, "m")["status"]["model"]["servingSince"] == since
    assert len(world.kube.writes) == writes, "nothing changed: nothing written"
    exported = prometheus_client.generate_latest().decode()
    line = next(x for x in exported.splitlines() if x.startswith("modelpilot_model_age_seconds{") and 'name="m"' in x
                and f'namespace="{NS}"' in x)
    assert 'version="1"' in line and float(line.rsplit(" ", 1)[1]) > 86400  # registered weeks before "now"


def test_a_version_older_than_max_model_age_is_stale_once_and_a_newer_one_clears_it(world: Harness) -> None:
    now = time.time()
    world.mlflow.registered.update({"1": int((now - 40 * 86400) * 1000), "2": int((now - 3600) * 1000)})
    world.apply(refreshInterval="5s", monitoring={"maxModelAge": "30d"})
    converge(world)
    stale = world.condition("Stale")
    assert (stale["status"], stale["reason"]) == ("True", "ModelOlderThanMaxAge"), stale
    assert "longer ago than spec.monitoring.maxModelAge (30d)" in stale["message"]
    world.reconcile()
    assert world.reasons("Warning").count("ModelOlderThanMaxAge") == 1, "one event when it turns"
    assert world.condition("Ready")["status"] == "True", "a stale model still serves"
    world.mlflow.set_alias("fraud", "champion", "2")
    world.advance(6)
    converge(world)
    fresh = world.condition("Stale")
    assert (fresh["status"], fresh["reason"]) == ("False", "WithinMaxAge"), fresh


def test_a_newer_version_left_unserved_longer_than_max_model_age_is_named(world: Harness) -> None:
    now = time.time()
    world.mlflow.registered.update({"1": int((now - 90 * 86400) * 1000), "2": int((now - 10 * 86400) * 1000)})
    world.apply(refreshInterval="5s", monitoring={"maxModelAge": "30d"})
    converge(world)
    stale = world.condition("Stale")
    assert (stale["status"], stale["reason"]) == ("True", "ModelOlderThanMaxAge"), stale
    assert "promote version 2" in stale["message"], "a newer version exists, younger than the limit"
    # version 3 was registered long ago too (a pinned alias nobody moved): that is the news
    world.mlflow.registered["3"] = int((now - 40 * 86400) * 1000)
    world.advance(6)
    converge(world)
    stale = world.condition("Stale")
    assert (stale["status"], stale["reason"]) == ("True", "NewerVersionNotServed"), stale
    assert "version 3" in stale["message"] and "version 1 was registered" in stale["message"]
    world.reconcile()
    assert world.reasons("Warning").count("NewerVersionNotServed") == 1, "one event when it turns"
    assert world.kube.mdep(NS, "m")["status"]["model"]["version"] == "1", "reported, never acted on"


def test_a_registry_without_latest_versions_still_reports_the_served_versions_age(world: Harness) -> None:
    world.mlflow.latest = False  # e.g. a registry without stages answers get-latest-versions with an error
    world.mlflow.registered["1"] = int((time.time() - 40 * 86400) * 1000)
    world.apply(refreshInterval="1h", monitoring={"maxModelAge": "30d"})
    converge(world)
    assert world.condition("Stale")["reason"] == "ModelOlderThanMaxAge"
    delay = world.reconcile()
    assert delay is not None and delay > 60, "the newest-version question failing does not drive reconciles"


def test_without_max_model_age_the_registry_is_not_asked_for_its_newest_version(world: Harness) -> None:
    world.apply()
    converge(world)
    assert not any("get-latest-versions" in path for path, _ in world.mlflow.requests)


def test_the_next_look_is_due_when_the_served_version_turns_stale(world: Harness) -> None:
    world.mlflow.registered["1"] = int((time.time() - 30 * 86400 + 100) * 1000)
    world.apply(refreshInterval="1h", monitoring={"maxModelAge": "30d"})
    converge(world)
    delay = world.reconcile()
    assert delay is not None and 95 < delay <= 102, delay


def test_max_model_age_without_a_registration_time_is_unknown_and_invalid_ages_name_the_field(
        world: Harness) -> None:
    world.mlflow.registered["1"] = 0  # no creation_timestamp
    world.apply(monitoring={"maxModelAge": "30d"})
    converge(world)
    unknown = world.condition("Stale")
    assert (unknown["status"], unknown["reason"]) == ("Unknown", "RegistrationTimeUnknown"), unknown
    with pytest.raises(InvalidSpec, match=r"spec\.monitoring\.maxModelAge"):
        parse_spec({"model": {"uri": "models:/x@y"}, "monitoring": {"maxModelAge": "a month"}},
                   Settings(default_tracking_uri="http://mlflow:5000"))


# -- latency thresholds of the served version ---------------------------------------------------------------------
class FakePrometheus:
    """Answers instant queries over real HTTP: `values[metric]` by the first of requests / 5.. / quantile seen."""

    def __init__(self) -> None:
        self.values: dict[str, float | None] = {
            "requests": 500.0, "errorRate": 0.001, "p99LatencyMs": 40.0,
            # the scoring server's drift metrics (None: no series)
            "profile": 1.0, "samples": 2000.0, "featureDrift": 0.02, "predictionDrift": 0.01}
        #: the feature label of the worst feature's series
        self.feature = "amount"
        self.queries: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))["query"]
                fake.queries.append(query)
                drift = {"modelpilot_drift_profile_loaded": "profile", "modelpilot_drift_samples": "samples",
                         "modelpilot_feature_drift": "featureDrift", "modelpilot_prediction_drift": "predictionDrift"}
                kind = next((k for metric, k in drift.items() if metric in query), None) or (
                    "p99LatencyMs" if "histogram_quantile" in query else "errorRate" if '5..' in query
                    else "requests")
                value = fake.values[kind]
                labels = {"feature": fake.feature} if kind == "featureDrift" else {}
                result = [] if value is None else [{"metric": labels, "value": [0, str(value)]}]
                body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    yield fake
    fake.server.shutdown()


def _answered(world: Harness, checks: PeriodicChecks[Any]) -> None:
    """Reconcile until the check's answer is in (it runs in the background and re-enqueues the object).
    Other answers (a due alias refresh) enqueue the object too, so wait for this check's own."""
    world.reconcile()
    wait_for(lambda: not checks.pending((NS, "m")), 10, "the Prometheus answer")
    world.enqueued.clear()
    world.reconcile()


def _judged(world: Harness) -> dict[str, Any]:
    _answered(world, world.reconciler.thresholds)
    return world.condition("LatencyWithinThreshold")


def test_latency_thresholds_are_checked_against_prometheus_and_reported(
        world: Harness, prometheus: FakePrometheus) -> None:
    world.apply(monitoring={"latency": {"p99Ms": 100, "errorRate": 0.01, "window": "2m",
                                        "prometheusUrl": prometheus.url}})
    converge(world)
    ok = _judged(world)
    assert (ok["status"], ok["reason"]) == ("True", "WithinThreshold"), ok
    first = prometheus.queries[0]
    assert f'namespace="{NS}",model="fraud",version="1"' in first and "[120s]" in first
    # where the Prometheus Operator's CRDs are served, the same thresholds as an owned PrometheusRule
    rule = world.kube.get("monitoring.coreos.com/v1", "PrometheusRule", NS, "m")
    assert rule is not None and rule["metadata"]["ownerReferences"][0]["uid"]
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert alerts["ModelLatencyHigh"]["expr"].endswith(") > 100") and alerts["ModelLatencyHigh"]["for"] == "120s"
    assert f'namespace="{NS}",model="fraud"' in alerts["ModelErrorRateHigh"]["expr"]
    assert alerts["ModelErrorRateHigh"]["expr"].endswith("> 0.01")
    writes = len(world.kube.writes)
    world.advance(61)
    prometheus.values["p99LatencyMs"] = 41.0  # new numbers, same judgement: nothing is written
    assert _judged(world)["status"] == "True" and len(world.kube.writes) == writes
    world.advance(61)
    prometheus.values["p99LatencyMs"] = 250.0
    over = _judged(world)
    assert (over["status"], over["reason"]) == ("False", "ThresholdExceeded") and "p99LatencyMs 250.0 ms" in \
        over["message"], over
    world.reconcile()
    assert world.reasons("Warning").count("ThresholdExceeded") == 1
    assert world.condition("Ready")["status"] == "True", "slow is reported, not a reason to stop serving"
    world.advance(61)
    prometheus.values.update(requests=3.0)
    unknown = _judged(world)
    assert (unknown["status"], unknown["reason"]) == ("Unknown", "NotEnoughData") and "only 3 stable version " \
        "requests" in unknown["message"], unknown
    world.apply()  # thresholds removed: the condition and the PrometheusRule go
    world.reconcile()
    assert world.condition("LatencyWithinThreshold") == {}
    assert world.kube.get("monitoring.coreos.com/v1", "PrometheusRule", NS, "m") is None


def test_a_prometheus_rule_quotes_what_a_tenant_named() -> None:
    latency = parse_spec({"model": {"uri": "models:/x@y"}, "monitoring": {"latency": {
        "p99Ms": 250, "prometheusUrl": "http://prom:9090"}}}, Settings(default_tracking_uri="http://m:5000")).latency
    assert latency is not None
    rule = render_prometheus_rule(Owner("m", "ns", "u"), latency, 'evil"} or vector(1) #')
    (alert,) = rule["spec"]["groups"][0]["rules"]
    assert 'model="evil\\"} or vector(1) #"' in alert["expr"], alert["expr"]


@pytest.mark.parametrize(("latency", "says"), [
    ({"window": "5m"}, "needs p99Ms or errorRate"),
    ({"p99Ms": -1}, "p99Ms must be a number of at least 0"),
    ({"errorRate": 2}, "errorRate must be a number of at least 0 and at most 1"),
    ({"p99Ms": 100}, "prometheusUrl is not set and the operator has no default"),
    ({"p99Ms": 100, "prometheusUrl": "prom:9090"}, "spec.monitoring.latency.prometheusUrl"),
])
def test_bad_latency_thresholds_name_the_field(latency: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.monitoring\.latency") as caught:
        parse_spec({"model": {"uri": "models:/x@y"}, "monitoring": {"latency": latency}},
                   Settings(default_tracking_uri="http://mlflow:5000"))
    assert says in str(caught.value)


# -- data drift of the served version -----------------------------------------------------------------------------
def _drifting(world: Harness) -> dict[str, Any]:
    world.advance(61)
    _answered(world, world.reconciler.drift)
    return world.condition("Drifting")


def test_drift_is_read_from_prometheus_judged_and_reported_with_one_event_when_it_turns(
        world: Harness, prometheus: FakePrometheus) -> None:
    world.apply(monitoring={"drift": {"warn": 0.1, "alert": 0.25, "window": "30m", "minSamples": 500,
                                      "prometheusUrl": prometheus.url}})
    converge(world)
    assert _env(world)["MODELPILOT_DRIFT_WINDOW"] == "1800", "the pods measure over the window the operator judges"
    calm = _drifting(world)
    assert (calm["status"], calm["reason"]) == ("False", "NoDrift"), calm
    assert "feature amount PSI 0.020" in calm["message"] and "over 2000 rows" in calm["message"], calm
    drift_queries = [q for q in prometheus.queries if "drift" in q]
    assert drift_queries and all(f'namespace="{NS}",model="fraud",version="1"' in q for q in drift_queries)
    writes = len(world.kube.writes)
    prometheus.values["featureDrift"] = 0.03  # new numbers, same judgement: nothing is written
    assert _drifting(world)["reason"] == "NoDrift" and len(world.kube.writes) == writes
    prometheus.values["featureDrift"], prometheus.feature = 0.15, "country"
    warn = _drifting(world)
    assert (warn["status"], warn["reason"]) == ("True", "DriftWarning") and "feature country PSI 0.150" in \
        warn["message"], warn
    prometheus.values["predictionDrift"] = 0.4
    alert = _drifting(world)
    assert (alert["status"], alert["reason"]) == ("True", "DriftAlert") and "predictions PSI 0.400" in \
        alert["message"], alert
    world.reconcile()
    assert world.reasons("Warning").count("DriftWarning") == 1 and world.reasons("Warning").count("DriftAlert") == 1
    assert world.condition("Ready")["status"] == "True", "drift is reported, not a reason to stop serving"
    prometheus.values.update(featureDrift=0.01, predictionDrift=0.01)
    assert _drifting(world)["reason"] == "NoDrift"
    assert world.reasons("Normal").count("DriftRecovered") == 1
    prometheus.values["samples"] = 120.0
    few = _drifting(world)
    assert (few["status"], few["reason"]) == ("Unknown", "NotEnoughData") and "only 120 rows" in few["message"]
    prometheus.values["profile"] = 0.0
    none = _drifting(world)
    assert (none["status"], none["reason"]) == ("Unknown", "NoReferenceProfile"), none
    assert "modelpilot.monitoring.log_reference" in none["message"]
    prometheus.values["profile"] = None
    unscraped = _drifting(world)
    assert unscraped["reason"] == "NotEnoughData" and "no drift metrics of version 1" in unscraped["message"]
    world.apply()  # drift watching removed: the condition goes, and the window from the pods' environment
    world.reconcile()
    assert world.condition("Drifting") == {} and "MODELPILOT_DRIFT_WINDOW" not in _env(world)


def _env(world: Harness) -> dict[str, Any]:
    dep = world.kube.objects[("apps/v1", "Deployment", NS, "m")]
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize(("drift", "says"), [
    ({"warn": 0.3}, "warn (0.3) must not be above alert (0.25)"),
    ({"warn": 0}, "warn must be a number above 0"),
    ({"alert": "high"}, "alert must be a number above 0"),
    ({"window": "10s"}, "window must be from 1m to 7d"),
    ({"minSamples": 0}, "minSamples must be a whole number from 1"),
    ({"prometheusUrl": "prom:9090"}, "spec.monitoring.drift.prometheusUrl"),
    ("on", "spec.monitoring.drift must be an object"),
])
def test_bad_drift_settings_name_the_field(drift: Any, says: str) -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.monitoring\.drift") as caught:
        parse_spec({"model": {"uri": "models:/x@y"}, "monitoring": {"drift": drift}},
                   Settings(default_tracking_uri="http://mlflow:5000", default_prometheus_url="http://prom:9090"))
    assert says in str(caught.value)


def test_a_canary_compared_on_predictions_counts_into_stables_bins(
        world: Harness, prometheus: FakePrometheus) -> None:
    world.apply(refreshInterval="5s", replicas=2, traffic={"router": "replicas"}, canary={
        "steps": [{"weight": 50, "pause": "1m"}],
        "analysis": {"maxPredictionDrift": 0.2, "prometheusUrl": prometheus.url}})
    converge(world)
    assert "MODELPILOT_DRIFT_BASELINE" not in _env(world), "stable counts into its own bins"
    world.mlflow.set_alias("fraud", "champion", "2")
    world.advance(6)
    world.reconcile()
    canary = world.kube.get("apps/v1", "Deployment", NS, "m-canary")
    assert canary is not None
    env = {e["name"]: e.get("value") for e in canary["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELPILOT_DRIFT_BASELINE"] == "1" and env["MODELPILOT_MODEL_VERSION"] == "2"


def test_a_problem_that_cleared_leaves_the_status_and_then_nothing_is_written(world: Harness) -> None:
    """status.autoscaling.problem while the HPA cannot scale; gone once it can (a merge patch keeps a nested
    key that is not sent as null: the problem stayed, and every reconcile wrote the status again)."""
    world.apply(autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 80})
    converge(world)
    hpa = world.kube.objects[("autoscaling/v2", "HorizontalPodAutoscaler", NS, "m")]

    def hpa_says(active: str, reason: str) -> None:
        hpa["status"] = {"currentReplicas": 1, "desiredReplicas": 1, "conditions": [
            {"type": "ScalingActive", "status": active, "reason": reason, "message": "cpu: no metrics"}]}
        world.reconcile()

    hpa_says("False", "FailedGetResourceMetric")
    assert world.status()["autoscaling"]["problem"] == "FailedGetResourceMetric: cpu: no metrics"
    hpa_says("True", "ValidMetricFound")
    assert world.status()["autoscaling"] == {"engine": "hpa", "currentReplicas": 1, "desiredReplicas": 1}
    world.kube.writes.clear()
    world.reconcile()
    assert world.kube.writes == []
