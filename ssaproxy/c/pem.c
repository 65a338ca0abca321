/* PEM option values as a program gives them: a path (a file, or for trust anchors a directory
 * of certificate files) read here, in the program's own process, since the daemon never opens
 * a file a program names; and a chain file that also holds its key, split in two. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* Below MAX_FRAME: the value travels in one SETOPT frame with its option number and framing. */
#define PEM_LIMIT (MAX_FRAME - 64)

/* Append the PEM in `path` (a file, or each regular file of a directory) to buf. */
int read_pem(const char *path, unsigned char **buf, size_t *len, int dir_ok, char *why, size_t whysize)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        snprintf(why, whysize, "cannot read %.400s: %s", path, strerror(e));
        return -e;
    }
    if (S_ISDIR(st.st_mode)) {
        if (!dir_ok) {
            snprintf(why, whysize, "%.400s is a directory", path);
            return -EISDIR;
        }
        DIR *d = opendir(path);
        if (d == NULL) {
            int e = errno;
            snprintf(why, whysize, "cannot read %.400s: %s", path, strerror(e));
            return -e;
        }
        struct dirent *e;
        int r = 0;
        while (r == 0 && (e = readdir(d)) != NULL) {
            char sub[4096];
            struct stat fs;
            if (e->d_name[0] == '.' || snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) >= (int)sizeof sub)
                continue;
            if (stat(sub, &fs) != 0 || !S_ISREG(fs.st_mode))
                continue;
            size_t before = *len;
            r = read_pem(sub, buf, len, 0, why, whysize);
            if (r == 0 && memmem(*buf + before, *len - before, "-----BEGIN CERTIFICATE", 22) == NULL)
                *len = before;  /* not a certificate file: skipped */
        }
        closedir(d);
        return r;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(why, whysize, "cannot read %.400s: %s", path, strerror(e));
        return -e;
    }
    for (;;) {
        unsigned char *b = realloc(*buf, *len + 65536 + 1);
        if (b == NULL) {
            real.close(fd);
            return -ENOMEM;
        }
        *buf = b;
        ssize_t n = read(fd, b + *len, 65536);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        *len += (size_t)n;
        if (*len > PEM_LIMIT) {
            real.close(fd);
            snprintf(why, whysize, "%.400s: more PEM than one frame holds (1 MiB less 64 bytes)", path);
            return -EINVAL;
        }
    }
    real.close(fd);
    return 0;
}

/* A combined chain+key PEM: the key blocks move to key/keylen. */
void split_key(unsigned char *pem, size_t *len, unsigned char **key, size_t *keylen)
{
    *key = NULL;
    *keylen = 0;
    unsigned char *out = malloc(*len + 1), *k = malloc(*len + 1);
    if (out == NULL || k == NULL) {
        free(out);
        free(k);
        return;
    }
    size_t on = 0, kn = 0, at = 0;
    while (at < *len) {
        unsigned char *begin = memmem(pem + at, *len - at, "-----BEGIN ", 11);
        if (begin == NULL)
            break;
        size_t b = (size_t)(begin - pem);
        unsigned char *next = memmem(pem + b + 11, *len - b - 11, "-----BEGIN ", 11);
        size_t e = next ? (size_t)(next - pem) : *len;
        unsigned char *dash = memmem(pem + b + 11, e - b - 11, "-----", 5);
        int is_key = dash != NULL && dash - (pem + b) >= 22 && memcmp(dash - 11, "PRIVATE KEY", 11) == 0;
        memcpy(is_key ? k + kn : out + on, pem + b, e - b);
        *(is_key ? &kn : &on) += e - b;
        at = e;
    }
    if (kn) {
        memcpy(pem, out, on);
        *len = on;
        *key = k;
        *keylen = kn;
    } else {
        free(k);
    }
    free(out);
}
