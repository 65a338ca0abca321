/* libc's functions (dlsym RTLD_NEXT), the table of our sockets keyed by (st_dev, st_ino), and
 * fork safety (the table's lock is taken around fork() so a child never inherits it held). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <time.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "include/ssaproxy.h"
#include "internal.h"

struct real_calls real;
atomic_int ssa_tracked;
int ssa_redirect;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
#define BUCKETS 256
static struct sock *buckets[BUCKETS];

/* Lock-free, async-signal-safe answers for the calls on other sockets: how many of our records
 * fall in each slot of a hash of (st_dev, st_ino).  A socket whose slot is empty is not ours,
 * and its call goes to libc without the lock (a handler may close or connect a plain socket
 * while the code it interrupted holds the lock); one in a slot shared with ours looks further. */
#define MAYBE_SLOTS 4096
static atomic_uint maybe[MAYBE_SLOTS];
/* Records a close() could not take out at once (the lock was held: by the code a signal
 * handler interrupted, say) are looked at again, and records close() took out are freed, the
 * next time the lock is taken outside close(): free() is not async-signal-safe. */
static atomic_int sweep_due;
static struct sock *graveyard;
static void free_record(struct sock *s);

static void on_prepare(void) { pthread_mutex_lock(&lock); }
static void on_parent(void) { pthread_mutex_unlock(&lock); }
static void on_child(void) { pthread_mutex_unlock(&lock); }

#define FIND(name) (*(void **)(&real.name) = dlsym(RTLD_NEXT, #name))

static void resolve(void)
{
    FIND(socket); FIND(connect); FIND(bind); FIND(listen); FIND(accept); FIND(accept4);
    FIND(setsockopt); FIND(getsockopt); FIND(getpeername); FIND(getsockname); FIND(shutdown);
    FIND(close); FIND(getaddrinfo);
    pthread_atfork(on_prepare, on_parent, on_child);
    const char *r = secure_getenv("SSAPROXY_REDIRECT");
    ssa_redirect = r != NULL && strcmp(r, "1") == 0;
    if (ssa_redirect)
        redirect_init();
}

void real_init(void) { pthread_once(&once, resolve); }

__attribute__((constructor)) static void load(void) { real_init(); }

const char *ssaproxy_version(void) { return "ssaproxy-c 2"; }

static size_t maybe_slot(dev_t dev, ino_t ino) { return (size_t)((ino * 2654435761u) ^ dev) % MAYBE_SLOTS; }

int maybe_ours(int fd)
{
    if (atomic_load_explicit(&ssa_tracked, memory_order_acquire) == 0)
        return 0;
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) &&
           atomic_load_explicit(&maybe[maybe_slot(st.st_dev, st.st_ino)], memory_order_acquire) != 0;
}

static void sweep(void)
{
    while (graveyard != NULL) {
        struct sock *dead = graveyard;
        graveyard = dead->next;
        free_record(dead);
    }
    if (!atomic_exchange(&sweep_due, 0))
        return;
    for (size_t b = 0; b < BUCKETS; b++)
        for (struct sock *s = buckets[b], *next; s != NULL; s = next) {
            next = s->next;
            if (!s->busy && !other_fd_on(-1, s->dev, s->ino))
                table_forget(s);
        }
    while (graveyard != NULL) {
        struct sock *dead = graveyard;
        graveyard = dead->next;
        free_record(dead);
    }
}

void table_lock(void)
{
    pthread_mutex_lock(&lock);
    if (graveyard != NULL || atomic_load(&sweep_due))
        sweep();
}

/* close()'s way in: never waits long (about 2 ms, async-signal-safe calls only); 0 when the
 * lock could not be had, and the record's fate is left to the next sweep. */
int table_trylock_for_close(void)
{
    for (int i = 0; i < 20; i++) {
        if (pthread_mutex_trylock(&lock) == 0)
            return 1;
        struct timespec pause = {0, 100000};
        nanosleep(&pause, NULL);
    }
    atomic_store(&sweep_due, 1);
    return 0;
}
void table_unlock(void) { pthread_mutex_unlock(&lock); }

static size_t bucket(dev_t dev, ino_t ino) { return (size_t)((ino * 31u) ^ dev) % BUCKETS; }

struct sock *table_find(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
        return NULL;
    for (struct sock *s = buckets[bucket(st.st_dev, st.st_ino)]; s != NULL; s = s->next)
        if (s->dev == st.st_dev && s->ino == st.st_ino)
            return s;
    return NULL;
}

struct sock *table_add(int fd, int family, int phase)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return NULL;
    struct sock *old = table_find(fd);  /* a record whose socket went away unseen (close_range, dup2) */
    if (old != NULL)
        table_forget(old);
    struct sock *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->b_fd = -1;
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->family = family;
    s->phase = phase;
    s->control = -1;
    size_t b = bucket(s->dev, s->ino);
    s->next = buckets[b];
    buckets[b] = s;
    atomic_fetch_add(&maybe[maybe_slot(s->dev, s->ino)], 1);
    atomic_fetch_add(&ssa_tracked, 1);
    return s;
}

static void free_info(struct sock *s)
{
    for (size_t i = 0; i < s->ninfo; i++)
        free(s->info[i].value);
    free(s->info);
    s->info = NULL;
    s->ninfo = 0;
}

void table_forget(struct sock *s)
{
    struct sock **p = &buckets[bucket(s->dev, s->ino)];
    while (*p != NULL && *p != s)
        p = &(*p)->next;
    if (*p == s)
        *p = s->next;
    sock_close_control(s);
    if (s->b_fd >= 0)
        real.close(s->b_fd);
    atomic_fetch_sub(&maybe[maybe_slot(s->dev, s->ino)], 1);
    atomic_fetch_sub(&ssa_tracked, 1);
    s->next = graveyard;  /* freed by the next sweep, with what it holds: this may be close() */
    graveyard = s;
}

static void free_record(struct sock *s)
{
    free_info(s);
    for (size_t i = 0; i < s->nopts; i++)
        free(s->opts[i].value);
    free(s->opts);
    free(s);
}

void sock_close_control(struct sock *s)
{
    if (s->control >= 0)
        real.close(s->control);
    s->control = -1;
}

void sock_error(struct sock *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
}

int sockaddr_from_text(const char *host, int port, int family, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    struct in_addr v4;
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &v4) == 1) {  /* an IPv4 client of a dual-stack listener */
            a->sin6_addr.s6_addr[10] = a->sin6_addr.s6_addr[11] = 0xff;
            memcpy(&a->sin6_addr.s6_addr[12], &v4, 4);
        } else if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) {
            return -1;
        }
        *len = sizeof *a;
        return 0;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
        struct in6_addr v6;  /* a v4-mapped IPv6 text */
        if (inet_pton(AF_INET6, host, &v6) != 1 || !IN6_IS_ADDR_V4MAPPED(&v6))
            return -1;
        memcpy(&a->sin_addr, &v6.s6_addr[12], 4);
    }
    *len = sizeof *a;
    return 0;
}

void sock_set_info(struct sock *s, const struct frame *f)
{
    free_info(s);
    s->info = calloc(f->nattrs ? f->nattrs : 1, sizeof *s->info);
    for (size_t i = 0; s->info != NULL && i < f->nattrs; i++) {
        const struct attr *a = &f->attrs[i];
        if (a->tag < INFO_BASE)
            continue;
        unsigned char *v = malloc(a->size + 1);
        if (v == NULL)
            continue;
        memcpy(v, a->value, a->size);
        v[a->size] = 0;
        s->info[s->ninfo++] = (struct info){.option = a->tag - INFO_BASE, .size = a->size, .value = v};
    }
    char host[64];
    int32_t port = 0;
    int fam = s->family == AF_INET6 ? AF_INET6 : AF_INET;
    frame_text(f, T_PEER_HOST, host, sizeof host);
    frame_int(f, T_PEER_PORT, &port);
    if (sockaddr_from_text(host, port, fam, &s->peer, &s->peer_len) != 0 && fam == AF_INET)
        sockaddr_from_text(host, port, AF_INET6, &s->peer, &s->peer_len);
    s->local_len = 0;
    if (frame_get(f, T_LOCAL_HOST) != NULL && frame_int(f, T_LOCAL_PORT, &port) == 0) {
        frame_text(f, T_LOCAL_HOST, host, sizeof host);
        if (sockaddr_from_text(host, port, fam, &s->local, &s->local_len) != 0)
            s->local_len = 0;
    }
    s->error[0] = '\0';
}

int other_fd_on(int fd_closed, dev_t dev, ino_t ino)
{
    /* Async-signal-safe (close() calls it): open, getdents64 and fstat, no allocation. */
    int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return 1;  /* cannot tell: keep the record (a leak, never a wrong answer) */
    char buf[4096] __attribute__((aligned(8)));
    int found = 0;
    long n;
    while (!found && (n = syscall(SYS_getdents64, dfd, buf, sizeof buf)) > 0) {
        for (long at = 0; at < n && !found;) {
            struct linux_dirent64 {
                unsigned long long d_ino;
                long long d_off;
                unsigned short d_reclen;
                unsigned char d_type;
                char d_name[];
            } *e = (void *)(buf + at);
            at += e->d_reclen;
            long v = 0;
            const char *c = e->d_name;
            if (*c < '0' || *c > '9')
                continue;
            for (; *c >= '0' && *c <= '9' && v < 1L << 30; c++)
                v = v * 10 + (*c - '0');
            if (*c != '\0' || v == fd_closed || v == dfd)
                continue;
            struct stat st;
            if (fstat((int)v, &st) == 0 && st.st_dev == dev && st.st_ino == ino)
                found = 1;
        }
    }
    if (n < 0)
        found = 1;  /* cannot tell: keep it */
    real.close(dfd);
    return found;
}

/* After a call that ran with the table unlocked (s was busy): close() keeps a busy record, so
 * if fd no longer refers to s's socket and no other descriptor of this process does, the
 * program closed it meanwhile and the record (with its control connection) goes now.
 * Table locked by the caller; 1 when s was forgotten (it must not be touched again). */
int forget_if_closed(struct sock *s, int fd)
{
    struct stat st;
    if (s->busy || (fstat(fd, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino) ||
        other_fd_on(-1, s->dev, s->ino))
        return 0;
    table_forget(s);
    return 1;
}
