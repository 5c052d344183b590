"""Fetch, load and warm a model; compare its requirements with what is installed.

Why separate from the HTTP layer: loading happens in a background thread while the server already
answers liveness (a model can take minutes to download), and the same code is what the tests call
directly. Any MLflow pyfunc model loads; ONNX-flavour models run through onnxruntime (MLflow's onnx
pyfunc wrapper holds an onnxruntime InferenceSession; the CUDA provider is used where onnxruntime-gpu
finds a GPU).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Packages whose requirement is satisfied by another distribution of the same code.
EQUIVALENT = {"mlflow": ("mlflow", "mlflow-skinny"), "mlflow-skinny": ("mlflow-skinny", "mlflow"),
              "onnxruntime": ("onnxruntime", "onnxruntime-gpu")}


@dataclass
class LoadedModel:
    pyfunc: Any
    path: Path
    name: str
    version: str
    input_schema: Any
    flavors: list[str]
    load_seconds: float
    accepts_params: bool
    dependency_warnings: list[str] = field(default_factory=list)
    #: "merged" (rows of different requests share predict calls) or "per-request"; set by the server.
    batching: str = "per-request"
    providers: list[str] = field(default_factory=list)

    def predict(self, data: Any, params: dict[str, Any] | None) -> Any:
        if self.accepts_params:
            return self.pyfunc.predict(data, params=params)
        return self.pyfunc.predict(data)


def fetch(model_uri: str, cache_dir: Path) -> Path:
    """A local directory holding the model: the URI itself if it is one, else a download.

    `models:/name/<version>` downloads through the registry (MLFLOW_TRACKING_URI, and
    MLFLOW_TRACKING_TOKEN or USERNAME/PASSWORD). Several workers may start at once: a file lock makes
    one download and the others wait for it.
    """
    local = Path(model_uri.removeprefix("file://"))
    if local.is_dir():
        return local
    import mlflow

    digest = hashlib.sha256(model_uri.encode()).hexdigest()[:16]
    target = cache_dir / digest
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = target / ".complete"
        if not done.exists():
            started = time.monotonic()
            target.mkdir(parents=True, exist_ok=True)
            path = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(target))
            (target / ".path").write_text(path)
            done.touch()
            log.info("Downloaded %s in %.1fs", model_uri, time.monotonic() - started)
        return Path((target / ".path").read_text())


def check_requirements(model_dir: Path) -> list[str]:
    """Human-readable mismatches between the model's requirements.txt and installed packages."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    req_file = model_dir / "requirements.txt"
    if not req_file.exists():
        return []
    problems = []
    for raw in req_file.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(("-", "--")) or "://" in line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            problems.append(f"unparseable requirement {line!r}")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        installed = None
        for candidate in EQUIVALENT.get(name, (name,)):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                installed = importlib.metadata.version(candidate)
                break
        if installed is None:
            problems.append(f"{req.name}: required {req.specifier or '(any)'}, not installed")
        elif req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name}: required {req.specifier}, installed {installed}")
    return problems


def load(model_uri: str, cache_dir: Path, name: str = "", version: str = "") -> LoadedModel:
    import mlflow.pyfunc

    started = time.monotonic()
    path = fetch(model_uri, cache_dir)
    problems = check_requirements(path)
    for problem in problems:
        log.warning("Model dependency mismatch: %s", problem)
    pyfunc = mlflow.pyfunc.load_model(str(path))
    meta = pyfunc.metadata
    impl = getattr(pyfunc, "_model_impl", None)
    session = getattr(impl, "rt", None)
    providers = list(session.get_providers()) if session is not None and hasattr(session, "get_providers") else []
    model = LoadedModel(
        pyfunc=pyfunc,
        path=path,
        name=name or name_from_uri(model_uri),
        version=version or version_from_uri(model_uri),
        input_schema=meta.get_input_schema(),
        flavors=sorted(meta.flavors),
        load_seconds=0.0,
        accepts_params="params" in inspect.signature(pyfunc.predict).parameters,
        dependency_warnings=problems,
        providers=providers,
    )
    warm_up(model)
    model.load_seconds = time.monotonic() - started
    log.info("Loaded %s (%s) in %.2fs", model_uri, ", ".join(model.flavors), model.load_seconds)
    return model


def warm_up(model: LoadedModel) -> None:
    """Predict once on the saved input example, so the first request does not pay for lazy init."""
    try:
        example = model.pyfunc.metadata.load_input_example(str(model.path))
    except Exception as exc:
        log.warning("Could not read the input example: %s", exc)
        return
    if example is None:
        return
    try:
        model.pyfunc.predict(example)
    except Exception as exc:
        log.warning("Warm-up prediction on the input example failed: %s", exc)


def name_from_uri(uri: str) -> str:
    if uri.startswith("models:/"):
        return uri[len("models:/"):].rsplit("/", 1)[0].rsplit("@", 1)[0]
    return os.path.basename(uri.rstrip("/")) or "model"


def version_from_uri(uri: str) -> str:
    if uri.startswith("models:/") and "/" in uri[len("models:/"):]:
        return uri.rsplit("/", 1)[1]
    return ""
