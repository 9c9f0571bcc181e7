"""ZipAR (He et al., ICML 2025) for LlamaGen: next-set decoding across the rows of the token grid.

Images are spatially local, so a token needs the row above only near its own column. Row 0 is decoded
token by token; row 1 starts when row 0 is complete, and every later row r + 1 starts once row r holds
``window`` tokens. Each forward pass then feeds the newest token of every row in flight (at its raster
position, in raster order, so a lower row sees the upper rows' tokens) and samples one token per row: about
``2G + (G - 2) w`` passes instead of G^2 (144 instead of 256 on 16x16, 224 instead of 576 on 24x24 at w = 8).
Starting row r + 1 needs an input at (r, G - 1), which does not exist yet: the newest token of row r - 1 is
fed there as a stand-in, and the real token replaces it (re-fed, logits unused) once row r is complete. When
row r is already complete its real last token is fed instead, so with ``window`` >= G this is raster
next-token decoding, token for token.

Attention: a query sees the written positions before its own. The official code keeps a zero-filled static
cache and lets queries also attend to positions not generated yet (zero keys and values, each adding
exp(0) to the softmax denominator); ``attend_unwritten: true`` reproduces that. The default masks them:
a slot that holds nothing is not context, and the result then does not depend on how the cache was
allocated. Sampling is ar's (temperature, top-k, top-p, CFG per token, ``cfg_interval`` by token index);
with ``rng=per_sample`` token i of an image uses the i-th uniform of its own seed, as ar does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lazygen.cache.base import CausalPolicy, NoCache, StepContext
from lazygen.errors import advise, require
from lazygen.registry import register
from lazygen.samplers.ar import ARSampler, ARSamplerConf, check_ar, guided_token
from lazygen.samplers.sjd import check_parallel_cache


@dataclass
class ZipARSamplerConf(ARSamplerConf):
    """``sampler=zipar``: ar's sampling settings plus the row window."""

    name: str = "zipar"
    window: int = 8  # row r + 1 starts once row r holds this many tokens (official default 8)
    attend_unwritten: bool = False  # true: queries also see not-yet-generated slots (the official cache)

    def baseline(self, num_iter: int) -> ARSamplerConf:
        """Raster next-token decoding with the same sampling settings."""
        return ARSamplerConf(num_iter=num_iter, cfg=self.cfg, cfg_interval=self.cfg_interval,
                             temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                             rng=self.rng)  # fmt: skip


def check_zipar(s: ZipARSamplerConf, run) -> None:
    check_ar(s, run)
    grid = run.model.arch.grid_size
    require(s.window >= 1, f"sampler.window={s.window} must be at least 1 token of the row above.")
    if s.window >= grid:
        advise(f"sampler.window={s.window} is at least model={run.model.name}'s grid width {grid}: every row then "
               f"waits for the whole row above, which is raster next-token decoding (sampler=ar). Set it below "
               f"{grid} (the official default is 8).")  # fmt: skip
    if s.attend_unwritten and run.cache.name == "adsa":
        advise("sampler.attend_unwritten=true has no effect with cache=adsa: the bounded cache holds only "
               "written tokens. Leave it false.")  # fmt: skip
    check_parallel_cache(run, "zipar")


def zipar_passes(grid: int, window: int) -> int:
    """Forward passes of one generation (prefill included): G^2 for window >= G, else 2G + (G - 2) w."""
    return grid * grid if window >= grid else 2 * grid + (grid - 2) * window


@register("sampler", "zipar", schema=ZipARSamplerConf, families=("llamagen",), check=check_zipar)
class ZipARSampler(ARSampler):
    name = "zipar"

    @torch.no_grad()
    def sample(
        self,
        model,
        labels: torch.Tensor,
        seeds: Sequence[int] | None = None,
        policy: CausalPolicy | None = None,
    ) -> torch.Tensor:
        """Token ids (B, L) in raster order, on the CPU."""
        c = self.conf
        policy = policy or NoCache()
        batch, length, grid = labels.shape[0], model.num_image_tokens, model.arch.grid_size
        start_after = min(c.window, grid)  # tokens row r needs before row r + 1 starts
        seeds = list(seeds) if seeds is not None else list(range(batch))
        device = labels.device
        draws = self.draws(seeds, length, device)
        cfg_on = c.cfg != 1.0
        rows, caches = self.open_caches(model, labels, policy)
        for cache in caches:
            if hasattr(cache, "attend_unwritten"):
                cache.attend_unwritten = c.attend_unwritten
        host = device if device.type == "meta" else torch.device("cpu")
        tokens = torch.zeros(batch, length, dtype=torch.long, device=host)
        policy.stats.model_calls += 1
        tokens[:, :1] = draws.draw(self.probabilities(self.guided(model.prefill(rows, caches), True)), 0)
        done = [0] * grid  # tokens decoded per grid row
        done[0] = 1
        ongoing = [0]
        stand_in = set()  # rows whose last slot holds a stand-in until the row is complete
        refeed: list[int] = []  # complete rows whose real last token replaces the stand-in next pass
        step = 0
        while ongoing:
            feed: list[tuple[int, int]] = [(r * grid + grid - 1, -1) for r in refeed]  # (slot, row predicted)
            for r in ongoing:
                if done[r]:
                    feed.append((r * grid + done[r] - 1, r))
                else:  # the row's first token is predicted from the end of the row above
                    above = r - 1
                    slot = above * grid + grid - 1
                    if done[above] < grid:  # not there yet: the newest token of the row before stands in
                        stand_in.add(above)
                        source = (above - 1) * grid + done[above - 1] - 1
                        feed.append((slot, r))
                        tokens[:, slot] = tokens[:, source]  # provisional; overwritten when sampled
                    else:
                        feed = [f for f in feed if f[0] != slot]  # the real token is fed for the row anyway
                        feed.append((slot, r))
            feed.sort()
            slots = torch.tensor([f[0] for f in feed])
            fed = tokens[:, slots].to(device)
            ctx = StepContext(step, length, None, slots, cfg_on)
            policy.stats.model_calls += 1
            logits = policy.decode_many(model, torch.cat([fed, fed]) if cfg_on else fed,
                                        model.cls_token_num + slots, caches, ctx)  # fmt: skip
            refeed = []
            for column, (_, r) in enumerate(feed):
                if r < 0:
                    continue
                index = r * grid + done[r]
                guide = torch.tensor([guided_token(index, c.cfg_interval)])
                probs = self.probabilities(self.guided_positions(logits[:, column : column + 1], guide)[:, 0])
                tokens[:, index : index + 1] = draws.draw(probs, index).to(host)
                done[r] += 1
            for r in list(ongoing):
                if done[r] == grid:
                    ongoing.remove(r)
                    if r in stand_in:
                        refeed.append(r)
            for r in range(grid - 1):
                started = r + 1 in ongoing or done[r + 1] > 0
                ready = done[r] == grid if r == 0 else done[r] >= start_after
                if ready and not started:
                    ongoing.append(r + 1)
            ongoing.sort()
            step += 1
        return tokens
