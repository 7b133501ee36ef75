"""The remote code of the tiny Phi-3-vision model (``vlmqc/models/phi3_v.py`` copies these files
next to its weights, and its ``config.json``'s ``auto_map`` points at them): thin subclasses of
LLaVA with Phi's model type, class names and numbered image placeholders. Loaded by transformers
with ``trust_remote_code=True``, never imported by vlmqc."""
