/* The job store on a temp file with the real schema: queue order and bounds, claim,
 * progress and cancel, completion with the PNG, restart recovery, retention, migrations,
 * and two connections racing to claim. */
#include <sqlite3.h>
#include <stdlib.h>
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
    CHECK_INT(store_claim(st, "w1", 5000, &j), 0);
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
    CHECK_INT(store_progress(st, id, 2, &cancel), 0);
    CHECK(!cancel);
    enum store_state s = STORE_QUEUED;
    CHECK_INT(store_cancel(st, id, 6000, &s), 0);
    CHECK_INT(s, STORE_RUNNING);
    CHECK_INT(store_progress(st, id, 3, &cancel), 0);
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
    CHECK_INT(store_claim(st, "w1", 9000, &j), 0);
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
    CHECK_INT(store_claim(st, "w1", 9600, &j), 0);
    id_of(4, id);
    CHECK_STR(j.id, id);
    store_job_release(&j);
    CHECK_INT(store_requeue(st, id, "w1"), 0);
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
    long rq = -1, fl = -1;
    char id[33];

    CHECK_INT(enqueue(st, 10, 100, NULL), 0);
    CHECK_INT(enqueue(st, 11, 100, NULL), 0);
    CHECK_INT(store_claim(st, "gpu0", 1, &j), 0); /* job 4 from test_queue, still queued */
    store_job_release(&j);
    CHECK_INT(store_claim(st, "gpu0", 1, &j), 0);
    id_of(10, id);
    CHECK_STR(j.id, id);
    store_job_release(&j);
    CHECK_INT(store_claim(st, "gpu1", 1, &j), 0);
    store_job_release(&j);

    /* gpu0 restarts: its two running jobs are queued again, gpu1's is not touched */
    CHECK_INT(store_recover(st, "gpu0", 2, 50, &rq, &fl), 0);
    CHECK_INT(rq, 2);
    CHECK_INT(fl, 0);
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
    CHECK_INT(store_claim(st, "gpu0", 60, &j), 0); /* job 4, second start: finish it */
    CHECK_INT(store_finish(st, j.id, "gpu0", STORE_FAILED, "internal", "done", 60), 0);
    store_job_release(&j);
    CHECK_INT(store_claim(st, "gpu0", 60, &j), 0);
    id_of(10, id);
    CHECK_STR(j.id, id);
    CHECK_INT(j.attempts, 2);
    store_job_release(&j);
    CHECK_INT(enqueue(st, 12, 100, NULL), 0);
    CHECK_INT(store_claim(st, "gpu0", 60, &j), 0);
    CHECK_INT(j.attempts, 1);
    store_job_release(&j);
    CHECK_INT(store_recover(st, "gpu0", 2, 70, &rq, &fl), 0);
    CHECK_INT(rq, 1);
    CHECK_INT(fl, 1);
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
    while (store_claim(st, "sweeper", 1, &j) == 0) {
        store_finish(st, j.id, "sweeper", STORE_FAILED, "internal", "cleanup", 1);
        store_job_release(&j);
    }
    CHECK_INT(enqueue(st, 20, 100, NULL), 0);
    CHECK_INT(enqueue(st, 21, 100, NULL), 0);
    CHECK_INT(store_claim(st, "gpu0", 100, &j), 0);
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
        int rc = store_claim(st, name, 100, &j);
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
    while (store_claim(st, "sweeper", 1, &j) == 0) {
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
    test_race();
    test_bad_files();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    return unit_done();
}
