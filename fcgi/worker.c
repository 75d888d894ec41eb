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
#include "../core/manifest.h"
#include "../sql/store.h"
#include "job.h"
#include "log.h"
#include "lora_dir.h"

struct worker {
    const struct fx_config *cfg;
    struct fx_metrics *metrics;
    struct fx_request warm; /* the warm-up request (defaults) */
    void (*on_fatal)(void);
    char name[64];
    char device[32];
    char placement[20]; /* the placement in use ("auto" resolved) */
    char weights[16];   /* the transformer's weight format */
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

    bool store_degraded;   /* an outcome is waiting to be stored (retrying) */
    char store_error[256]; /* why, while store_degraded */

    /* progress bookkeeping of the running job (worker thread only) */
    double step_t0;
    int last_step;
    int device_streak; /* jobs in a row that failed with a device / runtime error */
};

/* Retry of an outcome the store refused: first wait, and the most. */
#define RETRY_FIRST_MS 50
#define RETRY_MAX_MS 5000
/* Audit retention deletes at most this many rows per transaction, and this many
 * transactions per sweep, so one sweep never holds the write lock for long. */
#define PURGE_BATCH 500
#define PURGE_BATCHES 8
/* The idle sweep checkpoints the WAL at most this often (seconds). */
#define CHECKPOINT_EVERY_S 10.0

/* Wall-clock time, only for the timestamps stored in jobs; intervals use mono(). */
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

const char *worker_placement(const struct worker *w)
{
    return w->placement;
}

const char *worker_weights(const struct worker *w)
{
    return w->weights;
}

const char *worker_error(const struct worker *w)
{
    return w->error;
}

bool worker_store_status(struct worker *w, char *msg, size_t msg_len)
{
    bool ok;
    pthread_mutex_lock(&w->lock);
    ok = !w->store_degraded;
    if (msg && msg_len)
        snprintf(msg, msg_len, "%s", ok ? "" : w->store_error);
    pthread_mutex_unlock(&w->lock);
    return ok;
}

int worker_device_streak(int streak, int rc)
{
    if (rc == 0)
        return 0;
    if (rc == FX_EDEVICE || rc == FX_ERUNTIME)
        return streak + 1;
    return streak; /* a bad request or a cancel says nothing about the device */
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
    rc = store_progress(w->st, w->running, w->name, step, now_ms(), w->cfg->lease_ms, &cancel);
    if (rc == FX_ENOENT || cancel)
        atomic_store(&w->cancel, 1);
    else if (rc)
        log_printf("warn", "job %s: progress not stored: %s", w->running, store_errmsg(w->st));
}

/* Retention, audit retention and lost leases: at most once a second (monotonic clock: a
 * wall-clock step must not stop or storm the sweep). */
static void sweep(struct worker *w, double *last)
{
    struct store_recovery r = {0, 0, 0};
    double t = mono();
    int64_t now = now_ms();
    long n = 0;
    if (*last > 0 && t - *last < 1.0)
        return;
    *last = t;
    if (store_expire(w->st, now - w->cfg->retention_ms, now, &n))
        log_printf("warn", "retention sweep failed: %s", store_errmsg(w->st));
    else if (n)
        log_printf("info", "expired %ld result%s", n, n == 1 ? "" : "s");
    if (store_reclaim(w->st, w->cfg->max_attempts, now, &r))
        log_printf("warn", "lease sweep failed: %s", store_errmsg(w->st));
    else if (r.requeued || r.failed || r.cancelled)
        log_printf("info",
                   "lost leases: %ld job%s re-queued, %ld failed, %ld cancelled (their worker "
                   "stopped renewing them)",
                   r.requeued, r.requeued == 1 ? "" : "s", r.failed, r.cancelled);
    if (w->cfg->audit_retention_ms > 0) {
        long total = 0;
        for (int b = 0; b < PURGE_BATCHES; b++) {
            n = 0;
            if (store_purge(w->st, now - w->cfg->audit_retention_ms, PURGE_BATCH, &n)) {
                log_printf("warn", "audit retention sweep failed: %s", store_errmsg(w->st));
                break;
            }
            total += n;
            if (n < PURGE_BATCH)
                break;
        }
        if (total)
            log_printf("info", "deleted %ld old job row%s (audit retention)", total,
                       total == 1 ? "" : "s");
    }
}

/* While idle: checkpoint the WAL (PASSIVE: never waits for readers nor blocks writers), so
 * that it is reset and truncated (journal_size_limit) outside the request path. */
static void idle_checkpoint(struct worker *w, double *last)
{
    double t = mono();
    int rc;
    if (*last > 0 && t - *last < CHECKPOINT_EVERY_S)
        return;
    *last = t;
    /* FX_EBUSY: another process is checkpointing, which is as good */
    rc = store_checkpoint(w->st, NULL, NULL);
    if (rc && rc != FX_EBUSY)
        log_printf("warn", "wal checkpoint failed: %s", store_errmsg(w->st));
}

/* What a finished job leaves to store. */
enum outcome_kind { OUT_COMPLETED, OUT_FAILED, OUT_CANCELLED, OUT_REQUEUE };

struct outcome {
    enum outcome_kind kind;
    const struct fx_result *res; /* OUT_COMPLETED */
    const char *code, *message;  /* OUT_FAILED, OUT_CANCELLED */
    bool cancelled;              /* OUT_REQUEUE: the store cancelled it instead */
};

static int write_outcome(struct worker *w, const char *id, struct outcome *o)
{
    switch (o->kind) {
    case OUT_COMPLETED:
        return store_complete(w->st, id, w->name, o->res->png, o->res->png_len, now_ms());
    case OUT_FAILED:
        return store_finish(w->st, id, w->name, STORE_FAILED, o->code, o->message, now_ms());
    case OUT_CANCELLED:
        return store_finish(w->st, id, w->name, STORE_CANCELLED, o->code, o->message, now_ms());
    default:
        return store_requeue(w->st, id, w->name, now_ms(), &o->cancelled);
    }
}

static void set_store_degraded(struct worker *w, bool degraded, const char *why)
{
    pthread_mutex_lock(&w->lock);
    w->store_degraded = degraded;
    snprintf(w->store_error, sizeof(w->store_error), "%s", degraded ? why : "");
    pthread_mutex_unlock(&w->lock);
}

/*
 * Stores an outcome, retrying with backoff (RETRY_FIRST_MS doubling to RETRY_MAX_MS) while
 * the store refuses it (disk full, a lock held past busy_timeout): the image is kept in
 * memory meanwhile, and the worker claims nothing else.  Gives up only when the process
 * stops; the job then stays running and is re-run after the restart (store_recover).
 * Returns 0, FX_ENOENT (the job is no longer ours), or the last error when stopping.
 */
static int persist(struct worker *w, const char *id, struct outcome *o)
{
    int delay = RETRY_FIRST_MS, rc;
    bool degraded = false;
    for (;;) {
        rc = write_outcome(w, id, o);
        metrics_store_write(w->metrics, rc == 0 || rc == FX_ENOENT);
        if (rc == 0 || rc == FX_ENOENT)
            break;
        char why[256];
        snprintf(why, sizeof(why), "job %s: outcome not stored: %s: %s", id, fx_errcode(rc),
                 store_errmsg(w->st));
        if (!degraded)
            log_printf("error", "%s; retrying until it is", why);
        degraded = true;
        set_store_degraded(w, true, why);
        if (atomic_load(&w->stopping)) {
            log_printf("error",
                       "job %s: stopping with its outcome not stored; it runs again "
                       "after the restart",
                       id);
            return rc;
        }
        struct timespec dl;
        deadline_in(&dl, delay);
        pthread_mutex_lock(&w->lock);
        while (!atomic_load(&w->stopping))
            if (pthread_cond_timedwait(&w->wake, &w->lock, &dl) == ETIMEDOUT)
                break;
        pthread_mutex_unlock(&w->lock);
        delay = delay * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : delay * 2;
    }
    if (degraded) {
        set_store_degraded(w, false, NULL);
        log_printf("info", "job %s: outcome stored after the store recovered", id);
    }
    return rc;
}

/* The device failed device_failures_fatal jobs in a row: the worker fails (/ping 503) and
 * the process is asked to exit, so that a supervisor restarts it on a fresh device. */
static void fail_worker(struct worker *w, const char *last)
{
    pthread_mutex_lock(&w->lock);
    snprintf(w->error, sizeof(w->error),
             "%d jobs in a row failed with a device or model runtime error; last: %s",
             w->device_streak, last);
    pthread_mutex_unlock(&w->lock);
    log_printf("error", "worker failed: %s", w->error);
    atomic_store(&w->readiness, WORKER_FAILED);
    if (w->on_fatal)
        w->on_fatal();
}

/* The files of a job's LoRAs, resolved in lora_dir now (the request was checked when it was
 * queued, but the directory may have changed since, or the config): paths[i] holds lora i's.
 * Returns 0, or FX_ELORA_OFF / FX_ELORA_UNKNOWN / FX_ELORA_BAD with msg. */
static int resolve_loras(struct worker *w, struct job_loras *jl, char (*paths)[LORA_PATH_MAX],
                         char *msg, size_t msg_len)
{
    if (jl->n == 0)
        return 0;
    if (w->cfg->lora_dir[0] == '\0')
        return fx_fail(msg, msg_len, FX_ELORA_OFF,
                       "loras: this service has no LoRA directory (config key lora_dir)");
    for (size_t i = 0; i < jl->n; i++) {
        struct lora_file f;
        char why[400];
        int rc = lora_file_open(w->cfg->lora_dir, jl->name[i], &f, why, sizeof(why));
        if (rc)
            return fx_fail(msg, msg_len, rc == FX_ELORA_UNKNOWN ? rc : FX_ELORA_BAD,
                           "loras[%zu]: %s", i, why);
        lora_file_close(&f);
        memcpy(paths[i], f.path, sizeof(f.path));
        jl->lora[i].path = paths[i];
    }
    return 0;
}

/* Runs one claimed job to a terminal state (or back to the queue on a drain). */
static void run_job(struct worker *w, struct store_job *job)
{
    struct fx_request req;
    struct fx_result res = {0};
    struct fx_limits lim;
    struct fx_hooks hooks = {on_progress, w, &w->cancel, NULL};
    struct job_loras loras;
    char paths[FX_LORA_MAX][LORA_PATH_MAX];
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

    rc = job_params_decode_ex(job->params, &req, &prompt, &loras);
    if (rc) {
        snprintf(msg, sizeof(msg), "stored params are not valid");
    } else {
        rc = resolve_loras(w, &loras, paths, msg, sizeof(msg));
    }
    if (rc == 0) {
        fx_limits_default(&lim, fx_pipeline_manifest(w->pipe));
        rc = fx_request_validate(&req, &lim, &field, msg, sizeof(msg));
    }
    if (rc == 0) {
        log_printf("info", "job %s: start (attempt %d, %dx%d, %d steps, seed %llu, %zu LoRA%s)",
                   job->id, job->attempts, req.width, req.height, req.steps,
                   (unsigned long long)req.seed, req.n_loras, req.n_loras == 1 ? "" : "s");
        rc = fx_pipeline_generate(w->pipe, &req, &hooks, &res, msg, sizeof(msg));
        /* a LoRA file that went bad after the request was checked (truncated, NaN, another
         * file under the name) fails this job alone: the device is not at fault */
        if (req.n_loras > 0 && rc == FX_ENOENT)
            rc = FX_ELORA_UNKNOWN;
        else if (req.n_loras > 0 && (rc == FX_EFORMAT || rc == FX_ETOOBIG || rc == FX_ENOTSUP))
            rc = FX_ELORA_BAD;
    }
    struct outcome o = {OUT_COMPLETED, &res, NULL, NULL, false};
    if (rc == 0) {
        w->device_streak = 0;
        if (req.n_loras > 0)
            metrics_lora(w->metrics, res.lora_skipped ? METRICS_LORA_KEPT : METRICS_LORA_APPLIED,
                         res.t_lora);
    } else if (rc == FX_ECANCELED && atomic_load(&w->stopping)) {
        o.kind = OUT_REQUEUE;
    } else if (rc == FX_ECANCELED) {
        snprintf(msg, sizeof(msg), "cancelled while running, after step %d of %d", w->last_step,
                 req.steps);
        o = (struct outcome){OUT_CANCELLED, NULL, fx_errcode(FX_ECANCELED), msg, false};
    } else {
        if (msg[0] == '\0')
            snprintf(msg, sizeof(msg), "%s", fx_strerror(rc));
        w->device_streak = worker_device_streak(w->device_streak, rc);
        /* the job that tips the streak goes back to the queue: the device, not the job, is
         * at fault, and another worker (or this one after a restart) runs it */
        o = (struct outcome){w->device_streak >= w->cfg->device_failures_fatal ? OUT_REQUEUE
                                                                               : OUT_FAILED,
                             NULL, fx_errcode(rc), msg, false};
    }
    frc = persist(w, job->id, &o);
    if (frc == 0) {
        /* logged and counted only once the outcome is committed */
        if (o.kind == OUT_COMPLETED) {
            metrics_observe_job(w->metrics, 0, mono() - t0);
            char lora[64] = "";
            /* what the LoRA set cost: a patch (and restore), or nothing when it was applied */
            if (req.n_loras > 0)
                snprintf(lora, sizeof(lora), ", LoRAs %s",
                         res.lora_skipped ? "already applied" : "applied");
            if (req.n_loras > 0 && !res.lora_skipped)
                snprintf(lora + strlen(lora), sizeof(lora) - strlen(lora), " in %.3fs", res.t_lora);
            log_printf("info", "job %s: completed in %.3fs (%zu bytes%s)", job->id, mono() - t0,
                       res.png_len, lora);
        } else if (o.kind == OUT_CANCELLED || (o.kind == OUT_REQUEUE && o.cancelled)) {
            metrics_observe_job(w->metrics, 2, 0);
            log_printf("info", "job %s: %s", job->id,
                       o.kind == OUT_CANCELLED ? msg : "cancelled (asked before the drain)");
        } else if (o.kind == OUT_FAILED) {
            metrics_observe_job(w->metrics, 1, 0);
            log_printf("error", "job %s: failed: %s: %s", job->id, o.code, msg);
        } else if (rc == FX_ECANCELED) {
            log_printf("info", "job %s: back in the queue (draining)", job->id);
        } else {
            log_printf("error", "job %s: back in the queue after a device error: %s: %s", job->id,
                       o.code, msg);
        }
    } else if (frc == FX_ENOENT) {
        log_printf("warn", "job %s: no longer ours when it ended; outcome dropped", job->id);
    }
    if (rc != 0 && rc != FX_ECANCELED && w->device_streak >= w->cfg->device_failures_fatal)
        fail_worker(w, msg);
    fx_result_release(&res);
    free(prompt);
    job_ended(w);
}

static int load(struct worker *w)
{
    struct fx_pipeline_params pp = {w->cfg->model,
                                    w->cfg->device[0] ? w->cfg->device : NULL,
                                    w->cfg->cpu_threads,
                                    w->cfg->placement,
                                    (int64_t)w->cfg->device_memory,
                                    w->warm.width,
                                    w->warm.height};
    struct fx_result res = {0};
    double t0 = mono();
    int rc;

    rc = fx_pipeline_load(&pp, &w->pipe, w->error, sizeof(w->error));
    if (rc)
        return rc;
    snprintf(w->device, sizeof(w->device), "%s", fx_pipeline_device(w->pipe));
    snprintf(w->placement, sizeof(w->placement), "%s", fx_pipeline_placement(w->pipe));
    snprintf(w->weights, sizeof(w->weights), "%s",
             manifest_weights_name(fx_pipeline_manifest(w->pipe)->weights));
    log_printf("info", "model '%s' loaded on %s (placement %s, weights %s) in %.2fs", w->cfg->model,
               w->device, w->placement, w->weights, mono() - t0);
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
    double last_sweep = 0, last_checkpoint = 0;
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

    while (!atomic_load(&w->stopping) && atomic_load(&w->readiness) == WORKER_READY) {
        struct store_job job;
        sweep(w, &last_sweep);
        pthread_mutex_lock(&w->lock);
        w->pending = false;
        pthread_mutex_unlock(&w->lock);
        rc = store_claim(w->st, w->name, now_ms(), w->cfg->lease_ms, &job);
        if (rc == 0) {
            run_job(w, &job);
            store_job_release(&job);
            continue;
        }
        if (rc != FX_ENOENT)
            log_printf("error", "claim failed: %s", store_errmsg(w->st));
        else
            idle_checkpoint(w, &last_checkpoint);
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
    if (atomic_load(&w->readiness) == WORKER_READY)
        atomic_store(&w->readiness, WORKER_STOPPED);
    return NULL;
}

int worker_start(const struct fx_config *cfg, struct fx_metrics *metrics,
                 const struct fx_request *req_defaults, void (*on_fatal)(void), struct worker **out,
                 char *msg, size_t msg_len)
{
    struct worker *w = calloc(1, sizeof(*w));
    pthread_condattr_t ca;
    struct store_recovery r = {0, 0, 0};
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
    rc = store_recover(w->st, w->name, cfg->max_attempts, now_ms(), &r);
    if (rc) {
        snprintf(msg, msg_len, "restart recovery failed: %s", store_errmsg(w->st));
        goto out;
    }
    if (r.requeued || r.failed || r.cancelled)
        log_printf("info",
                   "restart recovery: %ld job%s re-queued, %ld failed, %ld cancelled (worker "
                   "'%s')",
                   r.requeued, r.requeued == 1 ? "" : "s", r.failed, r.cancelled, w->name);
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
