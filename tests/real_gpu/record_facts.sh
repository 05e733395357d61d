#!/bin/sh
# On a machine with an NVIDIA GPU and the CUDA toolkit: rebuild the fact programs and record
# what the real driver answers, for tests/data (the simulator's tests compare line by line).
#   tests/real_gpu/record_facts.sh OUTDIR
# The images kernel_checks loads are built as tests/test_kernels.py builds them.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
clients="$here/../clients"
out=${1:?an output folder}
mkdir -p "$out"
work=$(mktemp -d)
arch='-gencode arch=compute_89,code=sm_89 -gencode arch=compute_90,code=[sm_90,compute_90]'
nvcc $arch -o "$work/kernel_checks" "$clients/kernel_checks.cu"
nvcc $arch -o "$work/driver_facts" "$clients/driver_facts.cu"
nvcc -fatbin -gencode arch=compute_80,code=sm_80 -o "$work/sm80_only.fatbin" "$clients/kernel_checks.cu"
nvcc -cubin -arch=sm_80 -o "$work/sm80.cubin" "$clients/kernel_checks.cu"
nvcc -cubin -arch=sm_90 -o "$work/sm90.cubin" "$clients/kernel_checks.cu"
nvcc -ptx -arch=sm_90 -o "$work/sm90.ptx" "$clients/kernel_checks.cu"
sed 's/.target sm_90/.target sm_100/' "$work/sm90.ptx" > "$work/sm100.ptx"
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv > "$out/gpu.txt"
cd "$work"
{ ./kernel_checks sm80_only.fatbin sm80.cubin sm100.ptx sm90.cubin sm90.ptx; echo "rc $?"; } > "$out/kernel_checks.txt"
{ ./driver_facts; echo "rc $?"; } > "$out/driver_facts.txt"
echo "recorded in $out"
