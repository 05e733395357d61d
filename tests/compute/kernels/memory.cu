// Dynamic shared memory, per-thread local arrays indexed at run time, module variables.
#include <stdint.h>

// reverse each block's slice through dynamic shared memory sized at launch
extern "C" __global__ void reverse_dynamic(const float *x, float *out) {
  extern __shared__ float tile[];
  int base = blockIdx.x * blockDim.x;
  tile[threadIdx.x] = x[base + threadIdx.x];
  __syncthreads();
  out[base + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

// two arrays carved out of one dynamic allocation: ints after doubles
extern "C" __global__ void dynamic_two_arrays(const double *x, const int *y, double *out) {
  extern __shared__ double pool[];
  double *d = pool;
  int *k = (int *)(pool + blockDim.x);
  int base = blockIdx.x * blockDim.x, t = threadIdx.x;
  d[t] = x[base + t];
  k[t] = y[base + t];
  __syncthreads();
  out[base + t] = d[(t + 1) % blockDim.x] * k[(t + 7) % blockDim.x];
}

// a local array filled and read at indices only known at run time
extern "C" __global__ void local_array(const int *x, const int *index, int *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int table[40];
#pragma unroll 1
  for (int k = 0; k < 40; ++k) table[k] = x[i] * (k + 1) - k;
  table[index[i] % 40] += 1000;
  int acc = 0;
#pragma unroll 1
  for (int k = 0; k < 40; k += 3) acc += table[(index[i] + k) % 40];
  out[i] = acc;
}

// insertion sort of 16 values per thread in local memory
extern "C" __global__ void local_sort(const float *x, float *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v[16];
  for (int k = 0; k < 16; ++k) v[k] = x[16 * i + k];
#pragma unroll 1
  for (int k = 1; k < 16; ++k) {
    float key = v[k];
    int j = k - 1;
    while (j >= 0 && v[j] > key) {
      v[j + 1] = v[j];
      --j;
    }
    v[j + 1] = key;
  }
  for (int k = 0; k < 16; ++k) out[16 * i + k] = v[k];
}

// initialised module variables in .global and .const
__device__ int global_table[8] = {3, 1, 4, 1, 5, 9, 2, 6};
__constant__ float const_scale[4] = {0.5f, 2.0f, -1.0f, 8.0f};
__device__ unsigned long long global_counter = 100;

extern "C" __global__ void module_variables(const int *x, float *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  out[i] = global_table[x[i] & 7] * const_scale[x[i] & 3];
  atomicAdd(&global_counter, 1ull);
}

extern "C" __global__ void read_counter(unsigned long long *out) { *out = global_counter; }
