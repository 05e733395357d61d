/* What ggml's mem_nvml.cpp does around every memory query (shared/facts/ollama-discovery.md):
 * dlopen libnvidia-ml.so.1, init, handle by UUID, memory info, name, shutdown, dlclose;
 * here many times over, from short-lived threads, as Ollama's discovery children do.
 * Prints "<rounds> <name> <total MiB> <open fds before> <open fds after>". */
#include <dirent.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

static int open_fds(void) {
    int count = 0;
    DIR *dir = opendir("/proc/self/fd");
    while (dir && readdir(dir)) count++;
    if (dir) closedir(dir);
    return count;
}

static const char *uuid;
static char name[96];
static unsigned long long total;
static int failures;

static void *query(void *unused) {
    (void)unused;
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_LAZY);
    if (!lib) { failures++; return NULL; }
    nvmlReturn_t (*init)(void) = (nvmlReturn_t (*)(void))dlsym(lib, "nvmlInit_v2");
    nvmlReturn_t (*shutdown)(void) = (nvmlReturn_t (*)(void))dlsym(lib, "nvmlShutdown");
    nvmlReturn_t (*by_uuid)(const char *, nvmlDevice_t *) =
        (nvmlReturn_t (*)(const char *, nvmlDevice_t *))dlsym(lib, "nvmlDeviceGetHandleByUUID");
    nvmlReturn_t (*memory)(nvmlDevice_t, nvmlMemory_t *) =
        (nvmlReturn_t (*)(nvmlDevice_t, nvmlMemory_t *))dlsym(lib, "nvmlDeviceGetMemoryInfo");
    nvmlReturn_t (*get_name)(nvmlDevice_t, char *, unsigned) =
        (nvmlReturn_t (*)(nvmlDevice_t, char *, unsigned))dlsym(lib, "nvmlDeviceGetName");
    nvmlDevice_t device;
    nvmlMemory_t info;
    if (!init || !shutdown || !by_uuid || !memory || !get_name || init() != 0) { failures++; dlclose(lib); return NULL; }
    if (by_uuid(uuid, &device) || memory(device, &info) || get_name(device, name, sizeof name)) failures++;
    total = info.total;
    shutdown();
    dlclose(lib);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    uuid = argv[1];
    int rounds = 0, wanted = 0;
    sscanf(argv[2], "%d", &wanted);
    int before = -1;
    for (; rounds < wanted; rounds++) {
        pthread_t thread;
        pthread_create(&thread, NULL, query, NULL);
        pthread_join(thread, NULL);
        if (rounds == 0) before = open_fds();
    }
    printf("%d %s %llu %d %d\n", rounds - failures, name, total >> 20, before, open_fds());
    return failures != 0;
}
