/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "privileges.h"

/* The directory and the spool files in it (a run as root may have left
 * some): after the switch they must still open. */
static int chown_spool(const char *dir, uid_t uid, gid_t gid)
{
        DIR *d;
        struct dirent *e;

        if (chown(dir, uid, gid) < 0)
                return -errno;
        d = opendir(dir);
        if (!d)
                return -errno;
        while ((e = readdir(d))) {
                if (e->d_name[0] == '.')
                        continue;
                if (fchownat(dirfd(d), e->d_name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0) {
                        int r = -errno;
                        closedir(d);
                        return r;
                }
        }
        closedir(d);
        return 0;
}

int privileges_drop(const char *user, const char *spool_dir)
{
        struct passwd *pw;

        if (geteuid() != 0 || !user)
                return 0;
        errno = 0;
        pw = getpwnam(user);
        if (!pw) {
                log_warning("[bridge] user: no user \"%s\" on this system; still running as root "
                            "(create it, or set \"user =\" to say that root is intended)", user);
                return 0;
        }
        if (spool_dir) {
                int r = chown_spool(spool_dir, pw->pw_uid, pw->pw_gid);
                if (r < 0) {
                        log_error("cannot hand the spool %s to %s: %s", spool_dir, user, strerror(-r));
                        return r;
                }
        }
        if (initgroups(user, pw->pw_gid) < 0 || setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) < 0 ||
            setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0) {
                int r = -errno;
                log_error("cannot drop privileges to %s: %s", user, strerror(errno));
                return r;
        }
        /* Make sure it is for good. */
        if (setuid(0) == 0) {
                log_error("privileges could be regained after dropping them to %s", user);
                return -EPERM;
        }
        log_notice("running as %s (uid %u)", user, (unsigned) pw->pw_uid);
        return 0;
}
