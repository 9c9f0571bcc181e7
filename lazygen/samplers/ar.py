"""LlamaGen's sampler: raster next-token decoding with a KV cache and classifier-free guidance.

One prefill step for the class token, then one step per image token, in the official order of operations:
CFG on the fp32 logits (cond rows first, the null class second, the same token fed to both halves; the
prefill always guides, decode step i stops once ``cfg_interval > -1 and i > cfg_interval``), then
temperature, top-k, top-p, softmax and one draw per image. The cache policy supplies the per-layer KV caches
(``none``: the full cache; ``adsa``: sparse, bounded ones), so the sampler never decides what is cached.
Generated token ids are copied off the accelerator as they are drawn; only the tokenizer needs them again.

RNG protocols as for MAR: ``official`` draws ``torch.multinomial`` from the global stream (bit-exact with
the official ``generate``); ``per_sample`` draws one uniform per token from each sample's own generator and
inverts the CDF, so an image depends only on its seed, not on the batch or the world size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lazygen.cache.base import CausalPolicy, NoCache, StepContext
from lazygen.errors import advise, require
from lazygen.registry import register

TEMPERATURE_FLOOR = 1e-5  # official: logits / max(temperature, 1e-5)


@dataclass
class ARSamplerConf:
    """``sampler=ar``: the official LlamaGen sampling settings (FID recipe: top_k 0, top_p 1, temperature 1)."""

    name: str = "ar"
    num_iter: int = 576  # one token per step: always the model's number of image tokens
    cfg: float = 1.75
    cfg_interval: int = -1  # guide decode steps i <= cfg_interval only; -1 = always
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k
    top_p: float = 1.0  # 1 = no nucleus filtering
    rng: str = "per_sample"

    def baseline(self, num_iter: int) -> ARSamplerConf:
        """Next-token decoding has one schedule: its baseline is itself (only the cache policy differs)."""
        return self


def check_ar(s: ARSamplerConf, run) -> None:
    m = run.model
    require(s.num_iter == m.arch.block_size,
           f"sampler.num_iter={s.num_iter}: next-token decoding takes one step per image token "
           f"({m.arch.block_size}); leave it at ${{model.default_num_iter}} (set to {m.arch.block_size}).")  # fmt: skip
    require(s.top_k >= 0, f"sampler.top_k={s.top_k} must be 0 (off) or a positive number of tokens.")
    if s.top_k >= m.arch.vocab_size:
        advise(f"sampler.top_k={s.top_k} keeps every one of the {m.arch.vocab_size} tokens of model={m.name}'s "
               f"vocabulary, so it filters nothing (the same as sampler.top_k=0). Set it below "
               f"{m.arch.vocab_size} to restrict sampling.")  # fmt: skip
    require(
        0 < s.top_p <= 1, f"sampler.top_p={s.top_p} must be in (0, 1]; 1.0 switches nucleus sampling off."
    )
    require(
        s.cfg_interval >= -1, f"sampler.cfg_interval={s.cfg_interval} must be -1 (always guide) or a step."
    )


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """(..., V) logits with -inf outside the top-k (ties kept) and outside the nucleus; the token that
    crosses ``top_p`` and the top-1 are always kept (the official HF-style filter)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ranked, order = torch.sort(logits, descending=True)
        beyond = F.softmax(ranked, dim=-1).cumsum(dim=-1) > top_p
        drop = torch.cat([torch.zeros_like(beyond[..., :1]), beyond[..., :-1]], dim=-1)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per distribution: probs (..., V), uniforms (...) in [0, 1) -> ids (...), in float64 so the
    draw of a seeded uniform does not depend on how the distributions were batched."""
    cdf = probs.double().cumsum(dim=-1)
    target = uniforms.to(cdf.dtype)[..., None] * cdf[..., -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def guided_token(index: int, cfg_interval: int) -> bool:
    """Whether image token ``index`` is sampled with guidance: the first always, token i (fed at decode step
    i - 1) while ``cfg_interval`` is -1 or i - 1 <= cfg_interval (the official rule)."""
    return index == 0 or cfg_interval == -1 or index - 1 <= cfg_interval


class TokenDraws:
    """Where each image's token draws come from."""

    def draw(self, probs: torch.Tensor, step: int) -> torch.Tensor:
        """One token id per row of probs (B, V): (B, 1)."""
        raise NotImplementedError


class OfficialDraws(TokenDraws):
    def draw(self, probs: torch.Tensor, step: int) -> torch.Tensor:
        return torch.multinomial(probs, num_samples=1)


class PerSampleDraws(TokenDraws):
    """All of an image's uniforms come from its own generator, drawn once (one call per sample)."""

    def __init__(self, seeds: Sequence[int], num_tokens: int, device: torch.device) -> None:
        uniforms = [torch.rand(num_tokens, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        self.uniforms = torch.stack(uniforms).to(device, torch.float64)  # (B, L)

    def draw(self, probs: torch.Tensor, step: int) -> torch.Tensor:
        return inverse_cdf(probs, self.uniforms[:, step])[:, None]


@register("sampler", "ar", schema=ARSamplerConf, families=("llamagen",), check=check_ar)
class ARSampler:
    name = "ar"

    def __init__(self, conf: ARSamplerConf) -> None:
        self.conf = conf

    def guided(self, logits: torch.Tensor, guide: bool) -> torch.Tensor:
        """Last-position logits of [cond; uncond] rows (2B, T, V) -> (B, V); cond alone when not guiding."""
        return self.guided_positions(logits[:, -1:], torch.tensor([guide]))[:, 0]

    def guided_positions(self, logits: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Every position's logits of [cond; uncond] rows (2B, T, V) -> (B, T, V), guided where ``guide`` (T,)
        is True and conditional elsewhere; cond alone when CFG is off."""
        logits = logits.float()
        if self.conf.cfg == 1.0:
            return logits
        cond, uncond = logits.chunk(2)
        mixed = uncond + (cond - uncond) * self.conf.cfg
        return torch.where(guide.to(logits.device)[None, :, None], mixed, cond)

    def probabilities(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        c = self.conf
        scaled = logits / max(c.temperature if temperature is None else temperature, TEMPERATURE_FLOOR)
        if c.top_k > 0 or c.top_p < 1.0:
            scaled = filter_logits(scaled, c.top_k, c.top_p)
        return F.softmax(scaled, dim=-1)

    def open_caches(self, model, labels: torch.Tensor, policy: CausalPolicy) -> tuple[torch.Tensor, list]:
        """The rows a pass feeds (labels, then the null class when guiding) and the policy's per-layer KV
        caches for them, their memory noted: the start of every LlamaGen decoding."""
        rows = labels
        if self.conf.cfg != 1.0:
            rows = torch.cat([labels, torch.full_like(labels, model.null_class)])
        policy.reset(labels.shape[0])
        caches = policy.kv_caches(model, len(rows), labels.device)
        policy.note_kv_memory(caches, labels.shape[0])
        return rows, caches

    def draws(self, seeds: Sequence[int], num_tokens: int, device: torch.device) -> TokenDraws:
        if self.conf.rng == "official":
            return OfficialDraws()
        return PerSampleDraws(seeds, num_tokens, device)

    @torch.no_grad()
    def sample(
        self,
        model,
        labels: torch.Tensor,
        seeds: Sequence[int] | None = None,
        policy: CausalPolicy | None = None,
    ) -> torch.Tensor:
        """Token ids (B, L) in raster order, on the CPU."""
        policy = policy or NoCache()
        batch, length = labels.shape[0], model.num_image_tokens
        seeds = list(seeds) if seeds is not None else list(range(batch))
        device = labels.device
        draws = self.draws(seeds, length, device)
        cfg_on = self.conf.cfg != 1.0
        rows, caches = self.open_caches(model, labels, policy)
        host = device if device.type == "meta" else torch.device("cpu")  # shape-only runs stay on meta
        out = torch.empty(batch, length, dtype=torch.long, device=host, pin_memory=device.type == "cuda")
        guide = True
        policy.stats.model_calls += length  # the prefill, then one pass per further token
        token = draws.draw(self.probabilities(self.guided(model.prefill(rows, caches), guide)), 0)  # (B, 1)
        out[:, :1].copy_(token, non_blocking=True)
        for step in range(length - 1):  # decode step i feeds token i at position cls + i
            guide = guide and not (self.conf.cfg_interval > -1 and step > self.conf.cfg_interval)
            ctx = StepContext(step, length - 1, None, token, cfg_on)
            fed = torch.cat([token, token]) if cfg_on else token
            logits = policy.decode(model, fed, model.cls_token_num + step, caches, ctx)
            token = draws.draw(self.probabilities(self.guided(logits, guide)), step + 1)
            out[:, step + 1 : step + 2].copy_(token, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
        return out
