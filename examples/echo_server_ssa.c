/* The echo server over TLS, with two certificate chains (the daemon picks by SNI, or by the
 * client's signature algorithms for an RSA and an ECDSA chain of one name):
 * echo_server_ssa PORT CHAIN1 CHAIN2 (each a PEM file with the chain and its key).
 * A client that resets ends only its own connection, never the server. */
#include <arpa/inet.h>
#include <errno.h>
#include <ssaproxy.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void serve(int c)
{
    FILE *in = fdopen(dup(c), "r");
    char *line = NULL, out[8192];
    size_t size = 0;
    ssize_t n;
    while (in != NULL && (n = getline(&line, &size, in)) > 0) {
        int m = snprintf(out, sizeof out, "echo: %.*s", (int)n, line);
        if (write(c, out, (size_t)m) != m)
            break;
    }
    printf(errno == ECONNRESET ? "client reset\n" : "client done\n");
    fflush(stdout);
    free(line);
    if (in != NULL)
        fclose(in);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s PORT [CHAIN1 CHAIN2]\n", argv[0]);
        return 2;
    }
    int one = 1, srv = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(srv, IPPROTO_TLS, TLS_CERTIFICATE_CHAIN, argv[2], strlen(argv[2]) + 1);
    setsockopt(srv, IPPROTO_TLS, TLS_CERTIFICATE_CHAIN, argv[3], strlen(argv[3]) + 1);
    if (bind(srv, (struct sockaddr *)&addr, sizeof addr) || listen(srv, 16)) {
        perror("listen");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        int c = accept(srv, (struct sockaddr *)&peer, &len);
        if (c < 0) {
            perror("accept");
            continue;
        }
        char text[INET_ADDRSTRLEN];
        printf("client %s:%d\n", inet_ntop(AF_INET, &peer.sin_addr, text, sizeof text), ntohs(peer.sin_port));
        errno = 0;
        serve(c);
        close(c);
    }
}
