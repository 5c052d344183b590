"""A progressive canary on real pods, judged on real routed traffic.

Stable and canary run the scoring-server image on the real node; a client calls the Service's
ClusterIP and kube-proxy spreads the requests over both tracks' pods (the replica router); Prometheus
finds the pods through Kubernetes service discovery with exactly the selector `examples/podmonitor.yaml`
promises (the operator's labels on the serving pods) and labels their series with `namespace`, as a
PodMonitor would. A version that fails half its requests is rolled back; a good one is promoted.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest

from hack.controlplane import ControlPlane
from hack.realnode import RealNode
from hack.sample_model import register_faulty
from hack.services import PrometheusServer
from modelpilot.kube import Kube
from tests.helpers import Operator, RandomTraffic, Registry, apply, mdep_manifest, wait_ready
from tests.integration.test_canary import wait_canary
from tests.node.test_real_node import service_url

pytestmark = pytest.mark.cluster

FEATURES = 4


def test_a_canary_on_real_pods_is_rolled_back_or_promoted_on_real_metrics(
        control_plane: ControlPlane, kube: Kube, node_operator: Operator, node_registry: Registry,
        pod_prometheus: PrometheusServer, real_node: RealNode, namespace: str, model_name: str) -> None:
    v1 = node_registry.register(model_name, alias="champion", seed=0)
    manifest = mdep_manifest(
        "fraud", namespace, f"models:/{model_name}@champion", replicas=2, refreshInterval="2s",
        traffic={"router": "replicas"},
        canary={"steps": [{"weight": 50, "pause": "20s"}],
                "analysis": {"prometheusUrl": pod_prometheus.url, "maxErrorRate": 0.05, "minRequests": 20,
                             "window": "20s"}})
    del manifest["spec"]["tolerations"]  # real pods, on the real node
    apply(control_plane, manifest)
    wait_ready(kube, namespace, "fraud", timeout=240, operator=node_operator, version=v1)

    url = service_url(kube, namespace, "fraud", real_node)
    started = time.time()
    with RandomTraffic(url, FEATURES, seed=7, per_second=50) as traffic:
        bad = register_faulty(node_registry.url, model_name, alias="champion", fail_share=0.5, features=FEATURES)
        obj = wait_canary(kube, namespace, "fraud", "the faulty version to be rolled back",
                          lambda s: (s.get("lastRollout") or {}).get("version") == bad, node_operator, timeout=300)
        status = obj["status"]
        assert status["lastRollout"]["result"] == "RolledBack", status["lastRollout"]
        assert status["rejected"]["version"] == bad and "errorRate" in status["rejected"]["reason"]
        assert status["model"]["version"] == v1
        # what the analysis judged came from the canary's real pods, found by Kubernetes discovery
        failed = pod_prometheus.query(
            f'sum by (pod) (modelpilot_requests_total{{namespace="{namespace}",version="{bad}",code="500"}})')
        assert failed and all(s["metric"]["pod"].startswith("fraud-canary-") for s in failed), failed
        assert traffic.codes[500] > 0, "the faulty version really failed requests routed to it"

        good = node_registry.register(model_name, alias="champion", seed=3)
        obj = wait_canary(kube, namespace, "fraud", "the good version to be promoted",
                          lambda s: (s.get("lastRollout") or {}).get("version") == good
                          and s["lastRollout"]["result"] == "Promoted", node_operator, timeout=300)
        wait_ready(kube, namespace, "fraud", timeout=240, operator=node_operator, version=good)
        served = pod_prometheus.query(
            f'sum(modelpilot_requests_total{{namespace="{namespace}",version="{good}",code="200"}})')
        assert served and float(served[0]["value"][1]) > 20
    # Every answer is a model's answer (200) or the faulty version's failure (500). Requests that got no
    # answer from a pod are shown, not asserted away. Under CPU load (CI, or two busy loops beside this
    # test) the Service has refused connections for 18-40 s after a promotion: the new stable pod turned
    # Ready, its port refused connections about 3 s later (the kubelet's probes too) while the process
    # lived on, until kubelet's liveness probe restarted it; the old pods were terminating meanwhile.
    # Not explained yet (pod logs were gone with the namespace); kube-proxy was not the cause. At the
    # edges of such an outage, between kube-proxy's filter and nat table commits, a request can find no
    # rule for the ClusterIP and leave by the default route: RandomTraffic counts that with no answer.
    report = f"traffic from {started:.1f} to {time.time():.1f}\n{traffic.report()}"
    assert set(traffic.codes) <= {0, 200, 500}, f"{report}\n{real_node.proxy_report(urlsplit(url).hostname or '')}"
    if traffic.failures:
        print(f"\n{traffic.codes[0]} requests got no answer\n{report}")
