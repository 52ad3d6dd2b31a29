/* The pod sandbox ("pause") process of the real-node test tier (scripts/build-node-images.sh builds it
 * with gcc -static into a FROM-scratch image). It holds the pod's namespaces and does nothing else:
 * sleeps in pause(), exits 0 on SIGINT/SIGTERM, and reaps children on SIGCHLD (it is PID 1 of the pod
 * when the pod shares its process namespace). Only async-signal-safe calls in the handlers. */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_shutdown(int signo) {
    static const char msg[] = "pause: shutting down\n";
    (void)signo;
    (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
    _exit(0);
}

static void on_child(int signo) {
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    struct sigaction down, reap;
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        static const char version[] = "pause (rdsiam e2e) 3.10\n";
        return write(STDOUT_FILENO, version, sizeof version - 1) < 0;
    }
    memset(&down, 0, sizeof down);
    memset(&reap, 0, sizeof reap);
    down.sa_handler = on_shutdown;
    reap.sa_handler = on_child;
    reap.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGINT, &down, NULL) < 0 || sigaction(SIGTERM, &down, NULL) < 0 ||
        sigaction(SIGCHLD, &reap, NULL) < 0)
        return 1;
    for (;;)
        pause();
}
