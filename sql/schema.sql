-- schema.sql - migration 1 of the fluxcgi job store (PRAGMA user_version = 1).
--
-- Embedded into the program at build time (sql/store.c applies it); also readable by hand:
--   sqlite3 fluxcgi.db < sql/schema.sql     creates an empty store by hand
--
-- A job moves queued -> running -> completed | failed | cancelled; a completed job becomes
-- expired when its result is deleted after the retention time.  The jobs table is the audit
-- log: the rows of finished jobs are kept for audit_retention (default 7 days), then deleted.
-- Times are Unix epoch milliseconds (UTC).
--
-- Migration 2 (in sql/store.c, applied by store_open) adds jobs.lease_until_ms (a claim's
-- lease), the job_counts table kept by triggers, and makes jobs_by_state read it.
-- Migration 3 adds job groups (jobs.group_id, group_index, group_size: one request for
-- several images queues one job per image) and jobs.reply (JSON: how a waiting client is
-- answered, e.g. {"api":"openai","response_format":"b64_json"}).
-- Migration 4 adds access control: api_keys, key_usage, webhook_deliveries, jobs.key_id,
-- cost, webhook, webhook_progress, and their triggers and audit views.

CREATE TABLE jobs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order, never reused
    id            TEXT NOT NULL UNIQUE      -- 32 lower-case hex digits (128 bits), after an
                                            -- optional host part "[a-z0-9]{1,16}-"
                  CHECK (length(id) BETWEEN 32 AND 49
                         AND substr(id, -32) NOT GLOB '*[^0-9a-f]*'
                         AND (length(id) = 32
                              OR (length(id) >= 34 AND substr(id, -33, 1) = '-'
                                  AND substr(id, 1, length(id) - 33) NOT GLOB '*[^0-9a-z]*'))),
    kind          TEXT NOT NULL CHECK (kind IN ('sync', 'queue')),
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed',
                                                 'cancelled', 'expired')),
    params        TEXT NOT NULL CHECK (json_valid(params)), -- the request, defaults applied
    seed          INTEGER NOT NULL,                    -- resolved at enqueue time
    steps         INTEGER NOT NULL CHECK (steps > 0),
    step          INTEGER NOT NULL DEFAULT 0,          -- denoising steps done (progress)
    attempts      INTEGER NOT NULL DEFAULT 0,          -- times a worker started it
    cancel        INTEGER NOT NULL DEFAULT 0,          -- 1: cancel asked while running
    worker        TEXT,                                -- worker_name of the last claimer
    error_code    TEXT,                                -- stable code (core/err.h), failed/cancelled
    error_message TEXT,
    created_ms    INTEGER NOT NULL,
    started_ms    INTEGER,                             -- last claim
    finished_ms   INTEGER,                             -- terminal state reached
    expired_ms    INTEGER,                             -- result deleted
    result_bytes  INTEGER                              -- PNG size, kept after expiry
);

CREATE INDEX jobs_state_seq ON jobs (state, seq);
CREATE INDEX jobs_finished ON jobs (state, finished_ms);

-- The PNG of a completed job, written in the same transaction that marks it completed and
-- deleted in the one that marks it expired.  A separate table so that scans of jobs never
-- page through image bytes.
CREATE TABLE results (
    job_seq INTEGER PRIMARY KEY REFERENCES jobs (seq),
    png     BLOB NOT NULL
);

-- ---- audit views (docs/operations.md, "Auditing") ----------------------------------

-- Every job, newest first, with its phases in seconds.
CREATE VIEW recent_jobs AS
SELECT id,
       state,
       kind,
       json_extract(params, '$.width') || 'x' || json_extract(params, '$.height') AS size,
       steps,
       step,
       attempts,
       seed,
       strftime('%Y-%m-%d %H:%M:%f', created_ms / 1000.0, 'unixepoch') AS created_utc,
       round((started_ms - created_ms) / 1000.0, 3) AS wait_s,
       round((finished_ms - started_ms) / 1000.0, 3) AS run_s,
       error_code,
       substr(json_extract(params, '$.prompt'), 1, 40) AS prompt
  FROM jobs
 ORDER BY seq DESC;

-- Jobs that failed or were cancelled, or needed more than one attempt.
CREATE VIEW failures AS
SELECT id,
       state,
       attempts,
       worker,
       error_code,
       error_message,
       strftime('%Y-%m-%d %H:%M:%f', created_ms / 1000.0, 'unixepoch') AS created_utc,
       strftime('%Y-%m-%d %H:%M:%f', finished_ms / 1000.0, 'unixepoch') AS finished_utc
  FROM jobs
 WHERE state IN ('failed', 'cancelled') OR attempts > 1
 ORDER BY seq DESC;

-- Job counts by state (what /queue/status and /metrics report).
CREATE VIEW jobs_by_state AS
SELECT state, count(*) AS jobs FROM jobs GROUP BY state;

-- Nearest-rank percentiles over jobs that produced an image: wait (queued -> started),
-- run (started -> finished) and total (queued -> finished), in seconds.
CREATE VIEW latency_percentiles AS
WITH done AS (
    SELECT (started_ms - created_ms) / 1000.0 AS wait_s,
           (finished_ms - started_ms) / 1000.0 AS run_s,
           (finished_ms - created_ms) / 1000.0 AS total_s
      FROM jobs
     WHERE state IN ('completed', 'expired')
),
m AS (
    SELECT 'wait' AS metric, 1 AS ord, wait_s AS v FROM done
    UNION ALL SELECT 'run', 2, run_s FROM done
    UNION ALL SELECT 'total', 3, total_s FROM done
),
r AS (
    SELECT metric, ord, v,
           row_number() OVER (PARTITION BY metric ORDER BY v) AS rn,
           count(*) OVER (PARTITION BY metric) AS n
      FROM m
)
SELECT metric,
       max(n) AS jobs,
       round(min(CASE WHEN rn >= 0.50 * n THEN v END), 3) AS p50_s,
       round(min(CASE WHEN rn >= 0.90 * n THEN v END), 3) AS p90_s,
       round(min(CASE WHEN rn >= 0.99 * n THEN v END), 3) AS p99_s,
       round(max(v), 3) AS max_s
  FROM r
 GROUP BY metric
 ORDER BY min(ord);
