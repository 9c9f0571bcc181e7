"""Lightning ``fit`` modules for the models lazygen trains itself (tiny_mar, tiny_llamagen and the digits16
evaluator).

MAR's objective, from its definition: a random order per image, a masking ratio drawn from a truncated
normal on [mask_ratio_min, 1] (one per batch, so every image has the same number of known tokens), label
dropout to the fake class for CFG, and the diffusion loss on the masked tokens only, each repeated
``diffusion_batch_mul`` times with its own timestep and noise. LlamaGen's objective, from its definition:
teacher-forced next-token cross-entropy over every image token, with the class label dropped to the null
class with probability ``label_drop_prob`` (its ``class_dropout_prob``, what makes CFG possible). An EMA of
the weights is what gets shipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lazygen.models.llamagen.gpt import LlamaGen
from lazygen.models.mar.mar import MAR

NO_DECAY_NDIM = 1  # biases, norms and other vectors take no weight decay


@dataclass
class RecipeConf:
    """Optimisation settings of ``python -m lazygen.train`` (``recipe=mar``, ``llamagen`` or ``evaluator``)."""

    target: str = "mar"  # mar | llamagen | evaluator
    max_steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # cosine (to zero at max_steps) | constant
    warmup_steps: int = 200
    weight_decay: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 3.0
    ema_decay: float = 0.999
    label_drop_prob: float = 0.1  # mar, llamagen: the class is replaced by the null class (for CFG)
    mask_ratio_min: float = 0.7  # mar only
    mask_ratio_std: float = 0.25  # mar only
    diffusion_batch_mul: int = 4  # mar only
    augment_shift: int = 0  # evaluator, llamagen, tokenizer: random translation by up to this many pixels
    kl_weight: float = 0.0  # tokenizer only: weight of the KL to N(0, I) per latent element
    posterior: str = "sample"  # mar with a KL tokenizer: train on posterior samples (official) or means
    posterior_noise: float = 1.0  # posterior=sample: the posterior std is multiplied by this (official: 1)
    log_every: int = 50
    checkpoint_every: int = 500  # steps between <run dir>/checkpoints/last.ckpt updates (for resuming)
    num_threads: int | None = None


def truncated_normal(low: float, high: float, loc: float, scale: float, generator: torch.Generator) -> float:
    """One draw of N(loc, scale^2) restricted to [low, high], by inverting the normal CDF."""
    cdf = lambda v: 0.5 * (1 + math.erf((v - loc) / (scale * math.sqrt(2))))  # noqa: E731
    u = cdf(low) + torch.rand((), generator=generator).item() * (cdf(high) - cdf(low))
    value = loc + scale * math.sqrt(2) * torch.erfinv(torch.tensor(2 * u - 1, dtype=torch.float64)).item()
    return min(max(value, low), high)


def param_groups(module: nn.Module, weight_decay: float, skip: tuple[str, ...] = ()) -> list[dict]:
    """AdamW groups: weight decay on matrices only, none on vectors or on parameters named in ``skip``."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        quiet = p.ndim <= NO_DECAY_NDIM or name.endswith(".bias") or any(s in name for s in skip)
        (no_decay if quiet else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, recipe: RecipeConf) -> float:
    """Linear warm-up, then constant or cosine decay to zero at ``max_steps``."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    if recipe.lr_schedule == "constant":
        return 1.0
    progress = (step - recipe.warmup_steps) / max(1, recipe.max_steps - recipe.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """Exponential moving average of a module's floating-point state, with the usual early ramp."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1 - decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}


class _FitModule(L.LightningModule):
    """Shared optimiser, LR schedule, EMA, augmentation and loss logging of the recipes."""

    net: nn.Module
    no_decay_names: tuple[str, ...] = ()

    def __init__(self, recipe: RecipeConf, seed: int) -> None:
        super().__init__()
        self.recipe = recipe
        self.rng = torch.Generator().manual_seed(seed)
        self.ema: EMA | None = None
        self.losses: list[float] = []

    def on_fit_start(self) -> None:
        if self.ema is None:
            self.ema = EMA(self.net, self.recipe.ema_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Resuming needs the EMA, the data-independent RNG stream and the loss history too."""
        checkpoint["lazygen"] = {"ema": self.ema.shadow, "ema_updates": self.ema.updates,
                                 "rng": self.rng.get_state(), "losses": self.losses}  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["lazygen"]
        self.ema = EMA(self.net, self.recipe.ema_decay)
        self.ema.shadow, self.ema.updates = state["ema"], state["ema_updates"]
        self.rng.set_state(state["rng"])
        self.losses = list(state["losses"])

    def configure_optimizers(self):
        r = self.recipe
        opt = torch.optim.AdamW(
            param_groups(self.net, r.weight_decay, self.no_decay_names), lr=r.lr, betas=(r.beta1, r.beta2)
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, r))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_step(self, *args, **kwargs) -> None:
        # here rather than in on_train_batch_end, which runs after the checkpoint callback has saved
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Random translations by up to ``augment_shift`` pixels, the border filled with background (-1)."""
        shift = self.recipe.augment_shift
        if shift == 0:
            return images
        pad = F.pad(images, (shift,) * 4, value=-1.0)
        size = images.shape[-1]
        out = torch.empty_like(images)
        offsets = torch.randint(0, 2 * shift + 1, (images.shape[0], 2), generator=self.rng).tolist()
        for i, (dy, dx) in enumerate(offsets):
            out[i] = pad[i, :, dy : dy + size, dx : dx + size]
        return out

    def log_loss(self, loss: torch.Tensor) -> None:
        self.losses.append(float(loss.detach()))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)


class MARFitModule(_FitModule):
    """MAR's masked diffusion objective on pixel tokens."""

    no_decay_names = ("diffloss",)  # the official recipe leaves the diffusion head undecayed

    def __init__(self, model: MAR, tokenizer: nn.Module, recipe: RecipeConf, seed: int) -> None:
        super().__init__(recipe, seed)
        self.net = model
        self.tokenizer = tokenizer

    def masked_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        model, r, gen = self.net, self.recipe, self.rng
        with torch.no_grad():  # the tokenizer is frozen; its posterior noise comes from the recipe's stream
            latent = self.tokenizer.encode_to_latent(
                images, generator=gen, sample=r.posterior == "sample", noise_scale=r.posterior_noise
            )
            tokens = model.patchify(latent)
        n, seq_len, _ = tokens.shape
        ratio = truncated_normal(r.mask_ratio_min, 1.0, 1.0, r.mask_ratio_std, gen)
        num_masked = min(seq_len, math.ceil(seq_len * ratio))
        orders = torch.argsort(torch.rand(n, seq_len, generator=gen), dim=1).to(tokens.device)
        masked, known = orders[:, :num_masked], orders[:, num_masked:].sort(dim=1).values
        drop = (torch.rand(n, generator=gen) < r.label_drop_prob).to(tokens.device).unsqueeze(1)
        cond = torch.where(drop, model.null_condition(n), model.class_condition(labels, n))
        z = model.conditions(tokens, model.visible_rows(known), cond)
        z_masked = z.gather(1, masked.unsqueeze(-1).expand(-1, -1, z.shape[-1])).flatten(0, 1)
        target = tokens.gather(1, masked.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])).flatten(0, 1)
        mul = r.diffusion_batch_mul
        return model.diffloss.loss(target.repeat(mul, 1), z_masked.repeat(mul, 1), generator=gen)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.masked_loss(*batch)
        self.log_loss(loss)
        return loss


class ARFitModule(_FitModule):
    """LlamaGen's next-token objective on discrete image tokens (raster order), teacher-forced."""

    def __init__(self, model: LlamaGen, tokenizer: nn.Module, recipe: RecipeConf, seed: int) -> None:
        super().__init__(recipe, seed)
        self.net = model
        self.tokenizer = tokenizer

    def next_token_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        model, r = self.net, self.recipe
        idx = self.tokenizer.encode(self.augment(images))  # (B, S) token ids
        if r.label_drop_prob > 0:  # the official class dropout: the null class row, for CFG
            drop = (torch.rand(len(labels), generator=self.rng) < r.label_drop_prob).to(labels.device)
            labels = torch.where(drop, torch.full_like(labels, model.null_class), labels)
        logits = model(idx, labels)[:, :-1]  # logit i predicts image token i; the last one predicts nothing
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx.reshape(-1))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.next_token_loss(*batch)
        self.log_loss(loss)
        return loss


class AutoencoderFitModule(_FitModule):
    """A KL autoencoder's objective: pixel MSE of the reconstruction from a posterior sample, plus
    ``kl_weight`` times the KL to N(0, I) per latent element.

    The KL term keeps the posterior noise large enough that the decoder learns to map nearby latents to the
    same clean image: that is what lets a generator's small per-token errors decode to clean strokes.
    """

    def __init__(self, autoencoder: nn.Module, recipe: RecipeConf, seed: int) -> None:
        super().__init__(recipe, seed)
        self.net = autoencoder

    def autoencoder_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction MSE, mean KL per latent element)."""
        posterior = self.net.encode(images)
        eps = torch.randn(posterior.mean.shape, generator=self.rng).to(posterior.mean.device)
        recon = self.net.decode(posterior.mean + posterior.std * eps)
        kl = 0.5 * (posterior.mean.square() + posterior.logvar.exp() - 1 - posterior.logvar).mean()
        return F.mse_loss(recon, images), kl

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        mse, kl = self.autoencoder_loss(self.augment(batch[0]))
        loss = mse + self.recipe.kl_weight * kl
        self.log_loss(loss)
        self.log("train/kl", kl, on_step=True, on_epoch=False)
        return loss


class ClassifierFitModule(_FitModule):
    """Cross-entropy on real digits, with small random translations for robustness."""

    def __init__(self, classifier: nn.Module, recipe: RecipeConf, seed: int) -> None:
        super().__init__(recipe, seed)
        self.net = classifier

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self.net.classify(self.augment(images))
        loss = F.cross_entropy(logits, labels)
        self.log_loss(loss)
        return loss
