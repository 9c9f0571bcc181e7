"""Speculative Jacobi Decoding (Teng et al., ICLR 2025) for LlamaGen: several tokens per forward pass.

Each image keeps a window of draft tokens after its accepted prefix. One forward feeds the last accepted
token and the drafts; output k is the model's distribution p_k for the k-th position after the prefix,
given the drafts before it. Draft k is accepted with probability min(1, p_k(d) / q(d)), where q is the
distribution the draft was drawn from; at the first rejection that position is resampled from the residual
max(0, p_k - q) (renormalised) and the rest of the window is discarded, and when every draft is accepted
the last output adds one more token. This is speculative sampling position by position, so every token
keeps exactly the distribution of next-token decoding (``sampler=ar``); with ``top_k=1`` the tokens are
ar's. Rejected positions become the next drafts, with their fresh samples (q = p of this pass); new
positions start from uniformly random tokens (q uniform) or a copy of their left neighbour (q one-hot).

Temperature, top-k, top-p and CFG (per position, ``cfg_interval`` by token index) are applied to every
distribution, draft and target alike. Rejected drafts leave the KV caches through the per-layer protocol
(``truncate``), so the full cache and ADSA's bounded one both work.

Batching keeps images independent: the batch feeds one contiguous span of positions, each image verifies
its own window within it (its own accepted prefix is re-fed where it is ahead of the slowest image), and
an image more than ``spread`` tokens ahead waits a pass instead of shortening its window. With
``rng=per_sample`` every uniform an image uses comes from its own generator, so an image depends only on
its seed. The official loop departs from the algorithm in four ways, each an option here (README):
``acceptance: batch_min`` (every image keeps the batch's minimum), ``residual: refiltered`` (top-k/top-p
again on the residual), ``loop_temperature: false`` (temperature only for the first token) and
``ar_tail: 18`` (the last tokens one at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lazygen.cache.base import CausalPolicy, NoCache, StepContext
from lazygen.errors import require, require_one_of
from lazygen.metrics.hints import flop_hints
from lazygen.registry import register
from lazygen.samplers.ar import ARSampler, ARSamplerConf, check_ar, filter_logits, guided_token, inverse_cdf

ACCEPTANCE = ("per_image", "batch_min")
RESIDUALS = ("exact", "refiltered")
DRAFT_INITS = ("random", "left")
STREAMS = 4  # uniforms per window slot and pass: fresh sample, acceptance test, residual, draft init


@dataclass
class SJDSamplerConf(ARSamplerConf):
    """``sampler=sjd``: ar's sampling settings plus the Jacobi window (defaults: the algorithm)."""

    name: str = "sjd"
    window: int = 16  # tokens per forward: the last accepted one and window - 1 drafts (official: 16)
    draft_init: str = "random"  # random (uniform ids, q uniform) | left (the left neighbour's id, q one-hot)
    acceptance: str = "per_image"  # per_image | batch_min (official: every image keeps the batch minimum)
    residual: str = "exact"  # exact | refiltered (official: top-k/top-p applied again to the residual)
    loop_temperature: bool = True  # false: temperature only for the first token (the official loop)
    ar_tail: int = 0  # the last ar_tail tokens one at a time (the official loop: 18)
    spread: int = 16  # tokens an image may run ahead of its batch's slowest before it waits a pass

    def baseline(self, num_iter: int) -> ARSamplerConf:
        """Next-token decoding with the same sampling settings: the distribution SJD keeps."""
        return ARSamplerConf(num_iter=num_iter, cfg=self.cfg, cfg_interval=self.cfg_interval,
                             temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                             rng=self.rng)  # fmt: skip


def check_parallel_cache(run, sampler: str) -> None:
    """Parallel decoders write several tokens per pass: ADSA's per-step sparse selection cannot serve them."""
    if run.cache.name == "adsa":
        require(run.cache.mode == "dynamic",
                f"sampler={sampler} writes several tokens per forward pass, but cache.mode={run.cache.mode} "
                "selects tokens for one new token per step; use cache.mode=dynamic (the bounded cache).")  # fmt: skip


def check_sjd(s: SJDSamplerConf, run) -> None:
    check_ar(s, run)
    require(
        s.window >= 2, f"sampler.window={s.window} must be at least 2 (1 is next-token decoding: sampler=ar)."
    )
    require(s.spread >= 0, f"sampler.spread={s.spread} must be >= 0 tokens.")
    require(s.ar_tail >= 0, f"sampler.ar_tail={s.ar_tail} must be >= 0 tokens.")
    require_one_of("sampler.acceptance", s.acceptance, ACCEPTANCE)
    require_one_of("sampler.residual", s.residual, RESIDUALS)
    require_one_of("sampler.draft_init", s.draft_init, DRAFT_INITS)
    check_parallel_cache(run, "sjd")


class Uniforms:
    """Each image's uniforms for one pass: (B, STREAMS, window) from its own generator, or the global one."""

    def __init__(self, seeds: Sequence[int], per_sample: bool) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds] if per_sample else None
        self.batch = len(seeds)

    def draw(self, rows: torch.Tensor, window: int) -> torch.Tensor:
        """Uniforms for the images in ``rows`` (bool (B,)); other rows get zeros and consume nothing."""
        out = torch.zeros(self.batch, STREAMS, window, dtype=torch.float64)
        if self.generators is None:
            out[rows] = torch.rand(int(rows.sum()), STREAMS, window, dtype=torch.float64)
            return out
        for b in rows.nonzero().flatten().tolist():
            out[b] = torch.rand(STREAMS, window, generator=self.generators[b], dtype=torch.float64)
        return out


@dataclass
class Verdict:
    """One pass's outcome per image: the output tokens of every window slot and the distributions they
    count as drawn from (B, W) / (B, W, V), the drafts kept (B,), and which tests rejected / ran (B, W - 1)."""

    out: torch.Tensor
    out_q: torch.Tensor
    kept: torch.Tensor
    reject: torch.Tensor
    checked: torch.Tensor


@flop_hints(static_shapes=False)  # the passes depend on which drafts are accepted: counted on a real run
@register("sampler", "sjd", schema=SJDSamplerConf, families=("llamagen",), check=check_sjd)
class SJDSampler(ARSampler):
    name = "sjd"

    @staticmethod
    def report(counters: dict[str, list[int]]) -> tuple[dict[str, float], dict]:
        """``sampler/accept_rate`` (accepted drafts / drafts tested) and the per-window-slot detail."""
        verified, accepted = counters.get("sjd_verified", []), counters.get("sjd_accepted", [])
        images, iterations = sum(counters.get("sjd_images", [])), sum(counters.get("sjd_iterations", []))
        if not images:
            return {}, {}
        metrics = {
            "sampler/accept_rate": sum(accepted) / max(sum(verified), 1),
            "sampler/iterations_per_img": iterations
            / images,  # the image's own passes (= model calls at batch 1)
        }
        detail = {
            "accept_rate": metrics["sampler/accept_rate"],
            "accept_rate_by_draft_slot": [
                a / v if v else None for a, v in zip(accepted, verified, strict=True)
            ],
            "drafts_tested_by_slot": verified,
            "drafts_accepted_by_slot": accepted,
            "iterations_per_img": metrics["sampler/iterations_per_img"],
        }
        return metrics, detail

    @staticmethod
    def acceptance_probability(p_draft: torch.Tensor, q_draft: torch.Tensor) -> torch.Tensor:
        """Speculative sampling's test: keep a draft with probability min(1, p(d) / q(d))."""
        return (p_draft / q_draft).clamp(max=1)

    def residual(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Where a rejected draft's position resamples from: max(0, p - q), renormalised."""
        res = (p - q).clamp_(min=0)
        if self.conf.residual == "refiltered" and (self.conf.top_k > 0 or self.conf.top_p < 1.0):
            logits = filter_logits(
                res.clamp(min=torch.finfo(res.dtype).tiny).log(), self.conf.top_k, self.conf.top_p
            )
            res = torch.softmax(logits, dim=-1) * (res > 0)
        return res / res.sum(-1, keepdim=True).clamp(min=torch.finfo(res.dtype).tiny)

    def init_drafts(
        self, last: torch.Tensor, u: torch.Tensor, vocab: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh drafts (B, W) and their q (B, W, V): uniform ids, or copies of ``last`` (B,) (one-hot q)."""
        if self.conf.draft_init == "left":
            tokens = last[:, None].expand(-1, u.shape[1]).clone()
            return tokens, torch.nn.functional.one_hot(tokens, vocab).float()
        tokens = (u * vocab).long().clamp_(max=vocab - 1)
        return tokens, torch.full((*tokens.shape, vocab), 1.0 / vocab)

    def verify(self, p: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor, span: torch.Tensor,
               u: torch.Tensor) -> Verdict:  # fmt: skip
        """One pass's verification, per image: p (B, W, V) for its next W positions, drafts (B, W - 1) with
        their q (B, W - 1, V) (draft j for position j, tested against p[:, j]), span (B,) positions in its
        window, u its uniforms (B, STREAMS, W)."""
        window = p.shape[1]
        slots = torch.arange(window)
        fresh = inverse_cdf(p, u[:, 0])  # (B, W): a sample of every output
        chance = self.acceptance_probability(
            p[:, :-1].gather(2, drafts[..., None]), q.gather(2, drafts[..., None])
        )
        checked = slots[None, :-1] < (span - 1)[:, None]
        reject = checked & (u[:, 1, : window - 1] >= chance.squeeze(-1))
        kept = torch.where(
            reject.any(1), reject.int().argmax(1), span - 1
        )  # drafts kept before the first reject
        rejected = kept < span - 1
        at = kept.clamp(max=window - 2)[:, None, None].expand(-1, 1, p.shape[-1])
        resampled = inverse_cdf(
            self.residual(p[:, :-1].gather(1, at), q.gather(1, at)).squeeze(1), u[:, 2, 0]
        )
        # outputs per slot: the kept drafts, then the resampled (or bonus) token, then fresh samples
        before = slots[None, :-1] < kept[:, None]
        out = torch.cat([torch.where(before, drafts, fresh[:, :-1]), fresh[:, -1:]], dim=1)
        out = torch.where((kept[:, None] == slots[None, :]) & rejected[:, None], resampled[:, None], out)
        out_q = torch.cat([torch.where(before[..., None], q, p[:, :-1]), p[:, -1:]], dim=1)
        return Verdict(out, out_q, kept, reject, checked)

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
        batch, length, vocab, window = (
            labels.shape[0],
            model.num_image_tokens,
            model.arch.vocab_size,
            c.window,
        )
        seeds = list(seeds) if seeds is not None else list(range(batch))
        device = labels.device
        uniforms = Uniforms(seeds, c.rng == "per_sample")
        cfg_on = c.cfg != 1.0
        rows, caches = self.open_caches(model, labels, policy)
        loop_temperature = c.temperature if c.loop_temperature else 1.0
        everyone = torch.ones(batch, dtype=torch.bool)

        tokens = torch.zeros(batch, length, dtype=torch.long)
        u = uniforms.draw(everyone, window)
        policy.stats.model_calls += 1
        first = self.probabilities(self.guided(model.prefill(rows, caches), True)).cpu()
        tokens[:, 0] = inverse_cdf(first, u[:, 0, 0])
        accepted = torch.ones(batch, dtype=torch.long)  # a_b: tokens known per image
        drafts, q = self.init_drafts(tokens[:, 0], u[:, 3, : window - 1], vocab)  # drafts for a_b + j
        verified = torch.zeros(window - 1, dtype=torch.long)
        accepted_at = torch.zeros(window - 1, dtype=torch.long)
        iterations = torch.zeros(batch, dtype=torch.long)
        arange_w = torch.arange(window)
        while bool((accepted < length).any()):
            active = accepted < length
            # the window of each image: inputs a_b - 1 .. a_b + span_b - 2 predict a_b .. a_b + span_b - 1
            span = (length - accepted).clamp(max=window)
            span = torch.where(length - accepted <= c.ar_tail, torch.ones_like(span), span)
            start = int(accepted[active].min()) - 1
            fits = active & (accepted - 1 + span - start <= window + c.spread)
            if c.acceptance == "batch_min":
                fits = active  # one shared prefix: every image verifies the same positions
            end = int((accepted - 1 + span)[fits].max())
            width = end - start
            index = start + torch.arange(width)  # token index of each input column
            own = index[None, :] - accepted[:, None]  # draft slot of each column, per image (-1: last token)
            known = tokens.gather(1, index.clamp(max=length - 1)[None, :].expand(batch, -1))
            drafted = drafts.gather(1, own.clamp(0, window - 2))
            inputs = torch.where(own >= 0, drafted, known)
            ctx = StepContext(int(iterations.max()), length, None, inputs, cfg_on)
            fed = torch.cat([inputs, inputs]) if cfg_on else inputs
            guide = torch.tensor([guided_token(int(i) + 1, c.cfg_interval) for i in index])
            policy.stats.model_calls += 1
            logits = policy.decode_many(model, fed.to(device), model.cls_token_num + index, caches, ctx)
            probs = self.probabilities(self.guided_positions(logits, guide), loop_temperature).cpu()
            u = uniforms.draw(fits, window)
            # per image: p for its positions a_b .. a_b + window - 1 (columns a_b - 1 - start + k)
            column = (accepted - 1 - start)[:, None] + arange_w[None, :]
            p = probs.gather(1, column.clamp(max=width - 1)[..., None].expand(-1, -1, vocab))  # (B, W, V)
            v = self.verify(p, drafts, q, span, u)
            first_reject, reject, checked = v.kept, v.reject, v.checked
            keep = torch.where(fits, first_reject + 1, torch.zeros_like(first_reject))
            if c.acceptance == "batch_min":
                keep = torch.where(fits, keep[fits].min(), keep)
            for b in fits.nonzero().flatten().tolist():
                k = int(keep[b])
                tokens[b, int(accepted[b]) : int(accepted[b]) + k] = v.out[b, :k]
            # statistics: slots checked up to and including the first rejection
            checks = checked & (arange_w[None, : window - 1] <= first_reject[:, None]) & fits[:, None]
            verified += checks.sum(0)
            accepted_at += (checks & ~reject).sum(0)
            iterations += fits.long()
            # next drafts: this pass's unkept outputs inside the window, then fresh initial drafts
            shift = keep[:, None] + arange_w[None, :-1]  # output slot that becomes draft j
            carry = shift < span[:, None]
            last = tokens.gather(1, (accepted + keep - 1).clamp(max=length - 1)[:, None]).squeeze(1)
            new_tok, new_q = self.init_drafts(last, u[:, 3, : window - 1], vocab)
            carried_tok = v.out.gather(1, shift.clamp(max=window - 1))
            carried_q = v.out_q.gather(1, shift.clamp(max=window - 1)[..., None].expand(-1, -1, vocab))
            update = fits[:, None] & carry
            new_tok = torch.where(update, carried_tok, new_tok)
            new_q = torch.where(update[..., None], carried_q, new_q)
            drafts = torch.where(fits[:, None], new_tok, drafts)
            q = torch.where(fits[:, None, None], new_q, q)
            accepted = accepted + keep
            if bool((accepted < length).any()):
                policy.rollback(caches, model.cls_token_num + int(accepted[accepted < length].min()) - 1)
        policy.stats.add_sampler("sjd_verified", verified.tolist())
        policy.stats.add_sampler("sjd_accepted", accepted_at.tolist())
        policy.stats.add_sampler("sjd_iterations", [int(iterations.sum())])
        policy.stats.add_sampler("sjd_images", [batch])
        return tokens
