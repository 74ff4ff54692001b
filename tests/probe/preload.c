/* A hostile library for the confinement tests, preloaded (LD_PRELOAD) into checkvalve-send or
 * checkvalve-receive. Two seconds after the program started it tries, from a thread of its own
 * made before main (so covered only by what applies to every thread), to open an inet and a
 * packet socket; and the first time the program calls statx after that (from the program's own
 * threads, once they are confined), to create the file named by PROBE_BESIDE. It reports each
 * result on one line of standard error, `probe: WHAT=RESULT`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static struct timespec loaded;
static atomic_int tried_beside;

static void report(const char *what, int ok, int err) {
    char line[256];
    int n = snprintf(line, sizeof line, "probe: %s=%s\n", what, ok ? "DONE" : strerror(err));
    if (n > 0) {
        ssize_t w = write(2, line, (size_t)n);
        (void)w;
    }
}

static double since_load(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - loaded.tv_sec) + (double)(now.tv_nsec - loaded.tv_nsec) / 1e9;
}

static void *sockets(void *arg) {
    (void)arg;
    sleep(2);
    int inet = socket(AF_INET, SOCK_DGRAM, 0);
    report("inet_socket", inet >= 0, errno);
    int packet = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    report("packet_socket", packet >= 0, errno);
    return NULL;
}

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf) {
    static int (*real)(int, const char *, int, unsigned int, struct statx *);
    if (!real) {
        real = (int (*)(int, const char *, int, unsigned int, struct statx *))dlsym(RTLD_NEXT, "statx");
    }
    const char *beside = getenv("PROBE_BESIDE");
    if (beside && since_load() > 2.0 && atomic_exchange(&tried_beside, 1) == 0) {
        int fd = open(beside, O_WRONLY | O_CREAT | O_EXCL, 0644);
        report("create_beside", fd >= 0, errno);
        if (fd >= 0) {
            close(fd);
        }
    }
    return real(dirfd, path, flags, mask, buf);
}

__attribute__((constructor)) static void start(void) {
    clock_gettime(CLOCK_MONOTONIC, &loaded);
    pthread_t t;
    if (pthread_create(&t, NULL, sockets, NULL) == 0) {
        pthread_detach(t);
    }
}
