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

from anet.config.resolve import (
    RUN_SETTING_KEYS,
    RunSettings,
    config_value,
    load_config,
    parse_overrides,
    profile_path,
    resolve_config,
)
from anet.config.schema import (
    CONFIG_DIR,
    METRIC_NAMES,
    TEST_SETS,
    AugmentCfg,
    DataCfg,
    DatasetName,
    EvalCfg,
    ExperimentConfig,
    Feature,
    LossCfg,
    ModelCfg,
    RegistryCfg,
    RuntimeCfg,
    StageCfg,
    SyntheticCfg,
)
from anet.config.validation import ConfigError

__all__ = ["CONFIG_DIR", "METRIC_NAMES", "RUN_SETTING_KEYS", "TEST_SETS", "AugmentCfg", "ConfigError", "DataCfg",
           "DatasetName", "EvalCfg", "ExperimentConfig", "Feature", "LossCfg", "ModelCfg", "RegistryCfg",
           "RunSettings", "RuntimeCfg", "StageCfg", "SyntheticCfg", "config_value", "load_config", "parse_overrides",
           "profile_path", "resolve_config"]
