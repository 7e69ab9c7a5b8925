/* SPDX-License-Identifier: MIT */
#include "findings.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int findings_add(struct findings *f, const char *id, enum finding_severity sev, const char *fix,
                 const char *fmt, ...) {
        struct finding *v, *n;
        va_list ap;
        int r;

        v = realloc(f->v, (f->n + 1) * sizeof *v);
        if (!v)
                return -ENOMEM;
        f->v = v;
        n = &f->v[f->n];
        *n = (struct finding) { .severity = sev };
        va_start(ap, fmt);
        r = vasprintf(&n->message, fmt, ap);
        va_end(ap);
        if (r < 0) {
                n->message = NULL;
                return -ENOMEM;
        }
        n->id = strdup(id);
        n->fix = fix ? strdup(fix) : NULL;
        if (!n->id || (fix && !n->fix)) {
                free(n->id);
                free(n->fix);
                free(n->message);
                return -ENOMEM;
        }
        f->n++;
        return 0;
}

int findings_has(const struct findings *f, const char *id) {
        for (size_t i = 0; i < f->n; i++)
                if (strcmp(f->v[i].id, id) == 0)
                        return 1;
        return 0;
}

const char *finding_severity_name(enum finding_severity sev) {
        switch (sev) {
        case FINDING_ERROR: return "error";
        case FINDING_WARNING: return "warning";
        default: return "info";
        }
}

void findings_done(struct findings *f) {
        if (!f)
                return;
        for (size_t i = 0; i < f->n; i++) {
                free(f->v[i].id);
                free(f->v[i].message);
                free(f->v[i].fix);
        }
        free(f->v);
        *f = (struct findings) {};
}
