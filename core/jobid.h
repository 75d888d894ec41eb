/*
 * jobid.h - job ids: 128 bits from getrandom(2), written as 32 lower-case hex digits.
 *
 * Ids are unguessable (knowing one id tells nothing about another), so an id is the
 * capability to read or cancel its job.  Input ids are checked strictly before they reach
 * SQL or a log: exactly 32 characters from [0-9a-f], nothing else.  Thread-safe.
 */
#ifndef FX_JOBID_H
#define FX_JOBID_H

#include <stdbool.h>
#include <stddef.h>

#define JOBID_LEN 32

/* Writes a new id and its NUL into out.  Returns 0, or FX_EIO when the kernel has no
 * randomness to give (getrandom failed). */
int jobid_new(char out[JOBID_LEN + 1]);

/* True when s[0..len) is a well-formed id. s may be NULL (false). */
bool jobid_valid(const char *s, size_t len);

#endif
