/* IPPROTO_TLS servers (docs/api.md, "Listening") and TCP_UPGRADE_TLS ("The conversation").
 *
 * bind() puts the program's address on a second socket B; N itself listens on loopback.  The
 * daemon takes both, accepts TLS clients on B, and delivers each verified client as a new
 * loopback connection to N that starts with the listener's TOKEN and one ACCEPTED frame.
 * accept() is the kernel's accept on N, so pre-forked processes and threads share it exactly
 * as a TCP listener; a connection that does not start with the token is reset and skipped. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "include/ssaproxy.h"
#include "internal.h"


#define DEFER_S 30         /* TCP_DEFER_ACCEPT on N, seconds */
#define EMPTY_LOOK_MS 100  /* how long a deferred connection with no data yet is waited for */

static void loopback(int family, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (void *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        *len = sizeof *a;
    } else {
        struct sockaddr_in *a = (void *)ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        *len = sizeof *a;
    }
}

int tls_bind(struct sock *s, int fd, const struct sockaddr *a, socklen_t len)
{
    if (s->family == AF_HOSTNAME) {
        sock_error(s, "an AF_HOSTNAME socket cannot bind");
        errno = EOPNOTSUPP;
        return -1;
    }
    if (s->phase != P_FRESH || s->bound) {
        errno = EINVAL;
        return -1;
    }
    int b = real.socket(s->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (b < 0)
        return -1;
    for (size_t i = 0; i < s->nsaved; i++)
        real.setsockopt(b, s->saved[i].level, s->saved[i].name, &s->saved[i].value, sizeof(int));
    struct sockaddr_storage lo;
    socklen_t lolen;
    loopback(s->family, &lo, &lolen);
    if (real.bind(b, a, len) != 0 || real.bind(fd, (struct sockaddr *)&lo, lolen) != 0) {
        int e = errno;
        real.close(b);
        errno = e;
        return -1;
    }
    s->bound_len = sizeof s->bound_addr;
    real.getsockname(b, (struct sockaddr *)&s->bound_addr, &s->bound_len);
    s->b_fd = b;
    s->bound = 1;
    return 0;
}

int tls_listen(struct sock *s, int fd, int backlog)
{
    if (s->phase == P_LISTENING)
        return real.listen(fd, backlog);
    if (s->family == AF_HOSTNAME) {
        errno = EOPNOTSUPP;
        return -1;
    }
    if (s->phase != P_FRESH || s->busy) {
        errno = s->busy ? EALREADY : EINVAL;
        return -1;
    }
    if (!s->bound) {  /* listen() without bind(): any address, a port the kernel picks */
        struct sockaddr_storage any = {0};
        socklen_t l = s->family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        any.ss_family = (sa_family_t)s->family;
        if (tls_bind(s, fd, (struct sockaddr *)&any, l) != 0)
            return -1;
    }
    /* Any local user can connect to N.  The daemon writes the token and ACCEPTED in one go
     * right after connecting, so N defers accept() until data arrives: a stranger that sends
     * nothing reaches accept() only after DEFER_S, and is reset there without a wait. */
    int defer = DEFER_S;
    real.setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof defer);
    if (real.listen(s->b_fd, backlog) != 0 || real.listen(fd, backlog) != 0)
        return -1;
    int fl = fcntl(fd, F_GETFL);
    s->error[0] = '\0';
    s->busy = 1;
    table_unlock();
    int r = session(s);
    struct frame f = {0};
    char why[sizeof s->error] = "";
    if (r == 0) {
        struct out o;
        int fds[2] = {s->b_fd, fd};
        out_start(&o, K_LISTEN);
        out_int(&o, T_BACKLOG, backlog);
        r = control_request(s->control, &o, fds, 2, &f, 30000);
        out_free(&o);
        if (r) {
            snprintf(why, sizeof why, "the ssaproxy daemon did not answer LISTEN: %s", strerror(-r));
            r = -ECONNABORTED;
        } else if (f.kind != K_OK) {
            r = -frame_error(&f, why, sizeof why);
        } else {
            const struct attr *t = frame_get(&f, T_TOKEN);
            if (t == NULL || t->size != TOKEN_SIZE) {
                snprintf(why, sizeof why, "the ssaproxy daemon's LISTEN answer lacks its token");
                r = -EPROTO;
            } else {
                memcpy(s->token, t->value, TOKEN_SIZE);
            }
        }
    }
    fcntl(fd, F_SETFL, fl);  /* O_NONBLOCK lives on the file the daemon shares: the program's choice */
    table_lock();
    s->busy = 0;
    if (forget_if_closed(s, fd)) {  /* closed by another thread meanwhile: the daemon lets go too */
        frame_free(&f);
        errno = r ? -r : EBADF;
        return -1;
    }
    if (r == 0) {
        s->phase = P_LISTENING;
        real.close(s->b_fd);  /* the daemon holds B now */
        s->b_fd = -1;
    } else {
        if (why[0])
            snprintf(s->error, sizeof s->error, "%s", why);
        sock_close_control(s);
    }
    frame_free(&f);
    if (r)
        errno = -r;
    return r ? -1 : 0;
}

static void reset_close(int c)
{
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    real.setsockopt(c, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    real.close(c);
}

static int recv_exact(int c, unsigned char *buf, size_t n, int64_t deadline)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(c, buf + got, n - got, MSG_DONTWAIT);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR))
            return -1;
        int left = (int)(deadline - now_ms());
        if (left <= 0 || wait_fd(c, POLLIN, left) != 0)
            return -1;
    }
    return 0;
}

/* The delivered connection c's token and ACCEPTED frame (at most 2 s, never a byte more).
 * Only a connection whose first bytes are the token may make us wait long: one whose bytes
 * differ is refused at once, and on a deferring listener (`deferred`) one with no bytes at all
 * after a short look (the daemon's data comes with its connection, a stranger's may never). */
static int take_delivery(int c, const unsigned char *token, struct frame *f, int deferred)
{
    unsigned char head[TOKEN_SIZE + 4];
    int64_t deadline = now_ms() + 2000;
    memset(f, 0, sizeof *f);
    ssize_t n;
    while ((n = recv(c, head, TOKEN_SIZE, MSG_PEEK | MSG_DONTWAIT)) < 0 && errno == EINTR)
        continue;
    if (n == 0 || (n < 0 && errno != EAGAIN))
        return -1;
    if (n < 0 && deferred && wait_fd(c, POLLIN, EMPTY_LOOK_MS) != 0)
        return -1;
    unsigned early = 0;
    for (ssize_t i = 0; i < n; i++)
        early |= (unsigned)(head[i] ^ token[i]);
    if (early != 0)
        return -1;
    /* The daemon writes the token and the frame in one write: its first bytes are all there
     * at once.  A stranger that sent a few bytes matching the token's start is given no longer
     * than a short look for the rest; only a whole right token earns the wait for the frame. */
    if (recv_exact(c, head, sizeof head, now_ms() + EMPTY_LOOK_MS) != 0)
        return -1;
    unsigned diff = 0;
    for (size_t i = 0; i < TOKEN_SIZE; i++)
        diff |= (unsigned)(head[i] ^ token[i]);
    uint32_t len = (uint32_t)head[32] << 24 | (uint32_t)head[33] << 16 | (uint32_t)head[34] << 8 | head[35];
    if (diff != 0 || len < 2 || len > MAX_FRAME)
        return -1;
    unsigned char *body = malloc(len);
    if (body == NULL)
        return -1;
    if (recv_exact(c, body, len, deadline) != 0 || frame_parse(f, body, len) != 0 || f->kind != K_ACCEPTED ||
        frame_get(f, T_PEER_HOST) == NULL) {
        free(body);
        f->body = NULL;
        return -1;
    }
    f->body = body;
    return 0;
}

int tls_accept(struct sock *s, int fd, struct sockaddr *addr, socklen_t *alen, int flags)
{
    unsigned char token[TOKEN_SIZE];
    memcpy(token, s->token, TOKEN_SIZE);
    int family = s->family, deferred = 0;
    socklen_t dl = sizeof deferred;
    if (real.getsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &deferred, &dl) != 0)
        deferred = 0;
    table_unlock();
    int c;
    struct frame f;
    for (;;) {
        c = real.accept4(fd, NULL, NULL, flags);
        if (c < 0) {
            int e = errno;
            table_lock();
            errno = e;
            return -1;
        }
        if (take_delivery(c, token, &f, deferred) == 0)
            break;
        reset_close(c);  /* not the daemon's, or malformed, or late: the next one */
    }
    table_lock();
    struct sock *a = table_add(c, family, P_CONNECTED);
    if (a == NULL) {
        frame_free(&f);
        reset_close(c);
        errno = ENOMEM;
        return -1;
    }
    sock_set_info(a, &f);
    frame_free(&f);
    if (addr != NULL && alen != NULL) {
        socklen_t n = *alen < a->peer_len ? *alen : a->peer_len;
        memcpy(addr, &a->peer, n);
        *alen = a->peer_len;
    }
    return c;
}

/* STARTTLS: the connected TCP socket goes to the daemon, whose carrier replaces it (dup2). */
int tls_upgrade(struct sock *s, int fd, int role)
{
    if (!s->plain) {
        sock_error(s, "TCP_UPGRADE_TLS is for an ordinary TCP socket; this one is IPPROTO_TLS");
        errno = EOPNOTSUPP;
        return -1;
    }
    if (role != TLS_UPGRADE_CLIENT && role != TLS_UPGRADE_SERVER) {
        sock_error(s, "TCP_UPGRADE_TLS takes TLS_UPGRADE_CLIENT (1) or TLS_UPGRADE_SERVER (2)");
        errno = EINVAL;
        return -1;
    }
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    if (real.getpeername(fd, (struct sockaddr *)&peer, &plen) != 0) {
        sock_error(s, "TCP_UPGRADE_TLS needs a connected socket");
        errno = ENOTCONN;
        return -1;
    }
    if (s->busy) {
        errno = EALREADY;
        return -1;
    }
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);  /* before the daemon shares the file */
    s->busy = 1;
    table_unlock();
    int r = session(s);
    struct frame f = {0}, res = {0};
    char why[sizeof s->error] = "";
    int carrier = -1;
    if (r == 0) {
        struct out o;
        out_start(&o, K_UPGRADE);
        out_int(&o, T_ROLE, role);
        r = control_request(s->control, &o, &fd, 1, &f, 30000);
        out_free(&o);
        if (r) {
            snprintf(why, sizeof why, "the ssaproxy daemon did not answer UPGRADE: %s", strerror(-r));
            r = -ECONNABORTED;
        } else if (f.kind != K_CARRIER || f.nfds != 1) {
            r = -frame_error(&f, why, sizeof why);
        } else {
            carrier = f.fds[0];
            f.nfds = 0;
        }
        frame_free(&f);
    }
    if (carrier >= 0) {
        fcntl(carrier, F_SETFL, fl);
        r = dup3(carrier, fd, (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0 ? -errno : 0;
        real.close(carrier);
        if (r == 0) {  /* the result frame comes first on the carrier */
            r = control_recv(fd, &res, 180000);
            if (r)
                snprintf(why, sizeof why, "no result from the ssaproxy daemon: %s", strerror(-r));
            else if (res.kind != K_ESTABLISHED && res.kind != K_ACCEPTED)
                r = -frame_error(&res, why, sizeof why);
        }
    }
    if (r)  /* STARTTLS was agreed: this connection must never go on in plaintext */
        real.shutdown(fd, SHUT_RDWR);
    table_lock();
    s->busy = 0;
    sock_close_control(s);
    if (r) {
        if (why[0])
            snprintf(s->error, sizeof s->error, "%s", why);
        frame_free(&res);
        errno = -r;
        return -1;
    }
    int family = s->family;
    table_forget(s);  /* the fd is the carrier now: a new socket identity */
    struct sock *n = table_add(fd, family, P_CONNECTED);
    if (n != NULL)
        sock_set_info(n, &res);
    frame_free(&res);
    return 0;
}
