/*
 * store.h - the durable job queue and result store of fluxcgi: one SQLite file.
 *
 * SQLite is the source of truth (docs/architecture.md).  Every SQL statement of the program is
 * in sql/: the schema and its views in schema.sql (migration 1, embedded at build time), the
 * statements in store.c, each prepared once per connection.  Migrations are keyed on
 * PRAGMA user_version and applied by store_open inside an IMMEDIATE transaction.
 *
 * Durability: WAL mode with synchronous=FULL, so a commit is on disk (WAL fsync'd) before a
 * call returns, and an id that was answered to a client survives a kill -9 or a power cut.
 * NORMAL would only lose commits on power loss, but the service promises that an accepted
 * job is never lost, and the cost (one fsync per state change) is small next to a
 * generation.  Writes run in BEGIN IMMEDIATE transactions with a busy timeout, so several
 * processes (one per GPU) may share one file; a job is claimed by one UPDATE ... RETURNING
 * inside such a transaction, so two claimers never get the same job.
 *
 * Results are PNG BLOBs in the results table, not files: the image and the `completed`
 * state commit in one transaction (no completed job without its image, no orphan file after
 * a crash), one file to back up (sqlite3 .backup), and retention deletes both in one
 * transaction.  Images are bounded (about 1-2 MB at 1024x1024) and live only for the
 * retention time, so the file stays small; freed pages are reused.
 *
 * Job groups (migration 3): a request for several images queues one job per image in one
 * transaction, tied by group_id and group_index; each job is claimed, cancelled and read on
 * its own, and the group as a whole (store_group, store_cancel_group).
 *
 * Counts by state are kept in a job_counts table by triggers on jobs (migration 2), so
 * store_counts costs the same with ten rows or ten million.  Old rows of finished jobs are
 * deleted by store_purge after the audit retention; the WAL is checkpointed by
 * store_checkpoint from the worker's idle sweep, and journal_size_limit truncates it when
 * it restarts, so it does not keep the size of its largest burst.
 *
 * Leases (migration 2): a claim holds the job until lease_until_ms, renewed by every
 * store_progress.  store_reclaim (any worker's sweep) re-queues running jobs whose lease ran
 * out, so the jobs of a worker that never comes back do not stay running when several
 * processes share one store.  One denoising step must therefore take less than the lease.
 *
 * Full disk: SQLITE_FULL is FX_ENOSPC (the caller may retry later); other failures FX_EIO.
 *
 * Threads: a struct store is one connection and belongs to one thread at a time; each
 * thread opens its own.  Times are Unix epoch milliseconds supplied by the caller (so tests
 * control the clock).
 */
#ifndef FX_STORE_H
#define FX_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

/* The schema version this program writes (the number of migrations). */
#define STORE_SCHEMA_VERSION 4

#define STORE_ID_LEN 49 /* longest job id: host part, "-", 32 hex digits (jobid.h) */

enum store_state {
    STORE_QUEUED,
    STORE_RUNNING,
    STORE_COMPLETED,
    STORE_FAILED,
    STORE_CANCELLED,
    STORE_EXPIRED,
    STORE_NSTATES
};

/* "queued", "running", ...; NULL for a value outside the enum. */
const char *store_state_name(enum store_state s);

/* A job as stored.  store_job_release frees params. */
struct store_job {
    char id[STORE_ID_LEN + 1];
    enum store_state state;
    bool sync;    /* kind 'sync': a POST /generate waits for it */
    char *params; /* malloc'd JSON text */
    uint64_t seed;
    int steps, step, attempts;
    bool cancel;   /* a cancel was asked while it ran */
    long position; /* 1-based place in the queue while queued, else 0 (store_get only) */
    char worker[64];
    char error_code[32];
    char error_message[256];
    int64_t created_ms, started_ms, finished_ms, expired_ms; /* 0: not yet */
    int64_t result_bytes;                                    /* 0: no image */
    char group_id[STORE_ID_LEN + 1];                         /* "" when the job is not in a group */
    int group_index, group_size; /* its place (0-based) in the group, and the group's size */
    char *reply;                 /* malloc'd JSON: how a waiting client is answered, or NULL */
    char key_id[16 + 1];         /* the API key that queued it; "" none (auth off, or before
                                    migration 4) */
};

/* Frees what a job owns (params, reply); the struct itself is the caller's. */
void store_job_release(struct store_job *j);

/* Releases the jobs of a group (each job, then the array); NULL is a no-op. */
void store_group_release(struct store_job *jobs, int n);

/*
 * Opens (creating if needed) the store at path: WAL, synchronous=FULL, foreign keys, a busy
 * timeout of busy_ms, the schema migrated to STORE_SCHEMA_VERSION.  On success returns 0 and
 * sets *out (close with store_close).  Errors: FX_EIO (cannot open, or not a database),
 * FX_EFORMAT (the file's schema is newer than this program), FX_EBUSY, FX_ENOMEM; msg names
 * the path and the reason.  msg may be NULL.
 */
int store_open(const char *path, int busy_ms, struct store **out, char *msg, size_t msg_len);

/* Closes the connection; NULL is a no-op. */
void store_close(struct store *st);

/* The last SQLite error message of this connection (borrowed, for logs). */
const char *store_errmsg(const struct store *st);

/*
 * Adds a queued job unless max_queued jobs are already queued (the check and the insert are
 * one transaction).  params is the request JSON.  On success returns 0 and sets *position
 * (1-based, may be NULL).  FX_EFULL when the queue is full; FX_EIO / FX_EBUSY otherwise.
 */
int store_enqueue(struct store *st, const char *id, bool sync, const char *params, uint64_t seed,
                  int steps, int64_t now_ms, long max_queued, long *position);

/* One job of store_enqueue_group. */
struct store_new_job {
    const char *id, *params; /* params: the request JSON */
    uint64_t seed;
    int steps;
};

/*
 * Adds n queued jobs in one transaction (migration 3): with group_id, a job group whose jobs
 * get group_index 0..n-1 and group_size n; without (NULL), one job alone (n must be 1).
 * reply (NULL or JSON text) is stored with each.  All or none: FX_EFULL when the queue
 * cannot take all n.  Sets *position (may be NULL) to the first job's place.  Returns 0,
 * FX_EFULL, FX_EINVAL (n < 1, or n > 1 without a group), FX_EIO / FX_EBUSY / FX_ENOSPC.
 */
int store_enqueue_group(struct store *st, const char *group_id, bool sync, const char *reply,
                        const struct store_new_job *jobs, int n, int64_t now_ms, long max_queued,
                        long *position);

/*
 * Reads the jobs of a group in their order (with their queue positions): *jobs is a malloc'd
 * array of *n jobs (release with store_group_release).  Returns 0, FX_ENOENT (no such group),
 * FX_ENOMEM, FX_EIO/FX_EBUSY.
 */
int store_group(struct store *st, const char *group_id, struct store_job **jobs, int *n);

/*
 * Cancels a group in one transaction: its queued jobs become cancelled ("cancelled while
 * queued"), its running ones get their cancel flag; finished ones are left alone.  Sets
 * *cancelled and *flagged (may be NULL) to the numbers of each.  Returns 0, FX_EIO/FX_EBUSY.
 */
int store_cancel_group(struct store *st, const char *group_id, int64_t now_ms, long *cancelled,
                       long *flagged);

/* The running job that was queued first (what "the current job" of A1111's progress is).
 * Returns 0 and fills *job (release it), FX_ENOENT when none runs, FX_EIO/FX_EBUSY. */
int store_running_first(struct store *st, struct store_job *job);
/* store_running_first among the jobs of one key (key_id NULL: every job's). */
int store_running_first_of(struct store *st, const char *key_id, struct store_job *job);

/* ---- access control (migration 4; fcgi/auth.h is the policy) ---- */

#define STORE_KEY_ID_LEN 16     /* the public part of a key: 16 lower-case hex digits */
#define STORE_KEY_HASH_LEN 32   /* SHA-256 of the whole key */
#define STORE_DAY_MS 86400000LL /* usage is counted per UTC day: now_ms / STORE_DAY_MS */

/* An API key as stored (never the key itself). */
struct store_key {
    char id[STORE_KEY_ID_LEN + 1];
    char name[65];
    uint8_t hash[STORE_KEY_HASH_LEN];
    bool admin;
    int64_t created_ms, last_used_ms, expires_ms, revoked_ms; /* 0: none / never */
    long max_queued, daily_images;                            /* -1: the config's */
    int64_t daily_budget;                                     /* -1: the config's */
    char webhook_url[1024];  /* "" none: the default webhook of the key's jobs */
    char webhook_secret[80]; /* the HMAC key of its webhooks (kept: it signs) */
};

/* Adds a key.  Returns 0, FX_EINVAL (a key in use has that name, or the id exists),
 * FX_EIO/FX_EBUSY. */
int store_key_add(struct store *st, const struct store_key *k);

/* Reads the key with this id.  Returns 0, FX_ENOENT, FX_EIO/FX_EBUSY. */
int store_key_get(struct store *st, const char *id, struct store_key *k);

/* Every key, revoked ones too, oldest first: *out is malloc'd (caller frees), *n rows. */
int store_key_list(struct store *st, struct store_key **out, size_t *n);

/* Revokes the key in use with this id or name; copies its id into id (may be NULL).
 * Returns 0, FX_ENOENT (none in use), FX_EIO/FX_EBUSY. */
int store_key_revoke(struct store *st, const char *id_or_name, int64_t now_ms,
                     char id[STORE_KEY_ID_LEN + 1]);

/* Sets the key's last-used time (a write: callers do it at most once a minute per key). */
int store_key_touch(struct store *st, const char *id, int64_t now_ms);

/* Keys neither revoked nor expired at now_ms. */
int store_key_active(struct store *st, int64_t now_ms, long *n);

/* What a key has used: queued jobs now, images and steps x pixels queued today (UTC; jobs
 * that failed or were cancelled are given back), and which limit refused a job. */
enum store_limit { STORE_LIMIT_NONE, STORE_LIMIT_QUEUED, STORE_LIMIT_IMAGES, STORE_LIMIT_BUDGET };
struct store_key_usage {
    long queued, images;
    int64_t budget;
    enum store_limit limit; /* store_enqueue_owned: the one crossed (FX_EQUOTA) */
};
int store_key_usage(struct store *st, const char *key_id, int64_t now_ms,
                    struct store_key_usage *u);

/* Usage and limits of every key in use (for /metrics): *out malloc'd, caller frees. */
struct store_key_stat {
    char id[STORE_KEY_ID_LEN + 1];
    char name[65];
    long max_queued, daily_images; /* -1: the config's */
    int64_t daily_budget;
    struct store_key_usage usage;
};
int store_key_stats(struct store *st, int64_t now_ms, struct store_key_stat **out, size_t *n);

/* Who queues a job, that key's limits in force (0: none) and the job's webhook. */
struct store_owner {
    const char *key_id;   /* NULL: no key (auth off) */
    long max_queued;      /* queued jobs of the key at most */
    long daily_images;    /* images of the key per UTC day at most */
    int64_t daily_budget; /* steps x pixels of the key per UTC day at most */
    int64_t cost;         /* this job's steps x width x height */
    const char *webhook;  /* NULL: none */
    bool webhook_progress;
};

/*
 * store_enqueue, recording the owner: in the same transaction the key's limits are checked
 * (FX_EQUOTA, usage->limit says which, before the global bound), the job is inserted with
 * its key, cost and webhook, and the key's usage of the day counted.  owner may be NULL
 * (store_enqueue).  Fills *usage (may be NULL) with the key's usage including this job.
 */
int store_enqueue_owned(struct store *st, const char *id, bool sync, const char *params,
                        uint64_t seed, int steps, int64_t now_ms, long max_queued,
                        const struct store_owner *owner, long *position,
                        struct store_key_usage *usage);

/*
 * store_enqueue_group, recording the owner as store_enqueue_owned does for each of the n jobs
 * (owner->cost is one image's): the key's limits count every image of the group (n toward
 * max_queued and daily_images, n x cost toward daily_budget), all in one transaction with the
 * inserts, all or none.  owner may be NULL (store_enqueue_group).
 */
int store_enqueue_group_owned(struct store *st, const char *group_id, bool sync, const char *reply,
                              const struct store_new_job *jobs, int n, int64_t now_ms,
                              long max_queued, const struct store_owner *owner, long *position,
                              struct store_key_usage *usage);

/* A webhook delivery claimed for an attempt (store_delivery_release frees url and body). */
struct store_delivery {
    int64_t seq;
    char job_id[STORE_ID_LEN + 1];
    char key_id[STORE_KEY_ID_LEN + 1];
    char event[16]; /* "end" or "progress" */
    char *url;
    char *body;   /* NULL until the first attempt stored what it sent */
    int attempts; /* including this one */
};
void store_delivery_release(struct store_delivery *d);

/*
 * Claims the pending delivery due first (next_ms <= now_ms): attempts + 1, and it is not
 * due again before now + lease_ms (so another process sharing the store does not send it
 * meanwhile, and a process that dies mid-attempt leaves it to be retried).  Returns 0,
 * FX_ENOENT (nothing due), FX_EIO/FX_EBUSY.
 */
int store_delivery_claim(struct store *st, int64_t now_ms, int64_t lease_ms,
                         struct store_delivery *d);

/*
 * Records an attempt: state "delivered", "failed" (no attempt left) or "dropped" (not sent:
 * superseded or not allowed), or "pending" with the next attempt at next_ms; the HTTP status
 * (0: none), the error (may be NULL), and the body sent (kept from the first attempt on).
 */
int store_delivery_done(struct store *st, int64_t seq, const char *state, int http_status,
                        const char *error, int64_t next_ms, const char *body, int64_t now_ms);

/* The earliest next_ms of a pending delivery.  Returns 0, FX_ENOENT (none), FX_EIO/FX_EBUSY. */
int store_delivery_next(struct store *st, int64_t *next_ms);

/* Deletes at most limit finished deliveries that finished before before_ms, and per-key usage
 * of days before it.  Sets *n (may be NULL) to the deliveries deleted. */
int store_access_purge(struct store *st, int64_t before_ms, long limit, long *n);

/*
 * Claims the oldest queued job for worker: running, attempts + 1, started now, step 0, its
 * lease until now + lease_ms.  Returns 0 and fills *job (release it), FX_ENOENT when nothing
 * is queued, FX_EIO/FX_EBUSY/FX_ENOSPC.
 */
int store_claim(struct store *st, const char *worker, int64_t now_ms, int64_t lease_ms,
                struct store_job *job);

/*
 * Records progress of a job running under worker and renews its lease until now + lease_ms.
 * Sets *cancel (may be NULL) when a cancel was asked.  Returns 0, FX_ENOENT when the job is
 * no longer running under this worker (re-queued after its lease ran out), FX_EIO/FX_EBUSY.
 */
int store_progress(struct store *st, const char *id, const char *worker, int step, int64_t now_ms,
                   int64_t lease_ms, bool *cancel);

/*
 * Marks a running job claimed by worker completed and stores its PNG, in one transaction.
 * Returns 0, FX_ENOENT when it is not running under this worker (it was re-queued or
 * failed meanwhile: the image is dropped), FX_EIO/FX_EBUSY.
 */
int store_complete(struct store *st, const char *id, const char *worker, const void *png,
                   size_t png_len, int64_t now_ms);

/*
 * Ends a running job as failed (state STORE_FAILED) or cancelled (STORE_CANCELLED) with an
 * error code (fx_errcode) and message.  Same returns as store_complete.
 */
int store_finish(struct store *st, const char *id, const char *worker, enum store_state state,
                 const char *code, const char *message, int64_t now_ms);

/*
 * Puts a running job of worker back in the queue (a graceful drain): its place is kept, and
 * the attempt does not count.  A job whose cancel was asked (answered 202) is not re-queued
 * but ends cancelled at now_ms; *cancelled (may be NULL) says which.  Returns 0, FX_ENOENT,
 * FX_EIO/FX_EBUSY.
 */
int store_requeue(struct store *st, const char *id, const char *worker, int64_t now_ms,
                  bool *cancelled);

/*
 * Cancels a job: a queued one becomes cancelled at once (*state = STORE_CANCELLED); a
 * running one gets its cancel flag (*state = STORE_RUNNING; the worker stops between steps).
 * Returns 0, FX_ENOENT (unknown id), FX_EFINISHED (already in a terminal state; *state is
 * that state), FX_EIO/FX_EBUSY.
 */
int store_cancel(struct store *st, const char *id, int64_t now_ms, enum store_state *state);

/*
 * Cancels a job only while it is still queued: it becomes cancelled with error code
 * "cancelled" and the message "the client went away before the job started" (a synchronous
 * client that hung up).  A running or finished job is left untouched.  When the job is one
 * of a group queued for a waiting client (kind 'sync'), the group's other queued jobs are
 * cancelled the same way, whatever this one's state.  Sets *cancelled to whether this call
 * cancelled the job named.  Returns 0, FX_ENOENT (no such job), FX_EIO/FX_EBUSY.
 * Thread-safe as every call here: one connection per thread.
 */
int store_cancel_queued(struct store *st, const char *id, int64_t now_ms, bool *cancelled);

/* Reads one job (with its queue position).  Returns 0, FX_ENOENT, FX_EIO/FX_EBUSY. */
int store_get(struct store *st, const char *id, struct store_job *job);

/*
 * Copies the PNG of a completed job into *png (malloc'd, caller frees) and sets *len.
 * Returns 0, FX_ENOENT when there is no image, FX_ENOMEM, FX_EIO/FX_EBUSY.
 */
int store_result(struct store *st, const char *id, uint8_t **png, size_t *len);

/* Counts jobs by state: counts[STORE_NSTATES], from the job_counts table (O(1)).
 * Returns 0, FX_EIO/FX_EBUSY. */
int store_counts(struct store *st, long counts[STORE_NSTATES]);

/* What store_recover and store_reclaim did. */
struct store_recovery {
    long requeued;  /* back in the queue in their old place */
    long failed;    /* started max_attempts times: failed "interrupted" */
    long cancelled; /* a cancel had been asked: cancelled, not run again */
};

/*
 * Restart recovery for worker: each job it left running is queued again in its old place,
 * unless a cancel was asked for it (then it ends cancelled) or it has been started
 * max_attempts times already (then it fails with code "interrupted").  Jobs of other
 * workers are left alone (they may be alive; store_reclaim handles them by lease).  Fills
 * *out (may be NULL).  Returns 0, FX_EIO/FX_EBUSY.
 */
int store_recover(struct store *st, const char *worker, int max_attempts, int64_t now_ms,
                  struct store_recovery *out);

/*
 * The same for running jobs of any worker whose lease ended before now_ms (their worker
 * stopped without coming back).  Jobs claimed before migration 2 have no lease and are left
 * to store_recover.  Fills *out (may be NULL).  Returns 0, FX_EIO/FX_EBUSY.
 */
int store_reclaim(struct store *st, int max_attempts, int64_t now_ms, struct store_recovery *out);

/*
 * Audit retention: deletes at most limit rows of failed, cancelled and expired jobs that
 * finished before before_ms (a completed job first expires by store_expire).  Sets *n (may
 * be NULL) to the number deleted; a caller loops while *n == limit.  Returns 0,
 * FX_EIO/FX_EBUSY.
 */
int store_purge(struct store *st, int64_t before_ms, long limit, long *n);

/*
 * Checkpoints the WAL into the database without waiting for readers or blocking writers
 * (PASSIVE).  Sets *wal_frames and *done (may be NULL) to the frames in the WAL and those
 * checkpointed.  Returns 0, FX_EBUSY (another checkpoint is running), FX_EIO.
 */
int store_checkpoint(struct store *st, long *wal_frames, long *done);

/*
 * Retention: deletes the images of jobs completed before before_ms and marks them expired.
 * Sets *n (may be NULL) to the number expired.  Returns 0, FX_EIO/FX_EBUSY.
 */
int store_expire(struct store *st, int64_t before_ms, int64_t now_ms, long *n);

/*
 * Mean run time in ms of the last (up to 20) completed jobs, 0 when there are none.
 * Returns 0, FX_EIO/FX_EBUSY.
 */
int store_mean_run_ms(struct store *st, double *ms);

#endif
