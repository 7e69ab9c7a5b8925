/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "privileges.h"

/* getpwnam, with "no such user" told apart from a failed lookup (NSS
 * down), which is just as fatal but needs another fix. */
static int lookup_user(const char *user, struct passwd **out)
{
        errno = 0;
        *out = getpwnam(user);
        if (*out)
                return 0;
        if (errno == 0 || errno == ENOENT || errno == ESRCH || errno == EBADF || errno == EPERM) {
                log_error("[bridge] user: no user \"%s\" on this system; not running as root instead "
                          "(create it, e.g. with systemd-sysusers, or set \"user =\" to say that root is intended)",
                          user);
                return -ESRCH;
        }
        int r = -errno;
        log_error("[bridge] user: cannot look up \"%s\": %s", user, strerror(errno));
        return r;
}

int privileges_check_user(const char *user)
{
        struct passwd *pw;

        if (geteuid() != 0 || !user)
                return 0;
        return lookup_user(user, &pw);
}

/* A directory that someone other than root and the daemon's user can
 * write to is one where anyone can plant links, or swap files under us. */
static int check_dir_owner_mode(const char *dir, const struct stat *st, uid_t uid, gid_t gid)
{
        if (st->st_uid != 0 && st->st_uid != uid) {
                log_error("[spool] directory: %s belongs to uid %u, neither root nor the daemon's user; "
                          "not handing it over", dir, (unsigned) st->st_uid);
                return -EPERM;
        }
        if ((st->st_mode & S_IWOTH) || ((st->st_mode & S_IWGRP) && st->st_gid != 0 && st->st_gid != gid)) {
                log_error("[spool] directory: %s is writable by other users (mode %04o); "
                          "chmod go-w it (0700 is what the daemon makes)", dir, (unsigned) (st->st_mode & 07777));
                return -EPERM;
        }
        return 0;
}

/*
 * The directory and the spool files in it (a run as root may have left
 * some): after the switch they must still open. Root does this in a
 * directory the daemon's user could write to on an earlier run, so
 * nothing planted there may redirect it: the directory itself is opened
 * with O_NOFOLLOW and changed through its descriptor; each entry is
 * opened with O_PATH | O_NOFOLLOW (no open(2) side effects on a device or
 * a FIFO) and changed through that descriptor only if it is a regular
 * file with one link (a hard link to /etc/shadow is one name of it too),
 * owned by root or the user already. Anything else is left alone, with a
 * warning.
 */
static int chown_spool(const char *dir, uid_t uid, gid_t gid)
{
        struct stat st;
        DIR *d;
        struct dirent *e;
        int dfd, r;

        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0) {
                r = -errno;
                /* With O_DIRECTORY, a symbolic link fails with ENOTDIR. */
                if (errno == ELOOP || (errno == ENOTDIR && lstat(dir, &st) == 0 && S_ISLNK(st.st_mode)))
                        log_error("[spool] directory: %s is a symbolic link; give the real path", dir);
                else
                        log_error("[spool] directory: cannot open %s: %s", dir, strerror(errno));
                return r;
        }
        if (fstat(dfd, &st) < 0) {
                r = -errno;
                log_error("[spool] directory: %s: %s", dir, strerror(errno));
                close(dfd);
                return r;
        }
        r = check_dir_owner_mode(dir, &st, uid, gid);
        if (r < 0) {
                close(dfd);
                return r;
        }
        if (fchown(dfd, uid, gid) < 0) {
                r = -errno;
                log_error("[spool] directory: cannot hand %s over: %s", dir, strerror(errno));
                close(dfd);
                return r;
        }
        int lfd = dup(dfd);
        d = lfd >= 0 ? fdopendir(lfd) : NULL;
        if (!d) {
                r = -errno;
                log_error("[spool] directory: cannot read %s: %s", dir, strerror(errno));
                if (lfd >= 0)
                        close(lfd);
                close(dfd);
                return r;
        }
        r = 0;
        while ((e = readdir(d))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                        continue;
                int fd = openat(dfd, e->d_name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
                if (fd < 0) {
                        log_warning("spool %s/%s: cannot open: %s; left as it is", dir, e->d_name, strerror(errno));
                        continue;
                }
                if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 ||
                    (st.st_uid != 0 && st.st_uid != uid)) {
                        log_warning("spool %s/%s: not a spool file (a link, a directory, or someone else's); "
                                    "left as it is", dir, e->d_name);
                        close(fd);
                        continue;
                }
                /* O_PATH descriptors take no fchown(2); AT_EMPTY_PATH
                 * changes the file the descriptor names, never a name. */
                if (fchownat(fd, "", uid, gid, AT_EMPTY_PATH) < 0) {
                        r = -errno;
                        log_error("spool %s/%s: cannot hand it over: %s", dir, e->d_name, strerror(errno));
                        close(fd);
                        break;
                }
                close(fd);
        }
        closedir(d);
        close(dfd);
        return r;
}

int privileges_drop(const char *user, const char *spool_dir)
{
        struct passwd *pw;
        int r;

        if (geteuid() != 0 || !user)
                return 0;
        /* Fail closed: the ini file promises that a missing user is an
         * error, and a daemon facing the network should not quietly stay
         * root because of a typo. */
        r = lookup_user(user, &pw);
        if (r < 0)
                return r;
        uid_t uid = pw->pw_uid;
        gid_t gid = pw->pw_gid;
        if (spool_dir) {
                r = chown_spool(spool_dir, uid, gid);
                if (r < 0)
                        return r;
        }
        if (initgroups(user, gid) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0) {
                r = -errno;
                log_error("cannot drop privileges to %s: %s", user, strerror(errno));
                return r;
        }
        /* Make sure it is for good. */
        if (setuid(0) == 0) {
                log_error("privileges could be regained after dropping them to %s", user);
                return -EPERM;
        }
        log_notice("running as %s (uid %u)", user, (unsigned) uid);
        return 0;
}
