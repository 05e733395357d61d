// Two reductions of n floats: a shared-memory tree per block (its partial sums written out:
// the order of additions is fixed, the test repeats it), and a warp-shuffle reduction of
// integers into one atomic total.
//   reduction N IN OUT   (OUT: the block sums, then the integer total as 8 bytes)
#include "program.h"
#define BLOCK 256

__global__ void block_sums(int n, const float *x, float *sums) {
  __shared__ float partial[BLOCK];
  int i = blockIdx.x * BLOCK + threadIdx.x;
  partial[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
#pragma unroll 1
  for (int s = BLOCK / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) sums[blockIdx.x] = partial[0];
}

__global__ void warp_total(int n, const float *x, unsigned long long *total) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  long long v = i < n ? (long long)(x[i] * 1000.0f) : 0;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if ((threadIdx.x & 31) == 0) atomicAdd(total, (unsigned long long)v);
}

int main(int argc, char **argv) {
  int n = std::atoi(argv[1]);
  int blocks = (n + BLOCK - 1) / BLOCK;
  float *host = (float *)read_file(argv[2], sizeof(float) * n);
  float *x, *sums;
  unsigned long long *total;
  REPORT("malloc", cudaMalloc(&x, sizeof(float) * n) | cudaMalloc(&sums, sizeof(float) * blocks) |
                       cudaMalloc(&total, 8));
  REPORT("h2d", cudaMemcpy(x, host, sizeof(float) * n, cudaMemcpyHostToDevice));
  REPORT("memset", cudaMemset(total, 0, 8));
  block_sums<<<blocks, BLOCK>>>(n, x, sums);
  warp_total<<<blocks, BLOCK>>>(n, x, total);
  REPORT("sync", cudaDeviceSynchronize());
  char *out = (char *)std::malloc(sizeof(float) * blocks + 8);
  REPORT("d2h", cudaMemcpy(out, sums, sizeof(float) * blocks, cudaMemcpyDeviceToHost) |
                    cudaMemcpy(out + sizeof(float) * blocks, total, 8, cudaMemcpyDeviceToHost));
  write_file(argv[3], out, sizeof(float) * blocks + 8);
  return 0;
}
