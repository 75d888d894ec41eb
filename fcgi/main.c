/*
 * fluxcgi - the FastCGI service: build/fluxcgi --config FILE
 *
 * One process per GPU.  It listens on the config's socket (a unix socket it binds itself,
 * or HOST:PORT), or on fd 0 when the config names none, which is how spawn-fcgi and
 * lighttpd's bin-path hand a socket over.  N acceptor threads share it through
 * FCGX_Accept_r, each with its own SQLite connection; they parse, validate and answer from
 * the store (fcgi/api.h) and never touch the model.  The worker thread (fcgi/worker.h) owns
 * the model.
 *
 * Signals: SIGTERM or SIGINT drain (stop accepting, put the running job back in the queue,
 * answer waiting POST /generate requests with 503, exit 0); SIGHUP reopens the log file.
 * Exit status: 0 after a drain, 1 when the model cannot be loaded or the store cannot be
 * opened, 2 for a bad command line or config.
 */
#include <errno.h>
#include <fcgiapp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/err.h"
#include "../core/manifest.h"
#include "../core/version.h"
#include "../sql/store.h"
#include "api.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "worker.h"

/* Bodies over max_body are read and dropped up to this much (so the web server sees a
 * clean answer), then the connection is cut. */
#define DRAIN_MAX (64L * 1024 * 1024)

struct service {
    struct fx_config cfg;
    struct fx_manifest *man;
    struct fx_metrics metrics;
    struct api_ctx api;
    struct worker *worker;
    int listen_fd;
    pthread_mutex_t accept_lock;
    atomic_int stopping;
};

static atomic_int fatal_exit;

static void on_fatal(void)
{
    atomic_store(&fatal_exit, 1);
    kill(getpid(), SIGTERM);
}

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 413:
        return "Payload Too Large";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

/* CONTENT_LENGTH as a number; -1 when absent or malformed. */
static long content_length(const char *s)
{
    long n = 0;
    if (s == NULL || *s == '\0')
        return 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || n > DRAIN_MAX * 16)
            return -1;
        n = n * 10 + (*s - '0');
    }
    return n;
}

static void serve(struct service *svc, struct store *st, FCGX_Request *req)
{
    struct api_request rq = {0};
    struct api_response rs = {0};
    char *body = NULL;
    long len = content_length(FCGX_GetParam("CONTENT_LENGTH", req->envp));

    rq.method = FCGX_GetParam("REQUEST_METHOD", req->envp);
    rq.uri = FCGX_GetParam("REQUEST_URI", req->envp);
    if (len < 0 || len > (long)svc->cfg.max_body) {
        /* read what the client sent and drop it */
        char sink[16384];
        long left = len < 0 ? DRAIN_MAX : len;
        while (left > 0) {
            int n = FCGX_GetStr(sink, left < (long)sizeof(sink) ? (int)left : (int)sizeof(sink),
                                req->in);
            if (n <= 0)
                break;
            left -= n;
        }
        rq.body_too_large = true;
    } else if (len > 0) {
        body = malloc((size_t)len);
        if (body) {
            int n = FCGX_GetStr(body, (int)len, req->in);
            rq.body = body;
            rq.body_len = n > 0 ? (size_t)n : 0;
        }
    }
    if (len > 0 && body == NULL && !rq.body_too_large) {
        rs.status = 500;
        rs.content_type = "application/json";
        rs.body = strdup("{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of memory\"}}");
        rs.body_len = rs.body ? strlen(rs.body) : 0;
    } else {
        api_handle(&svc->api, st, &rq, &rs);
    }
    /* libfcgi's FCGX_FPrintF has its own printf without %zu: format here */
    char head[1024];
    int n =
        snprintf(head, sizeof(head), "Status: %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n",
                 rs.status, reason(rs.status), rs.content_type ? rs.content_type : "text/plain",
                 rs.body_len);
    for (int i = 0; i < rs.n_headers && n > 0 && (size_t)n < sizeof(head); i++)
        n += snprintf(head + n, sizeof(head) - (size_t)n, "%s: %s\r\n", rs.headers[i].name,
                      rs.headers[i].value);
    if (rs.content_type && strcmp(rs.content_type, "application/json") == 0 && n > 0 &&
        (size_t)n < sizeof(head))
        n += snprintf(head + n, sizeof(head) - (size_t)n, "Cache-Control: no-store\r\n");
    FCGX_PutS(head, req->out);
    FCGX_PutS("\r\n", req->out);
    if (rs.body_len)
        FCGX_PutStr(rs.body, (int)rs.body_len, req->out);
    metrics_count_http(&svc->metrics, rs.status);
    if (rs.status >= 500)
        log_printf("warn", "%s %.200s -> %d %.300s", rq.method ? rq.method : "-",
                   rq.uri ? rq.uri : "-", rs.status,
                   rs.content_type && rs.content_type[0] == 'a' ? rs.body : "");
    api_response_release(&rs);
    free(body);
}

static void *acceptor(void *arg)
{
    struct service *svc = arg;
    struct store *st = NULL;
    FCGX_Request req;
    char msg[512];

    if (store_open(svc->cfg.db, (int)svc->cfg.busy_timeout_ms, &st, msg, sizeof(msg))) {
        log_printf("error", "acceptor: %s", msg);
        kill(getpid(), SIGTERM);
        return NULL;
    }
    FCGX_InitRequest(&req, svc->listen_fd, FCGI_FAIL_ACCEPT_ON_INTR);
    for (;;) {
        int rc;
        pthread_mutex_lock(&svc->accept_lock);
        rc = atomic_load(&svc->stopping) ? -1 : FCGX_Accept_r(&req);
        pthread_mutex_unlock(&svc->accept_lock);
        if (rc < 0)
            break;
        serve(svc, st, &req);
        FCGX_Finish_r(&req);
    }
    FCGX_Free(&req, 0);
    store_close(st);
    return NULL;
}

static int open_listener(struct service *svc, char *msg, size_t len)
{
    const char *s = svc->cfg.socket;
    bool unix_path = s[0] && strchr(s, '/') != NULL;
    if (s[0] == '\0') {
        svc->listen_fd = 0; /* handed over by spawn-fcgi / lighttpd */
        return 0;
    }
    if (unix_path) {
        struct stat sb;
        if (lstat(s, &sb) == 0 && S_ISSOCK(sb.st_mode))
            unlink(s); /* left by a crash */
    }
    svc->listen_fd = FCGX_OpenSocket(s, svc->cfg.backlog);
    if (svc->listen_fd < 0) {
        snprintf(msg, len, "cannot listen on '%s': %s", s, strerror(errno));
        return FX_EIO;
    }
    if (unix_path && chmod(s, (mode_t)svc->cfg.socket_mode) != 0) {
        snprintf(msg, len, "cannot chmod '%s': %s", s, strerror(errno));
        return FX_EIO;
    }
    return 0;
}

static void usage(FILE *f)
{
    fputs("usage: fluxcgi --config FILE [--check]\n"
          "       --check  read the config and the model manifest, then exit\n",
          f);
}

int main(int argc, char **argv)
{
    static struct service svc;
    const char *config = NULL;
    bool check = false;
    pthread_t *threads = NULL;
    int n_threads = 0, status = 1, rc, sig;
    sigset_t sigs;
    char msg[2048] = "";

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config = argv[++i];
        } else if (strcmp(argv[i], "--check") == 0) {
            check = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            puts("fluxcgi " FX_VERSION);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (config == NULL) {
        usage(stderr);
        return 2;
    }
    rc = config_load(config, &svc.cfg, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxcgi: %s\n", msg[0] ? msg : fx_strerror(rc));
        return 2;
    }
    rc = manifest_load(svc.cfg.model, &svc.man, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxcgi: model '%s': %s\n", svc.cfg.model, msg[0] ? msg : fx_strerror(rc));
        return 2;
    }
    rc = api_ctx_limits(&svc.api, svc.man, &svc.cfg, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxcgi: %s: %s\n", config, msg);
        manifest_free(svc.man);
        return 2;
    }
    if (check) {
        printf("fluxcgi: %s: ok (model '%s', defaults %dx%d, %d steps)\n", config, svc.man->name,
               svc.api.defaults.width, svc.api.defaults.height, svc.api.defaults.steps);
        manifest_free(svc.man);
        return 0;
    }
    if (log_open(svc.cfg.log))
        fprintf(stderr, "fluxcgi: cannot open log '%s'; logging to stderr\n", svc.cfg.log);

    /* Signals go to the main thread only (sigwait below); the others inherit the mask. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    metrics_init(&svc.metrics);
    pthread_mutex_init(&svc.accept_lock, NULL);
    svc.listen_fd = -1;
    if (FCGX_Init() != 0) {
        log_printf("error", "FCGX_Init failed");
        goto out;
    }
    if (open_listener(&svc, msg, sizeof(msg))) {
        log_printf("error", "%s", msg);
        goto out;
    }
    {
        struct fx_request warm = svc.api.defaults;
        warm.prompt = "a warm-up image";
        warm.prompt_len = strlen(warm.prompt);
        warm.seed = 0;
        warm.has_seed = true;
        rc = worker_start(&svc.cfg, &svc.metrics, &warm, on_fatal, &svc.worker, msg, sizeof(msg));
    }
    if (rc) {
        log_printf("error", "%s", msg);
        goto out;
    }
    svc.api.cfg = &svc.cfg;
    svc.api.model_name = svc.man->name;
    svc.api.worker = svc.worker;
    svc.api.readiness = worker_readiness(svc.worker);
    svc.api.metrics = &svc.metrics;
    log_printf("info", "fluxcgi %s: listening on %s, %d threads, db '%s', model '%s'", FX_VERSION,
               svc.cfg.socket[0] ? svc.cfg.socket : "fd 0", svc.cfg.threads, svc.cfg.db,
               svc.cfg.model);

    threads = calloc((size_t)svc.cfg.threads, sizeof(*threads));
    for (int i = 0; threads && i < svc.cfg.threads; i++)
        if (pthread_create(&threads[i], NULL, acceptor, &svc) == 0)
            n_threads++;
    if (n_threads == 0) {
        log_printf("error", "cannot start the acceptor threads");
        goto out;
    }

    for (;;) {
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            if (log_reopen())
                log_printf("warn", "cannot reopen the log '%s'", svc.cfg.log);
            else
                log_printf("info", "log reopened");
            continue;
        }
        break;
    }
    log_printf("info", "signal %d: draining", sig);
    status = atomic_load(&fatal_exit) ? 1 : 0;
out:
    /* stop accepting: a shut-down listening socket makes accept() fail in every thread */
    atomic_store(&svc.stopping, 1);
    if (svc.listen_fd >= 0)
        shutdown(svc.listen_fd, SHUT_RDWR);
    worker_stop(svc.worker); /* re-queues the running job, wakes POST /generate waiters */
    for (int i = 0; i < n_threads; i++)
        pthread_join(threads[i], NULL);
    if (svc.listen_fd > 0) {
        close(svc.listen_fd);
        if (svc.cfg.socket[0] && strchr(svc.cfg.socket, '/'))
            unlink(svc.cfg.socket);
    }
    worker_free(svc.worker);
    free(threads);
    log_printf("info", "stopped");
    metrics_release(&svc.metrics);
    pthread_mutex_destroy(&svc.accept_lock);
    manifest_free(svc.man);
    log_close();
    return status;
}
