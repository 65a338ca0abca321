/* A threaded HTTP server: THREADS threads all block in accept() on one listening socket;
 * each answers "served by thread N".
 * threaded_server_plain PORT THREADS [CHAIN] (the chain is for threaded_server_ssa.c, its twin). */
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
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
    if (argc < 3) {
        fprintf(stderr, "usage: %s PORT THREADS [CHAIN]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int one = 1;
    srv = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
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
