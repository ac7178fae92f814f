#!/usr/bin/env bash
# Runs the GPU checks of a bundle made by scripts/gpu-bundle.sh, on a GPU machine WITHOUT a
# Rust toolchain:
#
#   1. prints the GPU (nvidia-smi);
#   2. finds libcuda.so.1, libnvrtc.so.13, libcublasLt.so.13 and libnccl.so.2 (ldconfig,
#      /usr/local/cuda*, the driver's directory, Python's site-packages nvidia/*/lib, the
#      bundle's nvrtc/*.xz) and puts their directories on LD_LIBRARY_PATH (INGOT_NVRTC_LIB and
#      INGOT_NCCL_LIB too);
#   3. runs every test executable in <bundle>/tests with INGOT_REQUIRE_GPU=1 and
#      INGOT_REQUIRE_NVRTC=1 (a missing GPU or NVRTC fails instead of skipping), and
#      `bin/{prep,train} --version` (the binaries start and their libraries resolve);
#   4. scripts/gpu-train-check.sh: the train binary with --device cuda on a small corpus,
#      straight and stopped + resumed (bit for bit), against the CPU, and a sample;
#   5. the benchmark (unless --no-bench): packs the example corpus with GPT-2's tokenizer
#      into blocks of 1024, then benches/train_gpu_vs_pytorch.sh trains the 124M preset with
#      the CUDA engine in bf16 and with PyTorch (eager and torch.compile) on those shards,
#      with the first Python that imports torch;
#   6. ends with a table: check, PASS/FAIL, seconds. Exit status 0 only if every row passed.
#
# Logs (one per check, the benchmark's results, gpu-check.log) are written to a fresh
# directory under ${TMPDIR:-/tmp}; when OUT is set, $OUT receives two files (the device tool
# brings back only a few): gpu-check-logs.tar.gz with every log, and bench-summary.json.
# The benchmark runs WARMUP=3 + STEPS=20 steps per engine with RUN_TIMEOUT=150 seconds each
# unless the environment says otherwise, so the whole check fits in a 10-minute slot. Extra arguments after the bundle directory are
# passed to every test executable (e.g. `attention` to filter, `--test-threads=1`).
#
# Usage: gpu-check.sh [--no-bench | --bench-only] [BUNDLE_DIR] [TEST ARGS...]
#   (--bench-only skips steps 3 and 4, for a second call when one call cannot hold it all)
#   BUNDLE_DIR defaults to the directory holding this script when it holds tests/ (a copy
#   inside the bundle), else gpu-bundle/.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
BENCH=1
TESTS=1
case "${1:-}" in
    --no-bench) BENCH=0; shift ;;
    --bench-only) TESTS=0; shift ;;
esac
if [ $# -ge 1 ] && [ -d "$1" ]; then
    BUNDLE="$(cd "$1" && pwd)"
    shift
elif [ -d "$here/tests" ]; then
    BUNDLE="$here"
else
    BUNDLE="$(pwd)/gpu-bundle"
fi
TEST_ARGS=("$@")
if [ ! -d "$BUNDLE/tests" ]; then
    echo "no bundle at $BUNDLE (expected $BUNDLE/tests); build one with scripts/gpu-bundle.sh" >&2
    exit 2
fi

LOGS="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
exec > >(tee "$LOGS/gpu-check.log") 2>&1

echo "== bundle: $BUNDLE"
[ -f "$BUNDLE/MANIFEST" ] && sed -n '2,4p' "$BUNDLE/MANIFEST"
echo "== host: $(uname -srm), $(nproc 2>/dev/null || echo '?') CPUs"

echo
echo "== GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
else
    echo "nvidia-smi not found"
fi

# ---- libraries ---------------------------------------------------------------------------------

# Directories that may hold CUDA libraries, in order of preference.
candidate_dirs() {
    local d py sp
    # ldconfig's cache: the directory of every matching library.
    if command -v ldconfig >/dev/null 2>&1; then
        ldconfig -p 2>/dev/null | awk -F'=> ' '/libcuda\.so|libnvrtc|libcublasLt|libnccl/ {print $2}' |
            xargs -r -n1 dirname 2>/dev/null | awk '!seen[$0]++'
    fi
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
        /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/targets/x86_64-linux/lib \
        /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/lib/wsl/lib /usr/local/nvidia/lib64 \
        /usr/local/nvidia/lib /opt/cuda/lib64; do
        [ -d "$d" ] && echo "$d"
    done
    # The driver's own directory (where nvidia-smi's libnvidia-ml lives).
    if command -v nvidia-smi >/dev/null 2>&1 && command -v ldd >/dev/null 2>&1; then
        ldd "$(command -v nvidia-smi)" 2>/dev/null | awk '/libnvidia-ml/ {print $3}' |
            xargs -r -n1 dirname 2>/dev/null
    fi
    # pip wheels: <site-packages>/nvidia/*/lib (cu13/lib, cuda_nvrtc/lib, cublas/lib, ...).
    for py in python3 python; do
        command -v "$py" >/dev/null 2>&1 || continue
        "$py" - 2>/dev/null <<'PY' | while read -r sp; do
import site, sys
paths = list(getattr(site, "getsitepackages", lambda: [])())
try:
    paths.append(site.getusersitepackages())
except Exception:
    pass
paths += [p for p in sys.path if p.endswith("-packages")]
print("\n".join(dict.fromkeys(paths)))
PY
            for d in "$sp"/nvidia/*/lib; do [ -d "$d" ] && echo "$d"; done
        done
    done
    [ -d "$WORK/nvrtc" ] && echo "$WORK/nvrtc"
}

# Prints the full path of the first `name` (a soname) found in the candidate directories.
find_lib() {
    local name="$1" d
    while read -r d; do
        if [ -e "$d/$name" ]; then
            echo "$d/$name"
            return 0
        fi
    done < <(candidate_dirs)
    return 1
}

LIB_DIRS=()
add_dir() {
    local d="$1" x
    for x in "${LIB_DIRS[@]+"${LIB_DIRS[@]}"}"; do [ "$x" = "$d" ] && return; done
    LIB_DIRS+=("$d")
}

echo
echo "== libraries"
if p="$(find_lib libcuda.so.1)"; then
    echo "libcuda.so.1       $p"
    add_dir "$(dirname "$p")"
else
    echo "libcuda.so.1       NOT FOUND (no NVIDIA driver on this machine?)"
fi

nvrtc=""
if nvrtc="$(find_lib libnvrtc.so.13)"; then
    :
elif ls "$BUNDLE"/nvrtc/libnvrtc.so.13.xz >/dev/null 2>&1; then
    mkdir -p "$WORK/nvrtc"
    for f in "$BUNDLE"/nvrtc/*.xz; do
        out="$WORK/nvrtc/$(basename "$f" .xz)"
        if command -v xz >/dev/null 2>&1; then
            xz -dc "$f" >"$out"
        else
            python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$out"
        fi
    done
    echo "(unpacked the bundle's NVRTC into $WORK/nvrtc)"
    nvrtc="$(find_lib libnvrtc.so.13)" || nvrtc=""
fi
if [ -n "$nvrtc" ]; then
    echo "libnvrtc.so.13     $nvrtc"
    add_dir "$(dirname "$nvrtc")"
    export INGOT_NVRTC_LIB="$nvrtc"
else
    echo "libnvrtc.so.13     NOT FOUND (bundle built without --with-nvrtc?)"
fi

if p="$(find_lib libcublasLt.so.13)"; then
    echo "libcublasLt.so.13  $p"
    add_dir "$(dirname "$p")"
else
    echo "libcublasLt.so.13  NOT FOUND (the GEMM and engine tests, the train check and the benchmark need it)"
fi

if p="$(find_lib libnccl.so.2)"; then
    echo "libnccl.so.2       $p"
    add_dir "$(dirname "$p")"
    export INGOT_NCCL_LIB="$p"
else
    echo "libnccl.so.2       NOT FOUND (gpu_data_parallel needs it: pip install nvidia-nccl-cu13)"
fi

if [ ${#LIB_DIRS[@]} -gt 0 ]; then
    joined="$(IFS=:; echo "${LIB_DIRS[*]}")"
    export LD_LIBRARY_PATH="$joined${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

# ---- tests -------------------------------------------------------------------------------------

export INGOT_REQUIRE_GPU=1
export INGOT_REQUIRE_NVRTC=1
export INGOT_CACHE_DIR="$WORK/kernel-cache"
# gpu_data_parallel starts ranks of the bundle's train, not the build tree's.
export INGOT_TRAIN_BIN="$BUNDLE/bin/train"
export RUST_BACKTRACE=1

NAMES=()
RESULTS=()
SECONDS_TAKEN=()

# run NAME LOGFILE CMD...: runs CMD, logging to LOGFILE, and records the result.
run() {
    local name="$1" log="$2" t0 t1 rc
    shift 2
    echo
    echo "== $name: $*"
    t0=$(date +%s.%N)
    "$@" >"$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    cat "$log"
    NAMES+=("$name")
    if [ $rc -eq 0 ]; then RESULTS+=("PASS"); else RESULTS+=("FAIL (rc $rc)"); fi
    SECONDS_TAKEN+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')")
}

# The kernel compile test first (it needs NVRTC only), then the unit tests, then the GPU tests.
[ "$TESTS" = 1 ] && for name in compile ingot_kernels gpu_kernels gpu_matmul gpu_engine; do
    exe="$BUNDLE/tests/$name"
    [ -x "$exe" ] || continue
    run "$name" "$LOGS/$name.log" "$exe" --nocapture "${TEST_ARGS[@]+"${TEST_ARGS[@]}"}"
done
[ "$TESTS" = 1 ] && for exe in "$BUNDLE"/tests/*; do
    name="$(basename "$exe")"
    case "$name" in compile|ingot_kernels|gpu_kernels|gpu_matmul|gpu_engine) continue ;; esac
    [ -x "$exe" ] && run "$name" "$LOGS/$name.log" "$exe" --nocapture "${TEST_ARGS[@]+"${TEST_ARGS[@]}"}"
done
# The binaries start (their libraries resolve) and the CLI parses.
for b in prep train; do
    [ -x "$BUNDLE/bin/$b" ] && run "bin/$b --version" "$LOGS/bin-$b.log" "$BUNDLE/bin/$b" --version
done

# The train binary end to end on the GPU: straight, stopped and resumed, against the CPU.
if [ "$TESTS" = 1 ] && [ -x "$BUNDLE/gpu-train-check.sh" ]; then
    run "train end to end" "$LOGS/train-e2e.log" "$BUNDLE/gpu-train-check.sh" "$BUNDLE/bin" "$WORK/train-e2e"
fi

# ---- benchmark ---------------------------------------------------------------------------------

# The first Python that imports torch with CUDA.
torch_python() {
    local py
    for py in python3 python /usr/bin/python3 /usr/local/bin/python3; do
        command -v "$py" >/dev/null 2>&1 || continue
        "$py" -c 'import torch, numpy, transformers; assert torch.cuda.is_available()' >/dev/null 2>&1 &&
            { echo "$py"; return 0; }
    done
    return 1
}

# bench: the example corpus packed with GPT-2's tokenizer, then the GPU-vs-PyTorch harness.
bench() {
    local py data="$WORK/bench"
    py="$(torch_python)" || { echo "no Python that imports torch (with CUDA), numpy and transformers"; return 1; }
    echo "python: $py ($("$py" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
    mkdir -p "$data"
    gzip -dc "$BUNDLE/bench/gpt2-tokenizer.json.gz" >"$data/gpt2-tokenizer.json" || return 1
    "$BUNDLE/bin/example-corpus" "$data/corpus" 20000 || return 1
    "$BUNDLE/bin/prep" --input "$data/corpus" --tokenizer "$data/gpt2-tokenizer.json" \
        --block-size 1024 --val-fraction 0 --out "$data/shards" --quiet || return 1
    RESULTS="$LOGS/bench" RUN_TIMEOUT="${RUN_TIMEOUT:-150}" WARMUP="${WARMUP:-3}" STEPS="${STEPS:-20}" \
        "$BUNDLE/benches/train_gpu_vs_pytorch.sh" "$data/shards" "$py" "$BUNDLE/bin/train"
}
if [ "$BENCH" = 1 ]; then
    if [ -x "$BUNDLE/benches/train_gpu_vs_pytorch.sh" ]; then
        run "bench (124M vs torch)" "$LOGS/bench.log" bench
    else
        echo "no benchmark in $BUNDLE (rebuild it with scripts/gpu-bundle.sh)"
    fi
fi

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    tar czf "$OUT/gpu-check-logs.tar.gz" -C "$LOGS" . 2>/dev/null
    [ -f "$LOGS/bench/summary.json" ] && cp "$LOGS/bench/summary.json" "$OUT/bench-summary.json"
fi
echo
echo "== summary (logs in $LOGS)"
printf '%-24s %-12s %8s\n' "check" "result" "seconds"
printf '%-24s %-12s %8s\n' "------------------------" "------------" "--------"
failed=0
for i in "${!NAMES[@]}"; do
    printf '%-24s %-12s %8s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECONDS_TAKEN[$i]}"
    [ "${RESULTS[$i]}" = PASS ] || failed=$((failed + 1))
done
if [ ${#NAMES[@]} -eq 0 ]; then
    echo "no test executables in $BUNDLE/tests" >&2
    exit 2
fi
if [ $failed -gt 0 ]; then
    echo "$failed of ${#NAMES[@]} FAILED"
    exit 1
fi
echo "all ${#NAMES[@]} passed"
