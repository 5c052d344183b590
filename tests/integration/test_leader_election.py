"""Two operator replicas on the real API server: one leads through a Lease, the other takes over.

Lease duration 15 s, renew deadline 10 s, retry period 2 s (the defaults, as controller-runtime's).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.controlplane import ControlPlane
from hack.services import MlflowServer
from modelpilot.kube import Kube
from tests.helpers import Operator, Registry, apply, events_for, mdep_manifest, wait_for, wait_ready

pytestmark = pytest.mark.cluster

LEASE_SECONDS = 15


@pytest.fixture
def replicas(control_plane: ControlPlane, mlflow_server: MlflowServer, operator: Operator, tmp_path: Path,
             namespace: str) -> Iterator[list[Operator]]:
    """Two operators with leader election (in place of the shared one); the lease lives in `namespace`."""
    pair = [Operator(tmp_path / n, control_plane.kubeconfig_path, mlflow_server.url) for n in ("a", "b")]
    for op in pair:
        op.env.update(MODELPILOT_LEADER_ELECTION="true", MODELPILOT_LEADER_ELECTION_NAMESPACE=namespace)
    operator.stop()
    try:
        for op in pair:
            op.start()
        yield pair
    finally:
        for op in pair:
            op.stop()
        operator.start()


def leader_of(pair: list[Operator], timeout: float = LEASE_SECONDS + 10) -> Operator:
    def one_leads() -> Operator | None:
        leading = [op for op in pair if op.procs.alive("operator") and op.metric("modelpilot_leader") == 1]
        return leading[0] if len(leading) == 1 else None

    return wait_for(one_leads, timeout, "exactly one leader")  # type: ignore[no-any-return]


def test_only_the_leader_reconciles_and_a_standby_takes_over_when_it_dies(
        control_plane: ControlPlane, kube: Kube, replicas: list[Operator], registry: Registry, namespace: str,
        model_name: str) -> None:
    leader = leader_of(replicas)
    standby = next(op for op in replicas if op is not leader)
    registry.register(model_name, alias="champion")
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion"))
    wait_ready(kube, namespace, "m", operator=leader)
    assert standby.metric("modelpilot_reconciles_total", result="ok") == 0, "a standby never reconciles"
    lease = kube.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/modelpilot-leader")
    assert lease is not None and lease["spec"]["leaseDurationSeconds"] == LEASE_SECONDS

    leader.kill()
    killed_at = time.monotonic()
    apply(control_plane, mdep_manifest("m", namespace, f"models:/{model_name}@champion", replicas=2))
    wait_for(lambda: (kube.get("apps/v1", "Deployment", namespace, "m") or {}).get("spec", {}).get("replicas") == 2,
             LEASE_SECONDS + 5, f"the standby to reconcile\n{standby.logs()}")
    took = time.monotonic() - killed_at
    print(f"standby reconciled {took:.1f}s after the leader was killed")
    assert standby.metric("modelpilot_leader") == 1
    assert "Became the leader" in standby.logs(200)


def test_during_an_alias_move_each_deployment_changes_exactly_once(
        control_plane: ControlPlane, kube: Kube, replicas: list[Operator], registry: Registry, namespace: str,
        model_name: str) -> None:
    leader = leader_of(replicas)
    registry.register(model_name, alias="champion")
    names = [f"m{i}" for i in range(4)]
    for name in names:
        apply(control_plane, mdep_manifest(name, namespace, f"models:/{model_name}@champion", refreshInterval="2s"))
    for name in names:
        wait_ready(kube, namespace, name, operator=leader, version="1")
    before = {n: kube.get("apps/v1", "Deployment", namespace, n)["metadata"]["generation"] for n in names}

    registry.register(model_name, seed=1)
    registry.set_alias(model_name, "champion", "2")
    for name in names:
        wait_ready(kube, namespace, name, operator=leader, version="2", timeout=60)
    time.sleep(6)  # three more refreshes: a second writer would show up now
    after = {n: kube.get("apps/v1", "Deployment", namespace, n)["metadata"]["generation"] for n in names}
    assert {n: after[n] - before[n] for n in names} == dict.fromkeys(names, 1)
    for name in names:
        moved = [e for e in events_for(kube, namespace, name) if e["reason"] == "VersionChanged"]
        assert len(moved) == 1 and moved[0].get("count", 1) == 1, moved
    assert sum(op.metric("modelpilot_leader") for op in replicas) == 1
