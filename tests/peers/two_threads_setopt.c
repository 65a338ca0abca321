/* Two threads set options on one fresh IPPROTO_TLS socket: the first is still opening the
 * socket's control connection (the daemon has not welcomed it yet) when the second starts.
 * Prints "first <rc> <errno>" and "second <rc> <errno>".  argv[1]: a file that appears once
 * the daemon has the first HELLO (at most 10 s). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <ssaproxy.h>

static int fd;
static int first_rc, first_errno;

static void *first(void *arg)
{
    (void)arg;
    first_rc = setsockopt(fd, IPPROTO_TLS, TLS_REMOTE_HOSTNAME, "a.test", 6);
    first_errno = first_rc ? errno : 0;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
    pthread_t t;
    if (fd < 0 || pthread_create(&t, NULL, first, NULL) != 0)
        return 3;
    for (int i = 0; i < 1000 && access(argv[1], F_OK) != 0; i++)
        usleep(10000);
    int rc = setsockopt(fd, IPPROTO_TLS, TLS_ALPN, "h2", 2);
    int e = rc ? errno : 0;
    pthread_join(t, NULL);
    printf("first %d %s\nsecond %d %s\n", first_rc, first_errno ? strerrorname_np(first_errno) : "0", rc,
           e ? strerrorname_np(e) : "0");
    return 0;
}
