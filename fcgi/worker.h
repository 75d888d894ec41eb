/*
 * worker.h - the one thread per process that owns the pipeline (docs/architecture.md).
 *
 * The worker loads the model, runs one warm-up generation, and only then reports ready.
 * Then it loops: claim the oldest queued job in SQLite, generate it with a progress hook
 * that writes step/steps to the store after every denoising step (and picks up a cancel
 * asked by any process), store the PNG and mark the job completed, or mark it failed /
 * cancelled.  Between jobs, and at least once a second while idle, it deletes results older
 * than the retention time.  Handler threads never touch the pipeline: they enqueue and call
 * worker_notify; the front end's waiter thread waits with worker_wait.
 *
 * An outcome the store refuses (disk full, a lock held past busy_timeout) is kept in memory
 * and retried with backoff until it is stored; meanwhile the worker claims nothing and
 * worker_store_status reports the condition (/ping, /metrics).  A job is logged completed
 * only once its commit succeeded.
 *
 * A device that keeps failing (device_failures_fatal jobs in a row ending with FX_EDEVICE or
 * FX_ERUNTIME) fails the worker: the last job goes back to the queue, readiness becomes
 * WORKER_FAILED with worker_error saying why, and on_fatal is called so that the process
 * exits non-zero and its supervisor restarts it.
 *
 * Every sweep (at most once a second) also re-queues jobs of any worker whose lease ran out
 * (store_reclaim) and deletes job rows older than audit_retention in bounded batches; the
 * idle loop checkpoints the WAL.  Intervals are timed on CLOCK_MONOTONIC; the wall clock
 * only stamps stored times.
 *
 * Stopping (SIGTERM) is a drain: worker_stop sets the cancel flag, the running job stops
 * between two steps and goes back to the queue in its old place (the attempt is not
 * counted) unless a cancel was asked for it (then it ends cancelled), and the thread ends.  A crash
 * instead leaves the job `running`: the next start of a worker with the same worker_name re-queues
 * it (store_recover, done by worker_start).
 *
 * Thread-safety: every function here may be called from any thread, except worker_free
 * (once, after worker_stop, by the thread that started it).
 */
#ifndef FX_WORKER_H
#define FX_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/pipeline.h"
#include "config.h"
#include "metrics.h"

struct worker;

enum worker_readiness {
    WORKER_LOADING = 0, /* loading the model or warming up */
    WORKER_READY = 1,
    WORKER_FAILED = 2, /* the model could not be loaded, or the device keeps failing:
                          worker_error says why */
    WORKER_STOPPED = 3
};

/*
 * Recovers the jobs this worker_name left running (store_recover with cfg->max_attempts),
 * then starts the thread (which loads the model).  cfg, metrics and manifest must outlive
 * the worker; the defaults of the warm-up come from req_defaults.  on_fatal, when not NULL,
 * is called from the worker thread if loading fails or the device keeps failing.  Returns 0 and
 * sets *out, or an error with msg set (FX_EIO etc. from the store, FX_ENOMEM).
 */
int worker_start(const struct fx_config *cfg, struct fx_metrics *metrics,
                 const struct fx_request *req_defaults, void (*on_fatal)(void), struct worker **out,
                 char *msg, size_t msg_len);

/* The readiness flag (an enum worker_readiness), for readers that poll it. */
const atomic_int *worker_readiness(const struct worker *w);

/* The device and the load error (borrowed, stable once ready / failed). */
const char *worker_device(const struct worker *w);
const char *worker_error(const struct worker *w);

/* The placement in use ("resident", "encoders-offload", "stream"; the config's "auto"
 * resolved) and the transformer's weight format ("bf16", "int8", ...): borrowed, "" until
 * the model is loaded, stable once ready. */
const char *worker_placement(const struct worker *w);
const char *worker_weights(const struct worker *w);

/*
 * Whether the worker's last store write succeeded: false while an outcome waits to be
 * stored, with the reason copied to msg (may be NULL; "" when true).
 */
bool worker_store_status(struct worker *w, char *msg, size_t msg_len);

/*
 * The device-failure streak after a job ended with rc: 0 after a success, one more after
 * FX_EDEVICE or FX_ERUNTIME, unchanged otherwise (a bad request or a cancel says nothing
 * about the device).  The worker fails when it reaches device_failures_fatal.  Pure.
 */
int worker_device_streak(int streak, int rc);

/* Wakes the worker: a job was queued.  NULL is a no-op. */
void worker_notify(struct worker *w);

/* If id is the running job of this process, asks it to stop before its next step. */
void worker_cancel(struct worker *w, const char *id);

/*
 * Waits until a job ends in this process after *seen (a counter; 0 to start), at most
 * until now + wait_ms.  Updates *seen.  Returns 0 (something ended, or the wait ran out:
 * the caller looks at the store either way), or FX_ESHUTDOWN when the worker is stopping.
 * With w NULL, sleeps wait_ms and returns 0.
 */
int worker_wait(struct worker *w, uint64_t *seen, int wait_ms);

/* Drains and joins the thread (idempotent).  NULL is a no-op. */
void worker_stop(struct worker *w);

/* Frees a stopped worker; NULL is a no-op. */
void worker_free(struct worker *w);

#endif
