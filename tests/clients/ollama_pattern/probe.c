/* A bundled backend library in the manner of Ollama's ggml-cuda: it needs cudart, which
 * needs libcuda.so.1.  The runner calls probe_devices() to discover GPUs. */
int cudaGetDeviceCount(int *count);

__attribute__((visibility("default"))) int probe_devices(void) {
    int count = -1;
    int status = cudaGetDeviceCount(&count);
    return status == 0 ? count : -100 - status;
}
