/* jobid.c - random job ids. */
#include "jobid.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>

#include "../core/err.h"

static bool prefix_chars(const char *s, size_t n)
{
    if (n < 1 || n > JOBID_PREFIX_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z')))
            return false;
    return true;
}

bool jobid_prefix_valid(const char *s)
{
    return s != NULL && prefix_chars(s, strlen(s));
}

int jobid_new(const char *prefix, char out[JOBID_MAX + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t raw[JOBID_LEN / 2];
    size_t got = 0, at = 0;
    if (prefix && *prefix) {
        if (!jobid_prefix_valid(prefix))
            return FX_EINVAL;
        at = strlen(prefix);
        memcpy(out, prefix, at);
        out[at++] = '-';
    }
    while (got < sizeof(raw)) {
        ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return FX_EIO;
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[at + 2 * i] = hex[raw[i] >> 4];
        out[at + 2 * i + 1] = hex[raw[i] & 15];
    }
    out[at + JOBID_LEN] = '\0';
    return 0;
}

bool jobid_valid(const char *s, size_t len)
{
    if (s == NULL || len < JOBID_LEN || len > JOBID_MAX)
        return false;
    if (len > JOBID_LEN) { /* "PREFIX-" first */
        size_t p = len - JOBID_LEN - 1;
        if (s[p] != '-' || !prefix_chars(s, p))
            return false;
        s += p + 1;
        len = JOBID_LEN;
    }
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}
