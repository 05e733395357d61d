/* Launch rate, for bench/launch_rate.py.
 *   launch_rate launches N   N empty-kernel launches through libcuda.so.1 (dlopen), then one
 *                            cuCtxSynchronize: vgpud has recorded them all when it returns
 *   launch_rate floor N SOCKET PAYLOAD
 *                            N frames of PAYLOAD bytes sent without waiting (NO_REPLY pings)
 *                            to vgpud on the same socket, in writes of up to 60 KiB as the
 *                            library batches its posts, then one ping with a reply
 * Prints seconds for the whole batch. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char ptx[] = ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry empty()\n{\n ret;\n}\n";

typedef int (*fn_i)(unsigned);
typedef int (*fn_ctx)(void **, int);
typedef int (*fn_set)(void *);
typedef int (*fn_load)(void **, const void *);
typedef int (*fn_get)(void **, void *, const char *);
typedef int (*fn_launch)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **,
                         void **);
typedef int (*fn_sync)(void);

static int launches(long n) {
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
    if (!cuda) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    void *ctx, *module, *kernel;
    if (((fn_i)dlsym(cuda, "cuInit"))(0) || ((fn_ctx)dlsym(cuda, "cuDevicePrimaryCtxRetain"))(&ctx, 0) ||
        ((fn_set)dlsym(cuda, "cuCtxSetCurrent"))(ctx) || ((fn_load)dlsym(cuda, "cuModuleLoadData"))(&module, ptx) ||
        ((fn_get)dlsym(cuda, "cuModuleGetFunction"))(&kernel, module, "empty"))
        return 1;
    fn_launch launch = (fn_launch)dlsym(cuda, "cuLaunchKernel");
    fn_sync sync = (fn_sync)dlsym(cuda, "cuCtxSynchronize");
    double start = now();
    for (long i = 0; i < n; i++)
        if (launch(kernel, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL)) return 1;
    if (sync()) return 1;
    printf("%.6f\n", now() - start);
    return 0;
}

static int floor_sends(long n, const char *path, int payload) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr)) return 1;
    uint8_t hello[12 + 88 + 4] = {0}, reply[4096];
    uint32_t len = 88 + 4, version = 1;
    uint16_t op = 1, flags = 0;
    memcpy(hello, &len, 4);
    memcpy(hello + 4, &op, 2);
    memcpy(hello + 6, &flags, 2);
    memcpy(hello + 12, "VGPU", 4);
    memcpy(hello + 16, &version, 4);
    memcpy(hello + 20, "control", 7);
    if (send(fd, hello, sizeof hello, 0) != (ssize_t)sizeof hello || recv(fd, reply, sizeof reply, 0) <= 0) return 1;
    long per_write = (60 << 10) / (12 + payload);
    uint8_t *batch = calloc(per_write, 12 + payload), *frame = batch;
    uint32_t size = payload;
    op = 2;      /* OP_PING */
    flags = 2;   /* FLAG_NO_REPLY */
    for (long i = 0; i < per_write; i++) {
        memcpy(batch + i * (12 + payload), &size, 4);
        memcpy(batch + i * (12 + payload) + 4, &op, 2);
        memcpy(batch + i * (12 + payload) + 6, &flags, 2);
    }
    double start = now();
    for (long sent = 0; sent < n; sent += per_write) {
        size_t bytes = (size_t)(n - sent < per_write ? n - sent : per_write) * (12 + payload), done = 0;
        while (done < bytes) {
            ssize_t w = send(fd, batch + done, bytes - done, 0);
            if (w <= 0) return 1;
            done += (size_t)w;
        }
    }
    flags = 0;
    memcpy(frame + 6, &flags, 2);
    if (send(fd, frame, 12 + payload, 0) != 12 + payload) return 1;
    size_t got = 0;
    while (got < 12 + (size_t)payload) {
        ssize_t r = recv(fd, reply, sizeof reply, 0);
        if (r <= 0) return 1;
        got += r;
    }
    printf("%.6f\n", now() - start);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "launches")) return launches(atol(argv[2]));
    if (argc >= 5 && !strcmp(argv[1], "floor")) return floor_sends(atol(argv[2]), argv[3], atoi(argv[4]));
    fprintf(stderr, "usage: launch_rate launches N | floor N SOCKET PAYLOAD\n");
    return 2;
}
