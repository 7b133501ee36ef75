"""Phi3VConfig of the tiny remote-code Phi-3-vision: LLaVA's config under Phi's model type."""

from transformers import LlavaConfig


class Phi3VConfig(LlavaConfig):
    model_type = "phi3_v"
