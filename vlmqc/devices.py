"""Which device a run uses and in which precision: one answer for training, evaluation, preview
and the inspector, so that ``auto`` means the same everywhere."""

from __future__ import annotations

import torch

from vlmqc.config import ConfigError, Precision


def pick_device(name: str) -> str:
    """``auto`` (the GPU when there is one), ``cpu``, or ``cuda`` (refused when none is visible)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r}: no CUDA device is visible")
    return name


def resolve_precision(precision: Precision | str, device: str) -> Precision:
    """``auto``: bf16 on a GPU that has it, else fp32 (the CPU, an older GPU)."""
    precision = Precision(precision)
    if precision is not Precision.auto:
        return precision
    return (
        Precision.bf16
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        else Precision.fp32
    )


DTYPES = {Precision.fp32: torch.float32, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}
