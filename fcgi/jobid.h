/*
 * jobid.h - job ids: 128 bits from getrandom(2), written as 32 lower-case hex digits, after
 * an optional host part and a '-' ("gpu3-0123...cdef").
 *
 * Ids are unguessable (knowing one id tells nothing about another), so an id is the
 * capability to read or cancel its job.  The host part (config `id_prefix`, 1..16 characters
 * from [a-z0-9]) names the fluxcgi that took the job, so that a front nginx can route
 * /queue/status/{id} and /result/{id} across hosts by it (docs/operations.md).  Input ids
 * are checked strictly before they reach SQL or a log: an optional well-formed host part,
 * then exactly 32 characters from [0-9a-f], nothing else.  Thread-safe.
 */
#ifndef FX_JOBID_H
#define FX_JOBID_H

#include <stdbool.h>
#include <stddef.h>

#define JOBID_LEN 32        /* the random part */
#define JOBID_PREFIX_MAX 16 /* the host part */
#define JOBID_MAX (JOBID_PREFIX_MAX + 1 + JOBID_LEN)

/* True when s is a well-formed host part (1..16 of [a-z0-9]).  s may be NULL (false). */
bool jobid_prefix_valid(const char *s);

/* Writes a new id and its NUL into out: "PREFIX-" + 32 hex digits, or only the digits when
 * prefix is NULL or empty.  Returns 0, FX_EINVAL (a malformed prefix), or FX_EIO when the
 * kernel has no randomness to give (getrandom failed). */
int jobid_new(const char *prefix, char out[JOBID_MAX + 1]);

/* True when s[0..len) is a well-formed id (with or without a host part).  s may be NULL
 * (false). */
bool jobid_valid(const char *s, size_t len);

#endif
