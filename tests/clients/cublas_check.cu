// An SGEMM through cuBLAS compared with the host's own product: on a real GPU (the cuda
// backend) the result is right to rounding.  Prints "name value" lines.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cublas_v2.h>
#include <cuda_runtime.h>

int main() {
    const int n = 256;
    float *a = (float *)malloc(n * n * 4), *b = (float *)malloc(n * n * 4), *c = (float *)malloc(n * n * 4);
    srand(5);
    for (int i = 0; i < n * n; i++) {
        a[i] = (float)rand() / RAND_MAX - 0.5f;
        b[i] = (float)rand() / RAND_MAX - 0.5f;
    }
    float *da, *db, *dc;
    cudaMalloc(&da, n * n * 4);
    cudaMalloc(&db, n * n * 4);
    cudaMalloc(&dc, n * n * 4);
    cudaMemcpy(da, a, n * n * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(db, b, n * n * 4, cudaMemcpyHostToDevice);
    cublasHandle_t h;
    cublasStatus_t created = cublasCreate(&h);
    printf("create %d\n", (int)created);
    if (created != CUBLAS_STATUS_SUCCESS) return 1;
    float alpha = 1, beta = 0;
    printf("sgemm %d\n", (int)cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, da, n, db, n, &beta, dc, n));
    printf("copy_back %d\n", (int)cudaMemcpy(c, dc, n * n * 4, cudaMemcpyDeviceToHost));
    double worst = 0;
    for (int col = 0; col < n; col++)
        for (int row = 0; row < n; row++) {
            double sum = 0;
            for (int k = 0; k < n; k++) sum += (double)a[k * n + row] * b[col * n + k];
            double error = fabs(sum - c[col * n + row]);
            if (error > worst) worst = error;
        }
    printf("max_error %.3g\n", worst);
    cublasDestroy(h);
    return 0;
}
