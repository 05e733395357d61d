// A cooperative kernel: grid-wide barriers between phases (no -rdc needed with nvcc 13).
#include <cooperative_groups.h>
namespace cg = cooperative_groups;

// phase 1: data[i] = 2 i; phase 2: out[i] = data[n-1-i] + 1 (written by another CTA);
// phase 3: one thread sums out into *total while the others wait at the second grid barrier
extern "C" __global__ void grid_phases(int n, int *data, int *out, long long *total) {
  cg::grid_group grid = cg::this_grid();
  int i = grid.thread_rank();
  int stride = grid.size();
  for (int k = i; k < n; k += stride) data[k] = 2 * k;
  grid.sync();
  for (int k = i; k < n; k += stride) out[k] = data[n - 1 - k] + 1;
  grid.sync();
  if (i == 0) {
    long long sum = 0;
    for (int k = 0; k < n; ++k) sum += out[k];
    *total = sum;
  }
}
