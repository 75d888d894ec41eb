/*
 * fuzz_api_handle.c - libFuzzer target for the HTTP router (api_handle, fcgi/api.c and the
 * routes) over a real store: a temp SQLite file under /tmp, opened once.
 *
 * Input layout: byte 0 picks the method (bits 0-2), the worker's readiness (bits 3-4), the
 * front end's "body too large" (bit 5) and "body length differs" (bit 7) flags; the URI follows up
 * to the first '\n' (cut at a NUL, as a FastCGI parameter would be); the rest is the body.
 *
 * The store holds five jobs with fixed ids (..01 queued, ..02 running, ..03 completed with
 * an image, ..04 failed, ..05 cancelled) so that the routes on known ids are reached; jobs
 * that an input creates are cancelled after it, which keeps the queue from filling up.
 * A POST /generate parks its request (no answer yet): the front end would answer it with
 * api_generate_poll, so the target does that too, as if its sync_timeout had run out (504),
 * or as if the service stopped (503), chosen by bit 6 of byte 0.
 *
 * Checked beyond memory safety: every answer has a status of 200..599 and a content type;
 * a JSON answer parses; every error (>= 400) is {"error":{"code","message"}}, except
 * /ping's 503 status document.
 */
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../core/err.h"
#include "../../core/manifest.h"
#include "../../fcgi/api.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct api_ctx ctx;
static struct fx_config cfg;
static atomic_int readiness;
static struct store *st;
static char dir[] = "/tmp/fx-fuzz-api-XXXXXX";
static char db[64];

#define ID(n) "000000000000000000000000000000" n

/* wall-clock ms, as the store's timestamps */
static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "fuzz_api_handle: %s: %d (%s)\n", what, rc, store_errmsg(st));
    abort();
}

/* enqueue one job with a fixed id and move it to its state */
static void fixed_job(const char *id, int state)
{
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 0};
    const char *params = "{\"prompt\":\"fixed\",\"width\":64,\"height\":64,"
                         "\"num_inference_steps\":2,\"guidance_scale\":3.5,\"seed\":7}";
    struct store_job j = {0};
    enum store_state was;
    int rc;

    if ((rc = store_enqueue(st, id, false, params, 7, 2, now_ms(), 100, NULL)))
        die("enqueue", rc);
    if (state == STORE_QUEUED)
        return;
    if (state == STORE_CANCELLED) {
        if ((rc = store_cancel(st, id, now_ms(), &was)))
            die("cancel", rc);
        return;
    }
    if ((rc = store_claim(st, "fuzz", now_ms(), 60000, &j)) || strcmp(j.id, id) != 0)
        die("claim", rc);
    store_job_release(&j);
    if (state == STORE_COMPLETED)
        rc = store_complete(st, id, "fuzz", png, sizeof(png), now_ms());
    else if (state == STORE_FAILED)
        rc = store_finish(st, id, "fuzz", STORE_FAILED, "internal", "fixed failure", now_ms());
    if (rc)
        die("finish", rc);
}

static void cleanup(void)
{
    if (st)
        store_close(st);
    st = NULL;
    unlink(db);
    char wal[80];
    snprintf(wal, sizeof(wal), "%s-wal", db);
    unlink(wal);
    snprintf(wal, sizeof(wal), "%s-shm", db);
    unlink(wal);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct fx_manifest m = {0};
    char msg[512];
    int rc;

    (void)argc;
    (void)argv;
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        abort();
    }
    snprintf(db, sizeof(db), "%s/jobs.db", dir);
    if ((rc = store_open(db, 5000, &st, msg, sizeof(msg)))) {
        fprintf(stderr, "fuzz_api_handle: %s\n", msg);
        abort();
    }
    atexit(cleanup);
    config_defaults(&cfg);
    cfg.queue_size = 8;
    cfg.sync_timeout_ms = 0;
    cfg.default_steps = 2;
    cfg.default_width = 64;
    cfg.default_height = 64;
    m.default_steps = 28;
    m.default_width = m.default_height = 1024;
    m.default_guidance = 3.5;
    m.min_size = 64;
    m.max_size = 2048;
    m.multiple_of = 16;
    if (api_ctx_limits(&ctx, &m, &cfg, msg, sizeof(msg)) != 0) {
        fprintf(stderr, "fuzz_api_handle: %s\n", msg);
        abort();
    }
    ctx.cfg = &cfg;
    ctx.model_name = "fuzz-model";
    ctx.readiness = &readiness;
    /* claim order is queue order: the running and finished ones first, the queued last */
    fixed_job(ID("02"), STORE_RUNNING);
    fixed_job(ID("03"), STORE_COMPLETED);
    fixed_job(ID("04"), STORE_FAILED);
    fixed_job(ID("05"), STORE_CANCELLED);
    fixed_job(ID("01"), STORE_QUEUED);
    return 0;
}

static const char *header(const struct api_response *rs, const char *name)
{
    for (int i = 0; i < rs->n_headers; i++)
        if (strcasecmp(rs->headers[i].name, name) == 0)
            return rs->headers[i].value;
    return NULL;
}

static void fail(const struct api_request *rq, const struct api_response *rs, const char *why)
{
    fprintf(stderr, "%s %s: status %d, %s: %.*s\n", rq->method, rq->uri, rs->status, why,
            (int)(rs->body_len > 300 ? 300 : rs->body_len), rs->body ? rs->body : "");
    abort();
}

static void check(const struct api_request *rq, const struct api_response *rs)
{
    json_object *o, *e, *v;

    if (rs->status < 200 || rs->status > 599)
        fail(rq, rs, "status out of range");
    if (!rs->content_type)
        fail(rq, rs, "no content type");
    if (rs->body_len && !rs->body)
        fail(rq, rs, "body_len without a body");
    if (strcmp(rs->content_type, "application/json") != 0 || rs->body_len == 0)
        return;
    /* a JSON null (POST /sdapi/v1/options answers one, as A1111 does) parses to no object */
    if (rs->body_len == 4 && memcmp(rs->body, "null", 4) == 0)
        return;
    json_tokener *tok = json_tokener_new();
    o = json_tokener_parse_ex(tok, rs->body, (int)rs->body_len);
    if (!o || json_tokener_get_parse_end(tok) != rs->body_len) {
        json_tokener_free(tok);
        json_object_put(o);
        fail(rq, rs, "body is not one JSON value");
    }
    json_tokener_free(tok);
    /* /ping's 503 (the model failed to load) is its status document, not an error */
    if (rs->status >= 400 && !(rs->status == 503 && json_object_object_get_ex(o, "status", &v) &&
                               json_object_is_type(v, json_type_string) &&
                               strcmp(json_object_get_string(v), "failed") == 0)) {
        if (!json_object_object_get_ex(o, "error", &e) ||
            !json_object_object_get_ex(e, "code", &v) ||
            !json_object_is_type(v, json_type_string) ||
            !json_object_object_get_ex(e, "message", &v) ||
            !json_object_is_type(v, json_type_string)) {
            json_object_put(o);
            fail(rq, rs, "error without code and message");
        }
    }
    json_object_put(o);
}

/* Cancels a job the input created (its id is in X-Request-Id or Location), unless fixed. */
static void forget(const struct api_response *rs)
{
    const char *id = header(rs, "X-Request-Id"), *loc = header(rs, "Location");
    enum store_state was;

    if (!id && loc && strrchr(loc, '/'))
        id = strrchr(loc, '/') + 1;
    if (id && strncmp(id, ID(""), 30) != 0)
        store_cancel(st, id, now_ms(), &was);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const methods[] = {"GET", "POST",    "DELETE", "HEAD",
                                          "PUT", "OPTIONS", "get",    ""};
    struct api_request rq = {0};
    struct api_response rs;
    const uint8_t *nl;
    size_t ulen;
    char *uri, *body = NULL;
    uint8_t data0;

    if (size == 0)
        return 0;
    data0 = data[0];
    rq.bad_length = (data0 >> 7) & 1;
    rq.method = methods[data[0] & 7];
    atomic_store(&readiness, (data[0] >> 3) & 3);
    rq.body_too_large = (data[0] >> 5) & 1;
    data++, size--;
    nl = memchr(data, '\n', size);
    ulen = nl ? (size_t)(nl - data) : size;
    uri = strndup((const char *)data, ulen);
    if (!uri)
        return 0;
    if (nl) {
        size -= ulen + 1;
        data = nl + 1;
        if (size) {
            body = malloc(size); /* exactly size bytes: ASan sees reads past the body */
            if (!body) {
                free(uri);
                return 0;
            }
            memcpy(body, data, size);
        }
    } else {
        size = 0;
    }
    rq.uri = uri;
    rq.body = body;
    rq.body_len = body ? size : 0;
    api_handle(&ctx, st, &rq, &rs);
    if (rs.park) {
        struct api_response parked = rs;
        if (!api_generate_poll(&ctx, st, parked.park_id,
                               (data0 & 0x40) ? API_POLL_STOPPING : API_POLL_TIMEOUT,
                               &parked.events, &rs))
            abort(); /* a timeout or a stop always answers */
        api_response_release(&parked);
    }
    check(&rq, &rs);
    forget(&rs);
    api_response_release(&rs);
    free(body);
    free(uri);
    return 0;
}
