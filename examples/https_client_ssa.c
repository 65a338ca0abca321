/* Fetch a page over verified TLS from the ssaproxy daemon: https_client_ssa HOST PORT [PATH]
 * (the Secure Socket API port of http_client_plain.c: four lines added or changed). */
#include <netdb.h>
#include <ssaproxy.h>
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
    int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
    if (fd < 0 || setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, host, strlen(host) + 1) || connect(fd, ai->ai_addr, ai->ai_addrlen)) {
        char why[512] = ""; socklen_t len = sizeof why; perror("connect");
        getsockopt(fd, IPPROTO_TLS, TLS_ERROR, why, &len), fprintf(stderr, "TLS_ERROR: %s\n", why);
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
