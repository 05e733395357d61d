/* A server that stays up and discovers GPUs in short-lived runners, as Ollama does: each
 * runner gets the bundle folder first on LD_LIBRARY_PATH.  Usage: server BUNDLE RUNNER N */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    const char *old = getenv("LD_LIBRARY_PATH");
    char path[8192];
    snprintf(path, sizeof path, "%s%s%s", argv[1], old && *old ? ":" : "", old ? old : "");
    for (int i = 0; i < atoi(argv[3]); i++) {
        pid_t child = fork();
        if (child == 0) {
            setenv("LD_LIBRARY_PATH", path, 1);
            execl(argv[2], argv[2], (char *)NULL);
            _exit(127);
        }
        waitpid(child, NULL, 0);
    }
    usleep(150 * 1000); /* the server lives on after discovery */
    return 0;
}
