/* SPDX-License-Identifier: MIT */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tool_common.h"

int fileio_read_all(const char *path, unsigned char **out, size_t *len) {
        _cleanup_free_ unsigned char *buf = NULL;
        size_t have = 0;
        struct stat st;
        int fd, r = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                goto out;
        }
        if (!S_ISREG(st.st_mode)) {
                r = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
                goto out;
        }
        if (st.st_size > FILEIO_MAX_SIZE) {
                r = -EFBIG;
                goto out;
        }
        buf = malloc((size_t) st.st_size + 1);
        if (!buf) {
                r = -ENOMEM;
                goto out;
        }
        /* Bounded by the size fstat() saw; a file that grows meanwhile is cut. */
        while (have < (size_t) st.st_size) {
                ssize_t n = read(fd, buf + have, (size_t) st.st_size - have);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        goto out;
                }
                if (n == 0)
                        break;
                have += (size_t) n;
        }
        buf[have] = 0;
        *out = buf;
        buf = NULL;
        *len = have;
out:
        close(fd);
        return r;
}

int fileio_check_target(const char *path, bool force) {
        struct stat st;

        if (force)
                return 0;
        if (lstat(path, &st) == 0)
                return -EEXIST;
        return errno == ENOENT ? 0 : -errno;
}

static int write_full(int fd, const void *data, size_t len) {
        const unsigned char *p = data;

        while (len > 0) {
                ssize_t n = write(fd, p, len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += n;
                len -= (size_t) n;
        }
        return 0;
}

int fileio_write_atomic(const char *path, const void *data, size_t len, mode_t mode, bool force) {
        char tmp[PATH_MAX];
        const char *slash = strrchr(path, '/');
        int fd, r;

        if (slash)
                r = snprintf(tmp, sizeof tmp, "%.*s/.%s.XXXXXX", (int) (slash - path), path, slash + 1);
        else
                r = snprintf(tmp, sizeof tmp, ".%s.XXXXXX", path);
        if (r < 0 || (size_t) r >= sizeof tmp)
                return -ENAMETOOLONG;

        /* mkstemp() creates the file 0600, so the key is never exposed. */
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        r = write_full(fd, data, len);
        if (r == 0 && fchmod(fd, mode) < 0)
                r = -errno;
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0) {
                if (force) {
                        if (rename(tmp, path) < 0)
                                r = -errno;
                } else if (link(tmp, path) < 0) {
                        r = -errno;
                }
        }
        /* After rename() the temp name is gone; after link() it is a second name. */
        if (!force || r < 0)
                (void) unlink(tmp);
        return r;
}
