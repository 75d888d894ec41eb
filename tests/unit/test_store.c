/* The job store on a temp file with the real schema: queue order and bounds, claim,
 * progress and cancel, completion with the PNG, restart recovery, retention, migrations, job
 * groups, and two connections racing to claim. */
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../core/err.h"
#include "../../sql/store.h"
#include "unit.h"

static char dir[] = "/tmp/fx-store-XXXXXX";
static char path[256];

static struct store *open_store(void)
{
    struct store *st = NULL;
    char msg[512] = "";
    int rc = store_open(path, 5000, &st, msg, sizeof(msg));
    CHECK_INT(rc, 0);
    if (rc)
        fprintf(stderr, "  store_open: %s\n", msg);
    return st;
}

static void id_of(int n, char id[33])
{
    snprintf(id, 33, "%032x", n);
}

static int enqueue(struct store *st, int n, long max, long *pos)
{
    char id[33];
    id_of(n, id);
    return store_enqueue(st, id, false,
                         "{\"prompt\":\"p\",\"guidance_scale\":3.5,\"num_inference_steps\":4,"
                         "\"width\":64,\"height\":64,\"seed\":1}",
                         1, 4, 1000 + n, max, pos);
}

/* Runs one SQL query that answers one integer (test-side checks of the file). */
static long long query_int(const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    long long v = -1;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        return -2;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK) {
        if (sqlite3_step(s) == SQLITE_ROW)
            v = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
    } else {
        fprintf(stderr, "  query '%s': %s\n", sql, sqlite3_errmsg(db));
    }
    sqlite3_close(db);
    return v;
}

static void test_schema(void)
{
    struct store *st = open_store();
    store_close(st);
    CHECK_INT(query_int("PRAGMA user_version"), STORE_SCHEMA_VERSION);
    CHECK_INT(query_int("SELECT count(*) FROM pragma_journal_mode WHERE journal_mode = 'wal'"), 1);
    CHECK_INT(query_int("SELECT count(*) FROM sqlite_schema WHERE type = 'view' AND name IN "
                        "('recent_jobs', 'failures', 'latency_percentiles', 'jobs_by_state')"),
              4);
    /* opening again migrates nothing and works */
    st = open_store();
    store_close(st);
    CHECK_INT(query_int("PRAGMA user_version"), STORE_SCHEMA_VERSION);
}

/* The schema's CHECK on ids matches jobid_valid: host part optional, 32 hex digits. */
static void test_id_check(void)
{
    static const char *const good[] = {"0123456789abcdef0123456789abcdef",
                                       "h1-0123456789abcdef0123456789abcdef",
                                       "abcdefghijklmnop-0123456789abcdef0123456789abcdef"};
    static const char *const bad[] = {"0123456789abcdef0123456789abcde",
                                      "H1-0123456789abcdef0123456789abcdef",
                                      "-0123456789abcdef0123456789abcdef",
                                      "h1_0123456789abcdef0123456789abcdef",
                                      "h1-0123456789abcdef0123456789abcdeF",
                                      "abcdefghijklmnopq-0123456789abcdef0123456789abcdef"};
    struct store *st = open_store();
    struct store_job j;
    long pos;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        CHECK_INT(store_enqueue(st, good[i], false, "{\"prompt\":\"p\"}", 1, 4, 5, 100, &pos), 0);
        CHECK_INT(store_get(st, good[i], &j), 0);
        CHECK_STR(j.id, good[i]);
        store_job_release(&j);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(store_enqueue(st, bad[i], false, "{\"prompt\":\"p\"}", 1, 4, 5, 100, &pos) != 0);
    store_close(st);
    remove(path);
}

static void test_queue(void)
{
    struct store *st = open_store();
    struct store_job j;
    long pos = 0, counts[STORE_NSTATES];
    char id[33];

    CHECK_INT(enqueue(st, 1, 3, &pos), 0);
    CHECK_INT(pos, 1);
    CHECK_INT(enqueue(st, 2, 3, &pos), 0);
    CHECK_INT(pos, 2);
    CHECK_INT(enqueue(st, 3, 3, &pos), 0);
    CHECK_INT(pos, 3);
    CHECK_INT(enqueue(st, 4, 3, &pos), FX_EFULL);
    CHECK_INT(store_counts(st, counts), 0);
    CHECK_INT(counts[STORE_QUEUED], 3);

    /* the oldest is claimed; the others move up */
    CHECK_INT(store_claim(st, "w1", 5000, 60000, &j), 0);
    id_of(1, id);
    CHECK_STR(j.id, id);
    CHECK_INT(j.state, STORE_RUNNING);
    CHECK_INT(j.attempts, 1);
    CHECK_INT(j.steps, 4);
    CHECK_STR(j.worker, "w1");
    CHECK(j.params && strstr(j.params, "\"prompt\""));
    store_job_release(&j);
    id_of(3, id);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.position, 2);
    CHECK_INT(j.state, STORE_QUEUED);
    store_job_release(&j);
    /* a running job does not count against the queue bound */
    CHECK_INT(enqueue(st, 4, 3, &pos), 0);
    CHECK_INT(pos, 3);

    /* progress; a cancel asked while running shows up in the next progress call */
    id_of(1, id);
    bool cancel = true;
    CHECK_INT(store_progress(st, id, "w1", 2, 5500, 60000, &cancel), 0);
    CHECK(!cancel);
    enum store_state s = STORE_QUEUED;
    CHECK_INT(store_cancel(st, id, 6000, &s), 0);
    CHECK_INT(s, STORE_RUNNING);
    CHECK_INT(store_progress(st, id, "w1", 3, 6500, 60000, &cancel), 0);
    CHECK(cancel);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.step, 3);
    CHECK(j.cancel);
    store_job_release(&j);

    /* another worker cannot finish it; its owner can */
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', 0, 1, 2, 3};
    CHECK_INT(store_complete(st, id, "w2", png, sizeof(png), 7000), FX_ENOENT);
    CHECK_INT(store_complete(st, id, "w1", png, sizeof(png), 7000), 0);
    CHECK_INT(store_complete(st, id, "w1", png, sizeof(png), 7000), FX_ENOENT);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.state, STORE_COMPLETED);
    CHECK_INT(j.step, 4);
    CHECK_INT(j.finished_ms, 7000);
    CHECK_INT(j.result_bytes, sizeof(png));
    store_job_release(&j);
    uint8_t *got = NULL;
    size_t len = 0;
    CHECK_INT(store_result(st, id, &got, &len), 0);
    CHECK_INT(len, sizeof(png));
    CHECK(got && memcmp(got, png, sizeof(png)) == 0);
    free(got);
    CHECK_INT(store_cancel(st, id, 8000, &s), FX_EFINISHED);
    CHECK_INT(s, STORE_COMPLETED);

    /* a queued job is cancelled at once */
    id_of(2, id);
    CHECK_INT(store_cancel(st, id, 8000, &s), 0);
    CHECK_INT(s, STORE_CANCELLED);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_STR(j.error_code, "cancelled");
    CHECK_INT(j.position, 0);
    store_job_release(&j);
    CHECK_INT(store_result(st, id, &got, &len), FX_ENOENT);
    CHECK_INT(store_cancel(st, "ffffffffffffffffffffffffffffffff", 8000, &s), FX_ENOENT);
    CHECK_INT(store_get(st, "ffffffffffffffffffffffffffffffff", &j), FX_ENOENT);

    /* failure: the code and message are kept */
    CHECK_INT(store_claim(st, "w1", 9000, 60000, &j), 0);
    id_of(3, id);
    CHECK_STR(j.id, id);
    store_job_release(&j);
    CHECK_INT(store_finish(st, id, "w1", STORE_FAILED, "model_runtime", "boom", 9500), 0);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.state, STORE_FAILED);
    CHECK_STR(j.error_code, "model_runtime");
    CHECK_STR(j.error_message, "boom");
    store_job_release(&j);
    CHECK_INT(store_finish(st, id, "w1", STORE_COMPLETED, "x", "y", 9500), FX_EINVAL);

    /* drain: the job goes back in its place and the attempt does not count */
    CHECK_INT(store_claim(st, "w1", 9600, 60000, &j), 0);
    id_of(4, id);
    CHECK_STR(j.id, id);
    store_job_release(&j);
    CHECK_INT(store_requeue(st, id, "w1", 9700, NULL), 0);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.state, STORE_QUEUED);
    CHECK_INT(j.attempts, 0);
    CHECK_INT(j.position, 1);
    store_job_release(&j);

    /* retention: the image goes, the row stays, as expired */
    long n = -1;
    id_of(1, id);
    CHECK_INT(store_expire(st, 7000, 10000, &n), 0);
    CHECK_INT(n, 0); /* finished at 7000: not before 7000 */
    CHECK_INT(store_expire(st, 7001, 10000, &n), 0);
    CHECK_INT(n, 1);
    CHECK_INT(store_result(st, id, &got, &len), FX_ENOENT);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.state, STORE_EXPIRED);
    CHECK_INT(j.expired_ms, 10000);
    CHECK_INT(j.result_bytes, sizeof(png));
    store_job_release(&j);
    CHECK_INT(query_int("SELECT count(*) FROM results"), 0);

    double mean = -1;
    CHECK_INT(store_mean_run_ms(st, &mean), 0);
    CHECK_INT((long)mean, 2000); /* claimed at 5000, finished at 7000 */
    store_close(st);
}

static void test_recover(void)
{
    struct store *st = open_store();
    struct store_job j;
    struct store_recovery r;
    char id[33];

    CHECK_INT(enqueue(st, 10, 100, NULL), 0);
    CHECK_INT(enqueue(st, 11, 100, NULL), 0);
    CHECK_INT(store_claim(st, "gpu0", 1, 60000, &j), 0); /* job 4 from test_queue, still queued */
    store_job_release(&j);
    CHECK_INT(store_claim(st, "gpu0", 1, 60000, &j), 0);
    id_of(10, id);
    CHECK_STR(j.id, id);
    store_job_release(&j);
    CHECK_INT(store_claim(st, "gpu1", 1, 60000, &j), 0);
    store_job_release(&j);

    /* gpu0 restarts: its two running jobs are queued again, gpu1's is not touched */
    CHECK_INT(store_recover(st, "gpu0", 2, 50, &r), 0);
    CHECK_INT(r.requeued, 2);
    CHECK_INT(r.failed, 0);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.state, STORE_QUEUED);
    CHECK_INT(j.attempts, 1);
    store_job_release(&j);
    id_of(11, id);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.state, STORE_RUNNING);
    store_job_release(&j);

    /* started twice with max_attempts 2: the second recovery fails it; a job started once
     * goes back to the queue */
    CHECK_INT(store_claim(st, "gpu0", 60, 60000, &j), 0); /* job 4, second start: finish it */
    CHECK_INT(store_finish(st, j.id, "gpu0", STORE_FAILED, "internal", "done", 60), 0);
    store_job_release(&j);
    CHECK_INT(store_claim(st, "gpu0", 60, 60000, &j), 0);
    id_of(10, id);
    CHECK_STR(j.id, id);
    CHECK_INT(j.attempts, 2);
    store_job_release(&j);
    CHECK_INT(enqueue(st, 12, 100, NULL), 0);
    CHECK_INT(store_claim(st, "gpu0", 60, 60000, &j), 0);
    CHECK_INT(j.attempts, 1);
    store_job_release(&j);
    CHECK_INT(store_recover(st, "gpu0", 2, 70, &r), 0);
    CHECK_INT(r.requeued, 1);
    CHECK_INT(r.failed, 1);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.state, STORE_FAILED);
    CHECK_STR(j.error_code, "interrupted");
    CHECK(strstr(j.error_message, "in 2 of at most 2 attempt(s)") != NULL);
    CHECK_INT(j.finished_ms, 70);
    store_job_release(&j);
    CHECK_INT(query_int("SELECT count(*) FROM failures WHERE error_code = 'interrupted'"), 1);
    store_close(st);
}

/* A synchronous client that went away: only a job still queued is cancelled. */
static void test_cancel_queued(void)
{
    struct store *st = open_store();
    struct store_job j;
    bool done = true;
    char id[33], run_id[33];

    CHECK_INT(store_cancel_queued(st, "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", 1, &done), FX_ENOENT);
    CHECK(!done);
    /* empty the queue left by the earlier tests, then one to run and one to stay queued */
    while (store_claim(st, "sweeper", 1, 60000, &j) == 0) {
        store_finish(st, j.id, "sweeper", STORE_FAILED, "internal", "cleanup", 1);
        store_job_release(&j);
    }
    CHECK_INT(enqueue(st, 20, 100, NULL), 0);
    CHECK_INT(enqueue(st, 21, 100, NULL), 0);
    CHECK_INT(store_claim(st, "gpu0", 100, 60000, &j), 0);
    id_of(20, run_id);
    CHECK_STR(j.id, run_id);
    store_job_release(&j);

    id_of(21, id);
    CHECK_INT(store_cancel_queued(st, id, 200, &done), 0);
    CHECK(done);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.state, STORE_CANCELLED);
    CHECK_STR(j.error_code, "cancelled");
    CHECK_STR(j.error_message, "the client went away before the job started");
    CHECK_INT(j.finished_ms, 200);
    store_job_release(&j);
    /* already cancelled: left alone */
    CHECK_INT(store_cancel_queued(st, id, 300, &done), 0);
    CHECK(!done);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.finished_ms, 200);
    store_job_release(&j);

    /* running: untouched, not even flagged */
    CHECK_INT(store_cancel_queued(st, run_id, 300, &done), 0);
    CHECK(!done);
    CHECK_INT(store_get(st, run_id, &j), 0);
    CHECK_INT(j.state, STORE_RUNNING);
    CHECK(!j.cancel);
    store_job_release(&j);

    /* finished: untouched */
    CHECK_INT(store_finish(st, run_id, "gpu0", STORE_FAILED, "internal", "x", 400), 0);
    CHECK_INT(store_cancel_queued(st, run_id, 500, &done), 0);
    CHECK(!done);
    CHECK_INT(store_get(st, run_id, &j), 0);
    CHECK_INT(j.state, STORE_FAILED);
    CHECK_STR(j.error_code, "internal");
    store_job_release(&j);
    store_close(st);
}

/* ---- counts, migration 2, audit retention, leases, drain and recovery of cancels -------- */

/* The store's counts against a count of the rows themselves. */
static void check_counts(struct store *st, int line)
{
    long counts[STORE_NSTATES];
    char sql[128];
    CHECK_INT(store_counts(st, counts), 0);
    for (int i = 0; i < STORE_NSTATES; i++) {
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM jobs WHERE state = '%s'",
                 store_state_name((enum store_state)i));
        long long want = query_int(sql);
        if (counts[i] != want)
            fprintf(stderr, "  counts at line %d: %s\n", line,
                    store_state_name((enum store_state)i));
        CHECK_INT(counts[i], want);
    }
}
#define CHECK_COUNTS(st) check_counts(st, __LINE__)

static void empty_queue(struct store *st)
{
    struct store_job j;
    while (store_claim(st, "sweeper", 1, 60000, &j) == 0) {
        store_finish(st, j.id, "sweeper", STORE_FAILED, "internal", "cleanup", 1);
        store_job_release(&j);
    }
}

static void test_counts_and_purge(void)
{
    struct store *st = open_store();
    struct store_job j;
    enum store_state s;
    long n = -1;
    char id[33];
    static const uint8_t png[] = {0x89, 'P', 'N', 'G'};

    empty_queue(st);
    CHECK_COUNTS(st);
    for (int i = 0; i < 5; i++)
        CHECK_INT(enqueue(st, 100 + i, 100, NULL), 0);
    CHECK_COUNTS(st);
    /* a full queue inserts nothing and counts nothing */
    CHECK_INT(enqueue(st, 110, 5, NULL), FX_EFULL);
    CHECK_COUNTS(st);
    CHECK_INT(store_claim(st, "w", 1000, 60000, &j), 0);
    CHECK_COUNTS(st);
    CHECK_INT(store_complete(st, j.id, "w", png, sizeof(png), 2000), 0);
    store_job_release(&j);
    CHECK_COUNTS(st);
    CHECK_INT(store_claim(st, "w", 1000, 60000, &j), 0);
    CHECK_INT(store_finish(st, j.id, "w", STORE_FAILED, "internal", "x", 2000), 0);
    store_job_release(&j);
    CHECK_COUNTS(st);
    id_of(104, id);
    CHECK_INT(store_cancel(st, id, 2000, &s), 0);
    CHECK_COUNTS(st);
    CHECK_INT(store_claim(st, "w", 1000, 60000, &j), 0);
    CHECK_INT(store_requeue(st, j.id, "w", 2000, NULL), 0);
    store_job_release(&j);
    CHECK_COUNTS(st);
    CHECK_INT(store_expire(st, 3000, 3000, &n), 0);
    CHECK_INT(n, 1);
    CHECK_COUNTS(st);

    /* audit retention: only terminal rows older than the cut, at most limit per call */
    long before = (long)query_int("SELECT count(*) FROM jobs");
    long old = (long)query_int("SELECT count(*) FROM jobs WHERE state IN ('failed', "
                               "'cancelled', 'expired') AND finished_ms < 2500");
    CHECK(old >= 3);
    CHECK_INT(store_purge(st, 2500, 2, &n), 0);
    CHECK_INT(n, 2);
    CHECK_COUNTS(st);
    CHECK_INT(store_purge(st, 2500, 1000, &n), 0);
    CHECK_INT(n, old - 2);
    CHECK_INT(query_int("SELECT count(*) FROM jobs"), before - old);
    CHECK_INT(query_int("SELECT count(*) FROM jobs WHERE state IN ('failed', 'cancelled', "
                        "'expired') AND finished_ms < 2500"),
              0);
    CHECK_INT(query_int("SELECT count(*) FROM jobs WHERE state = 'queued'"), 2);
    CHECK_INT(store_purge(st, 2500, 1000, &n), 0);
    CHECK_INT(n, 0);
    CHECK_COUNTS(st);
    /* the view reads the table */
    CHECK_INT(query_int("SELECT jobs FROM jobs_by_state WHERE state = 'queued'"), 2);

    /* a PASSIVE checkpoint copies the whole WAL when nobody reads */
    long frames = -1, done = -1;
    CHECK_INT(store_checkpoint(st, &frames, &done), 0);
    CHECK(frames > 0);
    CHECK_INT(done, frames);
    store_close(st);
}

/* A version-1 store (the schema before migration 2) with rows in every state migrates with
 * the right counts and a lease column. */
extern const char store_schema_sql[];

static void test_migrate_v1(void)
{
    char old[300];
    sqlite3 *db;
    struct store *st = NULL;
    struct store_job j;
    char msg[256] = "";
    long counts[STORE_NSTATES];
    static const char *const states[] = {"queued", "queued", "running",   "completed", "failed",
                                         "failed", "failed", "cancelled", "expired",   "expired"};

    snprintf(old, sizeof(old), "%s/v1.db", dir);
    CHECK_INT(sqlite3_open(old, &db), SQLITE_OK);
    CHECK_INT(sqlite3_exec(db, store_schema_sql, NULL, NULL, NULL), SQLITE_OK);
    CHECK_INT(sqlite3_exec(db, "PRAGMA user_version = 1", NULL, NULL, NULL), SQLITE_OK);
    for (int i = 0; i < (int)(sizeof(states) / sizeof(states[0])); i++) {
        char sql[400];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO jobs (id, kind, state, params, seed, steps, created_ms, worker, "
                 "started_ms, attempts) VALUES ('%032x', 'queue', '%s', '{}', 1, 4, %d, 'old', "
                 "%d, 1)",
                 500 + i, states[i], i, i);
        CHECK_INT(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    }
    sqlite3_close(db);

    CHECK_INT(store_open(old, 1000, &st, msg, sizeof(msg)), 0);
    if (st == NULL) {
        fprintf(stderr, "  %s\n", msg);
        return;
    }
    CHECK_INT(store_counts(st, counts), 0);
    CHECK_INT(counts[STORE_QUEUED], 2);
    CHECK_INT(counts[STORE_RUNNING], 1);
    CHECK_INT(counts[STORE_COMPLETED], 1);
    CHECK_INT(counts[STORE_FAILED], 3);
    CHECK_INT(counts[STORE_CANCELLED], 1);
    CHECK_INT(counts[STORE_EXPIRED], 2);
    /* the old running job has no lease: reclaim leaves it to its worker's recovery */
    struct store_recovery r = {9, 9, 9};
    CHECK_INT(store_reclaim(st, 3, 1LL << 50, &r), 0);
    CHECK_INT(r.requeued + r.failed + r.cancelled, 0);
    /* and the queue works on with counts kept */
    CHECK_INT(store_claim(st, "new", 100, 1000, &j), 0);
    store_job_release(&j);
    CHECK_INT(store_counts(st, counts), 0);
    CHECK_INT(counts[STORE_QUEUED], 1);
    CHECK_INT(counts[STORE_RUNNING], 2);
    store_close(st);
    sqlite3_open(old, &db);
    sqlite3_stmt *q;
    sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL);
    CHECK_INT(sqlite3_step(q), SQLITE_ROW);
    CHECK_INT(sqlite3_column_int(q, 0), STORE_SCHEMA_VERSION);
    sqlite3_finalize(q);
    sqlite3_close(db);
    unlink(old);
}

/* A cancel answered 202 survives a drain and a crash: the job ends cancelled, not re-run. */
static void test_cancel_survives_stop(void)
{
    struct store *st = open_store();
    struct store_job j;
    struct store_recovery r;
    enum store_state s;
    bool cancelled = false;
    char id[33];

    empty_queue(st);
    /* drain */
    CHECK_INT(enqueue(st, 200, 100, NULL), 0);
    CHECK_INT(store_claim(st, "gpu0", 1000, 60000, &j), 0);
    store_job_release(&j);
    id_of(200, id);
    CHECK_INT(store_cancel(st, id, 1100, &s), 0);
    CHECK_INT(s, STORE_RUNNING);
    CHECK_INT(store_requeue(st, id, "gpu0", 1200, &cancelled), 0);
    CHECK(cancelled);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.state, STORE_CANCELLED);
    CHECK_STR(j.error_code, "cancelled");
    CHECK_INT(j.finished_ms, 1200);
    store_job_release(&j);
    CHECK_INT(store_claim(st, "gpu0", 1300, 60000, &j), FX_ENOENT);
    /* a drain without a cancel still re-queues */
    CHECK_INT(enqueue(st, 201, 100, NULL), 0);
    CHECK_INT(store_claim(st, "gpu0", 1000, 60000, &j), 0);
    CHECK_INT(store_requeue(st, j.id, "gpu0", 1200, &cancelled), 0);
    CHECK(!cancelled);
    store_job_release(&j);
    id_of(201, id);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.state, STORE_QUEUED);
    store_job_release(&j);

    /* crash: recovery cancels the flagged one, re-queues the other; attempts do not matter */
    CHECK_INT(enqueue(st, 202, 100, NULL), 0);
    CHECK_INT(store_claim(st, "gpu0", 2000, 60000, &j), 0); /* 201 */
    store_job_release(&j);
    CHECK_INT(store_claim(st, "gpu0", 2000, 60000, &j), 0); /* 202 */
    store_job_release(&j);
    id_of(202, id);
    CHECK_INT(store_cancel(st, id, 2100, &s), 0);
    CHECK_INT(store_recover(st, "gpu0", 1, 2200, &r), 0);
    CHECK_INT(r.cancelled, 1);
    CHECK_INT(r.failed, 1); /* 201 was started once, max_attempts 1 */
    CHECK_INT(r.requeued, 0);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.state, STORE_CANCELLED);
    CHECK_INT(j.finished_ms, 2200);
    store_job_release(&j);
    CHECK_COUNTS(st);
    store_close(st);
}

/* Two processes share the store (two connections); one stops for good.  The other's sweep
 * re-queues its jobs once their lease ran out, by the caller's clock. */
static void test_leases(void)
{
    struct store *a = open_store(), *b = open_store();
    struct store_job j;
    struct store_recovery r;
    enum store_state s;
    bool cancel = false;
    char id[33];
    static const uint8_t png[] = {0x89, 'P', 'N', 'G'};

    empty_queue(a);
    CHECK_INT(enqueue(a, 300, 100, NULL), 0);
    id_of(300, id);
    CHECK_INT(store_claim(a, "A", 1000, 5000, &j), 0);
    store_job_release(&j);
    /* not yet expired */
    CHECK_INT(store_reclaim(b, 3, 5999, &r), 0);
    CHECK_INT(r.requeued, 0);
    /* progress renews it */
    CHECK_INT(store_progress(a, id, "A", 1, 3000, 5000, &cancel), 0);
    CHECK_INT(store_reclaim(b, 3, 7999, &r), 0);
    CHECK_INT(r.requeued, 0);
    /* A stops renewing: B re-queues it in its old place */
    CHECK_INT(store_reclaim(b, 3, 8001, &r), 0);
    CHECK_INT(r.requeued, 1);
    CHECK_INT(store_get(b, id, &j), 0);
    CHECK_INT(j.state, STORE_QUEUED);
    CHECK_INT(j.position, 1);
    CHECK_INT(j.attempts, 1);
    store_job_release(&j);
    /* A, if it was only slow, finds the job is no longer its own */
    CHECK_INT(store_progress(a, id, "A", 2, 8100, 5000, &cancel), FX_ENOENT);
    CHECK_INT(store_claim(b, "B", 8200, 5000, &j), 0);
    CHECK_INT(j.attempts, 2);
    store_job_release(&j);
    CHECK_INT(store_progress(a, id, "A", 2, 8300, 5000, &cancel), FX_ENOENT);
    CHECK_INT(store_complete(a, id, "A", png, sizeof(png), 8400), FX_ENOENT);
    CHECK_INT(store_progress(b, id, "B", 1, 8300, 5000, &cancel), 0);

    /* attempts: started twice with max_attempts 2, a lost lease fails it */
    CHECK_INT(store_reclaim(a, 2, 13301, &r), 0);
    CHECK_INT(r.failed, 1);
    CHECK_INT(r.requeued, 0);
    CHECK_INT(store_get(a, id, &j), 0);
    CHECK_INT(j.state, STORE_FAILED);
    CHECK_STR(j.error_code, "interrupted");
    CHECK(strstr(j.error_message, "lease") != NULL);
    store_job_release(&j);

    /* a cancel asked before the lease ran out is kept */
    CHECK_INT(enqueue(a, 301, 100, NULL), 0);
    id_of(301, id);
    CHECK_INT(store_claim(a, "A", 20000, 5000, &j), 0);
    store_job_release(&j);
    CHECK_INT(store_cancel(b, id, 21000, &s), 0);
    CHECK_INT(store_reclaim(b, 3, 25001, &r), 0);
    CHECK_INT(r.cancelled, 1);
    CHECK_INT(r.requeued, 0);
    CHECK_INT(store_get(a, id, &j), 0);
    CHECK_INT(j.state, STORE_CANCELLED);
    store_job_release(&j);
    CHECK_COUNTS(a);
    store_close(a);
    store_close(b);
}

/* A full disk is FX_ENOSPC, not FX_EIO: the store on a tiny tmpfs (needs root to mount;
 * elsewhere the check is skipped and says so). */
static void test_disk_full(void)
{
    char mnt[300], db[320];
    struct store *st = NULL;
    char msg[256];
    int rc = 0, i;

    snprintf(mnt, sizeof(mnt), "%s/small", dir);
    mkdir(mnt, 0700);
    if (geteuid() != 0 || mount("tmpfs", mnt, "tmpfs", 0, "size=256k") != 0) {
        printf("disk full: skipped (cannot mount a small tmpfs here)\n");
        rmdir(mnt);
        return;
    }
    snprintf(db, sizeof(db), "%s/jobs.db", mnt);
    CHECK_INT(store_open(db, 1000, &st, msg, sizeof(msg)), 0);
    if (st) {
        char params[4096];
        memset(params, 'a', sizeof(params));
        memcpy(params, "{\"p\":\"", 6);
        memcpy(params + sizeof(params) - 3, "\"}", 3);
        for (i = 0; i < 1000 && rc == 0; i++) {
            char id[33];
            id_of(i, id);
            rc = store_enqueue(st, id, false, params, 1, 4, 1, 100000, NULL);
        }
        CHECK_INT(rc, FX_ENOSPC);
        store_close(st);
    }
    umount(mnt);
    rmdir(mnt);
}

/* ---- two connections racing to claim ------------------------------------------------------ */

/* Two processes, so that nothing in this process (the store's write mutex) orders them:
 * only SQLite's locking decides who gets each job. */
#define RACE_JOBS 200

/* Claims until the queue is empty; returns the number of errors. */
static int race(const char *name, int *claimed)
{
    struct store *st = NULL;
    char msg[256];
    int errors = 0;
    *claimed = 0;
    if (store_open(path, 10000, &st, msg, sizeof(msg)))
        return 1;
    for (;;) {
        struct store_job j;
        int rc = store_claim(st, name, 100, 60000, &j);
        if (rc == FX_ENOENT)
            break;
        if (rc) {
            errors++;
            break;
        }
        (*claimed)++;
        if (store_finish(st, j.id, name, STORE_FAILED, "internal", "race", 100))
            errors++;
        store_job_release(&j);
        usleep(200); /* "work": lets the other process in between claims */
    }
    store_close(st);
    return errors;
}

static void test_race(void)
{
    struct store *st = open_store();
    struct store_job j;
    int pipefd[2], a = 0, b = 0, status = 0;
    pid_t pid;

    /* empty the queue left by the earlier tests */
    while (store_claim(st, "sweeper", 1, 60000, &j) == 0) {
        store_finish(st, j.id, "sweeper", STORE_FAILED, "internal", "cleanup", 1);
        store_job_release(&j);
    }
    for (int i = 0; i < RACE_JOBS; i++)
        CHECK_INT(enqueue(st, 1000 + i, RACE_JOBS, NULL), 0);
    store_close(st);

    if (pipe(pipefd) != 0)
        return;
    pid = fork();
    if (pid == 0) {
        char go;
        close(pipefd[1]);
        if (read(pipefd[0], &go, 1) != 1)
            _exit(99);
        int errors = race("racer-b", &b);
        _exit(errors ? 1 : 0);
    }
    close(pipefd[0]);
    if (write(pipefd[1], "g", 1) != 1)
        fprintf(stderr, "cannot start the other racer\n");
    close(pipefd[1]);
    CHECK_INT(race("racer-a", &a), 0);
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* every job claimed exactly once, by one of the two */
    CHECK_INT(query_int("SELECT count(*) FROM jobs WHERE worker IN ('racer-a', 'racer-b') "
                        "AND attempts = 1 AND state = 'failed'"),
              RACE_JOBS);
    CHECK_INT(query_int("SELECT count(*) FROM jobs WHERE state = 'queued' OR "
                        "(state = 'running' AND worker LIKE 'racer-%')"),
              0);
    CHECK_INT(query_int("SELECT count(*) FROM jobs WHERE worker = 'racer-a'"), a);
    printf("race: racer-a claimed %d, racer-b %lld\n", a,
           query_int("SELECT count(*) FROM jobs WHERE worker = 'racer-b'"));
}

static void test_bad_files(void)
{
    struct store *st = NULL;
    char msg[512] = "", other[300];
    FILE *f;

    /* a schema newer than the program */
    CHECK_INT(query_int("SELECT 1"), 1);
    sqlite3 *db;
    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_INT(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    CHECK_INT(store_open(path, 100, &st, msg, sizeof(msg)), FX_EFORMAT);
    CHECK(st == NULL);
    CHECK(strstr(msg, "newer") != NULL);

    /* not a database */
    snprintf(other, sizeof(other), "%s/garbage.db", dir);
    f = fopen(other, "wb");
    fputs("this is not an SQLite file, not at all, no header here......................", f);
    fclose(f);
    CHECK_INT(store_open(other, 100, &st, msg, sizeof(msg)), FX_EIO);
    CHECK(st == NULL);
    CHECK(strstr(msg, "garbage.db") != NULL);
    unlink(other);

    /* a folder that does not exist */
    CHECK_INT(store_open("/nonexistent/dir/x.db", 100, &st, msg, sizeof(msg)), FX_EIO);
    store_close(NULL);
}

/* ---- migration 3: job groups ------------------------------------------------------------ */

static void test_groups(void)
{
    char saved[256], gid[33], ids[3][33];
    struct store *st;
    struct store_job *jobs = NULL, j;
    struct store_new_job nj[3];
    long pos = 0, counts[STORE_NSTATES], c = 0, f = 0;
    bool cancelled = true;
    int n = 0;
    static const char params[] =
        "{\"prompt\":\"p\",\"guidance_scale\":3.5,\"num_inference_steps\":4,"
        "\"width\":64,\"height\":64,\"seed\":1}";

    snprintf(saved, sizeof(saved), "%s", path);
    snprintf(path, sizeof(path), "%s/groups.db", dir);
    st = open_store();
    if (st == NULL)
        return;
    for (int i = 0; i < 3; i++) {
        id_of(700 + i, ids[i]);
        nj[i] = (struct store_new_job){ids[i], params, 10 + (uint64_t)i, 4};
    }
    id_of(799, gid);
    /* n > 1 needs a group; n < 1 is refused */
    CHECK_INT(store_enqueue_group(st, NULL, false, NULL, nj, 2, 1, 10, NULL), FX_EINVAL);
    CHECK_INT(store_enqueue_group(st, gid, false, NULL, nj, 0, 1, 10, NULL), FX_EINVAL);
    CHECK_INT(store_enqueue_group(st, gid, false, "{\"api\":\"openai\"}", nj, 3, 1, 10, &pos), 0);
    CHECK_INT(pos, 1);
    CHECK_INT(store_group(st, gid, &jobs, &n), 0);
    CHECK_INT(n, 3);
    for (int i = 0; i < n && jobs; i++) {
        CHECK_STR(jobs[i].id, ids[i]);
        CHECK_STR(jobs[i].group_id, gid);
        CHECK_INT(jobs[i].group_index, i);
        CHECK_INT(jobs[i].group_size, 3);
        CHECK_INT(jobs[i].position, i + 1);
        CHECK_INT((long long)jobs[i].seed, 10 + i);
        CHECK_STR(jobs[i].reply ? jobs[i].reply : "", "{\"api\":\"openai\"}");
    }
    store_group_release(jobs, n);
    CHECK_INT(store_group(st, "00000000000000000000000000000999", &jobs, &n), FX_ENOENT);
    /* a job alone has no group and no reply */
    CHECK_INT(enqueue(st, 750, 10, NULL), 0);
    id_of(750, ids[0]);
    CHECK_INT(store_get(st, ids[0], &j), 0);
    CHECK_STR(j.group_id, "");
    CHECK(j.reply == NULL);
    store_job_release(&j);
    /* all or none: 4 queued, room for 5, a group of 2 is refused whole */
    {
        char more[2][33], g2[33];
        struct store_new_job m[2];
        id_of(761, more[0]);
        id_of(762, more[1]);
        id_of(769, g2);
        m[0] = (struct store_new_job){more[0], params, 1, 4};
        m[1] = (struct store_new_job){more[1], params, 2, 4};
        CHECK_INT(store_enqueue_group(st, g2, false, NULL, m, 2, 2, 5, NULL), FX_EFULL);
        CHECK_INT(store_counts(st, counts), 0);
        CHECK_INT(counts[STORE_QUEUED], 4);
        CHECK_INT(store_get(st, more[0], &j), FX_ENOENT);
    }
    /* the first job runs; cancelling the group cancels two and flags one */
    CHECK_INT(store_running_first(st, &j), FX_ENOENT);
    CHECK_INT(store_claim(st, "w", 5, 60000, &j), 0);
    CHECK_STR(j.group_id, gid);
    store_job_release(&j);
    CHECK_INT(store_running_first(st, &j), 0);
    CHECK_INT(j.group_index, 0);
    store_job_release(&j);
    CHECK_INT(store_cancel_group(st, gid, 6, &c, &f), 0);
    CHECK_INT(c, 2);
    CHECK_INT(f, 1);
    CHECK_INT(store_group(st, gid, &jobs, &n), 0);
    CHECK_INT(n == 3 && jobs[0].state == STORE_RUNNING && jobs[0].cancel, 1);
    CHECK_INT(n == 3 && jobs[1].state == STORE_CANCELLED && jobs[2].state == STORE_CANCELLED, 1);
    store_group_release(jobs, n);
    CHECK_INT(store_cancel_group(st, gid, 7, &c, &f), 0);
    CHECK_INT(c, 0);
    CHECK_INT(f, 1); /* still running: flagged again, nothing new */
    store_close(st);

    /* a waiting client of a group goes away: its queued images are cancelled, even when the
     * one it waits on already runs */
    unlink(path);
    st = open_store();
    if (st == NULL)
        return;
    for (int i = 0; i < 3; i++)
        id_of(800 + i, ids[i]);
    id_of(899, gid);
    for (int i = 0; i < 3; i++)
        nj[i] = (struct store_new_job){ids[i], params, (uint64_t)i, 4};
    CHECK_INT(store_enqueue_group(st, gid, true, NULL, nj, 3, 1, 10, NULL), 0);
    CHECK_INT(store_claim(st, "w", 2, 60000, &j), 0);
    store_job_release(&j);
    CHECK_INT(store_cancel_queued(st, ids[0], 3, &cancelled), 0);
    CHECK_INT(cancelled, 0);
    CHECK_INT(store_counts(st, counts), 0);
    CHECK_INT(counts[STORE_CANCELLED], 2);
    CHECK_INT(counts[STORE_RUNNING], 1);
    store_close(st);
    unlink(path);
    snprintf(path, sizeof(path), "%s", saved);
}

/* ---- migration 4 (access control) over a version-2 or -3 store; groups with an owner ---- */

extern const char *const store_migrations[STORE_SCHEMA_VERSION];

/* A store at version `version` (older migrations only) with one queued job (in a group of
 * one from version 3 on) migrates to STORE_SCHEMA_VERSION: the job keeps what it had, has no
 * key, and runs; keys and owned jobs work on. */
static void test_migrate_to_4(int version)
{
    char old[300], sql[600], id[33], gid[33];
    sqlite3 *db;
    struct store *st = NULL;
    struct store_job j;
    struct store_key_usage u;
    char msg[256] = "";

    snprintf(old, sizeof(old), "%s/v%d.db", dir, version);
    id_of(900 + version, id);
    id_of(950 + version, gid);
    CHECK_INT(sqlite3_open(old, &db), SQLITE_OK);
    for (int i = 0; i < version; i++)
        CHECK_INT(sqlite3_exec(db, store_migrations[i], NULL, NULL, NULL), SQLITE_OK);
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", version);
    CHECK_INT(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    if (version >= 3)
        snprintf(sql, sizeof(sql),
                 "INSERT INTO jobs (id, kind, state, params, seed, steps, created_ms, group_id, "
                 "group_index, group_size, reply) VALUES ('%s', 'queue', 'queued', '{}', 1, 4, "
                 "1, '%s', 0, 1, '{\"api\":\"openai\"}')",
                 id, gid);
    else
        snprintf(sql, sizeof(sql),
                 "INSERT INTO jobs (id, kind, state, params, seed, steps, created_ms) VALUES "
                 "('%s', 'queue', 'queued', '{}', 1, 4, 1)",
                 id);
    CHECK_INT(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    CHECK_INT(store_open(old, 1000, &st, msg, sizeof(msg)), 0);
    if (st == NULL) {
        fprintf(stderr, "  %s\n", msg);
        return;
    }
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_STR(j.key_id, "");
    CHECK_STR(j.group_id, version >= 3 ? gid : "");
    CHECK_STR(j.reply ? j.reply : "", version >= 3 ? "{\"api\":\"openai\"}" : "");
    store_job_release(&j);
    /* the tables of migration 4 are there and work */
    struct store_key k = {
        .admin = false, .created_ms = 1, .max_queued = -1, .daily_images = -1, .daily_budget = -1};
    snprintf(k.id, sizeof(k.id), "00000000000000a%d", version);
    snprintf(k.name, sizeof(k.name), "k%d", version);
    snprintf(k.webhook_secret, sizeof(k.webhook_secret), "whsec_test");
    CHECK_INT(store_key_add(st, &k), 0);
    struct store_owner o = {k.id, 0, 0, 0, 10, NULL, false};
    char id2[33];
    id_of(910 + version, id2);
    CHECK_INT(store_enqueue_owned(st, id2, false, "{}", 1, 4, 2, 10, &o, NULL, &u), 0);
    CHECK_INT(u.images, 1);
    CHECK_INT(store_claim(st, "w", 3, 60000, &j), 0);
    CHECK_STR(j.id, id); /* the old job first */
    CHECK_STR(j.key_id, "");
    store_job_release(&j);
    store_close(st);
    sqlite3_open(old, &db);
    sqlite3_stmt *q;
    sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL);
    CHECK_INT(sqlite3_step(q), SQLITE_ROW);
    CHECK_INT(sqlite3_column_int(q, 0), STORE_SCHEMA_VERSION);
    sqlite3_finalize(q);
    sqlite3_close(db);
    unlink(old);
}

/* A group queued by a key: each image counts toward the key's queued bound, daily images
 * and budget (n x cost), all or none in the enqueue's transaction; each job records the key,
 * its cost and the webhook; cancelling the group gives every job's share back. */
static void test_groups_owned(void)
{
    char saved[256], gid[33], g2[33], ids[4][33];
    struct store *st;
    struct store_job *jobs = NULL;
    struct store_new_job nj[4];
    struct store_key_usage u;
    long counts[STORE_NSTATES];
    int n = 0;
    static const char key[] = "00000000000000b1";

    snprintf(saved, sizeof(saved), "%s", path);
    snprintf(path, sizeof(path), "%s/owned.db", dir);
    st = open_store();
    if (st == NULL)
        return;
    for (int i = 0; i < 4; i++) {
        id_of(1100 + i, ids[i]);
        nj[i] = (struct store_new_job){ids[i], "{}", (uint64_t)i, 4};
    }
    id_of(1199, gid);
    id_of(1198, g2);
    int64_t day = 5 * STORE_DAY_MS;
    /* 5 images a day, 1000 of budget, 100 per image */
    struct store_owner o = {key, 0, 5, 1000, 100, "http://127.0.0.1:9/hook", true};
    CHECK_INT(store_enqueue_group_owned(st, gid, false, NULL, nj, 3, day, 10, &o, NULL, &u), 0);
    CHECK_INT(u.queued, 3);
    CHECK_INT(u.images, 3);
    CHECK_INT((long long)u.budget, 300);
    CHECK_INT(store_group(st, gid, &jobs, &n), 0);
    for (int i = 0; i < n && jobs; i++)
        CHECK_STR(jobs[i].key_id, key);
    store_group_release(jobs, n);
    CHECK_INT(query_int("SELECT count(*) FROM jobs WHERE key_id = '00000000000000b1' AND cost = "
                        "100 AND webhook = 'http://127.0.0.1:9/hook' AND webhook_progress = 1"),
              3);
    /* 3 more images do not fit the 5 of the day: refused whole, nothing counted */
    CHECK_INT(store_enqueue_group_owned(st, g2, false, NULL, &nj[3], 1, day, 10, &o, NULL, &u), 0);
    CHECK_INT(u.images, 4);
    {
        char more[2][33];
        struct store_new_job m[2];
        id_of(1110, more[0]);
        id_of(1111, more[1]);
        m[0] = (struct store_new_job){more[0], "{}", 1, 4};
        m[1] = (struct store_new_job){more[1], "{}", 2, 4};
        char g3[33];
        id_of(1197, g3);
        CHECK_INT(store_enqueue_group_owned(st, g3, false, NULL, m, 2, day, 10, &o, NULL, &u),
                  FX_EQUOTA);
        CHECK_INT(u.limit, STORE_LIMIT_IMAGES);
        CHECK_INT(store_counts(st, counts), 0);
        CHECK_INT(counts[STORE_QUEUED], 4);
        /* the budget: 4 x 100 used of 1000; 2 images of 400 would take 800 more */
        struct store_owner big = o;
        big.daily_images = 0;
        big.cost = 400;
        CHECK_INT(store_enqueue_group_owned(st, g3, false, NULL, m, 2, day, 10, &big, NULL, &u),
                  FX_EQUOTA);
        CHECK_INT(u.limit, STORE_LIMIT_BUDGET);
        /* the queued bound: 4 queued, at most 5 */
        struct store_owner q5 = o;
        q5.daily_images = 0;
        q5.daily_budget = 0;
        q5.max_queued = 5;
        CHECK_INT(store_enqueue_group_owned(st, g3, false, NULL, m, 2, day, 10, &q5, NULL, &u),
                  FX_EQUOTA);
        CHECK_INT(u.limit, STORE_LIMIT_QUEUED);
        struct store_job j;
        CHECK_INT(store_get(st, more[0], &j), FX_ENOENT);
    }
    /* cancelling the group gives each of its jobs back: 1 image and 100 left */
    CHECK_INT(store_cancel_group(st, gid, day + 1, NULL, NULL), 0);
    CHECK_INT(store_key_usage(st, key, day + 2, &u), 0);
    CHECK_INT(u.images, 1);
    CHECK_INT((long long)u.budget, 100);
    CHECK_INT(u.queued, 1);
    /* each cancelled job queued its own webhook delivery */
    CHECK_INT(query_int("SELECT count(*) FROM webhook_deliveries WHERE event = 'end'"), 3);
    store_close(st);
    unlink(path);
    snprintf(path, sizeof(path), "%s", saved);
}

int main(int argc, char **argv)
{
    unit_parse_args(argc, argv);
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof(path), "%s/jobs.db", dir);
    CHECK_STR(store_state_name(STORE_EXPIRED), "expired");
    CHECK(store_state_name(STORE_NSTATES) == NULL);
    test_schema();
    test_id_check();
    test_queue();
    test_recover();
    test_cancel_queued();
    test_counts_and_purge();
    test_migrate_v1();
    test_groups();
    test_migrate_to_4(2);
    test_migrate_to_4(3);
    test_groups_owned();
    test_cancel_survives_stop();
    test_leases();
    test_disk_full();
    test_race();
    test_bad_files();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    return unit_done();
}
