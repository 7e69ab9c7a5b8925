/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the spool record reader on arbitrary bytes (what a
 * crash or a bad disk can leave in a spool file). Every record that
 * decodes must re-encode to the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spool_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        size_t off = 0;

        while (off < size) {
                struct spool_record r;
                size_t used = 0;
                int k = spool_record_decode(data + off, size - off, &r, &used);
                if (k <= 0)
                        break;
                if (used < SPOOL_HEADER_LEN || used > size - off)
                        abort();
                uint8_t *buf = malloc(used);
                if (!buf)
                        abort();
                int n = spool_record_encode(buf, used, &r);
                if (n != (int) used || memcmp(buf, data + off, used) != 0)
                        abort();
                free(buf);
                off += used;
        }
        return 0;
}
