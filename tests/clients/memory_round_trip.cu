// Memory through cudart, built with nvcc for the tests: random data to the device and back,
// memset, device-to-device copies, out-of-memory and invalid arguments.
// Prints "name value" lines.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cuda_runtime.h>

int main(int argc, char **argv) {
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : (1 << 20);
    unsigned char *host = (unsigned char *)malloc(n), *back = (unsigned char *)malloc(n);
    srand(42);
    for (size_t i = 0; i < n; i++) host[i] = (unsigned char)rand();
    size_t free0 = 0, total = 0;
    printf("meminfo %d\n", (int)cudaMemGetInfo(&free0, &total));
    printf("total %zu\n", total);
    void *a = NULL, *b = NULL;
    printf("malloc %d\n", (int)cudaMalloc(&a, n));
    printf("malloc2 %d\n", (int)cudaMalloc(&b, n));
    printf("h2d %d\n", (int)cudaMemcpy(a, host, n, cudaMemcpyHostToDevice));
    printf("d2d %d\n", (int)cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
    printf("d2h %d\n", (int)cudaMemcpy(back, b, n, cudaMemcpyDeviceToHost));
    printf("equal %d\n", memcmp(host, back, n) == 0);
    printf("memset %d\n", (int)cudaMemset(a, 0x5A, n));
    printf("d2h2 %d\n", (int)cudaMemcpy(back, a, n, cudaMemcpyDeviceToHost));
    int all = 1;
    for (size_t i = 0; i < n; i++) all &= back[i] == 0x5A;
    printf("memset_ok %d\n", all);
    size_t free1 = 0;
    cudaMemGetInfo(&free1, &total);
    printf("used %zu\n", free0 - free1);
    void *huge = NULL;
    cudaError_t oom = cudaMalloc(&huge, total * 2);
    printf("oom %d\n", (int)oom);
    cudaGetLastError();
    printf("bad_copy %d\n", (int)cudaMemcpy(back, (char *)b + n + 4096, 16, cudaMemcpyDeviceToHost));
    cudaGetLastError();
    printf("free %d\n", (int)cudaFree(a));
    printf("free2 %d\n", (int)cudaFree(b));
    printf("sync %d\n", (int)cudaDeviceSynchronize());
    return 0;
}
