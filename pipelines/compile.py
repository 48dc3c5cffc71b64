"""Compile the pipeline to Kubeflow's IR YAML, for a given Kubeflow Pipelines backend.

Example::

    python -m pipelines.compile --output pipelines/anet_pipeline.yaml            # make pipeline-compile
    ANET_IMAGE=registry.local/anet:0.1.0 python -m pipelines.compile --gpus 4 --output /tmp/anet.yaml
    python -m pipelines.compile --kfp-backend 2.2 --output /tmp/anet-kf19.yaml   # Kubeflow 1.9 / KFP 2.2
    python -m pipelines.compile --image-digest sha256:<64 hex>                  # pin the tasks' image

Two forms (docker/README.md has the table):

* backend >= 2.15 (default): what kfp 2.17 writes, with *optional* secrets (``anet-mlflow-auth``);
* backend 2.2 - 2.14 (``--kfp-backend 2.2``, Kubeflow 1.9/1.10): those drivers reject (< 2.5) or drop
  (2.5 - 2.14) fields their protos lack: secrets by plain name (no ``secretNameParameter``, no
  ``optional``; optional secrets left out unless ``--require-secret NAME``), the PVC by its
  input parameter (no ``pvcNameParameter``), numeric resources only, no ``securityContext``
  (kubeflow/pipelines#12495, #11935).

``ANET_IMAGE`` must be set in the environment before this module runs: components read it when they
are imported (see :mod:`components`); ``--image``/``--image-digest`` rewrite the compiled YAML instead.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from anet.contract import IMAGE_REF_ENV, SECRETS
from components import IMAGE
from pipelines.dag import Placement, make_pipeline

CURRENT_BACKEND = (2, 15)  # the oldest backend that honours every field of the default form
OLDEST_BACKEND = (2, 2)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# fields the KFP 2.2 protos know (kfp_kubernetes.KubernetesExecutorConfig, PipelineContainerSpec.ResourceSpec)
LEGACY_K8S_FIELDS = {"secretAsVolume", "secretAsEnv", "pvcMount", "nodeSelector", "podMetadata", "imagePullSecret",
                     "imagePullPolicy", "configMapAsVolume", "configMapAsEnv", "activeDeadlineSeconds",
                     "fieldPathAsEnv", "tolerations", "genericEphemeralVolume", "nodeAffinity", "podAffinity"}
# ... and the ones later backends added that the form keeps from that version on
K8S_FIELDS_SINCE = {"emptyDirMounts": (2, 3), "enabledSharedMemory": (2, 3)}
LEGACY_DROPPED_K8S_FIELDS = {"securityContext"}  # hardening only: older backends run without it
LEGACY_RESOURCE_FIELDS = {"cpuLimit", "memoryLimit", "cpuRequest", "memoryRequest"}


def compile_pipeline(output: str | Path, gpus: int = 1, kfp_backend: str | None = None, image: str | None = None,
                     require_secrets: Sequence[str] = (), placement: Placement | None = None, nodes: int = 1) -> Path:
    """Write the IR YAML for a pipeline with ``gpus`` GPUs per train task; returns the path.

    ``kfp_backend`` (e.g. ``"2.2"``) picks the form that backend accepts; ``image`` replaces every
    task's image (e.g. ``name@sha256:...``); ``require_secrets`` names optional secrets of
    :data:`pipelines.dag.SECRETS` to mount as required (the legacy form leaves the others out);
    ``placement``: node selector and tolerations of the train tasks; ``nodes`` > 1: each train task
    launches a Kubeflow Trainer TrainJob of ``nodes`` x ``gpus`` (:mod:`pipelines.trainjob`).
    """
    from kfp import compiler

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(make_pipeline(gpus=gpus, placement=placement, nodes=nodes), str(output))
    return to_form(output, kfp_backend, image, require_secrets)


def to_form(path: Path, kfp_backend: str | None = None, image: str | None = None,
            require_secrets: Sequence[str] = ()) -> Path:
    """Rewrite a compiled YAML in place for ``kfp_backend`` / ``image`` / ``require_secrets``; a no-op
    (kfp's own bytes) when none is asked for."""
    version = backend_version(kfp_backend) if kfp_backend else CURRENT_BACKEND
    legacy = version < CURRENT_BACKEND
    optional = {name for name, (_, is_optional) in SECRETS.items() if is_optional}
    if set(require_secrets) - optional:
        raise ValueError(f"--require-secret takes one of the optional secrets {sorted(optional)}, "
                         f"not {sorted(set(require_secrets) - optional)}")
    if not (legacy or image or require_secrets):
        return path
    header, docs = _read(path)
    ir, platform = docs[0], (docs[1] if len(docs) > 1 else None)
    if image:
        _set_image(ir, image)
    if platform is not None:
        _set_optional_secrets(platform, optional, set(require_secrets), drop_others=legacy)
    if legacy:
        header.append(f"# Form: KFP backend {version[0]}.{version[1]} - 2.14 (pipelines.compile "
                      f"--kfp-backend {kfp_backend})")
        _legacy_resources(ir)
        if platform is not None:
            _legacy_platform(platform, version)
    _write(path, header, docs)
    return path


def backend_version(text: str) -> tuple[int, int]:
    """``"2.2"`` / ``"2.14.0"`` -> (2, 2) / (2, 14); rejects backends older than 2.2 (no v2 driver fields)."""
    match = re.match(r"^(\d+)\.(\d+)(\.\d+)?$", text.strip())
    if not match:
        raise ValueError(f"--kfp-backend wants a version like 2.2 or 2.15.0, not {text!r}")
    version = (int(match[1]), int(match[2]))
    if version < OLDEST_BACKEND:
        raise ValueError(f"KFP backend {text} is older than {OLDEST_BACKEND[0]}.{OLDEST_BACKEND[1]}: not supported")
    return version


def pinned_image(image: str, digest: str) -> str:
    """``name:tag`` + ``sha256:...`` -> ``name:tag@sha256:...`` (an existing digest is replaced)."""
    if not DIGEST.match(digest):
        raise ValueError(f"an image digest looks like sha256:<64 hex digits>, not {digest!r}")
    return f"{image.split('@', 1)[0]}@{digest}"


def _read(path: Path) -> tuple[list[str], list[dict]]:
    text = path.read_text()
    lines = text.splitlines()
    first_body = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return lines[:first_body], [doc for doc in yaml.safe_load_all(text) if doc is not None]


def _write(path: Path, header: list[str], docs: list[dict]) -> None:
    body = yaml.safe_dump_all(docs, sort_keys=True, explicit_start=False)
    path.write_text("\n".join(header) + "\n" + body)


def _executor_configs(platform: dict) -> list[dict]:
    return list(platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values())


def _set_image(ir: dict, image: str) -> None:
    """Every task runs ``image`` and knows it (``ANET_IMAGE_REF``: the runs' ``image.ref`` lineage tag)."""
    for executor in ir["deploymentSpec"]["executors"].values():
        if "container" in executor:
            container = executor["container"]
            container["image"] = image
            env = [e for e in container.get("env", []) if e.get("name") != IMAGE_REF_ENV]
            container["env"] = [*env, {"name": IMAGE_REF_ENV, "value": image}]


def _set_optional_secrets(platform: dict, optional: set[str], required: set[str], drop_others: bool) -> None:
    """Mount the ``required`` optional secrets as required; leave the other optional ones out if asked."""
    dropped = optional - required if drop_others else set()
    for config in _executor_configs(platform):
        kept = [s for s in config.get("secretAsEnv", []) if s.get("secretName") not in dropped]
        for secret in kept:
            if secret.get("secretName") in required:
                secret["optional"] = False
        config["secretAsEnv"] = kept


def _legacy_resources(ir: dict) -> None:
    """Numeric requests/limits and accelerator type/count only (the string forms came with KFP 2.3)."""
    for executor in ir["deploymentSpec"]["executors"].values():
        resources = executor.get("container", {}).get("resources")
        if not resources:
            continue
        accelerator = resources.get("accelerator")
        kept = {k: v for k, v in resources.items() if k in LEGACY_RESOURCE_FIELDS}
        if accelerator:
            kept["accelerator"] = {k: accelerator[k] for k in ("type", "count") if k in accelerator}
        executor["container"]["resources"] = kept


def _legacy_platform(platform: dict, version: tuple[int, int]) -> None:
    """Secrets and PVCs by the fields KFP 2.2 reads; fail on anything ``version`` cannot express."""
    known = LEGACY_K8S_FIELDS | {name for name, since in K8S_FIELDS_SINCE.items() if version >= since}
    for config in _executor_configs(platform):
        for key in LEGACY_DROPPED_K8S_FIELDS & set(config):
            del config[key]
        unknown = set(config) - known
        if unknown:
            needs = sorted(f"{n} (KFP >= {'.'.join(map(str, K8S_FIELDS_SINCE.get(n, CURRENT_BACKEND)))})"
                           for n in unknown)
            hint = "; emptyDirMounts is the /dev/shm of multi-GPU train tasks (--gpus 1 needs none)"
            raise ValueError(f"KFP backend {version[0]}.{version[1]} cannot express {needs}"
                             + (hint if "emptyDirMounts" in unknown else ""))
        config["secretAsEnv"] = [{"secretName": s["secretName"], "keyToEnv": s["keyToEnv"]}
                                 for s in config.get("secretAsEnv", [])]
        for mount in config.get("pvcMount", []):
            mount.pop("pvcNameParameter", None)
            if not {"constant", "componentInputParameter", "taskOutputParameter"} & set(mount):
                raise ValueError(f"PVC mount at {mount.get('mountPath')} has no name older backends can read")


def placement_from(args: argparse.Namespace) -> Placement:
    """``--node-selector KEY=VALUE`` and ``--toleration KEY[=VALUE]:EFFECT`` as a :class:`Placement`."""
    selector = {}
    for item in args.node_selector:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--node-selector {item!r}: expected KEY=VALUE")
        selector[key] = value
    for item in args.toleration:
        if ":" not in item or item.rsplit(":", 1)[1] not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ValueError(f"--toleration {item!r}: expected KEY[=VALUE]:NoSchedule|PreferNoSchedule|NoExecute")
    return Placement(selector, tuple(args.toleration))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="pipelines/anet_pipeline.yaml", help="where to write the YAML")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per train task (>1: torchrun DDP)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes per train step (>1: a Kubeflow Trainer "
                        "TrainJob of nodes x --gpus, launched by the step; needs docker/k8s/trainjob-rbac.yaml)")
    parser.add_argument("--kfp-backend", metavar="VERSION", help="target KFP backend, e.g. 2.2 for Kubeflow 1.9 "
                        "(default: the form for 2.15 and newer)")
    parser.add_argument("--legacy-ir", action="store_true", help="same as --kfp-backend 2.2")
    parser.add_argument("--image", help="image for every task, e.g. name@sha256:... (default: ANET_IMAGE)")
    parser.add_argument("--image-digest", metavar="SHA256", help="pin the tasks' image to this digest")
    parser.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE",
                        help="node label the train tasks need, e.g. nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB")
    parser.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT",
                        help="taint the train tasks tolerate, e.g. nvidia.com/gpu:NoSchedule; repeatable")
    parser.add_argument("--require-secret", action="append", default=[], metavar="NAME",
                        help="mount this optional secret (e.g. anet-mlflow-auth) as required; repeatable. "
                        "With --kfp-backend < 2.15 the optional secrets not named are left out")
    args = parser.parse_args(argv)
    if args.gpus < 0:
        parser.error("--gpus must be >= 0")
    if args.nodes < 1:
        parser.error("--nodes must be >= 1")
    backend = "2.2" if args.legacy_ir else args.kfp_backend
    image = args.image or None
    try:
        if args.image_digest:
            image = pinned_image(image or IMAGE, args.image_digest)
        path = compile_pipeline(args.output, gpus=args.gpus, kfp_backend=backend, image=image,
                                require_secrets=args.require_secret, placement=placement_from(args),
                                nodes=args.nodes)
    except ValueError as exc:
        parser.error(str(exc))
    form = f"KFP backend {backend}" if backend else "KFP backend >= 2.15"
    where = f"TrainJob of {args.nodes} nodes x {args.gpus} GPU(s)" if args.nodes > 1 else f"{args.gpus} GPU(s)"
    print(f"wrote {path} (image {image or IMAGE}, {where} per train task, {form})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
