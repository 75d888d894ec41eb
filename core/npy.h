/*
 * npy.h - writing float32 arrays as NumPy .npy files (format 1.0), for latent dumps that the
 * parity tests read with numpy.load.  Thread-safe.
 */
#ifndef FX_NPY_H
#define FX_NPY_H

#include <stddef.h>
#include <stdint.h>

/*
 * Writes data[0..prod(shape)) as a little-endian float32 C-order array of ndim (1..8)
 * dimensions to path (replacing it).  Returns 0, FX_EINVAL or FX_EIO.
 */
int npy_write_f32(const char *path, const float *data, const int64_t *shape, int ndim);

#endif
