// Warp collectives: shuffles, votes, activemask, match and redux, with full and partial masks
// and under divergence.
#include <stdint.h>
#define FULL 0xffffffffu

// sum of each warp with shfl.down (fixed order: bit for bit against numpy)
extern "C" __global__ void warp_sum_down(const float *x, float *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = x[i];
#pragma unroll 1
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(FULL, v, offset);
  if ((threadIdx.x & 31) == 0) out[i / 32] = v;
}

// butterfly with shfl.xor: every lane ends with the warp's maximum and sum (integer: exact)
extern "C" __global__ void warp_xor(const int *x, int *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int m = x[i], s = x[i];
  for (int mask = 16; mask > 0; mask >>= 1) {
    m = max(m, __shfl_xor_sync(FULL, m, mask));
    s += __shfl_xor_sync(FULL, s, mask);
  }
  out[2 * i] = m;
  out[2 * i + 1] = s;
}

// shfl.idx from a lane given per thread (dynamic), and with a width of 8 (sub-warps)
extern "C" __global__ void warp_index(const int *x, const int *source, int *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  out[3 * i] = __shfl_sync(FULL, x[i], source[i]);
  out[3 * i + 1] = __shfl_sync(FULL, x[i], source[i] & 7, 8);
  out[3 * i + 2] = __shfl_up_sync(FULL, x[i], 3, 16);
}

// inclusive scan with shfl.up
extern "C" __global__ void warp_scan_up(const int *x, int *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int lane = threadIdx.x & 31;
  int v = x[i];
#pragma unroll 1
  for (int offset = 1; offset < 32; offset <<= 1) {
    int up = __shfl_up_sync(FULL, v, offset);
    if (lane >= offset) v += up;
  }
  out[i] = v;
}

// votes over a predicate from memory, full warp
extern "C" __global__ void warp_votes(const int *flags, unsigned *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int p = flags[i];
  out[4 * i] = __ballot_sync(FULL, p);
  out[4 * i + 1] = __any_sync(FULL, p);
  out[4 * i + 2] = __all_sync(FULL, p);
  out[4 * i + 3] = __match_any_sync(FULL, p);
}

// under divergence: lanes whose key is odd take one branch and see only each other
// (next_odd: per thread, the next odd lane of its warp, wrapping: computed by the test, so that
// this kernel needs no bit intrinsics)
extern "C" __global__ void warp_divergent(const int *keys, const int *next_odd, unsigned *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int key = keys[i];
  unsigned odd = __ballot_sync(FULL, key & 1);
  if (key & 1) {
    out[6 * i] = __activemask();
    out[6 * i + 1] = __reduce_add_sync(odd, (unsigned)key);
    out[6 * i + 2] = __ballot_sync(odd, key > 100);
    out[6 * i + 3] = __match_any_sync(odd, key % 4);
    out[6 * i + 4] = __shfl_sync(odd, key, next_odd[i]);  // from the next odd lane
    out[6 * i + 5] = __reduce_max_sync(odd, (unsigned)key);
  } else {
    out[6 * i] = __activemask();
    out[6 * i + 1] = __reduce_min_sync(~odd, (unsigned)key);
    out[6 * i + 2] = __all_sync(~odd, key > 100);
    out[6 * i + 3] = __reduce_or_sync(~odd, (unsigned)key);
    out[6 * i + 4] = __reduce_and_sync(~odd, (unsigned)key);
    out[6 * i + 5] = __reduce_xor_sync(~odd, (unsigned)key);
  }
}

// partial warp: only the first `active` lanes of each warp take part (a launch shape whose
// last warp is partial, and a branch that drops lanes)
extern "C" __global__ void warp_partial(int active, const int *x, int *out) {
  int lane = threadIdx.x & 31;
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (lane < active) {
    unsigned mask = (active == 32) ? FULL : ((1u << active) - 1);
    int v = x[i];
    for (int offset = 16; offset > 0; offset >>= 1) {
      int other = __shfl_xor_sync(mask, v, offset);
      if ((lane ^ offset) < active) v += other;
    }
    out[2 * i] = v;
    out[2 * i + 1] = __activemask();
  }
}

// shfl.down/up/bfly with the distance and width in registers: per warp, one distance for every
// lane (one warp reductions use, or another) or a distance per lane
extern "C" __global__ void warp_shift_modes(const int *x, const int *distance, const int *width, int *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int w = width[i / 32];
  out[3 * i] = __shfl_down_sync(FULL, x[i], distance[i], w);
  out[3 * i + 1] = __shfl_up_sync(FULL, x[i], distance[i], w);
  out[3 * i + 2] = __shfl_xor_sync(FULL, x[i], distance[i], w);
}
