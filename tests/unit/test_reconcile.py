"""The whole reconcile, fast: an in-memory API (tests/fakes/kube.py), a real-HTTP fake registry, fake clocks.

These run the real pipeline (observe → resolve → plan → desired → apply → status) in milliseconds.
The same behaviours are held against the real API server and MLflow in tests/integration.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from hack.proc import wait_for
from modelpilot.reconciler import CONFLICT_RETRY_SECONDS
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
