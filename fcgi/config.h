/*
 * config.h - the service's configuration file (conf/fluxcgi.conf is the commented example).
 *
 * Format: one `key = value` per line.  Blank lines and lines whose first non-blank character
 * is `#` are ignored; a `#` preceded by a blank ends the value (an inline comment).  Values
 * are taken verbatim after trimming (no quotes, no escapes).  Every key may appear once;
 * unknown keys, duplicates and bad values are errors that name the file, the line and the
 * key.  Relative paths (socket, db, model, log, lora_dir) are relative to the file's folder.
 *
 *   durations: an integer with an optional unit ms, s, m or h (no unit: seconds)
 *   sizes:     an integer with an optional unit k, M or G (1024-based; no unit: bytes)
 *   booleans:  yes/no, true/false, on/off, 1/0
 *
 * A parsed config is a plain struct that threads may share read-only.
 */
#ifndef FX_CONFIG_H
#define FX_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CONFIG_PATH_MAX 1024

struct fx_config {
    /* where to listen: a unix socket path, ":PORT" / "HOST:PORT" for TCP, or empty (the
     * default) for the socket on fd 0 that spawn-fcgi or lighttpd hands over */
    char socket[CONFIG_PATH_MAX];
    int socket_mode;            /* permissions of a unix socket (octal in the file), default 0660 */
    int backlog;                /* listen backlog, default 1024 (the kernel caps it at somaxconn) */
    int max_conns;              /* open FastCGI connections at most, default 4096 */
    int64_t idle_timeout_ms;    /* a connection idle between requests is closed, default 75 s */
    int64_t request_timeout_ms; /* a request must arrive whole within this, default 30 s */
    int64_t write_timeout_ms;   /* an answer that makes no progress for this is cut, 30 s */
    char db[CONFIG_PATH_MAX];   /* SQLite file, required */
    char model[CONFIG_PATH_MAX]; /* model dir, required */
    char device[32];             /* "cpu", "cuda", "cuda:N"; empty: the manifest's */
    int cpu_threads;             /* libtorch intra-op threads, 0: its default */
    int threads;                 /* handler threads (answer requests from the store), default 4 */
    size_t max_body;             /* largest request body, default 64k */
    long queue_size;             /* most queued jobs, default 10 */
    int64_t retention_ms;        /* result lifetime, default 10 min */
    int max_attempts;            /* starts of one job before it fails, default 3 */
    int64_t sync_timeout_ms;     /* POST /generate waits this long, default 10 min */
    int64_t busy_timeout_ms;     /* SQLite busy timeout, default 5 s */
    int64_t audit_retention_ms;  /* job rows of finished jobs are deleted this long after
                                    they finished, default 7 days; 0: kept forever */
    int64_t lease_ms;            /* a claim's lease, renewed at every step, default 60 s; a
                                    running job whose lease ran out is re-queued by any
                                    worker (so one step, and the final decode, must take less
                                    than this) */
    int device_failures_fatal;   /* this many jobs in a row failing with a device or model
                                    runtime error fail the worker, default 3 */
    char log[CONFIG_PATH_MAX];   /* log file (reopened on SIGHUP); empty: stderr */
    char worker_name[64];        /* owner of claimed jobs; empty: "HOST/DEVICE" */
    char id_prefix[17];          /* host part of new job ids ([a-z0-9]{1,16}); empty: none */
    int warmup_steps;            /* steps of the warm-up generation, default 1; 0: none */
    /* request defaults and bounds; 0 means the model manifest's value */
    int default_steps, default_width, default_height;
    double default_guidance; /* < 0: the manifest's */
    int max_size, max_steps; /* tighten the model's limits (max_steps default 100) */
    /* the device's memory for the memory plan (core/plan.h), 0 (default): unknown, not
     * checked; else the service refuses to start when the model does not fit at its default
     * size, and max_size is lowered to the largest square that fits (api_ctx_limits) */
    size_t device_memory;
    /* where the weights live (core/plan.h, docs/operations.md "GPU memory"): "resident"
     * (default), "encoders-offload", "stream" or "auto" (picked at load from device_memory
     * and the memory plan; resident on the CPU or without device_memory) */
    char placement[20];
    /* access control (fcgi/auth.h, docs/operations.md "Access control") */
    int auth;                   /* 1: every route but /ping, /openapi.json (and /metrics,
                                   see metrics_auth) needs an API key; default 0 (the
                                   installed config: 1) */
    int metrics_auth;           /* CONFIG_METRICS_OPEN (default) or CONFIG_METRICS_ADMIN */
    long key_max_queued;        /* queued jobs of one key at most; 0: no bound but
                                   queue_size (a key's own max_queued wins) */
    long key_daily_images;      /* images one key may queue per UTC day; 0: no quota */
    long key_daily_budget;      /* steps x width x height one key may queue per UTC day;
                                   0: no budget */
    char cors_origins[1024];    /* origins allowed to call from a browser, comma-separated
                                   ("https://app.example.com", or "*"); empty: none */
    char webhook_hosts[1024];   /* hosts (name or name:port) webhooks may call,
                                   comma-separated; empty: webhooks are refused */
    int webhook_attempts;       /* deliveries of one event at most, default 5 */
    int64_t webhook_timeout_ms; /* one delivery attempt at most, default 10 s */
    char webhook_secret[129];   /* signs the webhooks of jobs made without a key; empty:
                                   those are sent unsigned */
    /* LoRA adapters (fcgi/lora_dir.h, docs/operations.md "LoRA adapters"): the directory
     * whose NAME.safetensors files requests may name; empty (default): requests with loras
     * are refused (422 loras_not_configured) */
    char lora_dir[CONFIG_PATH_MAX];
};

enum { CONFIG_METRICS_OPEN = 0, CONFIG_METRICS_ADMIN = 1 };

/* Fills the defaults above (db and model empty). */
void config_defaults(struct fx_config *c);

/*
 * Reads and checks a config file into *c (defaults first).  Returns 0, or FX_ENOENT /
 * FX_EIO (cannot read it), FX_EFORMAT (a bad line: msg says "FILE:LINE: key 'K': reason"),
 * FX_EINVAL (a required key is missing).  msg may be NULL.
 */
int config_load(const char *path, struct fx_config *c, char *msg, size_t msg_len);

/*
 * Parses config text (len bytes; NUL bytes are errors); name is used in messages and
 * base_dir resolves relative paths (NULL: keep them as written).  Same returns as
 * config_load.
 */
int config_parse(const char *text, size_t len, const char *name, const char *base_dir,
                 struct fx_config *c, char *msg, size_t msg_len);

#endif
