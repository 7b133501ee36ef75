"""Config schemas: every option file in ``vlmqc/conf/`` inherits one of these dataclasses.

Hydra checks key names and types when it composes the config, so ``data.defect_rat=0.3`` or
``data.defect_types=[scratch]`` fails with a message naming the key. Ranges and cross-field rules
of one group live in its schema's ``__post_init__`` (one module a group: data, prompt, model,
trainer, apps); what spans groups or looks at the file system or the model families is checked
once, at the door, by ``vlmqc.preflight.validate``.
"""

from vlmqc.config.apps import (
    CONF_DIR,
    NON_COMPUTING_KEYS,
    ContactSheetConfig,
    DataAppConfig,
    LoggerConfig,
    PathsConfig,
    PreviewAppConfig,
    TrainAppConfig,
    data_config,
    register,
    run_name_of,
    to_object,
)
from vlmqc.config.checks import SEED_MAX, ConfigError, IntRange
from vlmqc.config.data import (
    DATA_SCHEMAS,
    CustomConfig,
    DataConfig,
    DiffConfig,
    DiffImageConfig,
    DiffMode,
    Layout,
    NuisanceConfig,
    PairConfig,
    RenderConfig,
    StarConfig,
    SynthConfig,
)
from vlmqc.config.model import (
    ImageSizeConfig,
    LoraConfig,
    LoraTarget,
    ModelConfig,
    Qwen2VLModelConfig,
    Qwen2VLTextShape,
    Qwen2VLVisionShape,
    TinyModelConfig,
)
from vlmqc.config.prompt import AnswerFormat, PromptConfig
from vlmqc.config.trainer import (
    COMPILE_MODES,
    LossMode,
    PixelStorage,
    Precision,
    Preprocess,
    TrainerConfig,
    VisionCache,
)

__all__ = [
    "COMPILE_MODES",
    "CONF_DIR",
    "DATA_SCHEMAS",
    "NON_COMPUTING_KEYS",
    "SEED_MAX",
    "AnswerFormat",
    "ConfigError",
    "ContactSheetConfig",
    "CustomConfig",
    "DataAppConfig",
    "DataConfig",
    "DiffConfig",
    "DiffImageConfig",
    "DiffMode",
    "ImageSizeConfig",
    "IntRange",
    "Layout",
    "LoggerConfig",
    "LoraConfig",
    "LoraTarget",
    "LossMode",
    "ModelConfig",
    "NuisanceConfig",
    "PairConfig",
    "PathsConfig",
    "PixelStorage",
    "Precision",
    "Preprocess",
    "PreviewAppConfig",
    "PromptConfig",
    "Qwen2VLModelConfig",
    "Qwen2VLTextShape",
    "Qwen2VLVisionShape",
    "RenderConfig",
    "StarConfig",
    "SynthConfig",
    "TinyModelConfig",
    "TrainAppConfig",
    "TrainerConfig",
    "VisionCache",
    "data_config",
    "register",
    "run_name_of",
    "to_object",
]
