"""The experiment config's schema: frozen sections, range checks and the checks across sections."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from anet.config.validation import validate

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs"

DatasetName = Literal["synthetic", "veri776", "veriwild", "vehicleid"]
Feature = Literal["f", "fa", "j"]


class _Frozen(BaseModel):
    # allow_inf_nan=False: Field(gt=0) alone lets lr=inf through (and the first step turns it into NaN)
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)


class SyntheticCfg(_Frozen):
    """Knobs of the built-in procedural vehicle dataset (anet.synthetic.generator)."""

    train_ids: int = Field(120, ge=2)
    test_ids: int = Field(60, ge=2)
    images_per_id: int = Field(12, ge=2)
    cameras: int = Field(6, ge=2)
    render_size: int = Field(96, ge=32, le=1024)  # pixels of the rendered square (data.image_size: the model's input)
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
    # kind=fastreid: FastReID's transforms (anet.data.fastreid_augment): AutoAugment with probability
    # autoaug_p, black padding by pad px + random crop, flip_p, colour jitter with probability cj_p
    # (brightness, contrast, saturation, hue), erase_p / erase_area; zoom is not part of it (zoom_p must be 0)
    kind: Literal["anet", "fastreid"] = "anet"
    autoaug_p: float = Field(0.0, ge=0.0, le=1.0)
    pad: int = Field(0, ge=0)
    cj_p: float = Field(0.0, ge=0.0, le=1.0)
    cj: tuple[float, float, float, float] = (0.15, 0.15, 0.1, 0.1)

    @model_validator(mode="after")
    def _kind_options(self) -> AugmentCfg:
        if self.kind == "anet" and (self.autoaug_p or self.pad or self.cj_p):
            raise ValueError("autoaug_p, pad and cj_p are FastReID's transforms: set augment.kind=fastreid")
        if self.kind == "fastreid" and self.zoom_p:
            raise ValueError("augment.kind=fastreid has no random zoom: set augment.zoom_p=0")
        return self


class HeadCfg(_Frozen):
    """The f and j heads: ANet's (GAP -> FC -> BNNeck -> linear) or FastReID's EmbeddingHead
    (anet.model.fastreid_blocks.FastReIDHead: pool -> [1x1 conv to embedding_dim] -> BNNeck -> classifier)."""

    kind: Literal["anet", "fastreid"] = "anet"
    pool: Literal["avg", "gem", "gemp"] = "avg"  # POOL_LAYER: GlobalAvgPool / GeneralizedMeanPooling(P)
    cls_layer: Literal["linear", "circle"] = "linear"  # CLS_LAYER: Linear / CircleSoftmax
    scale: float = Field(1.0, gt=0.0)  # SCALE
    margin: float = Field(0.0, ge=0.0)  # MARGIN
    neck_feat: Literal["before", "after"] = "before"  # NECK_FEAT: the triplet's input
    embedding_dim: int = Field(0, ge=0)  # EMBEDDING_DIM (0: none; s_f / s_j are ANet's head sizes)

    @model_validator(mode="after")
    def _fastreid_only(self) -> HeadCfg:
        changed = [n for n, f in type(self).model_fields.items() if n != "kind" and getattr(self, n) != f.default]
        if self.kind == "anet" and changed:
            raise ValueError("pool, cls_layer, scale, margin, neck_feat, embedding_dim belong to FastReID's head: "
                             "set model.head.kind=fastreid")
        return self


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
    pretrained: str | None = None  # http(s):// URL, s3:// object or local path (anet.mlops.storage.pretrained); none = scratch
    # full sha256 the weights file must have; only to accept a file other than the pinned release
    # (anet.mlops.storage.pretrained.PINNED_SHA256), e.g. a re-exported copy; none = the pinned/name check
    pretrained_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    non_local: bool = False  # FastReID's non-local blocks (R50: after the last 2 of layer2, last 3 of layer3)
    maxpool: Literal["pad", "ceil"] = "pad"  # stem pooling: IBN-Net's (padding 1) or FastReID's (ceil mode)
    head: HeadCfg = HeadCfg()

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
    # form=fastreid: FastReID's CE smoothing and triplet (anet.losses.fastreid): triplet_margin 0 = soft
    # margin, hard mining or softmax-weighted mining, Euclidean or (norm_feat) cosine distances
    form: Literal["anet", "fastreid"] = "anet"
    triplet_hard_mining: bool = True
    triplet_norm_feat: bool = False


class SolverCfg(_Frozen):
    """kind=fastreid: FastReID's solver (anet.train.solver) with the stage's lr (BASE_LR), epochs
    (MAX_EPOCH), weight_decay, milestones (STEPS) and gamma; kind=anet: Adam/AMSGrad + warmup_epochs."""

    kind: Literal["anet", "fastreid"] = "anet"
    optimizer: Literal["sgd", "adam"] = "adam"  # OPT
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # MOMENTUM (sgd)
    sched: Literal["multistep", "cosine"] = "multistep"  # SCHED
    warmup_iters: int = Field(0, ge=0)  # WARMUP_ITERS
    warmup_factor: float = Field(0.1, gt=0.0, le=1.0)  # WARMUP_FACTOR
    delay_epochs: int = Field(0, ge=0)  # DELAY_EPOCHS (cosine)
    eta_min: float = Field(1e-7, ge=0.0)  # ETA_MIN_LR (cosine)
    freeze_iters: int = Field(0, ge=0)  # FREEZE_ITERS with FREEZE_LAYERS [backbone]
    bias_lr_factor: float = Field(1.0, gt=0.0)  # BIAS_LR_FACTOR
    weight_decay_norm: float | None = Field(None, ge=0.0)  # WEIGHT_DECAY_NORM (none: the stage's weight_decay)
    weight_decay_bias: float | None = Field(None, ge=0.0)  # WEIGHT_DECAY_BIAS (none: the stage's weight_decay)


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
    solver: SolverCfg = SolverCfg()

    @model_validator(mode="after")
    def _milestones_sorted(self) -> StageCfg:
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {list(self.milestones)}")
        return self

    @model_validator(mode="after")
    def _fastreid_solver(self) -> StageCfg:
        if self.solver.kind == "fastreid" and (self.warmup_epochs or self.amsgrad):
            raise ValueError("solver.kind=fastreid warms up by solver.warmup_iters and its Adam has no AMSGrad: "
                             "set warmup_epochs=0 and amsgrad=false")
        return self


class RerankCfg(_Frozen):
    """k-reciprocal re-ranking (Zhong et al. 2017) scored beside the plain metrics (``eval/<set>/rerank/*``).

    Defaults are the paper's (and FastReID's) k1 = 20, k2 = 6, lambda = 0.3; ``lambda_value`` keeps
    FastReID's argument name (``lambda`` is a Python keyword).
    """

    enabled: bool = False
    k1: int = Field(20, ge=1)
    k2: int = Field(6, ge=1)
    lambda_value: float = Field(0.3, ge=0.0, le=1.0)


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
    rerank: RerankCfg = RerankCfg()


class RuntimeCfg(_Frozen):
    """How and where to run; none of this changes the maths."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: fp32 or bf16, whichever steps faster on this machine, timed at the start of each stage
    # (anet.train.precision); evaluation under auto runs in fp32
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "bf16"
    channels_last: bool = True
    deterministic: bool = False
    num_threads: int = Field(0, ge=0)
    # SyncBatchNorm under DDP on CUDA (wrap_ddp): BN statistics over the global batch, not each rank's share
    sync_bn: bool = False


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
        if self.model.variant in ("baseline", "van") and self.stage_two.epochs and self.stage_two.amelioration:
            raise ValueError(f"stage_two.amelioration (AC) trains the joint module, which model.variant="
                             f"{self.model.variant!r} does not have: set stage_two.epochs=0 or "
                             "stage_two.amelioration=false")
        if self.model.head.cls_layer == "circle" and self.loss.form != "fastreid":
            raise ValueError("model.head.cls_layer=circle gives cosine logits that only loss.form=fastreid "
                             "turns into CircleSoftmax logits: set loss.form=fastreid")
        _check_selection(self)
        return self

    def to_json(self) -> str:
        """Serialise to the JSON string that pipeline parameters and MLflow params carry."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        """Inverse of :meth:`to_json`; validates again."""
        return validate(cls, json.loads(text), source="<json>")

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
    if len(parts) == 4 and parts[2] == "rerank" and cfg.eval.rerank.enabled:  # a profile may select on it
        parts = [parts[0], parts[1], parts[3]]
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


