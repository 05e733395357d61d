// Copies that name memory by address alone (cudaMemcpyDefault: unified addressing) in every
// direction, and device-to-device copies between two GPUs (with peer access enabled, as PyTorch
// enables it, and without), synchronous and on streams. Prints "name value" lines: a copy's
// return code, then whether the bytes arrived ("equal_* 1").
#include <cstdio>
#include <cstring>
#include <cuda_runtime.h>

static const size_t SIZE = 3 << 20;
static unsigned char pattern[SIZE], back[SIZE];

static void report(const char *name, cudaError_t rc, const void *expected) {
    printf("%s %d\n", name, (int)rc);
    printf("equal_%s %d\n", name, memcmp(back, expected, SIZE) == 0);
    memset(back, 0, SIZE);
}

int main() {
    for (size_t i = 0; i < SIZE; i++) pattern[i] = (unsigned char)(i * 7 + i / 4096);
    void *on0 = NULL, *other0 = NULL, *on1 = NULL, *pinned = NULL;
    cudaSetDevice(0);
    cudaMalloc(&on0, SIZE);
    cudaMalloc(&other0, SIZE);
    cudaMallocHost(&pinned, SIZE);
    cudaSetDevice(1);
    cudaMalloc(&on1, SIZE);
    cudaSetDevice(0);
    cudaStream_t stream;
    cudaStreamCreate(&stream);

    cudaError_t rc = cudaMemcpy(on0, pattern, SIZE, cudaMemcpyDefault);  // pageable to device
    cudaMemcpy(back, on0, SIZE, cudaMemcpyDeviceToHost);
    report("h2d", rc, pattern);
    rc = cudaMemcpy(back, on0, SIZE, cudaMemcpyDefault);  // device to pageable
    report("d2h", rc, pattern);
    rc = cudaMemcpy(other0, on0, SIZE, cudaMemcpyDefault);  // within a device
    cudaMemcpy(back, other0, SIZE, cudaMemcpyDeviceToHost);
    report("d2d", rc, pattern);
    memset(pinned, 0, SIZE);
    rc = cudaMemcpyAsync(pinned, on0, SIZE, cudaMemcpyDefault, stream);  // device to page-locked, in order
    cudaMemcpyAsync(back, pinned, SIZE, cudaMemcpyDefault, stream);      // then host to host
    cudaStreamSynchronize(stream);
    report("d2pinned_then_h2h", rc, pattern);

    // between devices, without peer access, then with it (as PyTorch enables it)
    rc = cudaMemcpy(on1, on0, SIZE, cudaMemcpyDeviceToDevice);
    cudaSetDevice(1);
    cudaMemcpy(back, on1, SIZE, cudaMemcpyDeviceToHost);
    report("dev0_to_dev1", rc, pattern);
    cudaMemset(on1, 0, SIZE);
    printf("enable_peer %d\n", (int)cudaDeviceEnablePeerAccess(0, 0));
    cudaSetDevice(0);
    printf("enable_peer_back %d\n", (int)cudaDeviceEnablePeerAccess(1, 0));
    rc = cudaMemcpyAsync(on1, on0, SIZE, cudaMemcpyDeviceToDevice, stream);
    cudaError_t synced = cudaStreamSynchronize(stream);
    cudaMemcpy(back, on1, SIZE, cudaMemcpyDefault);
    report("dev0_to_dev1_async", rc, pattern);
    printf("synced %d\n", (int)synced);
    rc = cudaMemcpyAsync(other0, on1, SIZE, cudaMemcpyDefault, stream);  // and back, by address alone
    cudaStreamSynchronize(stream);
    cudaMemcpy(back, other0, SIZE, cudaMemcpyDeviceToHost);
    report("dev1_to_dev0_default", rc, pattern);
    printf("last_error %d\n", (int)cudaGetLastError());
    return 0;
}
