"""LlamaGen network family: the class-conditional GPT and its VQ-16 tokenizer."""

from lazygen.models.llamagen.gpt import (
    LLAMAGEN_PRESETS,
    DenseKV,
    LayerKV,
    LlamaGen,
    LlamaGenArch,
    read_gpt_checkpoint,
)
from lazygen.models.llamagen.vq import VQArch, VQModel, read_vq_checkpoint

__all__ = [
    "LLAMAGEN_PRESETS",
    "DenseKV",
    "LayerKV",
    "LlamaGen",
    "LlamaGenArch",
    "VQArch",
    "VQModel",
    "read_gpt_checkpoint",
    "read_vq_checkpoint",
]
