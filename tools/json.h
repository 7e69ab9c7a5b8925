/* SPDX-License-Identifier: MIT */
#pragma once

/* json — the little the tools need to print JSON by hand: string escaping. */

#include <stdio.h>

/* Writes s as a JSON string literal (quotes included); NULL → null. */
void json_string(FILE *f, const char *s);
