// Module-level variables, device functions, recursion, printf, assert, trap, local and
// shared memory, launch bounds: the constructs every nvcc program's PTX is made of.
#include <cassert>
#include <cstdio>

__device__ int counter;
__device__ int table[4] = {1, 2, 3, 4};
struct Entry { int key; int *value; float weight; };
__device__ Entry entry = {7, &table[2], 1.5f};
__device__ int *pointers[2] = {&counter, &table[1]};
__constant__ float coefficients[3] = {1.0f, -2.5f, 3e-5f};
__device__ double ratio = 3.14;

__device__ __noinline__ int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

__device__ __noinline__ float scaled(float x, int i) { return x * coefficients[i % 3]; }

__global__ void __launch_bounds__(256, 2) basics(float *out, const float *in, int n) {
    __shared__ float tile[256];
    extern __shared__ float dynamic[];
    float scratch[8];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    for (int k = 0; k < 8; ++k) scratch[k] = in[(i + k * 3) % n];
    tile[threadIdx.x] = scratch[i & 7];
    dynamic[threadIdx.x] = tile[255 - threadIdx.x];
    __syncthreads();
    if (i < n) out[i] = scaled(dynamic[threadIdx.x], i) + fib(i & 7) + *entry.value + *pointers[i & 1];
    if (i == 0) printf("n=%d ratio=%f first=%f\n", n, ratio, (double)out[0]);
    assert(n > 0);
    if (n == 12345) __trap();
    __nanosleep(100);
    atomicAdd(&counter, 1);
}
