# vitquant: `make demo` and `make test` work on a fresh machine (they set themselves up first).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# One torch thread: on 2 shared cores, two threads under load ran 25x slower.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: setup setup-mm demo test test-cluster test-wheel test-all bench bench-speed bench-qat bench-imagenet reference lint clean report

setup: $(VENV)/.installed

# The tested torch pair comes from constraints.txt (pyproject.toml only gives a range, see docs/install.md).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# Detection/segmentation stack (mmcv 2.1.0 with ops, mmengine, mmdet, mmseg) next to the project's torch; see
# scripts/setup_mm.sh. MM_WHEELS=<folder> MM_WHEELS_TORCH=<torch.__version__ they were built for> offers prebuilt
# mmcv wheels (e.g. ../shared/wheels); otherwise mmcv is built from source once (about an hour on 2 cores) and
# cached in $(MM_CACHE).
MM_WHEELS       ?=
MM_WHEELS_TORCH ?=
MM_CACHE        ?= $(HOME)/.cache/vitquant/wheels
setup-mm: setup
	MM_WHEELS="$(MM_WHEELS)" MM_WHEELS_TORCH="$(MM_WHEELS_TORCH)" MM_CACHE="$(MM_CACHE)" scripts/setup_mm.sh $(BIN)/python

demo: setup  ## train (first time) and quantize the embedded demo model, print a table
	$(BIN)/python -m vitquant.demo

test: setup  ## fast suite (minutes)
	$(BIN)/python -m pytest -q

test-cluster: setup  ## Slurm tests on a one-node cluster (scripts/slurm/start.sh; root + apt, else skipped)
	$(BIN)/python -m pytest -q -m cluster tests/cluster

test-wheel: setup  ## the built wheel, installed into a fresh venv, runs the entry points and the demo from another folder
	$(BIN)/python -m pytest -q -m wheel tests/test_packaging.py

test-all: setup  ## everything, slow end-to-end runs included
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: setup  ## quality/speed benchmark on the CIFAR reference models -> bench/results/
	$(BIN)/python -m bench.quality $(BENCH_ARGS)

bench-speed: setup  ## FP32 PyTorch / FP32 ORT / INT8 ORT latency, throughput, sizes -> bench/results/speed.*
	$(BIN)/python -m bench.speed $(BENCH_ARGS)

bench-qat: setup  ## QAT benchmark (LSQ vs VVTQ + ablations, CIFAR ViT, W2A2/W3A3) -> bench/results/qat.{json,md}
	$(BIN)/python -m bench.qat $(BENCH_ARGS)

bench-imagenet: setup  ## PTQ on the real ImageNet ViT-Ti, label-free (agree_top1, KL) on COCO128 objects -> bench/results/imagenet.*
	$(BIN)/python -m bench.imagenet $(BENCH_ARGS)

report: setup  ## table + plots of a sweep: make report SWEEP="multirun/calibrate/<sweep> [more dirs]" [REPORT_ARGS=--metric=top1]
	@test -n "$(SWEEP)" || { echo "error: give SWEEP=<sweep or run folders>"; exit 2; }
	$(BIN)/python -m vitquant.analysis.report $(SWEEP) $(REPORT_ARGS)

reference: setup  ## train missing CIFAR reference models into the cache (recipe of shared/models)
	$(BIN)/python -m bench.references
	@if $(BIN)/python -c "import mmdet, mmseg" 2>/dev/null; then $(BIN)/python -m bench.mm_reference detection \
	&& $(BIN)/python -m bench.mm_reference segmentation && $(BIN)/python -m bench.mm_reference segmentation_vit; \
	else echo "reference detector and segmentor skipped: run make setup-mm first"; fi

lint: setup
	$(BIN)/python -m ruff check vitquant tests bench scripts *.py

clean:
	rm -rf outputs multirun wandb .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
