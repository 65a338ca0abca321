/* A thread sets an option on a fresh IPPROTO_TLS socket and, while it is still opening the
 * socket's control connection (the daemon has not welcomed it yet), the main thread either
 * sets another option (argv[2] "setopt") or closes the socket ("close").  With "connect" the
 * thread makes a non-blocking connect() instead, and the main thread closes the socket and
 * opens a plain one, which takes its descriptor number ("reused 1").  Prints
 * "first <rc> <errno>", then "second <rc> <errno>" or "sockets <n>" (socket descriptors the
 * process still has once both are done).  argv[1]: a file that appears once the daemon has
 * the first HELLO (at most 10 s). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <ssaproxy.h>

static int fd, connecting;
static int first_rc, first_errno;

static void *first(void *arg)
{
    (void)arg;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connecting)
        first_rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    else
        first_rc = setsockopt(fd, IPPROTO_TLS, TLS_REMOTE_HOSTNAME, "a.test", 6);
    first_errno = first_rc ? errno : 0;
    return NULL;
}

static int open_sockets(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        char path[300], target[64] = "";
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        if (readlink(path, target, sizeof target - 1) > 0 && strncmp(target, "socket:", 7) == 0)
            n++;
    }
    if (d != NULL)
        closedir(d);
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    connecting = !strcmp(argv[2], "connect");
    fd = socket(AF_INET, SOCK_STREAM | (connecting ? SOCK_NONBLOCK : 0), IPPROTO_TLS);
    pthread_t t;
    if (fd < 0 || pthread_create(&t, NULL, first, NULL) != 0)
        return 3;
    for (int i = 0; i < 1000 && access(argv[1], F_OK) != 0; i++)
        usleep(10000);
    if (!strcmp(argv[2], "close")) {
        close(fd);
        pthread_join(t, NULL);
        printf("first %d %s\nsockets %d\n", first_rc, first_errno ? strerrorname_np(first_errno) : "0",
               open_sockets());
        return 0;
    }
    if (connecting) {
        close(fd);
        int plain = socket(AF_INET, SOCK_STREAM, 0);
        pthread_join(t, NULL);
        printf("first %d %s\nreused %d\nsockets %d\n", first_rc, first_errno ? strerrorname_np(first_errno) : "0",
               plain == fd, open_sockets());
        return 0;
    }
    int rc = setsockopt(fd, IPPROTO_TLS, TLS_ALPN, "h2", 2);
    int e = rc ? errno : 0;
    pthread_join(t, NULL);
    printf("first %d %s\nsecond %d %s\n", first_rc, first_errno ? strerrorname_np(first_errno) : "0", rc,
           e ? strerrorname_np(e) : "0");
    return 0;
}
