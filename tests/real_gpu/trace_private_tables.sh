#!/bin/sh
# On a machine with an NVIDIA GPU: which private export-table slots cuBLAS (and PyTorch, if
# PYTHON names an interpreter with it; with LIBDIR too, cuBLASLt, cuFFT and CUPTI from that
# folder) call on the real driver, with their arguments.
#   tests/real_gpu/trace_private_tables.sh OUTDIR
# tabletrace.so wraps every table a process gets through cuGetExportTable except
# CUDART_INTERFACE and INTEGRITY_CHECK (their addresses take part in the integrity hash).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?an output folder}
mkdir -p "$out"
work=$(mktemp -d)
cc -shared -fPIC -O2 -o "$work/tabletrace.so" "$here/tabletrace.c" -ldl
nvcc -arch=sm_90 -o "$work/cublas_sgemm" "$here/../clients/cublas_sgemm.cu" -lcublas
LD_PRELOAD="$work/tabletrace.so" CUBLASLT_LOG_LEVEL=5 "$work/cublas_sgemm" > "$out/cublas_sgemm.txt" 2>&1
if [ -n "${PYTHON:-}" ]; then
    LD_PRELOAD="$work/tabletrace.so" "$PYTHON" -c "
import torch
a = torch.ones(256, 256, device='cuda'); b = a @ a; torch.cuda.synchronize(); print('matmul', b[0, 0].item())
" > "$out/torch.txt" 2>&1
fi
if [ -n "${PYTHON:-}" ] && [ -n "${LIBDIR:-}" ]; then
    # cuBLASLt's half-precision heuristics (1734dc26), cuFFT (6e163fbe), CUPTI (7cb63f9b):
    # LIBDIR holds the wheels' libraries (nvidia/cu13/lib)
    for what in cublaslt-f16 cufft cupti; do
        LD_PRELOAD="$work/tabletrace.so" "$PYTHON" "$here/../clients/nvidia_libraries.py" "$what" "$LIBDIR" \
            > "$out/$what.txt" 2>&1 || true
    done
fi
grep "TRACE count" "$out"/*.txt
