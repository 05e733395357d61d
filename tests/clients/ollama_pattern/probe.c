/* A bundled backend library in the manner of Ollama's ggml-cuda: it needs cudart and
 * libcuda.so.1 (DT_NEEDED both).  The runner calls probe_devices() to discover GPUs. */
int cudaGetDeviceCount(int *count);
int cuDriverGetVersion(int *version);

__attribute__((visibility("default"))) int probe_devices(void) {
    int count = -1, version = 0;
    if (cuDriverGetVersion(&version) != 0 || version <= 0) return -1;
    int status = cudaGetDeviceCount(&count);
    return status == 0 ? count : -100 - status;
}
