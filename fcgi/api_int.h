/*
 * api_int.h - what the route files of the HTTP API share (not part of the API itself).
 *
 * fcgi/api.c routes a request to one handler; the handlers live one file per family of
 * routes: routes_generate.c (POST /generate, /generate/queue), routes_queue.c (status,
 * result, cancel), routes_ops.c (/ping, /metrics), routes_events.c; access.c decides who may
 * ask (API keys, CORS, per-key limits).  reply.c builds answers (JSON, errors,
 * the status view of a job, images) and parse.c reads generation requests.
 */
#ifndef FX_API_INT_H
#define FX_API_INT_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "api.h"
#include "jobid.h"

static const char CT_JSON[] = "application/json";
static const char CT_PNG[] = "image/png";
static const char CT_PROM[] = "text/plain; version=0.0.4; charset=utf-8";

/* Who is asking: the API key a request presented (fcgi/access.c). */
struct api_caller {
    bool admin;                        /* sees and cancels every job (everyone, with auth off) */
    char key_id[STORE_KEY_ID_LEN + 1]; /* "": no key (auth off) */
    char name[65];
    long max_queued, daily_images; /* the key's limits in force; 0: none */
    int64_t daily_budget;
    char webhook[1024]; /* the key's default webhook; "" none */
};

/* Wall-clock time (Unix epoch milliseconds) for the timestamps stored in job rows. */
int64_t api_now_ms(void);
/* Monotonic milliseconds, for intervals. */
int64_t api_mono_ms(void);

/* ---- reply.c ---- */
void api_add_header(struct api_response *rs, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Takes ownership of o (may be NULL: then a fixed out-of-memory body). */
void api_send_json(struct api_response *rs, int status, json_object *o);
json_object *api_error_object(int code, const char *message);
/* Adds the error under "error" to o (a status object) and sends it. */
void api_send_error_in(struct api_response *rs, int code, json_object *o, const char *message);
void api_send_error(struct api_response *rs, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void api_send_store_error(struct api_response *rs, int rc, struct store *st);
enum store_state api_visible_state(const struct api_ctx *ctx, const struct store_job *j);
/* Seconds left for a running job at the pace of its steps so far; NULL (JSON null) when it
 * is not running or has no step done. */
json_object *api_eta(const struct store_job *j);
/* The status JSON of a job (GET /queue/status/{id}). */
json_object *api_job_status(const struct api_ctx *ctx, const struct store_job *j);
/* Answers with the image of a job, or why there is none. */
void api_answer_result(const struct api_ctx *ctx, struct store *st, struct api_response *rs,
                       const struct store_job *j);
bool api_terminal(enum store_state s);
/* Reads the job named by a path segment; answers and returns non-zero when it cannot.  A job
 * of another key is 404 like an unknown id (unless who is admin). */
int api_load_job(struct store *st, const struct api_caller *who, const char *id, size_t id_len,
                 struct api_response *rs, struct store_job *j);
bool api_ready(const struct api_ctx *ctx);
void api_not_ready(const struct api_ctx *ctx, struct api_response *rs);

/* ---- access.c ---- */
/* The value of a request header, or NULL when it was not sent. */
const char *api_hdr(const struct api_request *rq, enum api_hdr h);
/* The caller when no key is needed: admin when auth is off, else nobody in particular. */
void access_open_caller(const struct api_ctx *ctx, struct api_caller *who);
/*
 * Authenticates the request's key (auth on): fills *who and returns 0, or answers 400
 * malformed / 401 unauthorized (403 forbidden when need_admin and the key is not an admin
 * key) and returns the error.  Failures are counted in the metrics and logged without the
 * key.  Needs the store: never called on the event thread.
 */
int access_check(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                 bool need_admin, struct api_caller *who, struct api_response *rs);
/* The 1-based place of the request's Origin in cors_origins; 0 when absent or not allowed. */
int access_cors_index(const struct api_ctx *ctx, const struct api_request *rq);
/* Adds the CORS headers of an answer to an allowed origin (index from access_cors_index). */
void access_cors_headers(const struct api_ctx *ctx, int index, struct api_response *rs);
/* Whether the request is a CORS preflight (OPTIONS with Origin and
 * Access-Control-Request-Method). */
bool access_is_preflight(const struct api_request *rq);
/* Answers a preflight for a route that takes the methods in allow. */
void access_preflight(const struct api_ctx *ctx, const struct api_request *rq, const char *allow,
                      struct api_response *rs);
/* The key's limits and usage as JSON ({"name","queued","max_queued",...}). */
json_object *access_usage_json(const struct api_caller *who, const struct store_key_usage *u);
/* Per-key Prometheus series (usage and limits of every key in use); malloc'd text or NULL. */
char *access_metrics(const struct api_ctx *ctx, struct store *st, size_t *len);

/* ---- the handlers ---- */
void route_ping(const struct api_ctx *ctx, struct api_response *rs);
void route_metrics(const struct api_ctx *ctx, struct store *st, struct api_response *rs);
void route_generate(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                    const struct api_caller *who, struct api_response *rs);
void route_generate_queue(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                          const struct api_caller *who, struct api_response *rs);
void route_queue_status(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                        struct api_response *rs);
void route_job_status(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                      const char *id, size_t id_len, struct api_response *rs);
void route_result(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                  const char *id, size_t id_len, struct api_response *rs);
void route_events(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                  const char *id, size_t id_len, struct api_response *rs);
void route_cancel(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                  const char *id, size_t id_len, struct api_response *rs);

#endif
