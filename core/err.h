/*
 * err.h - the one error list of fluxcgi.
 *
 * Every function in the project that can fail returns an int: 0 on success, or one of the
 * negative FX_E* codes below (or a pointer that is NULL on failure, with the code in an
 * out-parameter where the caller needs it).  The list is an X-macro, so the enum and the
 * message strings cannot drift apart; later modules add their codes here, never a second
 * list.  Codes are stable once released: append new ones, do not renumber.
 *
 * Messages are lower case, without a trailing period, and never name the caller's input
 * (the caller adds context such as a file name).
 */
#ifndef FX_ERR_H
#define FX_ERR_H

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, value, message) */
#define FX_ERRNO_MAP(X)                                                                            \
    X(FX_ENOMEM, -1, "out of memory")                                                              \
    X(FX_EINVAL, -2, "invalid argument")                                                           \
    X(FX_EIO, -3, "input/output error")                                                            \
    X(FX_ENOENT, -4, "no such file or directory")                                                  \
    X(FX_EFORMAT, -5, "malformed data")                                                            \
    X(FX_ERANGE, -6, "value out of range")                                                         \
    X(FX_ETOOBIG, -7, "input too large")                                                           \
    X(FX_EUTF8, -8, "invalid utf-8")                                                               \
    X(FX_ENOTSUP, -9, "operation not supported")                                                   \
    X(FX_EINTERNAL, -10, "internal error")                                                         \
    X(FX_ECANCELED, -11, "cancelled")                                                              \
    X(FX_EDEVICE, -12, "device not available")                                                     \
    X(FX_ERUNTIME, -13, "model runtime error")

enum fx_err {
#define FX_ERR_ENUM_(name, value, msg) name = (value),
    FX_ERRNO_MAP(FX_ERR_ENUM_)
#undef FX_ERR_ENUM_
};

/*
 * Returns the message for an error code: a static string, never NULL, thread-safe.
 * 0 gives "success"; a code that is not in the list gives "unknown error".
 */
const char *fx_strerror(int code);

/*
 * Returns the code's name ("FX_EINVAL"), for logs and stable JSON error codes: a static
 * string, never NULL, thread-safe.  0 gives "FX_OK"; an unknown code gives "FX_EUNKNOWN".
 */
const char *fx_errname(int code);

#ifdef __cplusplus
}
#endif

#endif
