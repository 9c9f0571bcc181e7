"""LazyMAR as a cache policy: token cache, encoder KV cache, condition cache and diffusion-head cache.

The official LazyMAR code forks MAR and threads a cache dictionary through every call. Here the network
stays as it is: this policy drives its mechanisms (blocks run over a subset of rows with keys/values merged
from a cache, conditional-only forwards, the diffusion head's blocks one by one) and owns every decision.
Each mechanism is its own switch, so the paper's ablations are configurations:

* refresh schedule: a step is *full* when ``step < refresh_start`` or ``(step - refresh_start) %
  refresh_interval == 0`` (or when the sampler asks); every cache is (re)filled on full steps. The other
  steps are *lazy*.
* token cache (decoder): on lazy steps the layers before ``selection_layer`` and that layer's attention
  run on every position; a ranking of positions (by default the head-mean cosine similarity of the
  layer's value vectors to the previous step's, least similar first, with the tokens predicted now and at
  the previous step forced in) picks the rows that the rest of the decoder recomputes. Skipped positions
  still take part in attention through the keys/values cached for them at each layer.
* encoder cache: on lazy steps the encoder runs only the buffer and the tokens that became known at the
  previous step; older known tokens take part through their cached keys/values, and their decoder
  inputs come from the decoder-input cache.
* condition cache: on lazy steps only the conditional half of the CFG batch runs through the transformer;
  the unconditional output is the conditional one plus the (uncond - cond) residual of the last decoder
  block stored at the last full step.
* head cache (every AR step, across diffusion timesteps): on diffusion steps ``k == T - 1`` or
  ``k % head_interval == 0`` everything runs; on the others the CFG eps residual replaces the
  unconditional half, the blocks in ``head_skip_blocks`` add their stored residual increment, and the
  other blocks reuse their stored MLP branch (refreshed on full steps and for ``k > head_refresh_above*T``).

Where the official code and the paper differ, the defaults follow the code (reference/mar_lazymar.md §5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lazygen.cache.base import MARPolicy, StepContext
from lazygen.diffusion import SpacedDiffusion
from lazygen.diffusion.gaussian import NoiseFn
from lazygen.errors import advise, require, require_one_of
from lazygen.metrics.hints import flop_hints
from lazygen.models.mar.diffloss import HeadBlockFn, HeadChain, guided_eps_output
from lazygen.models.mar.transformer import KVHook
from lazygen.registry import register

# The official per-step retain ratios of the decoder token cache (LazyMAR models/basic.py), for 64 steps.
OFFICIAL_RETAIN_SCHEDULE: list[float] = (
    [1.0] * 20 + [0.6] + [0.5] * 4 + [0.4] * 5 + [0.15] * 5 + [0.12] * 5 + [0.05] * 24
)
STRATEGIES = ("max_similarity", "min_similarity", "random", "predicted", "unpredicted")
CRITERIA = ("value", "hidden")
SCHEDULE_INDEXING = ("step", "progress")
AUTO = "auto"
# Ranking score of tokens that must be recomputed (predicted now or at the previous step). The official
# code sets 0 and sorts ascending; cosines below 0 would then outrank them. -2 is below every cosine,
# so forced tokens are always kept (they are the rows the diffusion head reads).
FORCED_SCORE = -2.0


@dataclass
class LazyMARConf:
    """``cache=lazymar``: every number of the official code, each mechanism switchable."""

    name: str = "lazymar"
    refresh_start: int = 5  # steps before this are full
    refresh_interval: int = 9  # K: then every K-th step is full
    token_cache: bool = True
    encoder_cache: bool = True
    condition_cache: Any = AUTO  # auto: on when CFG is on; true insists (an error without CFG)
    head_cache: bool = True
    selection_layer: int = 3  # decoder block whose attention values rank the tokens (0-based)
    criterion: str = "value"  # value | hidden: cosine of value vectors or of the block's hidden features
    strategy: str = "max_similarity"  # which tokens are reused (see STRATEGIES)
    retain_ratio: float | None = None  # constant share of positions recomputed; null = retain_schedule
    retain_schedule: list[float] = field(default_factory=lambda: list(OFFICIAL_RETAIN_SCHEDULE))
    schedule_indexing: str = "step"  # step: entry [step] (last entry beyond it); progress: scaled to S
    keep_margin: int = 15  # recompute at least forced tokens + this many
    head_interval: int = 7  # diffusion steps k with k % interval == 0 (and k = T-1) run in full
    head_refresh_above: float = 0.9  # MLP branches are also refreshed while k > this * T
    head_cfg_residual: Any = AUTO  # auto: on when CFG is on
    head_skip_blocks: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # blocks past depth: ignored
    head_mlp_reuse: bool = True
    seed: int = 0  # ranking noise of strategy=random

    def check(self, cfg_on: bool, decoder_depth: int) -> None:
        """Range and compatibility checks; raises ConfigError naming the key and the fix."""
        require(
            self.refresh_start >= 0, f"cache.refresh_start={self.refresh_start} must be >= 0 (official: 5)."
        )
        require(
            self.refresh_interval >= 1,
            f"cache.refresh_interval={self.refresh_interval} must be >= 1 (K; official: 9; 1 = never reuse).",
        )
        for key in ("condition_cache", "head_cfg_residual"):
            value = getattr(self, key)
            require(value in (True, False, AUTO), f"cache.{key}={value!r} must be true, false or auto.")
            require(cfg_on or value is not True,
                 f"cache.{key}=true needs classifier-free guidance, but sampler.cfg=1.0 runs no unconditional "
                 f"branch to cache. Set cache.{key}=auto (off without CFG) or guide with sampler.cfg > 1.")  # fmt: skip
        require(not self.token_cache or 0 <= self.selection_layer < decoder_depth,
             f"cache.selection_layer={self.selection_layer} is not a decoder block of this model (it has "
             f"{decoder_depth}: 0..{decoder_depth - 1}); pick one of those or set cache.token_cache=false.")  # fmt: skip
        require_one_of("cache.criterion", self.criterion, CRITERIA)
        require_one_of("cache.strategy", self.strategy, STRATEGIES)
        require_one_of("cache.schedule_indexing", self.schedule_indexing, SCHEDULE_INDEXING)
        ratios = [self.retain_ratio] if self.retain_ratio is not None else self.retain_schedule
        require(len(ratios) > 0 and all(0.0 < r <= 1.0 for r in ratios),
             f"cache retain ratios must lie in (0, 1], got {ratios}; set cache.retain_ratio to a share "
             "of positions to recompute, or null to use cache.retain_schedule.")  # fmt: skip
        require(self.keep_margin >= 0, f"cache.keep_margin={self.keep_margin} must be >= 0 (official: 15).")
        require(
            self.head_interval >= 1, f"cache.head_interval={self.head_interval} must be >= 1 (official: 7)."
        )
        require(
            0.0 <= self.head_refresh_above <= 1.0,
            f"cache.head_refresh_above={self.head_refresh_above} must be in [0, 1] (official: 0.9).",
        )
        require(
            all(b >= 0 for b in self.head_skip_blocks),
            f"cache.head_skip_blocks={self.head_skip_blocks} must be block indices >= 0.",
        )

    @property
    def tag(self) -> str:
        parts = [f"lazymar-K{self.refresh_interval}s{self.refresh_start}"]
        for key, short in (("token_cache", "tok"), ("encoder_cache", "enc"), ("condition_cache", "cond"),
                           ("head_cache", "head")):  # fmt: skip
            if getattr(self, key) is False:
                parts.append(f"no{short}")
        if self.strategy != "max_similarity":
            parts.append(self.strategy)
        if self.criterion != "value":
            parts.append(self.criterion)
        if self.retain_ratio is not None:
            parts.append(f"r{self.retain_ratio:g}")
        return "-".join(parts)


def _positions_mask(
    positions: torch.Tensor | None, rows: int, length: int, offset: int, device
) -> torch.Tensor:
    """(rows, length) bool, True at ``positions + offset`` ((B, n) index tensor, repeated over CFG halves)."""
    mask = torch.zeros(rows, length, dtype=torch.bool, device=device)
    if positions is None or positions.shape[1] == 0:
        return mask
    reps = rows // positions.shape[0]
    return mask.scatter(1, positions.repeat(reps, 1) + offset, True)


def _store_kv(cache: list, rows: int, skip: int) -> KVHook:
    """Append this layer's keys/values of the first ``rows`` rows, from sequence slot ``skip`` on."""

    def hook(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache.append((k[:rows, :, skip:], v[:rows, :, skip:]))
        return k, v

    return hook


def _append_kv(cache: list, layer: int, buffer: int) -> KVHook:
    """Encoder on a lazy step: queries are [buffer, new tokens]; keys are [buffer, cached known, new],
    the slot order of the official cache; the new tokens join the cache."""

    def hook(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_old, v_old = cache[layer]
        cache[layer] = (torch.cat([k_old, k[:, :, buffer:]], 2), torch.cat([v_old, v[:, :, buffer:]], 2))
        return (torch.cat([k[:, :, :buffer], k_old, k[:, :, buffer:]], 2),
                torch.cat([v[:, :, :buffer], v_old, v[:, :, buffer:]], 2))  # fmt: skip

    return hook


def _replace_kv(cache: list, layer: int) -> KVHook:
    """Every position recomputed: its keys/values replace the layer's cache."""

    def hook(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache[layer] = (k, v)
        return k, v

    return hook


def _scatter_kv(cache: list, layer: int, kept: torch.Tensor) -> KVHook:
    """Only ``kept`` positions (rows, n) recomputed: scatter them into the cache, attend over all of it."""

    def hook(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = kept[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
        k_all, v_all = cache[layer]
        cache[layer] = (k_all.scatter(2, index, k), v_all.scatter(2, index, v))
        return cache[layer]

    return hook


class _Chain:
    """Per-chain state of the diffusion-head cache (one AR step's p_sample loop)."""

    def __init__(self) -> None:
        self.cfg_delta: torch.Tensor | None = None
        self.delta: dict[int, torch.Tensor] = {}
        self.branch: dict[int, torch.Tensor] = {}


def check_lazymar(conf: LazyMARConf, run) -> None:
    s, m = run.sampler, run.model
    conf.check(cfg_on=s.cfg != 1.0, decoder_depth=m.arch.decoder_depth)
    if s.num_iter <= conf.refresh_start:
        advise(f"cache.refresh_start={conf.refresh_start} covers all sampler.num_iter={s.num_iter} steps, so "
               "every step runs the transformer in full and LazyMAR reuses only the diffusion head's work. "
               f"Set cache.refresh_start below {s.num_iter} to cache the transformer too.")  # fmt: skip


@register("cache", "lazymar", schema=LazyMARConf, families=("mar",), check=check_lazymar)
@flop_hints(row_affine=("diffusion_head",))
class LazyMARPolicy(MARPolicy):
    name = "lazymar"

    def __init__(self, conf: LazyMARConf) -> None:
        super().__init__(conf)
        self._generator = torch.Generator().manual_seed(conf.seed)
        self.reset(0)

    def reset(self, batch_size: int) -> None:
        self.batch = batch_size
        self.lazy_rows = 0  # rows that lazy steps run: B with the condition cache, else all
        self.enc_known_kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per encoder layer
        self.dec_kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per decoder layer (rows, H, P, hd)
        self.dec_input: torch.Tensor | None = None  # decoder input sequence (rows, P, D)
        self.prev_signal: torch.Tensor | None = None  # selection signal of the last step (criterion)
        self.uncond_residual: torch.Tensor | None = None  # (B, P, D) uncond - cond, last decoder block
        self.predicted_mask: torch.Tensor | None = None  # (rows, L) tokens predicted before this step
        self._generator.manual_seed(self.conf.seed)

    # ---- decisions ---------------------------------------------------------------------------------
    def is_full(self, ctx: StepContext) -> bool:
        c = self.conf
        return (
            ctx.refresh
            or ctx.step < c.refresh_start
            or (ctx.step - c.refresh_start) % c.refresh_interval == 0
        )

    def condition_cache_on(self, ctx: StepContext) -> bool:
        return ctx.cfg_on and self.conf.condition_cache is not False

    def retain_ratio(self, step: int, num_steps: int) -> float:
        c = self.conf
        if c.retain_ratio is not None:
            return c.retain_ratio
        table = c.retain_schedule
        index = step if c.schedule_indexing == "step" else step * len(table) // num_steps
        return table[min(index, len(table) - 1)]

    def num_kept(self, ctx: StepContext, positions: int) -> int:
        """Rows the decoder recomputes after the selection layer (the same for every image)."""
        forced = ctx.predicted_now.shape[1] + (
            ctx.predicted_prev.shape[1] if ctx.predicted_prev is not None else 0
        )
        ratio = self.retain_ratio(ctx.step, ctx.num_steps)
        return min(positions, max(forced + self.conf.keep_margin, int(positions * ratio)))

    def ranking(self, signal_now: torch.Tensor, signal_prev: torch.Tensor, forced: torch.Tensor,
                known: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Score per position (rows, P); the lowest scores are recomputed."""
        strategy = self.conf.strategy
        if strategy in ("max_similarity", "min_similarity"):
            if signal_now.ndim == 4:  # value vectors (rows, H, P, hd): head-mean cosine
                score = F.cosine_similarity(signal_now, signal_prev, dim=-1).mean(dim=1)
            else:
                score = F.cosine_similarity(signal_now, signal_prev, dim=-1)
            score = score if strategy == "max_similarity" else -score
        else:
            noise = torch.rand(known.shape, generator=self._generator).to(known.device)
            if strategy == "random":
                score = noise
            else:  # 'predicted' reuses known tokens, 'unpredicted' masked ones; random order within groups
                reuse = known if strategy == "predicted" else ~known
                score = reuse.to(noise.dtype) + noise  # the reused group scores in [1, 2): recomputed last
        return score.masked_fill(forced, FORCED_SCORE)

    # ---- transformer -------------------------------------------------------------------------------
    def transformer(self, model, tokens: torch.Tensor, rows: torch.Tensor, cond: torch.Tensor,
                    ctx: StepContext) -> torch.Tensor:  # fmt: skip
        n, length = tokens.shape[:2]
        if self.predicted_mask is None:
            self.predicted_mask = torch.zeros(n, length, dtype=torch.bool, device=tokens.device)
        if self.is_full(ctx):
            z = self._full_step(model, tokens, rows, cond, ctx)
        else:
            z = self._lazy_step(model, tokens, rows, cond, ctx)
        self.predicted_mask = self.predicted_mask | _positions_mask(
            ctx.predicted_now, n, length, 0, tokens.device
        )
        return z

    def _full_step(self, model, tokens, rows, cond, ctx: StepContext) -> torch.Tensor:
        """Everything in full; store what the next lazy steps reuse (for their rows only)."""
        self.stats.full_steps += 1
        c = self.conf
        n = tokens.shape[0]
        keep = self.lazy_rows = self.batch if self.condition_cache_on(ctx) else n
        buffer = model.buffer_size

        self.enc_known_kv = []
        enc_hooks = (
            (lambda j: {"kv": _store_kv(self.enc_known_kv, keep, buffer)}) if c.encoder_cache else None
        )
        encoded = model.run_encoder(model.encoder_input(tokens, rows, cond), enc_hooks,
                                    self._counter("encoder", ctx))  # fmt: skip

        x = model.decoder_input(encoded, rows)
        self.dec_input = x[:keep]
        self.dec_kv = []

        def remember(hidden: torch.Tensor) -> torch.Tensor:
            self.prev_signal = self.dec_kv[-1][1] if c.criterion == "value" else hidden[:keep]
            return hidden

        def dec_hooks(j: int) -> dict:
            if not c.token_cache:
                return {}
            hooks = {"kv": _store_kv(self.dec_kv, keep, 0)}
            return {**hooks, "select": remember} if j == c.selection_layer else hooks

        x = model.run_decoder(x, dec_hooks, self._counter("decoder", ctx))
        if self.condition_cache_on(ctx):
            self.uncond_residual = x[self.batch :] - x[: self.batch]
        return model.decoder_output(x)

    def _lazy_step(self, model, tokens, rows, cond, ctx: StepContext) -> torch.Tensor:
        """Transformer rows of the lazy batch only, reusing the caches; the CFG half synthesised."""
        self.stats.reused_steps += 1
        n = tokens.shape[0]
        x = self._lazy_decoder_input(model, tokens, rows, cond, ctx)
        if self.conf.token_cache:
            x = self._lazy_decoder(model, x, ctx, n)
        else:
            x = model.run_decoder(x, observe=self._counter("decoder", ctx, baseline_rows=n))
        if self.lazy_rows < n:
            x = torch.cat([x, x + self.uncond_residual])
        return model.decoder_output(x)

    def _lazy_decoder_input(self, model, tokens, rows, cond, ctx: StepContext) -> torch.Tensor:
        """Decoder input (lazy rows, P, D): encoder over everything, or over the buffer and new tokens."""
        keep, n, buffer = self.lazy_rows, tokens.shape[0], model.buffer_size
        baseline = n * rows.shape[1]  # what the baseline encoder runs: every row, buffer + known
        count = self._counter("encoder", ctx, baseline=baseline)
        if not self.conf.encoder_cache:
            x = model.encoder_input(tokens[:keep], rows[:keep], cond[:keep])
            self.dec_input = model.decoder_input(model.run_encoder(x, observe=count), rows[:keep])
            return self.dec_input
        new = ctx.predicted_prev if ctx.predicted_prev is not None else ctx.predicted_now[:, :0]
        new = new.repeat(keep // new.shape[0], 1)
        enc_rows = model.visible_rows(new)
        x = model.encoder_input(tokens[:keep], enc_rows, cond[:keep])
        encoded = model.run_encoder(x, lambda j: {"kv": _append_kv(self.enc_known_kv, j, buffer)}, count)
        fresh = model.decoder_input(encoded, enc_rows)
        positions = fresh.shape[1]
        refresh = _positions_mask(new, keep, positions, buffer, tokens.device)
        refresh[:, :buffer] = True  # older known tokens keep their cached decoder input
        self.dec_input = torch.where(refresh.unsqueeze(-1), fresh, self.dec_input)
        return self.dec_input

    def _lazy_decoder(self, model, x: torch.Tensor, ctx: StepContext, batch_rows: int) -> torch.Tensor:
        """Every position up to the selection layer's attention, then the selected rows only.

        Skipped positions output zeros: only the rows of predicted tokens are read, and those are kept.
        """
        c = self.conf
        rows, positions, width = x.shape
        baseline = batch_rows * positions  # what the baseline decoder runs: every row and position
        kept: list[torch.Tensor] = []  # positions (rows, n_keep) chosen at the selection layer

        def choose(hidden: torch.Tensor) -> torch.Tensor:
            signal = self.dec_kv[c.selection_layer][1] if c.criterion == "value" else hidden
            kept.append(
                self._select(signal, self.prev_signal, ctx, rows, positions, model.buffer_size, x.device)
            )
            self.prev_signal = signal
            return hidden.gather(1, kept[0].unsqueeze(-1).expand(-1, -1, width))

        def hooks(j: int) -> dict:
            if j < c.selection_layer:
                return {"kv": _replace_kv(self.dec_kv, j)}
            if j == c.selection_layer:
                return {"kv": _replace_kv(self.dec_kv, j), "select": choose}
            return {"kv": _scatter_kv(self.dec_kv, j, kept[0])}

        def count(j: int, out: torch.Tensor) -> None:
            done = rows * positions if j <= c.selection_layer else out.shape[0] * out.shape[1]
            self.stats.count(f"decoder.{j}", ctx.step, done, baseline)

        x = model.run_decoder(x, hooks, count)
        out = torch.zeros(rows, positions, width, dtype=x.dtype, device=x.device)
        return out.scatter(1, kept[0].unsqueeze(-1).expand(-1, -1, width), x)

    def _counter(self, side: str, ctx: StepContext, baseline_rows: int | None = None,
                 baseline: int | None = None):  # fmt: skip
        """Observer counting each block's rows against what the baseline runs (default: the same rows;
        ``baseline_rows`` of the block's length, or an absolute ``baseline``)."""

        def count(j: int, x: torch.Tensor) -> None:
            done = x.shape[0] * x.shape[1]
            total = baseline if baseline is not None else (baseline_rows or x.shape[0]) * x.shape[1]
            self.stats.count(f"{side}.{j}", ctx.step, done, total)

        return count

    def _select(self, signal, signal_prev, ctx: StepContext, rows: int, positions: int, buffer: int,
                device) -> torch.Tensor:  # fmt: skip
        """Positions (rows, n_keep), ascending, that the decoder recomputes after the selection layer."""
        length = positions - buffer
        forced = _positions_mask(ctx.predicted_now, rows, positions, buffer, device)
        if ctx.predicted_prev is not None:
            forced = forced | _positions_mask(ctx.predicted_prev, rows, positions, buffer, device)
        known = torch.cat([torch.ones(rows, buffer, dtype=torch.bool, device=device),
                           self.predicted_mask[:rows, :length]], 1)  # fmt: skip
        score = self.ranking(signal, signal_prev, forced, known)
        order = score.sort(dim=1, stable=True).indices
        return order[:, : self.num_kept(ctx, positions)].sort(dim=1).values

    # ---- diffusion head ----------------------------------------------------------------------------
    def diffusion_head(self, model, z: torch.Tensor, x_init: torch.Tensor, noise_fn: NoiseFn,
                       temperature: float, cfg: float | torch.Tensor | None, diffusion: SpacedDiffusion,
                       ctx: StepContext) -> torch.Tensor:  # fmt: skip
        if not self.conf.head_cache:
            evals = x_init.shape[0] * diffusion.num_timesteps * (2 if cfg is not None else 1)
            self._count_head(evals, evals)
            return super().diffusion_head(model, z, x_init, noise_fn, temperature, cfg, diffusion, ctx)
        c = self.conf
        net = model.diffloss.net
        channels = x_init.shape[1]
        steps = diffusion.num_timesteps
        cfg_residual = cfg is not None and c.head_cfg_residual is not False
        skip = {b for b in c.head_skip_blocks if b < len(net.res_blocks)}
        chain = _Chain()
        rows = x_init.shape[0]

        def is_full(k: int) -> bool:
            return k == steps - 1 or k % c.head_interval == 0

        def needs(k: int, j: int) -> int:  # rows of z whose modulation layer j uses at step k
            if is_full(k):
                return z.shape[0]
            if j in skip:
                return 0
            return rows if cfg_residual else z.shape[0]

        head = HeadChain(net, z, diffusion.timestep_map, needs)
        x = x_init
        for k in reversed(range(steps)):
            full = is_full(k)
            refresh = full or k > c.head_refresh_above * steps or not c.head_mlp_reuse

            block_fn = self._head_block(full, refresh, skip, chain)

            def denoise(x, t, k=k, full=full, block_fn=block_fn):
                if cfg is None:
                    return head(x, k, block_fn=block_fn)
                if full or not cfg_residual:
                    out = head(x, k, repeat=2, block_fn=block_fn)
                    if full and cfg_residual:
                        chain.cfg_delta = out[:rows, :channels] - out[rows:, :channels]
                    return guided_eps_output(out, channels, cfg)
                out = head(x, k, block_fn=block_fn)  # conditional half; uncond eps = cond eps - cfg_delta
                cond_eps = out[:, :channels]
                uncond_eps = cond_eps - chain.cfg_delta
                eps = uncond_eps + cfg * (cond_eps - uncond_eps)
                return torch.cat([eps, out[:, channels:]], 1)

            x = diffusion.p_sample(denoise, x, k, noise_fn(k, x), temperature)
            halves = 2 if cfg is not None and (full or not cfg_residual) else 1
            self._count_head(rows * halves if full else 0, rows * (2 if cfg is not None else 1))
        return x

    def _count_head(self, full_rows: int, baseline_rows: int) -> None:
        self.stats.head_full_evals += full_rows
        self.stats.head_evals += baseline_rows

    @staticmethod
    def _head_block(full: bool, refresh: bool, skip: set[int], chain: _Chain) -> HeadBlockFn:
        """How the denoiser runs each block at one diffusion step: skipped blocks add their stored
        increment, the others reuse or refresh their MLP branch; caches keep the rows they were made with."""

        def run(j: int, block, h: torch.Tensor, modulation) -> torch.Tensor:
            rows = h.shape[0]
            if j in skip and not full:
                return h + chain.delta[j][:rows]
            shift, scale, gate = modulation()
            if refresh:
                branch = chain.branch[j] = block.branch(h, shift, scale)
            else:
                branch = chain.branch[j][:rows]
            out = h + gate * branch
            if j in skip:
                chain.delta[j] = out - h
            return out

        return run
