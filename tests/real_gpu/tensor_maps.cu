// Tensor map descriptors for a fixed set of arguments, as the driver encodes them: one line per
// case, "name rc" and, on success, the 16 words in hex (the first less the allocation's base, so
// that runs on different machines compare). On a GPU:
//   nvcc -o tensor_maps tests/real_gpu/tensor_maps.cu -lcuda && ./tensor_maps > real.txt
//   diff real.txt tests/data/tensor_maps_expected.txt
// The expected file is what vgpu's library answers (docs/cuda.md, "Tensor map layout");
// tests/test_streams_and_tensor_maps.py checks that it still does.
#include <cuda.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

static CUdeviceptr base;

static void print_map(const char *name, CUresult rc, const CUtensorMap *map) {
    printf("%s %d", name, (int)rc);
    if (rc == CUDA_SUCCESS)
        for (int i = 0; i < 16; i++) printf(" %llx", (unsigned long long)(map->opaque[i] - (i == 0 ? base : 0)));
    printf("\n");
}

static void tiled(const char *name, CUtensorMapDataType type, cuuint32_t rank, uint64_t offset,
                  const cuuint64_t *dims, const cuuint64_t *strides, const cuuint32_t *box, const cuuint32_t *steps,
                  CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2,
                  CUtensorMapFloatOOBfill oob) {
    CUtensorMap map;
    memset(&map, 0, sizeof map);
    CUresult rc = cuTensorMapEncodeTiled(&map, type, rank, (void *)(base + offset), dims, strides, box, steps,
                                         interleave, swizzle, l2, oob);
    print_map(name, rc, &map);
}

static void im2col(const char *name, CUtensorMapDataType type, cuuint32_t rank, const cuuint64_t *dims,
                   const cuuint64_t *strides, const int *lower, const int *upper, cuuint32_t channels,
                   cuuint32_t pixels, const cuuint32_t *steps, CUtensorMapSwizzle swizzle) {
    CUtensorMap map;
    memset(&map, 0, sizeof map);
    CUresult rc = cuTensorMapEncodeIm2col(&map, type, rank, (void *)base, dims, strides, lower, upper, channels,
                                          pixels, steps, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                          CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    print_map(name, rc, &map);
}

int main(void) {
    CUdevice dev;
    CUcontext ctx;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) || cuCtxSetCurrent(ctx) ||
        cuMemAlloc(&base, 1 << 20)) {
        printf("no device\n");
        return 1;
    }
    base = (base + 255) & ~(CUdeviceptr)255;
    const cuuint32_t ones[5] = {1, 1, 1, 1, 1};

    const cuuint64_t d2[] = {1024, 512}, s2[] = {2048};
    const cuuint32_t b2[] = {64, 128};
    tiled("fp16_2d_swizzle128_l2_128", CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, 0, d2, s2, b2, ones,
          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    const cuuint64_t d1[] = {1000};
    const cuuint32_t b1[] = {32};
    tiled("fp32_1d", CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 1, 0, d1, NULL, b1, ones, CU_TENSOR_MAP_INTERLEAVE_NONE,
          CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    const cuuint64_t d5[] = {64, 8, 4, 2, 3}, s5[] = {128, 1024, 0x123456780ull, 0xF000000010ull};
    const cuuint32_t b5[] = {64, 8, 4, 2, 3}, e5[] = {1, 2, 3, 4, 8};
    tiled("bf16_5d_wide_strides", CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 5, 0, d5, s5, b5, e5,
          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    const cuuint64_t d3[] = {32, 100, 7}, s3[] = {64, 6400};
    const cuuint32_t b3[] = {32, 16, 7};
    tiled("u8_3d_interleave32", CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, 0, d3, s3, b3, ones, CU_TENSOR_MAP_INTERLEAVE_32B,
          CU_TENSOR_MAP_SWIZZLE_32B, CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    const cuuint64_t dn[] = {256, 256}, sn[] = {1024};
    const cuuint32_t bn[] = {32, 256};
    tiled("fp32_nan_atom64", CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, 0, dn, sn, bn, ones, CU_TENSOR_MAP_INTERLEAVE_NONE,
          CU_TENSOR_MAP_SWIZZLE_128B_ATOM_64B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA);
    tiled("fp32_nan_swizzle128", CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, 0, dn, sn, bn, ones,
          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA);
    const cuuint64_t dt[] = {64, 64}, st[] = {256};
    const cuuint32_t bt[] = {16, 1};
    tiled("tf32_ftz_atom32_flip", CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ, 2, 0, dt, st, bt, ones,
          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B_ATOM_32B_FLIP_8B, CU_TENSOR_MAP_L2_PROMOTION_L2_64B,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    tiled("tf32_swizzle64", CU_TENSOR_MAP_DATA_TYPE_TFLOAT32, 2, 0, dt, st, bt, ones, CU_TENSOR_MAP_INTERLEAVE_NONE,
          CU_TENSOR_MAP_SWIZZLE_64B, CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    const cuuint64_t d4[] = {2, 3, 4, 5}, s4[] = {16, 48, 192};
    const cuuint32_t b4[] = {2, 3, 4, 5};
    tiled("fp64_4d_interleave16", CU_TENSOR_MAP_DATA_TYPE_FLOAT64, 4, 0, d4, s4, b4, ones,
          CU_TENSOR_MAP_INTERLEAVE_16B, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_NONE,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    const cuuint64_t dp[] = {256, 16}, sp[] = {128};
    const cuuint32_t bp[] = {128, 16};
    tiled("packed_16u4_align16", CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN16B, 2, 0, dp, sp, bp, ones,
          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    const cuuint64_t di[] = {2, 2, 3, 4, 5}; /* a rank-5 box of odd sizes */
    const cuuint64_t si[] = {16, 48, 192, 960};
    const cuuint32_t bi[] = {2, 2, 3, 4, 5};
    tiled("s64_5d_odd_box", CU_TENSOR_MAP_DATA_TYPE_INT64, 5, 0, di, si, bi, ones, CU_TENSOR_MAP_INTERLEAVE_NONE,
          CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);

    const cuuint64_t dc4[] = {64, 32, 32, 8}, sc4[] = {128, 4096, 131072};
    const int lo4[] = {-1, -1}, hi4[] = {1, 1};
    im2col("im2col_fp16_nhwc", CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, dc4, sc4, lo4, hi4, 64, 128, ones,
           CU_TENSOR_MAP_SWIZZLE_128B);
    const cuuint64_t dc3[] = {8, 1000, 2}, sc3[] = {32, 32000};
    const int lo3[] = {-300}, hi3[] = {299};
    const cuuint32_t e3[] = {1, 2, 1};
    im2col("im2col_s32_nwc", CU_TENSOR_MAP_DATA_TYPE_INT32, 3, dc3, sc3, lo3, hi3, 8, 1024, e3,
           CU_TENSOR_MAP_SWIZZLE_NONE);
    const cuuint64_t dc5[] = {16, 9, 9, 9, 2}, sc5[] = {32, 288, 2592, 23328};
    const int lo5[] = {-16, 0, 3}, hi5[] = {15, -2, 0};
    im2col("im2col_u16_ndhwc", CU_TENSOR_MAP_DATA_TYPE_UINT16, 5, dc5, sc5, lo5, hi5, 16, 7, ones,
           CU_TENSOR_MAP_SWIZZLE_NONE);

    CUtensorMap map;
    memset(&map, 0, sizeof map);
    CUresult rc = cuTensorMapEncodeIm2colWide(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, (void *)base, dc4, sc4, -4, 4,
                                              32, 64, ones, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                              CU_TENSOR_MAP_IM2COL_WIDE_MODE_W, CU_TENSOR_MAP_SWIZZLE_64B,
                                              CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    print_map("im2col_wide_fp16_w", rc, &map); /* compute capability 10.0 and up; an H100 may refuse */

    tiled("fp16_2d_replace_address", CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, 0, d2, s2, b2, ones,
          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, (void *)base, d2, s2, b2, ones,
                           CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    printf("replace_address_aligned %d\n", (int)cuTensorMapReplaceAddress(&map, (void *)(base + 0x1000)));
    printf("replace_address_misaligned %d\n", (int)cuTensorMapReplaceAddress(&map, (void *)(base + 8)));
    print_map("after_replace", CUDA_SUCCESS, &map);

    /* what the driver does with a map only 16-byte aligned (cuda-python's are), a NULL global
     * address, and a box larger than the tensor: not documented either way */
    static CUtensorMap pair[2];
    CUtensorMap *unaligned = (CUtensorMap *)((char *)pair + 16);
    printf("unaligned_map %d\n", (int)cuTensorMapEncodeTiled(unaligned, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                                                               (void *)base, d2, s2, b2, ones,
                                                               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                                                               CU_TENSOR_MAP_L2_PROMOTION_NONE,
                                                               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
    printf("null_address %d\n", (int)cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, NULL, d2, s2, b2,
                                                              ones, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                                              CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                                                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
    const cuuint64_t small[] = {8, 8}, small_stride[] = {16};
    const cuuint32_t big_box[] = {16, 16};
    printf("box_larger_than_tensor %d\n", (int)cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                                                                        (void *)base, small, small_stride, big_box, ones,
                                                                        CU_TENSOR_MAP_INTERLEAVE_NONE,
                                                                        CU_TENSOR_MAP_SWIZZLE_NONE,
                                                                        CU_TENSOR_MAP_L2_PROMOTION_NONE,
                                                                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
    return 0;
}
