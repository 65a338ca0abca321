/* Unit checks of the library's framing (ssaproxy/c/wire.c, compiled in from the source tree,
 * with AddressSanitizer by tests/test_clib_wire.py).  Each check prints "<name> ok" or exits
 * non-zero (ASan aborts on a use after free or a double free). */
#define _GNU_SOURCE
#include "../../ssaproxy/c/wire.c"

#include <sys/socket.h>

struct real_calls real;
void real_init(void) {}

static int fails;
static void check(const char *name, int ok)
{
    printf("%s %s\n", name, ok ? "ok" : "FAILED");
    fails += !ok;
}

/* A frame over 1 MiB (and 4 bytes of length): refused (failed set), the buffer still the
 * builder's own; one below it: built. */
static void big_frame(size_t value_size, int too_big)
{
    struct out o;
    unsigned char *value = calloc(1, value_size);
    out_start(&o, K_SETOPT);
    out_int(&o, T_OPTION, 1);
    out_bytes(&o, T_VALUE, value, value_size);
    int refused = o.failed, len = (int)o.len;
    out_bytes(&o, T_TEXT, "x", 1);  /* after a refusal: nothing written anywhere */
    out_free(&o);  /* a stale pointer here is a double free */
    free(value);
    char name[64];
    snprintf(name, sizeof name, "frame_%zu", value_size);
    check(name, too_big ? refused : !refused && len == 6 + 10 + 6 + (int)value_size);
}

/* A header the library refuses, with a descriptor on its first byte: the descriptor is closed.
 * We send the write end of a pipe; once every copy is closed, its read end reads EOF. */
static void fd_with_bad_frame(uint32_t len, const char *name, int hangup_early)
{
    int sp[2], pipefd[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) || pipe2(pipefd, O_NONBLOCK)) {
        check(name, 0);
        return;
    }
    unsigned char head[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16), (unsigned char)(len >> 8),
                             (unsigned char)len};
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {.iov_base = head, .iov_len = hangup_early ? 2 : 4};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &pipefd[1], sizeof(int));
    int sent = sendmsg(sp[1], &m, 0) == (ssize_t)iov.iov_len;
    close(pipefd[1]);
    close(sp[1]);  /* the peer is gone: a short header ends in ECONNABORTED */
    struct frame f;
    int r = control_recv(sp[0], &f, 1000);
    char b;
    ssize_t n = read(pipefd[0], &b, 1);  /* 0: no copy of the write end is left open */
    check(name, sent && r < 0 && n == 0);
    close(sp[0]);
    close(pipefd[0]);
}

int main(int argc, char **argv)
{
    real.close = close;
    int frames = argc < 2 || !strcmp(argv[1], "frames"), fds = argc < 2 || !strcmp(argv[1], "fds");
    if (frames) {
        big_frame(MAX_FRAME - 64, 0);  /* the largest PEM value: fits */
        big_frame(MAX_FRAME - 8, 1);   /* 1 MiB and 14 bytes of frame */
        big_frame(MAX_FRAME, 1);
    }
    if (fds) {
        fd_with_bad_frame(MAX_FRAME + 1, "fd_eproto", 0);
        fd_with_bad_frame(1, "fd_eproto_short", 0);
        fd_with_bad_frame(16, "fd_header_cut", 1);
    }
    return fails ? 1 : 0;
}
