"""Container images without Docker: buildah builds the project's Dockerfiles on a local Debian base.

Why: these machines have no Docker engine and no registry. debootstrap makes a Debian bookworm root
filesystem (python3, venv, CA certificates), buildah imports it as a local base image and builds the
ordinary Dockerfiles on it (`--build-arg BASE_IMAGE=...`), and `buildah push oci-archive:` gives an
archive containerd imports. Each image is cached in `~/.cache/modelpilot/images`, tagged with a hash
of its inputs, so only a change there rebuilds it.

- the scoring server (`serving-image/Dockerfile`; inputs: `serving-image/` alone: the image holds
  nothing of the operator, and editing the operator does not rebuild it);
- the operator (`operator/Dockerfile`; inputs: `operator/`, `pyproject.toml`, `README.md`), for the
  Helm chart run for real on the local node;
- the sandbox ("pause") image: a tiny static Go binary (hack/pause).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hack.proc import REPO, log

CACHE = Path(os.environ.get("MODELPILOT_CACHE", Path.home() / ".cache" / "modelpilot"))
IMAGES = CACHE / "images"
PAUSE_IMAGE = "localhost/modelpilot/pause:1"
BASE_IMAGE = "localhost/modelpilot/debian-python:bookworm"


@dataclass(frozen=True)
class ImageRecipe:
    """One of the project's images: where its Dockerfile is and what a change of rebuilds it."""

    repo: str
    dockerfile: str
    #: Paths (relative to the repository) whose content makes the tag.
    inputs: tuple[str, ...]
    #: File name prefix of the cached OCI archive.
    archive: str


SERVING = ImageRecipe("localhost/modelpilot/scoring-server", "serving-image/Dockerfile", ("serving-image",),
                      "scoring-server")
OPERATOR = ImageRecipe("localhost/modelpilot/operator", "operator/Dockerfile",
                       ("operator", "pyproject.toml", "README.md"), "operator")


def run(*argv: str | Path, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], check=True, text=True, capture_output=True,
                          env={**os.environ, **(env or {})}, **kw)


def _buildah(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    storage = IMAGES / "buildah"
    return subprocess.run(["buildah", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
                           *map(str, args)], check=check, text=True, capture_output=True,
                          env={**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"})


def _image_exists(name: str) -> bool:
    out = _buildah("images", "-q", name, check=False)
    return out.returncode == 0 and bool(out.stdout.strip())


def image_tag(recipe: ImageRecipe) -> str:
    """A content hash of everything the image is built from."""
    digest = hashlib.sha256()
    for item in recipe.inputs:
        root = REPO / item
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts and ".egg-info" not in str(p))
        for path in files:
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def build_pause_image() -> Path:
    archive = IMAGES / "pause-1.tar"
    if archive.exists():
        return archive
    IMAGES.mkdir(parents=True, exist_ok=True)
    binary = IMAGES / "pause"
    run("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", binary, ".", cwd=REPO / "hack" / "pause",
        env={"CGO_ENABLED": "0", "GOTOOLCHAIN": "local"})
    container = _buildah("from", "scratch").stdout.strip()
    _buildah("copy", container, binary, "/pause")
    _buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
    _buildah("commit", "-q", container, PAUSE_IMAGE)
    _buildah("push", PAUSE_IMAGE, f"oci-archive:{archive}.tmp:{PAUSE_IMAGE}")
    Path(f"{archive}.tmp").rename(archive)
    return archive


def build_base_image() -> None:
    """Debian bookworm (minbase + python3, venv, CA certificates) from debootstrap, as a local image."""
    if _image_exists(BASE_IMAGE):
        return
    started = time.monotonic()
    rootfs = IMAGES / "debian-bookworm-rootfs"
    tarball = IMAGES / "debian-bookworm-rootfs.tar"
    if not tarball.exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        log("debootstrap: building a Debian bookworm root filesystem (about a minute)")
        run("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
            rootfs, "http://deb.debian.org/debian")
        run("tar", "-C", rootfs, "-cf", f"{tarball}.tmp", ".")
        Path(f"{tarball}.tmp").rename(tarball)
        shutil.rmtree(rootfs, ignore_errors=True)
    container = _buildah("from", "scratch").stdout.strip()
    _buildah("add", container, tarball, "/")
    _buildah("commit", "-q", container, BASE_IMAGE)
    log(f"base image {BASE_IMAGE} in {time.monotonic() - started:.0f}s")


def build_image(recipe: ImageRecipe) -> tuple[str, Path]:
    """Build (or reuse) one of the project's images with buildah; (name, OCI archive)."""
    tag = image_tag(recipe)
    image = f"{recipe.repo}:{tag}"
    archive = IMAGES / f"{recipe.archive}-{tag}.tar"
    if archive.exists():
        return image, archive
    build_base_image()
    started = time.monotonic()
    log(f"buildah: building {image} from {recipe.dockerfile} (a few minutes cold)")
    # Package traffic goes through a TLS-intercepting proxy whose CA only the host trusts: mount the
    # host's bundle (and pip's config pointing at it) into the build, never into the image.
    mounts: list[str] = []
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"):
        if Path(path).exists():
            mounts += ["-v", f"{path}:{path}:ro"]
    _buildah("bud", "-q", "--layers", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", *mounts,
             "-f", REPO / recipe.dockerfile, "-t", image, REPO)
    for old in IMAGES.glob(f"{recipe.archive}-*.tar"):
        old.unlink()  # one cached archive per image: the current inputs
    _buildah("push", image, f"oci-archive:{archive}.tmp:{image}")
    Path(f"{archive}.tmp").rename(archive)
    # vfs storage copies every layer: drop earlier builds so the cache does not grow with each change
    names = _buildah("images", "--format", "{{.Name}}:{{.Tag}}").stdout.split()
    stale = [n for n in names if n.startswith(f"{recipe.repo}:") and n != image]
    if stale:
        _buildah("rmi", *stale)
    _buildah("rmi", "--prune", check=False)
    log(f"image {image} built in {time.monotonic() - started:.0f}s")
    return image, archive


def main() -> int:
    """`python -m hack.images [operator]`: build (or reuse) the pause and scoring-server images (and the
    operator's)."""
    args = sys.argv[1:]
    subprocess.run(["bash", str(REPO / "hack" / "system-packages.sh"), "--node"], check=True)
    if any(a not in ("operator",) for a in args):
        print("usage: python -m hack.images [operator]", file=sys.stderr)
        return 2
    build_pause_image()
    for recipe in (SERVING, *((OPERATOR,) if "operator" in args else ())):
        image, archive = build_image(recipe)
        print(f"{image} {archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
