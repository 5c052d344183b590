"""Names, labels, annotations and the pinned-URI format: what every other module agrees on.

Why one module: the reconcile, the renderer, the status builder and the tests must agree on what a
child is called, how it is labelled and how a resolved version is written down. Anything spelled in
two places drifts.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

GROUP = "modelpilot.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"

LABEL_DEPLOYMENT = f"{GROUP}/deployment"
LABEL_TRACK = f"{GROUP}/track"
LABEL_MODEL_NAME = f"{GROUP}/model-name"
LABEL_MODEL_VERSION = f"{GROUP}/model-version"
ANNOTATION_MODEL_URI = f"{GROUP}/model-uri"
ANNOTATION_SOURCE_URI = f"{GROUP}/source-uri"
ANNOTATION_RESOLVED_FROM = f"{GROUP}/resolved-from"
ANNOTATION_RUN_ID = f"{GROUP}/run-id"
#: On each child: a digest of what the operator last applied (an unchanged render is not re-applied).
ANNOTATION_APPLIED = f"{GROUP}/applied"
ANNOTATION_PROMOTE = f"{GROUP}/promote"
ANNOTATION_ABORT = f"{GROUP}/abort"
MANAGED_BY = "modelpilot"
CONTAINER = "scoring-server"
GPU_RESOURCE = "nvidia.com/gpu"
SERVICE_PORT = 80
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"

STABLE = "stable"
CANARY = "canary"
#: Not a serving track: the registry's newest version, asked for when staleness is watched.
NEWEST = "newest"
TRACKS = (STABLE, CANARY)

_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.\-]")


def label_value(text: str) -> str:
    """A valid label value that still reads like `text`.

    Label values are at most 63 characters of `[A-Za-z0-9_.-]`, starting and ending alphanumeric;
    MLflow model names may hold spaces, slashes or be longer. Invalid characters become '-', and a
    value that had to be changed or shortened gets a short hash so two names never collide.
    """
    clean = _LABEL_BAD.sub("-", text).strip("-_.")
    if clean == text and len(clean) <= 63:
        return clean
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{clean[:54].rstrip('-_.')}-{digest}".lstrip("-_.")


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that owns the rendered children."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def child_metadata(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """The metadata of a child this ModelDeployment controls (labels: the common ones by default)."""
        return {"name": name, "namespace": self.namespace, "labels": common_labels(self) if labels is None else labels,
                "ownerReferences": [self.reference()]}

    def controls(self, obj: dict[str, Any] | None) -> bool:
        """Whether `obj` is ours: its controller ownerReference carries our uid (metav1.IsControlledBy)."""
        if not obj:
            return False
        return any(ref.get("controller") is True and ref.get("uid") == self.uid
                   for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def selector_labels(owner: Owner, track: str = STABLE) -> dict[str, str]:
    return {LABEL_DEPLOYMENT: owner.name, LABEL_TRACK: track}


def common_labels(owner: Owner) -> dict[str, str]:
    # No app.kubernetes.io/instance: Argo CD's label-based tracking reads it, and a child carrying it
    # could be claimed (or pruned) by an Argo CD Application of that name. The instance is
    # modelpilot.dev/deployment instead; nothing is copied from the parent's labels or annotations.
    return {
        "app.kubernetes.io/name": "modelpilot-scoring-server",
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_DEPLOYMENT: owner.name,
    }


def deployment_name(owner: Owner, track: str = STABLE) -> str:
    return owner.name if track == STABLE else f"{owner.name}-{track}"


def service_name(owner: Owner) -> str:
    return owner.name


def track_service_name(owner: Owner, track: str) -> str:
    return f"{owner.name}-{track}"


def route_name(owner: Owner) -> str:
    return owner.name


def policy_name(owner: Owner) -> str:
    return owner.name


def budget_name(owner: Owner) -> str:
    return owner.name


def service_url(owner: Owner, cluster_domain: str) -> str:
    return f"http://{service_name(owner)}.{owner.namespace}.svc.{cluster_domain}"


def pinned_uri(name: str, version: str) -> str:
    """The immutable URI of one resolved version, as the serving pod receives it."""
    return f"models:/{name}/{version}"


def pinned_version(uri: str | None) -> str | None:
    """The version of a pinned URI (`models:/NAME/VERSION`), None for anything else."""
    if not uri or not uri.startswith("models:/"):
        return None
    version = uri.rsplit("/", 1)[-1]
    return version if version.isdigit() else None


def template_uri(deployment: dict[str, Any] | None) -> str | None:
    """The pinned URI a Deployment's pod template serves (its model-uri annotation)."""
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    value = ((template.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_MODEL_URI)
    return str(value) if value else None
