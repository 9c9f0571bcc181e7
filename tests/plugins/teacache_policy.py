"""An out-of-tree cache policy, as a user would write it in their own module: TeaCache-like reuse.

It skips MAR's whole transformer (encoder and decoder) and reuses the last conditions while the input
tokens have changed, relative to the last full step, by less than ``threshold`` (mean absolute change over
mean absolute value, accumulated across skipped steps as TeaCache does). Selected with
``LAZYGEN_PLUGINS=teacache_policy python -m lazygen cache=teacache_test`` and no edit to lazygen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lazygen.cache.base import MARPolicy, StepContext
from lazygen.metrics.hints import flop_hints
from lazygen.registry import register


@dataclass
class TeaCacheConf:
    name: str = "teacache_test"
    threshold: float = 0.1  # accumulated relative input change below which the transformer is skipped


@register("cache", "teacache_test", schema=TeaCacheConf, families=("mar",))
@flop_hints(static_shapes=False)  # whether a step runs depends on the values: FLOPs are counted for real
class TeaCachePolicy(MARPolicy):
    name = "teacache_test"

    def __init__(self, conf: TeaCacheConf) -> None:
        super().__init__(conf)
        self.reset(0)

    def reset(self, batch_size: int) -> None:
        self._last_input: torch.Tensor | None = None
        self._last_z: torch.Tensor | None = None
        self._accumulated = 0.0

    def transformer(self, model, tokens, rows, cond, ctx: StepContext) -> torch.Tensor:
        if self._last_input is not None and self._last_input.shape == tokens.shape and not ctx.refresh:
            change = float(
                (tokens - self._last_input).abs().mean() / self._last_input.abs().mean().clamp_min(1e-8)
            )
            self._accumulated += change
            if self._accumulated < self.conf.threshold:
                self.stats.reused_steps += 1
                return self._last_z
        self._accumulated = 0.0
        z = super().transformer(model, tokens, rows, cond, ctx)
        self._last_input, self._last_z = tokens.clone(), z
        return z
