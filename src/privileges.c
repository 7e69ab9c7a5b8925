/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "privileges.h"

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
        if (spool_dir && chown(spool_dir, pw->pw_uid, pw->pw_gid) < 0) {
                int r = -errno;
                log_error("cannot hand the spool %s to %s: %s", spool_dir, user, strerror(errno));
                return r;
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
