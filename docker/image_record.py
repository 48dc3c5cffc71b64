"""Record what ``docker/build.sh`` built; with PUSH=1 push it and record the registry digest.

    ENGINE=buildah IMAGE=ghcr.io/anet-pipeline/anet:0.1.0 ... python3 docker/image_record.py .cache/image

Writes ``<out>/image.json`` (engine, image, id, local digest, size, build seconds, commit, date) and,
after a push, ``<out>/image.ref``: ``name@sha256:...`` as the registry stores it. Only that digest
is the one a cluster pulls: a local digest can change on push (layers are compressed then).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _size_bytes(text: str) -> int:
    """``"2.29 GB"`` (buildah's size column) -> bytes; plain integers pass through."""
    number, _, unit = text.strip().partition(" ")
    scale = {"": 1, "B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
    return int(float(number) * scale)


def _inspect(engine: str, image: str, out: Path) -> dict:
    """Image id (the engine's --iidfile), local manifest digest and size in bytes."""
    record = {"id": (out / "image-id").read_text().strip()}
    if engine == "docker":
        fmt = "{{.Size}} {{if .RepoDigests}}{{index .RepoDigests 0}}{{end}}"
        size, *digest = _run("docker", "image", "inspect", "--format", fmt, image).split()
        return {**record, "size_bytes": int(size), "digest": digest[0].split("@")[-1] if digest else None}
    row = json.loads(_run("buildah", *_storage(), "images", "--json", image))[0]
    return {**record, "size_bytes": _size_bytes(str(row.get("size") or 0)), "digest": row.get("digest")}


def _storage() -> list[str]:
    driver = os.environ.get("STORAGE_DRIVER")
    return ["--storage-driver", driver] if driver else []


def _push(engine: str, image: str, out: Path) -> str:
    """Push ``image`` to its registry; returns the manifest digest the registry stores."""
    if engine == "docker":
        _run("docker", "push", image)
        return _run("docker", "image", "inspect", "--format", "{{index .RepoDigests 0}}", image).split("@")[-1]
    digest_file = out / "push.digest"
    _run("buildah", *_storage(), "push", "--digestfile", str(digest_file), image, f"docker://{image}")
    return digest_file.read_text().strip()


def main(out: Path) -> None:
    """Write image.json (and image.ref after a push) under ``out``."""
    env = os.environ
    engine, image = env["ENGINE"], env["IMAGE"]
    record = {"engine": engine, "image": image, "torch": env["FLAVOUR"], "git_commit": env["COMMIT"],
              "build_date": env["DATE"], "build_seconds": int(env["SECONDS_TAKEN"]), **_inspect(engine, image, out)}
    ref = out / "image.ref"
    if env.get("PUSH") == "1":
        record["pushed_digest"] = _push(engine, image, out)
        ref.write_text(f"{image}@{record['pushed_digest']}\n")
    elif ref.exists():
        ref.unlink()  # a digest from an earlier push no longer names this build
    (out / "image.json").write_text(json.dumps(record, indent=1) + "\n")
    size_gb = record["size_bytes"] / 1e9
    print(f"built {image} with {engine} in {record['build_seconds']} s: {size_gb:.2f} GB, id {record['id'][:19]}")
    if ref.exists():
        print(f"pushed: {ref.read_text().strip()} (make pipeline-compile pins the tasks to it)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
