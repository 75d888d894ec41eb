/* log.c - the line log, reopened on SIGHUP. */
#include "log.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../core/err.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1; /* -1: stderr */
static char log_path[1024];

static int open_path(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

int log_open(const char *path)
{
    int fd = -1, rc = 0;
    if (path && path[0]) {
        fd = open_path(path);
        if (fd < 0)
            rc = FX_EIO;
    }
    pthread_mutex_lock(&log_lock);
    if (log_fd >= 0)
        close(log_fd);
    log_fd = fd;
    snprintf(log_path, sizeof(log_path), "%s", fd >= 0 ? path : "");
    pthread_mutex_unlock(&log_lock);
    return rc;
}

int log_reopen(void)
{
    int rc = 0;
    pthread_mutex_lock(&log_lock);
    if (log_path[0]) {
        int fd = open_path(log_path);
        if (fd < 0) {
            rc = FX_EIO;
        } else {
            close(log_fd);
            log_fd = fd;
        }
    }
    pthread_mutex_unlock(&log_lock);
    return rc;
}

void log_close(void)
{
    pthread_mutex_lock(&log_lock);
    if (log_fd >= 0)
        close(log_fd);
    log_fd = -1;
    log_path[0] = '\0';
    pthread_mutex_unlock(&log_lock);
}

void log_printf(const char *level, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    size_t n;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    n +=
        (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ %-5s ", ts.tv_nsec / 1000000L, level);
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    n = strlen(line);
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    pthread_mutex_lock(&log_lock);
    if (write(log_fd >= 0 ? log_fd : STDERR_FILENO, line, n) < 0) {
        /* nowhere left to report a failing log */
    }
    pthread_mutex_unlock(&log_lock);
}
