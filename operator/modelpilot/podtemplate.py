"""The tenant's part of the serving pods: `spec.podTemplate` and `spec.runtime.{image, envFrom, volumeMounts}`.

Why a module of its own: these are Kubernetes types a tenant writes, merged into pods the operator
owns. Two rules decide everything here. Only fields on an explicit list pass, each checked as far as the
restricted Pod Security profile and the operator's own wiring need (a hostPath volume, a root
securityContext or a label under modelpilot.dev/ is refused, naming the field). And the operator's
fields win the merge: container name, ports, probes, args, selector labels and the model's environment
are set after the tenant's, so no template can point a pod at another model or another caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .fields import InvalidSpec, obj, objects

#: Pod spec fields a ModelDeployment may set under spec.podTemplate.spec.
POD_FIELDS = ("affinity", "topologySpreadConstraints", "imagePullSecrets", "serviceAccountName", "priorityClassName",
              "runtimeClassName", "volumes", "securityContext")
#: Volume sources the restricted Pod Security profile allows.
VOLUME_SOURCES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                  "secret")
#: Volume names and mount paths the operator uses itself.
RESERVED_VOLUMES = ("model-cache", "api-keys")
RESERVED_MOUNTS = ("/", "/tmp", "/var/run/modelpilot", "/var/run/secrets/kubernetes.io/serviceaccount")
#: Sysctls the restricted (and baseline) Pod Security profile allows.
SAFE_SYSCTLS = ("kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes")
SELINUX_TYPES = ("", "container_t", "container_init_t", "container_kvm_t", "container_engine_t")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
#: An image reference: registry[:port]/path[:tag][@sha256:digest], lower-case path components.
IMAGE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
                   r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
RESERVED_KEY = re.compile(r"^([^/]*\.)?modelpilot\.dev/")


@dataclass(frozen=True)
class PodTemplate:
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    #: The pod spec fields the tenant set (keys among POD_FIELDS).
    spec: dict[str, Any] = field(default_factory=dict)
    image: str | None = None
    image_pull_policy: str | None = None
    env_from: tuple[dict[str, Any], ...] = ()
    volume_mounts: tuple[dict[str, Any], ...] = ()


def _only(obj: dict[str, Any], allowed: tuple[str, ...], path: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise InvalidSpec(f"{path}.{unknown[0]} is not a field a ModelDeployment may set "
                          f"(allowed: {', '.join(allowed)})")


def _qualified(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    prefix, _, name = key.rpartition("/")
    return (not prefix or (len(prefix) <= 253 and bool(DNS_SUBDOMAIN.fullmatch(prefix)))) and \
        len(name) <= 63 and bool(_NAME_PART.fullmatch(name))


def _keys(raw: Any, path: str, label_values: bool) -> dict[str, str]:
    values = obj(raw, path)
    for key, value in values.items():
        if not _qualified(key):
            raise InvalidSpec(f"{path}: {key!r} is not a valid key (an optional DNS prefix and '/', then a name)")
        if RESERVED_KEY.match(key):
            raise InvalidSpec(f"{path}: {key} is under modelpilot.dev/, which belongs to the operator")
        if not isinstance(value, str):
            raise InvalidSpec(f"{path}.{key} must be a string")
        if label_values and value and (len(value) > 63 or not _NAME_PART.fullmatch(value)):
            raise InvalidSpec(f"{path}.{key}: {value!r} is not a valid label value")
    return dict(values)


def restricted_problem(context: dict[str, Any]) -> str | None:
    """Why a pod securityContext breaks the restricted Pod Security profile, or None."""
    if context.get("runAsNonRoot") is False:
        return "runAsNonRoot: false (serving pods run as non-root)"
    if context.get("runAsUser") == 0:
        return "runAsUser: 0 (root)"
    for key in ("seccompProfile", "appArmorProfile"):
        profile = context.get(key)
        if profile is not None and (not isinstance(profile, dict)
                                    or profile.get("type") not in ("RuntimeDefault", "Localhost")):
            return f"{key}.type must be RuntimeDefault or Localhost"
    where = "spec.podTemplate.spec.securityContext"
    if obj(context.get("windowsOptions"), f"{where}.windowsOptions").get("hostProcess"):
        return "windowsOptions.hostProcess: true"
    selinux = obj(context.get("seLinuxOptions"), f"{where}.seLinuxOptions")
    if selinux.get("user") or selinux.get("role") or selinux.get("type", "") not in SELINUX_TYPES:
        return "seLinuxOptions may set only level and a container type"
    unsafe = [s.get("name") for s in objects(context.get("sysctls"), f"{where}.sysctls")
              if s.get("name") not in SAFE_SYSCTLS]
    if unsafe:
        return f"sysctl {unsafe[0]!r} is not one the profile allows"
    return None


def _volumes(raw: Any) -> list[dict[str, Any]]:
    volumes = objects(raw, "spec.podTemplate.spec.volumes")
    seen: set[str] = set()
    for i, volume in enumerate(volumes):
        path = f"spec.podTemplate.spec.volumes[{i}]"
        name = volume.get("name")
        if not isinstance(name, str) or not DNS_LABEL.fullmatch(name) or len(name) > 63:
            raise InvalidSpec(f"{path}.name must be a DNS label, got {name!r}")
        if name in RESERVED_VOLUMES or name in seen:
            why = "a duplicate" if name in seen else "taken by the operator"
            raise InvalidSpec(f"{path}.name {name!r} is {why}")
        seen.add(name)
        sources = [k for k in volume if k != "name"]
        refused = [k for k in sources if k not in VOLUME_SOURCES]
        if refused:
            raise InvalidSpec(f"{path}.{refused[0]} volumes break the restricted Pod Security profile "
                              f"(allowed sources: {', '.join(VOLUME_SOURCES)})")
        if len(sources) != 1:
            raise InvalidSpec(f"{path} must have exactly one source")
    return volumes


def _mounts(raw: Any, volumes: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    names = {v["name"] for v in volumes}
    mounts = objects(raw, "spec.runtime.volumeMounts")
    for i, mount in enumerate(mounts):
        path = f"spec.runtime.volumeMounts[{i}]"
        if mount.get("name") not in names:
            raise InvalidSpec(f"{path}.name {mount.get('name')!r} is not a volume of spec.podTemplate.spec.volumes")
        where = mount.get("mountPath")
        if not isinstance(where, str) or not where.startswith("/"):
            raise InvalidSpec(f"{path}.mountPath must be an absolute path")
        if where.rstrip("/") in (*RESERVED_MOUNTS, "") or ".." in where.split("/"):
            raise InvalidSpec(f"{path}.mountPath {where} is the operator's (the model cache, keys or token)")
    return tuple(mounts)


def _env_from(raw: Any) -> tuple[dict[str, Any], ...]:
    sources = objects(raw, "spec.runtime.envFrom")
    for i, source in enumerate(sources):
        _only(source, ("configMapRef", "secretRef", "prefix"), f"spec.runtime.envFrom[{i}]")
        refs = [k for k in ("configMapRef", "secretRef") if k in source]
        if len(refs) != 1 or not isinstance(source[refs[0]], dict) or not source[refs[0]].get("name"):
            raise InvalidSpec(f"spec.runtime.envFrom[{i}] needs exactly one of configMapRef or secretRef, "
                              "with a name")
    return tuple(sources)


def image_allowed(image: str, allowed: tuple[str, ...]) -> bool:
    """Whether the platform's allowlist admits `image`.

    An entry ending in `/` (or `/*`) admits every repository below it; a repository (`reg/team/scorer`)
    admits it with any tag or digest; an entry with a tag or digest admits exactly that reference.
    """
    repository = image.split("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        repository = repository[: len(repository) - len(last)] + last.split(":", 1)[0]
    for entry in allowed:
        entry = entry.strip()
        if entry.endswith("/*"):
            entry = entry[:-1]
        if entry.endswith("/"):
            if repository.startswith(entry):
                return True
        elif "@" in entry or ":" in entry.rsplit("/", 1)[-1]:
            if image == entry:
                return True
        elif repository == entry:
            return True
    return False


def parse_pod_template(raw: Any, runtime: dict[str, Any], auth_mode: str, settings: Settings) -> PodTemplate:
    template = obj(raw, "spec.podTemplate")
    _only(template, ("metadata", "spec"), "spec.podTemplate")
    metadata = obj(template.get("metadata"), "spec.podTemplate.metadata")
    _only(metadata, ("labels", "annotations"), "spec.podTemplate.metadata")
    pod = dict(obj(template.get("spec"), "spec.podTemplate.spec"))
    _only(pod, POD_FIELDS, "spec.podTemplate.spec")
    pod = {k: v for k, v in pod.items() if v is not None}
    for key in ("serviceAccountName", "priorityClassName", "runtimeClassName"):
        if key in pod and (not isinstance(pod[key], str) or not DNS_SUBDOMAIN.fullmatch(pod[key])):
            raise InvalidSpec(f"spec.podTemplate.spec.{key} must be a name, got {pod[key]!r}")
    if pod.get("serviceAccountName") and auth_mode == "kubernetes":
        raise InvalidSpec("spec.podTemplate.spec.serviceAccountName cannot be set with spec.auth.mode kubernetes: "
                          "the pods then run as the platform's reviewer ServiceAccount")
    obj(pod.get("affinity"), "spec.podTemplate.spec.affinity")
    objects(pod.get("topologySpreadConstraints"), "spec.podTemplate.spec.topologySpreadConstraints")
    for i, secret in enumerate(objects(pod.get("imagePullSecrets"), "spec.podTemplate.spec.imagePullSecrets")):
        name = secret.get("name")
        if set(secret) != {"name"} or not isinstance(name, str) or not DNS_SUBDOMAIN.fullmatch(name):
            raise InvalidSpec(f"spec.podTemplate.spec.imagePullSecrets[{i}] must be {{name: SECRET}}")
    problem = restricted_problem(obj(pod.get("securityContext"), "spec.podTemplate.spec.securityContext"))
    if problem:
        raise InvalidSpec(f"spec.podTemplate.spec.securityContext breaks the restricted Pod Security profile: "
                          f"{problem}")
    volumes = _volumes(pod.get("volumes"))

    image = runtime.get("image") or None
    if image is not None:
        if not isinstance(image, str) or not IMAGE.fullmatch(image):
            raise InvalidSpec(f"spec.runtime.image must be an image reference such as "
                              f"registry.example.com/team/scorer:1.2, got {image!r}")
        if not image_allowed(image, settings.allowed_images):
            raise InvalidSpec(
                f"spec.runtime.image {image} is not among the images this platform allows "
                f"(MODELPILOT_ALLOWED_IMAGES{': none are' if not settings.allowed_images else ''}); "
                "ask the platform team, or leave it unset for the shared scoring-server image")
    policy = runtime.get("imagePullPolicy") or None
    if policy is not None and policy not in PULL_POLICIES:
        raise InvalidSpec(f"spec.runtime.imagePullPolicy must be one of {', '.join(PULL_POLICIES)}")
    return PodTemplate(
        labels=_keys(metadata.get("labels"), "spec.podTemplate.metadata.labels", label_values=True),
        annotations=_keys(metadata.get("annotations"), "spec.podTemplate.metadata.annotations", label_values=False),
        spec=pod,
        image=image,
        image_pull_policy=policy,
        env_from=_env_from(runtime.get("envFrom")),
        volume_mounts=_mounts(runtime.get("volumeMounts"), volumes),
    )


def dress(metadata: dict[str, Any], pod_spec: dict[str, Any], container: dict[str, Any], template: PodTemplate,
          settings: Settings) -> None:
    """Merge the tenant's template into a rendered pod (in place); the operator's values win."""
    metadata["labels"] = {**template.labels, **metadata["labels"]}
    metadata["annotations"] = {**template.annotations, **metadata["annotations"]}
    given = template.spec
    for key in ("affinity", "priorityClassName", "runtimeClassName", "serviceAccountName"):
        if key in given and key not in pod_spec:
            pod_spec[key] = given[key]
    if "topologySpreadConstraints" in given:
        pod_spec["topologySpreadConstraints"] = list(given["topologySpreadConstraints"])
    secrets = given.get("imagePullSecrets")
    if secrets is None:
        secrets = [{"name": name} for name in settings.server_image_pull_secrets]
    if secrets:
        pod_spec["imagePullSecrets"] = list(secrets)
    pod_spec["volumes"] = [*pod_spec["volumes"], *given.get("volumes", [])]
    # parse_pod_template let through only what the restricted profile allows (e.g. a Localhost seccomp profile)
    pod_spec["securityContext"] = {**pod_spec["securityContext"], **given.get("securityContext", {}),
                                   "runAsNonRoot": True}
    if template.image:
        container["image"] = template.image
    if template.image_pull_policy:
        container["imagePullPolicy"] = template.image_pull_policy
    if template.env_from:
        container["envFrom"] = list(template.env_from)
    container["volumeMounts"] = [*container["volumeMounts"], *template.volume_mounts]
