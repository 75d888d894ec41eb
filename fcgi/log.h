/*
 * log.h - the service log: one line per event, "2024-05-01T12:00:00.123Z LEVEL message",
 * appended to a file (or stderr) under a mutex, so lines from threads never interleave.
 *
 * log_reopen is what SIGHUP calls after logrotate has moved the file away: it opens the
 * path again and swaps the descriptor.  All functions are thread-safe; before log_open (or
 * after log_close) lines go to stderr.
 */
#ifndef FX_LOG_H
#define FX_LOG_H

/* Starts logging to path (appending; created 0640), or to stderr when path is NULL or
 * empty.  Returns 0 or FX_EIO (the file cannot be opened: stderr is used). */
int log_open(const char *path);

/* Opens the same path again (after a rotation).  Returns 0 or FX_EIO (the old file stays). */
int log_reopen(void);

/* Closes the file; later lines go to stderr. */
void log_close(void);

/* Writes one line; level is "info", "warn" or "error".  A trailing newline is added. */
__attribute__((format(printf, 2, 3))) void log_printf(const char *level, const char *fmt, ...);

#endif
