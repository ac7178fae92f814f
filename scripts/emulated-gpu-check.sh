#!/usr/bin/env bash
# The CUDA path under the stand-in CUDA device (emulator/), on a machine without a GPU:
#
#   1. builds the stand-ins (libcuda.so.1, libnvrtc.so.13, libcublasLt.so.13, libnccl.so.2
#      from emulator/{cuda,nvrtc,cublaslt,nccl}), the test executables and the binaries;
#   2. puts the stand-ins first on LD_LIBRARY_PATH (and unsets INGOT_NVRTC_LIB, which would
#      load a real NVRTC), with INGOT_REQUIRE_GPU=1 and INGOT_REQUIRE_NVRTC=1 so that nothing
#      skips, and a kernel cache of its own under target/emulator/cache;
#   3. runs: the emulator's own tests, every kernel unit through the stand-in NVRTC
#      (kernels/tests/compile.rs), the GPU tests gpu_kernels, gpu_matmul and gpu_engine, the
#      NCCL backend's gpu_data_parallel (ranks of train --device cuda against one process), and
#      scripts/gpu-train-check.sh (the train binary with --device cuda: straight, stopped and
#      resumed bit for bit, against the CPU, train sample, a refused oversized batch);
#   4. ends with a table: check, PASS/FAIL, seconds; exits non-zero if any check failed.
#
# Everything here is EMULATED: it checks the host code, launch shapes and limits, indexing,
# barriers and numerics against the CPU, not speed nor the real GPU. Logs go to
# target/emulator/logs/. INGOT_EMU_SEED (default 0) seeds the emulated schedules; extra
# arguments are passed to the GPU test executables (a filter, --nocapture, ...).
#
# Usage: scripts/emulated-gpu-check.sh [TEST ARGS...]
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
emu="$root/target/emulator"
logs="$emu/logs"
rm -rf "$logs"
mkdir -p "$emu/lib" "$logs"

echo "== building the stand-ins, the tests and the binaries"
if ! cargo build -q -p ingot-emu-cuda -p ingot-emu-nvrtc -p ingot-emu-cublaslt -p ingot-emu-nccl \
    || ! cargo build -q -p ingot-prep -p ingot-train -p ingot --bins \
    || ! cargo test -q --no-run -p ingot-train -p ingot-kernels -p ingot-emu-cuda -p ingot-emu-nccl 2>"$logs/build.log"; then
    cat "$logs/build.log" 2>/dev/null
    echo "build failed" >&2
    exit 1
fi
# Installed by rename, so that a process still running the old copy keeps its mapping.
install_lib() { # crate soname link
    cp "target/debug/libingot_emu_$1.so" "$emu/lib/.$2.tmp" && mv -f "$emu/lib/.$2.tmp" "$emu/lib/$2"
    ln -sf "$2" "$emu/lib/$3"
}
install_lib cuda libcuda.so.1 libcuda.so
install_lib nvrtc libnvrtc.so.13 libnvrtc.so
install_lib cublaslt libcublasLt.so.13 libcublasLt.so
install_lib nccl libnccl.so.2 libnccl.so

export LD_LIBRARY_PATH="$emu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset INGOT_NVRTC_LIB
export INGOT_REQUIRE_GPU=1 INGOT_REQUIRE_NVRTC=1
export INGOT_CACHE_DIR="$emu/cache"

names=()
results=()
seconds=()
run() { # name command...
    local name=$1
    shift
    local t0=$SECONDS
    echo
    echo "== $name (emulated)"
    if "$@" >"$logs/$name.log" 2>&1; then
        results+=(PASS)
        grep -E "^test result|PASS|relative|killed" "$logs/$name.log" | tail -12
    else
        results+=(FAIL)
        tail -40 "$logs/$name.log"
    fi
    names+=("$name")
    seconds+=($((SECONDS - t0)))
}

run emulator-self-tests cargo test -q -p ingot-emu-cuda -p ingot-emu-nvrtc -p ingot-emu-cublaslt -p ingot-emu-nccl
run kernels-compile cargo test -q -p ingot-kernels --test compile
run gpu_kernels cargo test -q -p ingot-train --test gpu_kernels -- "$@"
run gpu_matmul cargo test -q -p ingot-train --test gpu_matmul -- "$@"
run gpu_engine cargo test -q -p ingot-train --test gpu_engine -- "$@"
# 2 ranks of train --device cuda through the stand-in NCCL against one process.
run gpu_data_parallel cargo test -q -p ingot-train --test gpu_data_parallel -- --nocapture "$@"
# Blocks of 64 and 8 steps: at T = 256 the warp-per-row attention of the tiny model (head
# dim 16) takes seconds per launch on the CPU.
run gpu-train-check env STEPS=8 BLOCK_SIZE=64 BATCH_SIZE=8 \
    scripts/gpu-train-check.sh "$root/target/debug" "$emu/train-check"

echo
echo "== emulated GPU check (the stand-in CUDA device, not a GPU)"
printf '%-22s %-6s %8s\n' check result seconds
failed=0
for i in "${!names[@]}"; do
    printf '%-22s %-6s %8s\n' "${names[$i]}" "${results[$i]}" "${seconds[$i]}"
    [ "${results[$i]}" = PASS ] || failed=1
done
echo "logs: $logs"
exit $failed
