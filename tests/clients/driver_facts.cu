// Virtual memory management, stream capture and graphs, clusters, limits and private export
// tables, through cudart and the driver API, built with nvcc for the tests.  Prints "name
// value" lines, so the same binary's output on a real GPU can be compared with the simulator's.
#include <cstdio>
#include <cstring>
#include <cuda.h>
#include <cuda_runtime.h>

__global__ void fill(int *p, int value) { p[blockIdx.x * blockDim.x + threadIdx.x] = value; }
__global__ void clustered() {}

#define ENTRY(name) \
    decltype(&name) p_##name = NULL; \
    { cudaDriverEntryPointQueryResult q; cudaGetDriverEntryPointByVersion(#name, (void **)&p_##name, 13000, cudaEnableDefault, &q); }

static void export_table(const char *label, const unsigned char id[16]) {
    ENTRY(cuGetExportTable);
    const void *table = NULL;
    CUuuid uuid;
    memcpy(uuid.bytes, id, 16);
    int rc = (int)p_cuGetExportTable(&table, &uuid);
    unsigned long long size = table ? *(const unsigned long long *)table : 0;
    int filled = 0;
    if (table && size && size % 8 == 0 && size <= 8 * 512)
        for (unsigned i = 1; i < size / 8; i++) filled += ((const void *const *)table)[i] != NULL;
    printf("table_%s %d %llu %d\n", label, rc, size, filled);
}

int main() {
    cudaSetDevice(0);
    cudaFree(0);
    ENTRY(cuCtxGetLimit);
    for (int limit = 0; limit < 10; limit++) {
        size_t value = 12345;
        int rc = (int)p_cuCtxGetLimit(&value, (CUlimit)limit);
        printf("limit_%d %d %zu\n", limit, rc, rc == 0 ? value : 0);
    }

    // virtual memory management, as ggml-cuda uses it
    ENTRY(cuMemGetAllocationGranularity);
    ENTRY(cuMemAddressReserve);
    ENTRY(cuMemAddressFree);
    ENTRY(cuMemCreate);
    ENTRY(cuMemRelease);
    ENTRY(cuMemMap);
    ENTRY(cuMemUnmap);
    ENTRY(cuMemSetAccess);
    ENTRY(cuMemGetAccess);
    ENTRY(cuMemcpyHtoD);
    ENTRY(cuMemcpyDtoH);
    ENTRY(cuMemGetAddressRange);
    ENTRY(cuMemGetAllocationPropertiesFromHandle);
    ENTRY(cuMemRetainAllocationHandle);
    CUmemAllocationProp prop = {};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    size_t minimum = 0, recommended = 0;
    printf("granularity_min %d ", (int)p_cuMemGetAllocationGranularity(&minimum, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    printf("%zu\n", minimum);
    printf("granularity_recommended %d ",
           (int)p_cuMemGetAllocationGranularity(&recommended, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
    printf("%zu\n", recommended);
    size_t chunk = minimum ? minimum : (2 << 20);
    CUdeviceptr base = 0;
    printf("reserve %d\n", (int)p_cuMemAddressReserve(&base, 4 * chunk, 0, 0, 0));
    printf("reserve_aligned %d\n", (int)(base % chunk == 0));
    CUdeviceptr odd = 0;
    printf("reserve_unaligned_size %d\n", (int)p_cuMemAddressReserve(&odd, chunk + 1, 0, 0, 0));
    CUmemGenericAllocationHandle h1 = 0, h2 = 0, bad = 0;
    printf("create %d\n", (int)p_cuMemCreate(&h1, chunk, &prop, 0));
    printf("create_second %d\n", (int)p_cuMemCreate(&h2, 2 * chunk, &prop, 0));
    printf("create_unaligned %d\n", (int)p_cuMemCreate(&bad, chunk / 2, &prop, 0));
    printf("create_zero %d\n", (int)p_cuMemCreate(&bad, 0, &prop, 0));
    printf("map_first %d\n", (int)p_cuMemMap(base, chunk, 0, h1, 0));
    printf("map_second %d\n", (int)p_cuMemMap(base + chunk, 2 * chunk, 0, h2, 0));
    printf("map_again %d\n", (int)p_cuMemMap(base, chunk, 0, h1, 0));
    printf("map_unaligned %d\n", (int)p_cuMemMap(base + 3 * chunk + 4096, chunk, 0, h1, 0));
    CUmemAccessDesc access = {};
    access.location = prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    unsigned long long flags = 99;
    printf("access_before %d ", (int)p_cuMemGetAccess(&flags, &access.location, base));
    printf("%llu\n", flags);
    printf("set_access %d\n", (int)p_cuMemSetAccess(base, 3 * chunk, &access, 1));
    printf("access_after %d ", (int)p_cuMemGetAccess(&flags, &access.location, base));
    printf("%llu\n", flags);
    // contents across the boundary between the two mappings
    static unsigned char out[1 << 16], back[1 << 16];
    for (unsigned i = 0; i < sizeof out; i++) out[i] = (unsigned char)(i * 7 + 3);
    CUdeviceptr across = base + chunk - sizeof out / 2;
    printf("copy_in %d\n", (int)p_cuMemcpyHtoD(across, out, sizeof out));
    printf("copy_out %d\n", (int)p_cuMemcpyDtoH(back, across, sizeof back));
    printf("contents_equal %d\n", (int)(memcmp(out, back, sizeof out) == 0));
    fill<<<4, 256>>>((int *)(base + chunk), 5);
    printf("kernel_on_mapping %d\n", (int)cudaDeviceSynchronize());
    CUdeviceptr range_base = 0;
    size_t range_size = 0;
    printf("address_range %d ", (int)p_cuMemGetAddressRange(&range_base, &range_size, base + chunk + 100));
    printf("%lld %zu\n", (long long)(range_base - base), range_size);
    CUmemAllocationProp got = {};
    printf("properties %d %d %d\n", (int)p_cuMemGetAllocationPropertiesFromHandle(&got, h2), (int)got.type,
           got.location.id);
    CUmemGenericAllocationHandle retained = 0;
    printf("retain %d %d\n", (int)p_cuMemRetainAllocationHandle(&retained, (void *)(base + chunk + 64)),
           (int)(retained == h2));
    if (retained) p_cuMemRelease(retained);
    printf("unmap_partial %d\n", (int)p_cuMemUnmap(base + chunk, chunk));
    printf("unmap_first %d\n", (int)p_cuMemUnmap(base, chunk));
    printf("unmap_again %d\n", (int)p_cuMemUnmap(base, chunk));
    printf("copy_unmapped %d\n", (int)p_cuMemcpyHtoD(base, out, 16));
    printf("release_mapped_still %d\n", (int)p_cuMemRelease(h2));
    printf("unmap_second %d\n", (int)p_cuMemUnmap(base + chunk, 2 * chunk));
    printf("release_first %d\n", (int)p_cuMemRelease(h1));
    printf("release_again %d\n", (int)p_cuMemRelease(h1));
    printf("free_reserve %d\n", (int)p_cuMemAddressFree(base, 4 * chunk));

    // stream capture and graphs through cudart
    cudaStream_t stream;
    cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    int *buffer;
    cudaMalloc(&buffer, 1 << 20);
    cudaStreamCaptureStatus status;
    printf("capture_legacy %d\n", (int)cudaStreamBeginCapture(cudaStreamLegacy, cudaStreamCaptureModeGlobal));
    cudaGetLastError();
    printf("begin_capture %d\n", (int)cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    printf("is_capturing %d ", (int)cudaStreamIsCapturing(stream, &status));
    printf("%d\n", (int)status);
    fill<<<2, 128, 0, stream>>>(buffer, 1);
    cudaMemsetAsync(buffer + 1024, 0, 4096, stream);
    fill<<<4, 128, 0, stream>>>(buffer, 2);
    printf("sync_while_capturing %d\n", (int)cudaStreamSynchronize(stream));
    cudaGetLastError();
    cudaGraph_t graph = NULL;
    printf("end_capture %d\n", (int)cudaStreamEndCapture(stream, &graph));
    cudaGetLastError();
    if (!graph) {
        printf("begin_capture_again %d\n", (int)cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        fill<<<2, 128, 0, stream>>>(buffer, 1);
        cudaMemsetAsync(buffer + 1024, 0, 4096, stream);
        fill<<<4, 128, 0, stream>>>(buffer, 2);
        printf("end_capture_again %d\n", (int)cudaStreamEndCapture(stream, &graph));
    }
    printf("is_capturing_after %d ", (int)cudaStreamIsCapturing(stream, &status));
    printf("%d\n", (int)status);
    size_t nodes = 0;
    printf("graph_nodes %d ", (int)cudaGraphGetNodes(graph, NULL, &nodes));
    printf("%zu\n", nodes);
    cudaGraphExec_t exec = NULL;
    printf("instantiate %d\n", (int)cudaGraphInstantiate(&exec, graph, 0));
    for (int k = 0; k < 3; k++) printf("graph_launch_%d %d\n", k, (int)cudaGraphLaunch(exec, stream));
    printf("graph_sync %d\n", (int)cudaStreamSynchronize(stream));
    int first = 0;
    cudaMemcpy(&first, buffer, 4, cudaMemcpyDeviceToHost);
    // an update with the same topology, then one with a different one
    cudaGraph_t same = NULL, other = NULL;
    cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
    fill<<<2, 128, 0, stream>>>(buffer, 3);
    cudaMemsetAsync(buffer + 1024, 0, 4096, stream);
    fill<<<4, 128, 0, stream>>>(buffer, 4);
    cudaStreamEndCapture(stream, &same);
    cudaGraphExecUpdateResultInfo info;
    printf("update_same %d ", (int)cudaGraphExecUpdate(exec, same, &info));
    printf("%d\n", (int)info.result);
    cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
    fill<<<2, 128, 0, stream>>>(buffer, 3);
    cudaStreamEndCapture(stream, &other);
    printf("update_other %d ", (int)cudaGraphExecUpdate(exec, other, &info));
    printf("%d\n", (int)info.result);
    cudaGetLastError();
    // a graph built node by node
    cudaGraph_t built;
    cudaGraphCreate(&built, 0);
    cudaKernelNodeParams params = {};
    int value = 9;
    void *args[] = {&buffer, &value};
    params.func = (void *)fill;
    params.gridDim = dim3(1);
    params.blockDim = dim3(64);
    params.kernelParams = args;
    cudaGraphNode_t k1, k2;
    printf("add_kernel_node %d\n", (int)cudaGraphAddKernelNode(&k1, built, NULL, 0, &params));
    printf("add_dependent_node %d\n", (int)cudaGraphAddKernelNode(&k2, built, &k1, 1, &params));
    cudaGraphExec_t built_exec;
    printf("instantiate_built %d\n", (int)cudaGraphInstantiate(&built_exec, built, 0));
    printf("launch_built %d\n", (int)cudaGraphLaunch(built_exec, stream));
    printf("sync_built %d\n", (int)cudaStreamSynchronize(stream));
    cudaGraphExecDestroy(built_exec);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(built);
    cudaGraphDestroy(graph);

    // clusters, probed as cuBLAS probes them
    cudaFuncSetAttribute(clustered, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    cudaFuncSetAttribute(clustered, cudaFuncAttributeMaxDynamicSharedMemorySize, 232448);
    for (int size = 1; size <= 17; size += (size < 4 ? 1 : 4)) {
        for (int shared = 0; shared <= 232448; shared += 232448) {
            cudaLaunchConfig_t config = {};
            cudaLaunchAttribute attribute;
            attribute.id = cudaLaunchAttributeClusterDimension;
            attribute.val.clusterDim.x = size;
            attribute.val.clusterDim.y = 1;
            attribute.val.clusterDim.z = 1;
            config.gridDim = dim3(size);
            config.blockDim = dim3(128);
            config.dynamicSmemBytes = shared;
            config.attrs = &attribute;
            config.numAttrs = 1;
            int clusters = -1;
            int rc = (int)cudaOccupancyMaxActiveClusters(&clusters, (void *)clustered, &config);
            printf("clusters_%d_%d %d %d\n", size, shared, rc, rc == 0 ? clusters : -1);
            cudaGetLastError();
        }
    }

    static const unsigned char t21318c60[16] = {0x21, 0x31, 0x8c, 0x60, 0x97, 0x14, 0x32, 0x48,
                                                0x8c, 0xa6, 0x41, 0xff, 0x73, 0x24, 0xc8, 0xf2};
    static const unsigned char tf8cff951[16] = {0xf8, 0xcf, 0xf9, 0x51, 0x21, 0x46, 0x8b, 0x4e,
                                                0xb9, 0xe2, 0xfb, 0x46, 0x9e, 0x7c, 0x0d, 0xd9};
    static const unsigned char t6e163fbe[16] = {0x6e, 0x16, 0x3f, 0xbe, 0xb9, 0x58, 0x44, 0x4d,
                                                0x83, 0x5c, 0xe1, 0x82, 0xaf, 0xf1, 0x99, 0x1e};
    static const unsigned char t263e8860[16] = {0x26, 0x3e, 0x88, 0x60, 0x7c, 0xd2, 0x61, 0x43,
                                                0x92, 0xf6, 0xbb, 0xd5, 0x00, 0x6d, 0xfa, 0x7e};
    export_table("21318c60", t21318c60);
    export_table("f8cff951", tf8cff951);
    export_table("6e163fbe", t6e163fbe);
    export_table("263e8860", t263e8860);
    return 0;
}
