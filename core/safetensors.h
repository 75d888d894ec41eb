/*
 * safetensors.h - a small, bounds-checked reader of safetensors files (the format LoRAs are
 * distributed in).  Hand-written because no Debian package reads safetensors from C; the JSON
 * header goes through json-c like core/manifest.c.
 *
 * The format: an 8-byte little-endian header length N, N bytes of JSON (an object; each key a
 * tensor name with {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional
 * "__metadata__" object of string values), then the data section.  Offsets are relative to the
 * data section's start.
 *
 * Nothing in the header is trusted: N is at most FX_ST_HEADER_MAX and at most the file size - 8;
 * the header must be strict UTF-8 JSON (trailing spaces allowed, as writers pad it); every dtype
 * must be known, every shape at most FX_ST_MAX_DIMS non-negative dimensions whose element count
 * does not overflow; end - begin must equal elements x item size; and, as the reference
 * implementation requires, the tensors sorted by offset must tile the data section exactly
 * (no overlap, no gap, nothing after the last one), so no byte belongs to two tensors.  Names
 * are non-empty and without NUL.  A name repeated in the header is read as json-c reads it
 * (the last one wins), so the bytes of the earlier one are left over and the tiling check
 * refuses the file, unless both name the same bytes with the same size.
 *
 * I/O: the header is read once at open with pread; tensor data is read on demand with pread
 * from the same descriptor (kept open until fx_st_close) into the caller's buffer, converted
 * piecewise through a small bounce buffer, so no tensor is held twice and nothing is mapped.
 * A file that shrinks after open gives FX_EIO, never a short read taken for data.
 *
 * Messages name the file by its base name (callers may serve them to clients; the directory
 * is theirs to add) and the tensor's key.
 *
 * Thread-safety: a struct fx_st_file may be read from several threads at once (pread has no
 * shared offset); open and close belong to one thread.
 */
#ifndef FX_SAFETENSORS_H
#define FX_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define FX_ST_HEADER_MAX (100u * 1024 * 1024) /* bytes of JSON header */
#define FX_ST_MAX_DIMS 8
#define FX_ST_MAX_TENSORS 1000000

enum fx_st_dtype {
    FX_ST_BOOL,
    FX_ST_U8,
    FX_ST_I8,
    FX_ST_I16,
    FX_ST_U16,
    FX_ST_I32,
    FX_ST_U32,
    FX_ST_I64,
    FX_ST_U64,
    FX_ST_F16,
    FX_ST_BF16,
    FX_ST_F32,
    FX_ST_F64,
    FX_ST_F8_E4M3, /* "F8_E4M3": known (sized) but not convertible here */
    FX_ST_F8_E5M2, /* "F8_E5M2": likewise */
};

/* The dtype's name as the header spells it ("F32"), and its item size in bytes. */
const char *fx_st_dtype_name(enum fx_st_dtype t);
size_t fx_st_dtype_size(enum fx_st_dtype t);

struct fx_st_file;

/*
 * Opens path and validates its header (above).  Returns 0 and sets *out (close with
 * fx_st_close), or FX_ENOENT (no such file), FX_EIO (cannot open or read; not a regular file),
 * FX_EFORMAT (malformed: msg names the key and the reason), FX_ETOOBIG (header over
 * FX_ST_HEADER_MAX or more than FX_ST_MAX_TENSORS tensors), FX_ENOMEM.
 */
int fx_st_open(const char *path, struct fx_st_file **out, char *msg, size_t msg_len);
void fx_st_close(struct fx_st_file *f);

/* The file's base name as messages use it, and its size in bytes when opened. */
const char *fx_st_file_name(const struct fx_st_file *f);
uint64_t fx_st_file_size(const struct fx_st_file *f);

/* Tensors, in the header's order; i < fx_st_count(f).  Strings borrowed from f. */
size_t fx_st_count(const struct fx_st_file *f);
const char *fx_st_name(const struct fx_st_file *f, size_t i);
enum fx_st_dtype fx_st_dtype(const struct fx_st_file *f, size_t i);
int fx_st_ndim(const struct fx_st_file *f, size_t i);
const int64_t *fx_st_shape(const struct fx_st_file *f, size_t i); /* ndim values */
int64_t fx_st_numel(const struct fx_st_file *f, size_t i);        /* 1 for a scalar */

/* The index of the tensor named name, or -1 (binary search). */
long fx_st_find(const struct fx_st_file *f, const char *name);

/* A "__metadata__" value, or NULL when absent.  Borrowed from f. */
const char *fx_st_metadata(const struct fx_st_file *f, const char *key);

/*
 * Reads tensor i as float32 into dst[0..n), n == fx_st_numel(f, i): F32 as is, F16 and BF16
 * widened exactly, F64 and the integer types rounded to the nearest float.  Returns 0, or
 * FX_EINVAL (n differs), FX_ENOTSUP (BOOL, F8: msg names the key), FX_EIO (read error or the
 * file shrank).  Values are not checked: see fx_st_first_nonfinite.
 */
int fx_st_read_f32(const struct fx_st_file *f, size_t i, float *dst, size_t n, char *msg,
                   size_t msg_len);

/* The index of the first NaN or infinity in v[0..n), or -1 when all are finite. */
long fx_st_first_nonfinite(const float *v, size_t n);

/*
 * Hashes the whole file (header and data) with SHA-256 through the open descriptor and writes
 * 64 lower-case hex digits and a NUL into hex.  Returns 0 or FX_EIO.
 */
int fx_st_sha256(const struct fx_st_file *f, char hex[65], char *msg, size_t msg_len);

#endif
