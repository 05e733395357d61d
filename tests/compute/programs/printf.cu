// Device printf: the lines appear on the program's stdout by the next synchronisation.
//   printf_program
#include "program.h"

__global__ void hello(int step) {
  if (threadIdx.x % 16 == 0) printf("kernel step %d block %d thread %d\n", step, blockIdx.x, threadIdx.x);
}

int main() {
  hello<<<3, 64>>>(1);
  REPORT("sync", cudaDeviceSynchronize());
  std::fflush(stdout);
  hello<<<1, 32>>>(2);
  REPORT("sync2", cudaDeviceSynchronize());
  return 0;
}
