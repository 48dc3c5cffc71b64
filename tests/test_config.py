"""The typed config: profiles load, overrides apply, mistakes read well, JSON round-trips."""

import pytest
from pydantic import ValidationError

from anet.config import CONFIG_DIR, ConfigError, ExperimentConfig, load_config


@pytest.mark.parametrize("profile", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_profile_loads_and_round_trips(profile):
    cfg = load_config(profile)
    assert ExperimentConfig.from_json(cfg.to_json()) == cfg
    assert cfg.digest() == ExperimentConfig.from_json(cfg.to_json()).digest()


def test_required_profiles_exist():
    names = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert {"smoke", "synthetic", "veri776", "veriwild", "vehicleid"} <= names


def test_paper_settings_in_benchmark_profiles():
    cfg = load_config("veri776")
    assert cfg.model.depth == 50 and cfg.model.ibn and cfg.model.last_stride == 1
    assert cfg.data.image_size == (256, 256) and (cfg.data.p_ids, cfg.data.k_imgs) == (128, 4)
    assert cfg.stage_one.epochs + cfg.stage_two.epochs == 210
    assert cfg.stage_one.lr == pytest.approx(6e-4) and cfg.stage_one.amsgrad
    assert cfg.stage_two.freeze_f and cfg.stage_two.amelioration and not cfg.stage_one.amelioration
    assert (cfg.model.s_a, cfg.model.s_f, cfg.model.s_j) == (128, 512, 512)
    assert load_config("veriwild").registry.primary_metric == "eval/val/mAP"
    assert load_config("vehicleid").registry.primary_metric == "eval/val/R1"


def test_model_selection_reads_the_validation_split_unless_told_otherwise():
    with pytest.raises(ConfigError, match="reads a test split"):
        load_config("veri776", ["registry.primary_metric=eval/test/mAP"])
    with pytest.raises(ConfigError, match="data.val_ids > 0"):
        load_config("veri776", ["data.val_ids=0"])
    with pytest.raises(ConfigError, match="not produced for veriwild"):
        load_config("veriwild", ["registry.primary_metric=eval/val/mAp"])
    paper = load_config("veriwild", ["registry.selection=test", "registry.primary_metric=eval/small/mAP"])
    assert paper.registry.selection == "test"


def test_a_variant_is_never_evaluated_on_a_feature_it_lacks():
    with pytest.raises(ConfigError, match="eval.feature='j' does not exist for model.variant='van'"):
        load_config("smoke", ["model.variant=van", "eval.feature=j"])  # given explicitly: refused, not replaced
    assert load_config("smoke", ["model.variant=van", "eval.feature=fa"]).eval.feature == "fa"


def test_a_model_without_the_joint_module_implies_no_stage_two_and_f():
    plain = load_config("smoke", ["model.variant=baseline"])
    assert (plain.eval.feature, plain.stage_two.epochs, plain.stage_two.amelioration, plain.stage_two.freeze_f) == \
        ("f", 0, False, False)
    assert load_config("smoke", ["model.variant=van"]).eval.feature == "f"
    assert load_config("smoke").stage_two.epochs > 0  # ANet keeps its stage two
    with pytest.raises(ConfigError, match="stage_two.amelioration \\(AC\\) trains the joint module"):
        load_config("smoke", ["model.variant=baseline", "stage_two.epochs=2", "stage_two.amelioration=true"])


def test_dotted_overrides_parse_values():
    cfg = load_config("smoke", ["loss.lambda_a=0.25", "model.variant=van", "eval.feature=fa", "data.image_size=[64, 48]"])
    assert cfg.loss.lambda_a == 0.25
    assert cfg.model.variant == "van"
    assert cfg.data.image_size == (64, 48)


def test_config_is_frozen():
    cfg = load_config("smoke")
    with pytest.raises(ValidationError):
        cfg.loss.lambda_a = 3.0  # type: ignore[misc]


def test_unknown_key_names_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.lamda_a'; did you mean 'loss.lambda_a'"):
        load_config("smoke", ["loss.lamda_a=1"])
    with pytest.raises(ConfigError, match=r"'stage_tow'.*did you mean 'stage_two'"):
        load_config("smoke", ["stage_tow.epochs=1"])


def test_unknown_key_in_yaml_file_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  depht: 50\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert str(path) in message and "model.depht" in message and "model.depth" in message


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("loss.lambda_g=-1", "loss.lambda_g"),
        ("loss.label_smoothing=1.0", "loss.label_smoothing"),
        ("model.depth=42", "model.depth"),
        ("stage_one.milestones=[9, 3]", "milestones must be increasing"),
    ],
)
def test_values_are_range_checked(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config("smoke", [override])


def test_malformed_override_and_missing_profile():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("smoke", ["loss.lambda_a"])
    with pytest.raises(ConfigError, match="no such config profile"):
        load_config("does-not-exist")


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  depth: [50\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        load_config(str(path))


def test_cli_prints_one_line_for_a_config_mistake(capsys):
    from anet.cli import main

    assert main(["train", "--config", "smoke", "loss.lamda_a=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown config key 'loss.lamda_a'; did you mean 'loss.lambda_a'? "
                   "(valid here: label_smoothing, triplet_margin, soft_margin, lambda_a, lambda_g, lambda_van, "
                   "form, triplet_hard_mining, triplet_norm_feat)"]


def test_dotted_keys_work_at_any_depth():
    """Overrides, run settings and reading back share one dotted-key walk, three levels deep as well."""
    from anet.config import RUN_SETTING_KEYS, RunSettings, config_value, resolve_config

    cfg = resolve_config("smoke", {"data.synthetic.seed": 11}, RunSettings(eval_every=2))
    assert config_value(cfg, "data.synthetic.seed") == cfg.data.synthetic.seed == 11
    assert [config_value(cfg, k) for k in RUN_SETTING_KEYS["eval_every"]] == [2, 2]
    with pytest.raises(ConfigError, match="data.synthetic.sed"):
        resolve_config("smoke", {"data.synthetic.sed": 1})


def test_render_size_and_image_size_are_two_names():
    """data.synthetic.render_size is the renderer's square; data.image_size is what the model is fed."""
    cfg = load_config("synthetic")
    assert (cfg.data.synthetic.render_size, cfg.data.image_size) == (128, (64, 64))
    with pytest.raises(ConfigError, match="render_size"):
        load_config("synthetic", ["data.synthetic.image_size=96"])
