/* The threaded HTTP server over TLS: several threads in accept() on one IPPROTO_TLS socket,
 * each verified client delivered to exactly one of them, intact.
 * threaded_server_ssa PORT THREADS CHAIN (a PEM file with the chain and its key). */
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <ssaproxy.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int srv;

static void *worker(void *arg)
{
    for (;;) {
        int c = accept(srv, NULL, NULL);
        if (c < 0)
            continue;
        char req[4096], reply[256];
        size_t have = 0;
        ssize_t n;
        while (have < sizeof req - 1 && (n = read(c, req + have, sizeof req - 1 - have)) > 0) {
            req[have += (size_t)n] = '\0';
            if (strstr(req, "\r\n\r\n") != NULL)
                break;
        }
        int m = snprintf(reply, sizeof reply, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                         "served by thread %ld\n", (long)(intptr_t)arg);
        if (write(c, reply, (size_t)m) != m)
            perror("write");
        close(c);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s PORT THREADS [CHAIN]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int one = 1;
    srv = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(srv, IPPROTO_TLS, TLS_CERTIFICATE_CHAIN, argv[3], strlen(argv[3]) + 1);
    if (bind(srv, (struct sockaddr *)&addr, sizeof addr) || listen(srv, 64)) {
        perror("listen");
        return 1;
    }
    pthread_t t;
    for (long i = 0; i < atoi(argv[2]); i++)
        pthread_create(&t, NULL, worker, (void *)(intptr_t)i);
    printf("listening\n");
    fflush(stdout);
    pthread_join(t, NULL);
    return 0;
}
