/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * fileio — whole-file reads and careful writes for the tools.
 *
 * Writes never clobber by accident: without force an existing file is an
 * error (-EEXIST), and the new file appears atomically with its final
 * mode, so a private key is never world-readable, not even for an instant.
 */

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Largest input the tools accept; certificates and keys are a few kB. */
#define FILEIO_MAX_SIZE (1024 * 1024)

/* Reads all of path (at most FILEIO_MAX_SIZE) into a malloc'ed buffer with
 * a NUL after the last byte (not counted in *len). Negative errno. */
int fileio_read_all(const char *path, unsigned char **out, size_t *len);

/* -EEXIST when path exists and force is false; 0 otherwise. */
int fileio_check_target(const char *path, bool force);

/* Writes data to path with mode, atomically (temp file in the same folder,
 * fsync, then link() — which refuses an existing name — or, with force,
 * rename()). Negative errno. */
int fileio_write_atomic(const char *path, const void *data, size_t len, mode_t mode, bool force);
