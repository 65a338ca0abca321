/* close() of a pipe from a signal handler that interrupts the library's own close() of an
 * IPPROTO_TLS socket (the signal is raised from inside it: this program's opendir(), which the
 * library calls while it decides whether the socket's last descriptor went, raises SIGUSR1).
 * Prints "closed <rc of the socket's close> <rc of the pipe's close in the handler>". */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
#include <ssaproxy.h>

static int pipe_fds[2];
static volatile sig_atomic_t handler_rc = 99, armed;

static void on_signal(int sig)
{
    (void)sig;
    handler_rc = close(pipe_fds[0]);
}

DIR *opendir(const char *name)
{
    DIR *(*next)(const char *) = (DIR * (*)(const char *)) dlsym(RTLD_NEXT, "opendir");
    if (armed) {
        armed = 0;
        raise(SIGUSR1);
    }
    return next(name);
}

int main(void)
{
    if (pipe(pipe_fds) != 0 || signal(SIGUSR1, on_signal) == SIG_ERR)
        return 2;
    int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
    if (fd < 0)
        return 3;
    armed = 1;
    int rc = close(fd);
    printf("closed %d %d\n", rc, (int)handler_rc);
    return 0;
}
