"""The few Kubernetes API calls the reconcile makes, over plain HTTP.

Why not the generated client's typed APIs: the reconcile works on plain dicts (what `render` returns),
needs server-side apply (`application/apply-patch+yaml`) for arbitrary kinds, merge patches of the
`/status` subresource, and the HTTP status code of every failure. The `kubernetes` package is still
used for what it does best: reading kubeconfig / in-cluster credentials (exec plugins, token refresh).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from typing import Any

import requests
from kubernetes import config as kube_config
from kubernetes.client import Configuration

from .metrics import API_REQUESTS

log = logging.getLogger(__name__)

#: apiVersion/kind → URL segment, for the kinds the operator touches.
PLURALS = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrules",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("v1", "Secret"): "secrets",
    ("v1", "Event"): "events",
    ("modelpilot.dev/v1alpha1", "ModelDeployment"): "modeldeployments",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
}


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`. A merge patch merges nested objects, so
    a key `new` no longer has must be sent as null: {"autoscaling": {"engine": "hpa"}} over
    {"autoscaling": {"engine": "hpa", "problem": "..."}} leaves the problem in place."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {k: merge_patch(old.get(k), v) for k, v in new.items()}
    patch.update((k, None) for k in old if k not in new)
    return patch


class KubeError(Exception):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


def resource_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{PLURALS[(api_version, kind)]}"
    return f"{path}/{name}" if name else path


class Kube:
    """A thread-safe, synchronous client for one cluster."""

    def __init__(self, configuration: Configuration, timeout: float = 30.0,
                 user_agent: str = "modelpilot-operator", counted: bool = True) -> None:
        self.cfg = configuration
        self.timeout = timeout
        self.user_agent = user_agent
        #: Count requests in modelpilot_api_requests_total (the reconciles' traffic; not lease renewals).
        self.counted = counted
        self._local = threading.local()

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster credentials when running in a pod, else the current kubeconfig context."""
        cfg = Configuration()
        try:
            kube_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except kube_config.ConfigException:
            kube_config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        return cls(cfg)

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # the bearer token as the session's auth: besides, requests then skips its ~/.netrc lookup,
            # two file-system checks on every request
            session.auth = self._authorize
            if self.cfg.cert_file:
                key = self.cfg.key_file
                session.cert = (self.cfg.cert_file, key) if key else self.cfg.cert_file
            self._local.session = session
        return session

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """One API call. Returns the decoded body, None for 404 on GET; raises KubeError otherwise."""
        headers = {"Accept": "application/json", "Content-Type": content_type, "User-Agent": self.user_agent}
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        # verify is passed per request: requests lets REQUESTS_CA_BUNDLE override a session's verify.
        verify = (self.cfg.ssl_ca_cert or True) if self.cfg.verify_ssl else False
        if self.counted:
            API_REQUESTS.labels(verb=method).inc()
        resp = self._session().request(method, self.cfg.host.rstrip("/") + path, data=data, verify=verify,
                                       headers=headers, params=params, timeout=self.timeout)
        if method == "GET" and resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            try:
                err = resp.json()
                raise KubeError(resp.status_code, err.get("message", resp.text), err.get("reason", ""))
            except ValueError:
                raise KubeError(resp.status_code, resp.text[:300]) from None
        return resp.json() if resp.content else {}

    def _authorize(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """The current bearer token (exec plugins and in-cluster token files refresh it), if any."""
        token = self.cfg.get_api_key_with_prefix("BearerToken") or self.cfg.get_api_key_with_prefix(
            "authorization")
        if token:
            # the in-cluster loader stores "bearer <token>" (lower case): never prefix it twice
            scheme, _, rest = token.partition(" ")
            request.headers["Authorization"] = (f"Bearer {rest}" if scheme.lower() == "bearer" and rest
                                                else f"Bearer {token}")
        return request

    # -- typed helpers ---------------------------------------------------------------------------
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.request("GET", resource_path(api_version, kind, namespace, name))

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        """Server-side apply with `force`: the operator owns these fields outright."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        result = self.request("PATCH", path, obj, "application/apply-patch+yaml",
                              params={"fieldManager": field_manager, "force": "true"})
        assert result is not None
        return result

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete one object (children go with it, in the background); False when it did not exist."""
        try:
            self.request("DELETE", resource_path(api_version, kind, namespace, name),
                         {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def serves(self, api_version: str, plural: str) -> bool:
        """Whether the API server serves `plural` in `api_version` (e.g. a CRD is installed)."""
        body = self.request("GET", f"/apis/{api_version}")
        return any(r.get("name") == plural for r in (body or {}).get("resources") or [])

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                     status: dict[str, Any], field_manager: str) -> dict[str, Any] | None:
        """A JSON merge patch of the status: `status` as `merge_patch` makes it (nested keys that are gone
        sent as null), or a nested key the status no longer has would stay forever."""
        path = resource_path(api_version, kind, namespace, name) + "/status"
        return self.request("PATCH", path, {"status": status}, "application/merge-patch+json",
                            params={"fieldManager": field_manager})

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        data = secret.get("data") or {}
        out = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}
        out.update(secret.get("stringData") or {})
        return out

    def create_event(self, involved: dict[str, Any], type_: str, reason: str, message: str,
                     component: str, now: str) -> None:
        """A core/v1 Event on `involved` (best effort: an event that cannot be written is logged)."""
        meta = involved["metadata"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.request("POST", resource_path("v1", "Event", meta["namespace"]), event)
        except (KubeError, requests.RequestException) as exc:
            log.warning("Could not record event %s on %s/%s: %s", reason, meta["namespace"],
                        meta["name"], exc)
