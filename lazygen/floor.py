"""``python -m lazygen.floor``: the quality floor, i.e. the metrics of *real* held-out digits.

Generated images are only as good as this: the held-out split of digits16 measured by the same shipped
evaluator, against the same reference statistics (the training digits), with the same FID/IS code. FID
is biased upwards at small N, so the floor is printed at the held-out size; compare generated runs with
``data.num_images`` of that size too (and at 1000 for the usual table).
"""

from __future__ import annotations

import argparse
import json

import torch

from lazygen.data.digits16 import DatasetConf, load_digits16, to_uint8_rgb
from lazygen.metrics.digits_classifier import load_digits16_evaluator
from lazygen.metrics.quality import QualityMeter
from lazygen.weights import resolve_weight

BATCH = 256


def real_quality(
    split: str = "heldout", splits: int = 10, conf: DatasetConf | None = None
) -> dict[str, float]:
    """FID / IS / class accuracy of real digits of ``split``, measured like a generated run."""
    images, labels = load_digits16(conf, split)
    meter = QualityMeter(load_digits16_evaluator(), reference_stats=resolve_weight("digits16_stats"),
                         splits=splits)  # fmt: skip
    for i in range(0, len(images), BATCH):
        meter.update(to_uint8_rgb(images[i : i + BATCH]), labels[i : i + BATCH])
    out = {k: float(v) for k, v in meter.compute().items()}
    out["meta/num_images"] = float(len(images))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="heldout", choices=("heldout", "train", "all"))
    parser.add_argument("--is-splits", type=int, default=10)
    args = parser.parse_args()
    with torch.no_grad():
        print(json.dumps(real_quality(args.split, args.is_splits), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
