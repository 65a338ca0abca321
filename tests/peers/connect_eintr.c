/* A blocking connect() on an IPPROTO_TLS socket interrupted by a signal handler (alarm() as a
 * connect timeout, installed without SA_RESTART) fails with EINTR, as the kernel's connect()
 * does, and the attempt goes on: the socket polls writable once it is done, SO_ERROR says how
 * it ended, and the data then flows.  Usage: connect_eintr PORT (a TLS echo server for
 * localhost on 127.0.0.1 that starts its handshakes late). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <in_tls.h>

static void on_alarm(int sig) { (void)sig; }

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);  /* no SA_RESTART */
    int s = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
    if (s < 0 || setsockopt(s, IPPROTO_TLS, TLS_REMOTE_HOSTNAME, "localhost", 10) != 0)
        return 3;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    alarm(1);
    int r = connect(s, (struct sockaddr *)&a, sizeof a);
    printf("connect %d %s\n", r, r ? strerrorname_np(errno) : "ok");
    struct pollfd p = {.fd = s, .events = POLLOUT};
    int w = poll(&p, 1, 30000);
    int err = -1;
    socklen_t len = sizeof err;
    getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
    printf("poll %d so_error %d\n", w, err);
    if (err != 0) {
        char why[512] = "";
        socklen_t n = sizeof why;
        getsockopt(s, IPPROTO_TLS, TLS_ERROR, why, &n);
        printf("TLS_ERROR %s\n", why);
        return 5;
    }
    if (write(s, "ping\n", 5) != 5 || shutdown(s, SHUT_WR) != 0)
        return 4;
    char buf[64];
    ssize_t n, got = 0;
    while ((n = read(s, buf + got, sizeof buf - 1 - (size_t)got)) > 0)
        got += n;
    buf[got] = '\0';
    printf("echo %s", buf);
    return 0;
}
