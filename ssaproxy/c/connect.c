/* IPPROTO_TLS client sockets (docs/api.md, "Parking" and "Connecting"): the program's own
 * socket N is the carrier.  We park N (a non-blocking connect to the daemon's parking address, which drops the
 * SYN: a TCP connect in progress) and hand it over with CONNECT; the daemon only checks it,
 * answers OK, and later writes ESTABLISHED or ERROR on the control connection before
 * completing or resetting N.  So N polls writable only once the result is waiting for us. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "include/ssaproxy.h"
#include "internal.h"

#define RESULT_WAIT_MS 180000  /* the daemon's connect + handshake deadlines, with a margin */

int park_fd(int fd, const int park[2])
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (real.getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -errno;
    struct sockaddr_storage to = {0};
    if (ss.ss_family == AF_INET && park[0] > 0) {
        struct sockaddr_in *in = (struct sockaddr_in *)&to;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)park[0]);
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *in;
    } else if (ss.ss_family == AF_INET6 && park[1] > 0) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&to;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)park[1]);
        in6->sin6_addr = in6addr_loopback;
        len = sizeof *in6;
    } else {
        return -EAFNOSUPPORT;  /* the daemon named no parking address for this family */
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
        return -errno;
    int r = real.connect(fd, (struct sockaddr *)&to, len), e = r ? errno : 0;
    if (e == ECONNRESET || e == ECONNABORTED || e == ECONNREFUSED || e == ETIMEDOUT) {
        /* An earlier failed connect reports itself once to the next; the one after starts anew. */
        r = real.connect(fd, (struct sockaddr *)&to, len);
        e = r ? errno : 0;
    }
    fcntl(fd, F_SETFL, fl);  /* the program's own blocking mode */
    return e == EINPROGRESS || e == EAGAIN ? 0 : -(e ? e : EIO);
}

void unpark_fd(int fd)
{
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    int saved = errno;
    real.connect(fd, &unspec, sizeof unspec);
    errno = saved;
}

/* The attempt's errno, reported once (connect or SO_ERROR, whichever asks first). */
static int take_failure(struct sock *s)
{
    int e = s->failed_errno ? s->failed_errno : ECONNABORTED;
    s->failed_errno = 0;
    return e;
}

int settle(struct sock *s, int fd, int block)
{
    for (int spins = 0; s->phase == P_CONNECTING && s->busy; spins++) {
        if (!block || spins > RESULT_WAIT_MS)
            return 0;  /* another thread is reading the result */
        table_unlock();
        usleep(1000);
        table_lock();
    }
    if (s->phase == P_CONNECTED)
        return 1;
    if (s->phase != P_CONNECTING)
        return -(s->failed_errno ? s->failed_errno : ENOTCONN);
    if (!block) {
        /* Never wait: the daemon writes its result, then completes or resets N, so the answer
         * is ready once N polls writable (or in error) with the frame waiting, or once the
         * control connection hung up; until then "pending", as the kernel says. */
        struct pollfd p[2] = {{.fd = s->control, .events = POLLIN}, {.fd = fd, .events = POLLOUT}};
        if (poll(p, 2, 0) <= 0 || !p[0].revents || (!p[1].revents && !(p[0].revents & (POLLHUP | POLLERR))))
            return 0;
    }
    s->busy = 1;
    int control = s->control;
    table_unlock();
    if (block) {
        /* As the kernel's blocking connect(): a signal whose handler runs while we wait (alarm()
         * as a connect timeout, say) interrupts the call with EINTR; the attempt goes on, and
         * its end is reported as a non-blocking connect's is. */
        struct pollfd p = {.fd = control, .events = POLLIN};
        if (poll(&p, 1, RESULT_WAIT_MS) < 0 && errno == EINTR) {
            table_lock();
            s->busy = 0;
            return forget_if_closed(s, fd) ? SETTLE_GONE : SETTLE_INTR;
        }
    }
    struct frame f;
    int r = control_recv(control, &f, block ? RESULT_WAIT_MS : 0);
    if (r == 0 && f.kind == K_ESTABLISHED && block)
        wait_fd(fd, POLLOUT, 5000);  /* the daemon completes N right after the frame */
    table_lock();
    s->busy = 0;
    if (forget_if_closed(s, fd)) {  /* closed by another thread meanwhile: the control connection went */
        if (r == 0)
            frame_free(&f);
        return SETTLE_GONE;
    }
    if (r) {
        s->phase = P_FAILED;
        s->failed_errno = r == -ETIMEDOUT ? ETIMEDOUT : ECONNABORTED;
        sock_error(s, "the ssaproxy daemon ended the connection before the result (%s)", strerror(-r));
    } else if (f.kind == K_ESTABLISHED) {
        sock_set_info(s, &f);
        s->phase = P_CONNECTED;
    } else {
        char why[sizeof s->error];
        s->failed_errno = frame_error(&f, why, sizeof why);
        snprintf(s->error, sizeof s->error, "%s", why);
        s->phase = P_FAILED;
    }
    if (r == 0)
        frame_free(&f);
    sock_close_control(s);
    if (s->phase == P_FAILED) {
        /* After an ERROR frame the daemon resets N at once: let the reset land (bounded), then
         * clear the kernel's ECONNRESET, which the attempt's own errno replaces. */
        struct pollfd p = {.fd = fd, .events = 0};
        for (int64_t end = now_ms() + (block ? 2000 : 0); r == 0 && now_ms() < end;)
            if (poll(&p, 1, 50) > 0 && (p.revents & (POLLERR | POLLHUP)))
                break;
        int e = 0;
        socklen_t l = sizeof e;
        real.getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l);
        return -s->failed_errno;
    }
    return 1;
}

/* The destination as the daemon takes it: host text, port, family code (4, 6, 0 = a name). */
static int target(struct sock *s, const struct sockaddr *a, socklen_t len, char *host, size_t hsize,
                  int *port, int *fam)
{
    if (a == NULL)
        return -EFAULT;
    if (a->sa_family == AF_INET && len >= sizeof(struct sockaddr_in) && s->family != AF_INET6) {
        const struct sockaddr_in *in = (const void *)a;
        inet_ntop(AF_INET, &in->sin_addr, host, (socklen_t)hsize);
        *port = ntohs(in->sin_port);
        *fam = 4;
        return 0;
    }
    if (a->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6) && s->family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)a;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, (socklen_t)hsize);
        *port = ntohs(in6->sin6_port);
        *fam = 6;
        return 0;
    }
    if (a->sa_family == AF_HOSTNAME && s->family == AF_HOSTNAME && len > offsetof(struct sockaddr_host, sin_addr)) {
        const struct sockaddr_host *h = (const void *)a;
        size_t room = len - offsetof(struct sockaddr_host, sin_addr);
        if (room > sizeof h->sin_addr.name)
            room = sizeof h->sin_addr.name;
        const unsigned char *end = memchr(h->sin_addr.name, '\0', room);
        size_t n = end ? (size_t)(end - h->sin_addr.name) : room;
        if (n == 0 || n > 253 || n >= hsize)
            return -EINVAL;
        memcpy(host, h->sin_addr.name, n);
        host[n] = '\0';
        *port = ntohs(h->sin_port);
        *fam = 0;
        return 0;
    }
    return -EAFNOSUPPORT;
}

static int set_name(struct sock *s, const char *name)
{
    struct out o;
    struct frame f;
    out_start(&o, K_SETOPT);
    out_int(&o, T_OPTION, TLS_REMOTE_HOSTNAME);
    out_text(&o, T_VALUE, name);
    int r = control_request(s->control, &o, NULL, 0, &f, 30000);
    out_free(&o);
    if (r)
        return -ECONNABORTED;
    if (f.kind != K_OK)
        r = -frame_error(&f, s->error, sizeof s->error);
    frame_free(&f);
    return r;
}

/* Called with the table locked; returns with it locked. */
int tls_connect(struct sock *s, int fd, const struct sockaddr *a, socklen_t len)
{
    int block = !(fcntl(fd, F_GETFL) & O_NONBLOCK);
    /* Linux's answers for TCP: EALREADY while pending; after success 0 the first time, then
     * EISCONN; after failure the attempt's errno once, and the call after that starts anew. */
    if (s->phase == P_CONNECTING) {
        int r = settle(s, fd, block);
        if (r == SETTLE_GONE) {
            errno = EBADF;
            return -1;
        }
        if (r == SETTLE_INTR) {
            errno = EINTR;
            return -1;
        }
        if (r == 0) {
            errno = EALREADY;
            return -1;
        }
        if (r < 0) {
            errno = take_failure(s);
            return -1;
        }
    }
    if (s->phase == P_FAILED && s->failed_errno) {
        errno = take_failure(s);
        return -1;
    }
    if (s->phase == P_CONNECTED && !s->success_told) {
        s->success_told = 1;
        return 0;
    }
    if (s->phase == P_CONNECTED || s->phase == P_LISTENING) {
        errno = s->phase == P_CONNECTED ? EISCONN : EINVAL;
        return -1;
    }
    if (s->busy) {
        errno = EALREADY;
        return -1;
    }
    if (s->bound) {
        sock_error(s, "connect() after bind(): the daemon picks the source address");
        errno = EOPNOTSUPP;
        return -1;
    }
    char host[256];
    int port, fam;
    int r = target(s, a, len, host, sizeof host, &port, &fam);
    if (r) {
        sock_error(s, "connect(): %s", strerror(-r));
        errno = -r;
        return -1;
    }
    s->error[0] = '\0';
    s->failed_errno = 0;
    int fl = fcntl(fd, F_GETFL);
    s->busy = 1;
    table_unlock();
    r = session(s);
    if (r == 0 && fam == 0 && !s->have_name)
        r = set_name(s, host);
    struct frame f = {0};
    char why[sizeof s->error] = "";
    int unparked = 0;  /* why N could not be parked: the daemon's checks say what is wrong */
    if (r == 0)
        unparked = park_fd(fd, s->park);
    if (r == 0) {
        struct out o;
        out_start(&o, K_CONNECT);
        out_text(&o, T_HOST, host);
        out_int(&o, T_PORT, port);
        out_int(&o, T_FAMILY, fam);
        r = control_request(s->control, &o, &fd, 1, &f, 30000);
        out_free(&o);
        if (r) {
            snprintf(why, sizeof why, "the ssaproxy daemon did not answer CONNECT: %s", strerror(-r));
            r = r == -ETIMEDOUT ? r : -ECONNABORTED;
        } else if (f.kind != K_OK) {
            r = -frame_error(&f, why, sizeof why);
            if (r == -EINVAL && unparked) {
                size_t n = strlen(why);
                snprintf(why + n, sizeof why - n, " (it could not be parked: %s)", strerror(-unparked));
            }
        }
        frame_free(&f);
        if (r && !unparked)
            unpark_fd(fd);  /* refused: unconnected again, as before the call (only if we parked it) */
    }
    fcntl(fd, F_SETFL, fl);  /* O_NONBLOCK: the program's choice, whatever happened meanwhile */
    table_lock();
    s->busy = 0;
    if (forget_if_closed(s, fd)) {  /* closed by another thread meanwhile: its control connection goes */
        errno = EBADF;
        return -1;
    }
    if (r) {
        if (why[0])
            snprintf(s->error, sizeof s->error, "%s", why);
        sock_close_control(s);  /* the next attempt starts a new session (options replayed) */
        errno = -r;
        return -1;
    }
    s->phase = P_CONNECTING;
    if (!block) {
        errno = EINPROGRESS;
        return -1;
    }
    r = settle(s, fd, 1);
    if (r == SETTLE_GONE) {
        errno = EBADF;
        return -1;
    }
    if (r == SETTLE_INTR) {
        errno = EINTR;
        return -1;
    }
    if (r == 1) {
        s->success_told = 1;
        return 0;
    }
    errno = r < 0 ? take_failure(s) : ETIMEDOUT;
    return -1;
}

/* SO_ERROR on a socket whose connect is in progress or failed: the attempt's errno, once. */
int tls_so_error(struct sock *s, int fd, void *value, socklen_t *len)
{
    if (s->phase == P_CONNECTING && settle(s, fd, 0) == SETTLE_GONE) {
        errno = EBADF;
        return -1;
    }
    if (s->phase == P_FAILED && s->failed_errno && value != NULL && len != NULL && *len >= (socklen_t)sizeof(int)) {
        int e = take_failure(s);
        memcpy(value, &e, sizeof e);
        *len = sizeof e;
        return 0;
    }
    return real.getsockopt(fd, SOL_SOCKET, SO_ERROR, value, len);
}
