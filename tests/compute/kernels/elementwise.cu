// Elementwise arithmetic in every scalar type: out[k * n + i] holds operation k on a[i], b[i].
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

// integers: + - * / % & | ^ >> << min max (b is never 0; shifts take s in [0, bits))
#define INTEGER_KERNEL(NAME, T, U)                                                          \
  extern "C" __global__ void NAME(int n, const T *a, const T *b, const int *s, T *out) {   \
    int i = blockIdx.x * blockDim.x + threadIdx.x;                                          \
    if (i >= n) return;                                                                     \
    T x = a[i], y = b[i];                                                                   \
    out[0 * n + i] = (T)(x + y);                                                            \
    out[1 * n + i] = (T)(x - y);                                                            \
    out[2 * n + i] = (T)(x * y);                                                            \
    out[3 * n + i] = (T)(x / y);                                                            \
    out[4 * n + i] = (T)(x % y);                                                            \
    out[5 * n + i] = (T)(x & y);                                                            \
    out[6 * n + i] = (T)(x | y);                                                            \
    out[7 * n + i] = (T)(x ^ y);                                                            \
    out[8 * n + i] = (T)(x >> s[i]);                                                        \
    out[9 * n + i] = (T)((U)x << s[i]);                                                     \
    out[10 * n + i] = x < y ? x : y;                                                        \
    out[11 * n + i] = x > y ? x : y;                                                        \
    out[12 * n + i] = (T)(x == y) + (T)(2 * (x < y)) + (T)(4 * (x >= y));                  \
  }

INTEGER_KERNEL(ew_int8, int8_t, uint8_t)
INTEGER_KERNEL(ew_uint8, uint8_t, uint8_t)
INTEGER_KERNEL(ew_int16, int16_t, uint16_t)
INTEGER_KERNEL(ew_uint16, uint16_t, uint16_t)
INTEGER_KERNEL(ew_int32, int32_t, uint32_t)
INTEGER_KERNEL(ew_uint32, uint32_t, uint32_t)
INTEGER_KERNEL(ew_int64, int64_t, uint64_t)
INTEGER_KERNEL(ew_uint64, uint64_t, uint64_t)

// binary floating point: + - * / fma, min, max, compare (f32 and f64 in IEEE round-to-nearest)
#define FLOAT_KERNEL(NAME, T, FMA, FMIN, FMAX)                                              \
  extern "C" __global__ void NAME(int n, const T *a, const T *b, const T *c, T *out) {     \
    int i = blockIdx.x * blockDim.x + threadIdx.x;                                          \
    if (i >= n) return;                                                                     \
    T x = a[i], y = b[i], z = c[i];                                                         \
    out[0 * n + i] = x + y;                                                                 \
    out[1 * n + i] = x - y;                                                                 \
    out[2 * n + i] = x * y;                                                                 \
    out[3 * n + i] = x / y;                                                                 \
    out[4 * n + i] = FMA(x, y, z);                                                          \
    out[5 * n + i] = FMIN(x, y);                                                            \
    out[6 * n + i] = FMAX(x, y);                                                            \
    out[7 * n + i] = (T)((x < y) + 2 * (x == y) + 4 * (x != y) + 8 * (x >= y));             \
    out[8 * n + i] = -x;                                                                    \
    out[9 * n + i] = x < 0 ? -x : x;                                                        \
  }

FLOAT_KERNEL(ew_f32, float, fmaf, fminf, fmaxf)
FLOAT_KERNEL(ew_f64, double, fma, fmin, fmax)

// f32 kept in separate multiplies and adds (no contraction): the same order numpy uses
extern "C" __global__ void ew_f32_nofma(int n, const float *a, const float *b, const float *c, float *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = __fadd_rn(__fmul_rn(a[i], b[i]), c[i]);
  out[n + i] = __fsub_rn(__fmul_rn(a[i], a[i]), __fmul_rn(b[i], b[i]));
  out[2 * n + i] = __fdiv_rn(a[i], c[i]);
  out[3 * n + i] = __frcp_rn(c[i]);
}

// half precision: native f16 arithmetic (add.f16, mul.f16, fma.rn.f16, min/max, compare)
extern "C" __global__ void ew_f16(int n, const __half *a, const __half *b, const __half *c, __half *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  __half x = a[i], y = b[i], z = c[i];
  out[0 * n + i] = __hadd(x, y);
  out[1 * n + i] = __hsub(x, y);
  out[2 * n + i] = __hmul(x, y);
  out[3 * n + i] = __hfma(x, y, z);
  out[4 * n + i] = __hmin(x, y);
  out[5 * n + i] = __hmax(x, y);
  out[6 * n + i] = __hneg(x);
  out[7 * n + i] = __float2half_rn((float)(__hlt(x, y) + 2 * __heq(x, y)));
  out[8 * n + i] = __hdiv(x, z);
}

// two halves at once (the .f16x2 forms)
extern "C" __global__ void ew_f16x2(int n, const __half2 *a, const __half2 *b, const __half2 *c, __half2 *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[0 * n + i] = __hadd2(a[i], b[i]);
  out[1 * n + i] = __hmul2(a[i], b[i]);
  out[2 * n + i] = __hfma2(a[i], b[i], c[i]);
}

extern "C" __global__ void ew_bf16(int n, const __nv_bfloat16 *a, const __nv_bfloat16 *b,
                                   const __nv_bfloat16 *c, __nv_bfloat16 *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  __nv_bfloat16 x = a[i], y = b[i], z = c[i];
  out[0 * n + i] = __hadd(x, y);
  out[1 * n + i] = __hsub(x, y);
  out[2 * n + i] = __hmul(x, y);
  out[3 * n + i] = __hfma(x, y, z);
  out[4 * n + i] = __hmin(x, y);
  out[5 * n + i] = __hmax(x, y);
  out[6 * n + i] = __hneg(x);
}
