"""One generation job: compose, generate under ``Trainer.predict``, measure, write, log.

``run_job`` is what ``python -m lazygen`` calls for every Hydra job (and what tests call directly). The
samples are written while they are produced; everything after ``predict`` reads them back from the run
directory, so a resumed run reports on all of its samples, and DDP workers need not send anything back.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from lazygen.build import (
    baseline_sampler_conf,
    build_model,
    build_policy,
    build_sampler,
    build_tokenizer,
    is_accelerated,
)
from lazygen.cache.base import CacheStats, NoCache
from lazygen.callbacks.progress import ImagesPerSecondBar
from lazygen.callbacks.writer import SampleWriter, finished_indices, read_batch_records
from lazygen.config import CacheConf, RunConf, validate
from lazygen.data.specs import SampleSpec, SpecDataset, build_specs
from lazygen.errors import ConfigError
from lazygen.lit.generation import GenerationModule, Generator
from lazygen.metrics.perf import latency_metrics, measure_flops
from lazygen.outputs import (
    GRID_MAX_CLASS_ROWS,
    grid_indices,
    image_grid,
    missing_samples,
    read_features,
    read_sample,
    write_samples_npz,
)
from lazygen.rundir import (
    RunLock,
    check_settings,
    intact_indices,
    is_worker_process,
    keep_features_of,
    sample_settings,
)

METRICS_FILE = "metrics.json"
NPZ_FILE = "samples.npz"
GRID_FILE = "grid.png"
PSNR_CAP_DB = 100.0  # identical images are reported as 100 dB so averages stay finite


def make_generator(run: RunConf, device: str | torch.device = "cpu", home: Path | None = None) -> Generator:
    hw = run.hardware
    return Generator(
        build_model(run.model, device, home),
        build_tokenizer(run.model, device, home),
        build_sampler(run.sampler),
        build_policy(run.cache),
        precision=hw.precision,
        compile_mode=hw.compile_mode if hw.compile else None,
    )


def _trainer(run: RunConf, run_dir: Path) -> L.Trainer:
    hw = run.hardware
    callbacks: list[Any] = [SampleWriter(run_dir, save_latents=run.callbacks.save_latents)]
    if run.callbacks.progress_bar:
        callbacks.append(ImagesPerSecondBar())
    try:
        return L.Trainer(
            accelerator=hw.accelerator,
            devices=hw.devices,
            num_nodes=hw.num_nodes,
            strategy=hw.strategy,
            precision=hw.precision,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=run.callbacks.progress_bar,
            callbacks=callbacks,
            default_root_dir=str(run_dir),
        )
    except MisconfigurationException as exc:
        raise ConfigError(
            f"The hardware settings cannot run here: {exc}. Pick a preset that fits this machine "
            "(hardware=cpu, hardware=cpu_ddp, hardware=gpu or hardware=ddp) or adjust hardware.devices."
        ) from None


def generate_samples(
    run: RunConf, run_dir: Path, generator: Generator, todo: list[SampleSpec], extractor=None
) -> tuple[int, int]:
    """Generate the specs not yet done; returns (global rank, world size). Non-zero ranks stop after."""
    trainer = _trainer(run, run_dir)
    loader = DataLoader(SpecDataset(todo), batch_size=run.data.batch_size, shuffle=False, num_workers=0)
    trainer.predict(GenerationModule(generator, extractor), dataloaders=loader, return_predictions=False)
    return trainer.global_rank, trainer.world_size


def _device_of(generator: Generator) -> torch.device:
    return next(generator.model.parameters()).device


def _spec_tensors(specs: list[SampleSpec], device: torch.device) -> tuple[torch.Tensor, list[int]]:
    return torch.tensor([s.label for s in specs], device=device), [s.seed for s in specs]


def flops_metrics(run: RunConf, specs: list[SampleSpec], home: Path | None) -> tuple[dict, dict]:
    conf = run.metrics.flops
    labels, seeds = _spec_tensors(specs[: conf.num_images], torch.device("cpu"))
    report = measure_flops(lambda dev: make_generator(run, dev, home), labels, seeds, conf.mode)
    metrics = {
        "flops/tflops_per_img": report.tflops_per_img,
        "flops/tflops_per_img_decoder": report.tflops_per_img_decoder,
    }
    return metrics, {"device": report.device, "tflops_per_img_by_module": report.by_module}


PAIRS_GRID_FILE = "grid_vs_baseline.png"
PAIRS_SHOWN = 16  # the first pairs of the speedup subset: one readable strip, however large the subset


def paired_baseline(
    run: RunConf,
    generator: Generator,
    specs: list[SampleSpec],
    home: Path | None,
    run_dir: Path | None = None,
) -> dict:
    """Speedup and fidelity against the baseline, measured here on the same specs, batch by batch.

    Both generators share the network; batches alternate between them after one untimed warm-up each,
    so both see the same device state. With ``run_dir``, ``grid_vs_baseline.png`` shows the first accelerated
    images (top row) over the baseline's of the same seeds (bottom row), so the PSNR can be seen.
    """
    from lazygen.metrics.quality import psnr

    base_run = replace(run, sampler=baseline_sampler_conf(run), cache=CacheConf())
    baseline = Generator(generator.model, generator.tokenizer, build_sampler(base_run.sampler), NoCache(),
                         precision=run.hardware.precision, compile_mode=generator.compile_mode)  # fmt: skip
    device = _device_of(generator)
    subset = specs[: run.metrics.speedup.num_images]
    batches = [subset[i : i + run.data.batch_size] for i in range(0, len(subset), run.data.batch_size)]
    labels, seeds = _spec_tensors(batches[0], device)
    generator.generate(labels, seeds)
    baseline.generate(labels, seeds)
    t_acc = t_base = 0.0
    scores, pairs = [], []
    for batch in batches:
        labels, seeds = _spec_tensors(batch, device)
        acc, base = generator.generate(labels, seeds), baseline.generate(labels, seeds)
        pairs.append((acc.images.cpu().numpy(), base.images.cpu().numpy()))
        t_acc, t_base = t_acc + acc.seconds, t_base + base.seconds
        scores.append(
            psnr(acc.images.permute(0, 3, 1, 2), base.images.permute(0, 3, 1, 2), cap_db=PSNR_CAP_DB)
        )
    out = {
        "perf/speedup": t_base / t_acc,
        "perf/baseline_latency_s_per_img": t_base / len(subset),
        "quality/psnr_vs_baseline": float(torch.cat(scores).mean()),
    }
    if run_dir is not None:
        accelerated, base = (np.concatenate(side)[:PAIRS_SHOWN] for side in zip(*pairs, strict=True))
        n = len(accelerated)
        grid = image_grid(np.concatenate([accelerated, base]), 2 * n, [0] * n + [1] * n)
        Image.fromarray(grid).save(run_dir / PAIRS_GRID_FILE)
    if run.metrics.flops.enabled:
        base_flops, _ = flops_metrics(base_run, specs, home)
        out["flops/baseline_tflops_per_img"] = base_flops["flops/tflops_per_img"]
    return out


MIN_QUALITY_IMAGES = 2  # a covariance needs two samples
BUNDLED_EXTRACTORS = ("digits16",)  # evaluators that ship with lazygen: quality metrics are on by default


def quality_settings(run: RunConf) -> tuple[bool, str, str | None]:
    """(enabled, extractor, reference_stats) with ``auto`` values taken from the model's evaluator.

    ``enabled: auto`` turns quality metrics on for models whose evaluator ships with lazygen, when the run
    has enough images for them (two for a covariance, one per IS split); ``true`` insists, and too few
    images is then an error.
    """
    q, ev = run.metrics.quality, run.model.evaluator
    extractor = ev.extractor if q.extractor == "auto" else q.extractor
    reference = ev.reference_stats if q.reference_stats == "auto" else q.reference_stats
    enough = run.data.num_images >= max(MIN_QUALITY_IMAGES, q.is_splits)
    enabled = q.enabled is True or (q.enabled == "auto" and extractor in BUNDLED_EXTRACTORS and enough)
    return enabled, extractor, reference


def make_extractor(name: str, home: Path | None) -> torch.nn.Module:
    from lazygen.metrics.quality import InceptionV3Extractor

    if name == "inception":
        return InceptionV3Extractor()
    if name == "digits16":
        from lazygen.metrics.digits_classifier import load_digits16_evaluator

        return load_digits16_evaluator(home)
    from hydra.utils import get_method

    return get_method(name)()


def fid_reference(run: RunConf, home: Path | None) -> str | None:
    """The path of the run's FID reference statistics (a registry name resolved), or None."""
    from lazygen.weights import REGISTRY, resolve_weight

    reference = quality_settings(run)[2]
    if reference in REGISTRY:
        return str(resolve_weight(reference, home=home, config_key="metrics.quality.reference_stats"))
    return reference


def judges_classes(run: RunConf, extractor: torch.nn.Module) -> bool:
    """Whether the extractor classifies the generator's classes, so class accuracy means something."""
    return getattr(extractor, "num_classes", None) == run.model.num_classes


def quality_metrics(
    run: RunConf, run_dir: Path, specs: list[SampleSpec], home: Path | None, extractor: torch.nn.Module
) -> dict:
    """FID/IS of the run's samples, read back a batch at a time; class accuracy when the extractor
    classifies the generator's classes."""
    from lazygen.metrics.quality import QualityMeter

    extractor = extractor.cpu()  # the meter's statistics live on the CPU (generation may have moved it)
    q = run.metrics.quality
    meter = QualityMeter(extractor, reference_stats=fid_reference(run, home), splits=q.is_splits,
                         bootstrap=q.bootstrap, bootstrap_seed=run.seed)  # fmt: skip
    judge_classes = judges_classes(run, extractor)
    batch = max(1, run.data.batch_size)
    for start in range(0, len(specs), batch):
        chunk = specs[start : start + batch]
        labels = torch.tensor([s.label for s in chunk]) if judge_classes else None
        meter.update(None, labels, extracted=sample_features(meter, run_dir, [s.index for s in chunk]))
    return {k: float(v) for k, v in meter.compute().items()}


def sample_features(meter, run_dir: Path, indices: list[int]):
    """The features and logits of these samples, in order: those the generating ranks kept in the run
    dir, and for the rest (an older run dir, a damaged file) extracted here from the PNGs."""
    from lazygen.metrics.quality import ExtractorOutput

    stored = [read_features(run_dir, i) for i in indices]
    todo = [k for k, f in enumerate(stored) if f is None]
    if todo:
        images = np.stack([read_sample(run_dir, indices[k]) for k in todo])
        fresh = meter.extract(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        for j, k in enumerate(todo):
            stored[k] = (fresh.features[j].float().cpu(), fresh.logits[j].float().cpu())
    return ExtractorOutput(torch.stack([f for f, _ in stored]), torch.stack([g for _, g in stored]))


def cache_metrics(records: list[dict]) -> tuple[dict[str, float], dict]:
    """Cache statistics over all batches: headline metrics, and the per-layer and per-step detail.

    ``cache/recompute_frac`` is the share of the baseline's transformer work (rows x positions x layers)
    that was recomputed; ``cache/full_steps`` and ``cache/reused_steps`` count steps per generation.
    """
    batches = [CacheStats(**r["cache"]) for r in records if r.get("cache")]
    if not batches:
        return {}, {}
    total = CacheStats()
    for batch in batches:
        total.merge(batch)

    def share(recomputed: int, of: int) -> float:
        return recomputed / of if of else 1.0

    metrics = {
        "cache/full_steps": total.full_steps / len(batches),
        "cache/reused_steps": total.reused_steps / len(batches),
    }
    if total.total_tokens:  # MAR's transformer work (causal models count attention instead, below)
        metrics["cache/recompute_frac"] = share(total.recomputed_tokens, total.total_tokens)
    if total.head_evals:
        metrics["cache/head_full_frac"] = total.head_full_evals / total.head_evals
    if total.context_tokens:  # causal models: the share of cached image tokens that attention saw
        metrics["cache/attended_frac"] = total.attended_tokens / total.context_tokens
    calls = [(r["cache"].get("model_calls", 0), len(r.get("indices", ()))) for r in records if r.get("cache")]
    if any(n for n, _ in calls) and any(k for _, k in calls):  # each image waits for its batch's passes
        metrics["perf/model_calls_per_img"] = sum(n * k for n, k in calls) / sum(k for _, k in calls)
    if total.kv_cache_bytes:
        metrics["mem/kv_cache_bytes"] = float(total.kv_cache_bytes)
        metrics["mem/kv_cache_bytes_per_img"] = total.kv_cache_bytes_per_img
    by_layer = {layer: share(*counts) for layer, counts in total.by_layer.items()}
    metrics.update({f"cache/recompute_frac/{layer}": value for layer, value in by_layer.items()})
    detail = {
        "recompute_frac_by_layer": by_layer,
        "recompute_frac_by_step": [share(*counts) for counts in total.by_step],
        "recompute_frac_by_layer_step": {
            layer: [share(*counts) for counts in steps] for layer, steps in total.by_layer_step.items()
        },
    }
    return metrics, detail


def sampler_counters(records: list[dict]) -> dict[str, list[int]]:
    """The sampler's own counters (e.g. SJD's drafts tested and accepted) summed over every batch."""
    total = CacheStats()
    for r in records:
        for name, values in (r.get("cache") or {}).get("sampler", {}).items():
            total.add_sampler(name, values)
    return total.sampler


def run_name(run: RunConf, tag: str) -> str:
    return f"{run.model.name}-{run.sampler.name}-{tag}-s{run.seed}"


def run_job(cfg: DictConfig, run_dir: str | Path, group: str | None = None) -> dict[str, float]:
    """Generate (or resume) one job's samples into ``run_dir`` and measure them; returns metrics.

    The directory is claimed by this process for the job, and a resume must have the settings that made
    its samples (see :mod:`lazygen.rundir`); re-executed DDP ranks work under rank 0's claim.
    """
    run = validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_worker_process():
        return _run_job(run, cfg, run_dir, group)
    with RunLock(run_dir):
        resolved = OmegaConf.to_container(cfg, resolve=True)
        check_settings(run_dir, sample_settings(resolved), has_samples=bool(read_batch_records(run_dir)))
        return _run_job(run, cfg, run_dir, group)


def _run_job(run: RunConf, cfg: DictConfig, run_dir: Path, group: str | None) -> dict[str, float]:
    if run.hardware.num_threads:
        torch.set_num_threads(run.hardware.num_threads)
    home = Path(str(cfg.paths.weights_dir)) if "paths" in cfg else None
    specs = build_specs(run.data.num_images, run.model.num_classes, run.data.labels, run.data.seed)
    records = read_batch_records(run_dir)
    done = finished_indices(run_dir, records)
    quality_on, extractor_name, _ = quality_settings(run)
    # one extractor: each rank's features while generating, then what is missing in the report
    extractor = make_extractor(extractor_name, home) if quality_on else None
    if not is_worker_process():
        done, damaged = intact_indices(run_dir, done, run.callbacks.save_latents)
        if damaged:
            print(f"lazygen: {len(damaged)} finished samples had an unreadable or missing PNG or latent (first: "
                  f"{damaged[:5]}); they are generated again.", file=sys.stderr)  # fmt: skip
        if quality_on:
            keep_features_of(run_dir, extractor_name)
    todo = [s for s in specs if s.index not in done]

    generator = make_generator(run, "cpu", home)
    world_size = max([int(r["rank"]) + 1 for r in records] + [1])  # of the earlier attempt, if resuming
    overhead: dict[str, float] = {}
    if todo:
        start, before = time.perf_counter(), len(records)
        rank, world_size = generate_samples(run, run_dir, generator, todo, extractor)
        if rank != 0:
            return {}
        records = read_batch_records(run_dir)
        if world_size == 1:  # this process's loop: its time beyond generating is writing and bookkeeping
            generating = sum(r["seconds"] for r in records[before:])
            overhead["perf/write_overhead_s_per_img"] = (time.perf_counter() - start - generating) / len(todo)
    after_generation = time.perf_counter()

    missing_samples(run_dir, specs)
    labels = [s.label for s in specs]
    metrics: dict[str, float] = {
        "meta/num_images": float(len(specs)),
        "meta/world_size": float(world_size),
        "meta/batch_size": float(run.data.batch_size),
        "meta/resumed_images": float(len(done)),
    }
    if run.callbacks.save_npz:
        write_samples_npz(run_dir / NPZ_FILE, run_dir, specs)
    shown = grid_indices(labels, run.callbacks.grid_max_images, GRID_MAX_CLASS_ROWS)
    grid = image_grid(np.stack([read_sample(run_dir, specs[i].index) for i in shown]),
                      run.callbacks.grid_max_images, [labels[i] for i in shown])  # fmt: skip
    Image.fromarray(grid).save(run_dir / GRID_FILE)
    if run.metrics.latency:
        metrics.update(latency_metrics(records))
    if run.hardware.compile:  # kept out of the latency above: paid once per process, not per image
        metrics["perf/compile_s"] = float(sum(r.get("compile_seconds", 0.0) for r in records))
    peaks = [r["peak_mem_bytes"] for r in records if r.get("peak_mem_bytes")]
    if peaks:  # GPU: peak allocated during a batch; CPU: the process's peak resident set
        metrics["mem/peak_bytes"] = float(max(peaks))
    cache, cache_detail = cache_metrics(records)
    metrics.update(cache)
    if cache_detail:
        (run_dir / "cache.json").write_text(json.dumps(cache_detail, indent=2))
        from lazygen.plots import plot_recompute_heatmap

        plot_recompute_heatmap(cache_detail["recompute_frac_by_layer_step"], run_dir / "cache.png",
                               f"{run_name(run, generator.policy.tag)}: work recomputed")  # fmt: skip
    counters = sampler_counters(records)
    if counters and hasattr(generator.sampler, "report"):
        sampler_report, sampler_detail = generator.sampler.report(counters)
        metrics.update(sampler_report)
        (run_dir / "sampler.json").write_text(json.dumps(sampler_detail, indent=2))
    if run.metrics.flops.enabled:
        flops, detail = flops_metrics(run, specs, home)
        metrics.update(flops)
        (run_dir / "flops.json").write_text(json.dumps(detail, indent=2))
    if quality_on:
        metrics.update(quality_metrics(run, run_dir, specs, home, extractor))
    speedup = run.metrics.speedup.enabled
    if speedup is True or (speedup == "auto" and is_accelerated(run)):
        if run.hardware.accelerator in ("gpu", "cuda") and torch.cuda.is_available():
            generator = generator.to("cuda")
        metrics.update(paired_baseline(run, generator, specs, home, run_dir))
        if "flops/baseline_tflops_per_img" in metrics:
            metrics["flops/speedup"] = (
                metrics["flops/baseline_tflops_per_img"] / metrics["flops/tflops_per_img"]
            )
    metrics.update(overhead)  # reading back, samples.npz, grid and every metric, per image:
    metrics["perf/post_overhead_s_per_img"] = (time.perf_counter() - after_generation) / len(specs)
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))

    from lazygen.tracking import log_run

    resolved = OmegaConf.to_container(cfg, resolve=True)
    log_run(
        run.logger,
        run_dir,
        name=run_name(run, generator.policy.tag),
        group=group or run.sweep_name,
        job_type="accelerated" if is_accelerated(run) else "baseline",
        config=resolved,
        metrics=metrics,
        grid=grid,
        tags=run.tags,
        curves={"cache/recompute_frac_by_step": cache_detail["recompute_frac_by_step"]}
        if cache_detail
        else None,
    )
    return metrics
