/* close() from a signal handler that interrupts the library's own close() of an IPPROTO_TLS
 * socket, while that close() holds the library's lock (the signal is raised from inside it:
 * this program's open() (or opendir()), which the library calls to look for the socket's other
 * descriptors, raises SIGUSR1).  The handler closes a pipe, another IPPROTO_TLS socket and a plain socket,
 * as libc promises a handler may.  Prints "closed <rc of the first close> <pipe's rc> <TLS
 * socket's rc> <plain socket's rc>", then "after <1 if a new IPPROTO_TLS socket is made>" (the
 * library takes its lock again: what the handler's close left to do is done then). */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <ssaproxy.h>

static int pipe_fds[2], tls2, plain;
static volatile sig_atomic_t rc_pipe = 99, rc_tls = 99, rc_plain = 99, armed;

static void on_signal(int sig)
{
    (void)sig;
    rc_pipe = close(pipe_fds[0]);
    rc_tls = close(tls2);
    rc_plain = close(plain);
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = (flags & O_CREAT) ? va_arg(ap, mode_t) : 0;
    va_end(ap);
    int (*next)(const char *, int, ...) = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    if (armed && strcmp(path, "/proc/self/fd") == 0) {
        armed = 0;
        raise(SIGUSR1);
    }
    return next(path, flags, mode);
}

DIR *opendir(const char *name)  /* where an older library looked for them */
{
    DIR *(*next)(const char *) = (DIR * (*)(const char *)) dlsym(RTLD_NEXT, "opendir");
    if (armed && strcmp(name, "/proc/self/fd") == 0) {
        armed = 0;
        raise(SIGUSR1);
    }
    return next(name);
}

int main(void)
{
    if (pipe(pipe_fds) != 0 || signal(SIGUSR1, on_signal) == SIG_ERR)
        return 2;
    int tls1 = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
    tls2 = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
    plain = socket(AF_INET, SOCK_STREAM, 0);
    if (tls1 < 0 || tls2 < 0 || plain < 0)
        return 3;
    armed = 1;
    int rc = close(tls1);
    printf("closed %d %d %d %d\n", rc, (int)rc_pipe, (int)rc_tls, (int)rc_plain);
    int tls3 = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
    printf("after %d\n", tls3 >= 0);
    return 0;
}
