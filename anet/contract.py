"""The cluster contract: names the DAG, the steps and the image share, one line each on what they mean.

The DAG (``pipelines/``) sets these, the steps (``anet.steps``) and the image (``docker/``) read them;
a name changes here or nowhere. Knobs that only tune one process (``ANET_LOG_LEVEL``,
``ANET_PROGRESS``, ``ANET_WEIGHTS_DIR``, the MLflow retry and registry lock timings) stay beside the
code they tune: nothing else sets or reads them.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- environment variables
NPROC_ENV = "ANET_NPROC"  # processes per train pod (= its GPUs); > 1: the step re-launches under torchrun
NNODES_ENV = "ANET_NNODES"  # > 1: the train step launches a TrainJob of NNODES x NPROC ranks instead
EXPECT_GPUS_ENV = "ANET_EXPECT_GPUS"  # GPUs the task requested: the step fails when torch sees fewer
CHECKPOINT_ROOT_ENV = "ANET_CHECKPOINT_ROOT"  # retry checkpoints on the PVC; set only in a cluster DAG
NODE_RESOURCES_ENV = "ANET_NODE_RESOURCES"  # JSON: each TrainJob node's resources (pipelines.trainjob)
NODE_PLACEMENT_ENV = "ANET_NODE_PLACEMENT"  # JSON: each TrainJob node's node selector and tolerations
TRAINJOB_ENV = "ANET_TRAINJOB"  # set on a TrainJob's ranks: the job's name
IMAGE_ENV = "ANET_IMAGE"  # the component image the DAG compiles against (read when components import)
IMAGE_REF_ENV = "ANET_IMAGE_REF"  # the image's pinned digest, written into each task (lineage tag image.ref)
GIT_COMMIT_ENV = "ANET_GIT_COMMIT"  # baked into the image: the commit it was built from (lineage)
BUILD_DATE_ENV = "ANET_BUILD_DATE"  # baked into the image: when it was built (lineage tag image.build_date)

# --------------------------------------------------------------------------- mounts and paths
PVC_MOUNT = "/mnt/anet"  # where every task mounts the cache PVC (the image creates it, group-writable)
CLUSTER_CACHE_ROOT = f"{PVC_MOUNT}/cache"  # the prepared cache on the PVC (data.cache_dir on a cluster)
CHECKPOINT_ROOT = f"{PVC_MOUNT}/checkpoints"  # retry checkpoints: a retried train task resumes from here
SHM_MOUNT = "/dev/shm"  # a memory volume for NCCL in multi-GPU train pods
SHM_SIZE = "16Gi"  # its size: NCCL needs more than a pod's 64 MB default

# --------------------------------------------------------------------------- secrets (name -> key: env var)
S3_SECRET = "anet-s3"  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL: the DVC remote and S3
MLFLOW_SECRET = "anet-mlflow"  # MLFLOW_TRACKING_URI
MLFLOW_AUTH_SECRET = "anet-mlflow-auth"  # optional: MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD
OPTUNA_SECRET = "anet-optuna"  # optional: OPTUNA_STORAGE, the sweep's storage URL with its credentials
SECRETS: dict[str, tuple[dict[str, str], bool]] = {  # secret name -> (key -> env var, optional)
    S3_SECRET: ({k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")}, False),
    MLFLOW_SECRET: ({"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"}, False),
    MLFLOW_AUTH_SECRET: ({k: k for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}, True),
    OPTUNA_SECRET: ({"OPTUNA_STORAGE": "OPTUNA_STORAGE"}, True),
}
CACHE_PVC = "anet-cache"  # the default name of the cache PVC (the DAG's cache_pvc parameter)

# --------------------------------------------------------------------------- artifacts between steps
DESCRIPTOR = "descriptor.json"  # in the prepare step's Dataset artifact: where the prepared cache is
RESULT_FILE = "result.json"  # a train step's summary, written by rank 0
PRUNED_MARKER = "PRUNED"  # in a train step's Model artifact: the trial was pruned, later stages skip
