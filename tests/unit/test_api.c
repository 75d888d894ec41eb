/* The HTTP API as request struct -> response struct, over a temp store with the real schema
 * and no worker: routing, ids, request parsing, every status code of the contract. */
#include <json-c/json.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../core/err.h"
#include "../../core/manifest.h"
#include "../../fcgi/api.h"
#include "../../fcgi/api_int.h"
#include "../../fcgi/job.h"
#include "../../fcgi/jobid.h"
#include "../../fcgi/lora_dir.h"
#include "unit.h"

static struct api_ctx ctx;
static struct fx_config cfg;
static atomic_int readiness;
static struct store *st;

static struct api_response call(const char *method, const char *uri, const char *body)
{
    struct api_request rq = {method, uri, body, body ? strlen(body) : 0, false, false, NULL};
    struct api_response rs;
    api_handle(&ctx, st, &rq, &rs);
    return rs;
}

static const char *header(const struct api_response *rs, const char *name)
{
    for (int i = 0; i < rs->n_headers; i++)
        if (strcmp(rs->headers[i].name, name) == 0)
            return rs->headers[i].value;
    return NULL;
}

/* The body as JSON (caller puts); NULL when it is not JSON. */
static json_object *body_json(const struct api_response *rs)
{
    char *s = strndup(rs->body ? rs->body : "", rs->body_len);
    json_object *o = json_tokener_parse(s);
    free(s);
    return o;
}

static const char *jstr(json_object *o, const char *a, const char *b)
{
    json_object *v;
    if (!json_object_object_get_ex(o, a, &v))
        return NULL;
    if (b && !json_object_object_get_ex(v, b, &v))
        return NULL;
    return json_object_get_string(v);
}

/* Checks status, JSON content type and error code of a call. */
static void expect_error(const char *method, const char *uri, const char *body, int status,
                         const char *code)
{
    struct api_response rs = call(method, uri, body);
    json_object *o = body_json(&rs);
    if (rs.status != status || o == NULL || jstr(o, "error", "code") == NULL ||
        strcmp(jstr(o, "error", "code"), code) != 0 || jstr(o, "error", "message") == NULL ||
        strcmp(rs.content_type, "application/json") != 0) {
        unit_failed++;
        fprintf(stderr, "FAIL %s %s %.80s: got %d %.*s, want %d %s\n", method, uri,
                body ? body : "", rs.status, (int)rs.body_len, rs.body, status, code);
    } else {
        unit_passed++;
    }
    json_object_put(o);
    api_response_release(&rs);
}

static void test_ids(void)
{
    char a[JOBID_MAX + 1], b[JOBID_MAX + 1], c[JOBID_MAX + 1];
    CHECK_INT(jobid_new(NULL, a), 0);
    CHECK_INT(jobid_new("", b), 0);
    CHECK_INT(strlen(b), JOBID_LEN);
    CHECK_INT(jobid_new("gpu3", c), 0);
    CHECK(strncmp(c, "gpu3-", 5) == 0);
    CHECK_INT(strlen(c), 5 + JOBID_LEN);
    CHECK(jobid_valid(c, strlen(c)));
    CHECK_INT(jobid_new("GPU3", c), FX_EINVAL);
    CHECK_INT(jobid_new("a-b", c), FX_EINVAL);
    CHECK_INT(jobid_new("abcdefghijklmnopq", c), FX_EINVAL); /* 17 characters */
    CHECK(jobid_prefix_valid("abcdefghijklmnop"));
    CHECK(!jobid_prefix_valid(""));
    CHECK(!jobid_prefix_valid(NULL));
    CHECK(jobid_valid("h1-0123456789abcdef0123456789abcdef", 35));
    CHECK(jobid_valid("abcdefghijklmnop-0123456789abcdef0123456789abcdef", 49));
    CHECK(!jobid_valid("abcdefghijklmnopq-0123456789abcdef0123456789abcdef", 50));
    CHECK(!jobid_valid("-0123456789abcdef0123456789abcdef", 33));
    CHECK(!jobid_valid("H1-0123456789abcdef0123456789abcdef", 35));
    CHECK(!jobid_valid("h1_0123456789abcdef0123456789abcdef", 35));
    CHECK(!jobid_valid("h/-0123456789abcdef0123456789abcdef", 35));
    CHECK(!jobid_valid("h1-0123456789abcdef0123456789abcdeF", 35));
    CHECK(strcmp(a, b) != 0);
    CHECK(jobid_valid(a, strlen(a)));
    CHECK(jobid_valid("0123456789abcdef0123456789abcdef", 32));
    CHECK(!jobid_valid("0123456789ABCDEF0123456789abcdef", 32));
    CHECK(!jobid_valid("0123456789abcdef0123456789abcde", 31));
    CHECK(!jobid_valid("0123456789abcdef0123456789abcdef0", 33));
    CHECK(!jobid_valid("0123456789abcdef0123456789abcdeg", 32));
    CHECK(!jobid_valid("0123456789abcdef\0"
                       "123456789abcdef",
                       32));
    CHECK(!jobid_valid("../../../../etc/passwd..........", 32));
    CHECK(!jobid_valid(NULL, 32));
    CHECK(!jobid_valid("", 0));
}

static void test_status_map(void)
{
    CHECK_INT(api_http_status(0), 200);
    CHECK_INT(api_http_status(FX_EFORMAT), 400);
    CHECK_INT(api_http_status(FX_EUTF8), 400);
    CHECK_INT(api_http_status(FX_EBADID), 400);
    CHECK_INT(api_http_status(FX_ENOENT), 404);
    CHECK_INT(api_http_status(FX_EMETHOD), 405);
    CHECK_INT(api_http_status(FX_EPENDING), 409);
    CHECK_INT(api_http_status(FX_EEXPIRED), 410);
    CHECK_INT(api_http_status(FX_ETOOBIG), 413);
    CHECK_INT(api_http_status(FX_EINVAL), 422);
    CHECK_INT(api_http_status(FX_ERANGE), 422);
    CHECK_INT(api_http_status(FX_ELORA_UNKNOWN), 422);
    CHECK_INT(api_http_status(FX_ELORA_BAD), 422);
    CHECK_INT(api_http_status(FX_ELORA_OFF), 422);
    CHECK_STR(fx_errcode(FX_ELORA_UNKNOWN), "unknown_lora");
    CHECK_STR(fx_errcode(FX_ELORA_BAD), "bad_lora");
    CHECK_STR(fx_errcode(FX_ELORA_OFF), "loras_not_configured");
    CHECK_INT(api_http_status(FX_EFULL), 429);
    CHECK_INT(api_http_status(FX_ERUNTIME), 500);
    CHECK_INT(api_http_status(FX_ENOTREADY), 503);
    CHECK_INT(api_http_status(FX_ETIMEDOUT), 504);
    CHECK_INT(api_http_status(FX_ENOSPC), 507);
    CHECK_INT(api_http_status(-12345), 500);
}

/* A full disk: 507 with the stable code and a Retry-After, not a 500 io_error. */
static void test_store_errors(void)
{
    struct api_response rs = {0};
    json_object *o;
    api_send_store_error(&rs, FX_ENOSPC, NULL);
    CHECK_INT(rs.status, 507);
    CHECK(header(&rs, "Retry-After") != NULL && atoi(header(&rs, "Retry-After")) >= 1);
    o = body_json(&rs);
    CHECK_STR(jstr(o, "error", "code"), "insufficient_storage");
    json_object_put(o);
    api_response_release(&rs);
}

/* The worker's device-failure streak: device and runtime errors add up, a success resets,
 * anything else (a bad request, a cancel, a full disk) leaves it. */
static void test_device_streak(void)
{
    int n = 0;
    n = worker_device_streak(n, FX_EDEVICE);
    n = worker_device_streak(n, FX_ERUNTIME);
    CHECK_INT(n, 2);
    n = worker_device_streak(n, FX_EINVAL);
    n = worker_device_streak(n, FX_ECANCELED);
    CHECK_INT(n, 2);
    n = worker_device_streak(n, FX_ERUNTIME);
    CHECK_INT(n, 3);
    CHECK_INT(worker_device_streak(n, 0), 0);
}

struct parse_case {
    const char *body;
    int rc;
    const char *field;
};

static void test_parse(void)
{
    static const struct parse_case cases[] = {
        {"{\"prompt\":\"a cat\"}", 0, NULL},
        {"{\"prompt\":\"a cat\",\"seed\":null}", 0, NULL},
        {"  {\"prompt\":\"a\",\"width\":128,\"height\":64,\"seed\":7,\"guidance_scale\":0}\n", 0,
         NULL},
        {"{\"prompt\":\"a\",\"guidance_scale\":3}", 0, NULL},
        {"", FX_EFORMAT, NULL},
        {"{", FX_EFORMAT, NULL},
        {"{\"prompt\":\"a\",}", FX_EFORMAT, NULL},
        {"{\"prompt\":'a'}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"a\"} x", FX_EFORMAT, NULL},
        {"{\"prompt\":\"a\"}{}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"\xff\"}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"\xc0\x80\"}", FX_EUTF8, "prompt"},
        {"{\"prompt\":\"\xed\xa0\x80\"}", FX_EUTF8, "prompt"},
        {"{\"prompt\":\"\xf4\x90\x80\x80\"}", FX_EUTF8, "prompt"},
        {"{\"prompt\":\"caf\xc3\xa9 \xf0\x9f\x98\x80 \\ud83d\\ude00\"}", 0, NULL},
        {"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
         "]]]]"
         "]]]]]]",
         FX_EFORMAT, NULL},
        /* what json-c accepts on its own: duplicate keys, raw control characters inside a
         * string, escaped lone surrogates */
        {"{\"prompt\":\"a\",\"prompt\":\"b\"}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"a\",\"seed\":1,\"seed\":2}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"a\",\"\\u0070rompt\":\"b\"}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"a\tb\"}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"a\nb\"}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"a\",\"x\x01\":1}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"\\ud800\"}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"\\ud800x\"}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"\\udc00\"}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"\\ud83d\\u0041\"}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"\\ud83d\"}", FX_EFORMAT, NULL},
        {"{\"prompt\":\"a\\\\ud800 \\\"x\\\" \\t, {\"}", 0, NULL},
        {"{\"prompt\":\"a, b\",\"seed\":null}", 0, NULL},
        {"[]", FX_EINVAL, NULL},
        {"\"a cat\"", FX_EINVAL, NULL},
        {"null", FX_EINVAL, NULL},
        {"42", FX_EINVAL, NULL},
        {"4 2", FX_EFORMAT, NULL},
        {"nul", FX_EFORMAT, NULL},
        {"{}", FX_EINVAL, "prompt"},
        {"{\"prompt\":\"\"}", FX_EINVAL, "prompt"},
        {"{\"prompt\":7}", FX_EINVAL, "prompt"},
        {"{\"prompt\":null}", FX_EINVAL, "prompt"},
        {"{\"prompt\":\"a\\u0000b\"}", FX_EINVAL, "prompt"},
        {"{\"prompt\":\"a\",\"colour\":1}", 0, NULL}, /* ignored, named back */
        {"{\"prompt\":\"a\",\"width\":64.0}", 0, NULL},
        {"{\"prompt\":\"a\",\"width\":64.5}", FX_EINVAL, "width"},
        {"{\"prompt\":\"a\",\"width\":\"64\"}", 0, NULL},
        {"{\"prompt\":\"a\",\"width\":\"6 4\"}", FX_EINVAL, "width"},
        {"{\"prompt\":\"a\",\"width\":\"inf\"}", FX_EINVAL, "width"},
        {"{\"prompt\":\"a\",\"width\":\"0x40\"}", FX_EINVAL, "width"},
        {"{\"prompt\":\"a\",\"width\":-64}", FX_ERANGE, "width"},
        {"{\"prompt\":\"a\",\"width\":100}", FX_ERANGE, "width"},
        {"{\"prompt\":\"a\",\"width\":99999999999999999999}", FX_ERANGE, "width"},
        {"{\"prompt\":\"a\",\"height\":0}", FX_ERANGE, "height"},
        {"{\"prompt\":\"a\",\"num_inference_steps\":0}", FX_ERANGE, "num_inference_steps"},
        {"{\"prompt\":\"a\",\"num_inference_steps\":100000}", FX_ERANGE, "num_inference_steps"},
        {"{\"prompt\":\"a\",\"num_inference_steps\":2e0}", 0, NULL},
        {"{\"prompt\":\"a\",\"num_inference_steps\":true}", FX_EINVAL, "num_inference_steps"},
        {"{\"prompt\":\"a\",\"guidance_scale\":NaN}", FX_ERANGE, "guidance_scale"},
        {"{\"prompt\":\"a\",\"guidance_scale\":Infinity}", FX_ERANGE, "guidance_scale"},
        {"{\"prompt\":\"a\",\"guidance_scale\":1e400}", FX_ERANGE, "guidance_scale"},
        {"{\"prompt\":\"a\",\"guidance_scale\":-1}", FX_ERANGE, "guidance_scale"},
        {"{\"prompt\":\"a\",\"guidance_scale\":\"3.5\"}", 0, NULL},
        {"{\"prompt\":\"a\",\"guidance_scale\":\"NaN\"}", FX_EINVAL, "guidance_scale"},
        {"{\"prompt\":\"a\",\"seed\":-1}", 0, NULL}, /* random */
        {"{\"prompt\":\"a\",\"seed\":-2}", FX_ERANGE, "seed"},
        {"{\"prompt\":\"a\",\"seed\":9007199254740992}", FX_ERANGE, "seed"},
        {"{\"prompt\":\"a\",\"seed\":1.5}", FX_EINVAL, "seed"},
        {"{\"prompt\":\"a\",\"seed\":\"1\"}", 0, NULL},
        {"{\"prompt\":\"a\",\"n\":11}", FX_ERANGE, "n"},
        {"{\"prompt\":\"a\",\"output_format\":\"gif\"}", FX_EINVAL, "output_format"},
        {"{\"prompt\":\"a\",\"output_quality\":0}", FX_ERANGE, "output_quality"},
        {"{\"prompt\":\"a\",\"width\":null,\"output_format\":\"jpg\"}", 0, NULL},
        {"{\"prompt\":\"a\",\"seed\":[1]}", FX_EINVAL, "seed"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx_request r;
        char *prompt = NULL, msg[512] = "";
        const char *field = "unset";
        int rc = api_parse_generate(&ctx, cases[i].body, strlen(cases[i].body), &r, &prompt, &field,
                                    msg, sizeof(msg));
        bool ok = rc == cases[i].rc &&
                  ((field == NULL && cases[i].field == NULL) ||
                   (field && cases[i].field && strcmp(field, cases[i].field) == 0)) &&
                  (rc == 0 || msg[0] != '\0') && (rc != 0 || prompt != NULL);
        if (ok) {
            unit_passed++;
        } else {
            unit_failed++;
            fprintf(stderr, "FAIL parse case %zu %.60s: got %s field %s (%s), want %s field %s\n",
                    i, cases[i].body, fx_errname(rc), field ? field : "(null)", msg,
                    fx_errname(cases[i].rc), cases[i].field ? cases[i].field : "(null)");
        }
        if (rc == 0 && i == 0) {
            CHECK_INT(r.width, 64);
            CHECK_INT(r.steps, 2);
            CHECK(!r.has_seed);
            CHECK(r.guidance == 3.5);
        }
        if (rc == 0 && i == 2) {
            CHECK_INT(r.width, 128);
            CHECK(r.has_seed && r.seed == 7);
            CHECK(r.guidance == 0);
        }
        /* a field error names the field first */
        if (rc && cases[i].field && strcmp(cases[i].field, "body") != 0)
            CHECK(strncmp(msg, cases[i].field, strlen(cases[i].field)) == 0);
        free(prompt);
    }
    /* a NUL byte in the raw body */
    struct fx_request r;
    char *prompt = NULL, msg[256];
    const char *field;
    CHECK_INT(
        api_parse_generate(&ctx, "{\"prompt\":\"a\0\"}", 15, &r, &prompt, &field, msg, sizeof(msg)),
        FX_EFORMAT);
}

static void test_routes(void)
{
    struct api_response rs;
    json_object *o;
    char uri[128], id[64], id2[64];

    /* loading: /ping says so, generation is 503, the store still answers */
    atomic_store(&readiness, WORKER_LOADING);
    rs = call("GET", "/ping", NULL);
    o = body_json(&rs);
    CHECK_INT(rs.status, 200);
    CHECK_STR(jstr(o, "status", NULL), "loading");
    CHECK_STR(jstr(o, "ready", NULL), "false");
    json_object_put(o);
    api_response_release(&rs);
    rs = call("POST", "/generate/queue", "{\"prompt\":\"a\"}");
    CHECK_INT(rs.status, 503);
    CHECK(header(&rs, "Retry-After") != NULL);
    api_response_release(&rs);
    expect_error("POST", "/generate", "{\"prompt\":\"a\"}", 503, "not_ready");
    rs = call("GET", "/queue/status", NULL);
    CHECK_INT(rs.status, 200);
    api_response_release(&rs);

    atomic_store(&readiness, WORKER_READY);
    rs = call("GET", "/ping", NULL);
    o = body_json(&rs);
    CHECK_STR(jstr(o, "status", NULL), "ok");
    CHECK_STR(jstr(o, "model", NULL), "unit-model");
    json_object_put(o);
    api_response_release(&rs);
    rs = call("HEAD", "/ping", NULL);
    CHECK_INT(rs.status, 200);
    api_response_release(&rs);

    /* queue a job */
    rs = call("POST", "/generate/queue?x=1", "{\"prompt\":\"a cat\",\"seed\":42}");
    CHECK_INT(rs.status, 202);
    o = body_json(&rs);
    snprintf(id, sizeof(id), "%s", jstr(o, "request_id", NULL) ? jstr(o, "request_id", NULL) : "");
    CHECK(jobid_valid(id, strlen(id)));
    CHECK_STR(jstr(o, "status", NULL), "queued");
    CHECK_STR(jstr(o, "position", NULL), "1");
    CHECK_STR(jstr(o, "seed", NULL), "42");
    CHECK_STR(jstr(o, "progress", "steps"), "2");
    snprintf(uri, sizeof(uri), "/queue/status/%s", id);
    CHECK_STR(header(&rs, "Location"), uri);
    json_object_put(o);
    api_response_release(&rs);

    /* a second one without a seed gets a random one */
    rs = call("POST", "/generate/queue", "{\"prompt\":\"a dog\"}");
    CHECK_INT(rs.status, 202);
    o = body_json(&rs);
    snprintf(id2, sizeof(id2), "%s", jstr(o, "request_id", NULL));
    CHECK_STR(jstr(o, "position", NULL), "2");
    CHECK(jstr(o, "seed", NULL) != NULL);
    json_object_put(o);
    api_response_release(&rs);

    /* status by id */
    rs = call("GET", uri, NULL);
    CHECK_INT(rs.status, 200);
    o = body_json(&rs);
    CHECK_STR(jstr(o, "request_id", NULL), id);
    CHECK_STR(jstr(o, "status", NULL), "queued");
    CHECK_STR(jstr(o, "progress", "step"), "0");
    CHECK(jstr(o, "created_at", NULL) != NULL && strlen(jstr(o, "created_at", NULL)) == 24);
    CHECK(jstr(o, "error", NULL) == NULL);
    json_object_put(o);
    api_response_release(&rs);

    /* counts */
    rs = call("GET", "/queue/status", NULL);
    o = body_json(&rs);
    CHECK_STR(jstr(o, "queued", NULL), "2");
    CHECK_STR(jstr(o, "capacity", NULL), "3");
    json_object_put(o);
    api_response_release(&rs);

    /* not finished: 409 with the status */
    snprintf(uri, sizeof(uri), "/result/%s", id);
    rs = call("GET", uri, NULL);
    CHECK_INT(rs.status, 409);
    o = body_json(&rs);
    CHECK_STR(jstr(o, "error", "code"), "not_finished");
    CHECK_STR(jstr(o, "status", NULL), "queued");
    json_object_put(o);
    api_response_release(&rs);

    /* queue full (capacity 3) */
    rs = call("POST", "/generate/queue", "{\"prompt\":\"3\"}");
    CHECK_INT(rs.status, 202);
    api_response_release(&rs);
    rs = call("POST", "/generate/queue", "{\"prompt\":\"4\"}");
    CHECK_INT(rs.status, 429);
    CHECK(header(&rs, "Retry-After") != NULL && atoi(header(&rs, "Retry-After")) >= 1);
    o = body_json(&rs);
    CHECK_STR(jstr(o, "error", "code"), "queue_full");
    json_object_put(o);
    api_response_release(&rs);

    /* cancel a queued job: 200 cancelled; again: 409; its result: 409 cancelled */
    snprintf(uri, sizeof(uri), "/queue/%s", id);
    rs = call("DELETE", uri, NULL);
    CHECK_INT(rs.status, 200);
    o = body_json(&rs);
    CHECK_STR(jstr(o, "status", NULL), "cancelled");
    json_object_put(o);
    api_response_release(&rs);
    expect_error("DELETE", uri, NULL, 409, "already_finished");
    snprintf(uri, sizeof(uri), "/result/%s", id);
    expect_error("GET", uri, NULL, 409, "cancelled");

    /* a job that completed long ago reads as expired (before the sweep) and 410 */
    struct store_job j;
    static const uint8_t png[] = {1, 2, 3};
    CHECK_INT(store_claim(st, "unit", 1000, 60000, &j), 0);
    CHECK_STR(j.id, id2);
    store_job_release(&j);
    CHECK_INT(store_complete(st, id2, "unit", png, sizeof(png), 2000), 0);
    snprintf(uri, sizeof(uri), "/result/%s", id2);
    expect_error("GET", uri, NULL, 410, "expired");
    snprintf(uri, sizeof(uri), "/queue/status/%s", id2);
    rs = call("GET", uri, NULL);
    o = body_json(&rs);
    CHECK_STR(jstr(o, "status", NULL), "expired");
    json_object_put(o);
    api_response_release(&rs);

    /* a fresh completed job gives its PNG with the headers */
    CHECK_INT(store_claim(st, "unit", 1000, 60000, &j), 0);
    snprintf(id2, sizeof(id2), "%s", j.id);
    store_job_release(&j);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    CHECK_INT(store_complete(st, id2, "unit", png, sizeof(png), (int64_t)ts.tv_sec * 1000), 0);
    snprintf(uri, sizeof(uri), "/result/%s", id2);
    rs = call("GET", uri, NULL);
    CHECK_INT(rs.status, 200);
    CHECK_STR(rs.content_type, "image/png");
    CHECK_INT(rs.body_len, 3);
    CHECK_STR(header(&rs, "X-Request-Id"), id2);
    CHECK(header(&rs, "X-Seed") != NULL);
    api_response_release(&rs);
    snprintf(uri, sizeof(uri), "/queue/%s", id2);
    expect_error("DELETE", uri, NULL, 409, "already_finished");

    /* metrics */
    rs = call("GET", "/metrics", NULL);
    CHECK_INT(rs.status, 200);
    CHECK(rs.body && strstr(rs.body, "fluxcgi_queue_depth 0") != NULL);
    CHECK(rs.body && strstr(rs.body, "fluxcgi_jobs{state=\"cancelled\"} 1") != NULL);
    CHECK(rs.body && strstr(rs.body, "fluxcgi_step_seconds_bucket{le=\"+Inf\"}") != NULL);
    api_response_release(&rs);

    /* errors */
    expect_error("GET", "/queue/status/0123456789abcdef0123456789abcdef", NULL, 404, "not_found");
    expect_error("GET", "/queue/status/0123456789ABCDEF0123456789abcdef", NULL, 400, "invalid_id");
    expect_error("GET", "/queue/status/", NULL, 400, "invalid_id");
    expect_error("GET", "/queue/status/..%2f..%2fetc%2fpasswd", NULL, 400, "invalid_id");
    expect_error("GET", "/result/'%20OR%201=1--", NULL, 400, "invalid_id");
    expect_error("GET", "/result/0123456789abcdef0123456789abcdef/x", NULL, 400, "invalid_id");
    expect_error("DELETE", "/queue/xyz", NULL, 400, "invalid_id");
    expect_error("GET", "/nope", NULL, 404, "not_found");
    expect_error("GET", "/", NULL, 404, "not_found");
    expect_error("GET", "/ping/", NULL, 404, "not_found");
    expect_error("GET", "/generate", NULL, 405, "method_not_allowed");
    expect_error("POST", "/ping", "{}", 405, "method_not_allowed");
    expect_error("PUT", "/queue/status", NULL, 405, "method_not_allowed");
    expect_error("GE", "/ping", NULL, 405, "method_not_allowed");
    expect_error("", "/ping", NULL, 405, "method_not_allowed");
    expect_error("GET", "/queue/0123456789abcdef0123456789abcdef", NULL, 405, "method_not_allowed");
    expect_error("POST", "/generate/queue", "{\"prompt\":\"a\",\"width\":65}", 422, "out_of_range");
    /* an unknown field is ignored and named back (the seed's FastAPI clients send extras) */
    rs = call("POST", "/generate/queue", "{\"prompt\":\"a\",\"bogus\":1,\"x y\":2}");
    CHECK_INT(rs.status, 202);
    CHECK_STR(header(&rs, "X-Ignored-Fields") ? header(&rs, "X-Ignored-Fields") : "", "bogus,x?y");
    api_response_release(&rs);
    expect_error("POST", "/generate/queue", "not json", 400, "malformed");
    rs = call("GET", "/generate", NULL);
    CHECK_STR(header(&rs, "Allow"), "POST");
    api_response_release(&rs);

    /* a body over max_body */
    struct api_request big = {"POST", "/generate/queue", NULL, 0, true, false, NULL};
    api_handle(&ctx, st, &big, &rs);
    CHECK_INT(rs.status, 413);
    api_response_release(&rs);
}

/* GET /queue/events/{id}: the stream's start, then what api_events_poll adds. */
static void test_events(void)
{
    struct api_response rs;
    struct store_job j;
    struct api_events ev;
    char id[STORE_ID_LEN + 1], uri[96], *out = NULL;
    size_t len = 0;
    static const unsigned char png[] = {0x89, 'P', 'N', 'G'};

    while (store_claim(st, "unit", 1, 60000, &j) == 0) {
        store_finish(st, j.id, "unit", STORE_FAILED, "internal", "cleared by the test", 2);
        store_job_release(&j);
    }
    rs = call("POST", "/generate/queue", "{\"prompt\":\"events\",\"seed\":3}");
    CHECK_INT(rs.status, 202);
    snprintf(id, sizeof(id), "%s", strrchr(header(&rs, "Location"), '/') + 1);
    api_response_release(&rs);

    snprintf(uri, sizeof(uri), "/queue/events/%s", id);
    rs = call("GET", uri, NULL);
    CHECK_INT(rs.status, 200);
    CHECK_STR(rs.content_type, "text/event-stream");
    CHECK(rs.stream);
    CHECK_STR(rs.park_id, id);
    CHECK(rs.body && strncmp(rs.body, "event: state\ndata: {", 20) == 0);
    CHECK(rs.body && strstr(rs.body, "\"status\":\"queued\"") != NULL);
    CHECK_STR(header(&rs, "X-Accel-Buffering"), "no");
    ev = rs.events;
    api_response_release(&rs);

    /* nothing new: nothing to send, until the keep-alive is due */
    CHECK(!api_events_poll(&ctx, st, id, API_POLL_CHECK, &ev, ev.last_sent_ms + 1000, &out, &len));
    CHECK(out == NULL);
    CHECK(!api_events_poll(&ctx, st, id, API_POLL_CHECK, &ev, ev.last_sent_ms + 15000, &out, &len));
    CHECK(out && strncmp(out, ": keep-alive", 12) == 0);
    free(out);
    /* running, then a step */
    CHECK_INT(store_claim(st, "unit", api_now_ms() - 2000, 60000, &j), 0);
    store_job_release(&j);
    CHECK(!api_events_poll(&ctx, st, id, API_POLL_CHECK, &ev, ev.last_sent_ms + 1, &out, &len));
    CHECK(out && strncmp(out, "event: state\n", 13) == 0 && strstr(out, "\"running\""));
    free(out);
    CHECK_INT(store_progress(st, id, "unit", 1, api_now_ms(), 60000, NULL), 0);
    CHECK(!api_events_poll(&ctx, st, id, API_POLL_CHECK, &ev, ev.last_sent_ms + 1, &out, &len));
    CHECK(out && strncmp(out, "event: progress\n", 16) == 0);
    CHECK(out && strstr(out, "\"eta_s\":") != NULL && strstr(out, "\"eta_s\":null") == NULL);
    free(out);
    /* done: the end event, with the result's URL */
    CHECK_INT(store_complete(st, id, "unit", png, sizeof(png), api_now_ms()), 0);
    CHECK(api_events_poll(&ctx, st, id, API_POLL_CHECK, &ev, ev.last_sent_ms + 1, &out, &len));
    CHECK(out && strncmp(out, "event: end\n", 11) == 0 && strstr(out, "\"result_url\""));
    free(out);
    /* a finished job: the whole stream at once, not kept open */
    rs = call("GET", uri, NULL);
    CHECK_INT(rs.status, 200);
    CHECK(!rs.stream);
    CHECK(rs.body && strncmp(rs.body, "event: end\n", 11) == 0);
    api_response_release(&rs);
    /* stopping ends a stream that is not done */
    rs = call("POST", "/generate/queue", "{\"prompt\":\"events 2\"}");
    snprintf(id, sizeof(id), "%s", strrchr(header(&rs, "Location"), '/') + 1);
    api_response_release(&rs);
    memset(&ev, 0, sizeof(ev));
    ev.state = -1;
    CHECK(api_events_poll(&ctx, st, id, API_POLL_STOPPING, &ev, 1, &out, &len));
    CHECK(out && strstr(out, ": the service is stopping") != NULL);
    free(out);
    expect_error("GET", "/queue/events/xyz", NULL, 400, "invalid_id");
    expect_error("DELETE", "/queue/events/0123456789abcdef0123456789abcdef", NULL, 405,
                 "method_not_allowed");
}

/* Which requests are answered from memory alone (the event thread answers those itself). */
static void test_needs_store(void)
{
    struct api_response rs;
    CHECK(!api_needs_store(NULL, "GET", "/ping"));
    CHECK(!api_needs_store(NULL, "HEAD", "/ping?x=1"));
    CHECK(!api_needs_store(NULL, "GET", "/nope"));
    CHECK(!api_needs_store(NULL, "POST", "/ping"));
    CHECK(!api_needs_store(NULL, NULL, NULL));
    CHECK(api_needs_store(NULL, "GET", "/queue/status"));
    CHECK(api_needs_store(NULL, "GET", "/metrics"));
    CHECK(api_needs_store(NULL, "POST", "/generate"));
    CHECK(api_needs_store(NULL, "DELETE", "/queue/0123"));
    /* the LoRA lists read the disk: never on the event thread */
    CHECK(api_needs_store(NULL, "GET", "/loras"));
    CHECK(api_needs_store(NULL, "GET", "/sdapi/v1/loras"));
    CHECK(!api_needs_store(NULL, "POST", "/loras"));
    CHECK(!api_needs_store(NULL, "GET", "/sdapi/v1/samplers"));
    /* and those indeed answer without a store */
    struct api_request rq = {"GET", "/ping", NULL, 0, false, false, NULL};
    api_handle(&ctx, NULL, &rq, &rs);
    CHECK_INT(rs.status, 200);
    api_response_release(&rs);
    rq.uri = "/elsewhere";
    api_handle(&ctx, NULL, &rq, &rs);
    CHECK_INT(rs.status, 404);
    api_response_release(&rs);
    rq.uri = "/ping";
    rq.method = "DELETE";
    api_handle(&ctx, NULL, &rq, &rs);
    CHECK_INT(rs.status, 405);
    api_response_release(&rs);
}

/* POST /generate parks its request; api_generate_poll answers it. */
static void test_sync(void)
{
    struct api_response rs, pr;
    struct store_job j;
    char id[STORE_ID_LEN + 1];
    static const unsigned char png[] = {0x89, 'P', 'N', 'G', 1, 2, 3};

    /* an empty queue first, so the queue bound does not interfere */
    while (store_claim(st, "unit", 1, 60000, &j) == 0) {
        store_finish(st, j.id, "unit", STORE_FAILED, "internal", "cleared by the test", 2);
        store_job_release(&j);
    }
    rs = call("POST", "/generate", "{\"prompt\":\"sync\",\"seed\":5}");
    CHECK_INT(rs.status, 0);
    CHECK(rs.park);
    CHECK(jobid_valid(rs.park_id, strlen(rs.park_id)));
    snprintf(id, sizeof(id), "%s", rs.park_id);
    api_response_release(&rs);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.state, STORE_QUEUED);
    CHECK(j.sync);
    store_job_release(&j);

    /* still queued: nothing to answer; out of time: 504; stopping: 503; both name the job */
    CHECK(!api_generate_poll(&ctx, st, id, API_POLL_CHECK, NULL, &pr));
    CHECK(api_generate_poll(&ctx, st, id, API_POLL_TIMEOUT, NULL, &pr));
    CHECK_INT(pr.status, 504);
    CHECK_STR(header(&pr, "X-Request-Id"), id);
    api_response_release(&pr);
    CHECK(api_generate_poll(&ctx, st, id, API_POLL_STOPPING, NULL, &pr));
    CHECK_INT(pr.status, 503);
    CHECK(strstr(pr.body, "stays queued") != NULL);
    api_response_release(&pr);

    /* done: the image, whatever the reason of the poll */
    CHECK_INT(store_claim(st, "unit", 3, 60000, &j), 0);
    CHECK_STR(j.id, id);
    store_job_release(&j);
    CHECK(!api_generate_poll(&ctx, st, id, API_POLL_CHECK, NULL, &pr));
    CHECK_INT(store_complete(st, id, "unit", png, sizeof(png), api_now_ms()), 0);
    CHECK(api_generate_poll(&ctx, st, id, API_POLL_TIMEOUT, NULL, &pr));
    CHECK_INT(pr.status, 200);
    CHECK_STR(pr.content_type, "image/png");
    CHECK_INT(pr.body_len, sizeof(png));
    CHECK_STR(header(&pr, "X-Request-Id"), id);
    CHECK_STR(header(&pr, "X-Seed"), "5");
    api_response_release(&pr);

    /* the queue bound applies to POST /generate too */
    for (int i = 0; i < 3; i++) {
        rs = call("POST", "/generate", "{\"prompt\":\"fill\"}");
        CHECK(rs.park);
        api_response_release(&rs);
    }
    rs = call("POST", "/generate", "{\"prompt\":\"one too many\"}");
    CHECK_INT(rs.status, 429);
    CHECK(!rs.park);
    CHECK(header(&rs, "Retry-After") != NULL);
    api_response_release(&rs);

    /* a body cut short of its Content-Length */
    struct api_request cut = {"POST", "/generate/queue", "{\"pro", 5, false, true, NULL};
    api_handle(&ctx, st, &cut, &rs);
    CHECK_INT(rs.status, 400);
    CHECK(strstr(rs.body, "malformed") != NULL);
    api_response_release(&rs);
}

/* The schema's property names are exactly the parser's field table. */
static void check_fields(json_object *schemas, const char *name, const char *const *table)
{
    json_object *sc, *props;
    int n = 0;
    if (!json_object_object_get_ex(schemas, name, &sc) ||
        !json_object_object_get_ex(sc, "properties", &props)) {
        unit_failed++;
        fprintf(stderr, "FAIL openapi: no schema %s\n", name);
        return;
    }
    for (; table[n]; n++)
        if (!json_object_object_get_ex(props, table[n], NULL)) {
            unit_failed++;
            fprintf(stderr, "FAIL openapi: %s lacks the field %s\n", name, table[n]);
        }
    json_object_object_foreach(props, key, v)
    {
        (void)v;
        if (api_field_index(table, key) < 0) {
            unit_failed++;
            fprintf(stderr, "FAIL openapi: %s lists %s, which the parser does not know\n", name,
                    key);
        }
    }
    CHECK_INT(json_object_object_length(props), n);
}

/* GET /openapi.json lists every route of the router with its methods and nothing else, the
 * request schemas list the parsers' fields, and the bounds are the live ones. */
static void test_openapi(void)
{
    struct api_response rs = call("GET", "/openapi.json", NULL);
    json_object *doc = body_json(&rs), *paths, *schemas, *comp, *v;
    size_t matched = 0;
    CHECK_INT(rs.status, 200);
    if (doc == NULL || !json_object_object_get_ex(doc, "paths", &paths) ||
        !json_object_object_get_ex(doc, "components", &comp) ||
        !json_object_object_get_ex(comp, "schemas", &schemas)) {
        unit_failed++;
        fprintf(stderr, "FAIL openapi: not a document\n");
        api_response_release(&rs);
        json_object_put(doc);
        return;
    }
    CHECK_STR(jstr(doc, "openapi", NULL), "3.1.0");
    CHECK(strstr(rs.body, "x-bounds") == NULL && strstr(rs.body, "x-default") == NULL);
    for (size_t i = 0; i < api_route_count(); i++) {
        bool prefix = false;
        const char *allow = NULL, *path = api_route_path(i, &prefix, &allow);
        json_object *item = NULL;
        json_object_object_foreach(paths, key, val)
        {
            size_t k = strlen(path);
            if (prefix ? strncmp(key, path, k) == 0 && key[k] == '{' && !strchr(key + k, '/') &&
                             key[strlen(key) - 1] == '}'
                       : strcmp(key, path) == 0)
                item = val;
        }
        if (item == NULL) {
            unit_failed++;
            fprintf(stderr, "FAIL openapi: route %s%s is not in the document\n", path,
                    prefix ? "{id}" : "");
            continue;
        }
        matched++;
        /* the methods: allow without HEAD (implied by GET), lower case, and nothing more */
        int want = 0;
        for (const char *m = allow; *m;) {
            char lower[16];
            size_t t = strcspn(m, ","), j;
            for (j = 0; j < t && j < sizeof(lower) - 1; j++)
                lower[j] = (char)(m[j] | 0x20);
            lower[j] = '\0';
            if (strcmp(lower, "head") != 0) {
                want++;
                if (!json_object_object_get_ex(item, lower, NULL)) {
                    unit_failed++;
                    fprintf(stderr, "FAIL openapi: %s lacks %s\n", path, lower);
                }
            }
            m += t;
            m += strspn(m, ", ");
        }
        CHECK_INT(json_object_object_length(item), want);
    }
    CHECK_INT((long long)matched, json_object_object_length(paths));
    check_fields(schemas, "GenerateRequest", api_native_fields);
    check_fields(schemas, "OpenAIImageRequest", api_openai_fields);
    check_fields(schemas, "A1111Txt2ImgRequest", api_a1111_fields);
    /* the live bounds and defaults */
    json_object *w = NULL;
    if (json_object_object_get_ex(schemas, "GenerateRequest", &v) &&
        json_object_object_get_ex(v, "properties", &v) &&
        json_object_object_get_ex(v, "width", &w)) {
        CHECK_STR(jstr(w, "maximum", NULL), "2048");
        CHECK_STR(jstr(w, "minimum", NULL), "64");
        CHECK_STR(jstr(w, "multipleOf", NULL), "16");
        CHECK_STR(jstr(w, "default", NULL), "64");
    } else {
        CHECK(w != NULL);
    }
    json_object_put(doc);
    api_response_release(&rs);
}

/* The OpenAI and A1111 routes: their error shapes, their field errors, their fixed lists. */
static void test_clients(void)
{
    struct api_response rs;
    json_object *o;

    rs = call("POST", "/v1/images/generations", "{\"prompt\":\"a\",\"size\":\"64x65\"}");
    o = body_json(&rs);
    CHECK_INT(rs.status, 422);
    CHECK_STR(jstr(o, "error", "type"), "invalid_request_error");
    CHECK_STR(jstr(o, "error", "param"), "size");
    CHECK_STR(jstr(o, "error", "code"), "out_of_range");
    json_object_put(o);
    api_response_release(&rs);
    rs = call("POST", "/v1/images/generations", "{\"zz\":1,\"prompt\":\"a\",\"n\":11}");
    o = body_json(&rs);
    CHECK_INT(rs.status, 422);
    CHECK_STR(jstr(o, "error", "param"), "n");
    CHECK_STR(header(&rs, "X-Ignored-Fields") ? header(&rs, "X-Ignored-Fields") : "", "zz");
    json_object_put(o);
    api_response_release(&rs);
    rs = call("POST", "/v1/images/generations", "{\"prompt\":\"a\",\"response_format\":\"b64\"}");
    o = body_json(&rs);
    CHECK_INT(rs.status, 422);
    CHECK_STR(jstr(o, "error", "param"), "response_format");
    json_object_put(o);
    api_response_release(&rs);
    rs = call("POST", "/v1/images/generations", "nope");
    o = body_json(&rs);
    CHECK_INT(rs.status, 400);
    CHECK_STR(jstr(o, "error", "type"), "invalid_request_error");
    json_object_put(o);
    api_response_release(&rs);

    rs = call("POST", "/sdapi/v1/txt2img", "{\"prompt\":\"a\",\"batch_size\":4,\"n_iter\":3}");
    o = body_json(&rs);
    CHECK_INT(rs.status, 422);
    CHECK_STR(jstr(o, "error", "code"), "out_of_range");
    CHECK(jstr(o, "detail", NULL) && strncmp(jstr(o, "detail", NULL), "batch_size", 10) == 0);
    json_object_put(o);
    api_response_release(&rs);
    rs = call("POST", "/sdapi/v1/txt2img", "{\"prompt\":\"a\",\"steps\":0}");
    o = body_json(&rs);
    CHECK_INT(rs.status, 422);
    CHECK(jstr(o, "detail", NULL) && strncmp(jstr(o, "detail", NULL), "steps:", 6) == 0);
    json_object_put(o);
    api_response_release(&rs);
    rs = call("GET", "/sdapi/v1/sd-models?x=1", NULL);
    o = body_json(&rs);
    CHECK_INT(rs.status, 200);
    CHECK(o && json_object_array_length(o) == 1);
    CHECK_STR(o ? jstr(json_object_array_get_idx(o, 0), "model_name", NULL) : NULL, "unit-model");
    json_object_put(o);
    api_response_release(&rs);
    rs = call("GET", "/sdapi/v1/options", NULL);
    o = body_json(&rs);
    CHECK_STR(jstr(o, "sd_model_checkpoint", NULL), "unit-model");
    json_object_put(o);
    api_response_release(&rs);
    rs = call("POST", "/sdapi/v1/options", "{\"sd_model_checkpoint\":\"x\"}");
    CHECK_INT(rs.status, 200);
    CHECK(rs.body_len == 4 && memcmp(rs.body, "null", 4) == 0);
    api_response_release(&rs);
    rs = call("GET", "/v1/models", NULL);
    o = body_json(&rs);
    CHECK_STR(jstr(o, "object", NULL), "list");
    json_object_put(o);
    api_response_release(&rs);
    expect_error("GET", "/queue/group/xyz", NULL, 400, "invalid_id");
    expect_error("DELETE", "/queue/group/0123456789abcdef0123456789abcdef", NULL, 404, "not_found");
    expect_error("POST", "/queue/group/0123456789abcdef0123456789abcdef", NULL, 405,
                 "method_not_allowed");
    CHECK(!api_needs_store(NULL, "GET", "/sdapi/v1/samplers"));
    CHECK(api_needs_store(NULL, "POST", "/sdapi/v1/txt2img"));
}

/* ---- LoRAs: the loras field, A1111's prompt tags, lora_dir, the job params, GET /loras ---- */

/* api_parse_native's rc and field for a body. */
static int parse_native(const char *body, struct api_gen *g, const char **field, char *msg,
                        size_t msg_len)
{
    *field = NULL;
    msg[0] = '\0';
    return api_parse_native(&ctx, body, strlen(body), g, field, msg, msg_len);
}

static void test_lora_fields(void)
{
    static const struct parse_case cases[] = {
        /* read, then refused: no lora_dir here */
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"film\",\"scale\":0.8}]}", FX_ELORA_OFF, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"film.safetensors\"}]}", FX_ELORA_OFF, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"a\",\"scale\":\"-0.5\"},{\"name\":\"b\","
         "\"scale\":null}]}",
         FX_ELORA_OFF, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"x\",\"scale\":16}]}", FX_ELORA_OFF, "loras"},
        /* none */
        {"{\"prompt\":\"a\",\"loras\":[]}", 0, NULL},
        {"{\"prompt\":\"a\",\"loras\":null}", 0, NULL},
        /* names: no paths, no hidden files, the syntax */
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"../x\"}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"..\"}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"a/b\"}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"/etc/passwd\"}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\".hidden\"}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\".safetensors\"}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"\"}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"a b\"}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"a\\\\b\"}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"a\\u0000b\"}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"-x\"}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":7}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"scale\":1}]}", FX_EINVAL, "loras"},
        /* the shape */
        {"{\"prompt\":\"a\",\"loras\":\"film\"}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":{\"name\":\"film\"}}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[\"film\"]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"x\",\"weight\":1}]}", FX_EINVAL, "loras"},
        /* scales */
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"x\",\"scale\":16.5}]}", FX_ERANGE, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"x\",\"scale\":-17}]}", FX_ERANGE, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"x\",\"scale\":1e400}]}", FX_ERANGE, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"x\",\"scale\":NaN}]}", FX_ERANGE, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"x\",\"scale\":\"NaN\"}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"x\",\"scale\":true}]}", FX_EINVAL, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"x\",\"scale\":[1]}]}", FX_EINVAL, "loras"},
        /* a name twice (with and without the suffix is the same file) */
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"x\"},{\"name\":\"x\",\"scale\":2}]}", FX_EINVAL,
         "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"x\"},{\"name\":\"x.safetensors\"}]}", FX_EINVAL,
         "loras"},
        /* how many */
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"a\"},{\"name\":\"b\"},{\"name\":\"c\"},"
         "{\"name\":\"d\"},{\"name\":\"e\"},{\"name\":\"f\"},{\"name\":\"g\"},{\"name\":\"h\"},"
         "{\"name\":\"i\"}]}",
         FX_ERANGE, "loras"},
        {"{\"prompt\":\"a\",\"loras\":[{\"name\":\"a\"},{\"name\":\"b\"},{\"name\":\"c\"},"
         "{\"name\":\"d\"},{\"name\":\"e\"},{\"name\":\"f\"},{\"name\":\"g\"},{\"name\":\"h\"}]}",
         FX_ELORA_OFF, "loras"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct api_gen g;
        char msg[512];
        const char *field;
        int rc = parse_native(cases[i].body, &g, &field, msg, sizeof(msg));
        bool ok = rc == cases[i].rc &&
                  ((field == NULL && cases[i].field == NULL) ||
                   (field && cases[i].field && strcmp(field, cases[i].field) == 0)) &&
                  (rc == 0 || strncmp(msg, "loras", 5) == 0);
        if (ok) {
            unit_passed++;
        } else {
            unit_failed++;
            fprintf(stderr, "FAIL lora case %zu %.80s: got %s field %s (%s), want %s\n", i,
                    cases[i].body, fx_errname(rc), field ? field : "(null)", msg,
                    fx_errname(cases[i].rc));
        }
        if (rc == 0)
            api_gen_release(&g);
    }

    /* what the parser keeps: names without the suffix, scales, in order */
    struct api_gen g;
    char msg[512];
    api_gen_init(&ctx, &g);
    CHECK_INT(api_gen_add_lora(&g, "film.safetensors", 16, 0.25, "loras[0]", msg, sizeof(msg)), 0);
    CHECK_INT(api_gen_add_lora(&g, "Grain_2.v1-b", 12, -1.5, "loras[1]", msg, sizeof(msg)), 0);
    CHECK_INT(g.req.n_loras, 2);
    CHECK(g.req.loras == g.loras);
    CHECK_STR(g.req.loras[0].name, "film");
    CHECK(g.req.loras[0].scale == 0.25 && g.req.loras[0].path == NULL);
    CHECK_STR(g.req.loras[1].name, "Grain_2.v1-b");
    CHECK(g.req.loras[1].scale == -1.5);
    char longname[200];
    memset(longname, 'a', sizeof(longname));
    CHECK_INT(api_gen_add_lora(&g, longname, LORA_NAME_MAX, 1, "x", msg, sizeof(msg)), 0);
    CHECK_INT(api_gen_add_lora(&g, longname, LORA_NAME_MAX + 1, 1, "x", msg, sizeof(msg)),
              FX_EINVAL);
    CHECK_INT(api_gen_add_lora(&g, "a..b", 4, 1, "x", msg, sizeof(msg)), 0); /* one component */
    CHECK_INT(api_gen_add_lora(&g, "x", 1, FX_LORA_SCALE_MAX, "x", msg, sizeof(msg)), 0);
    CHECK_INT(api_gen_add_lora(&g, "y", 1, -FX_LORA_SCALE_MAX, "x", msg, sizeof(msg)), 0);
    api_gen_release(&g);
}

/* A1111's <lora:NAME:SCALE> in the prompt. */
static void test_lora_prompt(void)
{
    static const struct {
        const char *prompt;
        int rc;
        const char *left; /* the prompt drawn */
        const char *names;
        double scale0;
    } cases[] = {
        {"a <lora:film:0.5> cat", 0, "a cat", "film", 0.5},
        {"<lora:film> a dog", 0, "a dog", "film", 1.0},
        {"a dog, <lora:film:-1.25>", 0, "a dog,", "film", -1.25},
        {"a dog <lora:a:1><lora:b.safetensors:2>", 0, "a dog", "a,b", 1.0},
        {"a <b> c <lora:x", 0, "a <b> c <lora:x", "", 0},
        {"<lyco:x:0.3> cat", 0, "cat", "x", 0.3},
        {"no tags", 0, "no tags", "", 0},
        {"a <lora:../x:1>", FX_EINVAL, NULL, NULL, 0},
        {"a <lora:.hidden:1>", FX_EINVAL, NULL, NULL, 0},
        {"a <lora:dir/x:1>", FX_EINVAL, NULL, NULL, 0},
        {"a <lora:x:abc>", FX_EINVAL, NULL, NULL, 0},
        {"a <lora:x:>", FX_EINVAL, NULL, NULL, 0},
        {"a <lora:x:0.5:1>", FX_EINVAL, NULL, NULL, 0},
        {"a <lora::1>", FX_EINVAL, NULL, NULL, 0},
        {"a <lora:x:99>", FX_ERANGE, NULL, NULL, 0},
        {"a <lora:x:1> <lora:x:2>", FX_EINVAL, NULL, NULL, 0},
        {"<lora:a><lora:b><lora:c><lora:d><lora:e><lora:f><lora:g><lora:h><lora:i>", FX_ERANGE,
         NULL, NULL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct api_gen g;
        char msg[512] = "", names[256] = "";
        api_gen_init(&ctx, &g);
        g.prompt = strdup(cases[i].prompt);
        g.req.prompt = g.prompt;
        g.req.prompt_len = strlen(g.prompt);
        int rc = api_prompt_loras(&g, msg, sizeof(msg));
        for (size_t k = 0; rc == 0 && k < g.req.n_loras; k++)
            snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", k ? "," : "",
                     g.req.loras[k].name);
        bool ok = rc == cases[i].rc &&
                  (rc != 0 || (strcmp(g.req.prompt, cases[i].left) == 0 &&
                               g.req.prompt_len == strlen(cases[i].left) &&
                               strcmp(names, cases[i].names) == 0 &&
                               (g.req.n_loras == 0 || g.req.loras[0].scale == cases[i].scale0))) &&
                  (rc == 0 || strncmp(msg, "prompt", 6) == 0);
        if (ok) {
            unit_passed++;
        } else {
            unit_failed++;
            fprintf(stderr, "FAIL lora prompt %zu '%s': got %s '%s' [%s] (%s)\n", i,
                    cases[i].prompt, fx_errname(rc), g.req.prompt, names, msg);
        }
        api_gen_release(&g);
    }
    /* a tag and the field naming the same LoRA: twice */
    struct api_gen g;
    char msg[256];
    api_gen_init(&ctx, &g);
    CHECK_INT(api_gen_add_lora(&g, "film", 4, 1, "loras[0]", msg, sizeof(msg)), 0);
    g.prompt = strdup("a <lora:film:0.5> cat");
    g.req.prompt = g.prompt;
    CHECK_INT(api_prompt_loras(&g, msg, sizeof(msg)), FX_EINVAL);
    CHECK(strstr(msg, "twice") != NULL);
    api_gen_release(&g);

    /* through the route: a bad tag is A1111's 422 naming the prompt; a good one is refused
     * for want of a lora_dir */
    struct api_response rs = call("POST", "/sdapi/v1/txt2img", "{\"prompt\":\"a <lora:../x:1>\"}");
    CHECK_INT(rs.status, 422);
    CHECK(rs.body && memmem(rs.body, rs.body_len, "\"detail\"", 8) != NULL);
    api_response_release(&rs);
    rs = call("POST", "/sdapi/v1/txt2img", "{\"prompt\":\"a <lora:film:0.5> cat\"}");
    CHECK_INT(rs.status, 422);
    CHECK(rs.body && memmem(rs.body, rs.body_len, "loras_not_configured", 20) != NULL);
    api_response_release(&rs);
}

/* Job params keep the LoRAs by name; the decoder takes only what a request could give. */
static void test_lora_params(void)
{
    struct fx_lora ls[2] = {{"film", NULL, 0.8}, {"grain.v2", NULL, -0.1}};
    struct fx_request r = {0}, back;
    struct job_loras jl;
    char *prompt = NULL, *s;
    r.prompt = "a cat";
    r.prompt_len = 5;
    r.width = r.height = 64;
    r.steps = 2;
    r.guidance = 3.5;
    r.seed = 7;
    r.has_seed = true;
    s = job_params_encode(&r);
    CHECK(s && strstr(s, "loras") == NULL); /* none: not written */
    free(s);
    r.loras = ls;
    r.n_loras = 2;
    s = job_params_encode(&r);
    CHECK(s && strstr(s, "\"loras\":[{\"name\":\"film\",\"scale\":0.8"));
    CHECK_INT(job_params_decode_ex(s, &back, &prompt, &jl), 0);
    CHECK_INT(back.n_loras, 2);
    CHECK_INT(jl.n, 2);
    CHECK(back.loras == jl.lora);
    CHECK_STR(back.loras[1].name, "grain.v2");
    CHECK(back.loras[0].scale == 0.8 && back.loras[1].scale == -0.1);
    CHECK(back.loras[0].path == NULL);
    free(prompt);
    /* the plain decoder reads the rest and leaves the LoRAs out */
    CHECK_INT(job_params_decode(s, &back, &prompt), 0);
    CHECK_INT(back.n_loras, 0);
    free(prompt);
    free(s);
    static const char *const bad[] = {
        "{\"prompt\":\"a\",\"guidance_scale\":3.5,\"num_inference_steps\":2,\"width\":64,"
        "\"height\":64,\"seed\":1,\"loras\":[{\"name\":\"../x\",\"scale\":1}]}",
        "{\"prompt\":\"a\",\"guidance_scale\":3.5,\"num_inference_steps\":2,\"width\":64,"
        "\"height\":64,\"seed\":1,\"loras\":[{\"name\":\"x\",\"scale\":99}]}",
        "{\"prompt\":\"a\",\"guidance_scale\":3.5,\"num_inference_steps\":2,\"width\":64,"
        "\"height\":64,\"seed\":1,\"loras\":[{\"name\":\"x\"}]}",
        "{\"prompt\":\"a\",\"guidance_scale\":3.5,\"num_inference_steps\":2,\"width\":64,"
        "\"height\":64,\"seed\":1,\"loras\":[{\"name\":\"x\",\"scale\":1},{\"name\":\"x\","
        "\"scale\":1}]}",
        "{\"prompt\":\"a\",\"guidance_scale\":3.5,\"num_inference_steps\":2,\"width\":64,"
        "\"height\":64,\"seed\":1,\"loras\":{\"name\":\"x\"}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_INT(job_params_decode_ex(bad[i], &back, &prompt, &jl), FX_EFORMAT);
        CHECK(prompt == NULL);
    }
}

/* lora_dir: names resolve inside it only, regular files only; its listing. */
static void test_lora_dir(const char *model)
{
    char dir[] = "/tmp/fx-loras-XXXXXX", path[512], msg[512];
    struct lora_file f;
    struct lora_entry *e = NULL;
    size_t n = 0;
    bool truncated = true;
    FILE *fp;

    if (mkdtemp(dir) == NULL)
        return;
    /* a file, a hidden one, a name a request could not give, another suffix, a symlink
     * pointing out of the dir, a folder and a FIFO under LoRA names */
    static const char *const files[] = {"film.safetensors", ".hidden.safetensors",
                                        "my lora.safetensors", "notes.txt", "zeta.safetensors"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        fp = fopen(path, "w");
        if (fp) {
            fputs("not a safetensors file", fp);
            fclose(fp);
        }
    }
    snprintf(path, sizeof(path), "%s/escape.safetensors", dir);
    CHECK_INT(symlink("/etc/hostname", path), 0);
    snprintf(path, sizeof(path), "%s/folder.safetensors", dir);
    CHECK_INT(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/pipe.safetensors", dir);
    CHECK_INT(mkfifo(path, 0600), 0);

    CHECK_INT(lora_file_open(dir, "film", &f, msg, sizeof(msg)), 0);
    CHECK(f.fd >= 0 && f.bytes == 22 && f.modified_ms > 0);
    CHECK(strstr(f.path, "/film.safetensors") != NULL);
    lora_file_close(&f);
    CHECK(f.fd == -1);
    CHECK_INT(lora_file_open(dir, "nope", &f, msg, sizeof(msg)), FX_ELORA_UNKNOWN);
    CHECK(strstr(msg, "nope") != NULL && strstr(msg, dir) == NULL); /* no server path */
    CHECK_INT(lora_file_open(dir, "escape", &f, msg, sizeof(msg)), FX_ELORA_BAD);
    CHECK(strstr(msg, "symbolic link") != NULL);
    CHECK_INT(lora_file_open(dir, "folder", &f, msg, sizeof(msg)), FX_ELORA_BAD);
    CHECK_INT(lora_file_open(dir, "pipe", &f, msg, sizeof(msg)), FX_ELORA_BAD);
    CHECK_INT(lora_file_open("/nonexistent-fx-dir", "film", &f, msg, sizeof(msg)), FX_EIO);

    /* the listing without a map: every file named, none usable */
    CHECK_INT(lora_dir_list(dir, NULL, "no map here", &e, &n, &truncated, msg, sizeof(msg)), 0);
    CHECK(!truncated);
    CHECK_INT(n, 5); /* escape, film, folder, pipe, zeta: sorted, hidden and odd names left out */
    if (n == 5) {
        CHECK_STR(e[0].name, "escape");
        CHECK_STR(e[1].name, "film");
        CHECK_STR(e[4].name, "zeta");
        CHECK_INT(e[0].rc, FX_ELORA_BAD);
        CHECK_INT(e[1].rc, FX_ELORA_OFF);
        CHECK_STR(e[1].error, "no map here");
        CHECK_INT(e[1].bytes, 22);
    }
    free(e);

    /* through the routes: lora_dir off, then on (without a map) */
    struct api_response rs = call("GET", "/loras", NULL);
    json_object *o = body_json(&rs), *v;
    CHECK_INT(rs.status, 200);
    CHECK(o && json_object_object_get_ex(o, "enabled", &v) && !json_object_get_boolean(v));
    json_object_put(o);
    api_response_release(&rs);
    rs = call("GET", "/sdapi/v1/loras", NULL);
    CHECK_INT(rs.status, 200);
    CHECK(rs.body_len == 2 && memcmp(rs.body, "[]", 2) == 0);
    api_response_release(&rs);
    snprintf(cfg.lora_dir, sizeof(cfg.lora_dir), "%s", dir);
    ctx.lora_map_error = "model 'unit' was exported without lora_map.json; re-export it";
    expect_error("POST", "/generate/queue",
                 "{\"prompt\":\"a\",\"loras\":[{\"name\":\"film\",\"scale\":0.5}]}", 422,
                 "loras_not_configured");
    rs = call("GET", "/loras", NULL);
    o = body_json(&rs);
    CHECK_INT(rs.status, 200);
    CHECK(o && json_object_object_get_ex(o, "loras", &v) && json_object_array_length(v) == 5);
    CHECK_STR(jstr(o, "error", "code"), "loras_not_configured");
    json_object_put(o);
    api_response_release(&rs);

    /* with the model's map (once the model dir has one): unknown, bad, symlinks refused
     * before anything is queued */
    struct fx_lora_map *map = NULL;
    if (model && fx_lora_map_load(model, &map, msg, sizeof(msg)) == 0) {
        long counts[STORE_NSTATES], before;
        ctx.lora_map = map;
        CHECK_INT(store_counts(st, counts), 0);
        before = counts[STORE_QUEUED];
        expect_error("POST", "/generate/queue",
                     "{\"prompt\":\"a\",\"loras\":[{\"name\":\"nope\"}]}", 422, "unknown_lora");
        expect_error("POST", "/generate/queue",
                     "{\"prompt\":\"a\",\"loras\":[{\"name\":\"film\"}]}", 422, "bad_lora");
        expect_error("POST", "/generate/queue",
                     "{\"prompt\":\"a\",\"loras\":[{\"name\":\"escape\"}]}", 422, "bad_lora");
        expect_error("POST", "/v1/images/generations",
                     "{\"prompt\":\"a\",\"loras\":[{\"name\":\"nope\"}]}", 422, "unknown_lora");
        rs = call("POST", "/sdapi/v1/txt2img", "{\"prompt\":\"a <lora:nope:1>\"}");
        CHECK_INT(rs.status, 422);
        CHECK(rs.body && memmem(rs.body, rs.body_len, "unknown_lora", 12) != NULL);
        api_response_release(&rs);
        CHECK_INT(store_counts(st, counts), 0);
        CHECK_INT(counts[STORE_QUEUED], before);
        rs = call("GET", "/loras", NULL);
        o = body_json(&rs);
        CHECK(o && jstr(o, "error", NULL) == NULL);
        CHECK(rs.body && memmem(rs.body, rs.body_len, "bad_lora", 8) != NULL);
        CHECK(rs.body && memmem(rs.body, rs.body_len, dir, strlen(dir)) == NULL);
        /* the reader's reason names the file as the client knows it, not an fd */
        CHECK(rs.body && memmem(rs.body, rs.body_len, "'film.safetensors'", 18) != NULL);
        CHECK(rs.body && memmem(rs.body, rs.body_len, "/proc/", 6) == NULL);
        json_object_put(o);
        api_response_release(&rs);
        ctx.lora_map = NULL;
        fx_lora_map_free(map);
    } else {
        fprintf(stderr, "  (the model dir has no lora map: the checks against it skipped)\n");
    }
    cfg.lora_dir[0] = '\0';
    ctx.lora_map_error = NULL;

    snprintf(path, sizeof(path), "rm -rf '%s'", dir);
    if (system(path) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

int main(int argc, char **argv)
{
    char dir[] = "/tmp/fx-api-XXXXXX", path[256], msg[512] = "";
    struct fx_manifest m = {0};

    struct unit_args args = unit_parse_args(argc, argv);
    test_ids();
    test_status_map();
    test_store_errors();
    test_device_streak();
    if (mkdtemp(dir) == NULL)
        return 1;
    snprintf(path, sizeof(path), "%s/jobs.db", dir);
    CHECK_INT(store_open(path, 5000, &st, msg, sizeof(msg)), 0);
    config_defaults(&cfg);
    cfg.queue_size = 3;
    cfg.default_steps = 2;
    cfg.default_width = 64;
    cfg.default_height = 64;
    m.default_steps = 28;
    m.default_width = m.default_height = 1024;
    m.default_guidance = 3.5;
    m.min_size = 64;
    m.max_size = 2048;
    m.multiple_of = 16;
    CHECK_INT(api_ctx_limits(&ctx, &m, &cfg, msg, sizeof(msg)), 0);
    ctx.cfg = &cfg;
    ctx.model_name = "unit-model";
    ctx.readiness = &readiness;
    test_parse();
    test_routes();
    test_sync();
    test_needs_store();
    test_events();
    test_openapi();
    test_clients();
    test_lora_fields();
    test_lora_prompt();
    test_lora_params();
    test_lora_dir(args.model);

    /* a configured default outside the bounds is refused */
    struct api_ctx bad;
    cfg.default_width = 100;
    CHECK_INT(api_ctx_limits(&bad, &m, &cfg, msg, sizeof(msg)), FX_ERANGE);
    CHECK(strstr(msg, "width") != NULL);

    store_close(st);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    return unit_done();
}
