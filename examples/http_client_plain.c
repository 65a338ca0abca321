/* Fetch a page over plain TCP: http_client_plain HOST PORT [PATH]
 * (the twin of https_client_ssa.c, which differs from it only in its TLS lines). */
#include <netdb.h>
#include <stdio.h>
#include <string.h>
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
    if (getaddrinfo(host, argv[2], &hints, &ai) != 0) {
        fprintf(stderr, "cannot resolve %s\n", host);
        return 1;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        perror("connect");
        return 1;
    }
    freeaddrinfo(ai);
    char buf[65536];
    int n = snprintf(buf, sizeof buf, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
    if (write(fd, buf, (size_t)n) != n) {
        perror("write");
        return 1;
    }
    ssize_t got;
    while ((got = read(fd, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)got, stdout);
    if (got < 0) {  /* a reset or a cut TLS stream: never taken for the end of the page */
        perror("read");
        return 1;
    }
    close(fd);
    return 0;
}
