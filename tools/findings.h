/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * findings — what the doctor found, each with a cause in plain words and
 * the fix, collected first and printed once (text or JSON).
 */

#include <stddef.h>

enum finding_severity {
        FINDING_INFO,
        FINDING_WARNING,
        FINDING_ERROR,
};

struct finding {
        char *id;               /* stable key for scripts, e.g. "san-ip-only" */
        enum finding_severity severity;
        char *message;          /* the cause */
        char *fix;              /* what to do; may be NULL */
};

struct findings {
        struct finding *v;
        size_t n;
};

/* Adds one finding; fix may be NULL. Negative errno (-ENOMEM). */
int findings_add(struct findings *f, const char *id, enum finding_severity sev, const char *fix,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* True when a finding with this id was added. */
int findings_has(const struct findings *f, const char *id);

const char *finding_severity_name(enum finding_severity sev);

void findings_done(struct findings *f);
