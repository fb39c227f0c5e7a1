#!/usr/bin/env bash
# Install the OpenMMLab stack (mmcv 2.1.0 with compiled ops, mmengine, mmdet, mmsegmentation) next to
# the torch already in the environment, without ever replacing that torch.
#
#   scripts/setup_mm.sh PYTHON            (make setup-mm; MM_WHEELS=dir MM_WHEELS_TORCH=version to offer wheels)
#
# mmcv 2.x has no registry wheel for our torch, only the sdist. Where mmcv comes from, in order:
#   1. MM_WHEELS (a folder of prebuilt wheels, e.g. ../shared/wheels), only when MM_WHEELS_TORCH (the torch the
#      wheels were built for) equals this environment's torch.__version__; a mismatch is reported and skipped.
#   2. The local cache $MM_CACHE/torch-<torch version>/ (keyed by torch, so a cached wheel always matches).
#   3. A source build with the recipe of shared/wheels/README.md, whose wheel then goes into the cache:
#      setuptools<81, --no-build-isolation, -std=c++17 raised to c++20 (torch >= 2.10 headers),
#      MMCV_WITH_OPS=1, MAX_JOBS=2; CUDA ops when nvcc is on PATH and a GPU (or TORCH_CUDA_ARCH_LIST) gives
#      the target architecture, else CPU ops (about an hour on 2 CPU cores). MM_CUDA=0/1 forces the choice.
#      MM_PREPARE_ONLY=1 stops after downloading and patching the sdist (checks the recipe without compiling).
# Afterwards the ops are smoke-tested (mmcv.ops.nms) and torch must be the version it was before.
set -euo pipefail
PY=${1:?usage: setup_mm.sh PYTHON}
MMCV_VERSION=2.1.0
PACKAGES=(mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 ftfy regex addict yapf pycocotools)
MM_CACHE=${MM_CACHE:-$HOME/.cache/vitquant/wheels}
TORCH=$("$PY" -c 'import torch; print(torch.__version__)')
CACHE_DIR="$MM_CACHE/torch-$TORCH"
say() { echo "setup-mm: $*" >&2; }
pip() { "$PY" -m pip install --quiet "$@"; }

# CUDA ops need nvcc and a target architecture: the visible GPU's, or TORCH_CUDA_ARCH_LIST. An nvcc on a
# machine without a GPU (CPU CI images ship one) and no arch list would make torch's extension builder fail,
# so that case builds the CPU ops only. MM_CUDA=0/1 overrides the choice.
want_cuda() {
    if [[ -n "${MM_CUDA:-}" ]]; then
        [[ "$MM_CUDA" == 0 || "$MM_CUDA" == 1 ]] || { say "error: MM_CUDA=$MM_CUDA: use 0 (CPU ops) or 1 (CUDA ops)"; exit 2; }
        echo "$MM_CUDA"; return
    fi
    command -v nvcc >/dev/null || { echo 0; return; }
    [[ -n "${TORCH_CUDA_ARCH_LIST:-}" ]] && { echo 1; return; }
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)' \
        && echo 1 || echo 0
}

find_wheel() { ls "$1"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true; }

build_from_source() {
    local force_cuda; force_cuda=$(want_cuda)
    local work; work=$(mktemp -d)
    say "mmcv ops: $([[ $force_cuda == 1 ]] && echo "CPU and CUDA (arch ${TORCH_CUDA_ARCH_LIST:-of the visible GPU})" || echo CPU)"
    say "building mmcv $MMCV_VERSION from source for torch $TORCH in $work (about an hour on 2 cores)"
    pip "setuptools<81" wheel ninja
    "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$work"
    tar xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
    local setup="$work/mmcv-$MMCV_VERSION/setup.py"
    sed -i "s/extra_compile_args\['cxx'\] = \['-std=c++17'\]/extra_compile_args['cxx'] = ['-std=c++20']/" "$setup"
    grep -q "'-std=c++20'" "$setup" || { say "error: the c++20 patch did not apply to $setup"; exit 1; }
    if [[ -n "${MM_PREPARE_ONLY:-}" ]]; then say "sdist downloaded and patched in $work (MM_PREPARE_ONLY)"; exit 0; fi
    mkdir -p "$CACHE_DIR"
    MMCV_WITH_OPS=1 FORCE_CUDA=$force_cuda MAX_JOBS=${MAX_JOBS:-2} \
        "$PY" -m pip wheel --no-deps --no-build-isolation "$work/mmcv-$MMCV_VERSION" -w "$CACHE_DIR"
    rm -rf "$work"
}

wheel=""
if [[ -n "${MM_WHEELS:-}" ]]; then
    if [[ "${MM_WHEELS_TORCH:-}" == "$TORCH" ]]; then
        wheel=$(find_wheel "$MM_WHEELS")
        [[ -n "$wheel" ]] || say "no mmcv-$MMCV_VERSION wheel in MM_WHEELS=$MM_WHEELS"
    else
        say "not using MM_WHEELS=$MM_WHEELS: built for torch '${MM_WHEELS_TORCH:-unknown}', this is torch $TORCH (set MM_WHEELS_TORCH)"
    fi
fi
[[ -n "$wheel" ]] || wheel=$(find_wheel "$CACHE_DIR")
if [[ -z "$wheel" ]]; then build_from_source; wheel=$(find_wheel "$CACHE_DIR"); fi
say "mmcv from $wheel"
pip --no-deps --force-reinstall "$wheel"
constraints=$(mktemp)  # the torch pair already installed (constraints.txt's or a cluster's own build) stays
printf 'torch==%s\ntorchvision==%s\n' "$TORCH" "$("$PY" -c 'import torchvision; print(torchvision.__version__)')" > "$constraints"
pip -c "$constraints" "${PACKAGES[@]}"
rm -f "$constraints"
"$PY" - "$TORCH" <<'PY'
import sys
import torch
from mmcv.ops import nms
import mmdet, mmseg  # noqa: F401  (both must import)
assert torch.__version__ == sys.argv[1], f"torch changed: {sys.argv[1]} -> {torch.__version__}"
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
_, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
assert keep.tolist() == [0, 2], keep
print(f"setup-mm: mmcv ops work; mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, torch {torch.__version__}")
PY
