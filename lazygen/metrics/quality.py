"""Image quality: FID, Inception Score and PSNR, with a pluggable feature extractor.

Why this module instead of torchmetrics' ``FrechetInceptionDistance``/``InceptionScore``: importing
``torchmetrics.image.fid`` needs torch-fidelity (and so torchvision), which the CPU machines cannot
install; its IS uses an unseeded permutation; and FID against ADM's precomputed ``mu``/``sigma`` needs
state injection that double-counts under DDP. Here the extractor is any module (the real one,
:class:`InceptionV3Extractor`, is imported lazily), FID compares running float64 sums with either an
ADM-style npz or real images, and IS follows torch-fidelity's ``isc_features_to_metric`` exactly
(seeded ``numpy`` permutation, equal contiguous splits, population std), so it is deterministic.

:class:`QualityMeter` is a torchmetrics ``Metric``: under DDP, ``compute()`` sums the FID moments and
concatenates the IS logits of all ranks. It is a collective, so every rank must call it.

Comparability with published numbers needs the TF-ported InceptionV3 (torch-fidelity, TF1-style resize),
uint8 inputs, N = 50k and the reference stats of the same extractor; record these in the run config.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from lazygen.errors import ConfigError

PIXEL_MAX = 255.0  # uint8 data range, for PSNR
DECIBELS_PER_LOG10 = 10.0
IMAGE_CHANNELS = 3
IMAGE_DIMS = 4  # (N, C, H, W)
MIN_SAMPLES_FOR_COVARIANCE = 2  # ddof=1 covariance needs two samples

DEFAULT_IS_SPLITS = 10  # torch-fidelity / torchmetrics default
DEFAULT_IS_SEED = 2020  # torch-fidelity's rng_seed default; None disables the shuffle

SQRTM_METHODS = ("auto", "scipy", "torch")
SQRTM_EPS = 1e-6  # ADM's diagonal offset when sqrtm(sigma1 @ sigma2) is not finite

REF_MU_KEY = "mu"
REF_SIGMA_KEY = "sigma"

INCEPTION_FEATURE_LAYER = "2048"  # pool_3 features, for FID
INCEPTION_LOGITS_LAYER = "logits_unbiased"  # fc logits without bias, for IS (torch-fidelity default)
INCEPTION_NUM_FEATURES = 2048
INCEPTION_NUM_CLASSES = 1008
INCEPTION_EXTRACTOR_NAME = "inception-v3-compat"
INCEPTION_WEIGHTS_ENV = "LAZYGEN_INCEPTION_WEIGHTS"

FID_KEY = "quality/fid"
IS_MEAN_KEY = "quality/is_mean"
IS_STD_KEY = "quality/is_std"
CLASS_ACC_KEY = "quality/class_acc"
STANDARD_ERROR_SUFFIX = "_se"  # quality/fid_se, quality/class_acc_se: bootstrap standard errors
DEFAULT_BOOTSTRAP = 100  # resamples of the generated images behind each standard error
DIFF_SUFFIX = "_diff"  # quality/fid_diff: a run's value minus its same-seed baseline's (paired_differences)

EXTRACTOR_ATTR = "extractor"


# --------------------------------------------------------------------------------------- extractors


class ExtractorOutput(NamedTuple):
    """What a feature extractor returns for a batch of N images."""

    features: Tensor  # (N, F): FID features
    logits: Tensor  # (N, C): classifier logits, for IS


@runtime_checkable
class FeatureExtractor(Protocol):
    """An ``nn.Module`` mapping uint8 images (N, 3, H, W) to features and logits.

    It returns an :class:`ExtractorOutput`, a ``(features, logits)`` tuple, or a mapping with keys
    ``"features"`` and ``"logits"``, and declares ``num_features`` (F) so that the metric can size its
    states before the first batch (every DDP rank needs them, even one that sees no images).
    """

    num_features: int

    def __call__(self, images: Tensor) -> ExtractorOutput | tuple[Tensor, Tensor] | Mapping[str, Tensor]: ...


def split_extractor_output(output: Any) -> ExtractorOutput:
    """Normalise the three accepted extractor return types to :class:`ExtractorOutput`."""
    if isinstance(output, ExtractorOutput):
        return output
    if isinstance(output, Mapping):
        if "features" not in output or "logits" not in output:
            raise ConfigError(
                f"The feature extractor returned a mapping with keys {sorted(output)}, but quality metrics need "
                "'features' (for FID) and 'logits' (for IS). Make the extractor return both keys."
            )
        return ExtractorOutput(output["features"], output["logits"])
    if isinstance(output, (tuple, list)) and len(output) == len(ExtractorOutput._fields):
        return ExtractorOutput(*output)
    raise ConfigError(
        f"The feature extractor returned {type(output).__name__}, but quality metrics need (features, logits). "
        "Make the extractor return a (features, logits) tuple or a dict with those keys."
    )


def _num_features(extractor: nn.Module) -> int:
    value = getattr(extractor, "num_features", None)
    if isinstance(value, Tensor) and value.numel() == 1:
        value = int(value.item())
    if not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"The feature extractor {type(extractor).__name__} has no positive integer `num_features` "
            f"(got {value!r}); the quality metrics need it to size their statistics. Set `num_features` "
            "on the extractor to the width of the features it returns."
        )
    return value


class InceptionV3Extractor(nn.Module):
    """torch-fidelity's TF-ported InceptionV3: pool_3 features (2048) and unbiased logits (1008).

    This is the extractor behind published FID/IS numbers (ADM, MAR, LlamaGen). It takes uint8 images of
    any size and resizes them to 299 with TF1-style bilinear interpolation internally. It stays in eval
    mode whatever ``train()`` is called with, because its BatchNorm statistics are part of the metric.
    """

    num_features: int = INCEPTION_NUM_FEATURES
    num_classes: int = INCEPTION_NUM_CLASSES

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        """``weights_path`` defaults to ``$LAZYGEN_INCEPTION_WEIGHTS``, then to the torch hub download."""
        super().__init__()
        weights_path = weights_path or os.environ.get(INCEPTION_WEIGHTS_ENV) or None
        if weights_path is not None and not Path(weights_path).is_file():
            raise ConfigError(
                f"The InceptionV3 weights file {str(weights_path)!r} does not exist. Point the extractor's "
                f"weights_path (e.g. via ${INCEPTION_WEIGHTS_ENV}) at a local copy of "
                "weights-inception-2015-12-05-6726825d.pth, or leave it unset to use the torch hub cache."
            )
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except (ImportError, OSError, RuntimeError, AttributeError) as err:
            raise ConfigError(
                f"The InceptionV3 feature extractor needs torch-fidelity, which could not be imported ({err}). "
                "Install it with `pip install 'lazygen[eval]'` on a machine that has torchvision (a GPU box), "
                "or choose another feature extractor for the quality metrics."
            ) from err
        try:
            self.net = FeatureExtractorInceptionV3(
                INCEPTION_EXTRACTOR_NAME,
                [INCEPTION_FEATURE_LAYER, INCEPTION_LOGITS_LAYER],
                feature_extractor_weights_path=None if weights_path is None else str(weights_path),
            )
        except (OSError, RuntimeError, ValueError) as err:
            raise ConfigError(
                f"Could not load the InceptionV3 weights ({err}). Offline machines cannot download them: copy "
                "weights-inception-2015-12-05-6726825d.pth to the machine and pass it as weights_path (e.g. via "
                f"${INCEPTION_WEIGHTS_ENV}), or pre-seed $TORCH_HOME/hub/checkpoints/."
            ) from err

    def train(self, mode: bool = True) -> InceptionV3Extractor:
        """Ignore ``mode``: a frozen metric network must never switch BatchNorm to batch statistics."""
        return super().train(False)

    def forward(self, images: Tensor) -> ExtractorOutput:
        features, logits = self.net(images)
        return ExtractorOutput(features, logits)


# --------------------------------------------------------------------------------------- Fréchet distance


def compute_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased (ddof=1) covariance of (N, F) features, in float64, as torch-fidelity/ADM."""
    if features.ndim != 2 or features.shape[0] < MIN_SAMPLES_FOR_COVARIANCE:
        raise ValueError(f"compute_stats needs (N >= 2, F) features, got shape {tuple(features.shape)}")
    feats = features.detach().to(torch.float64)
    return feats.mean(dim=0), torch.cov(feats.T, correction=1)


def stats_from_sums(total: Tensor, outer: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Mean and ddof=1 covariance from running sums: sum x, sum x x^T and N (what DDP can add up)."""
    if count < MIN_SAMPLES_FOR_COVARIANCE:
        raise ValueError(f"stats_from_sums needs at least {MIN_SAMPLES_FOR_COVARIANCE} samples, got {count}")
    total = total.to(torch.float64)
    mu = total / count
    sigma = (outer.to(torch.float64) - torch.outer(total, mu)) / (count - 1)
    return mu, sigma


def load_reference_stats(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Read ``mu`` (F,) and ``sigma`` (F, F) from an ADM-style npz, as float64 CPU tensors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"The FID reference statistics file {str(path)!r} does not exist. Download ADM's "
            "VIRTUAL_imagenet256_labeled.npz (or compute stats of your real set with save_reference_stats) and "
            "point metrics.quality.reference_stats at it, or set it to null (no FID, or FID against real images)."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            missing = {REF_MU_KEY, REF_SIGMA_KEY} - keys
            if missing:
                raise ConfigError(
                    f"The FID reference statistics file {str(path)!r} lacks the keys {sorted(missing)} (it has "
                    f"{sorted(keys)}). Use an ADM-style npz with '{REF_MU_KEY}' (F,) and '{REF_SIGMA_KEY}' (F, F), "
                    "e.g. VIRTUAL_imagenet256_labeled.npz."
                )
            mu = torch.from_numpy(np.asarray(data[REF_MU_KEY], dtype=np.float64))
            sigma = torch.from_numpy(np.asarray(data[REF_SIGMA_KEY], dtype=np.float64))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"Could not read the FID reference statistics {str(path)!r} as an npz file ({err}). Re-download it "
            "or recompute it with save_reference_stats."
        ) from err
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ConfigError(
            f"The FID reference statistics {str(path)!r} have mu of shape {tuple(mu.shape)} and sigma of shape "
            f"{tuple(sigma.shape)}; expected (F,) and (F, F). Use an ADM-style npz of pool_3 statistics."
        )
    return mu, sigma


def save_reference_stats(path: str | os.PathLike, mu: Tensor, sigma: Tensor) -> None:
    """Write ``mu``/``sigma`` as an ADM-style npz (float64), e.g. the stats of a real image set."""
    np.savez(
        Path(path),
        **{
            REF_MU_KEY: mu.detach().cpu().double().numpy(),
            REF_SIGMA_KEY: sigma.detach().cpu().double().numpy(),
        },
    )


def _scipy_available() -> bool:
    try:
        import scipy.linalg  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_sqrtm_method(method: str) -> str:
    if method not in SQRTM_METHODS:
        raise ConfigError(
            f"Unknown matrix square-root method {method!r} for FID. Use one of {list(SQRTM_METHODS)}."
        )
    if method == "auto":
        return "scipy" if _scipy_available() else "torch"
    if method == "scipy" and not _scipy_available():
        raise ConfigError(
            "FID was asked to use scipy's sqrtm, but scipy is not installed. Install it with "
            "`pip install 'lazygen[eval]'`, or use the 'torch' (eigenvalue) method."
        )
    return method


def _trace_sqrt_product_scipy(sigma1: Tensor, sigma2: Tensor) -> float:
    """tr sqrt(sigma1 @ sigma2) with scipy's sqrtm, including ADM's offset fallback."""
    from scipy import linalg

    s1, s2 = sigma1.numpy(), sigma2.numpy()
    with warnings.catch_warnings():  # a singular product (dead feature units) is handled just below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * SQRTM_EPS
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    return float(np.trace(covmean).real)


def _trace_sqrt_product_torch(sigma1: Tensor, sigma2: Tensor) -> float:
    """tr sqrt(sigma1 @ sigma2) = tr sqrt(S1^1/2 sigma2 S1^1/2), via symmetric eigendecompositions.

    The symmetric form keeps every eigenvalue real and non-negative (up to round-off, clamped),
    which is more stable than ``eigvals(sigma1 @ sigma2)`` of a non-symmetric product.
    """
    evals1, evecs1 = torch.linalg.eigh(sigma1)
    sqrt1 = (evecs1 * evals1.clamp(min=0).sqrt()) @ evecs1.T
    middle = sqrt1 @ sigma2 @ sqrt1
    middle = (middle + middle.T) / 2
    return float(torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum())


def _as_float64(x: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(x).detach().cpu().to(torch.float64)


def frechet_distance(
    mu1: Tensor | np.ndarray,
    sigma1: Tensor | np.ndarray,
    mu2: Tensor | np.ndarray,
    sigma2: Tensor | np.ndarray,
    method: str = "auto",
) -> float:
    """||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2), in float64.

    ``method``: "scipy" (``scipy.linalg.sqrtm``, as ADM's evaluator), "torch" (eigenvalue-based, no
    scipy needed) or "auto" (scipy when installed). Round-off can leave a tiny negative value for
    identical statistics; it is returned as is, not clamped.
    """
    mu1, mu2, sigma1, sigma2 = (_as_float64(x) for x in (mu1, mu2, sigma1, sigma2))
    if (
        mu1.ndim != 1
        or mu1.shape != mu2.shape
        or sigma1.shape != sigma2.shape
        or sigma1.shape != (mu1.numel(),) * 2
    ):
        raise ValueError(
            f"frechet_distance got mu shapes {tuple(mu1.shape)}, {tuple(mu2.shape)} and sigma shapes "
            f"{tuple(sigma1.shape)}, {tuple(sigma2.shape)}; expected (F,) and (F, F) for the same F"
        )
    resolved = _resolve_sqrtm_method(method)
    trace_sqrt = (_trace_sqrt_product_scipy if resolved == "scipy" else _trace_sqrt_product_torch)(
        sigma1, sigma2
    )
    diff = mu1 - mu2
    return float(diff.dot(diff) + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def bootstrap_standard_errors(
    features: Tensor,
    agree: Tensor | None,
    reference: tuple[Tensor, Tensor] | None,
    replicates: int,
    seed: int,
    method: str = "auto",
) -> dict[str, Tensor]:
    """Bootstrap standard errors of FID and class accuracy: the generated images are resampled with
    replacement ``replicates`` times (a seeded generator, so the errors are reproducible) and each statistic
    is recomputed on every resample; the error is the standard deviation over the resamples.

    This is the error that comes from having drawn N images; the reference statistics are held fixed.
    """
    num = features.shape[0]
    gen = torch.Generator().manual_seed(seed)
    feats = features.detach().to(torch.float64).cpu()
    hits = None if agree is None else agree.cpu().to(torch.float64)
    fids, accs = [], []
    for _ in range(replicates):
        rows = torch.randint(0, num, (num,), generator=gen)
        if reference is not None:
            mu, sigma = compute_stats(feats[rows])
            fids.append(frechet_distance(mu, sigma, *reference, method=method))
        if hits is not None:
            accs.append(float(hits[rows].mean()))
    out: dict[str, Tensor] = {}
    if fids:
        out[FID_KEY + STANDARD_ERROR_SUFFIX] = torch.tensor(fids, dtype=torch.float64).std()
    if accs:
        out[CLASS_ACC_KEY + STANDARD_ERROR_SUFFIX] = torch.tensor(accs, dtype=torch.float64).std()
    return out


def paired_differences(
    features: tuple[Tensor, Tensor],
    agree: tuple[Tensor, Tensor] | None,
    reference: tuple[Tensor, Tensor],
    replicates: int,
    seed: int,
    method: str = "auto",
) -> dict[str, float]:
    """FID and class accuracy of run B minus run A, with the bootstrap standard error of each difference.

    The two runs drew the same samples (same seeds and labels, row i of each), so each resample takes the
    same rows from both. Luck in the draw that both runs share (the class mix, the hard seeds) then cancels
    in the difference, and its error is smaller than the two runs' own errors combined: two runs whose
    separate FIDs overlap can still differ beyond their paired error, and when they do not, the difference
    is noise. Keys: ``quality/fid_diff`` and ``quality/class_acc_diff``, each with ``_se``.
    """
    feats_a, feats_b = (f.detach().to(torch.float64).cpu() for f in features)
    if feats_a.shape != feats_b.shape or feats_a.ndim != 2:
        raise ValueError(
            f"paired_differences needs two (N, F) feature sets of one shape, got {tuple(feats_a.shape)} "
            f"and {tuple(feats_b.shape)}"
        )
    hits = None if agree is None else [h.cpu().to(torch.float64) for h in agree]

    def differences(rows: Tensor | slice) -> tuple[float, float | None]:
        fid_a, fid_b = (
            frechet_distance(*compute_stats(f[rows]), *reference, method=method) for f in (feats_a, feats_b)
        )
        acc = None if hits is None else float(hits[1][rows].mean() - hits[0][rows].mean())
        return fid_b - fid_a, acc

    fid, acc = differences(slice(None))
    gen = torch.Generator().manual_seed(seed)
    num = feats_a.shape[0]
    draws = [differences(torch.randint(0, num, (num,), generator=gen)) for _ in range(replicates)]
    out = {FID_KEY + DIFF_SUFFIX: fid}
    if replicates > 1:
        out[FID_KEY + DIFF_SUFFIX + STANDARD_ERROR_SUFFIX] = float(torch.tensor([d[0] for d in draws]).std())
    if acc is not None:
        out[CLASS_ACC_KEY + DIFF_SUFFIX] = acc
        if replicates > 1:
            out[CLASS_ACC_KEY + DIFF_SUFFIX + STANDARD_ERROR_SUFFIX] = float(
                torch.tensor([d[1] for d in draws]).std()
            )
    return out


# --------------------------------------------------------------------------------------- Inception score


def inception_score(
    logits: Tensor, splits: int = DEFAULT_IS_SPLITS, seed: int | None = DEFAULT_IS_SEED
) -> tuple[Tensor, Tensor]:
    """Inception score exp(E_x KL(p(y|x) || p(y))): mean and population std over ``splits`` chunks.

    Follows torch-fidelity's ``isc_features_to_metric``: rows are shuffled with
    ``numpy.random.RandomState(seed).permutation`` (``seed=None`` keeps the given order), then cut into
    equal contiguous chunks; p(y) is each chunk's mean. Terms with p(y|x) = 0 contribute 0 (torch-fidelity
    would give NaN there). Returns two 0-d float64 tensors.
    """
    num = logits.shape[0]
    if logits.ndim != 2 or splits < 1 or num < splits:
        raise ValueError(
            f"inception_score needs (N >= splits={splits}, C) logits, got shape {tuple(logits.shape)}"
        )
    logits = logits.detach()
    if seed is not None:
        order = torch.from_numpy(np.random.RandomState(seed).permutation(num)).to(logits.device)
        logits = logits[order]
    log_p = logits.to(torch.float64).log_softmax(dim=1)
    p = log_p.exp()
    scores = []
    for index in range(splits):
        chunk = slice(index * num // splits, (index + 1) * num // splits)
        p_chunk, log_p_chunk = p[chunk], log_p[chunk]
        log_marginal = p_chunk.mean(dim=0, keepdim=True).log()
        kl = torch.where(p_chunk > 0, p_chunk * (log_p_chunk - log_marginal), torch.zeros_like(p_chunk))
        scores.append(kl.sum(dim=1).mean().exp())
    stacked = torch.stack(scores).cpu()
    return stacked.mean(), stacked.std(correction=0)


# --------------------------------------------------------------------------------------- PSNR


def psnr(a: Tensor, b: Tensor, cap_db: float | None = None) -> Tensor:
    """Per-image PSNR in dB of uint8 images (..., C, H, W) with data range 255, as float64.

    Identical images give ``+inf``: that is the exact value, and any finite stand-in would have to exceed
    10*log10(255^2 * C*H*W) (about 101 dB for one 1-LSB error in a 256x256 RGB image, so a 100 dB cap
    would rank "identical" below "nearly identical"). Averaging over images where some are identical
    therefore gives inf; pass ``cap_db`` (e.g. 200) to clamp when a finite summary is needed.
    """
    if a.dtype != torch.uint8 or b.dtype != torch.uint8:
        raise TypeError(f"psnr expects uint8 images, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape or a.ndim < IMAGE_DIMS - 1:
        raise ValueError(
            f"psnr expects two (..., C, H, W) images of one shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    mse = (a.to(torch.float64) - b.to(torch.float64)).square().flatten(-3).mean(dim=-1)
    value = DECIBELS_PER_LOG10 * torch.log10(PIXEL_MAX**2 / mse)  # mse == 0 -> inf
    return value if cap_db is None else value.clamp(max=cap_db)


# --------------------------------------------------------------------------------------- the metric


def _check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8:
        raise TypeError(f"quality metrics expect uint8 images in [0, 255], got {images.dtype}")
    if images.ndim != IMAGE_DIMS or images.shape[1] != IMAGE_CHANNELS:
        raise ValueError(f"quality metrics expect (N, 3, H, W) images, got shape {tuple(images.shape)}")


class QualityMeter(Metric):
    """FID and Inception Score of generated images, accumulated batch by batch, DDP-aware.

    FID keeps float64 running sums (sum x, sum x x^T, N) rather than the features, so memory does not
    grow with N and DDP reduces them with a sum. The reference is either an ADM-style npz (or a
    ``(mu, sigma)`` pair) given at construction, or real images fed through :meth:`update_real`. IS keeps
    the logits (float32, concatenated across ranks) because its splits need per-sample rows.

    The extractor's weights are left out of ``state_dict`` (a frozen metric network loaded from its own
    file) and stay in eval mode.

    ``compute()`` returns ``{"quality/fid", "quality/is_mean", "quality/is_std"}`` (and
    ``"quality/class_acc"`` when labels were given) as 0-d float64 tensors; ``quality/fid`` is left out when there is no reference (no stats given, no real images fed),
    matching ``metrics.quality.reference_stats: null``. Under DDP it is a collective: call it on every rank. With ``seed`` set, IS depends only on
    the order of the gathered logits (rank-major, then update order).
    """

    is_differentiable = False
    higher_is_better = None  # FID: lower, IS: higher
    full_state_update = False

    fake_sum: Tensor
    fake_outer: Tensor
    fake_count: Tensor
    real_sum: Tensor
    real_outer: Tensor
    real_count: Tensor
    logits: list[Tensor]

    def __init__(
        self,
        extractor: nn.Module,
        reference_stats: str | os.PathLike | tuple[Tensor, Tensor] | None = None,
        splits: int = DEFAULT_IS_SPLITS,
        seed: int | None = DEFAULT_IS_SEED,
        sqrtm: str = "auto",
        reset_real_features: bool = True,
        bootstrap: int = 0,
        bootstrap_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            extractor: a :class:`FeatureExtractor` module (e.g. :class:`InceptionV3Extractor`).
            reference_stats: npz path or ``(mu, sigma)`` for FID; None to use :meth:`update_real` (or to
                skip FID when no real images are fed either).
            splits: IS splits (torch-fidelity default 10; ADM uses N / 5000).
            seed: IS shuffle seed (torch-fidelity's 2020); None keeps the update order.
            sqrtm: "auto", "scipy" or "torch"; see :func:`frechet_distance`.
            reset_real_features: if False, ``reset()`` keeps the real-image statistics, so a real set is
                extracted once and reused across sweep points.
            bootstrap: resamples behind the standard errors ``quality/fid_se`` and ``quality/class_acc_se``
                (0: none). The per-image features are then kept (N x F float32) to be resampled.
            bootstrap_seed: seed of the resampling.
            kwargs: torchmetrics ``Metric`` options (``process_group``, ``compute_on_cpu``, ...).
        """
        super().__init__(**kwargs)
        if not isinstance(splits, int) or splits < 1:
            raise ConfigError(
                f"Inception-score splits must be a positive integer, got {splits!r}. Use e.g. 10."
            )
        self.splits = splits
        self.seed = seed
        self.sqrtm = sqrtm
        _resolve_sqrtm_method(sqrtm)  # fail at construction, not after 50k images
        self.reset_real_features = reset_real_features
        num_features = _num_features(extractor)
        self.num_features = num_features
        self.extractor = extractor.eval()
        self.register_state_dict_post_hook(_drop_extractor_weights)
        self.register_load_state_dict_pre_hook(_keep_extractor_weights)

        self.reference: tuple[Tensor, Tensor] | None = None
        if reference_stats is not None:
            if isinstance(reference_stats, (str, os.PathLike)):
                mu, sigma = load_reference_stats(reference_stats)
            else:
                mu, sigma = (_as_float64(x) for x in reference_stats)
            if mu.shape != (num_features,) or sigma.shape != (num_features, num_features):
                raise ConfigError(
                    f"The FID reference statistics are {tuple(mu.shape)}/{tuple(sigma.shape)}-shaped but the "
                    f"extractor {type(extractor).__name__} produces {num_features}-d features. Use reference stats "
                    "computed with the same extractor (ADM's npz goes with InceptionV3's 2048-d pool_3)."
                )
            self.reference = (mu, sigma)

        for side in ("fake", "real"):
            self.add_state(
                f"{side}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum"
            )
            self.add_state(
                f"{side}_outer",
                torch.zeros(num_features, num_features, dtype=torch.float64),
                dist_reduce_fx="sum",
            )
            self.add_state(f"{side}_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("logits", [], dist_reduce_fx="cat")
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("labelled", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        if bootstrap < 0:
            raise ConfigError(
                f"metrics.quality.bootstrap={bootstrap} must be 0 (off) or a number of resamples."
            )
        self.bootstrap, self.bootstrap_seed = bootstrap, bootstrap_seed
        self.add_state("features", [], dist_reduce_fx="cat")  # kept only when bootstrapping
        self.add_state("agree", [], dist_reduce_fx="cat")

    def train(self, mode: bool = True) -> QualityMeter:
        """Switch the metric's mode but keep the extractor in eval (its BatchNorm stats are the metric)."""
        super().train(mode)
        self.extractor.eval()
        return self

    def extract(self, images: Tensor) -> ExtractorOutput:
        """The extractor's (features, logits) of uint8 images (N, 3, H, W), checked."""
        return self._extract(images)

    def _extract(self, images: Tensor) -> ExtractorOutput:
        _check_images(images)
        with torch.no_grad():
            output = split_extractor_output(self.extractor(images.to(self.fake_sum.device)))
        if output.features.ndim != 2 or output.features.shape != (images.shape[0], self.num_features):
            raise ConfigError(
                f"The feature extractor {type(self.extractor).__name__} returned features of shape "
                f"{tuple(output.features.shape)} for {images.shape[0]} images, but declares num_features="
                f"{self.num_features}. Make it return (N, num_features) features."
            )
        if output.logits.ndim != 2 or output.logits.shape[0] != images.shape[0]:
            raise ConfigError(
                f"The feature extractor {type(self.extractor).__name__} returned logits of shape "
                f"{tuple(output.logits.shape)} for {images.shape[0]} images. Make it return (N, classes) logits."
            )
        return output

    def _accumulate(self, side: str, features: Tensor) -> None:
        feats = features.detach().to(torch.float64)
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + feats.sum(dim=0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + feats.T @ feats)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + feats.shape[0])

    def update(
        self, images: Tensor | None, labels: Tensor | None = None, extracted: ExtractorOutput | None = None
    ) -> None:
        """Add generated uint8 images (N, 3, H, W); with the class ``labels`` they were conditioned on,
        also count how often the extractor's classifier agrees (class accuracy, when its classes are the
        generator's). ``extracted``: the images' features and logits already extracted elsewhere (by each
        rank while it generated, kept in the run dir); ``images`` is then None."""
        output = self._extract(images) if extracted is None else extracted
        device = self.fake_sum.device
        output = ExtractorOutput(output.features.to(device), output.logits.to(device))
        self._accumulate("fake", output.features)
        self.logits.append(output.logits.detach().to(torch.float32))
        if self.bootstrap:
            self.features.append(output.features.detach().to(torch.float32))
        if labels is not None:
            agree = output.logits.argmax(dim=1) == labels.to(output.logits.device)
            self.correct = self.correct + agree.sum()
            self.labelled = self.labelled + agree.numel()
            if self.bootstrap:
                self.agree.append(agree)

    def update_real(self, images: Tensor) -> None:
        """Add real uint8 images (N, 3, H, W) as the FID reference (instead of reference stats)."""
        if self.reference is not None:
            raise ConfigError(
                "Real images were fed to a QualityMeter that already compares with reference statistics. "
                "Use one FID reference: set metrics.quality.reference_stats to null to compare with real images, "
                "or stop feeding real images."
            )
        self._accumulate("real", self._extract(images).features)
        self._computed = None  # invalidate a cached compute() result, as update() does

    def compute(self) -> dict[str, Tensor]:
        """FID against the reference (if any) and IS mean/std over all (synced) generated images."""
        fake_count = int(self.fake_count)
        if fake_count < max(MIN_SAMPLES_FOR_COVARIANCE, self.splits):
            raise ConfigError(
                f"Quality metrics got {fake_count} generated images but need at least "
                f"{max(MIN_SAMPLES_FOR_COVARIANCE, self.splits)} (two for a covariance, one per IS split). "
                "Generate more images, or lower metrics.quality.is_splits."
            )
        result: dict[str, Tensor] = {}
        reference = self._fid_reference()
        if reference is not None:
            mu_fake, sigma_fake = stats_from_sums(self.fake_sum, self.fake_outer, fake_count)
            fid = frechet_distance(mu_fake.cpu(), sigma_fake.cpu(), *reference, method=self.sqrtm)
            result[FID_KEY] = torch.tensor(fid, dtype=torch.float64)
        is_mean, is_std = inception_score(dim_zero_cat(self.logits), splits=self.splits, seed=self.seed)
        result[IS_MEAN_KEY], result[IS_STD_KEY] = is_mean, is_std
        if int(self.labelled) > 0:
            result[CLASS_ACC_KEY] = self.correct.to(torch.float64) / self.labelled
        if self.bootstrap:
            agree = dim_zero_cat(self.agree) if int(self.labelled) > 0 else None
            result.update(bootstrap_standard_errors(dim_zero_cat(self.features), agree, reference,
                                                    self.bootstrap, self.bootstrap_seed, self.sqrtm))  # fmt: skip
        return result

    def _fid_reference(self) -> tuple[Tensor, Tensor] | None:
        """Reference (mu, sigma): the given stats, else the real images' stats, else None (no FID)."""
        if self.reference is not None:
            return self.reference
        real_count = int(self.real_count)
        if real_count == 0:
            return None
        if real_count < MIN_SAMPLES_FOR_COVARIANCE:
            raise ConfigError(
                f"FID got {real_count} real image but needs at least {MIN_SAMPLES_FOR_COVARIANCE} for a "
                "covariance. Feed more real images, or set metrics.quality.reference_stats to an ADM-style npz."
            )
        mu, sigma = stats_from_sums(self.real_sum, self.real_outer, real_count)
        return mu.cpu(), sigma.cpu()

    def reset(self) -> None:
        """Reset the generated-image states; keep the real ones if ``reset_real_features`` is False."""
        if self.reset_real_features:
            super().reset()
            return
        kept = {name: getattr(self, name) for name in ("real_sum", "real_outer", "real_count")}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)


def _drop_extractor_weights(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """State-dict post-hook: checkpoints carry no copy of the frozen extractor."""
    for key in [key for key in state_dict if key.startswith(f"{prefix}{EXTRACTOR_ATTR}.")]:
        del state_dict[key]


def _keep_extractor_weights(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load pre-hook: a state dict without extractor weights keeps the current ones (strict loads pass)."""
    extractor = getattr(module, EXTRACTOR_ATTR)
    for key, value in extractor.state_dict(prefix=f"{prefix}{EXTRACTOR_ATTR}.").items():
        state_dict.setdefault(key, value)
