/* The C client of benchmarks/clib.py, built twice from this one source:
 *
 *   gcc clib_client.c $(ssaproxy c-flags)            -> the Secure Socket API through the daemon
 *   gcc -DDIRECT_OPENSSL clib_client.c -lssl -lcrypto -> OpenSSL in the program itself
 *
 *   clib_client HOST PORT NAME CAFILE PATTERN OP ARG
 *     OP conns N        N cycles: socket + connect (+ handshake) | PING/PONG | orderly end
 *     OP download N     "SOURCE N", read N bytes          (ARG "N check": compare them to PATTERN)
 *     OP upload N       "SINK N crc", send N bytes of PATTERN, print the backend's reply
 *     OP info           "INFO", print the backend's reply
 *
 * Both builds do the same work apart from who does TLS: the same blocking socket, TCP_NODELAY,
 * the same 1 MiB buffers, the same orderly end (the program's half-close, then the backend's
 * end awaited).  The OpenSSL build verifies as the daemon does: the chain against CAFILE, the
 * name NAME, SNI NAME, TLS 1.2 at least, no session offered or kept (full handshakes).
 * CAFILE is unused by the SSA build: the daemon's trust store is the admin's.
 *
 * Output, one figure a line: "connect US" per cycle (socket() to a finished handshake),
 * "cycle US" per cycle, "bytes N", "reply TEXT", and last "cpu SECONDS wall SECONDS" (this
 * process's user+system time over the measured work, from getrusage). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#ifdef DIRECT_OPENSSL
#include <openssl/err.h>
#include <openssl/ssl.h>
#else
#include <ssaproxy.h>
#endif

#define CHUNK (1 << 20)

static struct sockaddr_in addr;
static const char *name;
static unsigned char pattern[CHUNK], buf[CHUNK];

static void die(const char *what)
{
    fprintf(stderr, "clib_client: %s: %s\n", what, strerror(errno));
#ifdef DIRECT_OPENSSL
    ERR_print_errors_fp(stderr);
#endif
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int tcp_socket(int protocol)
{
    int fd = socket(AF_INET, SOCK_STREAM, protocol), one = 1;
    struct timeval tv = {.tv_sec = 30};
    if (fd < 0)
        die("socket");
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv))
        die("setsockopt");
    return fd;
}

#ifdef DIRECT_OPENSSL
typedef struct { int fd; SSL *ssl; } conn_t;
static SSL_CTX *ctx;

static void setup(const char *cafile)
{
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || !SSL_CTX_load_verify_locations(ctx, cafile, NULL) || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
        die("SSL_CTX");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
}

static void c_open(conn_t *c)
{
    c->fd = tcp_socket(0);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr))
        die("connect");
    c->ssl = SSL_new(ctx);
    if (!c->ssl || !SSL_set_fd(c->ssl, c->fd) || !SSL_set_tlsext_host_name(c->ssl, name) || !SSL_set1_host(c->ssl, name))
        die("SSL_new");
    if (SSL_connect(c->ssl) != 1)
        die("SSL_connect");
}

static size_t c_read(conn_t *c, void *p, size_t n)
{
    size_t got = 0;
    if (SSL_read_ex(c->ssl, p, n, &got) == 1)
        return got;
    if (SSL_get_error(c->ssl, 0) == SSL_ERROR_ZERO_RETURN)
        return 0;  /* close_notify: the only clean end */
    die("SSL_read");
    return 0;
}

static void c_write(conn_t *c, const void *p, size_t n)
{
    size_t done = 0;
    if (SSL_write_ex(c->ssl, p, n, &done) != 1 || done != n)
        die("SSL_write");
}

static void c_finish(conn_t *c)
{
    if (SSL_shutdown(c->ssl) < 0)  /* our close_notify */
        die("SSL_shutdown");
    while (c_read(c, buf, sizeof buf) > 0)  /* until the backend's */
        ;
    SSL_free(c->ssl);
    close(c->fd);
}
#else
typedef struct { int fd; } conn_t;

static void setup(const char *cafile)
{
    (void)cafile;
}

static void c_open(conn_t *c)
{
    c->fd = tcp_socket(IPPROTO_TLS);
    if (setsockopt(c->fd, IPPROTO_TLS, TLS_HOSTNAME, name, (socklen_t)strlen(name) + 1) ||
        connect(c->fd, (struct sockaddr *)&addr, sizeof addr))
        die("connect");
}

static size_t c_read(conn_t *c, void *p, size_t n)
{
    ssize_t got = read(c->fd, p, n);
    if (got < 0)
        die("read");
    return (size_t)got;
}

static void c_write(conn_t *c, const void *p, size_t n)
{
    const unsigned char *q = p;
    while (n > 0) {
        ssize_t k = write(c->fd, q, n);
        if (k < 0)
            die("write");
        q += k, n -= (size_t)k;
    }
}

static void c_finish(conn_t *c)
{
    if (shutdown(c->fd, SHUT_WR))
        die("shutdown");
    while (c_read(c, buf, sizeof buf) > 0)
        ;
    close(c->fd);
}
#endif

static void read_exact(conn_t *c, unsigned char *p, size_t n)
{
    while (n > 0) {
        size_t k = c_read(c, p, n);
        if (k == 0) {
            fprintf(stderr, "clib_client: EOF with %zu bytes to go\n", n);
            exit(1);
        }
        p += k, n -= k;
    }
}

static void read_line(conn_t *c, char *line, size_t size)
{
    size_t n = 0;
    while (n + 1 < size) {
        read_exact(c, (unsigned char *)line + n, 1);
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
}

int main(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr, "usage: %s HOST PORT NAME CAFILE PATTERN conns|download|upload|info N [check]\n", argv[0]);
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1)
        return 2;
    name = argv[3];
    FILE *f = fopen(argv[5], "rb");
    if (!f || fread(pattern, 1, CHUNK, f) != CHUNK)
        die("the pattern file");
    fclose(f);
    setup(argv[4]);
    const char *op = argv[6];
    long long n = atoll(argv[7]);
    int check = argc > 8 && strcmp(argv[8], "check") == 0;
    char line[512];
    conn_t c;
    double c0 = cpu(), w0 = now();
    if (strcmp(op, "conns") == 0) {
        for (long long i = 0; i < n; i++) {
            double t0 = now();
            c_open(&c);
            double t1 = now();
            c_write(&c, "PING\n", 5);
            read_exact(&c, buf, 5);
            if (memcmp(buf, "PONG\n", 5) != 0) {
                fprintf(stderr, "clib_client: no PONG\n");
                return 1;
            }
            c_finish(&c);
            printf("connect %.1f\ncycle %.1f\n", (t1 - t0) * 1e6, (now() - t0) * 1e6);
        }
    } else if (strcmp(op, "download") == 0) {
        c_open(&c);
        int k = snprintf(line, sizeof line, "SOURCE %lld\n", n);
        c_write(&c, line, (size_t)k);
        long long got = 0;
        while (got < n) {
            size_t want = n - got < CHUNK ? (size_t)(n - got) : CHUNK;
            size_t r = c_read(&c, buf, want);
            if (r == 0) {
                fprintf(stderr, "clib_client: EOF after %lld of %lld bytes\n", got, n);
                return 1;
            }
            if (check) {  /* PATTERN repeated: compare in at most two pieces */
                size_t off = (size_t)(got % CHUNK), first = r < CHUNK - off ? r : CHUNK - off;
                if (memcmp(buf, pattern + off, first) || memcmp(buf + first, pattern, r - first)) {
                    fprintf(stderr, "clib_client: different bytes near offset %lld\n", got);
                    return 1;
                }
            }
            got += (long long)r;
        }
        c_finish(&c);
        printf("bytes %lld\n", got);
    } else if (strcmp(op, "upload") == 0) {
        c_open(&c);
        int k = snprintf(line, sizeof line, "SINK %lld crc\n", n);
        c_write(&c, line, (size_t)k);
        for (long long left = n; left > 0; left -= CHUNK)
            c_write(&c, pattern, left < CHUNK ? (size_t)left : CHUNK);
        read_line(&c, line, sizeof line);
        c_finish(&c);
        printf("reply %s\n", line);
    } else if (strcmp(op, "info") == 0) {
        c_open(&c);
        c_write(&c, "INFO\n", 5);
        read_line(&c, line, sizeof line);
        c_finish(&c);
        printf("reply %s\n", line);
    } else {
        return 2;
    }
    printf("cpu %.6f wall %.6f\n", cpu() - c0, now() - w0);
    return 0;
}
