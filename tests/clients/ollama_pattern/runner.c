/* A discovery runner: loads the bundled library, reports the device count, exits at once. */
#include <dlfcn.h>
#include <stdio.h>

int main(void) {
    void *library = dlopen("libggml-probe.so", RTLD_NOW);
    if (!library) {
        fprintf(stderr, "runner: %s\n", dlerror());
        return 2;
    }
    int (*probe)(void) = (int (*)(void))dlsym(library, "probe_devices");
    printf("devices %d\n", probe());
    return 0;
}
