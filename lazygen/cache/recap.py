"""ReCAP as a cache policy: context features of one full step reused by the cheap steps that follow it.

ReCAP (Liu et al., NeurIPS 2025; liebenxj/ReCAP) groups MAR's steps once ``pre_full_iters`` plain steps
are done: a *full* step runs the whole transformer and keeps every block's keys/values; the
``num_cache_iters`` *cheap* steps after it run only the group's tokens (the union of the positions the
group's steps predict) through the encoder and decoder, attending to the full step's keys/values of every
other position. The group is split among its steps by ascending position index (each step keeps its
token count), so the policy re-plans the sampler's steps (``plan``). Cheap steps sample their tokens with
a shorter diffusion chain (``fast_ratio`` of the step's steps).

What the official code caches, and this policy therefore too (reference/recap.md §3):

* encoder: the keys/values of the tokens known before the group (and of the 64 buffer rows when
  ``cache_buffer``; otherwise the buffer is recomputed as queries every cheap step); queries are the
  group tokens sampled at the group's earlier steps.
* decoder: the keys/values of *every* position outside the group, including positions still masked after
  it (their mask-token features from the full step); queries are all group positions.

CFG rows keep their own half's cache (no condition cache); the sampler's schedule, CFG ramp, temperature
and random streams are untouched. Where the official scripts and code differ, the defaults follow what
the code runs: the cheap chain has half the steps (the scripts ask 0.4, the code builds 0.5), and the
buffer is recomputed (the MAR scripts set no ``--cache_buffer``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lazygen.cache.base import MARPolicy, StepContext
from lazygen.diffusion import SpacedDiffusion
from lazygen.diffusion.gaussian import MIN_SAMPLING_STEPS
from lazygen.errors import advise, require
from lazygen.registry import register


@dataclass
class ReCAPConf:
    """``cache=recap``: the official settings as keys."""

    name: str = "recap"
    num_cache_iters: int = 1  # K: cheap steps after each full step (official: 1 in every run)
    pre_full_iters: int | None = None  # plain steps before grouping starts; null = half of num_iter (scripts)
    cache_buffer: bool = False  # keep the buffer's keys/values too (official function default: true)
    fast_ratio: float = 0.5  # cheap steps' chain: int(steps * fast_ratio) (what the official runs use)

    @property
    def tag(self) -> str:
        pre = "half" if self.pre_full_iters is None else self.pre_full_iters
        return f"recap-K{self.num_cache_iters}p{pre}" + ("-buf" if self.cache_buffer else "")


def check_recap(conf: ReCAPConf, run) -> None:
    """Range checks against the run's sampler; a setting that caches nothing is a warning."""
    steps = run.sampler.num_iter
    require(conf.num_cache_iters >= 1,
            f"cache.num_cache_iters={conf.num_cache_iters} must be at least 1 (cheap steps after each full "
            "step; official: 1). For no reuse at all use cache=none.")  # fmt: skip
    require(conf.pre_full_iters is None or conf.pre_full_iters >= 0,
            f"cache.pre_full_iters={conf.pre_full_iters} must be >= 0, or null for half of sampler.num_iter.")  # fmt: skip
    require(0.0 < conf.fast_ratio <= 1.0,
            f"cache.fast_ratio={conf.fast_ratio} must lie in (0, 1]: the share of a step's diffusion steps "
            "that its cheap steps run (official runs: 0.5).")  # fmt: skip
    pre = steps // 2 if conf.pre_full_iters is None else conf.pre_full_iters
    if pre >= steps - 1:
        advise(f"cache.pre_full_iters={pre} leaves no step to group in sampler.num_iter={steps} steps, so "
               f"ReCAP runs the baseline. Set cache.pre_full_iters below {steps - 1}.")  # fmt: skip


@register("cache", "recap", schema=ReCAPConf, families=("mar",), check=check_recap)
class ReCAPPolicy(MARPolicy):
    name = "recap"

    def __init__(self, conf: ReCAPConf) -> None:
        super().__init__(conf)
        self._fast: dict[tuple, SpacedDiffusion] = {}
        self.reset(0)

    def reset(self, batch_size: int) -> None:
        self.batch = batch_size
        self.cheap: list[bool] = []  # per step: served from the last full step's keys/values
        self.group_at: dict[int, torch.Tensor] = {}  # full step -> its group's positions (B, n), ascending
        self.sampled_at: dict[int, int] = {}  # cheap step -> group tokens sampled before it (a prefix)
        self.group: torch.Tensor | None = None
        self.enc_kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per encoder block (N, H, R, hd)
        self.dec_kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per decoder block, outside the group

    # ---- the plan ------------------------------------------------------------------------------------
    def plan(self, predicted: list[torch.Tensor], refresh: list[bool]) -> list[torch.Tensor]:
        """Group the steps after ``pre_full_iters`` by K + 1 (a refresh step starts a new group) and split
        each group among its steps by ascending position index."""
        steps, k = len(predicted), self.conf.num_cache_iters
        pre = steps // 2 if self.conf.pre_full_iters is None else self.conf.pre_full_iters
        out, self.cheap = list(predicted), [False] * steps
        self.group_at, self.sampled_at = {}, {}
        start = 0
        while start < steps:
            members = [start]
            while (start >= pre and len(members) <= k and start + len(members) < steps
                   and not refresh[start + len(members)]):  # fmt: skip
                members.append(start + len(members))
            if len(members) > 1:
                group = torch.cat([predicted[s] for s in members], dim=1).sort(dim=1).values
                sizes = [predicted[s].shape[1] for s in members]
                done = 0
                for s, part in zip(members, group.split(sizes, dim=1), strict=True):
                    out[s], self.sampled_at[s] = part, done
                    done += part.shape[1]
                for s in members[1:]:
                    self.cheap[s] = True
                self.group_at[start] = group
            start += len(members)
        return out

    def head_diffusion(self, diffusion: SpacedDiffusion, ctx: StepContext) -> SpacedDiffusion:
        if not self.cheap[ctx.step]:
            return diffusion
        steps = max(MIN_SAMPLING_STEPS, int(diffusion.num_timesteps * self.conf.fast_ratio))
        key = (steps, diffusion.x0_range, diffusion.max_timestep)
        if key not in self._fast:
            self._fast[key] = diffusion.with_steps(steps)
        return self._fast[key]

    # ---- transformer ---------------------------------------------------------------------------------
    def transformer(self, model, tokens: torch.Tensor, rows: torch.Tensor, cond: torch.Tensor,
                    ctx: StepContext) -> torch.Tensor:  # fmt: skip
        if self.cheap[ctx.step]:
            return self._cheap_step(model, tokens, rows, cond, ctx)
        if ctx.step not in self.group_at:
            return super().transformer(model, tokens, rows, cond, ctx)
        return self._full_step(model, tokens, rows, cond, ctx)

    def _full_step(self, model, tokens, rows, cond, ctx: StepContext) -> torch.Tensor:
        """Everything in full; keep the keys/values the group's cheap steps attend to."""
        self.stats.full_steps += 1
        n, length = tokens.shape[:2]
        buffer = model.buffer_size
        self.group = self.group_at[ctx.step].repeat(n // self.group_at[ctx.step].shape[0], 1)
        enc_from = 0 if self.conf.cache_buffer else buffer
        outside = self._outside(self.group, length, buffer)  # decoder rows the cheap steps reuse
        self.enc_kv, self.dec_kv = [], []

        def keep_enc(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.enc_kv.append((k[:, :, enc_from:], v[:, :, enc_from:]))
            return k, v

        def keep_dec(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            index = outside[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
            self.dec_kv.append((k.gather(2, index), v.gather(2, index)))
            return k, v

        count = self._counter(ctx, None)
        encoded = model.run_encoder(model.encoder_input(tokens, rows, cond), lambda j: {"kv": keep_enc},
                                    lambda j, x: count("encoder", j, x))  # fmt: skip
        x = model.run_decoder(model.decoder_input(encoded, rows), lambda j: {"kv": keep_dec},
                              lambda j, x: count("decoder", j, x))  # fmt: skip
        return model.decoder_output(x)

    def _outside(self, group: torch.Tensor, length: int, buffer: int) -> torch.Tensor:
        """Decoder sequence slots (N, ·) outside the group, ascending: the buffer's too when it is cached.
        (Stable argsort of the membership mask, so shapes stay static for meta-device FLOP counting.)"""
        n = group.shape[0]
        member = torch.zeros(n, length, dtype=torch.uint8, device=group.device).scatter(1, group, 1)
        slots = member.argsort(dim=1, stable=True)[:, : length - group.shape[1]] + buffer
        if not self.conf.cache_buffer:
            return slots
        return torch.cat([torch.arange(buffer, device=group.device).expand(n, -1), slots], dim=1)

    def _cheap_step(self, model, tokens, rows, cond, ctx: StepContext) -> torch.Tensor:
        """The group's tokens only: sampled ones through the encoder, every group position through the
        decoder, attending to the full step's keys/values after their own."""
        self.stats.reused_steps += 1
        n, length = tokens.shape[:2]
        buffer, group = model.buffer_size, self.group
        sampled = group[:, : self.sampled_at[ctx.step]]
        enc_rows = model.visible_rows(sampled)  # the buffer and the group tokens sampled so far
        if self.conf.cache_buffer:
            enc_rows = enc_rows[:, buffer:]
        count = self._counter(ctx, rows.shape[1])

        def reuse(cache: list) -> callable:
            def hooks(j: int) -> dict:
                def kv(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                    k_old, v_old = cache[j]
                    return torch.cat([k_old, k], dim=2), torch.cat([v_old, v], dim=2)

                return {"kv": kv}

            return hooks

        x = model.encoder_input(tokens, enc_rows, cond)
        encoded = model.run_encoder(x, reuse(self.enc_kv), lambda j, x: count("encoder", j, x))
        slots = group + buffer  # decoder queries: every group position, then the buffer when recomputed
        if not self.conf.cache_buffer:
            slots = torch.cat([slots, torch.arange(buffer, device=group.device).expand(n, -1)], dim=1)
        x = model.decoder_input(encoded, enc_rows)
        x = x.gather(1, slots.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = model.run_decoder(x, reuse(self.dec_kv), lambda j, x: count("decoder", j, x, buffer + length))
        z_group = model.decoder_output_at(x[:, : group.shape[1]], group)
        z = torch.zeros(n, length, z_group.shape[-1], dtype=z_group.dtype, device=z_group.device)
        return z.scatter(1, group.unsqueeze(-1).expand(-1, -1, z.shape[-1]), z_group)

    def _counter(self, ctx: StepContext, encoder_rows: int | None):
        """Counts a block's rows against the baseline's: the encoder's visible rows (``encoder_rows`` per
        image; the block's own rows on full steps) and the decoder's whole sequence."""

        def count(side: str, j: int, x: torch.Tensor, decoder_rows: int | None = None) -> None:
            done = x.shape[0] * x.shape[1]
            per_image = encoder_rows if side == "encoder" else decoder_rows
            total = done if per_image is None else x.shape[0] * per_image
            self.stats.count(f"{side}.{j}", ctx.step, done, total)

        return count
