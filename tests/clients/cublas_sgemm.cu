// cuBLAS and cuBLASLt on the simulated GPU, built with nvcc against the nvidia-cublas wheel
// for the tests: a cuBLAS handle on a stream and an SGEMM; a cuBLASLt handle, a matmul
// description, the heuristic's choice and the matmul itself.  Prints "name value" lines.
#include <cstdio>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

int main() {
    const int n = 64;
    float *a, *c;
    cudaMalloc(&a, n * n * 4);
    cudaMalloc(&c, n * n * 4);
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    cublasHandle_t h;
    printf("create %d\n", (int)cublasCreate(&h));
    printf("set_stream %d\n", (int)cublasSetStream(h, stream));
    float alpha = 1, beta = 0;
    printf("sgemm %d\n", (int)cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, n, a, n, &beta, c, n));
    printf("sync %d\n", (int)cudaStreamSynchronize(stream));
    printf("destroy %d\n", (int)cublasDestroy(h));

    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t layout;
    cublasLtMatmulPreference_t preference;
    cublasLtMatmulHeuristicResult_t result = {};
    int found = 0;
    size_t workspace_size = 1 << 22;
    void *workspace;
    cudaMalloc(&workspace, workspace_size);
    printf("lt_create %d\n", (int)cublasLtCreate(&lt));
    printf("lt_desc %d\n", (int)cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    printf("lt_layout %d\n", (int)cublasLtMatrixLayoutCreate(&layout, CUDA_R_32F, n, n, n));
    cublasLtMatmulPreferenceCreate(&preference);
    cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_size,
                                         sizeof workspace_size);
    printf("lt_heuristic %d\n", (int)cublasLtMatmulAlgoGetHeuristic(lt, op, layout, layout, layout, layout, preference,
                                                                   1, &result, &found));
    printf("lt_found %d\n", found);
    printf("lt_matmul %d\n", (int)cublasLtMatmul(lt, op, &alpha, a, layout, a, layout, &beta, c, layout, c, layout,
                                                 &result.algo, workspace, workspace_size, stream));
    printf("lt_sync %d\n", (int)cudaStreamSynchronize(stream));
    cublasLtMatmulPreferenceDestroy(preference);
    cublasLtMatrixLayoutDestroy(layout);
    cublasLtMatmulDescDestroy(op);
    printf("lt_destroy %d\n", (int)cublasLtDestroy(lt));
    return 0;
}
