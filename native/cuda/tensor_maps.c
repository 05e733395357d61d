/* Tensor maps (cuTensorMapEncodeTiled, cuTensorMapEncodeIm2col, cuTensorMapEncodeIm2colWide,
 * cuTensorMapReplaceAddress): the 128-byte CUtensorMap descriptor that TMA instructions read,
 * encoded on the host as the driver does, with the driver's argument checks (cuda.h 13.0's
 * documentation of these functions lists them).  docs/cuda.md ("Tensor map layout") gives the
 * layout field by field, with where each position comes from; a later PTX engine decodes the
 * same bytes.  Nothing here needs vgpud: the descriptor is the same on every backend. */
#include <cuda.h>
#include <stdint.h>
#include <string.h>

#include "cuda_shim.h"

/* Byte offsets of the descriptor's words (all little-endian). */
enum {
    TMAP_ADDRESS = 0,       /* u64: the global address */
    TMAP_HEADER = 8,        /* u32: mode, version, rank, format, layout flags (HDR_* below) */
    TMAP_STRIDES_LOW = 12,  /* u32 x 4: bits 0-31 of globalStrides[i] >> 4 */
    TMAP_STRIDES_HIGH = 28, /* u32: bits 32-35 of globalStrides[i] >> 4 at bits 4i..4i+3 */
    TMAP_DIMS = 32,         /* u32 x 5: globalDim[i] - 1 */
    TMAP_TRAVERSAL = 52,    /* u32: elementStrides[i] - 1 at bits 3i; bits 24-31: boxDim[0] - 1 (tiled)
                             * or channelsPerPixel - 1 (im2col) */
    TMAP_BOX = 56,          /* u32: tiled: boxDim[1..4] - 1, a byte each; im2col: the pixel box corners */
    TMAP_PIXELS = 60,       /* u32: im2col: pixelsPerColumn - 1 in bits 0-9 */
};

/* Bit positions in the header word. */
enum {
    HDR_IM2COL = 0,      /* 1 bit: 0 tiled, 1 im2col */
    HDR_VERSION = 1,     /* 3 bits: 1 */
    HDR_RANK = 4,        /* 3 bits: rank - 1 */
    HDR_FORMAT = 7,      /* 4 bits: element format, PTX tensormap.replace .elemtype numbering */
    HDR_INTERLEAVE = 11, /* 2 bits: CUtensorMapInterleave */
    HDR_SWIZZLE = 13,    /* 2 bits: swizzle span 0 none, 1 32 B, 2 64 B, 3 128 B */
    HDR_OOB_NAN = 15,    /* 1 bit: CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA */
    HDR_TF32_ROUND = 16, /* 1 bit: round fp32 to tf32 on load; 0 (tf32 types have their own formats) */
    HDR_L2 = 17,         /* 2 bits: CUtensorMapL2promotion */
    HDR_ATOMICITY = 19,  /* 2 bits: swizzle atom, PTX .swizzle_atomicity numbering (0: 16 B) */
    HDR_WIDE = 21,       /* 1 bit: im2col wide (loads along W only) */
    HDR_WIDE_W128 = 22,  /* 1 bit: CU_TENSOR_MAP_IM2COL_WIDE_MODE_W128 */
};

/* The element format each CUtensorMapDataType is stored as (PTX .elemtype numbering:
 * .u8 .u16 .u32 .s32 .u64 .s64 .f16 .f32 .f32.ftz .f64 .bf16 .tf32 .tf32.ftz .b4x16
 * .b4x16_p64 .b6x16_p32 are 0 to 15), and its bytes per element in shared memory times two
 * (a packed 4-bit value takes half a byte). */
static const struct {
    unsigned format, twice_bytes;
} data_types[] = {
    [CU_TENSOR_MAP_DATA_TYPE_UINT8] = {0, 2},         [CU_TENSOR_MAP_DATA_TYPE_UINT16] = {1, 4},
    [CU_TENSOR_MAP_DATA_TYPE_UINT32] = {2, 8},        [CU_TENSOR_MAP_DATA_TYPE_INT32] = {3, 8},
    [CU_TENSOR_MAP_DATA_TYPE_UINT64] = {4, 16},       [CU_TENSOR_MAP_DATA_TYPE_INT64] = {5, 16},
    [CU_TENSOR_MAP_DATA_TYPE_FLOAT16] = {6, 4},       [CU_TENSOR_MAP_DATA_TYPE_FLOAT32] = {7, 8},
    [CU_TENSOR_MAP_DATA_TYPE_FLOAT64] = {9, 16},      [CU_TENSOR_MAP_DATA_TYPE_BFLOAT16] = {10, 4},
    [CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ] = {8, 8},   [CU_TENSOR_MAP_DATA_TYPE_TFLOAT32] = {11, 8},
    [CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ] = {12, 8}, [CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN8B] = {13, 1},
    [CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN16B] = {14, 2}, [CU_TENSOR_MAP_DATA_TYPE_16U6_ALIGN16B] = {15, 2},
};

/* What tiled, im2col and im2col-wide maps share: checked once, then written by encode(). */
typedef struct map_request {
    CUtensorMap *map;
    CUtensorMapDataType type;
    cuuint32_t rank;
    uint64_t address;
    const cuuint64_t *dims, *strides;
    const cuuint32_t *element_strides;
    CUtensorMapInterleave interleave;
    CUtensorMapSwizzle swizzle;
    CUtensorMapL2promotion l2;
    CUtensorMapFloatOOBfill oob;
} map_request;

static int packed_16b(CUtensorMapDataType type) {
    return type == CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN16B || type == CU_TENSOR_MAP_DATA_TYPE_16U6_ALIGN16B;
}

static int is_float(CUtensorMapDataType type) {
    return type >= CU_TENSOR_MAP_DATA_TYPE_FLOAT16 && type <= CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ;
}

/* The swizzle's span in bytes (0 for none). */
static unsigned swizzle_span(CUtensorMapSwizzle swizzle) {
    return swizzle == CU_TENSOR_MAP_SWIZZLE_NONE ? 0 : swizzle == CU_TENSOR_MAP_SWIZZLE_32B ? 32
           : swizzle == CU_TENSOR_MAP_SWIZZLE_64B ? 64 : 128;
}

/* The checks every kind of map shares (rank bounds are the caller's); 0 when they pass. */
static int check_common(const map_request *r, unsigned min_rank) {
    /* cuda.h asks for a 64-byte-aligned map, but cuda-python's CUtensorMap objects are only
     * 16-byte aligned and work with real drivers: alignment is not checked */
    if (!r->map) return -1;
    if ((unsigned)r->type > CU_TENSOR_MAP_DATA_TYPE_16U6_ALIGN16B) return -1;
    if (r->rank < min_rank || r->rank > 5) return -1;
    if ((unsigned)r->interleave > CU_TENSOR_MAP_INTERLEAVE_32B || (unsigned)r->swizzle > CU_TENSOR_MAP_SWIZZLE_128B_ATOM_64B ||
        (unsigned)r->l2 > CU_TENSOR_MAP_L2_PROMOTION_L2_256B || (unsigned)r->oob > CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA)
        return -1;
    if (r->interleave != CU_TENSOR_MAP_INTERLEAVE_NONE && r->rank < 3) return -1;
    int wide_alignment = r->interleave == CU_TENSOR_MAP_INTERLEAVE_32B || packed_16b(r->type);
    if (r->address & (wide_alignment ? 31 : 15)) return -1;
    if (!r->dims || (r->rank > 1 && !r->strides) || !r->element_strides) return -1;
    for (unsigned i = 0; i < r->rank; i++) {
        if (r->dims[i] == 0 || r->dims[i] > (1ull << 32)) return -1;
        if (r->element_strides[i] == 0 || r->element_strides[i] > 8) return -1;
    }
    if (packed_16b(r->type) && r->dims[0] % 128) return -1;
    if (r->type == CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN8B && r->dims[0] % 2) return -1;
    for (unsigned i = 0; i + 1 < r->rank; i++)
        if (r->strides[i] % (wide_alignment ? 32 : 16) || r->strides[i] >= (1ull << 40)) return -1;
    if (r->interleave == CU_TENSOR_MAP_INTERLEAVE_32B && r->swizzle != CU_TENSOR_MAP_SWIZZLE_32B) return -1;
    if (r->type == CU_TENSOR_MAP_DATA_TYPE_16U6_ALIGN16B &&
        (r->interleave != CU_TENSOR_MAP_INTERLEAVE_NONE ||
         !(r->swizzle == CU_TENSOR_MAP_SWIZZLE_NONE || r->swizzle == CU_TENSOR_MAP_SWIZZLE_128B ||
           r->swizzle == CU_TENSOR_MAP_SWIZZLE_128B_ATOM_32B || r->swizzle == CU_TENSOR_MAP_SWIZZLE_128B_ATOM_64B)))
        return -1;
    if (r->type == CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN16B &&
        !(r->swizzle == CU_TENSOR_MAP_SWIZZLE_NONE || r->swizzle == CU_TENSOR_MAP_SWIZZLE_128B ||
          r->swizzle == CU_TENSOR_MAP_SWIZZLE_128B_ATOM_32B))
        return -1;
    if (r->oob == CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA && !is_float(r->type)) return -1;
    return 0;
}

/* With no interleave, a swizzled box's inner dimension fits in the swizzle's span. */
static int inner_fits_swizzle(const map_request *r, uint64_t inner_elements) {
    if (r->interleave != CU_TENSOR_MAP_INTERLEAVE_NONE || r->swizzle == CU_TENSOR_MAP_SWIZZLE_NONE) return 1;
    return inner_elements * data_types[r->type].twice_bytes <= 2ull * swizzle_span(r->swizzle);
}

static void put32(CUtensorMap *map, unsigned offset, uint32_t value) {
    memcpy((char *)map->opaque + offset, &value, 4);
}

/* Fill the words every map has; the caller adds its kind's traversal, box and pixel words. */
static void encode(const map_request *r, uint32_t mode_bits) {
    memset(r->map, 0, sizeof *r->map);
    r->map->opaque[0] = r->address;
    unsigned swizzle = r->swizzle >= CU_TENSOR_MAP_SWIZZLE_128B ? 3 : (unsigned)r->swizzle;
    unsigned atomicity = r->swizzle == CU_TENSOR_MAP_SWIZZLE_128B_ATOM_32B ? 1
                         : r->swizzle == CU_TENSOR_MAP_SWIZZLE_128B_ATOM_32B_FLIP_8B ? 2
                         : r->swizzle == CU_TENSOR_MAP_SWIZZLE_128B_ATOM_64B ? 3 : 0;
    uint32_t header = mode_bits | 1u << HDR_VERSION | (r->rank - 1) << HDR_RANK |
                      data_types[r->type].format << HDR_FORMAT | (uint32_t)r->interleave << HDR_INTERLEAVE |
                      swizzle << HDR_SWIZZLE | (uint32_t)r->oob << HDR_OOB_NAN | (uint32_t)r->l2 << HDR_L2 |
                      atomicity << HDR_ATOMICITY;
    put32(r->map, TMAP_HEADER, header);
    uint32_t high = 0;
    for (unsigned i = 0; i + 1 < r->rank; i++) {
        uint64_t units = r->strides[i] >> 4;
        put32(r->map, TMAP_STRIDES_LOW + 4 * i, (uint32_t)units);
        high |= (uint32_t)(units >> 32 & 0xf) << (4 * i);
    }
    put32(r->map, TMAP_STRIDES_HIGH, high);
    for (unsigned i = 0; i < r->rank; i++) put32(r->map, TMAP_DIMS + 4 * i, (uint32_t)(r->dims[i] - 1));
}

/* elementStrides - 1, three bits each, with a byte at bits 24-31. */
static uint32_t traversal_word(const map_request *r, uint32_t top_byte) {
    uint32_t word = top_byte << 24;
    for (unsigned i = 0; i < r->rank; i++) word |= (r->element_strides[i] - 1) << (3 * i);
    return word;
}

VGPU_EXPORT CUresult cuTensorMapEncodeTiled(CUtensorMap *tensorMap, CUtensorMapDataType tensorDataType,
                                            cuuint32_t tensorRank, void *globalAddress, const cuuint64_t *globalDim,
                                            const cuuint64_t *globalStrides, const cuuint32_t *boxDim,
                                            const cuuint32_t *elementStrides, CUtensorMapInterleave interleave,
                                            CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2Promotion,
                                            CUtensorMapFloatOOBfill oobFill) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    map_request r = {tensorMap, tensorDataType, tensorRank, (uintptr_t)globalAddress, globalDim, globalStrides,
                     elementStrides, interleave, swizzle, l2Promotion, oobFill};
    if (check_common(&r, 1) < 0 || !boxDim) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < tensorRank; i++)
        if (boxDim[i] == 0 || boxDim[i] > 256) return CUDA_ERROR_INVALID_VALUE;
    if (interleave == CU_TENSOR_MAP_INTERLEAVE_NONE && (boxDim[0] * data_types[tensorDataType].twice_bytes) % 32)
        return CUDA_ERROR_INVALID_VALUE; /* the inner dimension is a multiple of 16 bytes */
    if (packed_16b(tensorDataType) && boxDim[0] != 128) return CUDA_ERROR_INVALID_VALUE;
    if (!inner_fits_swizzle(&r, boxDim[0])) return CUDA_ERROR_INVALID_VALUE;
    encode(&r, 0);
    put32(tensorMap, TMAP_TRAVERSAL, traversal_word(&r, boxDim[0] - 1));
    uint32_t box = 0;
    for (unsigned i = 1; i < tensorRank; i++) box |= (boxDim[i] - 1) << (8 * (i - 1));
    put32(tensorMap, TMAP_BOX, box);
    return CUDA_SUCCESS;
}

/* The checks im2col and im2col-wide share: channels and pixels per column. */
static int check_pixels(const map_request *r, cuuint32_t channels, cuuint32_t pixels, int pixels_ignored) {
    if (channels == 0 || channels > 256) return -1;
    if (packed_16b(r->type) && channels != 128) return -1;
    if (!pixels_ignored && (pixels == 0 || pixels > 1024)) return -1;
    return inner_fits_swizzle(r, channels) ? 0 : -1;
}

VGPU_EXPORT CUresult cuTensorMapEncodeIm2col(CUtensorMap *tensorMap, CUtensorMapDataType tensorDataType,
                                             cuuint32_t tensorRank, void *globalAddress, const cuuint64_t *globalDim,
                                             const cuuint64_t *globalStrides, const int *pixelBoxLowerCorner,
                                             const int *pixelBoxUpperCorner, cuuint32_t channelsPerPixel,
                                             cuuint32_t pixelsPerColumn, const cuuint32_t *elementStrides,
                                             CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                             CUtensorMapL2promotion l2Promotion, CUtensorMapFloatOOBfill oobFill) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    map_request r = {tensorMap, tensorDataType, tensorRank, (uintptr_t)globalAddress, globalDim, globalStrides,
                     elementStrides, interleave, swizzle, l2Promotion, oobFill};
    if (check_common(&r, 3) < 0 || !pixelBoxLowerCorner || !pixelBoxUpperCorner ||
        check_pixels(&r, channelsPerPixel, pixelsPerColumn, 0) < 0)
        return CUDA_ERROR_INVALID_VALUE;
    /* the spatial dimensions (W, H, D: dimensions 1 to rank - 2) have one corner offset each, of
     * 16, 8 or 5 signed bits as the rank grows */
    unsigned spatial = tensorRank - 2, bits = tensorRank == 3 ? 16 : tensorRank == 4 ? 8 : 5;
    int lowest = -(1 << (bits - 1)), highest = (1 << (bits - 1)) - 1;
    uint32_t lower = 0, upper = 0;
    for (unsigned i = 0; i < spatial; i++) {
        int lo = pixelBoxLowerCorner[i], hi = pixelBoxUpperCorner[i];
        if (lo < lowest || lo > highest || hi < lowest || hi > highest) return CUDA_ERROR_INVALID_VALUE;
        if ((int64_t)globalDim[i + 1] + hi - lo <= 0) return CUDA_ERROR_INVALID_VALUE; /* an empty box */
        lower |= ((uint32_t)lo & ((1u << bits) - 1)) << (bits * i);
        upper |= ((uint32_t)hi & ((1u << bits) - 1)) << (bits * i);
    }
    encode(&r, 1u << HDR_IM2COL);
    put32(tensorMap, TMAP_TRAVERSAL, traversal_word(&r, channelsPerPixel - 1));
    put32(tensorMap, TMAP_BOX, lower | upper << 16);
    put32(tensorMap, TMAP_PIXELS, pixelsPerColumn - 1);
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuTensorMapEncodeIm2colWide(CUtensorMap *tensorMap, CUtensorMapDataType tensorDataType,
                                                 cuuint32_t tensorRank, void *globalAddress,
                                                 const cuuint64_t *globalDim, const cuuint64_t *globalStrides,
                                                 int pixelBoxLowerCornerWidth, int pixelBoxUpperCornerWidth,
                                                 cuuint32_t channelsPerPixel, cuuint32_t pixelsPerColumn,
                                                 const cuuint32_t *elementStrides, CUtensorMapInterleave interleave,
                                                 CUtensorMapIm2ColWideMode mode, CUtensorMapSwizzle swizzle,
                                                 CUtensorMapL2promotion l2Promotion, CUtensorMapFloatOOBfill oobFill) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    map_request r = {tensorMap, tensorDataType, tensorRank, (uintptr_t)globalAddress, globalDim, globalStrides,
                     elementStrides, interleave, swizzle, l2Promotion, oobFill};
    int w128 = mode == CU_TENSOR_MAP_IM2COL_WIDE_MODE_W128;
    if ((unsigned)mode > CU_TENSOR_MAP_IM2COL_WIDE_MODE_W128 || check_common(&r, 3) < 0 ||
        check_pixels(&r, channelsPerPixel, pixelsPerColumn, w128) < 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!(swizzle == CU_TENSOR_MAP_SWIZZLE_64B || swizzle == CU_TENSOR_MAP_SWIZZLE_128B ||
          swizzle == CU_TENSOR_MAP_SWIZZLE_128B_ATOM_32B))
        return CUDA_ERROR_INVALID_VALUE;
    int lo = pixelBoxLowerCornerWidth, hi = pixelBoxUpperCornerWidth;
    if (lo < -32768 || lo > 32767 || hi < -32768 || hi > 32767 || (int64_t)globalDim[1] + hi - lo <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    encode(&r, 1u << HDR_IM2COL | 1u << HDR_WIDE | (uint32_t)w128 << HDR_WIDE_W128);
    put32(tensorMap, TMAP_TRAVERSAL, traversal_word(&r, channelsPerPixel - 1));
    put32(tensorMap, TMAP_BOX, ((uint32_t)lo & 0xffff) | ((uint32_t)hi & 0xffff) << 16);
    put32(tensorMap, TMAP_PIXELS, w128 ? 0 : pixelsPerColumn - 1);
    return CUDA_SUCCESS;
}

/* The new address must be aligned as the map's interleave and data type asked at encoding. */
VGPU_EXPORT CUresult cuTensorMapReplaceAddress(CUtensorMap *tensorMap, void *globalAddress) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!tensorMap) return CUDA_ERROR_INVALID_VALUE;
    uint32_t header;
    memcpy(&header, (char *)tensorMap->opaque + TMAP_HEADER, 4);
    unsigned format = header >> HDR_FORMAT & 0xf, interleave = header >> HDR_INTERLEAVE & 0x3;
    int wide_alignment = interleave == CU_TENSOR_MAP_INTERLEAVE_32B || format == 14 || format == 15;
    if ((uintptr_t)globalAddress & (wide_alignment ? 31 : 15)) return CUDA_ERROR_INVALID_VALUE;
    tensorMap->opaque[0] = (uintptr_t)globalAddress;
    return CUDA_SUCCESS;
}
