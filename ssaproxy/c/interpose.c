/* The socket calls the library takes over.  Each one first asks one lock-free question (is any
 * socket of ours open at all?) and otherwise is libc's own call; a socket the library did not
 * make is then recognised by its identity, never touched. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "include/ssaproxy.h"
#include "internal.h"

HIDDEN int tls_connect(struct sock *s, int fd, const struct sockaddr *a, socklen_t len);
HIDDEN int tls_so_error(struct sock *s, int fd, void *value, socklen_t *len);
HIDDEN int tls_bind(struct sock *s, int fd, const struct sockaddr *a, socklen_t len);
HIDDEN int tls_listen(struct sock *s, int fd, int backlog);
HIDDEN int tls_accept(struct sock *s, int fd, struct sockaddr *addr, socklen_t *alen, int flags);
HIDDEN int tls_upgrade(struct sock *s, int fd, int role);

#define ENSURE() do { if (real.close == NULL) real_init(); } while (0)

int socket(int domain, int type, int protocol)
{
    ENSURE();
    if (protocol != IPPROTO_TLS)
        return real.socket(domain, type, protocol);
    if ((type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) != SOCK_STREAM) {
        errno = EPROTONOSUPPORT;
        return -1;
    }
    if (domain != AF_INET && domain != AF_INET6 && domain != AF_HOSTNAME) {
        errno = EAFNOSUPPORT;
        return -1;
    }
    int fd = real.socket(domain == AF_HOSTNAME ? AF_INET : domain, type, 0);
    if (fd < 0)
        return -1;
    table_lock();
    struct sock *s = table_add(fd, domain, P_FRESH);
    table_unlock();
    if (s == NULL) {
        real.close(fd);
        errno = ENOMEM;
        return -1;
    }
    return fd;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    ENSURE();
    if (maybe_ours(fd)) {
        table_lock();
        struct sock *s = table_find(fd);
        if (s != NULL && !s->plain) {
            int r = tls_connect(s, fd, addr, len);
            int e = errno;
            table_unlock();
            errno = e;
            return r;
        }
        table_unlock();
    }
    if (ssa_redirect) {
        int handled = 0, r = redirect_connect(fd, addr, len, &handled);
        if (handled)
            return r;
    }
    return real.connect(fd, addr, len);
}

/* The same call on a socket of ours, with the table locked around it (errno kept). */
#define WITH_SOCK(fd, plain_call, ...) do {                                  \
        if (!maybe_ours(fd))                                                 \
            return plain_call;                                               \
        table_lock();                                                        \
        struct sock *s = table_find(fd);                                     \
        if (s == NULL) {                                                     \
            table_unlock();                                                  \
            return plain_call;                                               \
        }                                                                    \
        int r_ = (__VA_ARGS__);                                              \
        int e_ = errno;                                                      \
        table_unlock();                                                      \
        errno = e_;                                                          \
        return r_;                                                           \
    } while (0)

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    ENSURE();
    WITH_SOCK(fd, real.bind(fd, addr, len), s->plain ? real.bind(fd, addr, len) : tls_bind(s, fd, addr, len));
}

int listen(int fd, int backlog)
{
    ENSURE();
    WITH_SOCK(fd, real.listen(fd, backlog), s->plain ? real.listen(fd, backlog) : tls_listen(s, fd, backlog));
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    ENSURE();
    WITH_SOCK(fd, real.accept4(fd, addr, len, flags),
              s->phase == P_LISTENING ? tls_accept(s, fd, addr, len, flags) : real.accept4(fd, addr, len, flags));
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    ENSURE();
    WITH_SOCK(fd, real.accept(fd, addr, len),
              s->phase == P_LISTENING ? tls_accept(s, fd, addr, len, 0) : real.accept(fd, addr, len));
}

static int is_tcp_stream(int fd)
{
    int type = 0, proto = 0;
    socklen_t l1 = sizeof type, l2 = sizeof proto;
    return real.getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l1) == 0 && type == SOCK_STREAM &&
           real.getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l2) == 0 && proto == IPPROTO_TCP;
}

static int remember_saved(struct sock *s, int fd, int level, int name, const void *value, socklen_t len)
{
    int r = real.setsockopt(fd, level, name, value, len);
    int keep = (level == SOL_SOCKET && (name == SO_REUSEADDR || name == SO_REUSEPORT)) ||
               (level == IPPROTO_IPV6 && name == IPV6_V6ONLY);
    if (r == 0 && keep && len == sizeof(int) && !s->plain) {
        int v;
        memcpy(&v, value, sizeof v);
        size_t i = 0;
        while (i < s->nsaved && !(s->saved[i].level == level && s->saved[i].name == name))
            i++;
        if (i < sizeof s->saved / sizeof s->saved[0]) {
            s->saved[i] = (struct saved_opt){level, name, v};
            if (i == s->nsaved)
                s->nsaved++;
        }
        if (s->b_fd >= 0)
            real.setsockopt(s->b_fd, level, name, value, len);
    }
    return r;
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
{
    ENSURE();
    int upgrade = level == IPPROTO_TCP && name == TCP_UPGRADE_TLS && len == sizeof(int);  /* not TCP_FASTOPEN_KEY */
    if (level != IPPROTO_TLS && !upgrade && !maybe_ours(fd))
        return real.setsockopt(fd, level, name, value, len);
    table_lock();
    struct sock *s = table_find(fd);
    if (s == NULL && (level == IPPROTO_TLS || upgrade)) {
        if (!is_tcp_stream(fd)) {
            table_unlock();
            return level == IPPROTO_TLS ? (errno = ENOPROTOOPT, -1) : real.setsockopt(fd, level, name, value, len);
        }
        s = table_add(fd, AF_INET, P_UPGRADABLE);  /* options first, then TCP_UPGRADE_TLS */
        if (s != NULL) {
            int d = AF_INET;
            socklen_t l = sizeof d;
            real.getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &d, &l);
            s->family = d;
            s->plain = 1;
        }
    }
    int r, e;
    if (s == NULL)
        r = real.setsockopt(fd, level, name, value, len);
    else if (level == IPPROTO_TLS)
        r = tls_setsockopt(s, fd, name, value, len);
    else if (upgrade) {
        int role = 0;
        if (value != NULL)
            memcpy(&role, value, sizeof role);
        r = tls_upgrade(s, fd, role);
    } else
        r = remember_saved(s, fd, level, name, value, len);
    e = errno;
    table_unlock();
    errno = e;
    return r;
}

int getsockopt(int fd, int level, int name, void *value, socklen_t *len)
{
    ENSURE();
    if (level != IPPROTO_TLS && !maybe_ours(fd))
        return real.getsockopt(fd, level, name, value, len);
    table_lock();
    struct sock *s = table_find(fd);
    int r;
    if (s == NULL)
        r = level == IPPROTO_TLS ? (errno = ENOPROTOOPT, -1) : real.getsockopt(fd, level, name, value, len);
    else if (level == IPPROTO_TLS)
        r = tls_getsockopt(s, fd, name, value, len);
    else if (level == SOL_SOCKET && name == SO_ERROR && !s->plain)
        r = tls_so_error(s, fd, value, len);
    else if (level == SOL_SOCKET && name == SO_PROTOCOL && !s->plain && value != NULL && len != NULL &&
             *len >= (socklen_t)sizeof(int)) {
        int p = IPPROTO_TLS;
        memcpy(value, &p, sizeof p);
        *len = sizeof p;
        r = 0;
    } else
        r = real.getsockopt(fd, level, name, value, len);
    int e = errno;
    table_unlock();
    errno = e;
    return r;
}

static int give_addr(const struct sockaddr_storage *ss, socklen_t have, struct sockaddr *addr, socklen_t *len)
{
    if (addr == NULL || len == NULL) {
        errno = EFAULT;
        return -1;
    }
    memcpy(addr, ss, *len < have ? *len : have);
    *len = have;
    return 0;
}

static int peer_of(struct sock *s, int fd, struct sockaddr *addr, socklen_t *len)
{
    if (s->plain)
        return real.getpeername(fd, addr, len);
    if (s->phase == P_CONNECTING && settle(s, fd, 0) == SETTLE_GONE) {
        errno = EBADF;
        return -1;
    }
    if (s->phase == P_CONNECTED && s->peer_len)
        return give_addr(&s->peer, s->peer_len, addr, len);
    errno = ENOTCONN;
    return -1;
}

int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
    ENSURE();
    if (ssa_redirect && redirect_peer(fd, addr, len) == 0)
        return 0;
    WITH_SOCK(fd, real.getpeername(fd, addr, len), peer_of(s, fd, addr, len));
}

static int name_of(struct sock *s, int fd, struct sockaddr *addr, socklen_t *len)
{
    if (s->phase == P_CONNECTED && s->local_len)
        return give_addr(&s->local, s->local_len, addr, len);
    if ((s->phase == P_LISTENING || s->bound) && s->bound_len)
        return give_addr(&s->bound_addr, s->bound_len, addr, len);
    return real.getsockname(fd, addr, len);
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
    ENSURE();
    WITH_SOCK(fd, real.getsockname(fd, addr, len), name_of(s, fd, addr, len));
}

static int shut(struct sock *s, int fd, int how)
{
    int r = s->phase == P_CONNECTING ? settle(s, fd, 1) : 0;  /* a FIN before the result would read as "the program left" */
    if (r == SETTLE_GONE || r == SETTLE_INTR) {
        errno = r == SETTLE_GONE ? EBADF : EINTR;
        return -1;
    }
    return real.shutdown(fd, how);
}

int shutdown(int fd, int how)
{
    ENSURE();
    WITH_SOCK(fd, real.shutdown(fd, how), shut(s, fd, how));
}

int close(int fd)
{
    ENSURE();
    /* Async-signal-safe, as libc's: a handler may close any descriptor.  Others' never take
     * the lock; ours wait for it only briefly (the code a handler interrupted may hold it),
     * and what is left to do then is done at the next sweep (table.c). */
    if (!maybe_ours(fd))
        return real.close(fd);
    if (!table_trylock_for_close())
        return real.close(fd);
    struct sock *s = table_find(fd);
    int r = real.close(fd);
    int e = errno;
    if (s != NULL && !s->busy && !other_fd_on(fd, s->dev, s->ino))
        table_forget(s);  /* the last descriptor: the control connection goes, the daemon stops */
    table_unlock();
    errno = e;
    return r;
}
