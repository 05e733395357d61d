// Kernels through cudart and the driver API, built with nvcc for the tests: launches with
// arguments of many types, a struct and dynamic shared memory on several streams; function
// attributes, occupancy and the errors a driver gives for launches it refuses; a PTX module
// loaded and launched through the driver API.  Prints "name value" lines, so the same
// binary's output on a real GPU can be compared with the simulator's.
#include <cooperative_groups.h>
#include <cstdio>
#include <cstring>
#include <cuda.h>
#include <cuda_runtime.h>

struct Big { double v[5]; int tail; };
__constant__ float table[16] = {1, 2, 3};
__device__ int counter = 42;

__global__ void __launch_bounds__(128) many(char c, short s, int i, long long l, float f, double d, Big b, float *p) {
    extern __shared__ float dyn[];
    __shared__ int st[64];
    st[threadIdx.x % 64] = i;
    dyn[threadIdx.x] = f + d + c + s + l + b.v[2] + table[i & 15];
    __syncthreads();
    p[threadIdx.x] = dyn[threadIdx.x ^ 1] + st[0] + counter;
}
__global__ void empty() {}
__global__ void cooperative(int *p) { if (p) p[threadIdx.x] = blockIdx.x; }

static const char ptx[] =
    ".version 8.0\n.target sm_80\n.address_size 64\n"
    ".visible .entry scale(.param .u64 out, .param .f32 factor, .param .u32 n)\n{\n"
    "  .reg .b32 %r<4>;\n  .reg .b64 %rd<4>;\n  .reg .f32 %f<3>;\n  .reg .pred %p<2>;\n"
    "  ld.param.u64 %rd1, [out];\n  ld.param.f32 %f1, [factor];\n  ld.param.u32 %r1, [n];\n"
    "  mov.u32 %r2, %tid.x;\n  setp.ge.u32 %p1, %r2, %r1;\n  @%p1 bra DONE;\n"
    "  cvta.to.global.u64 %rd2, %rd1;\n  mul.wide.u32 %rd3, %r2, 4;\n  add.s64 %rd2, %rd2, %rd3;\n"
    "  st.global.f32 [%rd2], %f1;\nDONE:\n  ret;\n}\n";

#define ENTRY(name) \
    decltype(&name) p_##name = NULL; \
    { cudaDriverEntryPointQueryResult q; cudaGetDriverEntryPointByVersion(#name, (void **)&p_##name, 13000, cudaEnableDefault, &q); }

int main(int argc, char **argv) {
    cudaSetDevice(0);
    float *out;
    cudaMalloc(&out, 4096);
    Big b = {{1, 2, 3, 4, 5}, 6};
    cudaStream_t streams[3];
    for (int k = 0; k < 3; k++) cudaStreamCreate(&streams[k]);
    for (int k = 0; k < 3; k++)
        many<<<2 + k, 128, 512, streams[k]>>>((char)(7 + k), (short)-3, 1000 + k, 1LL << 40, 0.5f, 2.25, b, out);
    printf("launch_many %d\n", (int)cudaGetLastError());
    empty<<<dim3(3, 2, 1), dim3(8, 4, 2)>>>();
    printf("launch_empty %d\n", (int)cudaGetLastError());
    printf("sync %d\n", (int)cudaDeviceSynchronize());

    cudaFuncAttributes a;
    const char *names[2] = {"many", "empty"};
    const void *fns[2] = {(const void *)many, (const void *)empty};
    for (int k = 0; k < 2; k++) {
        printf("attr_rc_%s %d\n", names[k], (int)cudaFuncGetAttributes(&a, fns[k]));
        printf("attr_%s regs=%d shared=%zu const=%zu local=%zu max_threads=%d max_dynamic=%d binary=%d\n", names[k],
               a.numRegs, a.sharedSizeBytes, a.constSizeBytes, a.localSizeBytes, a.maxThreadsPerBlock,
               a.maxDynamicSharedSizeBytes, a.binaryVersion);
    }
    const int blocks[] = {32, 64, 128, 256, 1024};
    const size_t shared[] = {0, 16384, 40000};
    for (int bi = 0; bi < 5; bi++)
        for (int si = 0; si < 3; si++) {
            int n = -1;
            cudaError_t rc = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, empty, blocks[bi], shared[si]);
            printf("occupancy_empty_%d_%zu %d %d\n", blocks[bi], shared[si], (int)rc, n);
            rc = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, many, blocks[bi], shared[si]);
            printf("occupancy_many_%d_%zu %d %d\n", blocks[bi], shared[si], (int)rc, n);
        }
    int grid = 0, block = 0;
    printf("potential_rc %d\n", (int)cudaOccupancyMaxPotentialBlockSize(&grid, &block, many, 1024, 0));
    printf("potential_many %d %d\n", grid, block);

    // launches a driver refuses, and the code it gives for each
    empty<<<0, 1>>>();
    printf("refuse_grid0 %d\n", (int)cudaGetLastError());
    empty<<<1, 1025>>>();
    printf("refuse_block1025 %d\n", (int)cudaGetLastError());
    empty<<<1, dim3(1, 1, 65)>>>();
    printf("refuse_blockz65 %d\n", (int)cudaGetLastError());
    empty<<<dim3(1, 65536, 1), 1>>>();
    printf("refuse_gridy65536 %d\n", (int)cudaGetLastError());
    many<<<1, 256, 0>>>(1, 2, 3, 4, 5, 6, b, out);
    printf("refuse_launch_bounds %d\n", (int)cudaGetLastError());
    many<<<1, 128, 49152>>>(1, 2, 3, 4, 5, 6, b, out);
    printf("refuse_dynamic_shared %d\n", (int)cudaGetLastError());
    printf("set_dynamic %d\n", (int)cudaFuncSetAttribute(many, cudaFuncAttributeMaxDynamicSharedMemorySize, 100000));
    printf("set_dynamic_too_big %d\n",
           (int)cudaFuncSetAttribute(many, cudaFuncAttributeMaxDynamicSharedMemorySize, 1 << 20));
    cudaGetLastError();
    many<<<1, 128, 100000>>>(1, 2, 3, 4, 5, 6, b, out);
    printf("accept_dynamic_shared %d\n", (int)cudaGetLastError());
    cudaFuncGetAttributes(&a, (const void *)many);
    printf("max_dynamic_after %d\n", a.maxDynamicSharedSizeBytes);
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    int *nullp = NULL;
    void *args[] = {&nullp};
    printf("cooperative_ok %d\n", (int)cudaLaunchCooperativeKernel((const void *)cooperative, sms, 32, args));
    printf("cooperative_too_large %d\n",
           (int)cudaLaunchCooperativeKernel((const void *)cooperative, sms * 33, 32, args));
    cudaGetLastError();
    int value = 0;
    printf("symbol %d\n", (int)cudaMemcpyFromSymbol(&value, counter, sizeof value));
    printf("symbol_value %d\n", value);
    value = 7;
    cudaMemcpyToSymbol(counter, &value, sizeof value);
    value = 0;
    cudaMemcpyFromSymbol(&value, counter, sizeof value);
    printf("symbol_written %d\n", value);
    float first_table[2] = {0, 0};
    cudaMemcpyFromSymbol(first_table, table, sizeof first_table);
    printf("constant_table %g %g\n", first_table[0], first_table[1]);

    // the driver API: a PTX module, its function, parameter info and a launch
    ENTRY(cuModuleLoadData);
    ENTRY(cuModuleGetFunction);
    ENTRY(cuFuncGetParamInfo);
    ENTRY(cuLaunchKernel);
    ENTRY(cuFuncGetAttribute);
    ENTRY(cuModuleGetGlobal);
    ENTRY(cuModuleUnload);
    CUmodule module = NULL;
    printf("ptx_load %d\n", (int)p_cuModuleLoadData(&module, ptx));
    CUfunction scale = NULL;
    printf("ptx_function %d\n", (int)p_cuModuleGetFunction(&scale, module, "scale"));
    CUfunction missing = NULL;
    printf("ptx_missing_function %d\n", (int)p_cuModuleGetFunction(&missing, module, "nope"));
    for (int k = 0; k < 4; k++) {
        size_t offset = 99, size = 99;
        int rc = p_cuFuncGetParamInfo ? (int)p_cuFuncGetParamInfo(scale, k, &offset, &size) : -1;
        printf("ptx_param_%d %d %zu %zu\n", k, rc, rc == 0 ? offset : 0, rc == 0 ? size : 0);
    }
    int max_threads = 0;
    p_cuFuncGetAttribute(&max_threads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, scale);
    printf("ptx_max_threads %d\n", max_threads);
    float factor = 1.5f;
    unsigned n = 32;
    CUdeviceptr dout = (CUdeviceptr)out;
    void *params[] = {&dout, &factor, &n};
    printf("ptx_launch %d\n", (int)p_cuLaunchKernel(scale, 1, 1, 1, 32, 1, 1, 0, NULL, params, NULL));
    printf("ptx_launch_null_params %d\n", (int)p_cuLaunchKernel(scale, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL));
    size_t buffer_size = 16;
    unsigned char buffer[16] = {0};
    memcpy(buffer, &dout, 8);
    memcpy(buffer + 8, &factor, 4);
    memcpy(buffer + 12, &n, 4);
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buffer, CU_LAUNCH_PARAM_BUFFER_SIZE, &buffer_size,
                     CU_LAUNCH_PARAM_END};
    printf("ptx_launch_extra %d\n", (int)p_cuLaunchKernel(scale, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, extra));
    printf("ptx_launch_null_function %d\n", (int)p_cuLaunchKernel(NULL, 1, 1, 1, 32, 1, 1, 0, NULL, params, NULL));
    CUdeviceptr global = 0;
    size_t global_size = 0;
    printf("ptx_missing_global %d\n", (int)p_cuModuleGetGlobal(&global, &global_size, module, "nothing"));
    CUmodule bad = NULL;
    printf("bad_image %d\n", (int)p_cuModuleLoadData(&bad, "this is not an image"));
    printf("ptx_sync %d\n", (int)cudaDeviceSynchronize());
    printf("ptx_unload %d\n", (int)p_cuModuleUnload(module));
    // images named on the command line (code for other architectures, for example)
    for (int k = 1; k < argc; k++) {
        FILE *f = fopen(argv[k], "rb");
        static char image[1 << 20];
        size_t size = f ? fread(image, 1, sizeof image - 1, f) : 0;
        if (f) fclose(f);
        image[size] = 0;
        CUmodule m = NULL;
        printf("file_load_%d %d\n", k, size ? (int)p_cuModuleLoadData(&m, image) : -1);
    }
    return 0;
}
