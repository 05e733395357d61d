// Device printf: integers, floats, strings, characters, pointers' absence, from several CTAs.
#include <cstdio>

extern "C" __global__ void hello(int n, const float *x) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && i % 5 == 0)
    printf("thread %d of block %d: x=%.3f i64=%lld hex=%x %s %c\n", threadIdx.x, blockIdx.x, x[i],
           (long long)i * 10000000000ll, i * 255, i % 2 ? "odd" : "even", 'A' + i % 26);
}

extern "C" __global__ void print_once(double value) {
  if (threadIdx.x == 0 && blockIdx.x == 0) printf("value %g %e %5.1f|%-4d|%04u\n", value, value, value, 42, 7u);
}
