"""Phi3VForCausalLM of the tiny remote-code Phi-3-vision: a LLaVA, loaded through AutoModelForCausalLM."""

from transformers import LlavaForConditionalGeneration

from .configuration_phi3_v import Phi3VConfig


class Phi3VForCausalLM(LlavaForConditionalGeneration):
    config_class = Phi3VConfig
