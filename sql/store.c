/* store.c - the job store over SQLite: every statement of the program, prepared at open. */
#include "store.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"

/* sql/schema.sql, embedded by the Makefile as a C string (build/gen/sql/schema_sql.c). */
extern const char store_schema_sql[];

/*
 * Migration 2: claims get a lease, and the counts by state live in a table kept by triggers
 * (so /queue/status and /metrics read six rows instead of counting the audit log, which
 * now also loses rows to audit_retention).  The counts start from the rows present, so a
 * version-1 store migrates with right numbers.  The jobs_by_state view reads the table.
 */
static const char migration2_sql[] =
    "ALTER TABLE jobs ADD COLUMN lease_until_ms INTEGER;\n"
    "CREATE TABLE job_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;\n"
    "INSERT INTO job_counts (state, n) VALUES ('queued', 0), ('running', 0), "
    "('completed', 0), ('failed', 0), ('cancelled', 0), ('expired', 0);\n"
    "UPDATE job_counts SET n = (SELECT count(*) FROM jobs WHERE jobs.state = job_counts.state);\n"
    "CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN "
    "UPDATE job_counts SET n = n + 1 WHERE state = NEW.state; END;\n"
    "CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN "
    "UPDATE job_counts SET n = n - 1 WHERE state = OLD.state; END;\n"
    "CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs "
    "WHEN OLD.state <> NEW.state BEGIN "
    "UPDATE job_counts SET n = n - 1 WHERE state = OLD.state; "
    "UPDATE job_counts SET n = n + 1 WHERE state = NEW.state; END;\n"
    "DROP VIEW jobs_by_state;\n"
    "CREATE VIEW jobs_by_state AS SELECT state, n AS jobs FROM job_counts WHERE n > 0;\n";

/*
 * Migration 3: job groups (one request for several images: each image is a job of its own,
 * the group ties them together with their place in it) and the reply a waiting client
 * expects (JSON: which API asked, how it wants the answer).  Older rows have neither.
 */
static const char migration3_sql[] =
    "ALTER TABLE jobs ADD COLUMN group_id TEXT;\n"
    "ALTER TABLE jobs ADD COLUMN group_index INTEGER;\n"
    "ALTER TABLE jobs ADD COLUMN group_size INTEGER;\n"
    "ALTER TABLE jobs ADD COLUMN reply TEXT CHECK (reply IS NULL OR json_valid(reply));\n"
    "CREATE INDEX jobs_group ON jobs (group_id, group_index) WHERE group_id IS NOT NULL;\n";

/*
 * Migration 4: access control (fcgi/auth.h).  API keys (only a SHA-256 of each key is kept),
 * the key that queued each job, per-key daily usage (counted by the enqueue transaction and
 * given back by a trigger when a job fails or is cancelled), and webhook deliveries, which
 * triggers queue when a job with a webhook ends (or makes a step, when progress was asked)
 * so that no path to a final state can miss one.  Self-contained: it only adds.
 */
static const char migration4_sql[] =
    "CREATE TABLE api_keys (\n"
    "  id TEXT PRIMARY KEY CHECK (length(id) = 16 AND id NOT GLOB '*[^0-9a-f]*'),\n"
    "  name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),\n"
    "  hash BLOB NOT NULL CHECK (length(hash) = 32),\n"
    "  admin INTEGER NOT NULL DEFAULT 0,\n"
    "  created_ms INTEGER NOT NULL, last_used_ms INTEGER, expires_ms INTEGER,\n"
    "  revoked_ms INTEGER,\n"
    "  max_queued INTEGER, daily_images INTEGER, daily_budget INTEGER,\n"
    "  webhook_url TEXT, webhook_secret TEXT NOT NULL) WITHOUT ROWID;\n"
    "CREATE UNIQUE INDEX api_keys_name ON api_keys (name) WHERE revoked_ms IS NULL;\n"
    "ALTER TABLE jobs ADD COLUMN key_id TEXT;\n"
    "ALTER TABLE jobs ADD COLUMN cost INTEGER;\n"
    "ALTER TABLE jobs ADD COLUMN webhook TEXT;\n"
    "ALTER TABLE jobs ADD COLUMN webhook_progress INTEGER NOT NULL DEFAULT 0;\n"
    "CREATE INDEX jobs_key_state ON jobs (key_id, state) WHERE key_id IS NOT NULL;\n"
    "CREATE TABLE key_usage (key_id TEXT NOT NULL, day INTEGER NOT NULL,\n"
    "  images INTEGER NOT NULL, budget INTEGER NOT NULL,\n"
    "  PRIMARY KEY (key_id, day)) WITHOUT ROWID;\n"
    "CREATE TRIGGER jobs_usage_refund AFTER UPDATE OF state ON jobs\n"
    "  WHEN NEW.key_id IS NOT NULL AND NEW.state IN ('failed', 'cancelled')\n"
    "   AND OLD.state IN ('queued', 'running') BEGIN\n"
    "  UPDATE key_usage SET images = max(images - 1, 0),\n"
    "         budget = max(budget - coalesce(NEW.cost, 0), 0)\n"
    "   WHERE key_id = NEW.key_id AND day = NEW.created_ms / 86400000; END;\n"
    "CREATE TABLE webhook_deliveries (\n"
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "  job_id TEXT NOT NULL, key_id TEXT,\n"
    "  event TEXT NOT NULL CHECK (event IN ('progress', 'end')),\n"
    "  url TEXT NOT NULL,\n"
    "  state TEXT NOT NULL DEFAULT 'pending'\n"
    "    CHECK (state IN ('pending', 'delivered', 'failed', 'dropped')),\n"
    "  attempts INTEGER NOT NULL DEFAULT 0,\n"
    "  next_ms INTEGER NOT NULL,\n"
    "  body TEXT, last_status INTEGER, last_error TEXT,\n"
    "  created_ms INTEGER NOT NULL, finished_ms INTEGER);\n"
    "CREATE INDEX webhook_due ON webhook_deliveries (state, next_ms);\n"
    "CREATE INDEX webhook_job ON webhook_deliveries (job_id);\n"
    "CREATE TRIGGER jobs_webhook_end AFTER UPDATE OF state ON jobs\n"
    "  WHEN NEW.webhook IS NOT NULL AND OLD.state <> NEW.state\n"
    "   AND NEW.state IN ('completed', 'failed', 'cancelled') BEGIN\n"
    "  INSERT INTO webhook_deliveries (job_id, key_id, event, url, next_ms, created_ms)\n"
    "  VALUES (NEW.id, NEW.key_id, 'end', NEW.webhook, coalesce(NEW.finished_ms, 0),\n"
    "          coalesce(NEW.finished_ms, 0)); END;\n"
    "CREATE TRIGGER jobs_webhook_progress AFTER UPDATE OF step ON jobs\n"
    "  WHEN NEW.webhook IS NOT NULL AND NEW.webhook_progress = 1 AND NEW.state = 'running'\n"
    "   AND NEW.step > OLD.step AND NOT EXISTS (SELECT 1 FROM webhook_deliveries\n"
    "   WHERE job_id = NEW.id AND event = 'progress' AND state = 'pending') BEGIN\n"
    "  INSERT INTO webhook_deliveries (job_id, key_id, event, url, next_ms, created_ms)\n"
    "  VALUES (NEW.id, NEW.key_id, 'progress', NEW.webhook, coalesce(NEW.started_ms, 0),\n"
    "          coalesce(NEW.started_ms, 0)); END;\n"
    /* audit views: who did what */
    "CREATE VIEW keys AS SELECT id, name, admin,\n"
    "  strftime('%Y-%m-%d %H:%M:%f', created_ms / 1000.0, 'unixepoch') AS created_utc,\n"
    "  strftime('%Y-%m-%d %H:%M:%f', last_used_ms / 1000.0, 'unixepoch') AS last_used_utc,\n"
    "  strftime('%Y-%m-%d %H:%M:%f', expires_ms / 1000.0, 'unixepoch') AS expires_utc,\n"
    "  strftime('%Y-%m-%d %H:%M:%f', revoked_ms / 1000.0, 'unixepoch') AS revoked_utc,\n"
    "  max_queued, daily_images, daily_budget, webhook_url\n"
    "  FROM api_keys ORDER BY created_ms;\n"
    "CREATE VIEW jobs_by_key AS SELECT coalesce(k.name, '(no key)') AS key, j.key_id,\n"
    "  count(*) AS jobs, sum(j.state = 'queued') AS queued, sum(j.state = 'running') AS running,\n"
    "  sum(j.state IN ('completed', 'expired')) AS images, sum(j.state = 'failed') AS failed,\n"
    "  sum(j.state = 'cancelled') AS cancelled, sum(coalesce(j.cost, 0)) AS budget,\n"
    "  strftime('%Y-%m-%d %H:%M:%f', max(j.created_ms) / 1000.0, 'unixepoch') AS last_job_utc\n"
    "  FROM jobs j LEFT JOIN api_keys k ON k.id = j.key_id\n"
    "  GROUP BY j.key_id ORDER BY jobs DESC;\n"
    "CREATE VIEW failures_by_key AS SELECT coalesce(k.name, '(no key)') AS key, j.key_id,\n"
    "  j.state, j.error_code, count(*) AS jobs,\n"
    "  strftime('%Y-%m-%d %H:%M:%f', max(j.finished_ms) / 1000.0, 'unixepoch') AS last_utc\n"
    "  FROM jobs j LEFT JOIN api_keys k ON k.id = j.key_id\n"
    "  WHERE j.state IN ('failed', 'cancelled')\n"
    "  GROUP BY j.key_id, j.state, j.error_code ORDER BY jobs DESC;\n"
    "CREATE VIEW webhook_log AS SELECT d.seq, d.job_id, coalesce(k.name, '(no key)') AS key,\n"
    "  d.event, d.url, d.state, d.attempts, d.last_status, d.last_error,\n"
    "  strftime('%Y-%m-%d %H:%M:%f', d.created_ms / 1000.0, 'unixepoch') AS created_utc,\n"
    "  strftime('%Y-%m-%d %H:%M:%f', d.finished_ms / 1000.0, 'unixepoch') AS finished_utc\n"
    "  FROM webhook_deliveries d LEFT JOIN api_keys k ON k.id = d.key_id\n"
    "  ORDER BY d.seq DESC;\n";

/* Migration N brings user_version from N - 1 to N; the list only grows.  Not static: the
 * unit test builds stores of every older version with it. */
extern const char *const store_migrations[STORE_SCHEMA_VERSION];
const char *const store_migrations[STORE_SCHEMA_VERSION] = {store_schema_sql, migration2_sql,
                                                            migration3_sql, migration4_sql};

/* The message of a job whose cancel was asked while it ran, when its worker stopped (drain,
 * crash, lost lease) before it could end it. */
#define CANCEL_STOPPED_MSG "'cancelled while running; its worker stopped before it ended'"

#define JOB_COLS                                                                                   \
    "id, state, kind, params, seed, steps, step, attempts, cancel, worker, error_code, "           \
    "error_message, created_ms, started_ms, finished_ms, expired_ms, result_bytes, group_id, "     \
    "group_index, group_size, reply, key_id"

#define KEY_COLS                                                                                   \
    "id, name, hash, admin, created_ms, last_used_ms, expires_ms, revoked_ms, max_queued, "        \
    "daily_images, daily_budget, webhook_url, webhook_secret"

/* X(name, sql) */
#define STORE_STATEMENTS(X)                                                                        \
    X(ST_BEGIN, "BEGIN IMMEDIATE")                                                                 \
    X(ST_COMMIT, "COMMIT")                                                                         \
    X(ST_ROLLBACK, "ROLLBACK")                                                                     \
    X(ST_INSERT, "INSERT INTO jobs (id, kind, state, params, seed, steps, created_ms, group_id, "  \
                 "group_index, group_size, reply) "                                                \
                 "SELECT ?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?8, ?9, ?10, ?11 "                      \
                 "WHERE (SELECT n FROM job_counts WHERE state = 'queued') < ?7")                   \
    X(ST_POSITION, "SELECT count(*) FROM jobs WHERE state = 'queued' "                             \
                   "AND seq <= (SELECT seq FROM jobs WHERE id = ?1)")                              \
    X(ST_CLAIM, "UPDATE jobs SET state = 'running', worker = ?1, started_ms = ?2, "                \
                "attempts = attempts + 1, step = 0, cancel = 0, lease_until_ms = ?3 "              \
                "WHERE seq = (SELECT seq FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1) "  \
                "RETURNING " JOB_COLS)                                                             \
    X(ST_PROGRESS, "UPDATE jobs SET step = ?2, lease_until_ms = ?4 WHERE id = ?1 "                 \
                   "AND state = 'running' AND worker = ?3 RETURNING cancel")                       \
    X(ST_RESULT_PUT, "INSERT INTO results (job_seq, png) "                                         \
                     "SELECT seq, ?3 FROM jobs WHERE id = ?1 AND state = 'running' "               \
                     "AND worker = ?2")                                                            \
    X(ST_COMPLETE, "UPDATE jobs SET state = 'completed', step = steps, finished_ms = ?3, "         \
                   "result_bytes = ?4 WHERE id = ?1 AND state = 'running' AND worker = ?2")        \
    X(ST_FINISH, "UPDATE jobs SET state = ?3, error_code = ?4, error_message = ?5, "               \
                 "finished_ms = ?6 WHERE id = ?1 AND state = 'running' AND worker = ?2")           \
    X(ST_REQUEUE_CANCEL, "UPDATE jobs SET state = 'cancelled', error_code = 'cancelled', "         \
                         "error_message = " CANCEL_STOPPED_MSG ", finished_ms = ?3 "               \
                         "WHERE id = ?1 AND state = 'running' AND worker = ?2 AND cancel = 1")     \
    X(ST_REQUEUE, "UPDATE jobs SET state = 'queued', attempts = max(attempts - 1, 0), step = 0, "  \
                  "started_ms = NULL WHERE id = ?1 AND state = 'running' AND worker = ?2")         \
    X(ST_CANCEL_QUEUED, "UPDATE jobs SET state = 'cancelled', error_code = 'cancelled', "          \
                        "error_message = 'cancelled while queued', finished_ms = ?2 "              \
                        "WHERE id = ?1 AND state = 'queued'")                                      \
    X(ST_CANCEL_GONE, "UPDATE jobs SET state = 'cancelled', error_code = 'cancelled', "            \
                      "error_message = 'the client went away before the job started', "            \
                      "finished_ms = ?2 WHERE id = ?1 AND state = 'queued'")                       \
    X(ST_CANCEL_RUNNING, "UPDATE jobs SET cancel = 1 WHERE id = ?1 AND state = 'running'")         \
    X(ST_CANCEL_GONE_GROUP, "UPDATE jobs SET state = 'cancelled', error_code = 'cancelled', "      \
                            "error_message = 'the client went away before the job started', "      \
                            "finished_ms = ?2 WHERE state = 'queued' AND kind = 'sync' AND "       \
                            "group_id = (SELECT group_id FROM jobs WHERE id = ?1)")                \
    X(ST_CANCEL_GROUP_QUEUED, "UPDATE jobs SET state = 'cancelled', error_code = 'cancelled', "    \
                              "error_message = 'cancelled while queued', finished_ms = ?2 "        \
                              "WHERE group_id = ?1 AND state = 'queued'")                          \
    X(ST_CANCEL_GROUP_RUNNING, "UPDATE jobs SET cancel = 1 WHERE group_id = ?1 "                   \
                               "AND state = 'running'")                                            \
    X(ST_GROUP, "SELECT " JOB_COLS " FROM jobs WHERE group_id = ?1 ORDER BY group_index")          \
    X(ST_RUNNING_FIRST, "SELECT " JOB_COLS " FROM jobs WHERE state = 'running' "                   \
                        "AND (?1 IS NULL OR key_id = ?1) ORDER BY seq LIMIT 1")                    \
    X(ST_STATE, "SELECT state FROM jobs WHERE id = ?1")                                            \
    X(ST_GET, "SELECT " JOB_COLS " FROM jobs WHERE id = ?1")                                       \
    X(ST_RESULT_GET, "SELECT r.png FROM results r JOIN jobs j ON j.seq = r.job_seq "               \
                     "WHERE j.id = ?1 AND j.state = 'completed'")                                  \
    X(ST_COUNTS, "SELECT state, n FROM job_counts")                                                \
    X(ST_RECOVER_CANCEL, "UPDATE jobs SET state = 'cancelled', error_code = 'cancelled', "         \
                         "error_message = " CANCEL_STOPPED_MSG ", finished_ms = ?2 "               \
                         "WHERE state = 'running' AND worker = ?1 AND cancel = 1")                 \
    X(ST_RECOVER_FAIL, "UPDATE jobs SET state = 'failed', error_code = 'interrupted', "            \
                       "error_message = 'its worker stopped during it in ' || attempts || "        \
                       "' of at most ' || ?2 || ' attempt(s); giving up', finished_ms = ?3 "       \
                       "WHERE state = 'running' AND worker = ?1 AND attempts >= ?2")               \
    X(ST_RECOVER_REQUEUE, "UPDATE jobs SET state = 'queued', step = 0, cancel = 0 "                \
                          "WHERE state = 'running' AND worker = ?1")                               \
    X(ST_LEASE_CANCEL, "UPDATE jobs SET state = 'cancelled', error_code = 'cancelled', "           \
                       "error_message = " CANCEL_STOPPED_MSG ", finished_ms = ?1 "                 \
                       "WHERE state = 'running' AND lease_until_ms < ?1 AND cancel = 1")           \
    X(ST_LEASE_FAIL, "UPDATE jobs SET state = 'failed', error_code = 'interrupted', "              \
                     "error_message = 'its worker stopped renewing its lease in ' || attempts || " \
                     "' of at most ' || ?2 || ' attempt(s); giving up', finished_ms = ?1 "         \
                     "WHERE state = 'running' AND lease_until_ms < ?1 AND attempts >= ?2")         \
    X(ST_LEASE_REQUEUE, "UPDATE jobs SET state = 'queued', step = 0, cancel = 0 "                  \
                        "WHERE state = 'running' AND lease_until_ms < ?1")                         \
    X(ST_PURGE, "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE state IN "              \
                "('failed', 'cancelled', 'expired') AND finished_ms < ?1 LIMIT ?2)")               \
    X(ST_EXPIRE_RESULTS, "DELETE FROM results WHERE job_seq IN (SELECT seq FROM jobs "             \
                         "WHERE state = 'completed' AND finished_ms < ?1)")                        \
    X(ST_EXPIRE_JOBS, "UPDATE jobs SET state = 'expired', expired_ms = ?2 "                        \
                      "WHERE state = 'completed' AND finished_ms < ?1")                            \
    X(ST_MEAN_RUN, "SELECT coalesce(avg(finished_ms - started_ms), 0) FROM (SELECT finished_ms, "  \
                   "started_ms FROM jobs WHERE state IN ('completed', 'expired') "                 \
                   "ORDER BY finished_ms DESC LIMIT 20)")                                          \
    X(ST_JOB_OWNER, "UPDATE jobs SET key_id = ?2, cost = ?3, webhook = ?4, webhook_progress = ?5 " \
                    "WHERE id = ?1")                                                               \
    X(ST_KEY_QUEUED, "SELECT count(*) FROM jobs WHERE key_id = ?1 AND state = 'queued'")           \
    X(ST_USAGE_GET, "SELECT images, budget FROM key_usage WHERE key_id = ?1 AND day = ?2")         \
    X(ST_USAGE_ADD, "INSERT INTO key_usage (key_id, day, images, budget) VALUES (?1, ?2, ?4, ?3) " \
                    "ON CONFLICT (key_id, day) DO UPDATE SET images = images + excluded.images, "  \
                    "budget = budget + excluded.budget")                                           \
    X(ST_USAGE_PURGE, "DELETE FROM key_usage WHERE day < ?1")                                      \
    X(ST_KEY_ADD, "INSERT INTO api_keys (" KEY_COLS ") "                                           \
                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)")               \
    X(ST_KEY_GET, "SELECT " KEY_COLS " FROM api_keys WHERE id = ?1")                               \
    X(ST_KEY_LIST, "SELECT " KEY_COLS " FROM api_keys ORDER BY created_ms, id")                    \
    X(ST_KEY_REVOKE, "UPDATE api_keys SET revoked_ms = ?2 WHERE (id = ?1 OR name = ?1) "           \
                     "AND revoked_ms IS NULL RETURNING id")                                        \
    X(ST_KEY_TOUCH, "UPDATE api_keys SET last_used_ms = ?2 WHERE id = ?1")                         \
    X(ST_KEY_ACTIVE, "SELECT count(*) FROM api_keys WHERE revoked_ms IS NULL "                     \
                     "AND (expires_ms IS NULL OR expires_ms > ?1)")                                \
    X(ST_KEY_STATS, "SELECT k.id, k.name, k.max_queued, k.daily_images, k.daily_budget, "          \
                    "(SELECT count(*) FROM jobs WHERE key_id = k.id AND state = 'queued'), "       \
                    "coalesce(u.images, 0), coalesce(u.budget, 0) FROM api_keys k "                \
                    "LEFT JOIN key_usage u ON u.key_id = k.id AND u.day = ?1 "                     \
                    "WHERE k.revoked_ms IS NULL ORDER BY k.name")                                  \
    X(ST_DELIVERY_CLAIM, "UPDATE webhook_deliveries SET attempts = attempts + 1, next_ms = ?2 "    \
                         "WHERE seq = (SELECT seq FROM webhook_deliveries WHERE state = "          \
                         "'pending' AND next_ms <= ?1 ORDER BY next_ms, seq LIMIT 1) "             \
                         "RETURNING seq, job_id, key_id, event, url, body, attempts")              \
    X(ST_DELIVERY_DONE, "UPDATE webhook_deliveries SET state = ?2, last_status = ?3, "             \
                        "last_error = ?4, next_ms = ?5, body = coalesce(body, ?6), "               \
                        "finished_ms = CASE WHEN ?2 = 'pending' THEN NULL ELSE ?7 END "            \
                        "WHERE seq = ?1")                                                          \
    X(ST_DELIVERY_NEXT, "SELECT min(next_ms) FROM webhook_deliveries WHERE state = 'pending'")     \
    X(ST_DELIVERY_PURGE, "DELETE FROM webhook_deliveries WHERE seq IN (SELECT seq FROM "           \
                         "webhook_deliveries WHERE state <> 'pending' AND finished_ms < ?1 "       \
                         "LIMIT ?2)")

enum {
#define ST_ENUM_(name, sql) name,
    STORE_STATEMENTS(ST_ENUM_)
#undef ST_ENUM_
        ST_COUNT
};

static const char *const statement_sql[ST_COUNT] = {
#define ST_SQL_(name, sql) sql,
    STORE_STATEMENTS(ST_SQL_)
#undef ST_SQL_
};

static const char *const state_names[STORE_NSTATES] = {"queued", "running",   "completed",
                                                       "failed", "cancelled", "expired"};

struct store {
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
};

/* Writers of one process take turns on this mutex before SQLite's write lock: a blocked
 * thread then waits in FIFO-ish order instead of polling in SQLite's busy handler (which
 * backs off up to 100 ms per try and let some enqueues wait a second under load).  Other
 * processes still meet at SQLite's lock, with the busy timeout. */
static pthread_mutex_t write_turn = PTHREAD_MUTEX_INITIALIZER;

const char *store_state_name(enum store_state s)
{
    return (unsigned)s < STORE_NSTATES ? state_names[s] : NULL;
}

static enum store_state state_parse(const unsigned char *s)
{
    for (int i = 0; i < STORE_NSTATES; i++)
        if (s && strcmp((const char *)s, state_names[i]) == 0)
            return (enum store_state)i;
    return STORE_FAILED; /* the CHECK constraint makes this unreachable */
}

/* SQLite result code -> our list. */
static int from_sqlite(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return 0;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return FX_EBUSY;
    case SQLITE_NOMEM:
        return FX_ENOMEM;
    case SQLITE_FULL:
        return FX_ENOSPC;
    default:
        return FX_EIO;
    }
}

void store_job_release(struct store_job *j)
{
    if (j) {
        free(j->params);
        free(j->reply);
        j->params = NULL;
        j->reply = NULL;
    }
}

void store_group_release(struct store_job *jobs, int n)
{
    for (int i = 0; jobs && i < n; i++)
        store_job_release(&jobs[i]);
    free(jobs);
}

const char *store_errmsg(const struct store *st)
{
    return st && st->db ? sqlite3_errmsg(st->db) : "no database";
}

void store_close(struct store *st)
{
    if (st == NULL)
        return;
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(st->st[i]);
    sqlite3_close(st->db);
    free(st);
}

static int migrate(struct store *st, const char *path, char *msg, size_t msg_len)
{
    sqlite3_stmt *q = NULL;
    int version = 0, rc;
    char *err = NULL;

    pthread_mutex_lock(&write_turn);
    if (sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        rc = from_sqlite(sqlite3_errcode(st->db));
        pthread_mutex_unlock(&write_turn);
        return fx_fail(msg, msg_len, rc, "database '%s': %s", path, sqlite3_errmsg(st->db));
    }
    rc = sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &q, NULL);
    if (rc == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW)
        version = sqlite3_column_int(q, 0);
    else
        rc = SQLITE_ERROR;
    sqlite3_finalize(q);
    if (rc != SQLITE_OK) {
        rc = fx_fail(msg, msg_len, FX_EIO, "database '%s': %s", path, sqlite3_errmsg(st->db));
        goto out;
    }
    if (version > STORE_SCHEMA_VERSION) {
        rc = fx_fail(msg, msg_len, FX_EFORMAT,
                     "database '%s': schema version %d is newer than this program's (%d)", path,
                     version, STORE_SCHEMA_VERSION);
        goto out;
    }
    for (; version < STORE_SCHEMA_VERSION; version++) {
        char pragma[64];
        snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %d", version + 1);
        if (sqlite3_exec(st->db, store_migrations[version], NULL, NULL, &err) != SQLITE_OK ||
            sqlite3_exec(st->db, pragma, NULL, NULL, &err) != SQLITE_OK) {
            rc = fx_fail(msg, msg_len, FX_EIO, "database '%s': migration %d: %s", path, version + 1,
                         err ? err : sqlite3_errmsg(st->db));
            goto out;
        }
    }
    rc = 0;
out:
    sqlite3_free(err);
    if (sqlite3_exec(st->db, rc ? "ROLLBACK" : "COMMIT", NULL, NULL, NULL) != SQLITE_OK && !rc)
        rc = fx_fail(msg, msg_len, FX_EIO, "database '%s': commit: %s", path,
                     sqlite3_errmsg(st->db));
    pthread_mutex_unlock(&write_turn);
    return rc;
}

int store_open(const char *path, int busy_ms, struct store **out, char *msg, size_t msg_len)
{
    struct store *st = NULL;
    char *err = NULL;
    int rc;

    *out = NULL;
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        return fx_fail(msg, msg_len, FX_ENOMEM, "database '%s': out of memory", path);
    rc = sqlite3_open_v2(path, &st->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rc = fx_fail(msg, msg_len, rc == SQLITE_NOMEM ? FX_ENOMEM : FX_EIO, "database '%s': %s",
                     path, st->db ? sqlite3_errmsg(st->db) : "cannot open");
        goto out;
    }
    sqlite3_busy_timeout(st->db, busy_ms);
    sqlite3_extended_result_codes(st->db, 1);
    /* journal_mode answers a row; the others are silent.  WAL persists in the file. */
    if (sqlite3_exec(st->db,
                     "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; "
                     "PRAGMA foreign_keys = ON; PRAGMA journal_size_limit = 16777216",
                     NULL, NULL, &err) != SQLITE_OK) {
        rc = from_sqlite(sqlite3_errcode(st->db));
        rc = fx_fail(msg, msg_len, rc ? rc : FX_EIO, "database '%s': %s", path,
                     err ? err : sqlite3_errmsg(st->db));
        goto out;
    }
    rc = migrate(st, path, msg, msg_len);
    if (rc)
        goto out;
    for (int i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v3(st->db, statement_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &st->st[i],
                               NULL) != SQLITE_OK) {
            rc = fx_fail(msg, msg_len, FX_EIO, "database '%s': preparing statement %d: %s", path, i,
                         sqlite3_errmsg(st->db));
            goto out;
        }
    }
    *out = st;
    st = NULL;
    rc = 0;
out:
    sqlite3_free(err);
    store_close(st);
    return rc;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static sqlite3_stmt *stmt(struct store *st, int which)
{
    sqlite3_stmt *s = st->st[which];
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return s;
}

/* stmt() with the job or key id bound to parameter 1 (id must outlive the step). */
static sqlite3_stmt *stmt_id(struct store *st, int which, const char *id)
{
    sqlite3_stmt *s = stmt(st, which);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    return s;
}

static int exec1(struct store *st, int which)
{
    sqlite3_stmt *s = stmt(st, which);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : from_sqlite(rc);
}

static int tx_begin(struct store *st)
{
    int rc;
    pthread_mutex_lock(&write_turn);
    rc = exec1(st, ST_BEGIN);
    if (rc)
        pthread_mutex_unlock(&write_turn);
    return rc;
}

/* Commits when rc is 0, else rolls back; returns rc or the commit's error. */
static int tx_end(struct store *st, int rc)
{
    if (rc == 0)
        rc = exec1(st, ST_COMMIT);
    if (rc && !sqlite3_get_autocommit(st->db))
        exec1(st, ST_ROLLBACK);
    pthread_mutex_unlock(&write_turn);
    return rc;
}

static void copy_text(char *dst, size_t n, const unsigned char *src)
{
    snprintf(dst, n, "%s", src ? (const char *)src : "");
}

static int64_t col_ms(sqlite3_stmt *s, int i)
{
    return sqlite3_column_type(s, i) == SQLITE_NULL ? 0 : sqlite3_column_int64(s, i);
}

/* Fills a job from a row of JOB_COLS. */
static int read_job(sqlite3_stmt *s, struct store_job *j)
{
    const unsigned char *params = sqlite3_column_text(s, 3);
    memset(j, 0, sizeof(*j));
    copy_text(j->id, sizeof(j->id), sqlite3_column_text(s, 0));
    j->state = state_parse(sqlite3_column_text(s, 1));
    j->sync =
        sqlite3_column_text(s, 2) && strcmp((const char *)sqlite3_column_text(s, 2), "sync") == 0;
    j->params = strdup(params ? (const char *)params : "{}");
    if (j->params == NULL)
        return FX_ENOMEM;
    j->seed = (uint64_t)sqlite3_column_int64(s, 4);
    j->steps = sqlite3_column_int(s, 5);
    j->step = sqlite3_column_int(s, 6);
    j->attempts = sqlite3_column_int(s, 7);
    j->cancel = sqlite3_column_int(s, 8) != 0;
    copy_text(j->worker, sizeof(j->worker), sqlite3_column_text(s, 9));
    copy_text(j->error_code, sizeof(j->error_code), sqlite3_column_text(s, 10));
    copy_text(j->error_message, sizeof(j->error_message), sqlite3_column_text(s, 11));
    j->created_ms = col_ms(s, 12);
    j->started_ms = col_ms(s, 13);
    j->finished_ms = col_ms(s, 14);
    j->expired_ms = col_ms(s, 15);
    j->result_bytes = col_ms(s, 16);
    copy_text(j->group_id, sizeof(j->group_id), sqlite3_column_text(s, 17));
    j->group_index = sqlite3_column_int(s, 18);
    j->group_size = sqlite3_column_int(s, 19);
    if (sqlite3_column_type(s, 20) != SQLITE_NULL) {
        j->reply = strdup((const char *)sqlite3_column_text(s, 20));
        if (j->reply == NULL)
            return FX_ENOMEM;
    }
    copy_text(j->key_id, sizeof(j->key_id), sqlite3_column_text(s, 21));
    return 0;
}

static int position(struct store *st, const char *id, long *pos)
{
    sqlite3_stmt *s = stmt(st, ST_POSITION);
    int rc;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    *pos = rc == SQLITE_ROW ? (long)sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    return rc == SQLITE_ROW ? 0 : from_sqlite(rc);
}

/* ---- the queue ---------------------------------------------------------------------------- */

/* Steps a one-row write (INSERT ... SELECT or UPDATE) inside the caller's transaction;
 * FX_ENOENT when it changed nothing. */
static int update1(struct store *st, sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return from_sqlite(rc);
    return sqlite3_changes(st->db) ? 0 : FX_ENOENT;
}

/* Steps an UPDATE of many rows; adds the rows changed to *n. */
static int update_n(struct store *st, sqlite3_stmt *s, long *n)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return from_sqlite(rc);
    *n += sqlite3_changes(st->db);
    return 0;
}

int store_enqueue(struct store *st, const char *id, bool sync, const char *params, uint64_t seed,
                  int steps, int64_t now_ms, long max_queued, long *pos)
{
    return store_enqueue_owned(st, id, sync, params, seed, steps, now_ms, max_queued, NULL, pos,
                               NULL);
}

int store_enqueue_group(struct store *st, const char *group_id, bool sync, const char *reply,
                        const struct store_new_job *jobs, int n, int64_t now_ms, long max_queued,
                        long *pos)
{
    return store_enqueue_group_owned(st, group_id, sync, reply, jobs, n, now_ms, max_queued, NULL,
                                     pos, NULL);
}

int store_enqueue_owned(struct store *st, const char *id, bool sync, const char *params,
                        uint64_t seed, int steps, int64_t now_ms, long max_queued,
                        const struct store_owner *owner, long *pos, struct store_key_usage *usage)
{
    struct store_new_job j = {id, params, seed, steps};
    return store_enqueue_group_owned(st, NULL, sync, NULL, &j, 1, now_ms, max_queued, owner, pos,
                                     usage);
}

/* The owner's usage now (inside the caller's transaction). */
static int key_usage(struct store *st, const char *key_id, int64_t day, struct store_key_usage *u)
{
    sqlite3_stmt *s = stmt(st, ST_KEY_QUEUED);
    int rc;
    memset(u, 0, sizeof(*u));
    sqlite3_bind_text(s, 1, key_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        u->queued = (long)sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    if (rc != SQLITE_ROW)
        return from_sqlite(rc);
    s = stmt(st, ST_USAGE_GET);
    sqlite3_bind_text(s, 1, key_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, day);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        u->images = (long)sqlite3_column_int64(s, 0);
        u->budget = sqlite3_column_int64(s, 1);
    }
    sqlite3_reset(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : from_sqlite(rc);
}

int store_key_usage(struct store *st, const char *key_id, int64_t now_ms, struct store_key_usage *u)
{
    return key_usage(st, key_id, now_ms / STORE_DAY_MS, u);
}

/* The limit of the owner that n more jobs (images) would cross, or STORE_LIMIT_NONE: a group
 * counts each of its images, all or none. */
static enum store_limit over_limit(const struct store_owner *o, const struct store_key_usage *u,
                                   int n)
{
    if (o->max_queued > 0 && u->queued + n > o->max_queued)
        return STORE_LIMIT_QUEUED;
    if (o->daily_images > 0 && u->images + n > o->daily_images)
        return STORE_LIMIT_IMAGES;
    if (o->daily_budget > 0 && u->budget + (int64_t)n * o->cost > o->daily_budget)
        return STORE_LIMIT_BUDGET;
    return STORE_LIMIT_NONE;
}

int store_enqueue_group_owned(struct store *st, const char *group_id, bool sync, const char *reply,
                              const struct store_new_job *jobs, int n, int64_t now_ms,
                              long max_queued, const struct store_owner *owner, long *pos,
                              struct store_key_usage *usage)
{
    struct store_key_usage u = {0, 0, 0, STORE_LIMIT_NONE};
    enum store_limit lim = STORE_LIMIT_NONE;
    sqlite3_stmt *s;
    long p = 0;
    int rc;
    if (n < 1 || (group_id == NULL && n != 1))
        return FX_EINVAL;
    if ((rc = tx_begin(st)))
        return rc;
    /* the key's limits are checked and its usage counted in the transaction of the insert,
     * so concurrent requests of one key cannot both pass the last free place */
    if (owner && owner->key_id) {
        if ((rc = key_usage(st, owner->key_id, now_ms / STORE_DAY_MS, &u)))
            goto out;
        if ((lim = over_limit(owner, &u, n)) != STORE_LIMIT_NONE) {
            rc = FX_EQUOTA;
            goto out;
        }
    }
    /* all or none: a group that does not fit the queue is refused whole */
    for (int i = 0; i < n && rc == 0; i++) {
        s = stmt(st, ST_INSERT);
        sqlite3_bind_text(s, 1, jobs[i].id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, sync ? "sync" : "queue", -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 3, jobs[i].params, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 4, (sqlite3_int64)jobs[i].seed);
        sqlite3_bind_int(s, 5, jobs[i].steps);
        sqlite3_bind_int64(s, 6, now_ms);
        sqlite3_bind_int64(s, 7, max_queued);
        if (group_id) {
            sqlite3_bind_text(s, 8, group_id, -1, SQLITE_STATIC);
            sqlite3_bind_int(s, 9, i);
            sqlite3_bind_int(s, 10, n);
        }
        if (reply)
            sqlite3_bind_text(s, 11, reply, -1, SQLITE_STATIC);
        rc = update1(st, s);
        if (rc == FX_ENOENT) /* the INSERT's WHERE found the queue full */
            rc = FX_EFULL;
        if (rc == 0 && owner && (owner->key_id || owner->webhook)) {
            /* each image is a job of its own: its key, its cost (refunded per job by the
             * trigger) and its webhook */
            s = stmt(st, ST_JOB_OWNER);
            sqlite3_bind_text(s, 1, jobs[i].id, -1, SQLITE_STATIC);
            if (owner->key_id)
                sqlite3_bind_text(s, 2, owner->key_id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(s, 3, owner->cost);
            if (owner->webhook)
                sqlite3_bind_text(s, 4, owner->webhook, -1, SQLITE_STATIC);
            sqlite3_bind_int(s, 5, owner->webhook_progress ? 1 : 0);
            rc = update1(st, s);
        }
    }
    if (rc)
        goto out;
    if (owner && owner->key_id) {
        s = stmt(st, ST_USAGE_ADD);
        sqlite3_bind_text(s, 1, owner->key_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, now_ms / STORE_DAY_MS);
        sqlite3_bind_int64(s, 3, (int64_t)n * owner->cost);
        sqlite3_bind_int(s, 4, n);
        if ((rc = update1(st, s)))
            goto out;
        u.queued += n;
        u.images += n;
        u.budget += (int64_t)n * owner->cost;
    }
    rc = position(st, jobs[0].id, &p);
out:
    rc = tx_end(st, rc);
    if (rc == 0 && pos)
        *pos = p;
    if (usage) {
        *usage = u;
        usage->limit = lim;
    }
    return rc;
}

int store_claim(struct store *st, const char *worker, int64_t now_ms, int64_t lease_ms,
                struct store_job *job)
{
    sqlite3_stmt *s;
    int rc = tx_begin(st), step;
    memset(job, 0, sizeof(*job));
    if (rc)
        return rc;
    s = stmt(st, ST_CLAIM);
    sqlite3_bind_text(s, 1, worker, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, now_ms);
    sqlite3_bind_int64(s, 3, now_ms + lease_ms);
    step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        rc = read_job(s, job);
        /* RETURNING rows are all computed by the first step; finish the statement. */
        while ((step = sqlite3_step(s)) == SQLITE_ROW)
            ;
    }
    if (step != SQLITE_DONE && rc == 0)
        rc = from_sqlite(step);
    else if (rc == 0 && job->id[0] == '\0')
        rc = FX_ENOENT;
    sqlite3_reset(s);
    if (rc == FX_ENOENT) {
        int c = tx_end(st, 0); /* nothing queued: not an error for the transaction */
        rc = c ? c : FX_ENOENT;
    } else {
        rc = tx_end(st, rc);
    }
    if (rc)
        store_job_release(job);
    return rc;
}

int store_progress(struct store *st, const char *id, const char *worker, int step, int64_t now_ms,
                   int64_t lease_ms, bool *cancel)
{
    sqlite3_stmt *s = stmt(st, ST_PROGRESS);
    int rc;
    bool c = false, found = false;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 2, step);
    sqlite3_bind_text(s, 3, worker, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, now_ms + lease_ms);
    pthread_mutex_lock(&write_turn);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        found = true;
        c = sqlite3_column_int(s, 0) != 0;
    }
    sqlite3_reset(s);
    pthread_mutex_unlock(&write_turn);
    if (rc != SQLITE_DONE)
        return from_sqlite(rc);
    if (cancel)
        *cancel = c;
    return found ? 0 : FX_ENOENT;
}

int store_complete(struct store *st, const char *id, const char *worker, const void *png,
                   size_t png_len, int64_t now_ms)
{
    sqlite3_stmt *s;
    int rc = tx_begin(st);
    if (rc)
        return rc;
    s = stmt_id(st, ST_RESULT_PUT, id);
    sqlite3_bind_text(s, 2, worker, -1, SQLITE_STATIC);
    sqlite3_bind_blob64(s, 3, png, png_len, SQLITE_STATIC);
    rc = update1(st, s);
    if (rc)
        goto out;
    s = stmt_id(st, ST_COMPLETE, id);
    sqlite3_bind_text(s, 2, worker, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, now_ms);
    sqlite3_bind_int64(s, 4, (sqlite3_int64)png_len);
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    rc = rc == SQLITE_DONE ? 0 : from_sqlite(rc);
out:
    return tx_end(st, rc);
}

int store_finish(struct store *st, const char *id, const char *worker, enum store_state state,
                 const char *code, const char *message, int64_t now_ms)
{
    sqlite3_stmt *s;
    int rc;
    if (state != STORE_FAILED && state != STORE_CANCELLED)
        return FX_EINVAL;
    if ((rc = tx_begin(st)))
        return rc;
    s = stmt_id(st, ST_FINISH, id);
    sqlite3_bind_text(s, 2, worker, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, state_names[state], -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, code, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 5, message, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 6, now_ms);
    return tx_end(st, update1(st, s));
}

int store_requeue(struct store *st, const char *id, const char *worker, int64_t now_ms,
                  bool *cancelled)
{
    sqlite3_stmt *s;
    bool c = false;
    int rc;
    if ((rc = tx_begin(st)))
        return rc;
    /* a cancel answered 202 is kept: the job ends cancelled instead of running again */
    s = stmt_id(st, ST_REQUEUE_CANCEL, id);
    sqlite3_bind_text(s, 2, worker, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, now_ms);
    rc = update1(st, s);
    if (rc == 0) {
        c = true;
    } else if (rc == FX_ENOENT) {
        s = stmt_id(st, ST_REQUEUE, id);
        sqlite3_bind_text(s, 2, worker, -1, SQLITE_STATIC);
        rc = update1(st, s);
    }
    rc = tx_end(st, rc);
    if (cancelled)
        *cancelled = rc == 0 && c;
    return rc;
}

static int read_state(struct store *st, const char *id, enum store_state *state)
{
    sqlite3_stmt *s = stmt(st, ST_STATE);
    int rc;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        *state = state_parse(sqlite3_column_text(s, 0));
    sqlite3_reset(s);
    return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? FX_ENOENT : from_sqlite(rc);
}

int store_cancel(struct store *st, const char *id, int64_t now_ms, enum store_state *state)
{
    sqlite3_stmt *s;
    enum store_state cur = STORE_QUEUED;
    int rc = tx_begin(st);
    if (rc)
        return rc;
    if ((rc = read_state(st, id, &cur)))
        goto out;
    if (cur == STORE_QUEUED) {
        s = stmt_id(st, ST_CANCEL_QUEUED, id);
        sqlite3_bind_int64(s, 2, now_ms);
        rc = update1(st, s);
        cur = STORE_CANCELLED;
    } else if (cur == STORE_RUNNING) {
        s = stmt_id(st, ST_CANCEL_RUNNING, id);
        rc = update1(st, s);
    } else {
        *state = cur;
        tx_end(st, FX_EFINISHED);
        return FX_EFINISHED;
    }
out:
    rc = tx_end(st, rc);
    if (rc == 0)
        *state = cur;
    return rc;
}

int store_cancel_queued(struct store *st, const char *id, int64_t now_ms, bool *cancelled)
{
    sqlite3_stmt *s;
    enum store_state cur = STORE_QUEUED;
    bool done = false;
    int rc = tx_begin(st);
    if (rc)
        return rc;
    if ((rc = read_state(st, id, &cur)) == 0 && cur == STORE_QUEUED) {
        s = stmt_id(st, ST_CANCEL_GONE, id);
        sqlite3_bind_int64(s, 2, now_ms);
        rc = update1(st, s);
        done = rc == 0;
    }
    if (rc == 0) {
        /* the other images of the same waiting request: nobody will read them */
        long others = 0;
        s = stmt_id(st, ST_CANCEL_GONE_GROUP, id);
        sqlite3_bind_int64(s, 2, now_ms);
        rc = update_n(st, s, &others);
    }
    rc = tx_end(st, rc);
    if (cancelled)
        *cancelled = rc == 0 && done;
    return rc;
}

int store_get(struct store *st, const char *id, struct store_job *job)
{
    sqlite3_stmt *s = stmt(st, ST_GET);
    int rc;
    memset(job, 0, sizeof(*job));
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        rc = read_job(s, job);
    else
        rc = rc == SQLITE_DONE ? FX_ENOENT : from_sqlite(rc);
    sqlite3_reset(s);
    if (rc == 0 && job->state == STORE_QUEUED)
        rc = position(st, id, &job->position);
    if (rc)
        store_job_release(job);
    return rc;
}

int store_result(struct store *st, const char *id, uint8_t **png, size_t *len)
{
    sqlite3_stmt *s = stmt(st, ST_RESULT_GET);
    int rc;
    *png = NULL;
    *len = 0;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const void *b = sqlite3_column_blob(s, 0);
        size_t n = (size_t)sqlite3_column_bytes(s, 0);
        *png = malloc(n ? n : 1);
        if (*png == NULL) {
            rc = FX_ENOMEM;
        } else {
            if (n)
                memcpy(*png, b, n);
            *len = n;
            rc = 0;
        }
    } else {
        rc = rc == SQLITE_DONE ? FX_ENOENT : from_sqlite(rc);
    }
    sqlite3_reset(s);
    return rc;
}

int store_counts(struct store *st, long counts[STORE_NSTATES])
{
    sqlite3_stmt *s = stmt(st, ST_COUNTS);
    int rc;
    memset(counts, 0, sizeof(long) * STORE_NSTATES);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        counts[state_parse(sqlite3_column_text(s, 0))] = (long)sqlite3_column_int64(s, 1);
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : from_sqlite(rc);
}

int store_recover(struct store *st, const char *worker, int max_attempts, int64_t now_ms,
                  struct store_recovery *out)
{
    struct store_recovery r = {0, 0, 0};
    sqlite3_stmt *s;
    int rc = tx_begin(st);
    if (rc)
        return rc;
    /* in this order: a cancelled job is not run again, whatever its attempts */
    s = stmt(st, ST_RECOVER_CANCEL);
    sqlite3_bind_text(s, 1, worker, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, now_ms);
    if ((rc = update_n(st, s, &r.cancelled)))
        goto out;
    s = stmt(st, ST_RECOVER_FAIL);
    sqlite3_bind_text(s, 1, worker, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 2, max_attempts);
    sqlite3_bind_int64(s, 3, now_ms);
    if ((rc = update_n(st, s, &r.failed)))
        goto out;
    s = stmt(st, ST_RECOVER_REQUEUE);
    sqlite3_bind_text(s, 1, worker, -1, SQLITE_STATIC);
    rc = update_n(st, s, &r.requeued);
out:
    rc = tx_end(st, rc);
    if (rc == 0 && out)
        *out = r;
    return rc;
}

int store_reclaim(struct store *st, int max_attempts, int64_t now_ms, struct store_recovery *out)
{
    struct store_recovery r = {0, 0, 0};
    sqlite3_stmt *s;
    int rc = tx_begin(st);
    if (rc)
        return rc;
    s = stmt(st, ST_LEASE_CANCEL);
    sqlite3_bind_int64(s, 1, now_ms);
    if ((rc = update_n(st, s, &r.cancelled)))
        goto out;
    s = stmt(st, ST_LEASE_FAIL);
    sqlite3_bind_int64(s, 1, now_ms);
    sqlite3_bind_int(s, 2, max_attempts);
    if ((rc = update_n(st, s, &r.failed)))
        goto out;
    s = stmt(st, ST_LEASE_REQUEUE);
    sqlite3_bind_int64(s, 1, now_ms);
    rc = update_n(st, s, &r.requeued);
out:
    rc = tx_end(st, rc);
    if (rc == 0 && out)
        *out = r;
    return rc;
}

/* Begins a transaction and runs statement `id` bound to (before_ms, limit),
 * counting the rows it changed into *count. On success the transaction is
 * left open for the caller to extend and close with tx_end; on failure it is
 * already closed (returns nonzero). */
static int purge_begin(struct store *st, int id, int64_t before_ms, long limit, long *count)
{
    sqlite3_stmt *s;
    int rc = tx_begin(st);
    if (rc)
        return rc;
    s = stmt(st, id);
    sqlite3_bind_int64(s, 1, before_ms);
    sqlite3_bind_int64(s, 2, limit);
    rc = update_n(st, s, count);
    if (rc)
        return tx_end(st, rc);
    return 0;
}

int store_purge(struct store *st, int64_t before_ms, long limit, long *n)
{
    long count = 0;
    int rc = purge_begin(st, ST_PURGE, before_ms, limit, &count);
    if (rc)
        return rc;
    rc = tx_end(st, 0);
    if (rc == 0 && n)
        *n = count;
    return rc;
}

int store_checkpoint(struct store *st, long *wal_frames, long *done)
{
    int log = 0, ckpt = 0;
    int rc = sqlite3_wal_checkpoint_v2(st->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &ckpt);
    if (wal_frames)
        *wal_frames = log;
    if (done)
        *done = ckpt;
    return from_sqlite(rc);
}

int store_expire(struct store *st, int64_t before_ms, int64_t now_ms, long *n)
{
    sqlite3_stmt *s;
    long count = 0;
    int rc = tx_begin(st);
    if (rc)
        return rc;
    s = stmt(st, ST_EXPIRE_RESULTS);
    sqlite3_bind_int64(s, 1, before_ms);
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        rc = from_sqlite(rc);
        goto out;
    }
    s = stmt(st, ST_EXPIRE_JOBS);
    sqlite3_bind_int64(s, 1, before_ms);
    sqlite3_bind_int64(s, 2, now_ms);
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        rc = from_sqlite(rc);
        goto out;
    }
    count = sqlite3_changes(st->db);
    rc = 0;
out:
    rc = tx_end(st, rc);
    if (rc == 0 && n)
        *n = count;
    return rc;
}

int store_mean_run_ms(struct store *st, double *ms)
{
    sqlite3_stmt *s = stmt(st, ST_MEAN_RUN);
    int rc = sqlite3_step(s);
    *ms = rc == SQLITE_ROW ? sqlite3_column_double(s, 0) : 0.0;
    sqlite3_reset(s);
    return rc == SQLITE_ROW ? 0 : from_sqlite(rc);
}

int store_group(struct store *st, const char *group_id, struct store_job **jobs, int *n)
{
    sqlite3_stmt *s = stmt(st, ST_GROUP);
    struct store_job *v = NULL;
    int rc, k = 0, cap = 0;
    *jobs = NULL;
    *n = 0;
    sqlite3_bind_text(s, 1, group_id, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (k == cap) {
            struct store_job *w = realloc(v, (size_t)(cap ? cap * 2 : 8) * sizeof(*v));
            if (w == NULL) {
                rc = SQLITE_NOMEM;
                break;
            }
            v = w;
            cap = cap ? cap * 2 : 8;
        }
        if (read_job(s, &v[k])) {
            store_job_release(&v[k]);
            rc = SQLITE_NOMEM;
            break;
        }
        k++;
    }
    sqlite3_reset(s);
    rc = rc == SQLITE_DONE ? (k ? 0 : FX_ENOENT) : from_sqlite(rc);
    for (int i = 0; rc == 0 && i < k; i++)
        if (v[i].state == STORE_QUEUED)
            rc = position(st, v[i].id, &v[i].position);
    if (rc) {
        store_group_release(v, k);
        return rc;
    }
    *jobs = v;
    *n = k;
    return 0;
}

int store_cancel_group(struct store *st, const char *group_id, int64_t now_ms, long *cancelled,
                       long *flagged)
{
    sqlite3_stmt *s;
    long c = 0, f = 0;
    int rc = tx_begin(st);
    if (rc)
        return rc;
    s = stmt(st, ST_CANCEL_GROUP_QUEUED);
    sqlite3_bind_text(s, 1, group_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, now_ms);
    rc = update_n(st, s, &c);
    if (rc == 0) {
        s = stmt(st, ST_CANCEL_GROUP_RUNNING);
        sqlite3_bind_text(s, 1, group_id, -1, SQLITE_STATIC);
        rc = update_n(st, s, &f);
    }
    rc = tx_end(st, rc);
    if (rc == 0) {
        if (cancelled)
            *cancelled = c;
        if (flagged)
            *flagged = f;
    }
    return rc;
}

int store_running_first(struct store *st, struct store_job *job)
{
    return store_running_first_of(st, NULL, job);
}

int store_running_first_of(struct store *st, const char *key_id, struct store_job *job)
{
    sqlite3_stmt *s = stmt(st, ST_RUNNING_FIRST);
    int rc;
    memset(job, 0, sizeof(*job));
    if (key_id)
        sqlite3_bind_text(s, 1, key_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        rc = read_job(s, job);
    else
        rc = rc == SQLITE_DONE ? FX_ENOENT : from_sqlite(rc);
    sqlite3_reset(s);
    if (rc)
        store_job_release(job);
    return rc;
}

/* ---- access control ----------------------------------------------------------------------- */

static int64_t col_opt(sqlite3_stmt *s, int i)
{
    return sqlite3_column_type(s, i) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, i);
}

/* Fills a key from a row of KEY_COLS. */
static void read_key(sqlite3_stmt *s, struct store_key *k)
{
    const void *h = sqlite3_column_blob(s, 2);
    memset(k, 0, sizeof(*k));
    copy_text(k->id, sizeof(k->id), sqlite3_column_text(s, 0));
    copy_text(k->name, sizeof(k->name), sqlite3_column_text(s, 1));
    if (h && sqlite3_column_bytes(s, 2) == STORE_KEY_HASH_LEN)
        memcpy(k->hash, h, STORE_KEY_HASH_LEN);
    k->admin = sqlite3_column_int(s, 3) != 0;
    k->created_ms = col_ms(s, 4);
    k->last_used_ms = col_ms(s, 5);
    k->expires_ms = col_ms(s, 6);
    k->revoked_ms = col_ms(s, 7);
    k->max_queued = (long)col_opt(s, 8);
    k->daily_images = (long)col_opt(s, 9);
    k->daily_budget = col_opt(s, 10);
    copy_text(k->webhook_url, sizeof(k->webhook_url), sqlite3_column_text(s, 11));
    copy_text(k->webhook_secret, sizeof(k->webhook_secret), sqlite3_column_text(s, 12));
}

static void bind_opt(sqlite3_stmt *s, int i, int64_t v)
{
    if (v >= 0)
        sqlite3_bind_int64(s, i, v);
}

static void bind_ms(sqlite3_stmt *s, int i, int64_t v)
{
    if (v > 0)
        sqlite3_bind_int64(s, i, v);
}

int store_key_add(struct store *st, const struct store_key *k)
{
    sqlite3_stmt *s;
    int rc = tx_begin(st);
    if (rc)
        return rc;
    s = stmt(st, ST_KEY_ADD);
    sqlite3_bind_text(s, 1, k->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, k->name, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s, 3, k->hash, STORE_KEY_HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_int(s, 4, k->admin ? 1 : 0);
    sqlite3_bind_int64(s, 5, k->created_ms);
    bind_ms(s, 6, k->last_used_ms);
    bind_ms(s, 7, k->expires_ms);
    bind_ms(s, 8, k->revoked_ms);
    bind_opt(s, 9, k->max_queued);
    bind_opt(s, 10, k->daily_images);
    bind_opt(s, 11, k->daily_budget);
    if (k->webhook_url[0])
        sqlite3_bind_text(s, 12, k->webhook_url, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 13, k->webhook_secret, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    /* the unique index on the names of keys in use, or an id drawn twice */
    rc = rc == SQLITE_DONE ? 0 : (rc & 0xff) == SQLITE_CONSTRAINT ? FX_EINVAL : from_sqlite(rc);
    return tx_end(st, rc);
}

int store_key_get(struct store *st, const char *id, struct store_key *k)
{
    sqlite3_stmt *s = stmt(st, ST_KEY_GET);
    int rc;
    memset(k, 0, sizeof(*k));
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        read_key(s, k);
    sqlite3_reset(s);
    return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? FX_ENOENT : from_sqlite(rc);
}

int store_key_list(struct store *st, struct store_key **out, size_t *n)
{
    sqlite3_stmt *s = stmt(st, ST_KEY_LIST);
    struct store_key *v = NULL;
    size_t k = 0, cap = 0;
    int rc;
    *out = NULL;
    *n = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (k == cap) {
            struct store_key *t = realloc(v, (cap = cap ? 2 * cap : 8) * sizeof(*v));
            if (t == NULL) {
                sqlite3_reset(s);
                free(v);
                return FX_ENOMEM;
            }
            v = t;
        }
        read_key(s, &v[k++]);
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        free(v);
        return from_sqlite(rc);
    }
    *out = v;
    *n = k;
    return 0;
}

int store_key_revoke(struct store *st, const char *id_or_name, int64_t now_ms,
                     char id[STORE_KEY_ID_LEN + 1])
{
    sqlite3_stmt *s;
    bool found = false;
    int rc = tx_begin(st);
    if (rc)
        return rc;
    s = stmt(st, ST_KEY_REVOKE);
    sqlite3_bind_text(s, 1, id_or_name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, now_ms);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        found = true;
        if (id)
            copy_text(id, STORE_KEY_ID_LEN + 1, sqlite3_column_text(s, 0));
    }
    sqlite3_reset(s);
    rc = tx_end(st, rc == SQLITE_DONE ? 0 : from_sqlite(rc));
    return rc ? rc : found ? 0 : FX_ENOENT;
}

int store_key_touch(struct store *st, const char *id, int64_t now_ms)
{
    sqlite3_stmt *s;
    int rc = tx_begin(st);
    if (rc)
        return rc;
    s = stmt_id(st, ST_KEY_TOUCH, id);
    sqlite3_bind_int64(s, 2, now_ms);
    rc = update1(st, s);
    return tx_end(st, rc == FX_ENOENT ? 0 : rc);
}

int store_key_active(struct store *st, int64_t now_ms, long *n)
{
    sqlite3_stmt *s = stmt(st, ST_KEY_ACTIVE);
    int rc;
    sqlite3_bind_int64(s, 1, now_ms);
    rc = sqlite3_step(s);
    *n = rc == SQLITE_ROW ? (long)sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    return rc == SQLITE_ROW ? 0 : from_sqlite(rc);
}

int store_key_stats(struct store *st, int64_t now_ms, struct store_key_stat **out, size_t *n)
{
    sqlite3_stmt *s = stmt(st, ST_KEY_STATS);
    struct store_key_stat *v = NULL;
    size_t k = 0, cap = 0;
    int rc;
    *out = NULL;
    *n = 0;
    sqlite3_bind_int64(s, 1, now_ms / STORE_DAY_MS);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct store_key_stat *x;
        if (k == cap) {
            struct store_key_stat *t = realloc(v, (cap = cap ? 2 * cap : 8) * sizeof(*v));
            if (t == NULL) {
                sqlite3_reset(s);
                free(v);
                return FX_ENOMEM;
            }
            v = t;
        }
        x = &v[k++];
        memset(x, 0, sizeof(*x));
        copy_text(x->id, sizeof(x->id), sqlite3_column_text(s, 0));
        copy_text(x->name, sizeof(x->name), sqlite3_column_text(s, 1));
        x->max_queued = (long)col_opt(s, 2);
        x->daily_images = (long)col_opt(s, 3);
        x->daily_budget = col_opt(s, 4);
        x->usage.queued = (long)sqlite3_column_int64(s, 5);
        x->usage.images = (long)sqlite3_column_int64(s, 6);
        x->usage.budget = sqlite3_column_int64(s, 7);
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        free(v);
        return from_sqlite(rc);
    }
    *out = v;
    *n = k;
    return 0;
}

/* ---- webhook deliveries ------------------------------------------------------------------- */

static char *dup_col(sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    return t ? strdup((const char *)t) : NULL;
}

void store_delivery_release(struct store_delivery *d)
{
    if (d) {
        free(d->url);
        free(d->body);
        d->url = d->body = NULL;
    }
}

int store_delivery_claim(struct store *st, int64_t now_ms, int64_t lease_ms,
                         struct store_delivery *d)
{
    sqlite3_stmt *s;
    int rc = tx_begin(st), step;
    bool found = false;
    memset(d, 0, sizeof(*d));
    if (rc)
        return rc;
    s = stmt(st, ST_DELIVERY_CLAIM);
    sqlite3_bind_int64(s, 1, now_ms);
    sqlite3_bind_int64(s, 2, now_ms + lease_ms);
    while ((step = sqlite3_step(s)) == SQLITE_ROW) {
        found = true;
        d->seq = sqlite3_column_int64(s, 0);
        copy_text(d->job_id, sizeof(d->job_id), sqlite3_column_text(s, 1));
        copy_text(d->key_id, sizeof(d->key_id), sqlite3_column_text(s, 2));
        copy_text(d->event, sizeof(d->event), sqlite3_column_text(s, 3));
        d->url = dup_col(s, 4);
        d->body = dup_col(s, 5);
        d->attempts = sqlite3_column_int(s, 6);
        if (d->url == NULL)
            rc = FX_ENOMEM;
    }
    sqlite3_reset(s);
    if (step != SQLITE_DONE)
        rc = from_sqlite(step);
    rc = tx_end(st, rc);
    if (rc == 0 && !found)
        rc = FX_ENOENT;
    if (rc)
        store_delivery_release(d);
    return rc;
}

int store_delivery_done(struct store *st, int64_t seq, const char *state, int http_status,
                        const char *error, int64_t next_ms, const char *body, int64_t now_ms)
{
    sqlite3_stmt *s;
    int rc = tx_begin(st);
    if (rc)
        return rc;
    s = stmt(st, ST_DELIVERY_DONE);
    sqlite3_bind_int64(s, 1, seq);
    sqlite3_bind_text(s, 2, state, -1, SQLITE_STATIC);
    if (http_status > 0)
        sqlite3_bind_int(s, 3, http_status);
    if (error && error[0])
        sqlite3_bind_text(s, 4, error, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, next_ms);
    if (body)
        sqlite3_bind_text(s, 6, body, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 7, now_ms);
    return tx_end(st, update1(st, s));
}

int store_delivery_next(struct store *st, int64_t *next_ms)
{
    sqlite3_stmt *s = stmt(st, ST_DELIVERY_NEXT);
    int rc = sqlite3_step(s);
    bool none = rc == SQLITE_ROW && sqlite3_column_type(s, 0) == SQLITE_NULL;
    *next_ms = rc == SQLITE_ROW && !none ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    if (rc != SQLITE_ROW)
        return from_sqlite(rc);
    return none ? FX_ENOENT : 0;
}

int store_access_purge(struct store *st, int64_t before_ms, long limit, long *n)
{
    sqlite3_stmt *s;
    long count = 0, gone = 0;
    int rc = purge_begin(st, ST_DELIVERY_PURGE, before_ms, limit, &count);
    if (rc)
        return rc;
    /* usage of days before yesterday is never read again */
    s = stmt(st, ST_USAGE_PURGE);
    sqlite3_bind_int64(s, 1, before_ms / STORE_DAY_MS - 1);
    rc = tx_end(st, update_n(st, s, &gone));
    if (rc == 0 && n)
        *n = count;
    return rc;
}
