/* worker.c - the generating thread: claim, generate with progress, store, retention. */
#include "worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../core/err.h"
#include "../sql/store.h"
#include "job.h"
#include "log.h"

struct worker {
    const struct fx_config *cfg;
    struct fx_metrics *metrics;
    struct fx_request warm; /* the warm-up request (defaults) */
    void (*on_fatal)(void);
    char name[64];
    char device[32];
    char error[512];
    struct store *st; /* the worker thread's own connection */
    struct fx_pipeline *pipe;
    pthread_t thread;
    bool started, joined;

    atomic_int readiness;
    atomic_int cancel;   /* the pipeline's cancel flag for the running job */
    atomic_int stopping; /* drain asked */

    pthread_mutex_t lock; /* guards the fields below */
    pthread_cond_t wake;  /* worker: a job was queued, or stop */
    pthread_cond_t ended; /* waiters: a job ended, or stop */
    bool pending;         /* a notify came since the last claim */
    uint64_t ended_count;
    char running[STORE_ID_LEN + 1]; /* id of the running job, "" when idle */

    /* progress bookkeeping of the running job (worker thread only) */
    double step_t0;
    int last_step;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

const atomic_int *worker_readiness(const struct worker *w)
{
    return &w->readiness;
}

const char *worker_device(const struct worker *w)
{
    return w->device;
}

const char *worker_error(const struct worker *w)
{
    return w->error;
}

void worker_notify(struct worker *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->lock);
    w->pending = true;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
}

void worker_cancel(struct worker *w, const char *id)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->lock);
    if (w->running[0] && strcmp(w->running, id) == 0)
        atomic_store(&w->cancel, 1);
    pthread_mutex_unlock(&w->lock);
}

int worker_wait(struct worker *w, uint64_t *seen, int wait_ms)
{
    struct timespec dl;
    int rc = 0;
    if (w == NULL) {
        struct timespec ts = {wait_ms / 1000, (long)(wait_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        return 0;
    }
    deadline_in(&dl, wait_ms);
    pthread_mutex_lock(&w->lock);
    while (w->ended_count == *seen && !atomic_load(&w->stopping)) {
        if (pthread_cond_timedwait(&w->ended, &w->lock, &dl) == ETIMEDOUT)
            break;
    }
    *seen = w->ended_count;
    if (atomic_load(&w->stopping))
        rc = FX_ESHUTDOWN;
    pthread_mutex_unlock(&w->lock);
    return rc;
}

static void job_ended(struct worker *w)
{
    pthread_mutex_lock(&w->lock);
    w->running[0] = '\0';
    w->ended_count++;
    pthread_cond_broadcast(&w->ended);
    pthread_mutex_unlock(&w->lock);
}

/* The pipeline's progress hook: record the step, and stop when a cancel was asked in the
 * store (by any process) or the job is no longer ours. */
static void on_progress(void *ud, int step, int steps)
{
    struct worker *w = ud;
    double t = mono();
    bool cancel = false;
    int rc;
    (void)steps;
    if (step > w->last_step)
        metrics_observe_step(w->metrics, (t - w->step_t0) / (double)(step - w->last_step));
    w->step_t0 = t;
    w->last_step = step;
    rc = store_progress(w->st, w->running, step, &cancel);
    if (rc == FX_ENOENT || cancel)
        atomic_store(&w->cancel, 1);
    else if (rc)
        log_printf("warn", "job %s: progress not stored: %s", w->running, store_errmsg(w->st));
}

/* Retention: at most once a second. */
static void sweep(struct worker *w, int64_t *last)
{
    int64_t now = now_ms();
    long n = 0;
    if (now - *last < 1000)
        return;
    *last = now;
    if (store_expire(w->st, now - w->cfg->retention_ms, now, &n))
        log_printf("warn", "retention sweep failed: %s", store_errmsg(w->st));
    else if (n)
        log_printf("info", "expired %ld result%s", n, n == 1 ? "" : "s");
}

/* Runs one claimed job to a terminal state (or back to the queue on a drain). */
static void run_job(struct worker *w, struct store_job *job)
{
    struct fx_request req;
    struct fx_result res = {0};
    struct fx_limits lim;
    struct fx_hooks hooks = {on_progress, w, &w->cancel, NULL};
    char *prompt = NULL, msg[512] = "";
    const char *field;
    double t0 = mono();
    int rc, frc = 0;

    pthread_mutex_lock(&w->lock);
    snprintf(w->running, sizeof(w->running), "%s", job->id);
    atomic_store(&w->cancel, atomic_load(&w->stopping));
    pthread_mutex_unlock(&w->lock);
    w->step_t0 = t0;
    w->last_step = 0;

    rc = job_params_decode(job->params, &req, &prompt);
    if (rc) {
        snprintf(msg, sizeof(msg), "stored params are not valid");
    } else {
        fx_limits_default(&lim, fx_pipeline_manifest(w->pipe));
        rc = fx_request_validate(&req, &lim, &field, msg, sizeof(msg));
    }
    if (rc == 0) {
        log_printf("info", "job %s: start (attempt %d, %dx%d, %d steps, seed %llu)", job->id,
                   job->attempts, req.width, req.height, req.steps, (unsigned long long)req.seed);
        rc = fx_pipeline_generate(w->pipe, &req, &hooks, &res, msg, sizeof(msg));
    }
    if (rc == 0) {
        frc = store_complete(w->st, job->id, w->name, res.png, res.png_len, now_ms());
        metrics_observe_job(w->metrics, 0, mono() - t0);
        log_printf("info", "job %s: completed in %.3fs (%zu bytes)", job->id, mono() - t0,
                   res.png_len);
    } else if (rc == FX_ECANCELED && atomic_load(&w->stopping)) {
        frc = store_requeue(w->st, job->id, w->name);
        log_printf("info", "job %s: back in the queue (draining)", job->id);
    } else if (rc == FX_ECANCELED) {
        snprintf(msg, sizeof(msg), "cancelled while running, after step %d of %d", w->last_step,
                 req.steps);
        frc = store_finish(w->st, job->id, w->name, STORE_CANCELLED, fx_errcode(FX_ECANCELED), msg,
                           now_ms());
        metrics_observe_job(w->metrics, 2, 0);
        log_printf("info", "job %s: %s", job->id, msg);
    } else {
        if (msg[0] == '\0')
            snprintf(msg, sizeof(msg), "%s", fx_strerror(rc));
        frc = store_finish(w->st, job->id, w->name, STORE_FAILED, fx_errcode(rc), msg, now_ms());
        metrics_observe_job(w->metrics, 1, 0);
        log_printf("error", "job %s: failed: %s: %s", job->id, fx_errcode(rc), msg);
    }
    if (frc == FX_ENOENT)
        log_printf("warn", "job %s: no longer ours when it ended; outcome dropped", job->id);
    else if (frc)
        log_printf("error", "job %s: outcome not stored: %s", job->id, store_errmsg(w->st));
    fx_result_release(&res);
    free(prompt);
    job_ended(w);
}

static int load(struct worker *w)
{
    struct fx_pipeline_params pp = {w->cfg->model, w->cfg->device[0] ? w->cfg->device : NULL,
                                    w->cfg->cpu_threads};
    struct fx_result res = {0};
    double t0 = mono();
    int rc;

    rc = fx_pipeline_load(&pp, &w->pipe, w->error, sizeof(w->error));
    if (rc)
        return rc;
    snprintf(w->device, sizeof(w->device), "%s", fx_pipeline_device(w->pipe));
    log_printf("info", "model '%s' loaded on %s in %.2fs", w->cfg->model, w->device, mono() - t0);
    if (w->cfg->warmup_steps > 0) {
        struct fx_request warm = w->warm;
        struct fx_hooks hooks = {NULL, NULL, &w->cancel, NULL};
        t0 = mono();
        warm.steps = w->cfg->warmup_steps;
        rc = fx_pipeline_generate(w->pipe, &warm, &hooks, &res, w->error, sizeof(w->error));
        fx_result_release(&res);
        if (rc)
            return rc;
        log_printf("info", "warm-up generation (%dx%d, %d step%s) took %.2fs", warm.width,
                   warm.height, warm.steps, warm.steps == 1 ? "" : "s", mono() - t0);
    }
    return 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    int64_t last_sweep = 0;
    int rc = load(w);

    if (rc == FX_ECANCELED && atomic_load(&w->stopping)) {
        atomic_store(&w->readiness, WORKER_STOPPED);
        return NULL;
    }
    if (rc) {
        if (w->error[0] == '\0')
            snprintf(w->error, sizeof(w->error), "%s", fx_strerror(rc));
        log_printf("error", "model '%s' not loaded: %s", w->cfg->model, w->error);
        atomic_store(&w->readiness, WORKER_FAILED);
        if (w->on_fatal)
            w->on_fatal();
        return NULL;
    }
    atomic_store(&w->readiness, WORKER_READY);
    log_printf("info", "ready (worker '%s')", w->name);

    while (!atomic_load(&w->stopping)) {
        struct store_job job;
        sweep(w, &last_sweep);
        pthread_mutex_lock(&w->lock);
        w->pending = false;
        pthread_mutex_unlock(&w->lock);
        rc = store_claim(w->st, w->name, now_ms(), &job);
        if (rc == 0) {
            run_job(w, &job);
            store_job_release(&job);
            continue;
        }
        if (rc != FX_ENOENT)
            log_printf("error", "claim failed: %s", store_errmsg(w->st));
        /* idle: wait for a notify, a stop, or a second (jobs queued by other processes,
         * the next sweep) */
        struct timespec dl;
        deadline_in(&dl, 1000);
        pthread_mutex_lock(&w->lock);
        while (!w->pending && !atomic_load(&w->stopping))
            if (pthread_cond_timedwait(&w->wake, &w->lock, &dl) == ETIMEDOUT)
                break;
        pthread_mutex_unlock(&w->lock);
    }
    atomic_store(&w->readiness, WORKER_STOPPED);
    return NULL;
}

int worker_start(const struct fx_config *cfg, struct fx_metrics *metrics,
                 const struct fx_request *req_defaults, void (*on_fatal)(void), struct worker **out,
                 char *msg, size_t msg_len)
{
    struct worker *w = calloc(1, sizeof(*w));
    pthread_condattr_t ca;
    long requeued = 0, failed = 0;
    int rc;

    *out = NULL;
    if (w == NULL)
        return FX_ENOMEM;
    w->cfg = cfg;
    w->metrics = metrics;
    w->warm = *req_defaults;
    w->on_fatal = on_fatal;
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->wake, &ca);
    pthread_cond_init(&w->ended, &ca);
    pthread_condattr_destroy(&ca);
    if (cfg->worker_name[0]) {
        snprintf(w->name, sizeof(w->name), "%s", cfg->worker_name);
    } else {
        char host[48] = "localhost";
        gethostname(host, sizeof(host) - 1);
        snprintf(w->name, sizeof(w->name), "%s/%s", host, cfg->device[0] ? cfg->device : "auto");
    }
    rc = store_open(cfg->db, (int)cfg->busy_timeout_ms, &w->st, msg, msg_len);
    if (rc)
        goto out;
    rc = store_recover(w->st, w->name, cfg->max_attempts, now_ms(), &requeued, &failed);
    if (rc) {
        snprintf(msg, msg_len, "restart recovery failed: %s", store_errmsg(w->st));
        goto out;
    }
    if (requeued || failed)
        log_printf("info", "restart recovery: %ld job%s re-queued, %ld failed (worker '%s')",
                   requeued, requeued == 1 ? "" : "s", failed, w->name);
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        rc = FX_ENOMEM;
        snprintf(msg, msg_len, "cannot start the worker thread");
        goto out;
    }
    w->started = true;
    *out = w;
    w = NULL;
out:
    worker_free(w);
    return rc;
}

void worker_stop(struct worker *w)
{
    if (w == NULL || w->joined)
        return;
    pthread_mutex_lock(&w->lock);
    atomic_store(&w->stopping, 1);
    atomic_store(&w->cancel, 1);
    pthread_cond_broadcast(&w->wake);
    pthread_cond_broadcast(&w->ended);
    pthread_mutex_unlock(&w->lock);
    if (w->started)
        pthread_join(w->thread, NULL);
    w->joined = true;
}

void worker_free(struct worker *w)
{
    if (w == NULL)
        return;
    worker_stop(w);
    fx_pipeline_free(w->pipe);
    store_close(w->st);
    pthread_cond_destroy(&w->wake);
    pthread_cond_destroy(&w->ended);
    pthread_mutex_destroy(&w->lock);
    free(w);
}
