/* A short-lived discovery child, as Ollama starts one per library folder: dlopen the backend
 * with RTLD_NOW | RTLD_LOCAL (found through LD_LIBRARY_PATH), discover, exit at once. */
#include <dlfcn.h>
#include <stdio.h>

int main(void) {
    void *backend = dlopen("libggml-cuda.so", RTLD_NOW | RTLD_LOCAL);
    if (!backend) {
        printf("{\"error\": \"%s\"}\n", dlerror());
        return 2;
    }
    int (*discover)(void) = (int (*)(void))dlsym(backend, "ggml_discover");
    return discover() >= 0 ? 0 : 1;
}
