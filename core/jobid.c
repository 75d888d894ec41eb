/* jobid.c - random job ids. */
#include "jobid.h"

#include <errno.h>
#include <stdint.h>
#include <sys/random.h>

#include "err.h"

int jobid_new(char out[JOBID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t raw[JOBID_LEN / 2];
    size_t got = 0;
    while (got < sizeof(raw)) {
        ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return FX_EIO;
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[JOBID_LEN] = '\0';
    return 0;
}

bool jobid_valid(const char *s, size_t len)
{
    if (s == NULL || len != JOBID_LEN)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}
