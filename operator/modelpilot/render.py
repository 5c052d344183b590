"""Render the Kubernetes objects of one ModelDeployment: spec in, manifests out.

Pure functions only: no API calls, no clock, no randomness. The same inputs give byte-identical
manifests, which is what makes the reconcile idempotent (a server-side apply of an unchanged manifest
is a no-op that does not even bump the resourceVersion). Manifests are built as dicts, never by
templating YAML, so no user string can inject structure.
"""

from __future__ import annotations

from typing import Any

from .config import Settings
from .names import (
    ANNOTATION_MODEL_URI,
    ANNOTATION_RESOLVED_FROM,
    ANNOTATION_RUN_ID,
    ANNOTATION_SOURCE_URI,
    CONTAINER,
    GATEWAY_API_VERSION,
    GPU_RESOURCE,
    LABEL_DEPLOYMENT,
    LABEL_MODEL_NAME,
    LABEL_MODEL_VERSION,
    LABEL_TRACK,
    SERVICE_PORT,
    STABLE,
    Owner,
    budget_name,
    common_labels,
    deployment_name,
    label_value,
    policy_name,
    route_name,
    selector_labels,
    service_name,
    track_service_name,
)
from .podtemplate import dress
from .registry import ResolvedModel
from .spec import DeploymentSpec


def _env(owner: Owner, spec: DeploymentSpec, resolved: ResolvedModel, settings: Settings, track: str,
         baseline: str | None = None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "MODELPILOT_MODEL_URI", "value": resolved.pinned},
        {"name": "MLFLOW_TRACKING_URI", "value": spec.tracking_uri},
        {"name": "MODELPILOT_PORT", "value": str(settings.server_port)},
        {"name": "MODELPILOT_HEALTH_PORT", "value": str(settings.server_health_port)},
        {"name": "MODELPILOT_WORKERS", "value": str(spec.runtime.workers)},
        {"name": "MODELPILOT_MAX_BATCH_SIZE", "value": str(spec.runtime.batching.max_batch_size)},
        {"name": "MODELPILOT_MAX_BATCH_DELAY_MS", "value": f"{spec.runtime.batching.max_delay_ms:g}"},
        {"name": "MODELPILOT_BATCHING_MODE", "value": spec.runtime.batching.mode},
        {"name": "MODELPILOT_MODEL_NAME", "value": resolved.name},
        {"name": "MODELPILOT_MODEL_VERSION", "value": resolved.version},
        # The root filesystem is read-only: downloads, caches and MLflow's home go to the /tmp emptyDir.
        {"name": "MODELPILOT_CACHE_DIR", "value": "/tmp/modelpilot-models"},
        {"name": "HOME", "value": "/tmp"},
    ]
    if spec.auth.mode != "none":  # (only then: adding env to every pod template would restart every model)
        env += _auth_env(owner, spec)
    if spec.payload_log is not None:  # (likewise)
        env += [{"name": "MODELPILOT_PAYLOAD_LOG_URL", "value": spec.payload_log.url},
                {"name": "MODELPILOT_PAYLOAD_LOG_SAMPLE_RATE", "value": f"{spec.payload_log.sample_rate:g}"},
                {"name": "MODELPILOT_NAMESPACE", "value": owner.namespace},
                {"name": "MODELPILOT_TRACK", "value": track}]
    if spec.drift is not None:  # (likewise) the pods measure over the window the operator judges
        env.append({"name": "MODELPILOT_DRIFT_WINDOW", "value": f"{spec.drift.window_seconds:g}"})
    if baseline is not None:  # a canary compared with stable: its predictions also go into stable's bins
        env.append({"name": "MODELPILOT_DRIFT_BASELINE", "value": baseline})
    if spec.credentials_secret:
        # The pod downloads the model through the registry with the same credentials the operator used.
        for var, key in (("MLFLOW_TRACKING_TOKEN", "token"), ("MLFLOW_TRACKING_USERNAME", "username"),
                         ("MLFLOW_TRACKING_PASSWORD", "password")):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {
                "name": spec.credentials_secret, "key": key, "optional": True}}})
    reserved = {e["name"] for e in env}
    env.extend(e for e in spec.runtime.env
               if e["name"] not in reserved and not e["name"].startswith(OPERATOR_ONLY_ENV))
    # The API server stores `value: ""` as no value at all (the variable is still set, empty): rendered the
    # same way, the live Deployment holds what is applied, and a reconcile does not apply it again.
    return [{k: v for k, v in e.items() if not (k == "value" and v == "")} for e in env]


#: Settings only the operator sets, never `runtime.env`: auth (the spec's `auth`), and drift (a profile URI
#: of the tenant's choosing would be fetched with the registry credentials the pod holds).
OPERATOR_ONLY_ENV = ("MODELPILOT_AUTH_", "MODELPILOT_KUBE_", "MODELPILOT_DRIFT_")
#: Where an apiKey Secret is mounted (kubelet refreshes it in place: keys rotate without a restart).
API_KEYS_DIR = "/var/run/modelpilot/api-keys"


def _auth_env(owner: Owner, spec: DeploymentSpec) -> list[dict[str, Any]]:
    """All of them, so nothing of the image's defaults or the pod's environment decides."""
    mode = {"none": "none", "kubernetes": "kubernetes", "apiKey": "api-key"}[spec.auth.mode]
    return [{"name": "MODELPILOT_AUTH_MODE", "value": mode},
            {"name": "MODELPILOT_AUTH_RESOURCE", "value": f"{owner.namespace}/{owner.name}"},
            {"name": "MODELPILOT_AUTH_AUDIENCE", "value": spec.auth.audience},
            {"name": "MODELPILOT_AUTH_API_KEYS_DIR", "value": API_KEYS_DIR},
            {"name": "MODELPILOT_KUBE_API_URL", "value": ""},
            {"name": "MODELPILOT_KUBE_TOKEN_FILE", "value": "/var/run/secrets/kubernetes.io/serviceaccount/token"},
            {"name": "MODELPILOT_KUBE_CA_FILE", "value": "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"}]


def _auth_pod(pod_spec: dict[str, Any], container: dict[str, Any], spec: DeploymentSpec,
              settings: Settings) -> None:
    if spec.auth.mode == "kubernetes":
        # The pod's own token asks the API server about callers' tokens; nothing else is granted to it.
        pod_spec["serviceAccountName"] = settings.server_auth_service_account
        pod_spec["automountServiceAccountToken"] = True
    elif spec.auth.api_key_secret:
        # Readable by the server's non-root user (the pod runs nothing else); mounted read-only.
        pod_spec["volumes"].append({"name": "api-keys", "secret": {"secretName": spec.auth.api_key_secret,
                                                                   "defaultMode": 0o444}})
        container["volumeMounts"].append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})


def _amounts(text: str) -> dict[str, str]:
    """`cpu=100m,memory=256Mi` → {"cpu": "100m", "memory": "256Mi"}; `none` → {}."""
    if text.strip() == "none":
        return {}
    pairs = (item.partition("=") for item in text.split(",") if item.strip())
    return {k.strip(): v.strip() for k, _, v in pairs if k.strip() and v.strip()}


def _resources(spec: DeploymentSpec, settings: Settings) -> dict[str, Any]:
    """The spec's resources; the platform's default requests where it sets none, and its default limits
    where it sets no resources at all (so a default limit never falls below a request the spec sets)."""
    resources: dict[str, Any] = {k: dict(v) for k, v in spec.resources.items()}
    if not resources and _amounts(settings.server_default_limits):
        resources["limits"] = _amounts(settings.server_default_limits)
    if "requests" not in resources and _amounts(settings.server_default_requests):
        resources["requests"] = _amounts(settings.server_default_requests)
    if spec.gpus:
        resources.setdefault("limits", {})[GPU_RESOURCE] = spec.gpus
    return resources


def _probe(path: str, period: int, failures: int, port: str) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def render_deployment(
    owner: Owner,
    spec: DeploymentSpec,
    resolved: ResolvedModel,
    settings: Settings,
    track: str = STABLE,
    replicas: int | None = None,
    resolved_from: str | None = None,
    autoscaled: bool = False,
    baseline: str | None = None,
) -> dict[str, Any]:
    """The Deployment of one track that serves exactly `resolved` (never a floating alias).

    `replicas` overrides spec.replicas (a replica-ratio canary split); `resolved_from` is the URI the
    version was resolved from (default spec.model.uri); `autoscaled`: no replicas at all (an HPA owns them);
    `baseline`: the version whose prediction bins the pods also count into (a canary compared with stable).
    """
    gpu = spec.runtime.variant == "gpu"
    image = settings.server_image_gpu if gpu else settings.server_image_cpu
    pod_labels = {
        **common_labels(owner),
        **selector_labels(owner, track),
        LABEL_MODEL_NAME: label_value(resolved.name),
        LABEL_MODEL_VERSION: label_value(resolved.version),
    }
    annotations = {
        ANNOTATION_MODEL_URI: resolved.pinned,
        ANNOTATION_RESOLVED_FROM: resolved_from or spec.model_uri,
    }
    if resolved.source:
        annotations[ANNOTATION_SOURCE_URI] = resolved.source
    if resolved.run_id:
        annotations[ANNOTATION_RUN_ID] = resolved.run_id

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "args": ["--model-uri", resolved.pinned],
        "ports": [{"name": "http", "containerPort": settings.server_port, "protocol": "TCP"},
                  {"name": "health", "containerPort": settings.server_health_port, "protocol": "TCP"}],
        "env": _env(owner, spec, resolved, settings, track, baseline),
        "readinessProbe": _probe("/v2/health/ready", period=5, failures=3, port=settings.server_probe_port),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3, port=settings.server_probe_port),
        # Loading a model (download + unpickle + warm-up) can take many minutes: liveness starts only
        # once the model is ready, within a budget of 15 minutes.
        "startupProbe": _probe("/v2/health/ready", period=5, failures=180, port=settings.server_probe_port),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "model-cache", "mountPath": "/tmp"}],
        # Give Services time to drop the pod before SIGTERM; the server then drains in-flight requests.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
    }
    if settings.server_image_pull_policy:
        container["imagePullPolicy"] = settings.server_image_pull_policy
    resources = _resources(spec, settings)
    if resources:
        container["resources"] = resources

    pod_spec: dict[str, Any] = {
        "containers": [container],
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30,
        "volumes": [{"name": "model-cache", "emptyDir": (
            {"sizeLimit": settings.server_tmp_size_limit} if settings.server_tmp_size_limit else {})}],
    }
    _auth_pod(pod_spec, container, spec, settings)
    node_selector = spec.node_selector or dict(settings.server_node_selector)
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    tolerations = list(spec.tolerations or settings.server_tolerations)
    if gpu and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.most_replicas >= 2:
        # soft: a single-node cluster still runs every replica (decided on the spec, not on a canary
        # split's count or the autoscaler's, so neither ever changes the pod template)
        pod_spec["topologySpreadConstraints"] = [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(owner, track)}}]
    template_metadata = {"labels": pod_labels, "annotations": annotations}
    dress(template_metadata, pod_spec, container, spec.pod, settings)

    count = spec.replicas if replicas is None else replicas
    deployment_spec: dict[str, Any] = {} if autoscaled else {"replicas": count}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owner.child_metadata(deployment_name(owner, track),
                                         {**common_labels(owner), LABEL_TRACK: track}),
        "spec": {
            **deployment_spec,
            "selector": {"matchLabels": selector_labels(owner, track)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": spec.max_surge,
                                                                    "maxUnavailable": spec.max_unavailable}},
            "template": {
                "metadata": template_metadata,
                "spec": pod_spec,
            },
        },
    }


def render_service(owner: Owner, settings: Settings, track: str | None = None) -> dict[str, Any]:
    """A Service: port 80 → the scoring server's `http` port.

    Without `track` it is the Service applications call, selecting the pods of every track (so a
    replica-ratio canary gets its share); with a track it selects only that track's pods, as the
    backend of an HTTPRoute rule.
    """
    selector = {LABEL_DEPLOYMENT: owner.name}
    labels = common_labels(owner)
    if track is not None:
        selector[LABEL_TRACK] = track
        labels = {**labels, LABEL_TRACK: track}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.child_metadata(
            service_name(owner) if track is None else track_service_name(owner, track), labels),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_http_route(owner: Owner, spec: DeploymentSpec, canary_weight: int | None, shadow: bool = False,
                      ) -> dict[str, Any]:
    """The HTTPRoute splitting requests between the stable and canary Services.

    `canary_weight` None: no canary, everything to stable. With `shadow`, the canary gets no share of
    the responses; instead `canary_weight` percent of requests are mirrored to it (responses discarded).
    """
    def backend(track: str, weight: int) -> dict[str, Any]:
        return {"group": "", "kind": "Service", "name": track_service_name(owner, track),
                "port": SERVICE_PORT, "weight": weight}

    rule: dict[str, Any]
    if canary_weight is None:
        rule = {"backendRefs": [backend("stable", 100)]}
    elif shadow:
        rule = {"backendRefs": [backend("stable", 100)],
                "filters": [{"type": "RequestMirror", "requestMirror": {
                    "backendRef": {"group": "", "kind": "Service", "name": track_service_name(owner, "canary"),
                                   "port": SERVICE_PORT},
                    "percent": canary_weight}}]}
    else:
        rule = {"backendRefs": [backend("stable", 100 - canary_weight), backend("canary", canary_weight)]}
    route_spec: dict[str, Any] = {"parentRefs": [dict(p) for p in spec.traffic.parent_refs], "rules": [rule]}
    if spec.traffic.hostnames:
        route_spec["hostnames"] = list(spec.traffic.hostnames)
    return {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": owner.child_metadata(route_name(owner)),
        "spec": route_spec,
    }


def render_network_policy(owner: Owner, spec: DeploymentSpec) -> dict[str, Any]:
    """Ingress to every track's pods only from `spec.networkPolicy.allowFrom`, on the serving port."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": owner.child_metadata(policy_name(owner)),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_DEPLOYMENT: owner.name}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [dict(peer) for peer in spec.allow_from],
                         "ports": [{"protocol": "TCP", "port": "http"}]}],
        },
    }


def render_disruption_budget(owner: Owner, budget: tuple[str, int | str]) -> dict[str, Any]:
    """A PodDisruptionBudget over every track's pods: node drains evict them only within the budget."""
    key, amount = budget
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": owner.child_metadata(budget_name(owner)),
        "spec": {
            "selector": {"matchLabels": {LABEL_DEPLOYMENT: owner.name}},
            key: amount,
            # a pod that is not Ready yet (e.g. still loading its model) may be evicted whatever the budget
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
