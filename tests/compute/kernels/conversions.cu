// Conversions between scalar types: saturating float-to-integer in every rounding mode,
// integer-to-float rounding, float narrowing to f16/bf16, and integer narrowing/widening.
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

extern "C" __global__ void cvt_from_f32(int n, const float *x, int32_t *i32, uint32_t *u32, int64_t *i64,
                                        uint64_t *u64, __half *f16, __nv_bfloat16 *bf16, double *f64) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float v = x[i];
  i32[0 * n + i] = __float2int_rn(v);
  i32[1 * n + i] = __float2int_rz(v);
  i32[2 * n + i] = __float2int_rd(v);
  i32[3 * n + i] = __float2int_ru(v);
  u32[0 * n + i] = __float2uint_rn(v);
  u32[1 * n + i] = __float2uint_rz(v);
  i64[0 * n + i] = __float2ll_rn(v);
  i64[1 * n + i] = __float2ll_rz(v);
  u64[i] = __float2ull_rz(v);
  f16[0 * n + i] = __float2half_rn(v);
  f16[1 * n + i] = __float2half_rz(v);
  bf16[0 * n + i] = __float2bfloat16_rn(v);
  bf16[1 * n + i] = __float2bfloat16_rz(v);
  f64[i] = (double)v;
}

extern "C" __global__ void cvt_from_f64(int n, const double *x, float *f32, int32_t *i32, int64_t *i64,
                                        __half *f16) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  double v = x[i];
  f32[0 * n + i] = __double2float_rn(v);
  f32[1 * n + i] = __double2float_rz(v);
  f32[2 * n + i] = __double2float_rd(v);
  f32[3 * n + i] = __double2float_ru(v);
  i32[0 * n + i] = __double2int_rn(v);
  i32[1 * n + i] = __double2int_rz(v);
  i64[i] = __double2ll_rn(v);
  f16[i] = __double2half(v);
}

extern "C" __global__ void cvt_to_float(int n, const int32_t *a, const int64_t *b, const uint32_t *c,
                                        float *f32, double *f64) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  f32[0 * n + i] = __int2float_rn(a[i]);
  f32[1 * n + i] = __int2float_rz(a[i]);
  f32[2 * n + i] = __ll2float_rn(b[i]);
  f32[3 * n + i] = __uint2float_rn(c[i]);
  f32[4 * n + i] = __uint2float_rd(c[i]);
  f64[0 * n + i] = __ll2double_rn(b[i]);
  f64[1 * n + i] = (double)a[i];
}

extern "C" __global__ void cvt_half_to(int n, const __half *h, const __nv_bfloat16 *bh, float *f32, int32_t *i32) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  f32[0 * n + i] = __half2float(h[i]);
  f32[1 * n + i] = __bfloat162float(bh[i]);
  i32[0 * n + i] = __half2int_rn(h[i]);
  i32[1 * n + i] = __half2int_rz(h[i]);
}

// integer narrowing (truncation) and widening (sign or zero extension)
extern "C" __global__ void cvt_integers(int n, const int64_t *x, int8_t *s8, uint8_t *u8, int16_t *s16,
                                        uint16_t *u16, int32_t *s32, int64_t *wide) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int64_t v = x[i];
  s8[i] = (int8_t)v;
  u8[i] = (uint8_t)v;
  s16[i] = (int16_t)v;
  u16[i] = (uint16_t)v;
  s32[i] = (int32_t)v;
  wide[0 * n + i] = (int64_t)(int8_t)v;
  wide[1 * n + i] = (int64_t)(uint8_t)v;
  wide[2 * n + i] = (int64_t)(int16_t)v;
  wide[3 * n + i] = (int64_t)(uint32_t)v;
  wide[4 * n + i] = (int64_t)(float)(int8_t)v;
}
