// CUDA arrays, 3D copies, 2D memsets and texture/surface objects through cudart, built with nvcc
// for the tests: contents compared byte for byte, descriptors read back; a kernel that samples a
// texture and writes a surface is launched (recorded: kernels do not compute on vgpu yet).
#include <cstdio>
#include <cstring>
#include <cuda_runtime.h>

__global__ void sample(cudaTextureObject_t tex, cudaSurfaceObject_t surf, int width) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    if (x < width) surf2Dwrite(tex2D<float>(tex, x + 0.5f, 0.5f), surf, x * (int)sizeof(float), 0);
}

int main() {
    const int width = 300, height = 40;
    static float host[height][width], back[height][width];
    for (int r = 0; r < height; r++)
        for (int c = 0; c < width; c++) host[r][c] = (float)(r * 1000 + c);
    cudaChannelFormatDesc desc = cudaCreateChannelDesc<float>();
    cudaArray_t array = NULL;
    printf("malloc_array %d\n", (int)cudaMallocArray(&array, &desc, width, height, cudaArraySurfaceLoadStore));
    printf("to_array %d\n", (int)cudaMemcpy2DToArray(array, 0, 0, host, sizeof host[0], sizeof host[0], height,
                                                       cudaMemcpyHostToDevice));
    memset(back, 0, sizeof back);
    printf("from_array %d\n", (int)cudaMemcpy2DFromArray(back, sizeof back[0], array, 0, 0, sizeof back[0], height,
                                                           cudaMemcpyDeviceToHost));
    printf("equal_2d %d\n", memcmp(host, back, sizeof host) == 0);
    cudaChannelFormatDesc got;
    cudaExtent extent;
    unsigned flags = 0;
    printf("array_info %d\n", (int)cudaArrayGetInfo(&got, &extent, &flags, array));
    printf("info %d %d %zu %zu %zu %u\n", got.x, (int)got.f, extent.width, extent.height, extent.depth, flags);

    // a 3D array filled by cudaMemcpy3D from pitched device memory, read back to the host
    const int w = 16, h = 8, d = 4;
    static unsigned char volume[d][h][w * 4], volume_back[d][h][w * 4];
    for (int z = 0; z < d; z++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w * 4; x++) volume[z][y][x] = (unsigned char)(z * 59 + y * 7 + x);
    cudaChannelFormatDesc bytes4 = cudaCreateChannelDesc(8, 8, 8, 8, cudaChannelFormatKindUnsigned);
    cudaArray_t array3 = NULL;
    printf("malloc_3d_array %d\n", (int)cudaMalloc3DArray(&array3, &bytes4, make_cudaExtent(w, h, d)));
    cudaPitchedPtr pitched;
    cudaMalloc3D(&pitched, make_cudaExtent(w * 4, h, d));
    cudaMemcpy3DParms up = {};
    up.srcPtr = make_cudaPitchedPtr(volume, w * 4, w * 4, h);
    up.dstPtr = pitched;
    up.extent = make_cudaExtent(w * 4, h, d);
    up.kind = cudaMemcpyHostToDevice;
    printf("h2d_3d %d\n", (int)cudaMemcpy3D(&up));
    cudaMemcpy3DParms in = {};
    in.srcPtr = pitched;
    in.dstArray = array3;
    in.extent = make_cudaExtent(w, h, d);
    in.kind = cudaMemcpyDeviceToDevice;
    printf("d2a_3d %d\n", (int)cudaMemcpy3D(&in));
    cudaMemcpy3DParms out = {};
    out.srcArray = array3;
    out.dstPtr = make_cudaPitchedPtr(volume_back, w * 4, w * 4, h);
    out.extent = make_cudaExtent(w, h, d);
    out.kind = cudaMemcpyDeviceToHost;
    printf("a2h_3d %d\n", (int)cudaMemcpy3D(&out));
    printf("equal_3d %d\n", memcmp(volume, volume_back, sizeof volume) == 0);

    // 2D memset of pitched memory
    void *pitched2 = NULL;
    size_t pitch = 0;
    cudaMallocPitch(&pitched2, &pitch, 100, 10);
    printf("memset_2d %d\n", (int)cudaMemset2D(pitched2, pitch, 0xAB, 100, 10));
    static unsigned char rows[10][100];
    cudaMemcpy2D(rows, 100, pitched2, pitch, 100, 10, cudaMemcpyDeviceToHost);
    int all = 1;
    for (int r = 0; r < 10; r++)
        for (int c = 0; c < 100; c++) all &= rows[r][c] == 0xAB;
    printf("memset_2d_bytes %d\n", all);

    // texture and surface objects over the 2D array, used by a kernel
    cudaResourceDesc res = {};
    res.resType = cudaResourceTypeArray;
    res.res.array.array = array;
    cudaTextureDesc td = {};
    td.addressMode[0] = td.addressMode[1] = cudaAddressModeClamp;
    td.filterMode = cudaFilterModePoint;
    td.readMode = cudaReadModeElementType;
    cudaTextureObject_t tex = 0;
    printf("tex_create %d\n", (int)cudaCreateTextureObject(&tex, &res, &td, NULL));
    cudaTextureDesc td_back = {};
    printf("tex_desc %d\n", (int)cudaGetTextureObjectTextureDesc(&td_back, tex));
    printf("tex_desc_same %d\n", td_back.addressMode[1] == cudaAddressModeClamp && td_back.filterMode == cudaFilterModePoint);
    cudaSurfaceObject_t surf = 0;
    printf("surf_create %d\n", (int)cudaCreateSurfaceObject(&surf, &res));
    sample<<<(width + 127) / 128, 128>>>(tex, surf, width);
    printf("launch %d\n", (int)cudaGetLastError());
    printf("sync %d\n", (int)cudaDeviceSynchronize());
    printf("tex_destroy %d\n", (int)cudaDestroyTextureObject(tex));
    printf("surf_destroy %d\n", (int)cudaDestroySurfaceObject(surf));
    printf("free_array %d\n", (int)cudaFreeArray(array));
    printf("free_array3 %d\n", (int)cudaFreeArray(array3));
    printf("last_error %d\n", (int)cudaGetLastError());
    return 0;
}
