/* The local socket API's framing (docs/api.md, version 2) and the control connection.
 *
 * A frame is u32 length, u16 kind, then attributes (u16 tag, u32 size, value), big-endian.
 * Every length is checked before it is trusted.  Reads on the control connection never go
 * past the frame being assembled, so a frame never waits in our memory while poll() says the
 * socket is empty; descriptors (SCM_RIGHTS) are taken close-on-exec. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "include/ssaproxy.h"
#include "internal.h"

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        int left = (int)(deadline - now_ms());
        int r = poll(&p, 1, left < 0 ? 0 : left);
        if (r > 0)
            return 0;
        if (r == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

int readable_now(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

static void put16(unsigned char *p, unsigned v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}
static unsigned get16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }
static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void out_reserve(struct out *o, size_t more)
{
    if (o->failed || o->len + more <= o->cap)
        return;
    if (more > MAX_FRAME + 4 || o->len + more > MAX_FRAME + 4) {  /* before realloc: o->buf stays valid */
        o->failed = 1;
        return;
    }
    size_t cap = o->cap ? o->cap : 256;
    while (cap < o->len + more)
        cap *= 2;
    if (cap > MAX_FRAME + 4)
        cap = MAX_FRAME + 4;
    unsigned char *b = realloc(o->buf, cap);
    if (b == NULL) {
        o->failed = 1;
        return;
    }
    o->buf = b;
    o->cap = cap;
}

void out_start(struct out *o, unsigned kind)
{
    memset(o, 0, sizeof *o);
    out_reserve(o, 6);
    if (!o->failed) {
        put16(o->buf + 4, kind);
        o->len = 6;
    }
}

void out_bytes(struct out *o, unsigned tag, const void *value, size_t size)
{
    if (size > MAX_FRAME) {
        o->failed = 1;
        return;
    }
    out_reserve(o, 6 + size);
    if (o->failed)
        return;
    put16(o->buf + o->len, tag);
    put32(o->buf + o->len + 2, (uint32_t)size);
    if (size)
        memcpy(o->buf + o->len + 6, value, size);
    o->len += 6 + size;
}

void out_int(struct out *o, unsigned tag, int32_t value)
{
    unsigned char b[4];
    put32(b, (uint32_t)value);
    out_bytes(o, tag, b, 4);
}

void out_text(struct out *o, unsigned tag, const char *text) { out_bytes(o, tag, text, strlen(text)); }

void out_free(struct out *o)
{
    free(o->buf);
    memset(o, 0, sizeof *o);
}

int frame_parse(struct frame *f, unsigned char *body, size_t len)
{
    f->body = body;
    f->nattrs = 0;
    if (len < 2)
        return -EPROTO;
    f->kind = get16(body);
    size_t at = 2;
    while (at < len) {
        if (f->nattrs >= MAX_ATTRS || len - at < 6)
            return -EPROTO;
        unsigned tag = get16(body + at);
        uint32_t size = get32(body + at + 2);
        at += 6;
        if (size > len - at)
            return -EPROTO;
        for (size_t i = 0; i < f->nattrs; i++)
            if (f->attrs[i].tag == tag)
                return -EPROTO;
        f->attrs[f->nattrs++] = (struct attr){.tag = tag, .size = size, .value = body + at};
        at += size;
    }
    return 0;
}

void frame_free(struct frame *f)
{
    for (int i = 0; i < f->nfds; i++)
        real.close(f->fds[i]);
    f->nfds = 0;
    free(f->body);
    f->body = NULL;
}

const struct attr *frame_get(const struct frame *f, unsigned tag)
{
    for (size_t i = 0; i < f->nattrs; i++)
        if (f->attrs[i].tag == tag)
            return &f->attrs[i];
    return NULL;
}

int frame_int(const struct frame *f, unsigned tag, int32_t *value)
{
    const struct attr *a = frame_get(f, tag);
    if (a == NULL || a->size != 4)
        return -1;
    *value = (int32_t)get32(a->value);
    return 0;
}

size_t frame_text(const struct frame *f, unsigned tag, char *buf, size_t size)
{
    const struct attr *a = frame_get(f, tag);
    size_t n = 0;
    if (a != NULL)
        n = a->size < size - 1 ? a->size : size - 1;
    if (n)
        memcpy(buf, a->value, n);
    buf[n] = '\0';
    return n;
}

int frame_error(const struct frame *f, char *why, size_t whysize)
{
    int32_t code = EPROTO;
    if (f->kind != K_ERROR || frame_int(f, T_ERRNO, &code) != 0 || code <= 0 || code > 4095) {
        snprintf(why, whysize, "unexpected reply (kind %u) from the ssaproxy daemon", f->kind);
        return EPROTO;
    }
    frame_text(f, T_TEXT, why, whysize);
    return code;
}

int control_send(int fd, struct out *o, const int *fds, int nfds)
{
    if (o->failed)
        return -ENOMEM;
    put32(o->buf, (uint32_t)(o->len - 4));
    size_t at = 0;
    if (nfds > 0) {
        char cbuf[CMSG_SPACE(2 * sizeof(int))];
        memset(cbuf, 0, sizeof cbuf);
        struct iovec iov = {.iov_base = o->buf, .iov_len = 1};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                           .msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int))};
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
        for (;;) {
            ssize_t r = sendmsg(fd, &m, MSG_NOSIGNAL);
            if (r == 1)
                break;
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && errno == EAGAIN) {
                int w = wait_fd(fd, POLLOUT, 5000);
                if (w)
                    return w;
                continue;
            }
            return r < 0 ? -errno : -EIO;
        }
        at = 1;
    }
    int64_t deadline = now_ms() + 5000;
    while (at < o->len) {
        ssize_t r = send(fd, o->buf + at, o->len - at, MSG_NOSIGNAL);
        if (r > 0) {
            at += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN) {
            int w = wait_fd(fd, POLLOUT, (int)(deadline - now_ms()));
            if (w)
                return w;
            continue;
        }
        return -errno;
    }
    return 0;
}

/* Read exactly n bytes (descriptors to f) before the deadline. */
static int read_exact(int fd, unsigned char *buf, size_t n, struct frame *f, int64_t deadline)
{
    size_t got = 0;
    while (got < n) {
        char cbuf[CMSG_SPACE(4 * sizeof(int))];
        struct iovec iov = {.iov_base = buf + got, .iov_len = n - got};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                           .msg_controllen = sizeof cbuf};
        ssize_t r = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (r > 0) {
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                    continue;
                size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < k; i++) {
                    int d;
                    memcpy(&d, CMSG_DATA(c) + i * sizeof(int), sizeof d);
                    if (f->nfds < 2)
                        f->fds[f->nfds++] = d;
                    else
                        real.close(d);
                }
            }
            got += (size_t)r;
            continue;
        }
        if (r == 0)
            return -ECONNABORTED;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -errno;
        int left = (int)(deadline - now_ms());
        if (left <= 0)
            return -ETIMEDOUT;
        int w = wait_fd(fd, POLLIN, left);
        if (w)
            return w;
    }
    return 0;
}

int control_recv(int fd, struct frame *f, int timeout_ms)
{
    memset(f, 0, sizeof *f);
    int64_t deadline = now_ms() + timeout_ms;
    unsigned char head[4];
    int r = read_exact(fd, head, 4, f, deadline);
    uint32_t len = r ? 0 : get32(head);
    if (r == 0 && (len < 2 || len > MAX_FRAME))
        r = -EPROTO;
    unsigned char *body = r ? NULL : malloc(len);
    if (r == 0 && body == NULL)
        r = -ENOMEM;
    if (r) {
        frame_free(f);  /* descriptors that came with the bytes read so far */
        return r;
    }
    r = read_exact(fd, body, len, f, deadline);
    if (r == 0)
        r = frame_parse(f, body, len);
    f->body = body;
    if (r)
        frame_free(f);
    return r;
}

int control_request(int fd, struct out *o, const int *fds, int nfds, struct frame *reply, int timeout_ms)
{
    int r = control_send(fd, o, fds, nfds);
    /* EPIPE / ECONNRESET: the daemon closed at once, which is how it refuses a control
     * connection beyond a share; its ERROR frame (EAGAIN) may still wait to be read. */
    if (r && r != -EPIPE && r != -ECONNRESET)
        return r;
    int got = control_recv(fd, reply, timeout_ms);
    return got && r ? r : got;
}

int control_open(char *why, size_t whysize, int park[2])
{
    real_init();
    const char *path = secure_getenv(SSAPROXY_ENV_SOCKET);  /* a set-user-ID program ignores its caller's */
    if (path == NULL || *path == '\0')
        path = SSAPROXY_DEFAULT_SOCKET;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) {
        snprintf(why, whysize, "the ssaproxy socket path is too long: %s", path);
        return -ENAMETOOLONG;
    }
    strcpy(a.sun_path, path);
    int fd = real.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(why, whysize, "no socket for the ssaproxy daemon: %s", strerror(e));
        return -e;
    }
    if (real.connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        snprintf(why, whysize, "cannot reach the ssaproxy daemon at %s: %s", path, strerror(e));
        real.close(fd);
        return -e;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct out o;
    struct frame f;
    out_start(&o, K_HELLO);
    out_int(&o, T_VERSION, SSAPROXY_PROTOCOL);
    int r = control_request(fd, &o, NULL, 0, &f, 30000);
    out_free(&o);
    if (r) {
        snprintf(why, whysize, "the ssaproxy daemon at %s did not welcome us: %s", path, strerror(-r));
        real.close(fd);
        return r;
    }
    if (f.kind != K_WELCOME) {
        int e = frame_error(&f, why, whysize);
        frame_free(&f);
        real.close(fd);
        return -e;
    }
    if (park != NULL) {
        int32_t p4 = 0, p6 = 0;
        frame_int(&f, T_PARK_PORT4, &p4);
        frame_int(&f, T_PARK_PORT6, &p6);
        park[0] = p4 > 0 && p4 < 65536 ? p4 : 0;
        park[1] = p6 > 0 && p6 < 65536 ? p6 : 0;
    }
    frame_free(&f);
    return fd;
}
