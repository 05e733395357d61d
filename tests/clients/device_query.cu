// A device query built with nvcc for the tests: every property cudart reports, one
// "index key value" line each, so the test can compare them with the profile.
#include <cstdio>
#include <cuda_runtime.h>

#define PRINT(key, fmt, value) printf("%d " key " " fmt "\n", device, value)

int main() {
    int driver = 0, runtime = 0, count = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    cudaError_t rc = cudaGetDeviceCount(&count);
    printf("- driver %d\n- runtime %d\n- count %d\n- count_rc %d\n", driver, runtime, count, (int)rc);
    for (int device = 0; device < count; device++) {
        cudaDeviceProp p;
        rc = cudaGetDeviceProperties(&p, device);
        PRINT("rc", "%d", (int)rc);
        PRINT("name", "%s", p.name);
        printf("%d uuid ", device);
        for (int i = 0; i < 16; i++) printf("%02x", (unsigned char)p.uuid.bytes[i]);
        printf("\n");
        PRINT("totalGlobalMem", "%zu", p.totalGlobalMem);
        PRINT("multiProcessorCount", "%d", p.multiProcessorCount);
        PRINT("major", "%d", p.major);
        PRINT("minor", "%d", p.minor);
        PRINT("warpSize", "%d", p.warpSize);
        PRINT("maxThreadsPerBlock", "%d", p.maxThreadsPerBlock);
        PRINT("maxThreadsPerMultiProcessor", "%d", p.maxThreadsPerMultiProcessor);
        PRINT("sharedMemPerBlock", "%zu", p.sharedMemPerBlock);
        PRINT("sharedMemPerMultiprocessor", "%zu", p.sharedMemPerMultiprocessor);
        PRINT("regsPerBlock", "%d", p.regsPerBlock);
        PRINT("l2CacheSize", "%d", p.l2CacheSize);
        PRINT("memoryBusWidth", "%d", p.memoryBusWidth);
        PRINT("pciBusID", "%d", p.pciBusID);
        PRINT("pciDomainID", "%d", p.pciDomainID);
        PRINT("ECCEnabled", "%d", p.ECCEnabled);
        PRINT("integrated", "%d", p.integrated);
        PRINT("unifiedAddressing", "%d", p.unifiedAddressing);
        PRINT("maxGridSize0", "%d", p.maxGridSize[0]);
        PRINT("maxGridSize1", "%d", p.maxGridSize[1]);
        PRINT("maxGridSize2", "%d", p.maxGridSize[2]);
        PRINT("maxThreadsDim0", "%d", p.maxThreadsDim[0]);
        PRINT("maxThreadsDim1", "%d", p.maxThreadsDim[1]);
        PRINT("maxThreadsDim2", "%d", p.maxThreadsDim[2]);
        PRINT("totalConstMem", "%zu", p.totalConstMem);
        PRINT("memPitch", "%zu", p.memPitch);
        PRINT("textureAlignment", "%zu", p.textureAlignment);
        PRINT("texturePitchAlignment", "%zu", p.texturePitchAlignment);
        PRINT("canMapHostMemory", "%d", p.canMapHostMemory);
        PRINT("concurrentKernels", "%d", p.concurrentKernels);
        PRINT("asyncEngineCount", "%d", p.asyncEngineCount);
        PRINT("persistingL2CacheMaxSize", "%d", p.persistingL2CacheMaxSize);
        PRINT("maxBlocksPerMultiProcessor", "%d", p.maxBlocksPerMultiProcessor);
        PRINT("accessPolicyMaxWindowSize", "%d", p.accessPolicyMaxWindowSize);
        PRINT("reservedSharedMemPerBlock", "%zu", p.reservedSharedMemPerBlock);
        PRINT("sharedMemPerBlockOptin", "%zu", p.sharedMemPerBlockOptin);
        PRINT("regsPerMultiprocessor", "%d", p.regsPerMultiprocessor);
        PRINT("managedMemory", "%d", p.managedMemory);
        PRINT("isMultiGpuBoard", "%d", p.isMultiGpuBoard);
        PRINT("concurrentManagedAccess", "%d", p.concurrentManagedAccess);
        PRINT("computePreemptionSupported", "%d", p.computePreemptionSupported);
        PRINT("cooperativeLaunch", "%d", p.cooperativeLaunch);
        PRINT("hostRegisterSupported", "%d", p.hostRegisterSupported);
        PRINT("memoryPoolsSupported", "%d", p.memoryPoolsSupported);
        PRINT("clusterLaunch", "%d", p.clusterLaunch);
        PRINT("unifiedFunctionPointers", "%d", p.unifiedFunctionPointers);
        PRINT("globalL1CacheSupported", "%d", p.globalL1CacheSupported);
        PRINT("localL1CacheSupported", "%d", p.localL1CacheSupported);
        PRINT("streamPrioritiesSupported", "%d", p.streamPrioritiesSupported);
        PRINT("pciDeviceID", "%d", p.pciDeviceID);
        PRINT("tccDriver", "%d", p.tccDriver);
        char bus[32];
        cudaDeviceGetPCIBusId(bus, sizeof bus, device);
        PRINT("busId", "%s", bus);
    }
    return rc == cudaSuccess ? 0 : 1;
}
