"""Respaced Gaussian diffusion with a cosine schedule and learned-range variance.

This is the sampling half of the IDDPM/DiT diffusion that MAR's DiffLoss uses, written from its
definition: the schedule arrays are computed in float64 and gathered per step as float32, the network sees
the *original* timesteps, and the variance interpolates between the clipped posterior log-variance and
log(beta) of the respaced schedule. The sampler owns the noise: ``p_sample_loop`` asks a callback for the
noise of every step, so that different RNG protocols (official global streams, per-sample generators) can
be plugged in without touching the maths.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

TRAIN_TIMESTEPS = 1000
MIN_SAMPLING_STEPS = 2  # a respaced chain with learned variance needs two steps
COSINE_OFFSET = 0.008  # the "s" of the improved-DDPM cosine schedule
MAX_BETA = 0.999

# net(x_t, original_timesteps) -> (rows, 2 * channels): eps and variance-interpolation values.
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# noise_fn(step_index, like) -> noise with the shape, dtype and device of ``like``.
NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]


def cosine_betas(num_steps: int = TRAIN_TIMESTEPS) -> np.ndarray:
    """Betas of the cosine schedule: beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), MAX_BETA) for i in range(num_steps)
    ]
    return np.array(betas, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | int) -> list[int]:
    """Kept timesteps for a respacing such as ``"100"`` or ``"10,15,20"`` (sorted ascending).

    The original steps are split into equal sections, and each section is walked with a fractional stride
    whose running sum is rounded with Python's (banker's) ``round``; the accumulation matters for parity.
    """
    counts = [int(c) for c in str(section_counts).split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    kept: set[int] = set()
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1 or count > size:
            raise ValueError(f"cannot take {count} steps from a section of {size} diffusion steps")
        stride = (size - 1) / (count - 1) if count > 1 else 1
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride
        start += size
    return sorted(kept)


class SpacedDiffusion:
    """A diffusion process restricted to a subset of the training timesteps."""

    def __init__(
        self,
        num_sampling_steps: str | int,
        train_steps: int = TRAIN_TIMESTEPS,
        x0_range: tuple[float, float] | None = None,
        max_timestep: int | None = None,
    ) -> None:
        self.x0_range = x0_range  # clamp predicted x0 while sampling (bounded data only)
        self.max_timestep = max_timestep
        base_alphas_cumprod = np.cumprod(1.0 - cosine_betas(train_steps))
        kept_steps = space_timesteps(train_steps, num_sampling_steps)
        if max_timestep is not None:  # DiSA: the chain starts at max_timestep; clipped steps merge
            kept_steps = sorted({min(t, max_timestep) for t in kept_steps})
        self.timestep_map = kept_steps
        kept = set(self.timestep_map)
        betas, last = [], 1.0
        for i, acp in enumerate(base_alphas_cumprod):
            if i in kept:
                betas.append(1 - acp / last)
                last = acp
        self.betas = np.array(betas, dtype=np.float64)
        self.num_timesteps = len(self.betas)
        if self.num_timesteps < 2:
            raise ValueError(
                "a respaced diffusion needs at least 2 steps (the clipped log-variance uses step 1)"
            )

        alphas = 1.0 - self.betas
        acp = np.cumprod(alphas)
        acp_prev = np.append(1.0, acp[:-1])
        self.alphas_cumprod = acp
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / acp)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / acp - 1)
        posterior_variance = self.betas * (1.0 - acp_prev) / (1.0 - acp)
        # the variance at step 0 is 0; the clipped log uses step 1's value there
        self.posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        self.posterior_mean_coef1 = self.betas * np.sqrt(acp_prev) / (1.0 - acp)
        self.posterior_mean_coef2 = (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp)
        self.log_betas = np.log(self.betas)
        self.sqrt_alphas_cumprod = np.sqrt(acp)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - acp)
        self._tables: dict[tuple[str, torch.device], torch.Tensor] = {}  # training-time gathers
        # Per-step coefficients rounded to float32 once (the reference gathers float64 and casts each
        # step); as Python floats they multiply float32 tensors without creating tensors in the loop.
        self._coef = {
            name: [float(np.float32(v)) for v in getattr(self, name)]
            for name in (
                "posterior_log_variance_clipped",
                "log_betas",
                "sqrt_recip_alphas_cumprod",
                "sqrt_recipm1_alphas_cumprod",
                "posterior_mean_coef1",
                "posterior_mean_coef2",
            )
        }

    def with_steps(self, num_sampling_steps: int) -> SpacedDiffusion:
        """The same process (data bounds, starting timestep) respaced to ``num_sampling_steps`` steps."""
        return SpacedDiffusion(
            str(num_sampling_steps), x0_range=self.x0_range, max_timestep=self.max_timestep
        )

    @staticmethod
    def _model_mean_log_variance(
        x: torch.Tensor, out: torch.Tensor, c: dict, x0_range: tuple[float, float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean from the predicted eps and the learned-range log-variance.

        ``c`` holds the step's coefficients: Python floats when sampling one step for every row, (rows, 1)
        tensors when training rows sit at different timesteps. ``x0_range`` clamps the predicted x0 (off
        for MAR's unbounded VAE latents, as in the official code).
        """
        channels = x.shape[1]
        eps, var_values = out[:, :channels], out[:, channels:]
        frac = (var_values + 1) / 2
        log_variance = frac * c["log_betas"] + (1 - frac) * c["posterior_log_variance_clipped"]
        x0 = c["sqrt_recip_alphas_cumprod"] * x - c["sqrt_recipm1_alphas_cumprod"] * eps
        if x0_range is not None:
            x0 = x0.clamp(*x0_range)
        return c["posterior_mean_coef1"] * x0 + c["posterior_mean_coef2"] * x, log_variance

    def p_sample(
        self, denoise: DenoiseFn, x: torch.Tensor, k: int, noise: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """One ancestral step x_k -> x_{k-1} (eps prediction, learned-range variance, x0 clamped only when
        ``x0_range`` is set)."""
        t = torch.full((x.shape[0],), self.timestep_map[k], dtype=torch.long, device=x.device)
        c = {name: values[k] for name, values in self._coef.items()}
        mean, log_variance = self._model_mean_log_variance(x, denoise(x, t), c, self.x0_range)
        if k == 0:  # the last step adds no noise (the noise is still drawn, as in the reference)
            return mean
        return mean + torch.exp(0.5 * log_variance) * noise * temperature

    @property
    def flop_key(self) -> tuple[str, int]:
        """What FLOP counting needs to tell two processes apart: the number of steps."""
        return ("SpacedDiffusion", self.num_timesteps)

    def _gather(self, name: str, k: torch.Tensor) -> torch.Tensor:
        """Per-row coefficient (rows, 1): float64 table gathered, then cast to float32 (IDDPM's habit)."""
        key = (name, k.device)
        if key not in self._tables:
            self._tables[key] = torch.from_numpy(np.asarray(getattr(self, name), dtype=np.float64)).to(
                k.device
            )
        return self._tables[key][k].float().unsqueeze(1)

    def training_loss(
        self, denoise: DenoiseFn, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Per-row loss of the learned-sigma objective: MSE on eps plus the variational bound term.

        The bound uses the predicted eps detached, so it only trains the variance; at k = 0 it is the
        discretized Gaussian likelihood of x0, elsewhere KL(q(x_{k-1}|x_k, x0) || p(x_{k-1}|x_k)), in bits.
        """
        x_t = (
            self._gather("sqrt_alphas_cumprod", k) * x0
            + self._gather("sqrt_one_minus_alphas_cumprod", k) * noise
        )
        t = torch.as_tensor(self.timestep_map, device=k.device)[k]
        out = denoise(x_t, t)
        channels = x0.shape[1]
        mse = (noise - out[:, :channels]).pow(2).mean(dim=1)
        frozen = torch.cat([out[:, :channels].detach(), out[:, channels:]], dim=1)
        c = {name: self._gather(name, k) for name in self._coef}
        mean, log_variance = self._model_mean_log_variance(x_t, frozen, c)
        true_mean = c["posterior_mean_coef1"] * x0 + c["posterior_mean_coef2"] * x_t
        kl = normal_kl(true_mean, c["posterior_log_variance_clipped"], mean, log_variance).mean(dim=1)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance).mean(dim=1)
        vb = torch.where(k == 0, nll, kl) / math.log(2.0)
        return mse + vb

    def p_sample_loop(
        self, denoise: DenoiseFn, x_init: torch.Tensor, noise_fn: NoiseFn, temperature: float = 1.0
    ) -> torch.Tensor:
        """Run the chain from k = T-1 down to 0; ``noise_fn(k, x)`` supplies each step's noise."""
        x = x_init
        for k in reversed(range(self.num_timesteps)):
            x = self.p_sample(denoise, x, k, noise_fn(k, x), temperature)
        return x


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


DATA_BIN = 1.0 / 255.0  # half-width of a uint8 bin in [-1, 1] data
DATA_EDGE = 0.999  # values beyond this are the open-ended end bins
LOG_EPS = 1e-12


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Log-probability of x in [-1, 1] under a Gaussian integrated over its uint8 bin (IDDPM's decoder)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + DATA_BIN))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - DATA_BIN))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=LOG_EPS))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=LOG_EPS))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=LOG_EPS))
    return torch.where(
        x < -DATA_EDGE, log_cdf_plus, torch.where(x > DATA_EDGE, log_one_minus_cdf_min, log_delta)
    )
