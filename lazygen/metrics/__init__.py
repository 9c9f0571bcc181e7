"""Measurement: FLOPs (:mod:`~lazygen.metrics.flops`) and image quality (:mod:`~lazygen.metrics.quality`)."""

from lazygen.metrics.flops import FlopCount, count_flops, extra_flop_formulas
from lazygen.metrics.quality import (
    ExtractorOutput,
    FeatureExtractor,
    InceptionV3Extractor,
    QualityMeter,
    compute_stats,
    frechet_distance,
    inception_score,
    load_reference_stats,
    psnr,
    save_reference_stats,
    stats_from_sums,
)

__all__ = [
    "ExtractorOutput",
    "FeatureExtractor",
    "FlopCount",
    "InceptionV3Extractor",
    "QualityMeter",
    "compute_stats",
    "count_flops",
    "extra_flop_formulas",
    "frechet_distance",
    "inception_score",
    "load_reference_stats",
    "psnr",
    "save_reference_stats",
    "stats_from_sums",
]
