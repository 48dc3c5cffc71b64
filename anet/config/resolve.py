"""From a YAML profile and typed settings to the config: the one resolution every edge uses."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from anet.config.schema import CONFIG_DIR, ExperimentConfig, _Frozen
from anet.config.validation import ConfigError, unknown_key_message, validate


def profile_path(profile: str) -> Path:
    """Resolve a profile name (``smoke``) or a path to a YAML file."""
    candidate = Path(profile)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        return candidate
    return CONFIG_DIR / f"{profile}.yaml"


def load_config(profile: str = "synthetic", overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load a YAML profile, apply dotted ``key=value`` overrides (command-line text), validate.

    Example:
        >>> cfg = load_config("smoke", ["loss.lambda_g=2"])
        >>> cfg.loss.lambda_g
        2.0
    """
    return resolve_config(profile, parse_overrides(overrides))


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Command-line ``key=value`` strings -> ``{dotted key: typed value}`` (each value parsed as YAML once).

    This is the only place where override text becomes values; everything after it is typed.

    Example:
        >>> parse_overrides(["loss.lambda_a=0.5", "stage_one.milestones=[10, 20]"])
        {'loss.lambda_a': 0.5, 'stage_one.milestones': [10, 20]}
    """
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} (command line): expected key=value, e.g. loss.lambda_a=0.5")
        try:
            parsed[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r} (command line): the value is not valid YAML") from None
    return parsed


class RunSettings(_Frozen):
    """The pipeline's typed run parameters; ``None`` keeps the profile's value.

    Each field names the config key it sets (:data:`RUN_SETTING_KEYS`), so ``lambda_g`` in the DAG's
    signature, the sweep's suggestion and ``cfg.loss.lambda_g`` in the criterion are one name.
    """

    lambda_a: float | None = None
    lambda_g: float | None = None
    lambda_van: float | None = None
    lr: float | None = None
    epochs: int | None = None
    eval_every: int | None = None
    seed: int | None = None
    promotion_margin: float | None = None

    def as_overrides(self) -> dict[str, Any]:
        """``{dotted config key: value}`` for every field that is set."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if value is not None:
                out.update({key: value for key in RUN_SETTING_KEYS[name]})
        return out


RUN_SETTING_KEYS: dict[str, tuple[str, ...]] = {
    "lambda_a": ("loss.lambda_a",), "lambda_g": ("loss.lambda_g",), "lambda_van": ("loss.lambda_van",),
    "lr": ("stage_one.lr",), "epochs": ("stage_one.epochs",),
    "eval_every": ("stage_one.eval_every", "stage_two.eval_every"), "seed": ("runtime.seed",),
    "promotion_margin": ("registry.promotion_margin",),
}


def resolve_config(profile: str, overrides: Mapping[str, Any] | None = None, settings: RunSettings | None = None,
                   *, dataset: str | None = None, data_root: str | None = None,
                   cache_root: str | None = None) -> ExperimentConfig:
    """Profile + typed overrides + run settings (+ dataset and data/cache locations) -> the config.

    The one resolution every edge uses (CLI, pipeline runner, the prepare step of a pipeline started
    from the Kubeflow UI, sweep trials). Later keys win: overrides, then settings, then locations.

    Example:
        >>> resolve_config("smoke", {"stage_two.epochs": 0}, RunSettings(lambda_g=0.5)).loss.lambda_g
        0.5
    """
    path = profile_path(profile)
    raw = _read_profile(path)
    items: dict[str, Any] = dict(overrides or {})
    if settings is not None:
        items.update(settings.as_overrides())
    if dataset and dataset != raw.get("data", {}).get("dataset"):
        items.update({"data.dataset": dataset, "data.root": f"data/{dataset}"})
    if data_root:
        items["data.root"] = data_root
    if cache_root:
        items["data.cache_dir"] = cache_root
    for key, value in items.items():
        _set_dotted(raw, key, value)
    from_settings = settings.as_overrides() if settings is not None else {}
    origins = {key: ("run setting" if key in from_settings else "command line" if key in (overrides or {})
                     else "run location", value) for key, value in items.items()}
    return validate(ExperimentConfig, raw, source=str(path), origins=origins)


def _read_profile(path: Path) -> dict[str, Any]:
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"{path}: no such config profile; known profiles: {', '.join(known)}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a raw dict, rejecting unknown keys early (naming the closest valid key)."""
    parts = key.strip().split(".")
    _check_path(parts)
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _check_path(parts: list[str]) -> None:
    """Reject unknown dotted keys early, naming the closest valid key."""
    model: type[BaseModel] | None = ExperimentConfig
    for depth, part in enumerate(parts):
        if model is None:
            raise ConfigError(f"unknown key {'.'.join(parts)!r}: {'.'.join(parts[:depth])} has no sub-keys")
        fields = model.model_fields
        if part not in fields:
            prefix = ".".join(parts[:depth])
            raise ConfigError(unknown_key_message(prefix, part, list(fields)))
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


