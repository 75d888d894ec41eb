/*
 * metrics.h - in-process counters and latency histograms, rendered as Prometheus text.
 *
 * What the process measures itself (denoising step time, job run time, HTTP answers by
 * status) lives here; what SQLite knows (jobs by state, queue depth) is passed to
 * metrics_render by the caller, so every process sharing a database reports the same
 * queue; fluxcgi_jobs is therefore the same series in every process of one store: take it
 * from one process (max by state), never sum it.  The fluxcgi_worker_* series are per
 * process and sum.  Histograms have fixed buckets (seconds, below).  All functions are thread-safe.
 */
#ifndef FX_METRICS_H
#define FX_METRICS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define METRICS_BUCKETS 14
#define METRICS_STATUS_MAX 600

struct metrics_hist {
    uint64_t counts[METRICS_BUCKETS + 1]; /* the last one is +Inf */
    double sum;
    uint64_t n;
};

struct fx_metrics {
    pthread_mutex_t lock;
    struct metrics_hist step, job;
    uint64_t http[METRICS_STATUS_MAX];
    uint64_t jobs_completed, jobs_failed, jobs_cancelled;
    uint64_t store_write_failures; /* outcome writes the store refused */
    int store_degraded;            /* 1 while an outcome waits to be stored */
    /* the FastCGI front end (fcgi/server.c), updated without the lock */
    _Atomic uint64_t conns_accepted, conns_refused, conns_timed_out;
    _Atomic long conns_open, requests_parked;
    /* access control (fcgi/access.c, fcgi/webhook.c), updated without the lock */
    _Atomic uint64_t auth_failures[6]; /* by enum metrics_auth_failure */
    _Atomic uint64_t webhooks[4];      /* by enum metrics_webhook */
    /* LoRAs (fcgi/parse.c, fcgi/worker.c), updated without the lock */
    _Atomic uint64_t loras[5];      /* by enum metrics_lora */
    _Atomic uint64_t lora_apply_us; /* time spent making jobs' LoRA sets the applied one */
};

/* Why a request's key was refused. */
enum metrics_auth_failure {
    METRICS_AUTH_MISSING,   /* no key presented */
    METRICS_AUTH_MALFORMED, /* a header that is not 'Bearer KEY' */
    METRICS_AUTH_UNKNOWN,   /* no such key, or the secret does not match */
    METRICS_AUTH_REVOKED,
    METRICS_AUTH_EXPIRED,
    METRICS_AUTH_FORBIDDEN /* a key that is not an admin key where one is needed */
};

/* What one webhook delivery attempt came to. */
enum metrics_webhook {
    METRICS_WEBHOOK_DELIVERED,
    METRICS_WEBHOOK_RETRIED, /* failed; another attempt is due later */
    METRICS_WEBHOOK_FAILED,  /* failed for the last time */
    METRICS_WEBHOOK_DROPPED  /* not sent: superseded, or its host is no longer allowed */
};

/* What became of a LoRA set: a job's (applied: patched in; kept: already in place), or a
 * request's refused for one of its LoRAs (by the error code). */
enum metrics_lora {
    METRICS_LORA_APPLIED,
    METRICS_LORA_KEPT,
    METRICS_LORA_UNKNOWN, /* unknown_lora */
    METRICS_LORA_BAD,     /* bad_lora */
    METRICS_LORA_OFF      /* loras_not_configured */
};

/* Counts a LoRA set (m may be NULL); seconds: what applying it took (applied only). */
void metrics_lora(struct fx_metrics *m, enum metrics_lora what, double seconds);

/* Counts a refused key (m may be NULL). */
void metrics_auth_failure(struct fx_metrics *m, enum metrics_auth_failure why);

/* Counts a webhook attempt (m may be NULL). */
void metrics_webhook(struct fx_metrics *m, enum metrics_webhook what);

/* Zeroes m and initialises its lock; metrics_release undoes it. */
void metrics_init(struct fx_metrics *m);
void metrics_release(struct fx_metrics *m);

/* One denoising step took seconds. */
void metrics_observe_step(struct fx_metrics *m, double seconds);

/* A job ended: outcome 0 completed (run time observed), 1 failed, 2 cancelled. */
void metrics_observe_job(struct fx_metrics *m, int outcome, double seconds);

/* The worker tried to store an outcome: ok, or refused (counted; degraded until the next
 * success). */
void metrics_store_write(struct fx_metrics *m, bool ok);

/* One HTTP answer with this status. */
void metrics_count_http(struct fx_metrics *m, int status);

/* What the caller adds from SQLite and the worker. */
struct metrics_extra {
    long by_state[6]; /* queued, running, completed, failed, cancelled, expired */
    long capacity;
    int ready; /* 1: model loaded and warmed up */
    /* the placement and weight format in use (fluxcgi_placement_info); NULL: not loaded,
     * the gauge is left out */
    const char *placement, *weights;
};

/*
 * Renders everything as Prometheus text format 0.0.4.  Returns a malloc'd NUL-terminated
 * string (caller frees) and sets *len, or NULL when out of memory.
 */
char *metrics_render(struct fx_metrics *m, const struct metrics_extra *x, size_t *len);

#endif
