#!/usr/bin/env bash
# Builds, on a machine with the Rust toolchain (no GPU needed), a self-contained folder of
# stripped executables that scripts/gpu-check.sh runs on a GPU machine without Rust:
#
#   <bundle>/tests/gpu_kernels       train's GPU kernel tests     (cargo test --release --no-run)
#   <bundle>/tests/gpu_matmul        train's cuBLASLt GEMM tests
#   <bundle>/tests/gpu_engine        the CUDA engine against the CPU engine
#   <bundle>/tests/gpu_data_parallel ranks of bin/train --device cuda over NCCL (one GPU: the
#                                    world-size-1 test only)
#   <bundle>/tests/compile           ingot-kernels' NVRTC compile test
#   <bundle>/tests/ingot_kernels     ingot-kernels' unit tests (probe, launcher, Gpu::new)
#   <bundle>/bin/prep, bin/train     the release binaries
#   <bundle>/bin/example-corpus      the example-corpus generator (the benchmark's text)
#   <bundle>/bench/gpt2-tokenizer.json.gz   GPT-2's tokenizer.json (from target/, or built by
#                                    .ci/gpt2-tokenizer.sh), for the 124M benchmark dataset
#   <bundle>/benches/                benches/train_gpu_vs_pytorch.sh and its Python scripts
#   <bundle>/gpu-check.sh            a copy of the runner
#   <bundle>/gpu-train-check.sh      a copy of the train end-to-end check it runs
#   <bundle>/MANIFEST                git revision, sizes, sha256
#   <bundle>/nvrtc/*.xz              only with --with-nvrtc: NVRTC 13.0 (from target/nvrtc, the
#                                    pip wheel .ci/run installs), xz-compressed (~31 MB), for a
#                                    GPU machine without NVRTC; gpu-check.sh unpacks it.
#
# The kernel sources are compiled into the executables (include_str!), so nothing else is
# needed. Usage: scripts/gpu-bundle.sh [--with-nvrtc] [BUNDLE_DIR (default gpu-bundle)]
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_NVRTC=0
BUNDLE=gpu-bundle
for arg in "$@"; do
    case "$arg" in
        --with-nvrtc) WITH_NVRTC=1 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) BUNDLE="$arg" ;;
    esac
done
# The bundle must stay well under the 64 MiB a device run can carry.
LIMIT_BYTES=$((60 * 1024 * 1024))

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/tests" "$BUNDLE/bin"

echo "== building release binaries (prep, train, example-corpus)"
cargo build --release -p ingot-prep -p ingot-train --bins
cargo build --release -p ingot --bin example-corpus

echo "== building test executables (cargo test --release --no-run)"
JSON="$(mktemp)"
trap 'rm -f "$JSON"' EXIT
cargo test --release --no-run --message-format=json \
    -p ingot-train --test gpu_kernels --test gpu_matmul --test gpu_engine --test gpu_data_parallel \
    -p ingot-kernels --test compile --lib >"$JSON"

# "name<TAB>executable" of every test artifact, from cargo's JSON messages.
python3 - "$JSON" >"$JSON.list" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg.get("profile", {}).get("test"):
        # A library's unit tests are named after the crate (ingot_kernels).
        name = msg["target"]["name"]
        print(f"{name}\t{msg['executable']}")
PY
found=0
while IFS=$'\t' read -r name exe; do
    case "$name" in
        gpu_kernels|gpu_matmul|gpu_engine|gpu_data_parallel|compile|ingot_kernels) ;;
        *) continue ;;
    esac
    cp "$exe" "$BUNDLE/tests/$name"
    strip "$BUNDLE/tests/$name"
    echo "   tests/$name  <- $exe"
    found=$((found + 1))
done <"$JSON.list"
rm -f "$JSON.list"
if [ "$found" -ne 6 ]; then
    echo "expected 6 test executables (gpu_kernels, gpu_matmul, gpu_engine, gpu_data_parallel, compile, ingot_kernels), found $found" >&2
    exit 1
fi

for b in prep train example-corpus; do
    cp "target/release/$b" "$BUNDLE/bin/$b"
    strip "$BUNDLE/bin/$b"
done
cp scripts/gpu-check.sh "$BUNDLE/gpu-check.sh"
cp scripts/gpu-train-check.sh "$BUNDLE/gpu-train-check.sh"

# The benchmark: its scripts, and GPT-2's tokenizer (the 124M preset's vocabulary).
mkdir -p "$BUNDLE/bench" "$BUNDLE/benches/python"
cp benches/train_gpu_vs_pytorch.sh "$BUNDLE/benches/"
cp benches/python/torch_train_gpu.py benches/python/gpu_summary.py "$BUNDLE/benches/python/"
tok=target/gpt2-tokenizer.json
[ -s "$tok" ] || .ci/gpt2-tokenizer.sh "$tok"
gzip -9 -c "$tok" >"$BUNDLE/bench/gpt2-tokenizer.json.gz"
chmod +x "$BUNDLE/gpu-check.sh" "$BUNDLE/gpu-train-check.sh" "$BUNDLE"/tests/* "$BUNDLE"/bin/*

if [ "$WITH_NVRTC" = 1 ]; then
    lib=target/nvrtc/nvidia/cu13/lib
    if [ ! -e "$lib/libnvrtc.so.13" ]; then
        echo "--with-nvrtc: $lib/libnvrtc.so.13 missing; install it as .ci/run does:" >&2
        echo "  python3 -m pip install --target target/nvrtc nvidia-cuda-nvrtc==13.0.88" >&2
        exit 1
    fi
    mkdir -p "$BUNDLE/nvrtc"
    echo "== compressing NVRTC (xz -9, about a minute and a half)"
    for f in libnvrtc.so.13 libnvrtc-builtins.so.13.0; do
        xz -T0 -9 -c "$lib/$f" >"$BUNDLE/nvrtc/$f.xz"
    done
fi

{
    echo "ingot GPU bundle"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    echo "rustc: $(rustc --version)"
    echo
    (cd "$BUNDLE" && find . -type f ! -name MANIFEST | sort | while read -r f; do
        printf '%10d  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "$f"
    done)
} >"$BUNDLE/MANIFEST"

total=$(du -sb "$BUNDLE" | cut -f1)
cat "$BUNDLE/MANIFEST"
awk -v b="$BUNDLE" -v t="$total" 'BEGIN { printf "\nbundle %s: %d bytes (%.1f MiB)\n", b, t, t / 1048576 }'
if [ "$total" -ge "$LIMIT_BYTES" ]; then
    echo "bundle too large: must stay under $((LIMIT_BYTES / 1048576)) MiB" >&2
    exit 1
fi
