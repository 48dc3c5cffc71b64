"""From a YAML profile and typed settings to the config: the one resolution every edge uses."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

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


def _sets(*keys: str, doc: str) -> Any:
    """A run setting's field: unset (``None``) keeps the profile's value; set, it writes ``keys``."""
    return Field(None, description=doc, json_schema_extra={"sets": list(keys)})


class RunSettings(_Frozen):
    """The pipeline's typed run settings, declared once; ``None`` keeps the profile's value.

    This class is the one declaration: the DAG's signature and the prepare component's parameters
    carry exactly these names and types (``tests/test_pipeline_compile.py`` fails when they drift),
    and each field names the dotted config keys it sets, so ``lambda_g`` in the DAG's signature, the
    sweep's suggestion and ``cfg.loss.lambda_g`` in the criterion are one name. A new run setting is
    one field here (plus the same parameter on the DAG and the component, which the test demands).
    """

    lambda_a: float | None = _sets("loss.lambda_a", doc="weight of the attribute loss terms")
    lambda_g: float | None = _sets("loss.lambda_g", doc="weight of the re-ID loss terms on g_map")
    lambda_van: float | None = _sets("loss.lambda_van", doc="weight of the vanilla re-ID loss terms on f_map")
    lr: float | None = _sets("stage_one.lr", doc="stage-one base learning rate")
    epochs: int | None = _sets("stage_one.epochs", doc="stage-one epochs")
    eval_every: int | None = _sets("stage_one.eval_every", "stage_two.eval_every",
                                   doc="evaluate every N epochs in both stages (0: at the end only)")
    seed: int | None = _sets("runtime.seed", doc="the run's random seed")
    promotion_margin: float | None = _sets("registry.promotion_margin",
                                           doc="how much better a challenger must be to become champion")

    def as_overrides(self) -> dict[str, Any]:
        """``{dotted config key: value}`` for every field that is set."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if value is not None:
                out.update({key: value for key in RUN_SETTING_KEYS[name]})
        return out


def _setting_keys(name: str) -> tuple[str, ...]:
    extra = RunSettings.model_fields[name].json_schema_extra
    assert isinstance(extra, dict)  # every field is declared through _sets
    return tuple(extra["sets"])  # type: ignore[arg-type]


RUN_SETTING_KEYS: dict[str, tuple[str, ...]] = {name: _setting_keys(name) for name in RunSettings.model_fields}
"""Run setting name -> the dotted config keys it sets (derived from :class:`RunSettings`)."""


def config_value(cfg: BaseModel, dotted: str) -> Any:
    """The value at a dotted key of any depth, e.g. ``config_value(cfg, "data.synthetic.render_size")``."""
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


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
    implied = variant_implies(raw, items)
    for key, value in implied.items():
        _set_dotted(raw, key, value)
    from_settings = settings.as_overrides() if settings is not None else {}
    origins = {key: ("run setting" if key in from_settings else "command line" if key in (overrides or {})
                     else "run location", value) for key, value in items.items()}
    origins.update({key: (f"implied by model.variant={raw['model']['variant']}", v) for key, v in implied.items()})
    return validate(ExperimentConfig, raw, source=str(path), origins=origins)


# a model without the joint module (Baseline, VAN) has no j and nothing for stage two's AC to train
NO_JOINT_MODULE = ("baseline", "van")
PLAIN_STAGES = {"stage_two.epochs": 0, "stage_two.amelioration": False, "stage_two.freeze_f": False}


def variant_implies(raw: Mapping[str, Any], explicit: Mapping[str, Any]) -> dict[str, Any]:
    """What ``model.variant`` baseline or van implies for the keys not set explicitly (``explicit``).

    One switch turns an ANet profile into its plain model (``model.variant=baseline`` of a
    ``*-fastreid`` profile is FastReID itself, the paper's "FastReid" rows): no stage two (AC needs the
    joint module) and evaluation on f where the profile evaluates j. A key given on the command line,
    as a run setting or by the caller wins, and is then checked as given (e.g. ``eval.feature=j``
    with ``model.variant=baseline`` is refused, never replaced).

    Example:
        >>> variant_implies({"model": {"variant": "baseline"}, "eval": {"feature": "j"}}, {})["eval.feature"]
        'f'
    """
    if (raw.get("model") or {}).get("variant", "anet") not in NO_JOINT_MODULE:
        return {}
    implied = {key: value for key, value in PLAIN_STAGES.items() if key not in explicit}
    if "eval.feature" not in explicit and (raw.get("eval") or {}).get("feature", "j") == "j":
        implied["eval.feature"] = "f"
    return implied


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


