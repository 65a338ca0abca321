/* The library's internals, shared by its translation units (not installed).
 *
 * Theory of operation: every interposed call first makes one lock-free check (are there any
 * sockets of ours at all?) and otherwise goes straight to libc's function, found with
 * dlsym(RTLD_NEXT).  Our sockets are recorded by identity (st_dev, st_ino), so dup()s and a
 * forked child's copies share the record.  The table's mutex is never held across a wait:
 * a call that talks to the daemon marks its record busy, drops the lock, talks, and retakes it.
 */
#ifndef SSAPROXY_INTERNAL_H
#define SSAPROXY_INTERNAL_H

#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define HIDDEN __attribute__((visibility("hidden")))

/* ---- libc's own functions */
struct real_calls {
    int (*socket)(int, int, int);
    int (*connect)(int, const struct sockaddr *, socklen_t);
    int (*bind)(int, const struct sockaddr *, socklen_t);
    int (*listen)(int, int);
    int (*accept)(int, struct sockaddr *, socklen_t *);
    int (*accept4)(int, struct sockaddr *, socklen_t *, int);
    int (*setsockopt)(int, int, int, const void *, socklen_t);
    int (*getsockopt)(int, int, int, void *, socklen_t *);
    int (*getpeername)(int, struct sockaddr *, socklen_t *);
    int (*getsockname)(int, struct sockaddr *, socklen_t *);
    int (*shutdown)(int, int);
    int (*close)(int);
    int (*getaddrinfo)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
};
HIDDEN extern struct real_calls real;
HIDDEN void real_init(void);

/* ---- wire protocol (version 2) */
enum kind {
    K_HELLO = 1, K_SETOPT = 2, K_GETOPT = 3, K_CONNECT = 4, K_LISTEN = 5, K_UPGRADE = 6,
    K_ROUTES = 8, K_REDIRECT = 9,
    K_WELCOME = 64, K_OK = 65, K_VALUE = 66, K_ERROR = 67, K_CARRIER = 68, K_ESTABLISHED = 69,
    K_ACCEPTED = 70,
};
enum tag {
    T_VERSION = 1, T_ERRNO = 2, T_TEXT = 3, T_OPTION = 4, T_VALUE = 5, T_HOST = 6, T_PORT = 7,
    T_ROLE = 8, T_BACKLOG = 9, T_PEER_HOST = 10, T_PEER_PORT = 11, T_LOCAL_HOST = 12,
    T_LOCAL_PORT = 13, T_SESSION = 14, T_FAMILY = 15, T_TOKEN = 16, T_NAME = 17,
    T_PARK_PORT4 = 18, T_PARK_PORT6 = 19,
};
#define INFO_BASE 0x1000
#define MAX_FRAME (1u << 20)
#define MAX_ATTRS 64
#define TOKEN_SIZE 32

struct attr {
    unsigned tag;
    uint32_t size;
    const unsigned char *value;
};
struct frame {  /* a decoded frame; attrs point into body */
    unsigned kind;
    unsigned char *body;
    size_t nattrs;
    struct attr attrs[MAX_ATTRS];
    int fds[2];
    int nfds;
};
struct out {  /* a frame being built */
    unsigned char *buf;
    size_t len, cap;
    int failed;
};

HIDDEN void out_start(struct out *o, unsigned kind);
HIDDEN void out_bytes(struct out *o, unsigned tag, const void *value, size_t size);
HIDDEN void out_int(struct out *o, unsigned tag, int32_t value);
HIDDEN void out_text(struct out *o, unsigned tag, const char *text);
HIDDEN void out_free(struct out *o);
HIDDEN int frame_parse(struct frame *f, unsigned char *body, size_t len);  /* 0 or -EPROTO */
HIDDEN void frame_free(struct frame *f);
HIDDEN const struct attr *frame_get(const struct frame *f, unsigned tag);
HIDDEN int frame_int(const struct frame *f, unsigned tag, int32_t *value);
HIDDEN size_t frame_text(const struct frame *f, unsigned tag, char *buf, size_t size);

/* A control connection: connect + HELLO/WELCOME.  Returns the fd (close-on-exec, non-blocking)
 * or -errno with `why` filled in.  park (may be NULL) gets WELCOME's parking ports for IPv4 and
 * IPv6 (0 where none was named). */
HIDDEN int control_open(char *why, size_t whysize, int park[2]);
/* Park fd before CONNECT or REDIRECT (docs/api.md): a non-blocking connect to the daemon's
 * parking address for fd's family, the program's O_NONBLOCK put back.  0, or -errno. */
HIDDEN int park_fd(int fd, const int park[2]);
/* Undo it (connect with AF_UNSPEC) after a refusal, so the socket can connect again. */
HIDDEN void unpark_fd(int fd);
/* Send a frame (with up to two fds on its first byte) and, unless reply is NULL, wait at most
 * timeout_ms for the reply frame.  0, or -errno. */
HIDDEN int control_send(int fd, struct out *o, const int *fds, int nfds);
HIDDEN int control_recv(int fd, struct frame *f, int timeout_ms);
HIDDEN int control_request(int fd, struct out *o, const int *fds, int nfds, struct frame *reply,
                           int timeout_ms);
/* 1 when a byte (or the end) is waiting on fd, 0 when not. */
HIDDEN int readable_now(int fd);
HIDDEN int wait_fd(int fd, short events, int timeout_ms);
HIDDEN int64_t now_ms(void);
/* The ERROR frame's errno and text (errno EPROTO for any other kind). */
HIDDEN int frame_error(const struct frame *f, char *why, size_t whysize);

/* ---- per-socket records */
enum phase { P_FRESH, P_CONNECTING, P_CONNECTED, P_FAILED, P_LISTENING, P_UPGRADABLE };
struct info {
    unsigned option;
    uint32_t size;
    unsigned char *value;
};
struct saved_opt {
    int level, name, value;
};
struct sock {
    dev_t dev;
    ino_t ino;
    struct sock *next;
    int family;      /* as the program asked (AF_HOSTNAME included) */
    int phase;
    int plain;       /* an ordinary TCP socket that set an IPPROTO_TLS option (for an upgrade) */
    int busy;        /* a thread is talking to the daemon for it */
    int control;     /* -1 or the control connection */
    int park[2];     /* its WELCOME's parking ports (IPv4, IPv6) */
    int bound;
    int b_fd;        /* the program's real listening socket, bound where it asked (until LISTEN) */
    int failed_errno;     /* the attempt's errno, not yet reported */
    int success_told;     /* connect() returned 0 for this connection (once; EISCONN after) */
    int have_name;        /* TLS_REMOTE_HOSTNAME was set */
    char error[512];      /* TLS_ERROR */
    unsigned char token[TOKEN_SIZE];
    struct sockaddr_storage peer, local, bound_addr;
    socklen_t peer_len, local_len, bound_len;
    struct info *info;
    size_t ninfo;
    struct saved_opt saved[8];
    size_t nsaved;
    struct { int option; unsigned char *value; uint32_t size; } *opts;  /* replayed on a new session */
    size_t nopts;
};

HIDDEN extern atomic_int ssa_tracked;      /* records in the table: the lock-free check */
HIDDEN extern int ssa_redirect;            /* SSAPROXY_REDIRECT=1 */
HIDDEN void table_lock(void);
HIDDEN int table_trylock_for_close(void);
HIDDEN int maybe_ours(int fd);  /* lock-free, async-signal-safe: 0 = surely not one of ours */
HIDDEN void table_unlock(void);
/* The record of fd's socket (table locked by the caller), or NULL. */
HIDDEN struct sock *table_find(int fd);
HIDDEN struct sock *table_add(int fd, int family, int phase);  /* locked by the caller; replaces a stale record */
HIDDEN void table_forget(struct sock *s);                        /* locked by the caller */
/* After a call that ran with the table unlocked: 1 when the program closed fd meanwhile and s
 * was forgotten (it must not be touched again), else 0.  Locked by the caller. */
HIDDEN int forget_if_closed(struct sock *s, int fd);
HIDDEN void sock_set_info(struct sock *s, const struct frame *f);
HIDDEN void sock_error(struct sock *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
HIDDEN void sock_close_control(struct sock *s);
/* Whether fd is still the last descriptor of this process on (dev, ino). */
HIDDEN int other_fd_on(int fd_closed, dev_t dev, ino_t ino);
HIDDEN int sockaddr_from_text(const char *host, int port, int family, struct sockaddr_storage *ss,
                              socklen_t *len);

/* ---- PEM values (pem.c) */
HIDDEN int read_pem(const char *path, unsigned char **buf, size_t *len, int dir_ok, char *why, size_t whysize);
HIDDEN void split_key(unsigned char *pem, size_t *len, unsigned char **key, size_t *keylen);

/* ---- options (options.c) */
HIDDEN int tls_setsockopt(struct sock *s, int fd, int name, const void *value, socklen_t len);
HIDDEN int tls_getsockopt(struct sock *s, int fd, int name, void *value, socklen_t *len);
HIDDEN int session(struct sock *s);  /* s->control open, HELLO done, options replayed: 0/-errno */
/* 1 connected, 0 pending, -errno; SETTLE_GONE when the program closed fd meanwhile (s was
 * forgotten: do not touch it); SETTLE_INTR when a signal handler ran while it waited (the
 * attempt goes on, as the kernel's connect does after EINTR).  With block 0 it never waits. */
#define SETTLE_GONE 2
#define SETTLE_INTR 3
HIDDEN int settle(struct sock *s, int fd, int block);

/* ---- redirection (redirect.c) */
HIDDEN int redirect_connect(int fd, const struct sockaddr *addr, socklen_t len, int *handled);
HIDDEN void redirect_init(void);
/* getpeername() of a socket the library redirected: the destination the program asked for;
 * 0, or -1 when fd is not one (then the caller asks libc). */
HIDDEN int redirect_peer(int fd, struct sockaddr *addr, socklen_t *len);

#endif
