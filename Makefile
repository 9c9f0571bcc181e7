# lazygen developer commands. `make help` lists them.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0

.PHONY: help install test test-full lint run bench bench-throughput audit train-tiny floor gpu-check

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-11s %s\n", $$1, $$2}'

install:  ## install lazygen (editable) with dev tools; CPU torch first so no CUDA wheels are pulled
	$(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the fast default suite (slow tests excluded), under 15 minutes on 2 cores (758-777 s on 2026-12-04)
	$(PYTHON) -m pytest -q

test-full:  ## every test, slow ones included
	$(PYTHON) -m pytest -q -m "slow or not slow"

lint:  ## ruff lint and format check
	$(PYTHON) -m ruff check lazygen tests
	$(PYTHON) -m ruff format --check lazygen tests

run:  ## the embedded CPU default run
	$(PYTHON) -m lazygen

bench:  ## FLOPs of MAR-B/L/H with/without LazyMAR, KV memory and FLOPs of LlamaGen-XL with ADSA, CPU wall-clock
	$(PYTHON) -m lazygen.bench
	$(PYTHON) -m lazygen.bench_llamagen --memory-mib 64

bench-throughput:  ## seconds per image against batch size, threads and precision of the tiny models (CPU)
	$(PYTHON) -m lazygen.bench_throughput

audit:  ## every cache policy and sampler on every shipped model: FLOPs and KV bytes against its baseline
	$(PYTHON) -m lazygen.audit

train-tiny:  ## retrain the shipped evaluator, tiny_mar (autoencoder, then MAR) and tiny_llamagen on digits16 into lazygen/assets (CPU)
	$(PYTHON) -m lazygen.train recipe=evaluator data=digits16 export_dir=lazygen/assets
	$(PYTHON) -m lazygen.train recipe=tokenizer model=tiny_mar data=digits16 export_dir=lazygen/assets
	$(PYTHON) -m lazygen.train model=tiny_mar data=digits16 export_dir=lazygen/assets
	$(PYTHON) -m lazygen.train recipe=llamagen model=tiny_llamagen data=digits16 export_dir=lazygen/assets

gpu-check:  ## on a CUDA machine: parity on CUDA, tiny runs with hardware=gpu (fp32/bf16/compiled), GPU wall-clock
	bash tests/gpu_check.sh

floor:  ## FID / IS / class accuracy of the real held-out digits (what generated digits can reach)
	$(PYTHON) -m lazygen.floor
