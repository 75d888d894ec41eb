#include "npy.h"

#include <stdio.h>
#include <string.h>

#include "err.h"

int npy_write_f32(const char *path, const float *data, const int64_t *shape, int ndim)
{
    char dict[256];
    char shp[160] = "";
    size_t count = 1, off = 0;
    FILE *f = NULL;
    int rc = FX_EIO;
    if (path == NULL || data == NULL || shape == NULL || ndim < 1 || ndim > 8)
        return FX_EINVAL;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return FX_EINVAL;
        count *= (size_t)shape[i];
        off += (size_t)snprintf(shp + off, sizeof(shp) - off, "%lld,%s", (long long)shape[i],
                                i + 1 < ndim ? " " : "");
    }
    if (ndim > 1)
        shp[off - 1] = '\0'; /* (a, b) rather than (a, b,) */
    int n = snprintf(dict, sizeof(dict),
                     "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", shp);
    /* magic (6) + version (2) + header length (2) + dict + padding + '\n', a multiple of 64 */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    size_t hlen = (size_t)n + pad + 1;
    unsigned char head[10] = {0x93,
                              'N',
                              'U',
                              'M',
                              'P',
                              'Y',
                              1,
                              0,
                              (unsigned char)(hlen & 0xff),
                              (unsigned char)(hlen >> 8)};
    f = fopen(path, "wb");
    if (f == NULL)
        return FX_EIO;
    if (fwrite(head, 1, 10, f) != 10 || fwrite(dict, 1, (size_t)n, f) != (size_t)n)
        goto out;
    for (size_t i = 0; i < pad; i++)
        if (fputc(' ', f) == EOF)
            goto out;
    if (fputc('\n', f) == EOF || fwrite(data, sizeof(float), count, f) != count)
        goto out;
    rc = 0;
out:
    if (fclose(f) != 0)
        rc = FX_EIO;
    return rc;
}
