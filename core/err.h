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

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, value, message, code): code is the stable lower-case name that leaves the process
 * (the "code" of an HTTP error body, the error_code column of a failed job). */
#define FX_ERRNO_MAP(X)                                                                            \
    X(FX_ENOMEM, -1, "out of memory", "out_of_memory")                                             \
    X(FX_EINVAL, -2, "invalid argument", "invalid_argument")                                       \
    X(FX_EIO, -3, "input/output error", "io_error")                                                \
    X(FX_ENOENT, -4, "no such file or directory", "not_found")                                     \
    X(FX_EFORMAT, -5, "malformed data", "malformed")                                               \
    X(FX_ERANGE, -6, "value out of range", "out_of_range")                                         \
    X(FX_ETOOBIG, -7, "input too large", "too_large")                                              \
    X(FX_EUTF8, -8, "invalid utf-8", "invalid_utf8")                                               \
    X(FX_ENOTSUP, -9, "operation not supported", "not_supported")                                  \
    X(FX_EINTERNAL, -10, "internal error", "internal")                                             \
    X(FX_ECANCELED, -11, "cancelled", "cancelled")                                                 \
    X(FX_EDEVICE, -12, "device not available", "device_unavailable")                               \
    X(FX_ERUNTIME, -13, "model runtime error", "model_runtime")                                    \
    X(FX_EBUSY, -14, "database busy", "busy")                                                      \
    X(FX_EFULL, -15, "queue full", "queue_full")                                                   \
    X(FX_EPENDING, -16, "not finished yet", "not_finished")                                        \
    X(FX_EFINISHED, -17, "already finished", "already_finished")                                   \
    X(FX_ENOTREADY, -18, "model not ready", "not_ready")                                           \
    X(FX_ESHUTDOWN, -19, "shutting down", "shutting_down")                                         \
    X(FX_EEXPIRED, -20, "result expired", "expired")                                               \
    X(FX_ETIMEDOUT, -21, "timed out", "timeout")                                                   \
    X(FX_EINTERRUPTED, -22, "interrupted too many times", "interrupted")                           \
    X(FX_EBADID, -23, "invalid request id", "invalid_id")                                          \
    X(FX_EMETHOD, -24, "method not allowed", "method_not_allowed")                                 \
    X(FX_ENOSPC, -25, "no space left on device", "insufficient_storage")                           \
    X(FX_EAUTH, -26, "not authenticated", "unauthorized")                                          \
    X(FX_EFORBIDDEN, -27, "not allowed", "forbidden")                                              \
    X(FX_EQUOTA, -28, "quota exceeded", "quota_exceeded")                                          \
    X(FX_ELORA_UNKNOWN, -29, "no such lora", "unknown_lora")                                       \
    X(FX_ELORA_BAD, -30, "lora does not fit the model", "bad_lora")                                \
    X(FX_ELORA_OFF, -31, "loras not configured", "loras_not_configured")

enum fx_err {
#define FX_ERR_ENUM_(name, value, msg, code) name = (value),
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

/*
 * Returns the code's stable external name ("invalid_argument"): a static string, never NULL,
 * thread-safe.  0 gives "ok"; an unknown code gives "unknown".
 */
const char *fx_errcode(int code);

/* The inverse of fx_errcode: the code whose external name is s, or FX_EINTERNAL when none
 * is (s may be NULL).  Thread-safe. */
int fx_errcode_parse(const char *s);

/*
 * Writes a printf-style one-line reason into msg[0..msg_len) (nothing when msg is NULL or
 * msg_len is 0) and returns code, so that an error path reads
 *     return fx_fail(msg, msg_len, FX_EFORMAT, "'%s': bad header", path);
 * Thread-safe.
 */
int fx_fail(char *msg, size_t msg_len, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#ifdef __cplusplus
}
#endif

#endif
