// Launch failures: a device assert (710) and a trap (715).  A write far outside any
// allocation (700) is checked through vgpud (tests/compute/programs/out_of_bounds.cu): in this
// process it would be a host segmentation fault.
#include <cassert>

extern "C" __global__ void check_positive(int n, const int *x, int *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    assert(x[i] > 0);
    out[i] = x[i];
  }
}

extern "C" __global__ void trap_on(int bad, int *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i == bad) __trap();
  out[i] = i;
}
