"""MAR's baseline sampler: random order, cosine masking schedule, CFG on the diffusion head.

At step s the first ``mask_len(s)`` entries of each image's random order stay unknown and the tokens
between ``mask_len(s)`` and the previous count are predicted (all remaining ones at the last step). The
schedule is computed once in Python, so every tensor shape is static and known before sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lazygen.cache.base import MARPolicy, NoCache, StepContext
from lazygen.diffusion import SpacedDiffusion
from lazygen.errors import advise
from lazygen.registry import register
from lazygen.samplers.rng import RandomSource, make_random_source

CFG_SCHEDULES = ("linear", "constant")


def mask_schedule(seq_len: int, num_iter: int) -> list[int]:
    """Number of tokens still unknown after each step (MaskGIT cosine, clamped to [1, unknown - 1]).

    The last entry is 0: the final step predicts everything left, whatever the clamp said.
    """
    remaining, out = seq_len, []
    for step in range(num_iter):
        ratio = np.cos(math.pi / 2.0 * (step + 1) / num_iter)
        mask_len = int(np.float32(np.floor(seq_len * ratio)))
        mask_len = max(1, min(remaining - 1, mask_len))
        out.append(mask_len)
        remaining = mask_len
    out[-1] = 0
    return out


def linear_cfg(cfg: float, seq_len: int, mask_len: int) -> torch.Tensor:
    """Muse-style ramp 1 + (cfg - 1) * (L - mask_len) / L, in float32 as the official code computes it."""
    clamped = torch.tensor([float(max(mask_len, 1))], dtype=torch.float32)
    return 1 + (cfg - 1) * (seq_len - clamped) / seq_len


@dataclass
class MARSamplerConf:
    """MAR's sampler settings; also the ``sampler`` config group's schema (other samplers subclass it)."""

    name: str = "mar"  # the config option: mar, or steps (MAR with fewer steps under its own name)
    num_iter: int = 64
    cfg: float = 3.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0
    diffusion_steps: int | None = None  # None: the model's own number of sampling steps
    rng: str = "per_sample"

    def baseline(self, num_iter: int) -> MARSamplerConf:
        """The baseline an acceleration is measured against: MAR's own sampler at the model's default
        ``num_iter`` steps, with this run's guidance, temperature and RNG."""
        return MARSamplerConf(name="mar", num_iter=num_iter, cfg=self.cfg, cfg_schedule=self.cfg_schedule,
                              temperature=self.temperature, diffusion_steps=None, rng=self.rng)  # fmt: skip


def check_fewer_steps(conf: MARSamplerConf, run) -> None:
    """``sampler=steps`` exists to take fewer steps than the model's default: warn when it does not."""
    m = run.model
    if conf.num_iter >= m.default_num_iter:
        advise(f"sampler=steps with sampler.num_iter={conf.num_iter} takes no fewer steps than model={m.name}'s "
               f"default ({m.default_num_iter}), so it accelerates nothing. Set sampler.num_iter below "
               f"{m.default_num_iter} (the tables use 32, 16 and 8).")  # fmt: skip


# "+Step=S": MAR's sampler with fewer steps, under its own name so runs and W&B groups say what they are
@register("sampler", "steps", schema=MARSamplerConf, families=("mar",), check=check_fewer_steps)
@register("sampler", "mar", schema=MARSamplerConf, families=("mar",))
class MARSampler:
    """Decodes a batch of class-conditional latents with any cache policy."""

    name = "mar"

    def __init__(self, conf: MARSamplerConf) -> None:
        self.conf = conf
        self._diffusion: dict[tuple, SpacedDiffusion] = {}

    def respaced(self, model, steps: int, max_timestep: int | None = None) -> SpacedDiffusion:
        """The model's diffusion respaced to ``steps`` (built once per setting)."""
        x0_range = model.diffloss.gen_diffusion.x0_range  # the model's data bounds carry over
        key = (steps, x0_range, max_timestep)
        if key not in self._diffusion:
            self._diffusion[key] = SpacedDiffusion(str(steps), x0_range=x0_range, max_timestep=max_timestep)
        return self._diffusion[key]

    def diffusion_for(self, model) -> SpacedDiffusion:
        steps = self.conf.diffusion_steps
        return model.diffloss.gen_diffusion if steps is None else self.respaced(model, steps)

    def refresh_at(self, step: int) -> bool:
        """Whether cache policies must recompute everything at this step (MAR: never forced)."""
        return False

    def head_samples(
        self, model, policy: MARPolicy, z: torch.Tensor, random: RandomSource, cfg, ctx: StepContext
    ) -> torch.Tensor:
        """Tokens (B * n, C) for the predicted rows' conditions z (B or 2B [cond; uncond], n, D)."""
        return self.run_head(model, policy, z, random, cfg, ctx, self.step_diffusion(model, ctx.step))

    def run_head(
        self, model, policy, z, random, cfg, ctx: StepContext, diffusion: SpacedDiffusion
    ) -> torch.Tensor:
        """One diffusion-head call over every row of z (B or 2B, n, D) with one diffusion process."""
        n, channels = z.shape[1], model.token_dim
        diffusion = policy.head_diffusion(diffusion, ctx)
        x_init = random.initial_noise(n, channels, z.device)
        noise_fn = random.step_noise(n, channels, diffusion.num_timesteps, cfg is not None)
        return policy.diffusion_head(
            model, z.flatten(0, 1), x_init, noise_fn, self.conf.temperature, cfg, diffusion, ctx
        )

    def step_diffusion(self, model, step: int) -> SpacedDiffusion:
        """The diffusion process of AR step ``step`` (the same for every step here)."""
        return self.diffusion_for(model)

    def schedule(self, seq_len: int) -> list[int]:
        """Tokens still unknown after each step; the last entry is 0."""
        return mask_schedule(seq_len, self.conf.num_iter)

    def token_orders(
        self, random: RandomSource, batch: int, seq_len: int, device: torch.device
    ) -> torch.Tensor:
        """(B, L) positions per image; the *last* entries are predicted first (MAR's convention)."""
        return random.orders(batch, seq_len, device)

    @staticmethod
    def plan(orders: torch.Tensor, schedule: list[int]) -> list[torch.Tensor]:
        """Each step's predicted positions (B, n_s), ascending: the entries of ``orders`` between this
        step's count of unknown tokens and the previous one."""
        remaining, out = orders.shape[1], []
        for mask_len in schedule:
            out.append(orders[:, mask_len:remaining].sort(dim=1).values)
            remaining = mask_len
        return out

    def cfg_for(self, seq_len: int, mask_len: int) -> float | torch.Tensor | None:
        """The guidance scale of a step, or None when CFG is off."""
        cfg = self.conf.cfg
        if cfg == 1.0:
            return None
        if self.conf.cfg_schedule == "linear":
            return linear_cfg(cfg, seq_len, mask_len)
        return cfg

    @torch.no_grad()
    def sample(
        self,
        model,
        labels: torch.Tensor,
        seeds: Sequence[int] | None = None,
        policy: MARPolicy | None = None,
        random: RandomSource | None = None,
    ) -> torch.Tensor:
        """Latent grids (B, C, H, W), still multiplied by the VAE latent scale."""
        policy = policy or NoCache()
        batch = labels.shape[0]
        seeds = list(seeds) if seeds is not None else list(range(batch))
        random = random or make_random_source(self.conf.rng, seeds)
        device = labels.device
        seq_len, channels = model.seq_len, model.token_dim
        cfg_on = self.conf.cfg != 1.0
        policy.reset(batch)

        orders = self.token_orders(random, batch, seq_len, device)
        tokens = torch.zeros(batch, seq_len, channels, device=device)
        cond = model.class_condition(labels, batch)
        if cfg_on:
            cond = torch.cat([cond, model.null_condition(batch)])
        schedule = self.schedule(seq_len)
        plan = self.plan(orders, schedule)
        refresh = [self.refresh_at(step) for step in range(len(schedule))]
        plan = policy.plan(plan, refresh)
        known, prev = orders[:, :0], None
        for step, mask_len in enumerate(schedule):
            predicted = plan[step]  # (B, n), ascending
            ctx = StepContext(step, self.conf.num_iter, prev, predicted, cfg_on, refresh[step])
            x_in = torch.cat([tokens, tokens]) if cfg_on else tokens
            known_in = torch.cat([known, known]) if cfg_on else known
            policy.stats.model_calls += 1  # one transformer pass per step (the head's chain follows it)
            z = policy.transformer(model, x_in, model.visible_rows(known_in), cond, ctx)
            pred_in = torch.cat([predicted, predicted]) if cfg_on else predicted
            z_pred = z.gather(1, pred_in.unsqueeze(-1).expand(-1, -1, z.shape[-1]))  # (B or 2B, n, D)

            n = predicted.shape[1]
            cfg = self.cfg_for(seq_len, mask_len)
            if isinstance(cfg, torch.Tensor):
                cfg = cfg.to(device)
            sampled = self.head_samples(model, policy, z_pred, random, cfg, ctx)
            tokens = tokens.scatter(
                1, predicted.unsqueeze(-1).expand(-1, -1, channels), sampled.reshape(batch, n, channels)
            )
            known, prev = torch.cat([known, predicted], dim=1).sort(dim=1).values, predicted
        return model.unpatchify(tokens)
