"""ADSA (adaptive dynamic sparse attention) for LlamaGen, as a cache policy (reference/llamagen_adsa.md §7-8).

At each decode step the cached image tokens split into a **prefix** (the first ``prefix`` tokens, which fix
global style), a **local** window (the last ``local`` tokens, including the one just written: neighbours
and the row above) and the **previous** tokens in between. Of the previous tokens only the most diverse are
kept: those whose value vectors are least similar, on average, to the others. The mean cosine similarity
of u_i = v_i/|v_i| to a set R is u_i . mean(u_R), so ranking costs O(M d) per (row, layer, head), not
the O(M^2 d) of a pairwise matrix. Condition (class) tokens are always kept and not counted in the budget.

Two modes share that ranking:
- ``dynamic`` (the paper's dynamic KV cache, the default): a fixed capacity of ``budget`` image slots per
  layer. Until it is full the cache behaves as the full one; then, before each new token is written, the
  most redundant previous token is evicted and its slot reused. Memory stays bounded; evictions are final.
- ``sparse``: the full cache is kept and every step attends to prefix + the ``budget - prefix - local``
  most diverse previous tokens + local, chosen afresh (for ablations and as a bridge to the baseline).
With ``budget`` at or above the sequence length both equal the baseline exactly.

The ranking reads every cached value once per step and layer, as much memory traffic as attention over
the budget itself; ``rank_every: n`` ranks every n steps instead (the dynamic cache then evicts the n most
redundant tokens of one ranking in turn; the sparse mode keeps its chosen tokens while the local window
slides on). ``rank_every: 1`` is the paper's per-step ranking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lazygen.cache.base import CausalPolicy, StepContext
from lazygen.errors import advise, require, require_one_of
from lazygen.registry import register

MODES = ("dynamic", "sparse")
SELECTIONS = ("diverse", "oldest")  # diverse = ADSA's TopK-V; oldest = prefix + sliding window (ablation)
GRANULARITIES = ("head", "layer")  # rank per KV head, or one ranking per layer (head-mean score)
REFERENCES = ("previous", "cache")  # the set R the mean similarity runs over
PREFIX_SHARE = 0.05  # ADSA §3.1: the first 5% of tokens fix style and colour
BUDGET_SHARE = 2 / 3  # the paper's 384 of 576 image tokens (LlamaGen-XL at 384 px), as a share of any model's
LOCAL_ROWS = 2  # ADSA §3.2: the previous token and the same column one row up, with margin
NORM_EPS = 1e-6


@dataclass
class ADSAConf:
    """``cache=adsa``: the budget is a share of the model's image tokens (at most 1) or a count of them (above
    1, as the paper's tables); null prefix/local take the reconstruction's defaults."""

    name: str = "adsa"
    budget: float = BUDGET_SHARE  # image tokens kept (dynamic: the capacity; sparse: attended per step)
    prefix: int | None = None  # null: ceil(5% of the image tokens) (29 of 576, 13 of 256)
    local: int | None = None  # null: two grid rows (48 on 24x24, 32 on 16x16)
    mode: str = "dynamic"  # dynamic (bounded cache, eviction) | sparse (full cache, per-step selection)
    select: str = "diverse"  # diverse (least mean V similarity) | oldest (drop the oldest previous tokens)
    granularity: str = "head"  # head | layer
    reference: str = "previous"  # previous (the candidates) | cache (every cached image token)
    rank_every: int = 1  # rank every n steps (the paper: 1); between, evict/keep by the last ranking

    @property
    def tag(self) -> str:
        every = f"-r{self.rank_every}" if self.rank_every > 1 else ""
        size = f"{self.budget:.2f}" if self.relative else f"{int(self.budget)}"
        return f"adsa{size}{'' if self.mode == 'dynamic' else '-sparse'}{every}"

    @property
    def relative(self) -> bool:
        """A budget of at most 1 is a share of the image tokens; above 1 it counts them."""
        return self.budget <= 1

    def tokens(self, num_image_tokens: int) -> int:
        """The budget in image tokens for a model with ``num_image_tokens`` (a share is rounded)."""
        return round(self.budget * num_image_tokens) if self.relative else int(self.budget)

    def regions(self, num_image_tokens: int, grid: int) -> tuple[int, int]:
        """(prefix, local) sizes for a sequence of ``num_image_tokens`` on a ``grid``-wide raster."""
        prefix = math.ceil(PREFIX_SHARE * num_image_tokens) if self.prefix is None else self.prefix
        local = LOCAL_ROWS * grid if self.local is None else self.local
        return prefix, local

    def check(self, num_image_tokens: int, grid: int, model_name: str = "this model") -> None:
        require_one_of("cache.mode", self.mode, MODES)
        require_one_of("cache.select", self.select, SELECTIONS)
        require_one_of("cache.granularity", self.granularity, GRANULARITIES)
        require_one_of("cache.reference", self.reference, REFERENCES)
        require(self.rank_every >= 1,
                f"cache.rank_every={self.rank_every} must be at least 1 (1 ranks at every step, as the paper).")  # fmt: skip
        require(self.budget > 0 and (self.relative or float(self.budget).is_integer()),
                f"cache.budget={self.budget} must be a share of the image tokens in (0, 1] (e.g. 0.5) or a whole "
                "number of them (e.g. 384).")  # fmt: skip
        prefix, local = self.regions(num_image_tokens, grid)
        budget = self.tokens(num_image_tokens)
        require(prefix >= 0 and local >= 1,
                f"cache.prefix={prefix} and cache.local={local} must be >= 0 and >= 1 (local holds at least the "
                "token being decoded).")  # fmt: skip
        require(budget > prefix + local,
                f"cache.budget={self.budget} ({budget} of the {num_image_tokens} image tokens of {model_name}) must "
                f"exceed cache.prefix + cache.local = {prefix} + {local}, so that some previous tokens are kept; "
                "raise the budget or shrink the regions.")  # fmt: skip
        if budget >= num_image_tokens:
            advise(f"cache.budget={self.budget:g} keeps all {num_image_tokens} image tokens of {model_name} "
                   f"(budget {budget}), so ADSA drops nothing: it attends like the full cache and stores as much "
                   "plus its bookkeeping. Set cache.budget below 1 as a share (e.g. 0.5) or below "
                   f"{num_image_tokens} as a count.")  # fmt: skip


def inverse_norms(values: torch.Tensor) -> torch.Tensor:
    """1 / max(|v|, eps) in fp32 (F.normalize's convention), stored per slot so no step renormalises."""
    return values.float().norm(dim=-1).clamp(min=NORM_EPS).reciprocal()


def diversity_scores(
    values: torch.Tensor,
    candidates: torch.Tensor,
    reference: torch.Tensor,
    inv_norm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cosine similarity of each entry's value to the reference entries, in fp32, O(M d).

    values (..., M, d); candidates and reference (..., M) bool; ``inv_norm`` (..., M) the stored
    :func:`inverse_norms` (computed here when absent). Two batched mat-vec products: the reference's mean
    unit vector, then every entry against it. Returns (..., M) with +inf outside the candidates (so they are
    never the least similar, and argmin/argmax callers can mask as they need).
    """
    dense = values.float()
    inv = inverse_norms(dense) if inv_norm is None else inv_norm
    weights = reference.to(dense.dtype)
    count = weights.sum(-1, keepdim=True).clamp(min=1)
    mean = (weights * inv / count).unsqueeze(-2) @ dense  # (..., 1, d)
    scores = (mean @ dense.mT).squeeze(-2) * inv  # the row-vector form: see RunningRanking.evict
    return scores.masked_fill(~candidates, float("inf"))


def _share_heads(scores: torch.Tensor, candidates: torch.Tensor, granularity: str) -> torch.Tensor:
    """One ranking per layer: the head-mean score on every head (candidates are equal across heads then)."""
    if granularity == "head":
        return scores
    finite = scores.masked_fill(~candidates, 0).mean(dim=1, keepdim=True).expand_as(scores)
    return finite.masked_fill(~candidates, float("inf"))


class RunningRanking:
    """The per-step eviction of one :class:`BoundedKV` (the paper's setting: ``rank_every: 1``, the per-head
    diverse ranking), kept up to date instead of recomputed.

    Between two steps the reference set changes by one token in and one out: the token that leaves the local
    window (``reference: previous``; for ``cache``, the one written last) enters, and the evicted one leaves.
    So the sum of its unit values (``ref_sum``, (R, H, 1, d)) and a candidate mask (``penalty``, 0 on the
    previous region and -inf elsewhere) take O(d) updates per step, and ranking is one mat-vec product, one
    add and one max, against two products and five mask ops for a ranking from scratch. ``recent`` is a
    ring of the slots that the last ``local`` positions went to, so the token that enters is found without
    a search. A ranking from scratch starts it (the first eviction, or after a rollback).

    The general ranking divides by the reference's size, which is the same for every slot of a (row, head)
    and so leaves the choice unchanged; the running sum's rounding differs from a fresh sum's only in the
    last bits (a near-tie could fall the other way).
    """

    def __init__(self, policy: ADSAPolicy, rows: int, heads: int, slots: int, device) -> None:
        self.policy = policy
        self.lag = policy.local if policy.conf.reference == "previous" else 1
        self.recent = torch.zeros(rows, heads, policy.local, dtype=torch.long, device=device)
        self.penalty = torch.zeros(rows, heads, slots, dtype=torch.float32, device=device)
        self.ref_sum: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.recent, self.penalty))

    def wrote(self, position: int, slot: int | torch.Tensor) -> None:
        """Position ``position`` went to ``slot`` (an int for every row and head, or (R, H, 1))."""
        ring = self.recent[..., position % self.recent.shape[-1]]
        if isinstance(slot, torch.Tensor):
            ring.copy_(slot[..., 0])
        else:
            ring.fill_(slot)

    def evict(self, cache: BoundedKV, new: int) -> torch.Tensor:
        """The slot (R, H, 1) of the most redundant previous token, before position ``new`` is written."""
        values = cache.v if cache.v.dtype == torch.float32 else cache.v.float()
        if self.ref_sum is None:
            previous, reference = self.policy._regions(cache.pos, new)
            self.penalty.zero_().masked_fill_(~previous, float("-inf"))
            self.ref_sum = reference.to(torch.float32).mul_(cache.inv_norm).unsqueeze(-2) @ values
        else:
            ring = self.recent.shape[-1]
            self.ref_sum += self._unit(
                values, cache.inv_norm, self.recent[..., (new - self.lag) % ring, None]
            )
            self.penalty.scatter_(2, self.recent[..., (new - self.policy.local) % ring, None], 0.0)
        # (1, d) @ (d, M) rather than (M, d) @ (d, 1): the same products, but batched GEMM runs the
        # row-vector form about 6x faster on CPU at ADSA's shapes (40 rows x 4 heads x 129 slots x 32)
        scores = (self.ref_sum @ values.mT).squeeze(-2).mul_(cache.inv_norm).add_(self.penalty)
        # max's indices, not argmax: the same first maximum (ties: the lowest slot, as the general ranking),
        # from a reduction about twice as fast over the slots of 160 (row, head) pairs on CPU
        slot = scores.max(dim=-1, keepdim=True).indices
        self.ref_sum -= self._unit(values, cache.inv_norm, slot)
        self.penalty.scatter_(2, slot, float("-inf"))  # the slot now takes the new, local token
        return slot

    @staticmethod
    def _unit(values: torch.Tensor, inv_norm: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """The unit values (R, H, 1, d) of one slot (R, H, 1) per row and head."""
        picked = values.gather(2, slot[..., None].expand(*slot.shape, values.shape[-1]))
        return picked.mul_(inv_norm.gather(2, slot)[..., None])


class BoundedKV:
    """The dynamic KV cache of one layer: condition slots + ``capacity`` image slots, evict-then-write.

    ``pos`` (R, H, slots) holds each slot's absolute position (-1 = empty), per (row, KV head), since rows
    and heads evict independently; keys keep the RoPE of their original position. ``inv_norm`` keeps each
    value's inverse norm, so ranking never renormalises the whole cache. Both count in :attr:`nbytes`.
    """

    def __init__(
        self, policy: ADSAPolicy, rows: int, heads: int, capacity: int, head_dim: int, dtype, device
    ):
        self.policy, self.conf = policy, policy.conf
        self.n_cond = policy.n_cond
        slots = self.n_cond + capacity
        self.k = torch.zeros(rows, heads, slots, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.inv_norm = torch.ones(rows, heads, slots, dtype=torch.float32, device=device)
        index_dtype = torch.int16 if policy.seq_len <= torch.iinfo(torch.int16).max else torch.int32
        self.pos = torch.full((rows, heads, slots), -1, dtype=index_dtype, device=device)
        self.filled = 0  # occupied slots (equal for every row and head)
        self.queue = torch.empty(rows, heads, 0, dtype=torch.long, device=device)  # slots to evict next
        self.queued = 0
        self.newest = -1  # the highest position written so far
        # set by the first rollback or out-of-order write (parallel decoders): slots may be empty (pos -1)
        # anywhere and hold positions in any order, so every write picks its slot and attention is masked
        self.general = False
        evicts = slots < policy.seq_len  # a budget that holds every token keeps no ranking state
        self.running = (
            RunningRanking(policy, rows, heads, slots, device) if policy.per_step and evicts else None
        )

    @property
    def nbytes(self) -> int:
        ranking = self.running.nbytes if self.running is not None else 0
        return ranking + sum(t.numel() * t.element_size() for t in (self.k, self.v, self.inv_norm, self.pos))

    def update(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rows, heads, t, _ = k.shape
        appending = int(pos[0]) >= self.newest + 1 and (t == 1 or self.filled + t <= self.k.shape[2])
        if self.general or not appending:
            return self._update_general(k, v, pos)
        self.newest = int(pos[-1])
        if self.filled + t <= self.k.shape[2]:  # not full: exactly the baseline's append
            end = self.filled + t
            self.k[:, :, self.filled : end] = k.to(self.k.dtype)
            self.v[:, :, self.filled : end] = v.to(self.v.dtype)
            self.inv_norm[:, :, self.filled : end] = inverse_norms(self.v[:, :, self.filled : end])
            self.pos[:, :, self.filled : end] = pos.to(self.pos.device, self.pos.dtype)
            if self.running is not None and end + self.policy.local > self.k.shape[2]:  # ranking starts soon
                for j, position in enumerate(
                    pos.tolist()[-self.policy.local :], start=end - min(t, self.policy.local)
                ):
                    self.running.wrote(position, j)
            self.filled = end
        else:
            if t != 1:
                raise ValueError("a full ADSA cache takes one new token per step")
            new = int(pos[0])
            if self.running is not None:  # the paper's per-step eviction, against a running sum
                slot = self.running.evict(self, new)
                self.running.wrote(new, slot)
            else:
                if self.queued == self.queue.shape[-1]:  # rank afresh every cache.rank_every steps
                    self.queue = self.policy.eviction_order(self.v, self.pos, new, self.inv_norm)
                    self.queued = 0
                slot = self.queue[..., self.queued : self.queued + 1]  # (R, H, 1)
                self.queued += 1
            v = v.to(self.v.dtype)
            index = slot[..., None].expand_as(v)
            self.k.scatter_(2, index, k.to(self.k.dtype))
            self.v.scatter_(2, index, v)
            self.inv_norm.scatter_(2, slot, inverse_norms(v))
            self.pos.scatter_(2, slot, new)
        self.policy.record(self.filled - self.n_cond, self.newest - self.n_cond + 1, rows)
        return self.k[:, :, : self.filled], self.v[:, :, : self.filled], None

    def truncate(self, length: int) -> None:
        """Free the slots of every entry at a position >= ``length`` (evictions they caused are final)."""
        self.general, self.running = True, None  # from here on every write ranks in full (_free_slots)
        self.pos.masked_fill_(self.pos >= length, -1)
        self.newest = min(self.newest, length - 1)

    def _update_general(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write the new tokens (a position already held is replaced in place; the others take empty slots,
        then the most redundant previous tokens' of one ranking), then attend under a mask: an entry is
        visible to a query at or after its position."""
        if not self.general:  # the first such write: the slots past the high-water mark are empty
            self.pos[:, :, self.filled :] = -1
            self.filled, self.general, self.running = self.k.shape[2], True, None
        positions = pos.tolist()
        present = (self.pos.long()[..., None] == pos.to(self.pos.device)).flatten(0, 2).any(0)  # (T,)
        held = (
            present.nonzero().flatten().tolist() if self.pos.device.type != "meta" else []
        )  # ZipAR's stand-ins
        fresh = [j for j in range(len(positions)) if j not in held]
        if fresh:
            slots = self._free_slots(len(fresh), min(positions[j] for j in fresh))  # (R, H, n)
            self._write(slots, k[:, :, fresh], v[:, :, fresh], pos[fresh])
        for j in held:
            entry = self.pos.long()
            same = entry == positions[j]
            slot = torch.where(same.any(-1), same.int().argmax(-1), self._free_slots(1, positions[j])[..., 0])
            self._write(slot[..., None], k[:, :, j : j + 1], v[:, :, j : j + 1], pos[j : j + 1])
        self.newest = max(self.newest, int(pos.max()))
        query = pos.to(self.pos.device)
        entry = self.pos.long()
        visible = (entry[:, :, None, :] >= 0) & (
            entry[:, :, None, :] <= query[None, None, :, None]
        )  # (R,H,T,S)
        if self.pos.device.type != "meta":  # a shape-only (FLOP counting) pass has no entries to count
            image = visible[..., self.n_cond :].sum(-1, dtype=torch.long)  # per (row, head, query)
            cached = int((pos - self.n_cond + 1).clamp(min=0).sum())
            self.policy.record(float(image.float().mean(1).sum(-1).mean()), cached, k.shape[0])
        return self.k, self.v, visible

    def _write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        """Entries (R, H, n, d) at positions ``pos`` (n,) into ``slots`` (R, H, n)."""
        v = v.to(self.v.dtype)
        index = slots[..., None].expand_as(v)
        self.k.scatter_(2, index, k.to(self.k.dtype))
        self.v.scatter_(2, index, v)
        self.inv_norm.scatter_(2, slots, inverse_norms(v))
        self.pos.scatter_(2, slots, pos.to(self.pos.device, self.pos.dtype)[None, None].expand_as(slots))

    def _free_slots(self, n: int, current: int) -> torch.Tensor:
        """(R, H, n) distinct slots for new tokens from position ``current`` on: empty image slots first, then
        the most redundant previous tokens; only if those run short, the oldest other image tokens (local,
        then prefix). Condition slots are never taken."""
        entry = self.pos.long()
        image = torch.arange(entry.shape[-1], device=entry.device) >= self.n_cond
        empty = (entry < 0) & image
        scores = self.policy.eviction_scores(
            self.v, entry, current, self.inv_norm
        )  # -inf off the previous region
        big = 1e12
        beyond_prefix = entry >= self.n_cond + self.policy.prefix
        key = torch.where(beyond_prefix, big + entry.float(), 2 * big + entry.float())
        key = torch.where(torch.isfinite(scores), -scores, key)
        key = torch.where(empty, -2 * big + image.float().cumsum(0), key)
        key = key.masked_fill(~image, float("inf"))
        return key.topk(n, dim=-1, largest=False).indices


class SparseKV:
    """The full cache of one layer; each step attends to prefix + the most diverse previous + local."""

    def __init__(self, policy: ADSAPolicy, rows: int, heads: int, length: int, head_dim: int, dtype, device):
        self.policy, self.conf = policy, policy.conf
        self.k = torch.zeros(rows, heads, length, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0
        self.chosen: torch.Tensor | None = None  # the kept previous slots of the last ranking

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v))

    def update(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        start, t = int(pos[0]), k.shape[2]
        self.k[:, :, start : start + t] = k.to(self.k.dtype)
        self.v[:, :, start : start + t] = v.to(self.v.dtype)
        self.length = start + t
        keys, values = self.k[:, :, : self.length], self.v[:, :, : self.length]
        n_img = self.length - self.policy.n_cond
        budget = self.policy.budget
        if n_img <= budget:
            self.policy.record(max(n_img, 0), max(n_img, 0), k.shape[0])
            return keys, values, None
        if t != 1:
            raise ValueError("sparse ADSA selection runs one new token per step")
        if (n_img - budget - 1) % self.conf.rank_every == 0:  # the first selecting step ranks
            self.chosen = self.policy.choose_previous(values, self.length)
        keep = self.policy.kept_slots(self.chosen, self.length)  # (R, H, n_cond + budget), ascending
        index = keep[..., None].expand(-1, -1, -1, keys.shape[-1])
        self.policy.record(budget, n_img, k.shape[0])
        return keys.gather(2, index), values.gather(2, index), None


def check_adsa(conf: ADSAConf, run) -> None:
    m = run.model
    conf.check(m.arch.block_size, m.arch.grid_size, f"model={m.name}")


@register("cache", "adsa", schema=ADSAConf, families=("llamagen",), check=check_adsa)
class ADSAPolicy(CausalPolicy):
    """Supplies ADSA's KV caches to the AR sampler; the model attends to whatever they return."""

    name = "adsa"

    def __init__(self, conf: ADSAConf) -> None:
        super().__init__(conf)
        self.n_cond, self.prefix, self.local, self.seq_len, self.budget = 1, 0, 1, 0, 0
        self.caches: list[BoundedKV | SparseKV] = []

    def kv_caches(self, model, rows: int, device: torch.device) -> list:
        arch = model.arch
        self.n_cond, self.seq_len = model.cls_token_num, model.seq_len
        self.prefix, self.local = self.conf.regions(model.num_image_tokens, arch.grid_size)
        self.budget = self.conf.tokens(model.num_image_tokens)
        dtype = model.tok_embeddings.weight.dtype
        if self.conf.mode == "dynamic":
            capacity = min(self.budget, model.num_image_tokens)  # a larger budget never evicts
            make = lambda: BoundedKV(self, rows, arch.kv_heads, capacity, arch.head_dim, dtype, device)  # noqa: E731
        else:
            make = lambda: SparseKV(self, rows, arch.kv_heads, model.seq_len, arch.head_dim, dtype, device)  # noqa: E731
        self.caches = [make() for _ in model.layers]
        return self.caches

    def decode(self, model, tokens: torch.Tensor, pos: int, caches: list, ctx: StepContext) -> torch.Tensor:
        self.stats.full_steps += 1  # the caches count what each layer attends to (record)
        return model.step(tokens, pos, caches)

    def decode_many(
        self, model, tokens: torch.Tensor, pos: torch.Tensor, caches: list, ctx: StepContext
    ) -> torch.Tensor:
        if self.conf.mode != "dynamic":
            raise ValueError(
                "cache.mode=sparse selects per single-token step; parallel decoders need dynamic"
            )
        self.stats.full_steps += 1
        return model.decode(tokens, pos, caches)

    def record(self, attended: float, cached: int, rows: int) -> None:
        """One layer's attention at one step: image tokens attended vs. those a full cache would hold."""
        self.stats.attended_tokens += round(rows * attended)
        self.stats.context_tokens += rows * cached

    # ---- ranking ---------------------------------------------------------------------------------------
    def _regions(self, pos: torch.Tensor, current: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate (previous-region) and reference masks of slots holding absolute positions ``pos``.

        ``current`` is the newest position (it is local); empty slots hold -1 and fall outside both.
        """
        previous = (pos >= self.n_cond + self.prefix) & (pos <= current - self.local)
        reference = previous if self.conf.reference == "previous" else pos >= self.n_cond
        return previous, reference

    def _rank(self, values, previous, reference, pos, inv_norm=None) -> torch.Tensor:
        """Scores where *larger* means evict / drop first."""
        if self.conf.select == "oldest":  # keep the most recent previous tokens
            return (-pos.float()).masked_fill(~previous, float("-inf"))
        scores = diversity_scores(values, previous, reference, inv_norm)
        return _share_heads(scores, previous, self.conf.granularity).masked_fill(~previous, float("-inf"))

    def eviction_order(
        self, values: torch.Tensor, pos: torch.Tensor, new_pos: int, inv_norm: torch.Tensor
    ) -> torch.Tensor:
        """Slots (R, H, n) to overwrite next, most redundant previous token first, from one ranking.

        n = ``rank_every`` (capped by the previous region's size): queued slots stay previous tokens until
        they are overwritten, because a token only leaves the previous region by eviction.
        """
        n = min(self.conf.rank_every, pos.shape[-1] - self.n_cond - self.prefix - self.local)
        scores = self.eviction_scores(values, pos, new_pos, inv_norm)  # budget > prefix + local (check)
        if n == 1:
            return scores.argmax(dim=-1, keepdim=True)  # ties: the lowest slot
        return scores.topk(n, dim=-1).indices

    @property
    def per_step(self) -> bool:
        """The paper's per-step eviction with the per-head diverse ranking, which the dynamic cache keeps
        up to date (:class:`RunningRanking`); other settings rank in full (:meth:`eviction_order`)."""
        c = self.conf
        return c.mode == "dynamic" and c.rank_every == 1 and c.select == "diverse" and c.granularity == "head"

    def eviction_scores(
        self, values: torch.Tensor, pos: torch.Tensor, new_pos: int, inv_norm: torch.Tensor
    ) -> torch.Tensor:
        """(R, H, slots): larger = evict first; -inf outside the previous region of ``new_pos``."""
        previous, reference = self._regions(pos, new_pos)
        return self._rank(values, previous, reference, pos, inv_norm)

    def choose_previous(self, values: torch.Tensor, length: int) -> torch.Tensor:
        """Sparse mode: the ``budget - prefix - local`` least redundant previous slots (R, H, K)."""
        rows, heads, slots = values.shape[:3]
        pos = torch.arange(slots, device=values.device).expand(rows, heads, -1)
        previous, reference = self._regions(pos, length - 1)
        drop_first = self._rank(values, previous, reference, pos).masked_fill(~previous, float("inf"))
        return drop_first.topk(self.budget - self.prefix - self.local, dim=-1, largest=False).indices

    def kept_slots(self, chosen: torch.Tensor, length: int) -> torch.Tensor:
        """Sparse mode: ascending slots (R, H, n_cond + budget) to attend to: condition, prefix, the chosen
        previous slots and the local window (which slides on between rankings)."""
        pos = torch.arange(length, device=chosen.device).expand(*chosen.shape[:2], -1)
        previous, _ = self._regions(pos, length - 1)
        keep = (~previous).scatter(-1, chosen, True)  # condition, prefix and local slots are always kept
        order = keep.to(torch.int8).argsort(dim=-1, descending=True, stable=True)
        return order[..., : self.n_cond + self.budget].sort(dim=-1).values
