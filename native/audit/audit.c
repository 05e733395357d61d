/* The loader-audit library behind `vgpu trace` (LD_AUDIT, see rtld-audit(7)).
 *
 * Each process it is loaded into appends one JSON object per line to
 * $VGPU_TRACE_DIR/<pid>.jsonl: who the process is, every library search and each
 * candidate path with what is wrong with it, every object loaded (the name asked for
 * and the file it resolved to), objects unloaded, and the loader's message whenever the
 * program reads a failed dlopen's dlerror().  Every line is one write() with O_APPEND, so
 * a process that crashes leaves every event before the crash readable.
 *
 * It runs inside the dynamic loader's audit namespace: libc calls only, no allocation
 * that outlives a call, nothing that could load another library. */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

static int trace_fd = -1;
static __thread char asked_for[PATH_MAX]; /* the name of the search in progress on this thread */
static char *(*real_dlerror)(void);

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* JSON string body: quotes, backslashes and control characters escaped. */
static size_t escape(char *out, size_t cap, const char *s) {
    size_t n = 0;
    for (; s && *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { out[n++] = '\\'; out[n++] = (char)c; }
        else if (c < 0x20) n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        else out[n++] = (char)c;
    }
    out[n] = 0;
    return n;
}

/* One event: `fields` is a printf format of `"key":value` pairs after "ev" and "t". */
static void emit(const char *event, const char *fields, ...) __attribute__((format(printf, 2, 3)));
static void emit(const char *event, const char *fields, ...) {
    if (trace_fd < 0) return;
    char line[8192];
    int n = snprintf(line, sizeof line, "{\"ev\":\"%s\",\"t\":%.6f,\"pid\":%d,", event, now(), (int)getpid());
    va_list ap;
    va_start(ap, fields);
    n += vsnprintf(line + n, sizeof line - (size_t)n - 2, fields, ap);
    va_end(ap);
    if (n > (int)sizeof line - 3) n = (int)sizeof line - 3;
    line[n++] = '}';
    line[n++] = '\n';
    ssize_t ignored = write(trace_fd, line, (size_t)n);
    (void)ignored;
}

static void read_file(const char *path, char *buf, size_t cap, size_t *len) {
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n;
    while (*len + 1 < cap && (n = read(fd, buf + *len, cap - 1 - *len)) > 0) *len += (size_t)n;
    close(fd);
}

static void emit_process(void) {
    char exe[PATH_MAX] = "", exe_json[PATH_MAX * 2];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[len > 0 ? len : 0] = 0;
    escape(exe_json, sizeof exe_json, exe);
    char raw[4096], argv_json[6144];
    size_t raw_len, n = 0;
    read_file("/proc/self/cmdline", raw, sizeof raw, &raw_len);
    argv_json[n++] = '[';
    for (size_t i = 0; i < raw_len && n + 16 < sizeof argv_json; i += strlen(raw + i) + 1) {
        if (n > 1) argv_json[n++] = ',';
        argv_json[n++] = '"';
        n += escape(argv_json + n, sizeof argv_json - n - 4, raw + i);
        argv_json[n++] = '"';
    }
    argv_json[n++] = ']';
    argv_json[n] = 0;
    const char *libpath = getenv("LD_LIBRARY_PATH");
    char libpath_json[4096];
    escape(libpath_json, sizeof libpath_json, libpath ? libpath : "");
    emit("process", "\"ppid\":%d,\"exe\":\"%s\",\"argv\":%s,\"ld_library_path\":\"%s\"", (int)getppid(), exe_json,
         argv_json, libpath_json);
}

EXPORT unsigned int la_version(unsigned int version) {
    const char *dir = getenv("VGPU_TRACE_DIR");
    if (dir && *dir && trace_fd < 0) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%d.jsonl", dir, (int)getpid());
        trace_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        emit_process();
    }
    return version < LAV_CURRENT ? version : LAV_CURRENT;
}

/* What keeps a candidate file from being loaded, or "" when it looks loadable. */
static const char *candidate_problem(const char *path, char *detail, size_t cap) {
    struct stat st;
    detail[0] = 0;
    if (lstat(path, &st) != 0) return "missing";
    if (S_ISLNK(st.st_mode) && stat(path, &st) != 0) {
        char target[PATH_MAX];
        ssize_t len = readlink(path, target, sizeof target - 1);
        target[len > 0 ? len : 0] = 0;
        escape(detail, cap, target);
        return "dangling symlink";
    }
    unsigned char ident[EI_NIDENT + 4];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == EACCES ? "not readable" : "cannot open";
    ssize_t got = read(fd, ident, sizeof ident);
    close(fd);
    if (got < (ssize_t)sizeof ident || memcmp(ident, ELFMAG, SELFMAG) != 0) return "not an ELF file";
    if (ident[EI_CLASS] != (sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32)) return "wrong ELF class";
    uint16_t machine;
    memcpy(&machine, ident + 18, 2); /* e_machine, same offset in both classes */
#if defined(__x86_64__)
    if (machine != EM_X86_64) return "wrong machine";
#elif defined(__aarch64__)
    if (machine != EM_AARCH64) return "wrong machine";
#endif
    return "";
}

static const char *search_kind(unsigned int flag) {
    switch (flag) {
    case LA_SER_ORIG: return "asked";
    case LA_SER_LIBPATH: return "LD_LIBRARY_PATH";
    case LA_SER_RUNPATH: return "RPATH/RUNPATH";
    case LA_SER_CONFIG: return "ld.so.cache";
    case LA_SER_DEFAULT: return "default folder";
    case LA_SER_SECURE: return "secure folder";
    default: return "other";
    }
}

EXPORT char *la_objsearch(const char *name, uintptr_t *cookie, unsigned int flag) {
    char name_json[PATH_MAX * 2];
    escape(name_json, sizeof name_json, name);
    if (flag == LA_SER_ORIG) {
        snprintf(asked_for, sizeof asked_for, "%s", name);
        emit("search", "\"name\":\"%s\"", name_json);
        if (!strchr(name, '/')) return (char *)name;
    }
    char asked_json[PATH_MAX * 2], detail[PATH_MAX * 2];
    escape(asked_json, sizeof asked_json, asked_for);
    const char *problem = candidate_problem(name, detail, sizeof detail);
    emit("candidate", "\"name\":\"%s\",\"path\":\"%s\",\"via\":\"%s\",\"problem\":\"%s\",\"target\":\"%s\"",
         asked_json, name_json, search_kind(flag), problem, detail);
    return (char *)name;
}

EXPORT unsigned int la_objopen(struct link_map *map, Lmid_t lmid, uintptr_t *cookie) {
    char path[PATH_MAX] = "", resolved[PATH_MAX] = "";
    const char *name = map->l_name && *map->l_name ? map->l_name : NULL;
    if (!name) {
        ssize_t len = readlink("/proc/self/exe", path, sizeof path - 1);
        path[len > 0 ? len : 0] = 0;
        name = path;
    }
    if (!realpath(name, resolved)) snprintf(resolved, sizeof resolved, "%s", name);
    char name_json[PATH_MAX * 2], resolved_json[PATH_MAX * 2], asked_json[PATH_MAX * 2];
    escape(name_json, sizeof name_json, name);
    escape(resolved_json, sizeof resolved_json, resolved);
    escape(asked_json, sizeof asked_json, asked_for);
    emit("load", "\"name\":\"%s\",\"path\":\"%s\",\"file\":\"%s\",\"namespace\":%ld", asked_json, name_json,
         resolved_json, (long)lmid);
    *cookie = (uintptr_t)map;
    asked_for[0] = 0;
    return LA_FLG_BINDTO | LA_FLG_BINDFROM;
}

EXPORT unsigned int la_objclose(uintptr_t *cookie) {
    struct link_map *map = (struct link_map *)*cookie;
    char name_json[PATH_MAX * 2];
    escape(name_json, sizeof name_json, map && map->l_name ? map->l_name : "");
    emit("unload", "\"path\":\"%s\"", name_json);
    return 0;
}

/* The loader's own message for a failed dlopen reaches the program through dlerror();
 * record it on the way past.  dlopen itself is left alone: which object calls it decides
 * where the loader searches, and a wrapper would change that. */
static char *traced_dlerror(void) {
    char *message = real_dlerror ? real_dlerror() : NULL;
    if (message) {
        char json[4096];
        escape(json, sizeof json, message);
        emit("dlerror", "\"message\":\"%s\"", json);
    }
    return message;
}

EXPORT uintptr_t la_symbind64(Elf64_Sym *sym, unsigned int ndx, uintptr_t *refcook, uintptr_t *defcook,
                              unsigned int *flags, const char *symname) {
    if (!strcmp(symname, "dlerror")) {
        real_dlerror = (char *(*)(void))sym->st_value;
        return (uintptr_t)traced_dlerror;
    }
    return sym->st_value;
}

__attribute__((destructor)) static void process_exit(void) { emit("exit", "\"normal\":true"); }
