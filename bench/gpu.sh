#!/usr/bin/env bash
# The recurrence op on a GPU against its reference composition and PyTorch's cuDNN layers: the
# measurement of the GPU issue, as one script for a session on a GPU machine.
#
#   bench/gpu.sh BACKEND [rehearse]
#
# BACKEND is the `--device` of a binary built with that feature (cuda, vulkan, wgpu):
# $EMBER, else target/release/ember, else one built here with `cargo build --release --features
# BACKEND` (a real cuda build of CubeCL downloads an LLVM bundle; where the network is closed,
# carry a `--features vulkan` binary and pass vulkan, which runs on the NVIDIA driver).
# `rehearse` runs the two tiny cases instead of the four real ones: the check of this script on
# a software driver (lavapipe) before a GPU session spends its time.
#
# PyTorch joins when $PYTORCH names a python with torch, or when python3 has it; with CUDA it
# times cuDNN, TF32 off and on. Writes $OUT/recurrence.jsonl (one `ember bench` line per case)
# and $OUT/recurrence.md (the table); OUT defaults to bench/gpu-out.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=${1:?usage: bench/gpu.sh cuda|vulkan|wgpu [rehearse]}
mode=${2:-measure}
out=${OUT:-bench/gpu-out}
seconds=${SECONDS_PER_CASE:-8}
mkdir -p "$out"

ember=${EMBER:-target/release/ember}
# A binary carried to a machine without the crates or the network: stripped and xz-compressed
# (bench/README.md, "The recurrence op on GPUs"), named by EMBER_XZ.
if [ -n "${EMBER_XZ:-}" ]; then
  ember=$out/ember
  xz -dc "$EMBER_XZ" > "$ember"
  chmod +x "$ember"
fi
if [ ! -x "$ember" ]; then
  cargo build --release --features "$backend"
fi
"$ember" devices
if command -v nvidia-smi > /dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
fi

python=${PYTORCH:-}
if [ -z "$python" ] && python3 -c 'import torch' > /dev/null 2>&1; then
  python=python3
fi
pytorch=()
if [ -n "$python" ]; then
  pytorch=(--pytorch "$python")
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda:", torch.cuda.is_available())'
else
  echo "no PyTorch: the table leaves its columns empty" >&2
fi

if [ "$mode" = rehearse ]; then
  cases=(lstm-1x32-b4-t8 gru-1x32-b4-t8)
else
  cases=(lstm-2x128-b32-t64 lstm-2x512-b64-t100 lstm-1x1024-b32-t256 gru-2x256-b64-t100)
fi

: > "$out/recurrence.jsonl"
for case in "${cases[@]}"; do
  "$ember" --device "$backend" bench --filter "recurrence-$case" --seconds "$seconds" \
    "${pytorch[@]}" | tee -a "$out/recurrence.jsonl"
done

python3 - "$out/recurrence.jsonl" > "$out/recurrence.md" << 'TABLE'
import json, sys

def ms(value):
    return "-" if value is None else f"{value:.3f}"

print("| case | op fwd ms | op fwd+bwd ms | reference fwd+bwd ms | op vs reference (fwd / fwd+bwd) "
      "| op first call ms | cuDNN fwd+bwd ms (TF32 off / on) | cuDNN / op (off / on) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"| {r['case']} | {ms(r['op_forward_ms'])} | {ms(r['op_forward_backward_ms'])} "
          f"| {ms(r['reference_forward_backward_ms'])} "
          f"| {r['speedup_forward']:.1f}x / {r['speedup_forward_backward']:.1f}x "
          f"| {ms(r['op_first_call_ms'])} "
          f"| {ms(r.get('pytorch_forward_backward_ms'))} / {ms(r.get('pytorch_tf32_forward_backward_ms'))} "
          f"| {ms(r.get('ratio_to_pytorch_forward_backward'))} / {ms(r.get('ratio_to_pytorch_tf32_forward_backward'))} |")
TABLE
cat "$out/recurrence.md"
