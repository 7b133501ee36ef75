"""What every family's tiny random model is built from, offline: the tokenizer, the shapes, the atomic build.

A family's builder trains ``tokenizer`` with its special tokens, sizes its text model and vision
tower with ``text_shape`` and ``vision_shape`` of ``model.tiny``, writes a checkpoint into the
folder ``built`` hands it, and keys that folder with ``key`` of what it is built from; nothing
here needs a network, a GPU or torchvision. ``save_processor`` writes a processor built without its
video half so that ``AutoProcessor`` assembles the whole one from it where torchvision is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import transformers

from vlmqc.files import publish
from vlmqc.labels import DEFECT_NAMES, POSITIONS

# What the tiny tokenizers are trained on: the words of instructions and answers, in English
# and Japanese. Any other text still encodes, byte by byte.
CORPUS = [
    "The image holds two images. Coordinates are printed: 1 to 9 across, U, C, D down.",
    "Compare the top and the bottom product position by position. The top product passed inspection.",
    "Does the bottom product pass, or is it defective? If defective, say where and what the defect is.",
    "The bottom product passed. The bottom product is defective: ",
    "Find the red star among the other marks and answer its coordinate. The red star is at ",
    "The image shows where a candidate differs from a passed reference.",
    '{"verdict": "pass"} {"verdict": "defective", "defects": [{"position": "C5", "type": "missing"}]} '
    '{"position": "U3"}',
    "上の製品は合格品です。下の製品は合格ですか、不良ですか。不良なら位置と不良の種類を答えてください。",
    "座標は横に1から9、縦にU、C、Dです。赤い星の位置を答えてください。"  # one corpus line: the key of every built model
    "合格 不良 端子欠落 端子ずれ 形状違い 端子焦げ 異物 端子変形",
    " ".join(POSITIONS),
    " ".join(DEFECT_NAMES.values()),
]


def key(spec: dict) -> str:
    """A built model's cache key: what it is built from, the library that builds it, the corpus."""
    spec = {**spec, "transformers": transformers.__version__, "corpus": CORPUS}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def built(final: Path, build: Callable[[Path], None]) -> Path:
    """``final``, built by ``build`` into a temporary folder and renamed into place, unless it is there."""
    publish(final, build, done=lambda path: (path / "config.json").exists())
    return final


@contextlib.contextmanager
def weightless():
    """Every family's ``build_random`` run without weights: the model is made on torch's meta
    device (shapes, no memory) and saving it writes its config.json and generation_config.json
    only, beside the processor files as usual. ``vlmqc.inspect`` needs the processor and the
    config's shapes, not weights: Qwen2-VL-2B's random model is 4.4 GB on disk otherwise.

    transformers has no "save the config of this model" mode, and the families build and save
    their models in their own ways (a tiny model's builder is the family's own), so the one
    method is swapped here, for the duration of the block, rather than in eleven builders."""
    import torch

    def save_config(self, save_directory, *args, **kwargs):
        self.config.save_pretrained(save_directory)
        if getattr(self, "generation_config", None) is not None:
            self.generation_config.save_pretrained(save_directory)

    original = transformers.PreTrainedModel.save_pretrained
    transformers.PreTrainedModel.save_pretrained = save_config
    try:
        with torch.device("meta"):
            yield
    finally:
        transformers.PreTrainedModel.save_pretrained = original


def random_model(cls, config, seed: int, tokenizer):
    """A tiny model of ``cls`` with random weights from ``seed``, generating with the tokenizer's
    pad and end tokens: what every family's ``build_random`` saves."""
    import torch

    torch.manual_seed(seed)
    built_model = cls(config)
    built_model.generation_config.pad_token_id = tokenizer.pad_token_id
    built_model.generation_config.eos_token_id = tokenizer.eos_token_id
    return built_model


# the layout save_processor writes, in the cache key of the models saved by it: a folder saved the
# earlier way (the image processor nested, a subclass's name) does not load where torchvision is
PROCESSOR_FILES = "published"


def save_processor(processor, path: Path, processor_class: str) -> None:
    """``processor`` (a subclass without the video processor, which transformers builds only with
    torchvision) in the files of a published checkpoint of ``processor_class``: its own keys and that
    class in processor_config.json, the image processor in preprocessor_config.json, the tokenizer and
    chat template. Where torchvision is installed, ``AutoProcessor`` then assembles ``processor_class``
    with its video processor built from preprocessor_config.json, as transformers does for a checkpoint
    without video_preprocessor_config.json; a subclass's name, or the image processor nested in
    processor_config.json (where the video processor is not looked for), would fail to load there."""
    processor.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    own = json.loads((path / "processor_config.json").read_text())
    own.pop("image_processor")
    (path / "processor_config.json").write_text(
        json.dumps({**own, "processor_class": processor_class}, indent=2, sort_keys=True) + "\n"
    )


def tokenizer(vocab_size: int, special_tokens: list[str], **kwargs):
    """A byte-level BPE trained on ``CORPUS``; ``kwargs`` name its special tokens' roles."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **kwargs)


def _shape(shape: dict, overrides: dict) -> dict:
    # an override of None leaves the key out: the config class's own default stands
    return {k: v for k, v in {**shape, **overrides}.items() if v is not None}


def text_shape(t, tokenizer=None, **overrides) -> dict:
    """The tiny language model's config keys from ``t`` (``model.tiny``): 16-wide heads, half as many
    key/value heads, a 4x MLP; with ``tokenizer``, its vocabulary size and pad/bos/eos ids.
    ``overrides`` add or replace keys; None drops one."""
    heads = max(1, t.text_hidden // 16)
    shape = {
        "hidden_size": t.text_hidden,
        "intermediate_size": 4 * t.text_hidden,
        "num_hidden_layers": t.text_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "max_position_embeddings": 4096,
        "initializer_range": t.init_std,
    }
    if tokenizer is not None:
        shape |= {
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
    return _shape(shape, overrides)


def vision_shape(t, **overrides) -> dict:
    """The tiny vision tower's config keys from ``t`` (``model.tiny``): 16-wide heads, a 4x MLP.
    ``overrides`` add or replace keys (image and patch size are the family's); None drops one."""
    shape = {
        "hidden_size": t.vision_hidden,
        "intermediate_size": 4 * t.vision_hidden,
        "num_hidden_layers": t.vision_layers,
        "num_attention_heads": max(1, t.vision_hidden // 16),
        "initializer_range": t.init_std,
    }
    return _shape(shape, overrides)
