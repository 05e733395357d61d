// A write far outside any allocation: cudaErrorIllegalAddress (700) at the next
// synchronisation, sticky for the context; vgpud carries on for other processes.
//   out_of_bounds_program
#include "program.h"

__global__ void write_far(int *out, long long offset) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  out[i + (i == 37 ? offset : 0)] = i;
}

int main() {
  int *out;
  REPORT("malloc", cudaMalloc(&out, 4096));
  write_far<<<1, 64>>>(out, 1ll << 36);  // 256 GiB past the allocation
  REPORT("launch", cudaGetLastError());
  REPORT("sync", cudaDeviceSynchronize());
  int host[4];
  REPORT("after", cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost));
  return 0;
}
