/* fork() while another thread waits for the daemon's ROUTES answer (redirection on, no
 * SSAPROXY_ROUTES): the child must not inherit the library's redirection lock held.  A thread
 * makes a plain connect to 127.0.0.1:argv[2] (which asks the daemon for the routes); once
 * argv[1] exists (the daemon has that ROUTES request) the main thread forks, and the child
 * makes the same connect (its own ROUTES request) under a 20 s alarm.  Prints
 * "child exit <status>" or "child signal <n>", then "thread <rc> <errno>". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int port, thread_rc, thread_errno;

static int plain_connect(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

static void *thread(void *arg)
{
    (void)arg;
    thread_rc = plain_connect();
    thread_errno = thread_rc ? errno : 0;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    port = atoi(argv[2]);
    pthread_t t;
    if (pthread_create(&t, NULL, thread, NULL) != 0)
        return 3;
    for (int i = 0; i < 1000 && access(argv[1], F_OK) != 0; i++)
        usleep(10000);
    pid_t child = fork();
    if (child == 0) {
        alarm(20);
        plain_connect();
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    if (WIFSIGNALED(status))
        printf("child signal %d\n", WTERMSIG(status));
    else
        printf("child exit %d\n", WEXITSTATUS(status));
    fflush(stdout);
    pthread_join(t, NULL);
    printf("thread %d %s\n", thread_rc, thread_errno ? strerrorname_np(thread_errno) : "0");
    return 0;
}
