/* Loads a consumer library and prints the path the loader chose for libcuda.so.1, or its error. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc != 2 || !dlopen(argv[1], RTLD_NOW)) {
        printf("error %s\n", dlerror());
        return 1;
    }
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    struct link_map *map = NULL;
    if (!cuda || dlinfo(cuda, RTLD_DI_LINKMAP, &map) != 0) {
        printf("error libcuda.so.1 was not loaded\n");
        return 1;
    }
    printf("loaded %s\n", map->l_name);
    return 0;
}
