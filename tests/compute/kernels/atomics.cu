// Atomics under contention: every CTA runs on some host core, several at once.
#include <stdint.h>

// 256-bin histogram: atomicAdd on shared memory per CTA, then on global memory
extern "C" __global__ void histogram(int n, const unsigned char *x, unsigned *bins) {
  __shared__ unsigned local[256];
  for (int b = threadIdx.x; b < 256; b += blockDim.x) local[b] = 0;
  __syncthreads();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    atomicAdd(&local[x[i]], 1u);
  __syncthreads();
  for (int b = threadIdx.x; b < 256; b += blockDim.x) atomicAdd(&bins[b], local[b]);
}

// histogram straight into global memory (every thread of every CTA on the same few bins)
extern "C" __global__ void histogram_global(int n, const unsigned char *x, unsigned *bins) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) atomicAdd(&bins[x[i] & 7], 1u);
}

// a global counter: the values it hands out are a permutation of 0..n-1
extern "C" __global__ void ticket(int *counter, int *tickets) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  tickets[i] = atomicAdd(counter, 1);
}

// float add through an atomicCAS loop
extern "C" __global__ void cas_float_add(int n, const float *x, float *sum) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  unsigned *address = (unsigned *)sum;
  unsigned old = *address, assumed;
  do {
    assumed = old;
    old = atomicCAS(address, assumed, __float_as_uint(__uint_as_float(assumed) + x[i]));
  } while (old != assumed);
}

// min, max, and, or, xor, exch, inc, dec, sub on 32 bits; add, max, min, and, or, xor, cas on 64
extern "C" __global__ void atomic_ops(int n, const int *x, const unsigned long long *w, int *acc32,
                                      unsigned *uacc, unsigned long long *acc64, long long *sacc64,
                                      int *exchanged) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  atomicMin(&acc32[0], x[i]);
  atomicMax(&acc32[1], x[i]);
  atomicAnd(&acc32[2], x[i] | 0x10000);
  atomicOr(&acc32[3], x[i] & 0x7f0f);
  atomicXor(&acc32[4], x[i]);
  atomicSub(&acc32[5], x[i]);
  exchanged[i] = atomicExch(&acc32[6], x[i]);
  atomicMin(&uacc[0], (unsigned)x[i]);
  atomicMax(&uacc[1], (unsigned)x[i]);
  atomicInc(&uacc[2], 1000u);
  atomicDec(&uacc[3], 77u);
  atomicAdd(&acc64[0], w[i]);
  atomicMax(&acc64[1], w[i]);
  atomicMin(&acc64[2], w[i]);
  atomicAnd(&acc64[3], w[i] | 0xff00ff00ff00ff00ull);
  atomicOr(&acc64[4], w[i] & 0x0123456789abcdefull);
  atomicXor(&acc64[5], w[i]);
  atomicMax(&sacc64[0], (long long)w[i]);
  atomicMin(&sacc64[1], (long long)w[i]);
  unsigned long long old = acc64[6], assumed;
  do {  // 64-bit CAS loop: add i + 1
    assumed = old;
    old = atomicCAS(&acc64[6], assumed, assumed + i + 1);
  } while (old != assumed);
  atomicAdd((double *)&acc64[7], 0.5);
  atomicAdd((float *)&uacc[4], 0.25f);
}
