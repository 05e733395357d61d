// Warp collectives, atomics, half and bf16 arithmetic, inline assembly with scoped
// registers and labels (the same label in two inlined copies).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ unsigned count_up(unsigned x) {
    unsigned r;
    asm volatile("{\n\t.reg .pred p;\n\t.reg .u32 t;\n\tmov.u32 t, %1;\n"
                 "LOOP:\n\tadd.u32 t, t, 1;\n\tsetp.lt.u32 p, t, 100;\n\t@p bra LOOP;\n\tmov.u32 %0, t;\n}"
                 : "=r"(r) : "r"(x));
    return r;
}

__global__ void warp_ops(int *out, float *sums, const int *in, __half *h, __nv_bfloat16 *b) {
    int lane = threadIdx.x & 31;
    int v = in[threadIdx.x];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    unsigned ballot = __ballot_sync(0xffffffffu, v > 0);
    int all = __all_sync(0xffffffffu, v != 0);
    unsigned peers = __match_any_sync(0xffffffffu, in[threadIdx.x]);
    int up = __shfl_up_sync(0x0000ffffu, v, 1);
#if __CUDA_ARCH__ >= 800
    int total = __reduce_add_sync(0xffffffffu, in[threadIdx.x]);
#else
    int total = 0;
#endif
    out[threadIdx.x] = v + ballot + all + peers + up + total + count_up(lane) + count_up(v);
    atomicAdd(&sums[lane], 1.5f);
    atomicMax(&out[64], v);
    atomicCAS(&out[65], 0, lane);
    atomicExch(&out[66], lane);
    h[threadIdx.x] = __hfma(h[threadIdx.x], __float2half(2.0f), hsqrt(h[threadIdx.x]));
    b[threadIdx.x] = __hmul(b[threadIdx.x], __float2bfloat16(0.5f)) + __float2bfloat16((float)lane);
    if (__activemask() == 0xffffffffu) __syncwarp();
}
