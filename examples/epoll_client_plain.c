/* A non-blocking HTTP client driven by edge-triggered epoll, registered before connect():
 * epoll_client_plain HOST PORT [PATH].  It reports how many wake-ups the connect took (one
 * edge) and how the response ended. */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s HOST PORT [PATH]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *path = argc > 3 ? argv[3] : "/";
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(host, argv[2], &hints, &ai) != 0)
        return 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.fd = fd}, got;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
        perror("connect");
        return 1;
    }
    int wakeups = 0, err = 0;
    socklen_t len = sizeof err;
    while (wakeups < 100 && epoll_wait(ep, &got, 1, 30000) == 1) {  /* bounded: 100 wake-ups, 30 s each */
        wakeups++;
        if (got.events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            break;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        fprintf(stderr, "connect failed: %s\n", strerror(err));
        return 1;
    }
    fprintf(stderr, "connected after %d wake-up(s)\n", wakeups);
    char buf[65536];
    int n = snprintf(buf, sizeof buf, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
    if (write(fd, buf, (size_t)n) != n) {
        perror("write");
        return 1;
    }
    for (int rounds = 0; rounds < 10000; rounds++) {
        ssize_t r;
        while ((r = read(fd, buf, sizeof buf)) > 0)  /* edge-triggered: read until EAGAIN */
            fwrite(buf, 1, (size_t)r, stdout);
        if (r == 0) {
            fprintf(stderr, "end of response\n");
            return 0;
        }
        if (errno != EAGAIN) {
            perror("read");
            return 1;
        }
        if (epoll_wait(ep, &got, 1, 30000) != 1) {
            fprintf(stderr, "no data for 30 s\n");
            return 1;
        }
    }
    return 1;
}
