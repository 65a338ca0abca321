/* Redirection without iptables (docs/api.md, "Redirection without iptables"), active with
 * SSAPROXY_REDIRECT=1 (`ssaproxy run`).  A plain TCP connect() whose destination matches one of the daemon's
 * outbound routes is handed to the daemon with REDIRECT, as if iptables had redirected it; the
 * daemon decides everything.  If the daemon cannot take it, the connect fails (ECONNREFUSED):
 * never a plaintext connection to a destination the admin wants upgraded. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "include/ssaproxy.h"
#include "internal.h"

struct route {
    int family;  /* AF_INET or AF_INET6 */
    unsigned char net[16];
    int prefix;
    int port;    /* 0: any */
};
/* The table, built once and never changed after: readers use it without the lock.  Until it is
 * known whole (nroutes < 0: not loaded yet, the daemon unreachable, or a line we cannot read),
 * every plain TCP connect is handed to the daemon, which answers ENOENT where no route applies. */
static struct route *routes;
static int nroutes = -1;
static int routes_bad;  /* SSAPROXY_ROUTES or the daemon's answer had a line we cannot read */
/* Never held across a wait (nor daemon I/O); taken around fork() (redirect_init). */
static pthread_mutex_t rlock = PTHREAD_MUTEX_INITIALIZER;

#define NAMES 512
static struct { int family; unsigned char addr[16]; char name[254]; } names[NAMES];
static unsigned next_name;

/* Sockets the library redirected, so getpeername() gives the destination the program asked
 * for (as iptables redirection would) instead of the daemon's loopback end.  A record holds
 * only while the socket is the one recorded: same identity, same local address, still
 * connected to the same loopback peer; the oldest of more than REDIRECTED are forgotten. */
#define REDIRECTED 1024
static struct redirected {
    dev_t dev;
    ino_t ino;
    struct sockaddr_storage local, via, dest;
    socklen_t local_len, via_len, dest_len;
} redirected[REDIRECTED];
static unsigned next_redirected;
static atomic_int any_redirected;

static void remember_destination(int fd, const struct sockaddr *a, socklen_t len)
{
    struct redirected r = {0};
    struct stat st;
    r.local_len = sizeof r.local;
    r.via_len = sizeof r.via;
    if (len > sizeof r.dest || fstat(fd, &st) != 0 ||
        real.getsockname(fd, (struct sockaddr *)&r.local, &r.local_len) != 0 ||
        real.getpeername(fd, (struct sockaddr *)&r.via, &r.via_len) != 0)
        return;
    r.dev = st.st_dev;
    r.ino = st.st_ino;
    memcpy(&r.dest, a, len);
    r.dest_len = len;
    pthread_mutex_lock(&rlock);
    redirected[next_redirected++ % REDIRECTED] = r;
    pthread_mutex_unlock(&rlock);
    atomic_store(&any_redirected, 1);
}

int redirect_peer(int fd, struct sockaddr *addr, socklen_t *len)
{
    if (!atomic_load(&any_redirected) || addr == NULL || len == NULL)
        return -1;
    struct stat st;
    struct sockaddr_storage local, via;
    socklen_t local_len = sizeof local, via_len = sizeof via;
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode) ||
        real.getsockname(fd, (struct sockaddr *)&local, &local_len) != 0 ||
        real.getpeername(fd, (struct sockaddr *)&via, &via_len) != 0)
        return -1;
    int found = -1;
    pthread_mutex_lock(&rlock);
    for (unsigned i = 0; i < REDIRECTED && found < 0; i++) {
        const struct redirected *r = &redirected[i];
        if (r->dest_len && r->dev == st.st_dev && r->ino == st.st_ino && r->local_len == local_len &&
            r->via_len == via_len && !memcmp(&r->local, &local, local_len) && !memcmp(&r->via, &via, via_len)) {
            memcpy(addr, &r->dest, *len < r->dest_len ? *len : r->dest_len);
            *len = r->dest_len;
            found = 0;
        }
    }
    pthread_mutex_unlock(&rlock);
    return found;
}

static int parse_route(const char *line, struct route *r)
{
    char action[32], cidr[80], extra[2], *end;
    int port;
    if (sscanf(line, "%31s %79s %d %1s", action, cidr, &port, extra) != 3 || port < 0 || port > 65535)
        return -1;
    char *slash = strchr(cidr, '/');
    long prefix = -1;
    if (slash) {
        *slash = '\0';
        prefix = strtol(slash + 1, &end, 10);
        if (slash[1] == '\0' || *end != '\0' || prefix < 0)
            return -1;
    }
    memset(r->net, 0, sizeof r->net);
    if (inet_pton(AF_INET, cidr, r->net) == 1)
        r->family = AF_INET;
    else if (inet_pton(AF_INET6, cidr, r->net) == 1)
        r->family = AF_INET6;
    else
        return -1;
    int bits = r->family == AF_INET ? 32 : 128;
    if (prefix > bits)
        return -1;  /* never narrowed to fit: that would leave part of the network unrouted */
    r->prefix = prefix < 0 ? bits : (int)prefix;
    r->port = port;
    return 0;
}

/* "<action> <network-cidr> <port>" lines, as many as there are: the number, with *table (to
 * free), or -1 (nothing to free) when a line cannot be read or memory runs out. */
static int parse_routes(const char *text, struct route **table)
{
    size_t lines = 1;
    for (const char *p = text; *p; p++)
        lines += *p == '\n';
    struct route *t = calloc(lines, sizeof *t);
    if (t == NULL)
        return -1;
    int n = 0;
    for (const char *p = text; p != NULL && *p;) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        char line[160];
        int blank = strspn(p, " \t\r") >= len;
        if (!blank && (len >= sizeof line || (memcpy(line, p, len), line[len] = '\0', parse_route(line, &t[n])))) {
            free(t);
            return -1;
        }
        n += !blank;
        p = eol ? eol + 1 : NULL;
    }
    *table = t;
    return n;
}

/* The daemon's ROUTES answer as text (to free), or NULL. */
static char *ask_routes(void)
{
    char why[256], *text = NULL;
    int fd = control_open(why, sizeof why, NULL);
    if (fd < 0)
        return NULL;
    struct out o;
    struct frame f;
    out_start(&o, K_ROUTES);
    if (control_request(fd, &o, NULL, 0, &f, 30000) == 0) {
        const struct attr *v = frame_get(&f, T_VALUE);
        if (f.kind == K_VALUE && v != NULL)
            text = strndup((const char *)v->value, v->size);
        frame_free(&f);
    }
    out_free(&o);
    real.close(fd);
    return text;
}

/* The routes: SSAPROXY_ROUTES, else the daemon's ROUTES answer.  The count with *table, or -1
 * when the table is not known whole (every connect then goes to the daemon). */
static int load_routes(const struct route **table)
{
    pthread_mutex_lock(&rlock);
    int n = nroutes, bad = routes_bad;
    *table = routes;
    pthread_mutex_unlock(&rlock);
    if (n >= 0 || bad)
        return n;
    const char *env = secure_getenv("SSAPROXY_ROUTES");  /* a set-user-ID program asks the daemon */
    char *text = env != NULL ? strdup(env) : ask_routes();  /* unlocked: the daemon may take 30 s */
    struct route *t = NULL;
    int had = text != NULL, got = had ? parse_routes(text, &t) : -1;
    free(text);
    pthread_mutex_lock(&rlock);
    if (nroutes < 0 && !routes_bad && got >= 0) {
        routes = t;
        nroutes = got;
        t = NULL;
    } else if (nroutes < 0 && got < 0 && had) {
        routes_bad = 1;  /* it will not read better next time */
    }
    n = nroutes;
    *table = routes;
    pthread_mutex_unlock(&rlock);
    free(t);
    return n;
}

static void on_prepare(void) { pthread_mutex_lock(&rlock); }
static void on_parent(void) { pthread_mutex_unlock(&rlock); }
static void on_child(void) { pthread_mutex_unlock(&rlock); }

void redirect_init(void) { pthread_atfork(on_prepare, on_parent, on_child); }

static int in_net(const unsigned char *addr, const unsigned char *net, int prefix)
{
    for (int bit = 0; bit < prefix; bit += 8) {
        int take = prefix - bit >= 8 ? 8 : prefix - bit;
        unsigned mask = (0xffu << (8 - take)) & 0xffu;
        if ((addr[bit / 8] & mask) != (net[bit / 8] & mask))
            return 0;
    }
    return 1;
}

/* The destination as (family, 16 bytes, port, text); IPv4-mapped IPv6 as IPv4. */
static int destination(const struct sockaddr *a, socklen_t len, int *fam, unsigned char *addr, int *port)
{
    memset(addr, 0, 16);
    if (a->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const void *)a;
        memcpy(addr, &in->sin_addr, 4);
        *port = ntohs(in->sin_port);
        *fam = AF_INET;
        return 0;
    }
    if (a->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const void *)a;
        *port = ntohs(in6->sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            memcpy(addr, &in6->sin6_addr.s6_addr[12], 4);
            *fam = AF_INET;
        } else {
            memcpy(addr, &in6->sin6_addr, 16);
            *fam = AF_INET6;
        }
        return 0;
    }
    return -1;
}

static int lookup_name(int fam, const unsigned char *addr, char *name, size_t size)
{
    int found = 0;
    pthread_mutex_lock(&rlock);
    for (unsigned i = 0; i < NAMES && !found; i++) {
        unsigned k = (next_name + NAMES - 1 - i) % NAMES;  /* the newest first */
        if (names[k].family == fam && memcmp(names[k].addr, addr, fam == AF_INET ? 4 : 16) == 0) {
            snprintf(name, size, "%s", names[k].name);
            found = 1;
        }
    }
    pthread_mutex_unlock(&rlock);
    return found;
}

int redirect_connect(int fd, const struct sockaddr *a, socklen_t len, int *handled)
{
    int fam, port;
    unsigned char addr[16];
    *handled = 0;
    if (a == NULL || (a->sa_family != AF_INET && a->sa_family != AF_INET6) || destination(a, len, &fam, addr, &port))
        return 0;
    int type = 0, proto = 0;
    socklen_t l = sizeof type;
    if (real.getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) || type != SOCK_STREAM)
        return 0;
    l = sizeof proto;
    if (real.getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l) || proto != IPPROTO_TCP)
        return 0;
    const struct route *table;
    int n = load_routes(&table);
    int match = n < 0;  /* no complete route table: the daemon decides, never guess plaintext */
    for (int i = 0; i < n && !match; i++)
        match = table[i].family == fam && (table[i].port == 0 || table[i].port == port) &&
                in_net(addr, table[i].net, table[i].prefix);
    if (!match)
        return 0;
    *handled = 1;
    char host[INET6_ADDRSTRLEN], name[254], why[256];
    inet_ntop(fam, addr, host, sizeof host);
    int has_name = lookup_name(fam, addr, name, sizeof name);
    int park[2] = {0, 0};
    int control = control_open(why, sizeof why, park);
    if (control < 0) {
        errno = ECONNREFUSED;  /* the daemon is absent: no plaintext to a routed destination */
        return -1;
    }
    struct out o;
    struct frame f;
    out_start(&o, K_REDIRECT);
    out_text(&o, T_HOST, host);
    out_int(&o, T_PORT, port);
    out_int(&o, T_FAMILY, fam == AF_INET ? 4 : 6);
    if (has_name)
        out_text(&o, T_NAME, name);
    int fl = fcntl(fd, F_GETFL);
    /* Best effort: if it failed, the daemon's checks say what is wrong (EISCONN for a program
     * that calls connect() again to learn the result, say), and only a socket we parked is
     * unparked below: AF_UNSPEC would cut a connected one. */
    int parked = park_fd(fd, park) == 0;
    int r = control_request(control, &o, &fd, 1, &f, 30000);
    out_free(&o);
    real.close(control);
    fcntl(fd, F_SETFL, fl);  /* O_NONBLOCK: the program's choice, whatever happened meanwhile */
    if (r) {
        if (parked)
            unpark_fd(fd);
        errno = ECONNREFUSED;
        return -1;
    }
    int code = f.kind == K_OK ? 0 : frame_error(&f, why, sizeof why);
    frame_free(&f);
    if (code && parked)
        unpark_fd(fd);  /* unconnected again: a direct connect (ENOENT) or the program's next try */
    if (code == ENOENT) {  /* the daemon's routes changed: no route, so no redirection */
        *handled = 0;
        return 0;
    }
    if (code) {
        /* EAGAIN (the user's share of sessions used up) would read as "in progress" to a
         * non-blocking connect: a refusal. */
        errno = code == EAGAIN ? ECONNREFUSED : code;
        return -1;
    }
    remember_destination(fd, a, len);  /* completed when OK came */
    if (fl & O_NONBLOCK) {
        errno = EINPROGRESS;
        return -1;
    }
    if (wait_fd(fd, POLLOUT, 30000) != 0) {
        errno = ETIMEDOUT;
        return -1;
    }
    int e = 0;
    l = sizeof e;
    real.getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l);
    if (e) {
        errno = e;
        return -1;
    }
    return 0;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    if (real.getaddrinfo == NULL)
        real_init();
    int r = real.getaddrinfo(node, service, hints, res);
    if (r != 0 || !ssa_redirect || node == NULL || strlen(node) > 253)
        return r;
    unsigned char probe[16];
    if (inet_pton(AF_INET, node, probe) == 1 || inet_pton(AF_INET6, node, probe) == 1)
        return r;  /* an address is not a name */
    pthread_mutex_lock(&rlock);
    for (struct addrinfo *ai = *res; ai != NULL; ai = ai->ai_next) {
        int fam;
        unsigned char addr[16];
        int port;
        if (ai->ai_addr == NULL || destination(ai->ai_addr, ai->ai_addrlen, &fam, addr, &port))
            continue;
        unsigned k = next_name++ % NAMES;
        names[k].family = fam;
        memcpy(names[k].addr, addr, 16);
        snprintf(names[k].name, sizeof names[k].name, "%s", node);
    }
    pthread_mutex_unlock(&rlock);
    return r;
}
