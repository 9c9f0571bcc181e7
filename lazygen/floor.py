"""``python -m lazygen.floor``: the quality floor, i.e. the metrics of *real* held-out digits.

Generated images are only as good as this: the held-out split of digits16 measured by the same shipped
evaluator, against the same reference statistics (the training digits), with the same FID/IS code. FID
is biased upwards at small N, so the floor is printed at the held-out size; compare generated runs with
``data.num_images`` of that size too (and at 1000 for the usual table).

``--damage`` also measures the held-out digits under controlled damage (noise at three levels, blur, a
pixel shuffle within 2x2 cells): the evaluator is fit to judge generators only if every damage raises
FID and more noise raises it more.
"""

from __future__ import annotations

import argparse
import json

import torch

from lazygen.data.digits16 import DatasetConf, load_digits16, to_uint8_rgb
from lazygen.metrics.damage import Damage, damages
from lazygen.metrics.digits_classifier import load_digits16_evaluator
from lazygen.metrics.quality import DEFAULT_BOOTSTRAP, QualityMeter
from lazygen.weights import resolve_weight

BATCH = 256
DAMAGE_SEED = 0


def real_quality(
    split: str = "heldout", splits: int = 10, conf: DatasetConf | None = None, damage: Damage | None = None
) -> dict[str, float]:
    """FID / IS / class accuracy (with bootstrap errors) of real digits of ``split``, measured like a
    generated run; ``damage`` is applied to the images first (seeded)."""
    images, labels = load_digits16(conf, split)
    if damage is not None:
        images = damage(images, torch.Generator().manual_seed(DAMAGE_SEED))
    meter = QualityMeter(load_digits16_evaluator(), reference_stats=resolve_weight("digits16_stats"),
                         splits=splits, bootstrap=DEFAULT_BOOTSTRAP)  # fmt: skip
    for i in range(0, len(images), BATCH):
        meter.update(to_uint8_rgb(images[i : i + BATCH]), labels[i : i + BATCH])
    out = {k: float(v) for k, v in meter.compute().items()}
    out["meta/num_images"] = float(len(images))
    return out


def damage_curve(split: str = "heldout", splits: int = 10) -> dict[str, dict[str, float]]:
    """The clean split and each damage of :func:`lazygen.metrics.damage.damages`, by name."""
    curve = {"clean": real_quality(split, splits)}
    for name, damage in damages().items():
        curve[name] = real_quality(split, splits, damage=damage)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="heldout", choices=("heldout", "train", "all"))
    parser.add_argument("--is-splits", type=int, default=10)
    parser.add_argument(
        "--damage", action="store_true", help="also measure the split under controlled damage"
    )
    args = parser.parse_args()
    with torch.no_grad():
        if not args.damage:
            print(json.dumps(real_quality(args.split, args.is_splits), indent=2, sort_keys=True))
            return
        print("| images | FID | class acc |\n|---|---|---|")
        for name, m in damage_curve(args.split, args.is_splits).items():
            print(f"| {name} | {m['quality/fid']:.1f} ± {m['quality/fid_se']:.1f} | "
                  f"{m['quality/class_acc']:.3f} ± {m['quality/class_acc_se']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
