// Device functions kept as calls (__noinline__), recursion, a struct returned by value.
#include <stdint.h>

__device__ __noinline__ int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

// depth of a binary tree stored as child index arrays (-1: none)
__device__ __noinline__ int depth(const int *left, const int *right, int node) {
  if (node < 0) return 0;
  int l = depth(left, right, left[node]);
  int r = depth(left, right, right[node]);
  return 1 + (l > r ? l : r);
}

__device__ __noinline__ float poly(float x, const float *c, int degree) {
  float r = 0.0f;
  for (int k = degree; k >= 0; --k) r = __fadd_rn(__fmul_rn(r, x), c[k]);
  return r;
}

// a struct returned by value from a non-inlined function
struct Pair { int quotient; int remainder; };
__device__ __noinline__ Pair divide(int a, int b) { return Pair{a / b, a % b}; }

extern "C" __global__ void recursion(int n, const int *x, const int *left, const int *right, int *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[3 * i] = fib(x[i] % 20);
  out[3 * i + 1] = depth(left, right, i % 64);
  Pair p = divide(x[i] * 7 + 3, (x[i] % 9) + 1);
  out[3 * i + 2] = p.quotient * 100 + p.remainder;
}

extern "C" __global__ void polynomial(int n, const float *x, const float *c, float *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = poly(x[i], c, 5);
}
