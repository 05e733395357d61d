// Pitched allocations with 2D copies, peer copies between two GPUs, stream-ordered
// allocation and context limits through cudart, built with nvcc for the tests.
#include <cstdio>
#include <cstring>
#include <cuda_runtime.h>

int main() {
    const size_t width = 1000, height = 37;
    unsigned char host[height][width], back[height][width];
    for (size_t r = 0; r < height; r++)
        for (size_t c = 0; c < width; c++) host[r][c] = (unsigned char)(r * 31 + c);
    void *pitched = NULL;
    size_t pitch = 0;
    printf("malloc_pitch %d\n", (int)cudaMallocPitch(&pitched, &pitch, width, height));
    printf("pitch %zu\n", pitch);
    printf("h2d_2d %d\n", (int)cudaMemcpy2D(pitched, pitch, host, width, width, height, cudaMemcpyHostToDevice));
    memset(back, 0, sizeof back);
    printf("d2h_2d %d\n", (int)cudaMemcpy2D(back, width, pitched, pitch, width, height, cudaMemcpyDeviceToHost));
    printf("equal_2d %d\n", memcmp(host, back, sizeof host) == 0);
    int can = -1;
    printf("can_peer_rc %d\n", (int)cudaDeviceCanAccessPeer(&can, 0, 1));
    printf("can_peer %d\n", can);
    printf("enable_peer %d\n", (int)cudaDeviceEnablePeerAccess(1, 0));
    void *on0 = NULL, *on1 = NULL;
    cudaSetDevice(0);
    cudaMalloc(&on0, sizeof host);
    cudaMemcpy(on0, host, sizeof host, cudaMemcpyHostToDevice);
    cudaSetDevice(1);
    cudaMalloc(&on1, sizeof host);
    printf("peer_copy %d\n", (int)cudaMemcpyPeer(on1, 1, on0, 0, sizeof host));
    memset(back, 0, sizeof back);
    cudaMemcpy(back, on1, sizeof host, cudaMemcpyDeviceToHost);
    printf("equal_peer %d\n", memcmp(host, back, sizeof host) == 0);
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    void *async_mem = NULL;
    cudaMemPool_t pool;
    printf("default_pool %d\n", (int)cudaDeviceGetDefaultMemPool(&pool, 1));
    unsigned long long threshold = 64 << 20, read_back = 0, used = 0;
    printf("set_threshold %d\n", (int)cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &read_back);
    printf("threshold %llu\n", read_back);
    int follow = -1;
    cudaMemPoolGetAttribute(pool, cudaMemPoolReuseFollowEventDependencies, &follow);
    printf("follow %d\n", follow);
    printf("malloc_async %d\n", (int)cudaMallocAsync(&async_mem, 1 << 20, stream));
    cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used);
    printf("pool_used_ok %d\n", used >= (1 << 20));
    printf("memset_async %d\n", (int)cudaMemsetAsync(async_mem, 7, 1 << 20, stream));
    printf("free_async %d\n", (int)cudaFreeAsync(async_mem, stream));
    printf("stream_sync %d\n", (int)cudaStreamSynchronize(stream));
    size_t stack = 0;
    printf("limit_rc %d\n", (int)cudaDeviceGetLimit(&stack, cudaLimitStackSize));
    printf("stack %zu\n", stack);
    printf("set_limit %d\n", (int)cudaDeviceSetLimit(cudaLimitStackSize, 4096));
    cudaDeviceGetLimit(&stack, cudaLimitStackSize);
    printf("stack_after %zu\n", stack);
    return 0;
}
