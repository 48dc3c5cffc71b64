"""The registered model, both ways: log it (register step) and load it back by URI (index, search).

The logged model is an ``mlflow.pyfunc`` model from code (:mod:`anet.search.served_model`) whose
artifacts are a slim checkpoint, ``preprocess.json`` and ``vocab.json`` (:func:`write_artifacts`);
the ``anet`` package travels with it (``code_paths``) and its requirements are the pinned
third-party packages ``anet`` imports when the model loads (:data:`SERVED_DISTS`). Its input example
is a real image of the prepared dataset. Loading for search downloads those artifacts and builds
the predictor with this process's code, and records which model version it is (:class:`ModelRef`),
so an index can refuse a query embedded by another model. MLflow is imported inside functions only.

Example:
    >>> uri = log_served_model("runs/x/stage_two/final.pt", cfg, vocab, example_png)   # in a step run
    >>> predictor, ref = load_predictor("models:/anet-synthetic@champion")
    >>> ref
    ModelRef(name='anet-synthetic', version='3', run_id='9c1e...')
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

import anet
from anet.config import ExperimentConfig
from anet.data.cache import COMPLETE, PreparedDataset
from anet.errors import UserError
from anet.evaluation.run import pick_feature
from anet.mlops.tracking.models import log_code_model, pinned_requirements
from anet.model.checkpoint_io import load_model_from_checkpoint, read_checkpoint
from anet.search.predictor import CHECKPOINT, FILES, IMAGE_COLUMN, PREPROCESS, VOCAB, ReidPredictor

log = logging.getLogger(__name__)
# third-party distributions anet imports (at module level) when the served model loads; mlflow adds itself
SERVED_DISTS = ("torch", "numpy", "pandas", "pillow", "pydantic", "pyyaml")
CODE_FILE = Path(__file__).with_name("served_model.py")


@dataclass(frozen=True)
class ModelRef:
    """Which registered model version made an embedding."""

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``: this exact version, whatever the aliases say later."""
        return f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return f"{self.name} v{self.version} (run {self.run_id})"


def write_artifacts(checkpoint: str | Path, cfg: ExperimentConfig, vocab: Mapping[str, Sequence[str]],
                    out_dir: str | Path) -> dict[str, str]:
    """Write the served model's three files into ``out_dir``; return ``{artifact name: path}``.

    The checkpoint keeps only what rebuilds the model (no optimizer or sampler state); ``vocab``
    must name as many classes per attribute as the checkpoint's classifiers have.
    """
    ckpt = read_checkpoint(checkpoint)
    classes = {str(k): int(v) for k, v in ckpt["attr_classes"].items()}
    names = {a: [str(c) for c in vocab.get(a, ())] for a in classes}
    wrong = {a: (len(names[a]), m) for a, m in classes.items() if len(names[a]) != m}
    if wrong:
        raise UserError(f"{checkpoint}: the vocabularies do not fit the attribute classifiers ((names, classes) "
                        f"per attribute: {wrong}); register with the dataset the model was trained on")
    model = load_model_from_checkpoint(checkpoint)
    preprocess = {"image_size": list(cfg.data.image_size), "mean": list(cfg.augment.mean),
                  "std": list(cfg.augment.std), "flip": cfg.eval.flip,
                  "feature": pick_feature(cfg.eval.feature, tuple(model.available_features))}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: ckpt[k] for k in ("model", "num_ids", "attr_classes", "model_cfg")}, out / FILES[CHECKPOINT])
    (out / FILES[PREPROCESS]).write_text(json.dumps(preprocess, indent=2))
    (out / FILES[VOCAB]).write_text(json.dumps(names, indent=2))
    return {name: str(out / file) for name, file in FILES.items()}


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 H x W x 3 -> PNG bytes (lossless: decoding gives the same pixels back)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def log_served_model(checkpoint: str | Path, cfg: ExperimentConfig, vocab: Mapping[str, Sequence[str]],
                     example_image: bytes, name: str = "model") -> str:
    """Log the served model into the active step run; return its model URI (see the module docstring).

    ``example_image``: encoded bytes of a real image (the input example; MLflow predicts on it
    before logging completes, and the signature is inferred from that prediction).
    """
    from mlflow.models import infer_signature  # lazy: mlflow is heavy and only needed when registering

    with tempfile.TemporaryDirectory(prefix="anet-served-") as tmp:
        artifacts = write_artifacts(checkpoint, cfg, vocab, tmp)
        example = pd.DataFrame({IMAGE_COLUMN: [example_image]})
        output = ReidPredictor.from_artifacts(artifacts).predict(example)
        signature = infer_signature(example, output)
        return log_code_model(CODE_FILE, artifacts, code_paths=[Path(anet.__file__).parent],
                              requirements=pinned_requirements(SERVED_DISTS), input_example=example,
                              signature=signature, name=name)


def resolve_model(uri: str) -> ModelRef:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> the :class:`ModelRef` it names now."""
    from mlflow import MlflowClient  # lazy: mlflow is heavy and only needed when loading a model
    from mlflow.exceptions import MlflowException

    body = uri.removeprefix("models:/")
    if body == uri or not body:
        raise UserError(f"--model {uri!r}: expected a registry URI, models:/<name>@<alias> or models:/<name>/<version>")
    client = MlflowClient()
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = body.partition("/")
            version = client.get_model_version(name, number)
    except MlflowException as exc:
        raise UserError(f"--model {uri}: not in the registry ({exc.message.splitlines()[0][:200]})") from None
    return ModelRef(version.name, str(version.version), str(version.run_id or ""))


def load_predictor(uri: str) -> tuple[ReidPredictor, ModelRef]:
    """Download a registered model's artifacts and build its predictor here; return it and its version."""
    import mlflow.artifacts  # lazy: mlflow is heavy and only needed when loading a model

    ref = resolve_model(uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri))
    found = {name: next(iter(local.rglob(file)), None) for name, file in FILES.items()}
    missing = sorted(FILES[n] for n, path in found.items() if path is None)
    if missing:
        raise UserError(f"{ref.uri}: not a served anet model (no {', '.join(missing)}); it was registered before "
                        "models carried their preprocessing: register a new version")
    return ReidPredictor.from_artifacts({n: str(p) for n, p in found.items()}), ref


def dataset_of_run(parent_run_id: str, image_size: tuple[int, int]) -> tuple[dict[str, list[str]], bytes]:
    """The vocabularies of a pipeline run's prepared dataset and one of its images (PNG), for registering.

    Read from the run's prepare step (params ``data.vocab`` and ``data.cache_dir``); the image is the
    first test image of the cache, or (logged) a grey ``image_size`` one when the cache is not
    reachable from here.
    """
    params = _prepare_params(parent_run_id)
    prepared = _open_cache(params.get("data.cache_dir"))
    if "data.vocab" in params:
        vocab = json.loads(params["data.vocab"])
    elif prepared is not None:
        vocab = prepared.manifest.vocab
    else:
        raise UserError(f"run {parent_run_id}: no prepare step with the dataset's vocabularies (data.vocab); "
                        "register a model from a pipeline run")
    if prepared is None:
        log.warning("the prepared cache (%s) is not reachable here: the model's input example is a grey image",
                    params.get("data.cache_dir"))
        return vocab, png_bytes(np.full((*image_size, 3), 128, np.uint8))
    frame = prepared.manifest.frame
    rows = frame[frame["split"] != "train"] if (frame["split"] != "train").any() else frame
    return vocab, png_bytes(prepared.images[int(rows["cache_index"].iloc[0])])


def prepared_of_model(ref: ModelRef) -> PreparedDataset:
    """The prepared cache the pipeline run that registered ``ref`` trained and evaluated on."""
    from mlflow import MlflowClient  # lazy: mlflow is heavy and only needed when loading a model

    parent = MlflowClient().get_run(ref.run_id).data.tags.get("mlflow.parentRunId", "") if ref.run_id else ""
    cache_dir = _prepare_params(parent).get("data.cache_dir") if parent else None
    prepared = _open_cache(cache_dir)
    if prepared is None:
        raise UserError(f"{ref}: its prepared cache ({cache_dir or 'unknown'}) is not here; pass --cache DIR")
    return prepared


def _prepare_params(parent_run_id: str) -> dict[str, str]:
    """Params of the prepare step run under a pipeline's parent run (empty when there is none)."""
    from mlflow import MlflowClient  # lazy: mlflow is heavy and only needed with a registry

    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' "
                              "and tags.`anet.step` = 'prepare'", max_results=1)
    return dict(runs[0].data.params) if runs else {}


def _open_cache(cache_dir: str | None) -> PreparedDataset | None:
    if cache_dir and (Path(cache_dir) / COMPLETE).is_file():
        return PreparedDataset.open(cache_dir)
    return None
