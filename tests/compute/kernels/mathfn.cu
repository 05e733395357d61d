// Math library functions (checked within CUDA's documented ulp bounds) and integer intrinsics
// (exact).
#include <stdint.h>

extern "C" __global__ void math_f32(int n, const float *x, const float *y, const float *z, float *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float v = x[i];
  out[0 * n + i] = sqrtf(fabsf(v));
  out[1 * n + i] = expf(v);
  out[2 * n + i] = logf(fabsf(v));
  out[3 * n + i] = sinf(v);
  out[4 * n + i] = __expf(v);
  out[5 * n + i] = rsqrtf(fabsf(v));
  out[6 * n + i] = fmaf(v, y[i], z[i]);
  out[7 * n + i] = floorf(v);
  out[8 * n + i] = ceilf(v);
  out[9 * n + i] = truncf(v);
  out[10 * n + i] = rintf(v);
  out[11 * n + i] = cosf(v);
  out[12 * n + i] = fminf(v, y[i]);
  out[13 * n + i] = fmaxf(v, y[i]);
  out[14 * n + i] = copysignf(y[i], v);
  out[15 * n + i] = exp2f(v);
  out[16 * n + i] = log2f(fabsf(v));
  out[17 * n + i] = tanhf(v);
}

extern "C" __global__ void math_f64(int n, const double *x, double *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  double v = x[i];
  out[0 * n + i] = sqrt(fabs(v));
  out[1 * n + i] = exp(v);
  out[2 * n + i] = log(fabs(v));
  out[3 * n + i] = sin(v);
  out[4 * n + i] = floor(v);
  out[5 * n + i] = 1.0 / v;
}

extern "C" __global__ void int_intrinsics(int n, const uint32_t *a, const uint32_t *b, const uint32_t *c,
                                          const uint64_t *w, uint32_t *out, uint64_t *out64) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  uint32_t x = a[i], y = b[i], z = c[i];
  out[0 * n + i] = __popc(x);
  out[1 * n + i] = __clz((int)x);
  out[2 * n + i] = __brev(x);
  out[3 * n + i] = __byte_perm(x, y, z & 0x7777);
  out[4 * n + i] = __funnelshift_l(x, y, z);
  out[5 * n + i] = __funnelshift_r(x, y, z);
  out[6 * n + i] = (uint32_t)__mulhi((int)x, (int)y);
  out[7 * n + i] = __umulhi(x, y);
  out[8 * n + i] = __sad((int)x, (int)y, z);
  out[9 * n + i] = __usad(x, y, z);
  out[10 * n + i] = (uint32_t)__dp4a((int)x, (int)y, (int)z);
  out[11 * n + i] = __dp4a(x, y, z);
  out[12 * n + i] = (uint32_t)min((int)x, (int)y);
  out[13 * n + i] = max(x, y);
  out[14 * n + i] = __ffs((int)x);
  out[15 * n + i] = (uint32_t)__popcll(w[i]);
  out[16 * n + i] = (uint32_t)__clzll((long long)w[i]);
  out[17 * n + i] = __funnelshift_lc(x, y, z);
  out[18 * n + i] = (uint32_t)abs((int)x);
  out[19 * n + i] = __uhadd(x, y);
  out[20 * n + i] = (uint32_t)__rhadd((int)x, (int)y);
  out64[0 * n + i] = __brevll(w[i]);
  out64[1 * n + i] = __umul64hi(w[i], (uint64_t)x * y + z);
  out64[2 * n + i] = (uint64_t)__mul64hi((long long)w[i], (long long)((uint64_t)x << 32 | y));
  out64[3 * n + i] = (uint64_t)x * y;
  out64[4 * n + i] = (uint64_t)((int64_t)(int)x * (int)y);
}
