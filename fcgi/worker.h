/*
 * worker.h - the one thread per process that owns the pipeline (docs/architecture.md).
 *
 * The worker loads the model, runs one warm-up generation, and only then reports ready.
 * Then it loops: claim the oldest queued job in SQLite, generate it with a progress hook
 * that writes step/steps to the store after every denoising step (and picks up a cancel
 * asked by any process), store the PNG and mark the job completed, or mark it failed /
 * cancelled.  Between jobs, and at least once a second while idle, it deletes results older
 * than the retention time.  Acceptor threads never touch the pipeline: they enqueue, call
 * worker_notify, and wait with worker_wait.
 *
 * Stopping (SIGTERM) is a drain: worker_stop sets the cancel flag, the running job stops
 * between two steps and goes back to the queue in its old place (the attempt is not
 * counted), and the thread ends.  A crash instead leaves the job `running`: the next start
 * of a worker with the same worker_name re-queues it (store_recover, done by worker_start).
 *
 * Thread-safety: every function here may be called from any thread, except worker_free
 * (once, after worker_stop, by the thread that started it).
 */
#ifndef FX_WORKER_H
#define FX_WORKER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/pipeline.h"
#include "config.h"
#include "metrics.h"

struct worker;

enum worker_readiness {
    WORKER_LOADING = 0, /* loading the model or warming up */
    WORKER_READY = 1,
    WORKER_FAILED = 2, /* the model could not be loaded: worker_error says why */
    WORKER_STOPPED = 3
};

/*
 * Recovers the jobs this worker_name left running (store_recover with cfg->max_attempts),
 * then starts the thread (which loads the model).  cfg, metrics and manifest must outlive
 * the worker; the defaults of the warm-up come from req_defaults.  on_fatal, when not NULL,
 * is called from the worker thread if loading fails.  Returns 0 and sets *out, or an error
 * with msg set (FX_EIO etc. from the store, FX_ENOMEM).
 */
int worker_start(const struct fx_config *cfg, struct fx_metrics *metrics,
                 const struct fx_request *req_defaults, void (*on_fatal)(void), struct worker **out,
                 char *msg, size_t msg_len);

/* The readiness flag (an enum worker_readiness), for readers that poll it. */
const atomic_int *worker_readiness(const struct worker *w);

/* The device and the load error (borrowed, stable once ready / failed). */
const char *worker_device(const struct worker *w);
const char *worker_error(const struct worker *w);

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
