"""Run one emulated Kubeflow task in a fresh buildah container of the component image.

Each task gets its own working container (as each pod starts from the image), runs as the image's
non-root user with the PVC stand-in bind-mounted, on the host network (to reach a loopback MLflow),
and has its input artifacts copied in and its task root copied out, owned as the launcher would
leave them (it runs as the same user). Isolation: chroot (no daemon needed); storage: buildah's
default (overlay where the kernel allows, else vfs) or STORAGE_DRIVER.

    runner = BuildahTask("ghcr.io/anet-pipeline/anet:0.1.0", volumes={"/tmp/pvc": "/mnt/anet"}, log_dir=tmp)
    exit_code = runner(task_run)        # a tools.kfp_emulator.TaskRun
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

ISOLATION = os.environ.get("BUILDAH_ISOLATION", "chroot")


def _global_args() -> list[str]:
    """``--storage-driver`` when STORAGE_DRIVER is set (buildah itself ignores that variable)."""
    driver = os.environ.get("STORAGE_DRIVER")
    return ["--storage-driver", driver] if driver else []


def buildah(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """``buildah <args>`` with the storage driver docker/build.sh used; output captured as text."""
    return subprocess.run(["buildah", *_global_args(), *args], check=check, capture_output=True, text=True, **kwargs)


def image_exists(image: str) -> bool:
    """Whether ``image`` is in local containers-storage."""
    return buildah("inspect", "--type", "image", image, check=False).returncode == 0


def image_user(image: str) -> str:
    """The image's USER (``uid:gid``) from its config."""
    config = json.loads(buildah("inspect", "--type", "image", image).stdout)
    return config["OCIv1"]["config"].get("User") or "0:0"


def _copy_tree(src: Path, dst: Path, owner: tuple[int, int] | None = None) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    if owner:
        for path in [dst, *dst.rglob("*")] if dst.is_dir() else [dst]:
            os.chown(path, *owner, follow_symlinks=False)


def _make_parents(mount: Path, container_path: str, owner: tuple[int, int]) -> None:
    """Create a path's missing parent directories owned by the user, as the launcher's MkdirAll does."""
    current = mount
    for part in Path(container_path.lstrip("/")).parent.parts:
        current = current / part
        if not current.exists():
            current.mkdir()
            os.chown(current, *owner)


class BuildahTask:
    """Callable runner for :func:`tools.kfp_emulator.run_pipeline` (returns the task's exit code)."""

    def __init__(self, image: str, volumes: dict[str, str], log_dir: Path, user: str | None = None):
        self.image, self.volumes, self.log_dir = image, volumes, log_dir
        self.user = user or image_user(image)
        uid, _, gid = self.user.partition(":")
        self.owner = (int(uid), int(gid or 0))
        self.seconds: dict[str, float] = {}

    def __call__(self, task) -> int:
        name = buildah("from", "--pull-never", "--name", f"anet-emul-{task.name}-{os.getpid()}",
                       self.image).stdout.strip()
        try:
            mount = Path(buildah("mount", name).stdout.strip())
            for container_path, host in task.stage_in.items():
                _make_parents(mount, container_path, self.owner)
                _copy_tree(host, mount / container_path.lstrip("/"), self.owner)
            code = self._run(name, task)
            for container_path, host in task.collect.items():
                if (mount / container_path.lstrip("/")).exists():
                    _copy_tree(mount / container_path.lstrip("/"), host)
            return code
        finally:
            buildah("rm", name, check=False)

    def _run(self, name: str, task) -> int:
        cmd = ["run", "--user", self.user, "--network", "host", "--isolation", ISOLATION]
        for host, target in self.volumes.items():
            cmd += ["--volume", f"{host}:{target}"]
        for key, value in task.env.items():
            cmd += ["--env", f"{key}={value}"]
        log = self.log_dir / f"{task.name}.log"
        start = time.monotonic()
        with open(log, "w") as out:
            done = subprocess.run(["buildah", *_global_args(), *cmd, name, "--", *task.argv],
                                  stdout=out, stderr=subprocess.STDOUT, check=False)
        self.seconds[task.name] = time.monotonic() - start
        return done.returncode
