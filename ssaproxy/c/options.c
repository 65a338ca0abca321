/* Options at level IPPROTO_TLS (docs/api.md's table): before connect/listen they travel to the
 * daemon as SETOPT/GETOPT; afterwards they are answered from the ESTABLISHED/ACCEPTED frame.
 * PEM options take PEM or a path, read here, in the program's own process. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "include/ssaproxy.h"
#include "internal.h"


enum okind { O_TEXT, O_INT, O_PEM };
#define SET 1
#define GET 2
#define CONNECTED_ONLY 4
#define UNSUPPORTED 8
struct option_def {
    int number;
    enum okind kind;
    int flags;
};
static const struct option_def table[] = {
    {TLS_REMOTE_HOSTNAME, O_TEXT, SET | GET},
    {TLS_SERVER_NAME, O_TEXT, GET | CONNECTED_ONLY},
    {TLS_TRUSTED_PEER_CERTIFICATES, O_PEM, SET},
    {TLS_CERTIFICATE_CHAIN, O_PEM, SET},
    {TLS_PRIVATE_KEY, O_PEM, SET},
    {TLS_ALPN, O_TEXT, SET | GET},
    {TLS_SESSION_TTL, O_INT, UNSUPPORTED},
    {TLS_DISABLE_CIPHER, O_TEXT, SET},
    {TLS_PEER_IDENTITY, O_TEXT, GET | CONNECTED_ONLY},
    {TLS_REQUEST_PEER_AUTH, O_INT, SET | GET},
    {TLS_PEER_CERTIFICATE_CHAIN, O_PEM, GET | CONNECTED_ONLY},
    {TLS_ID, O_INT, UNSUPPORTED},
    {TLS_TRUSTED_CIPHERS, O_TEXT, SET | GET},
    {TLS_CHOSEN_CIPHER, O_TEXT, GET | CONNECTED_ONLY},
    {TLS_ERROR, O_TEXT, GET},
    {TLS_REVOCATION_CHECKS, O_INT, SET | GET},
    {TLS_OCSP_STAPLED_CHECKS, O_INT, SET | GET},
    {TLS_OCSP_CHECKS, O_INT, SET | GET},
    {TLS_CRL_CHECKS, O_INT, SET | GET},
    {TLS_CACHED_REV_CHECKS, O_INT, SET | GET},
    {TLS_CONTEXT, O_INT, SET | GET},
    {TLS_SESSION_REUSE, O_INT, SET | GET},
    {TLS_RESUMED_SESSION, O_INT, GET | CONNECTED_ONLY},
    {TLS_ENABLE_CIPHER, O_TEXT, SET},
    {TLS_VERSION_MIN, O_INT, SET | GET},
    {TLS_VERSION_MAX, O_INT, SET | GET},
    {TLS_VERSION_CONN, O_INT, GET | CONNECTED_ONLY},
    {TLS_TRUSTED_PEER_CERTIFICATES_ONLY, O_PEM, SET},
    {TLS_ALLOW_RAGGED_EOF, O_INT, SET | GET},
};

static const struct option_def *find(int number)
{
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].number == number)
            return &table[i];
    return NULL;
}

static int fail(struct sock *s, int code, const char *text)
{
    snprintf(s->error, sizeof s->error, "%s", text);
    errno = code;
    return -1;
}

static int remember(struct sock *s, int number, const unsigned char *value, size_t size)
{
    void *p = realloc(s->opts, (s->nopts + 1) * sizeof *s->opts);
    if (p == NULL)
        return -ENOMEM;
    s->opts = p;
    unsigned char *v = malloc(size ? size : 1);
    if (v == NULL)
        return -ENOMEM;
    if (size)
        memcpy(v, value, size);
    s->opts[s->nopts].option = number;
    s->opts[s->nopts].value = v;
    s->opts[s->nopts].size = (uint32_t)size;
    s->nopts++;
    return 0;
}

static int setopt_wire(int control, int number, const unsigned char *value, size_t size, char *why, size_t whysize)
{
    struct out o;
    struct frame f;
    out_start(&o, K_SETOPT);
    out_int(&o, T_OPTION, number);
    out_bytes(&o, T_VALUE, value, size);
    int r = control_request(control, &o, NULL, 0, &f, 30000);
    out_free(&o);
    if (r) {
        snprintf(why, whysize, "the ssaproxy daemon did not answer: %s", strerror(-r));
        return r == -ETIMEDOUT ? r : -ECONNABORTED;
    }
    r = f.kind == K_OK ? 0 : -frame_error(&f, why, whysize);
    frame_free(&f);
    return r;
}

int session(struct sock *s)
{
    if (s->control >= 0)
        return 0;
    char why[sizeof s->error];
    int fd = control_open(why, sizeof why, s->park);
    if (fd < 0) {
        snprintf(s->error, sizeof s->error, "%s", why);
        return fd;
    }
    for (size_t i = 0; i < s->nopts; i++) {
        int r = setopt_wire(fd, s->opts[i].option, s->opts[i].value, s->opts[i].size, why, sizeof why);
        if (r) {
            snprintf(s->error, sizeof s->error, "%s", why);
            real.close(fd);
            return r;
        }
    }
    s->control = fd;
    return 0;
}

/* Send (option, value) pairs; the table is unlocked while we talk (s->busy is set). */
static int set_pairs(struct sock *s, int n1, unsigned char *v1, size_t l1, int n2, unsigned char *v2, size_t l2)
{
    int r = session(s);
    char why[sizeof s->error];
    if (r)
        return r;
    r = setopt_wire(s->control, n1, v1, l1, why, sizeof why);
    if (r == 0 && n2)
        r = setopt_wire(s->control, n2, v2, l2, why, sizeof why);
    if (r) {
        snprintf(s->error, sizeof s->error, "%s", why);
        if (r == -ECONNABORTED || r == -EPROTO || r == -ETIMEDOUT)
            sock_close_control(s);
        return r;
    }
    if (remember(s, n1, v1, l1) || (n2 && remember(s, n2, v2, l2)))
        return -ENOMEM;
    return 0;
}

/* Called with the table locked.  While another thread talks to the daemon for this socket
 * (busy), wait for it (the table unlocked meanwhile): the two calls then take turns on one
 * control connection, as if in sequence.  The socket's record afterwards (the same one, or a
 * new one if an upgrade replaced the file), or NULL with errno set. */
static struct sock *wait_idle(struct sock *s, int fd)
{
    for (int spins = 0; s != NULL && s->busy; spins++) {
        if (spins > 200000) {  /* longer than any wait of the other call (180 s) */
            errno = EALREADY;
            return NULL;
        }
        table_unlock();
        usleep(1000);
        table_lock();
        s = table_find(fd);
    }
    if (s == NULL)
        errno = EBADF;
    return s;
}

int tls_setsockopt(struct sock *s, int fd, int name, const void *value, socklen_t len)
{
    const struct option_def *d = find(name);
    s = wait_idle(s, fd);
    if (s == NULL)
        return -1;
    s->error[0] = '\0';
    if (s->phase != P_FRESH && s->phase != P_FAILED && s->phase != P_UPGRADABLE)
        return fail(s, EISCONN, "options are set before connect/listen");
    if (d == NULL || !(d->flags & SET))
        return fail(s, ENOPROTOOPT, d == NULL || (d->flags & UNSUPPORTED) ? "unknown or unsupported option"
                                                                             : "read-only option");
    if (value == NULL && len > 0)
        return fail(s, EFAULT, "no value");
    unsigned char *v = NULL, *key = NULL;
    size_t vl = 0, kl = 0;
    if (d->kind == O_INT) {
        int32_t x, be;
        if (len != sizeof(int))
            return fail(s, EINVAL, "an integer option takes an int");
        memcpy(&x, value, sizeof x);
        be = (int32_t)htobe32((uint32_t)x);
        v = malloc(4);
        if (v == NULL)
            return fail(s, ENOMEM, "out of memory");
        memcpy(v, &be, 4);
        vl = 4;
    } else {
        size_t n = len;
        while (n > 0 && ((const char *)value)[n - 1] == '\0')
            n--;
        if (d->kind == O_PEM && memmem(value, n, "-----BEGIN", 10) == NULL) {
            char path[4096], why[sizeof s->error];
            if (n == 0 || n >= sizeof path || memchr(value, '\0', n) != NULL)
                return fail(s, EINVAL, "give PEM or a file path");
            memcpy(path, value, n);
            path[n] = '\0';
            int dir_ok = name == TLS_TRUSTED_PEER_CERTIFICATES || name == TLS_TRUSTED_PEER_CERTIFICATES_ONLY;
            int r = read_pem(path, &v, &vl, dir_ok, why, sizeof why);
            if (r == 0 && vl == 0) {
                snprintf(why, sizeof why, "%.400s holds no PEM", path);
                r = -EINVAL;
            }
            if (r) {
                free(v);
                return fail(s, -r, why);
            }
        } else {
            if (n > MAX_FRAME - 64)  /* as read_pem: the value must fit one SETOPT frame */
                return fail(s, EINVAL, "the value is larger than one frame holds (1 MiB less 64 bytes)");
            v = malloc(n ? n : 1);
            if (v == NULL)
                return fail(s, ENOMEM, "out of memory");
            if (n)
                memcpy(v, value, n);
            vl = n;
        }
        if (name == TLS_CERTIFICATE_CHAIN)
            split_key(v, &vl, &key, &kl);
    }
    s->busy = 1;
    table_unlock();
    int r = set_pairs(s, name, v, vl, key ? TLS_PRIVATE_KEY : 0, key, kl);
    table_lock();
    s->busy = 0;
    free(v);
    free(key);
    if (forget_if_closed(s, fd)) {  /* closed by another thread meanwhile */
        if (r)
            errno = -r;
        return r ? -1 : 0;
    }
    if (r == 0 && name == TLS_REMOTE_HOSTNAME)
        s->have_name = 1;
    if (r) {
        errno = -r;
        return -1;
    }
    return 0;
}

static int give(void *value, socklen_t *len, const unsigned char *raw, size_t size, int is_int)
{
    if (is_int) {
        int32_t x = 0;
        if (size == 4)
            x = (int32_t)be32toh(*(const uint32_t *)(const void *)raw);
        if (*len < (socklen_t)sizeof(int)) {
            errno = EINVAL;
            return -1;
        }
        int y = x;
        memcpy(value, &y, sizeof y);
        *len = sizeof y;
        return 0;
    }
    size_t room = *len;
    size_t n = size < room ? size : room;
    if (n)
        memcpy(value, raw, n);
    if (n < room)
        ((char *)value)[n++] = '\0';
    *len = (socklen_t)n;
    return 0;
}

int tls_getsockopt(struct sock *s, int fd, int name, void *value, socklen_t *len)
{
    const struct option_def *d = find(name);
    if (value == NULL || len == NULL) {
        errno = EFAULT;
        return -1;
    }
    if (d == NULL || !(d->flags & GET))
        return fail(s, ENOPROTOOPT, d == NULL || (d->flags & UNSUPPORTED) ? "unknown or unsupported option"
                                                                             : "not readable");
    if (name == TLS_ERROR)
        return give(value, len, (const unsigned char *)s->error, strlen(s->error), 0);
    if (s->phase != P_CONNECTING && (s = wait_idle(s, fd)) == NULL)  /* a connect's result: settle waits */
        return -1;
    s->error[0] = '\0';
    if (s->phase == P_CONNECTING) {
        int flags = fcntl(fd, F_GETFL);
        int r = settle(s, fd, !(flags & O_NONBLOCK));
        if (r == SETTLE_GONE) {
            errno = EBADF;
            return -1;
        }
        if (r < 0 && s->phase != P_FAILED) {
            errno = -r;
            return -1;
        }
    }
    if (s->phase == P_CONNECTED) {
        for (size_t i = 0; i < s->ninfo; i++)
            if ((int)s->info[i].option == name)
                return give(value, len, s->info[i].value, s->info[i].size, d->kind == O_INT);
        return fail(s, EOPNOTSUPP, "not answered once connected");
    }
    if (d->flags & CONNECTED_ONLY)
        return fail(s, ENOTCONN, "this option has a value once connected");
    if (s->phase == P_LISTENING)
        return fail(s, EOPNOTSUPP, "a listening socket answers only TLS_ERROR");
    if (s->phase == P_CONNECTING)
        return fail(s, EALREADY, "the connection is still being made");
    s->busy = 1;
    table_unlock();
    int r = session(s);
    struct frame f = {0};
    char why[sizeof s->error] = "";
    if (r == 0) {
        struct out o;
        out_start(&o, K_GETOPT);
        out_int(&o, T_OPTION, name);
        r = control_request(s->control, &o, NULL, 0, &f, 30000);
        out_free(&o);
        if (r) {
            snprintf(why, sizeof why, "the ssaproxy daemon did not answer: %s", strerror(-r));
            sock_close_control(s);
            r = -ECONNABORTED;
        } else if (f.kind != K_VALUE) {
            r = -frame_error(&f, why, sizeof why);
        }
    }
    table_lock();
    s->busy = 0;
    if (forget_if_closed(s, fd)) {  /* closed by another thread meanwhile */
        frame_free(&f);
        errno = r ? -r : EBADF;
        return -1;
    }
    if (r) {
        if (why[0])
            snprintf(s->error, sizeof s->error, "%s", why);
        frame_free(&f);
        errno = -r;
        return -1;
    }
    const struct attr *a = frame_get(&f, T_VALUE);
    int out = give(value, len, a ? a->value : (const unsigned char *)"", a ? a->size : 0, d->kind == O_INT);
    frame_free(&f);
    return out;
}
