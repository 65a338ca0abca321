/* A C program that makes Secure Socket API calls as the test tells it, one command per
 * argument group, and prints one line per call: "<command> <rc> <errno name or 0> <value>".
 * Built by tests/clib.py against the installed libssaproxy.so.
 *
 *   socket inet|inet6|hostname|dgram|unix [nonblock]   setint OPT N     settext OPT TEXT
 *   getint OPT   gettext OPT   connect HOST PORT   bind HOST PORT   listen   wait-out
 *   soerror   send TEXT   recvall   peer   sockname   dup   usedup   shutwr   close   sleep MS
 *   plainsocket [nonblock] (an ordinary TCP socket)   upgrade ROLE   waitfile PATH (at most 60 s)
 *   execfds (a child program lists the descriptors it inherited)   connect6 HOST PORT (an AF_INET6 address)
 *   accept [nonblock] (accept4; the accepted socket becomes the current one; prints the peer)
 * Data read is printed with '|' for line ends and '.' for other unprintable bytes.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <ssaproxy.h>

static int fd = -1, dupfd = -1, family = AF_INET;

static void report(const char *op, int rc, int err, const char *value)
{
    printf("%s %d %s %s\n", op, rc, rc < 0 ? strerrorname_np(err) : "0", value ? value : "");
    fflush(stdout);
}

static socklen_t address(const char *host, const char *port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (family == AF_HOSTNAME) {
        struct sockaddr_host *h = (void *)ss;
        h->sin_family = AF_HOSTNAME;
        h->sin_port = htons((unsigned short)atoi(port));
        snprintf((char *)h->sin_addr.name, sizeof h->sin_addr.name, "%s", host);
        return sizeof *h;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (void *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((unsigned short)atoi(port));
        inet_pton(AF_INET6, host, &a->sin6_addr);
        return sizeof *a;
    }
    struct sockaddr_in *a = (void *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((unsigned short)atoi(port));
    inet_pton(AF_INET, host, &a->sin_addr);
    return sizeof *a;
}

static void show_addr(const char *op, int rc, int err, struct sockaddr_storage *ss)
{
    char text[INET6_ADDRSTRLEN + 16] = "";
    if (rc == 0 && ss->ss_family == AF_INET) {
        struct sockaddr_in *a = (void *)ss;
        inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
        sprintf(text + strlen(text), ":%d", ntohs(a->sin_port));
    } else if (rc == 0 && ss->ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (void *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
        sprintf(text + strlen(text), ":%d", ntohs(a->sin6_port));
    }
    report(op, rc, err, text);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *op = argv[i];
        const char *a1 = i + 1 < argc ? argv[i + 1] : "", *a2 = i + 2 < argc ? argv[i + 2] : "";
        int rc, e;
        char buf[65536];
        if (!strcmp(op, "socket")) {
            int nb = i + 2 < argc && !strcmp(a2, "nonblock");
            family = !strcmp(a1, "inet6") ? AF_INET6 : !strcmp(a1, "hostname") ? AF_HOSTNAME
                     : !strcmp(a1, "unix") ? AF_UNIX : AF_INET;
            fd = socket(family, (!strcmp(a1, "dgram") ? SOCK_DGRAM : SOCK_STREAM) | (nb ? SOCK_NONBLOCK : 0),
                        IPPROTO_TLS);
            e = errno;
            report(op, fd < 0 ? -1 : 0, e, NULL);
            i += 1 + nb;
        } else if (!strcmp(op, "plainsocket")) {
            int nb = i + 1 < argc && !strcmp(a1, "nonblock");
            family = AF_INET;
            fd = socket(AF_INET, SOCK_STREAM | (nb ? SOCK_NONBLOCK : 0), 0);
            report(op, fd < 0 ? -1 : 0, errno, NULL);
            i += nb;
        } else if (!strcmp(op, "upgrade")) {
            int role = atoi(a1);
            rc = setsockopt(fd, SOL_TCP, TCP_UPGRADE_TLS, &role, sizeof role);
            e = errno;
            report(op, rc, e, NULL);
            i += 1;
        } else if (!strcmp(op, "setint")) {
            int v = (int)strtol(a2, NULL, 0);
            rc = setsockopt(fd, IPPROTO_TLS, atoi(a1), &v, sizeof v);
            e = errno;
            report(op, rc, e, NULL);
            i += 2;
        } else if (!strcmp(op, "settext")) {
            rc = setsockopt(fd, IPPROTO_TLS, atoi(a1), a2, (socklen_t)strlen(a2) + 1);
            e = errno;
            report(op, rc, e, NULL);
            i += 2;
        } else if (!strcmp(op, "getint")) {
            int v = -1;
            socklen_t l = sizeof v;
            rc = getsockopt(fd, IPPROTO_TLS, atoi(a1), &v, &l);
            e = errno;
            snprintf(buf, sizeof buf, "%d", v);
            report(op, rc, e, rc == 0 ? buf : NULL);
            i += 1;
        } else if (!strcmp(op, "gettext")) {
            socklen_t l = sizeof buf - 1;
            rc = getsockopt(fd, IPPROTO_TLS, atoi(a1), buf, &l);
            e = errno;
            if (rc == 0)
                buf[l < sizeof buf ? l : sizeof buf - 1] = '\0';
            for (char *p = buf; rc == 0 && *p; p++)
                if (*p == '\n')
                    *p = '|';
            report(op, rc, e, rc == 0 ? buf : NULL);
            i += 1;
        } else if (!strcmp(op, "connect") || !strcmp(op, "bind")) {
            struct sockaddr_storage ss;
            socklen_t l = address(a1, a2, &ss);
            rc = !strcmp(op, "connect") ? connect(fd, (struct sockaddr *)&ss, l) : bind(fd, (struct sockaddr *)&ss, l);
            e = errno;
            report(op, rc, e, NULL);
            i += 2;
        } else if (!strcmp(op, "connect6")) {
            int keep = family;
            family = AF_INET6;
            struct sockaddr_storage ss;
            socklen_t l = address(a1, a2, &ss);
            family = keep;
            rc = connect(fd, (struct sockaddr *)&ss, l);
            report(op, rc, errno, NULL);
            i += 2;
        } else if (!strcmp(op, "accept")) {
            int nb = i + 1 < argc && !strcmp(a1, "nonblock");
            struct sockaddr_storage ss;
            socklen_t l = sizeof ss;
            memset(&ss, 0, sizeof ss);
            int c = accept4(fd, (struct sockaddr *)&ss, &l, SOCK_CLOEXEC | (nb ? SOCK_NONBLOCK : 0));
            e = errno;
            if (c >= 0)
                fd = c;
            show_addr(op, c < 0 ? -1 : 0, e, &ss);
            i += nb;
        } else if (!strcmp(op, "listen")) {
            rc = listen(fd, 16);
            e = errno;
            report(op, rc, e, NULL);
        } else if (!strcmp(op, "wait-out")) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            rc = poll(&p, 1, 30000);
            snprintf(buf, sizeof buf, "%s%s%s%s", p.revents & POLLOUT ? "OUT" : "", p.revents & POLLIN ? "IN" : "",
                     p.revents & POLLERR ? "ERR" : "", p.revents & POLLHUP ? "HUP" : "");
            report(op, rc > 0 ? 0 : -1, rc == 0 ? ETIMEDOUT : errno, buf);
        } else if (!strcmp(op, "soerror")) {
            int v = 0;
            socklen_t l = sizeof v;
            rc = getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &l);
            report(op, rc, errno, v ? strerrorname_np(v) : "0");
        } else if (!strcmp(op, "send")) {
            rc = (int)write(fd, a1, strlen(a1));
            e = errno;
            report(op, rc < 0 ? -1 : 0, e, NULL);
            i += 1;
        } else if (!strcmp(op, "recvall")) {
            size_t have = 0;
            ssize_t n = 0;
            for (int k = 0; k < 100000 && have < sizeof buf - 1; k++) {
                n = read(fd, buf + have, sizeof buf - 1 - have);
                if (n <= 0)
                    break;
                have += (size_t)n;
            }
            e = errno;
            buf[have] = '\0';
            for (size_t k = 0; k < have; k++)
                if (buf[k] == '\n' || buf[k] == '\r')
                    buf[k] = '|';
                else if (!isprint((unsigned char)buf[k]))
                    buf[k] = '.';
            printf("recvall %zu %s %s\n", have, n < 0 ? strerrorname_np(e) : "EOF", buf);
            fflush(stdout);
        } else if (!strcmp(op, "peer") || !strcmp(op, "sockname")) {
            struct sockaddr_storage ss;
            socklen_t l = sizeof ss;
            memset(&ss, 0, sizeof ss);
            rc = !strcmp(op, "peer") ? getpeername(fd, (struct sockaddr *)&ss, &l)
                                     : getsockname(fd, (struct sockaddr *)&ss, &l);
            show_addr(op, rc, errno, &ss);
        } else if (!strcmp(op, "dup")) {
            dupfd = dup(fd);
            report(op, dupfd < 0 ? -1 : 0, errno, NULL);
        } else if (!strcmp(op, "usedup")) {
            int t = fd;
            fd = dupfd;
            dupfd = t;
            report(op, 0, 0, NULL);
        } else if (!strcmp(op, "shutwr")) {
            rc = shutdown(fd, SHUT_WR);
            report(op, rc, errno, NULL);
        } else if (!strcmp(op, "close")) {
            rc = close(fd);
            report(op, rc, errno, NULL);
        } else if (!strcmp(op, "waitfile")) {
            int k = 0;
            while (access(a1, F_OK) != 0 && k++ < 6000)
                usleep(10000);
            report(op, access(a1, F_OK), errno, NULL);
            i += 1;
        } else if (!strcmp(op, "execfds")) {
            fflush(stdout);
            rc = system("for f in /proc/self/fd/*; do readlink $f; done | grep -c '^socket:' | sed 's/^/execfds 0 0 /'");
            fflush(stdout);
        } else if (!strcmp(op, "sleep")) {
            usleep((useconds_t)atoi(a1) * 1000);
            i += 1;
        } else {
            fprintf(stderr, "unknown command %s\n", op);
            return 2;
        }
    }
    return 0;
}
