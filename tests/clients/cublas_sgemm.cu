// cuBLAS on the simulated GPU, built with nvcc against the nvidia-cublas wheel for the tests:
// create a handle, run an SGEMM, synchronise.  Prints "name value" lines (cuBLAS statuses).
#include <cstdio>
#include <cublas_v2.h>
#include <cuda_runtime.h>
int main() {
    float *a, *c;
    cudaMalloc(&a, 64 * 64 * 4);
    cudaMalloc(&c, 64 * 64 * 4);
    cublasHandle_t h;
    printf("create %d\n", (int)cublasCreate(&h));
    float alpha = 1, beta = 0;
    printf("sgemm %d\n", (int)cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 64, 64, 64, &alpha, a, 64, a, 64, &beta, c, 64));
    printf("sync %d\n", (int)cudaDeviceSynchronize());
    printf("destroy %d\n", (int)cublasDestroy(h));
    return 0;
}
