"""How a model compiles its hot parts for ``hardware.compile``.

Shapes are dynamic because row and token counts change from step to step; without that every step count
would compile anew. Inductor's default mode also *freezes* the weights: they become constants of the
graph, which lets it prepack them for oneDNN's matrix multiplies on CPU. That is for inference only, and a
part compiled this way keeps the weights it saw on its first call (load weights before generating).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def compile_part(fn: Callable, mode: str) -> Callable:
    """``fn`` compiled for ``mode`` (a ``torch.compile`` mode; ``default`` freezes the weights)."""
    if mode == "default":
        return torch.compile(fn, dynamic=True, options={"freezing": True})
    return torch.compile(fn, dynamic=True, mode=mode)
