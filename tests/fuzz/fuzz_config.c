/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: config_load_string() on arbitrary text. It must not
 * crash, must leave a NUL-terminated message on failure, and config_free()
 * must release everything (LeakSanitizer checks). Paths in the text are
 * stat()ed and access()ed, nothing is opened or written.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct config cfg;
        char err[256];
        char *text;
        int r;

        text = malloc(size + 1);
        if (!text)
                return 0;
        memcpy(text, data, size);
        text[size] = '\0';

        if (config_init(&cfg) < 0) {
                free(text);
                return 0;
        }
        memset(err, 'x', sizeof(err));
        r = config_load_string(&cfg, "fuzz.ini", text, err, sizeof(err));
        if (r > 0)
                abort(); /* 0 or a negative errno, nothing else */
        if (r < 0 && (memchr(err, '\0', sizeof(err)) == NULL || err[0] == '\0'))
                abort(); /* a failure always says why */
        if (r == 0 && (!cfg.listener.certfile || !cfg.listener.keyfile || cfg.listener.n_bind == 0 ||
                       cfg.listener.n_bind > CONFIG_MAX_BIND))
                abort();
        config_free(&cfg);
        free(text);
        return 0;
}
