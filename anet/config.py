"""One typed, frozen experiment config.

A config is read from a YAML profile in ``configs/`` and then changed by dotted ``key=value``
overrides, exactly as a user types them on the command line::

    from anet.config import load_config
    cfg = load_config("synthetic", ["loss.lambda_a=0.5", "stage_one.epochs=3"])
    cfg.loss.lambda_a            # 0.5
    cfg.to_json()                # the JSON string a pipeline parameter carries
    ExperimentConfig.from_json(cfg.to_json()) == cfg   # True

Unknown keys fail loudly and name the closest valid key; values are range-checked. Nothing
writes back into a config at run time: values derived from the data (number of identities,
attribute class counts) are passed to builders as arguments.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from anet.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

DatasetName = Literal["synthetic", "veri776", "veriwild", "vehicleid"]
Feature = Literal["f", "fa", "j"]


class ConfigError(UserError, ValueError):
    """A user mistake in a config file or an override: the message is one readable line."""


class _Frozen(BaseModel):
    # allow_inf_nan=False: Field(gt=0) alone lets lr=inf through (and the first step turns it into NaN)
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)


class SyntheticCfg(_Frozen):
    """Knobs of the built-in procedural vehicle dataset (anet.synthetic.generator)."""

    train_ids: int = Field(120, ge=2)
    test_ids: int = Field(60, ge=2)
    images_per_id: int = Field(12, ge=2)
    cameras: int = Field(6, ge=2)
    image_size: int = Field(96, ge=32, le=1024)
    difficulty: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = 0


class DataCfg(_Frozen):
    """Where the images come from and how batches are formed."""

    dataset: DatasetName = "synthetic"
    root: str = "data"
    attributes: tuple[str, ...] = ("color", "type")
    image_size: tuple[int, int] = (128, 128)
    p_ids: int = Field(16, ge=2)
    k_imgs: int = Field(4, ge=2)
    cache_dir: str = ".cache/anet"
    quarantine_max_fraction: float = Field(0.01, ge=0.0, le=1.0)
    val_ids: int = Field(0, ge=0)  # training identities held out as the validation split (test set "val")
    val_seed: int = 0  # which ones: fixed across runtime seeds, so runs compare on the same split
    min_image_size: int = Field(16, ge=1)  # px on the shorter side; smaller images are quarantined
    synthetic: SyntheticCfg = SyntheticCfg()

    @field_validator("image_size")
    @classmethod
    def _image_size_fits_the_backbone(cls, size: tuple[int, int]) -> tuple[int, int]:
        """Each side 32..1024 px. The IBN-a InstanceNorms of layers 1-3 need more than one value per
        channel at stride 16 (16 x 16 fails in training, measured); pooling is adaptive, so no multiple
        of the stride is needed (17 x 31 trains)."""
        if not all(32 <= side <= 1024 for side in size):
            raise ValueError("each side must be 32..1024 px (a smaller side gives a 1 x 1 map at stride 16)")
        return size


class AugmentCfg(_Frozen):
    """Batch augmentation run on the training device (paper section 4.2)."""

    flip_p: float = Field(0.5, ge=0.0, le=1.0)
    zoom_p: float = Field(0.5, ge=0.0, le=1.0)
    zoom_max: float = Field(1.25, ge=1.0, le=2.0)
    erase_p: float = Field(0.5, ge=0.0, le=1.0)
    erase_area: tuple[float, float] = (0.02, 0.4)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ModelCfg(_Frozen):
    """Architecture: which paper variant, which backbone."""

    variant: Literal["baseline", "van", "anet", "anet_att"] = "anet"
    depth: Literal[18, 34, 50, 101] = 50
    ibn: bool = True
    last_stride: Literal[1, 2] = 1
    attr_branch: Literal["att", "fc"] = "att"
    se_reduction: int = Field(16, ge=1)
    s_f: int = Field(512, ge=8)
    s_a: int = Field(128, ge=8)
    s_j: int = Field(512, ge=8)
    pretrained: str | None = None  # http(s):// URL, s3:// object or local path (anet.mlops.pretrained); none = scratch

    @model_validator(mode="before")
    @classmethod
    def _pretrained_none(cls, data: Any) -> Any:
        """``pretrained: none`` (a YAML string) means from scratch, like null: one spelling, one digest."""
        value = data.get("pretrained") if isinstance(data, dict) else None
        if isinstance(value, str) and value.strip().lower() in {"", "none", "null"}:
            return {**data, "pretrained": None}
        return data


class LossCfg(_Frozen):
    """Loss weights and shapes (eqs. 4, 9, 10, 13)."""

    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    triplet_margin: float = Field(0.3, ge=0.0)
    soft_margin: bool = False
    lambda_a: float = Field(1.0, ge=0.0)
    lambda_g: float = Field(1.0, ge=0.0)
    lambda_van: float = Field(1.0, ge=0.0)


class StageCfg(_Frozen):
    """Everything that differs between stage one (L) and stage two (L' with AC)."""

    name: str
    epochs: int = Field(ge=0)
    lr: float = Field(6e-4, gt=0.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    amsgrad: bool = True
    milestones: tuple[int, ...] = ()
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    warmup_epochs: int = Field(0, ge=0)
    freeze_f: bool = False
    amelioration: bool = False
    checkpoint_every: int = Field(1, ge=1)
    eval_every: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _milestones_sorted(self) -> StageCfg:
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {list(self.milestones)}")
        return self


class EvalCfg(_Frozen):
    """Retrieval evaluation settings."""

    feature: Feature = "j"
    flip: bool = False
    batch_size: int = Field(128, ge=1)
    max_rank: int = Field(50, ge=1)
    block_size: int = Field(1024, ge=1)
    vehicleid_trials: int = Field(10, ge=1)
    vehicleid_sets: tuple[str, ...] = ("800", "1600", "2400")
    veriwild_sets: tuple[str, ...] = ("small", "medium", "large")


class RuntimeCfg(_Frozen):
    """How and where to run; none of this changes the maths."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    channels_last: bool = True
    deterministic: bool = False
    num_threads: int = Field(0, ge=0)


class RegistryCfg(_Frozen):
    """What promotion and sweeps compare: ``primary_metric`` on the ``selection`` split.

    ``selection: val`` (the default) chooses on the held-out training identities (``data.val_ids``);
    ``selection: test`` reproduces the paper's Table 4 practice of choosing on the test split, and
    every run made so is tagged ``anet.selection=test``.
    """

    primary_metric: str = "eval/val/mAP"
    promotion_margin: float = Field(0.0, ge=0.0)
    selection: Literal["val", "test"] = "val"


METRIC_NAMES = ("mAP", "R1", "R5", "R10", "mINP")
TEST_SETS: dict[str, tuple[str, ...]] = {
    "synthetic": ("test",), "veri776": ("test",), "veriwild": ("small", "medium", "large"),
    "vehicleid": ("800", "1600", "2400"),
}


class ExperimentConfig(_Frozen):
    """The whole experiment. Load with :func:`load_config`."""

    name: str = "anet"
    data: DataCfg = DataCfg()
    augment: AugmentCfg = AugmentCfg()
    model: ModelCfg = ModelCfg()
    loss: LossCfg = LossCfg()
    stage_one: StageCfg = StageCfg(name="stage_one", epochs=150, milestones=(60, 120))
    stage_two: StageCfg = StageCfg(
        name="stage_two", epochs=60, lr=6e-7, freeze_f=True, amelioration=True
    )
    eval: EvalCfg = EvalCfg()
    runtime: RuntimeCfg = RuntimeCfg()
    registry: RegistryCfg = RegistryCfg()

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        _check_feature(self.model.variant, self.eval.feature)
        _check_selection(self)
        return self

    def to_json(self) -> str:
        """Serialise to the JSON string that pipeline parameters and MLflow params carry."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        """Inverse of :meth:`to_json`; validates again."""
        return _validate(json.loads(text), source="<json>")

    def digest(self) -> str:
        """Short stable hash of the resolved config (checkpoints record it)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _check_feature(variant: str, feature: str) -> None:
    """A variant must have the feature it is evaluated on: no silent fallback to another one."""
    has = {"baseline": ("f",), "van": ("f", "fa"), "anet": ("f", "fa", "j"), "anet_att": ("f", "fa", "j")}[variant]
    if feature not in has:
        raise ValueError(f"eval.feature={feature!r} does not exist for model.variant={variant!r} "
                         f"(it has {', '.join(has)})")


def _check_selection(cfg: ExperimentConfig) -> None:
    """``registry.primary_metric`` must be a metric the evaluator produces, on the selection split."""
    parts = cfg.registry.primary_metric.split("/")
    sets = TEST_SETS[cfg.data.dataset]
    if len(parts) != 3 or parts[0] != "eval" or parts[2] not in METRIC_NAMES or parts[1] not in (*sets, "val"):
        raise ValueError(f"registry.primary_metric={cfg.registry.primary_metric!r} is not produced for "
                         f"{cfg.data.dataset}: use eval/<{'|'.join(('val', *sets))}>/<{'|'.join(METRIC_NAMES)}>")
    if cfg.registry.selection == "val":
        if parts[1] != "val":
            raise ValueError(f"registry.primary_metric={cfg.registry.primary_metric!r} reads a test split; model "
                             "selection reads eval/val/... (or set registry.selection=test, the paper's practice)")
        if cfg.data.val_ids < 1:
            raise ValueError("registry.selection=val needs data.val_ids > 0 (training identities held out)")
    elif parts[1] == "val":
        raise ValueError("registry.selection=test with a eval/val/... primary metric: pick one")


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
    return _validate(raw, source=str(path), origins=origins)


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
            raise ConfigError(_unknown_key_message(prefix, part, list(fields)))
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _unknown_key_message(prefix: str, key: str, valid: list[str]) -> str:
    full = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
    return f"unknown config key {full!r}{hint} (valid here: {', '.join(valid)})"


def _validate(raw: dict[str, Any], source: str,
              origins: Mapping[str, tuple[str, Any]] | None = None) -> ExperimentConfig:
    """Validate; ``origins`` maps each key set on top of the profile ``source`` to (where, value)."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, origins or {})) from None


def _format_errors(exc: ValidationError, source: str, origins: Mapping[str, tuple[str, Any]]) -> str:
    """One line; each problem names where its value came from: ``key=value (command line)`` or the file."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            lines.append(f"{source}: {_unknown_key_message('.'.join(loc[:-1]), loc[-1], list(model.model_fields))}")
        elif not loc:  # a check across sections (model_validator): its message names the keys
            keys = [key for key in origins if key in msg]
            lines.append(f"{msg} ({', '.join(f'{k}={origins[k][1]}, {origins[k][0]}' for k in keys)})" if keys
                         else f"{source}{' + ' + ', '.join(sorted(origins)) if origins else ''}: {msg}")
        else:
            lines.append(_located(loc, msg, err.get("input"), source, origins))
    return "; ".join(lines)


def _located(loc: list[str], msg: str, value: Any, source: str, origins: Mapping[str, tuple[str, Any]]) -> str:
    """``stage_one.lr=inf (command line): ...`` when a key set on top of the profile holds the bad value,
    else ``configs/x.yaml: stage_one.lr: ... (got inf)``."""
    dotted = ".".join(loc)
    keys = sorted((k for k in origins if k == dotted or k.startswith(dotted + ".") or dotted.startswith(k + ".")),
                  key=lambda k: k != dotted)
    if not keys:
        return f"{source}: {dotted}: {msg} (got {value!r})"
    where, given = origins[keys[0]]
    return f"{keys[0]}={given} ({where}): {msg}"


def _model_at(path: list[str]) -> type[BaseModel]:
    model: type[BaseModel] = ExperimentConfig
    for part in path:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return model
