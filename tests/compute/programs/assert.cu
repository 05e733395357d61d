// A failed device assert: the launch returns, the next synchronisation says cudaErrorAssert
// (710), and the error stays with the context.
//   assert_program
#include <cassert>
#include "program.h"

__global__ void check(const int *x, int *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  assert(x[i] != 13);
  out[i] = x[i];
}

int main() {
  int host[256];
  for (int i = 0; i < 256; ++i) host[i] = i;
  int *x, *out;
  REPORT("malloc", cudaMalloc(&x, sizeof host) | cudaMalloc(&out, sizeof host));
  REPORT("h2d", cudaMemcpy(x, host, sizeof host, cudaMemcpyHostToDevice));
  check<<<2, 128>>>(x, out);
  REPORT("launch", cudaGetLastError());
  REPORT("sync", cudaDeviceSynchronize());
  REPORT("last", cudaGetLastError());
  void *more;
  REPORT("after", cudaMalloc(&more, 64));
  return 0;
}
