"""``python -m lazygen.floor``: the quality floor, i.e. the metrics of *real* held-out digits.

Generated images are only as good as this: the held-out split of digits16 measured by the same shipped
evaluator, against the same reference statistics (the training digits), with the same FID/IS code. FID
is biased upwards at small N, so the floor is printed at the held-out size; compare generated runs with
``data.num_images`` of that size too (and at 1000 for the usual table).

``--run DIR`` measures a finished tiny-model run beside the floor at equal N: the first images of each class
in the run, as many as the held-out split has of that class (the class-matched subset).

``--damage`` also measures the held-out digits under controlled damage (noise at three levels, blur, a
pixel shuffle within 2x2 cells): the evaluator is fit to judge generators only if every damage raises
FID and more noise raises it more.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lazygen.data.digits16 import DatasetConf, load_digits16, to_uint8_rgb
from lazygen.errors import LazygenError
from lazygen.metrics.damage import Damage, damages
from lazygen.metrics.digits_classifier import load_digits16_evaluator
from lazygen.metrics.diversity import class_diversity, diversity_ratio, feature_class_diversity
from lazygen.metrics.quality import DEFAULT_BOOTSTRAP, QualityMeter
from lazygen.weights import resolve_weight

BATCH = 256
DAMAGE_SEED = 0


def measure(images: torch.Tensor, labels: torch.Tensor, splits: int = 10) -> dict[str, float]:
    """FID / IS / class accuracy, with bootstrap errors, of uint8 digits (N, 3, H, W) of classes ``labels``."""
    meter = QualityMeter(load_digits16_evaluator(), reference_stats=resolve_weight("digits16_stats"),
                         splits=splits, bootstrap=DEFAULT_BOOTSTRAP)  # fmt: skip
    for i in range(0, len(images), BATCH):
        meter.update(images[i : i + BATCH], labels[i : i + BATCH])
    out = {k: float(v) for k, v in meter.compute().items()}
    out["meta/num_images"] = float(len(images))
    return out


def real_quality(
    split: str = "heldout", splits: int = 10, conf: DatasetConf | None = None, damage: Damage | None = None
) -> dict[str, float]:
    """The metrics of real digits of ``split``, measured like a generated run; ``damage`` is applied to
    the images first (seeded)."""
    images, labels = load_digits16(conf, split)
    if damage is not None:
        images = damage(images, torch.Generator().manual_seed(DAMAGE_SEED))
    return measure(to_uint8_rgb(images), labels, splits)


def class_matched(labels: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Indices of the first images of each class in ``labels``, as many as ``target`` holds of that class."""
    picks = []
    for c, count in zip(*np.unique(target, return_counts=True), strict=True):
        members = np.flatnonzero(labels == c)
        if len(members) < count:
            raise LazygenError(
                f"The run has {len(members)} images of class {c}, but the class-matched subset needs {count} "
                "(as many as the held-out split has); generate at least that many per class, e.g. "
                "data.num_images=1000."
            )
        picks.append(members[:count])
    return np.sort(np.concatenate(picks))


def run_quality(run_dir: Path, split: str = "heldout", splits: int = 10) -> dict[str, float]:
    """The metrics of a finished run's class-matched subset (its ``samples.npz``) against ``split``, and
    the within-class diversity of all its images relative to the real digits of ``split`` (min over
    classes and mean), in pixels and in the evaluator's features."""
    from lazygen.run import NPZ_FILE

    path = Path(run_dir) / NPZ_FILE
    if not path.is_file():
        raise LazygenError(
            f"{run_dir} has no {NPZ_FILE}: give a finished run dir (made with callbacks.save_npz=true)."
        )
    data = np.load(path)
    real, target = load_digits16(None, split)
    keep = class_matched(data["labels"], target.numpy())
    images = torch.from_numpy(data["arr_0"][keep]).permute(0, 3, 1, 2).contiguous()
    out = measure(images, torch.from_numpy(data["labels"][keep]), splits)
    real_images = to_uint8_rgb(real)
    ratio = diversity_ratio(class_diversity(data["arr_0"], data["labels"]),
                            class_diversity(real_images.numpy(), target.numpy()))  # fmt: skip
    out["quality/diversity_ratio_min"] = min(ratio.values())
    out["quality/diversity_ratio_mean"] = sum(ratio.values()) / len(ratio)
    evaluator = load_digits16_evaluator()
    every = torch.from_numpy(data["arr_0"]).permute(0, 3, 1, 2).contiguous()
    ratio = diversity_ratio(feature_class_diversity(evaluator, every, data["labels"], BATCH),
                            feature_class_diversity(evaluator, real_images, target, BATCH))  # fmt: skip
    out["quality/feature_diversity_ratio_min"] = min(ratio.values())
    out["quality/feature_diversity_ratio_mean"] = sum(ratio.values()) / len(ratio)
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
    parser.add_argument("--run", type=Path, help="a finished run: its class-matched subset beside the floor")
    args = parser.parse_args()
    with torch.no_grad():
        if not args.damage and args.run is None:
            print(json.dumps(real_quality(args.split, args.is_splits), indent=2, sort_keys=True))
            return
        floor = {"clean (the floor)": real_quality(args.split, args.is_splits)}
        rows = damage_curve(args.split, args.is_splits) if args.damage else floor
        if args.run is not None:
            try:
                rows[f"{args.run} (class-matched)"] = run_quality(args.run, args.split, args.is_splits)
            except LazygenError as exc:
                from lazygen.cli import exit_with_user_error

                exit_with_user_error(exc)
        print("| images | N | FID | class acc |\n|---|---|---|---|")
        for name, m in rows.items():
            print(f"| {name} | {m['meta/num_images']:.0f} | {m['quality/fid']:.1f} ± {m['quality/fid_se']:.1f} | "
                  f"{m['quality/class_acc']:.3f} ± {m['quality/class_acc_se']:.3f} |")  # fmt: skip
        if args.run is not None:
            m = rows[f"{args.run} (class-matched)"]
            print(
                f"\nwithin-class diversity of every image of {args.run} over the real {args.split} digits': "
                f"min {m['quality/diversity_ratio_min']:.2f}, mean {m['quality/diversity_ratio_mean']:.2f} in pixels; "
                f"min {m['quality/feature_diversity_ratio_min']:.2f}, mean "
                f"{m['quality/feature_diversity_ratio_mean']:.2f} in the evaluator's features"
            )


if __name__ == "__main__":
    main()
