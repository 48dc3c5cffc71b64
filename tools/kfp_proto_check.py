"""Which KFP backends accept a compiled pipeline YAML: strict parses with each backend's own protos.

The KFP API server parses the pipeline spec strictly (protojson, unknown fields rejected); drivers
before 2.5.0 parse each task's container spec and Kubernetes config strictly too, and from 2.5.0 on
they silently drop fields they do not know. This script generates Python modules from the
``pipeline_spec.proto`` and ``kubernetes_executor_config.proto`` that each backend tag builds
against (its go.mod pins, or the tag itself once go.mod replaces them locally) and parses the YAML
with them, as those Go parsers would.

    pip install grpcio-tools pyyaml            # not project dependencies
    git clone https://github.com/kubeflow/pipelines /tmp/kfp-src
    python tools/kfp_proto_check.py /tmp/kfp-src pipelines/anet_pipeline.yaml 2.2.0 2.4.1 2.5.0 2.15.0 2.16.0
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

PIN = re.compile(r"github\.com/kubeflow/pipelines/(api|kubernetes_platform) v[^\s]*-([0-9a-f]{12})")
STATUS_PROTO = ('syntax = "proto3"; package google.rpc; import "google/protobuf/any.proto";\n'
                "message Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }\n")
CHECK = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from google.protobuf import json_format
import pipeline_spec_pb2 as ps, kubernetes_executor_config_pb2 as k8s
ir, platform = json.load(open(sys.argv[2]))
errors = []
def parse(doc, message, where):
    try: json_format.ParseDict(doc, message)
    except json_format.ParseError as e: errors.append(f"{where}: {e}")
parse(ir, ps.PipelineSpec(), "pipeline spec")
parse(ir["deploymentSpec"], ps.PipelineDeploymentConfig(), "deploymentSpec")
for name, config in (platform or {}).items():
    parse(config, k8s.KubernetesExecutorConfig(), name)
print(json.dumps(errors))
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _proto_refs(repo: Path, tag: str) -> tuple[str, str]:
    """The commits of api/ and kubernetes_platform/ that ``tag``'s backend builds against."""
    go_mod = _git(repo, "show", f"{tag}:go.mod")
    pins = dict(PIN.findall(go_mod))
    local = "=> ./api" in go_mod  # from 2.5.0 on, go.mod replaces both modules with the tag's own copies
    return (tag, tag) if local or not pins else (pins["api"], pins["kubernetes_platform"])


def _generate(repo: Path, tag: str, work: Path) -> Path:
    """Python modules for ``tag``'s two protos, under work/<tag>/out."""
    from grpc_tools import protoc

    api, k8s = _proto_refs(repo, tag)
    src, out = work / tag / "src", work / tag / "out"
    (src / "google" / "rpc").mkdir(parents=True)
    out.mkdir(parents=True)
    (src / "google" / "rpc" / "status.proto").write_text(STATUS_PROTO)
    (src / "pipeline_spec.proto").write_text(_git(repo, "show", f"{api}:api/v2alpha1/pipeline_spec.proto"))
    k8s_proto = _git(repo, "show", f"{k8s}:kubernetes_platform/proto/kubernetes_executor_config.proto")
    (src / "kubernetes_executor_config.proto").write_text(
        re.sub(r'import ".*pipeline_spec.proto";', 'import "pipeline_spec.proto";', k8s_proto))
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{src}", f"-I{include}", f"--python_out={out}", str(src / "pipeline_spec.proto"),
                        str(src / "kubernetes_executor_config.proto"), str(src / "google/rpc/status.proto")])
    if code != 0:
        raise RuntimeError(f"protoc failed for {tag}")
    return out


def check(repo: Path, pipeline_yaml: Path, tags: list[str]) -> dict[str, list[str]]:
    """Parse errors per backend tag (an empty list: that backend accepts every field)."""
    docs = [d for d in yaml.safe_load_all(pipeline_yaml.read_text()) if d]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else None
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp) / "doc.json"
        doc.write_text(json.dumps([docs[0], platform]))
        for tag in tags:
            out = _generate(repo, tag, Path(tmp))  # one interpreter per tag: the modules share names
            done = subprocess.run([sys.executable, "-c", CHECK, str(out), str(doc)], capture_output=True, text=True)
            results[tag] = json.loads(done.stdout) if done.returncode == 0 else [done.stderr.strip()[-500:]]
    return results


def main(argv: list[str]) -> int:
    """CLI: repo, YAML, tags; exit 1 when any tag rejects a field."""
    repo, pipeline_yaml, *tags = argv
    results = check(Path(repo), Path(pipeline_yaml), tags)
    for tag, errors in results.items():
        print(f"{tag}: {'accepted' if not errors else 'REJECTED'}")
        for error in sorted({re.sub(r"exec-[a-z0-9-]+", "exec-*", e).split(" Available")[0] for e in errors}):
            print(f"    {error[:220]}")
    return 1 if any(results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
