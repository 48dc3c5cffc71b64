"""Logging models to MLflow: torch modules, and python models that carry this project's code.

:func:`log_model` logs a CPU copy of a torch module into the active step run (``pt2`` via
``torch.export`` when it traces, else ``pickle``), with a signature inferred from the input example
and explicit pinned requirements (:func:`model_requirements`). :func:`log_code_model` logs an ``mlflow.pyfunc`` model
from code (the served re-ID model, :mod:`anet.search.served`): the code file, its artifacts, the
project's package as ``code_paths`` and third-party requirements pinned to the installed versions
(:func:`pinned_requirements`). MLflow and torch are imported inside functions only, so importing
this module stays cheap; :mod:`anet.mlops.tracking.tracking` re-exports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def log_model(model: Any, name: str = "model", input_example: Any = None, *, signature: Any = None,
              extra_pip_requirements: Iterable[str] = (), serialization_format: str = "auto") -> str:
    """Log a torch module (a CPU copy in eval mode) into the active step run; return its model URI.

    ``pt2`` (``torch.export``, MLflow's default) loads without unpickling code; it needs
    ``input_example`` (a float32 numpy batch; a batch of one is repeated to two so the exported
    batch dimension stays dynamic). ``auto`` tries pt2 and falls back to ``pickle`` with a warning
    for modules torch.export cannot trace (e.g. ANet's dataclass output). The signature is inferred from the example when the module returns
    a tensor. Requirements are explicit (:func:`model_requirements`): no ``+cpu`` build tag.
    """
    import copy
    import warnings

    import mlflow
    import mlflow.pytorch
    import numpy as np

    if mlflow.active_run() is None:
        raise RuntimeError("log_model must be called inside start_step_run(...)")
    cpu_model = copy.deepcopy(model).cpu().eval()
    example = None if input_example is None else np.asarray(input_example)
    if example is not None and example.shape[:1] == (1,):
        example = np.concatenate([example, example])
    if signature is None and example is not None:
        signature = _infer_signature(cpu_model, example)
    kwargs = {"name": name, "signature": signature, "input_example": example,
              "pip_requirements": model_requirements() + list(extra_pip_requirements)}
    if serialization_format == "auto" and example is not None:
        try:
            return mlflow.pytorch.log_model(cpu_model, serialization_format="pt2", **kwargs).model_uri
        except Exception as exc:  # torch.export cannot trace every module; pickle always works
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            warnings.warn(f"torch.export failed ({reason}); logging {name} with pickle", stacklevel=2)
    fmt = "pickle" if serialization_format == "auto" else serialization_format
    return mlflow.pytorch.log_model(cpu_model, serialization_format=fmt, **kwargs).model_uri


def log_code_model(code_file: str | Path, artifacts: Mapping[str, str], *, code_paths: Iterable[str | Path],
                   requirements: Iterable[str], input_example: Any, signature: Any = None,
                   name: str = "model") -> str:
    """Log an ``mlflow.pyfunc`` model from code into the active step run; return its model URI.

    ``code_file`` calls ``mlflow.models.set_model(...)``; ``artifacts`` ({name: local path}) reach its
    ``load_context`` as ``context.artifacts``; ``code_paths`` travel with the model and are put on
    ``sys.path`` when it loads, so a package that is not published still resolves. MLflow checks the
    input example against the loaded model before it returns.

    Example:
        >>> log_code_model("anet/search/served_model.py", {"vocab": "out/vocab.json"}, code_paths=["anet"],
        ...                requirements=pinned_requirements(["torch"]), input_example=frame)  # doctest: +SKIP
        'models:/m-4f0c...'
    """
    import mlflow
    import mlflow.pyfunc

    if mlflow.active_run() is None:
        raise RuntimeError("log_code_model must be called inside start_step_run(...)")
    info = mlflow.pyfunc.log_model(name=name, python_model=str(code_file), artifacts=dict(artifacts),
                                   code_paths=[str(p) for p in code_paths], pip_requirements=list(requirements),
                                   input_example=input_example, signature=signature)
    return info.model_uri


def pinned_requirements(dists: Iterable[str]) -> list[str]:
    """``dist==<installed version>`` for each distribution (no local build tag such as ``+cpu``).

    Example:
        >>> pinned_requirements(["torch", "numpy"])
        ['torch==2.13.0', 'numpy==2.4.6']
    """
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in dists:
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def model_requirements() -> list[str]:
    """Pinned pip requirements of a logged torch module: torch, numpy, kornia (never this unpublished
    package: a model that needs its code logs it with :func:`log_code_model`)."""
    return pinned_requirements(("torch", "numpy", "kornia"))


def _infer_signature(model: Any, input_example: Any) -> Any:
    import numpy as np
    import torch
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import Schema, TensorSpec

    example = np.asarray(input_example)
    with torch.no_grad():
        output = model(torch.from_numpy(example))  # B x ... for a tensor-returning module
    if isinstance(output, torch.Tensor):
        return infer_signature(example, output.numpy())
    inputs = Schema([TensorSpec(example.dtype, (-1, *example.shape[1:]))])
    return ModelSignature(inputs=inputs)
