"""An in-memory stand-in for the few API calls the reconcile makes (for fast tests of the pipeline).

It is not a model of Kubernetes: no defaulting, no validation, apply is a deep merge. The real API
server tests (tests/integration) hold the operator to the real thing; this fake lets the whole
reconcile run in milliseconds with a fake clock, and counts every write.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from modelpilot.kube import KubeError

Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, section 2: a JSON merge patch applied as the API server applies application/merge-patch+json
    (a null removes the key; objects merge; anything else replaces)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = apply_merge_patch(out.get(k), v)
    return out


class FakeKube:
    def __init__(self, gateway_api: bool = True) -> None:
        self.gateway_api = gateway_api
        self.objects: dict[Key, dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.events: list[dict[str, str]] = []
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.reads: list[tuple[str, str]] = []  # (kind, name) of every GET
        #: (kind, name) → (HTTP status, message) the next applies of that object get
        self.refuse: dict[tuple[str, str], tuple[int, str]] = {}
        self._rv = 0

    # -- what the reconcile calls ---------------------------------------------------------------
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append((kind, name))
        obj = self.objects.get((api_version, kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        meta = obj["metadata"]
        refusal = self.refuse.get((obj["kind"], meta["name"]))
        if refusal is not None:
            raise KubeError(refusal[0], refusal[1], "Invalid")
        key = (obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        existing = self.objects.get(key)
        merged = apply_merge_patch(existing or {}, obj)
        if existing is None or merged != existing:
            self._stamp(merged, spec_changed=existing is None or merged.get("spec") != existing.get("spec"))
            self.objects[key] = merged
        self.writes.append(("apply", obj["kind"], meta["name"]))
        return copy.deepcopy(self.objects[key])

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        self.writes.append(("delete", kind, name))
        return self.objects.pop((api_version, kind, namespace, name), None) is not None

    def serves(self, api_version: str, plural: str) -> bool:
        return self.gateway_api

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any],
                     field_manager: str) -> dict[str, Any] | None:
        key = (api_version, kind, namespace, name)
        if key not in self.objects:
            raise KubeError(404, "not found", "NotFound")
        obj = self.objects[key]
        obj["status"] = apply_merge_patch(obj.get("status") or {}, status)
        self._stamp(obj, spec_changed=False)
        self.writes.append(("status", kind, name))
        return copy.deepcopy(obj)

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets.get((namespace, name))

    def create_event(self, involved: dict[str, Any], type_: str, reason: str, message: str, component: str,
                     now: str) -> None:
        self.events.append({"name": involved["metadata"]["name"], "type": type_, "reason": reason,
                            "message": message})

    # -- what a test does -----------------------------------------------------------------------
    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        self._stamp(obj, spec_changed=True)
        self.objects[(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])] = obj
        return obj

    def update_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        obj = self.objects[("modelpilot.dev/v1alpha1", "ModelDeployment", namespace, name)]
        obj["spec"] = copy.deepcopy(spec)
        self._stamp(obj, spec_changed=True)

    def settle(self) -> None:
        """What the Deployment controller and kubelets would do: every Deployment fully rolled out."""
        for (_, kind, _, _), obj in self.objects.items():
            if kind == "Deployment":
                n = obj["spec"].get("replicas", 1)
                status = {"observedGeneration": obj["metadata"]["generation"], "replicas": n,
                          "readyReplicas": n, "updatedReplicas": n, "availableReplicas": n}
                if obj.get("status") != status:
                    obj["status"] = status
                    self._stamp(obj, spec_changed=False)  # as the API server does for every change

    def mdep(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[("modelpilot.dev/v1alpha1", "ModelDeployment", namespace, name)])

    def children(self, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
        return {(k[1], k[3]): v for k, v in self.objects.items()
                if k[2] == namespace and k[1] != "ModelDeployment"}

    def _stamp(self, obj: dict[str, Any], spec_changed: bool) -> None:
        self._rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._rv)
        if spec_changed:
            meta["generation"] = int(meta.get("generation", 0)) + 1
