/* Access control: keys, hashes, signatures, origins, webhook URLs (fcgi/auth.h); the keys,
 * usage and webhook tables of the store (migration 4); and the HTTP API with auth on: 401 /
 * 400 / 403, other keys' jobs as 404, per-key limits, CORS, webhooks queued by the store. */
#include <json-c/json.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>

#include "../../core/err.h"
#include "../../core/manifest.h"
#include "../../fcgi/api.h"
#include "../../fcgi/api_int.h"
#include "../../fcgi/auth.h"
#include "../../fcgi/webhook.h"
#include "unit.h"

static char dir[] = "/tmp/fx-auth-XXXXXX";
static char db_path[256];
static struct store *st;
static struct api_ctx ctx;
static struct fx_config cfg;
static atomic_int readiness = WORKER_READY;
static struct fx_metrics metrics;

/* ---- primitives ------------------------------------------------------------------------- */

static void test_keys(void)
{
    char key[AUTH_KEY_LEN + 1], key2[AUTH_KEY_LEN + 1], id[STORE_KEY_ID_LEN + 1];
    char secret[AUTH_SECRET_LEN + 1];
    struct store_key k, k2;
    uint8_t h[STORE_KEY_HASH_LEN];
    static const char fixed[] = "fxk_0123456789abcdef_"
                                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    /* printf %s fxk_0123456789abcdef_aaaa... | sha256sum */
    static const char fixed_hash[] =
        "7df4fd3245977610ac95f9fcfb72693382e2110b97cec21a474cd2febeabecbe";
    char hash_hex[65];

    CHECK_INT(auth_key_new(key, &k), 0);
    CHECK_INT(auth_key_new(key2, &k2), 0);
    CHECK_INT(strlen(key), AUTH_KEY_LEN);
    CHECK(strncmp(key, "fxk_", 4) == 0);
    CHECK(strcmp(key, key2) != 0);
    CHECK_INT(auth_key_id(key, strlen(key), id), 0);
    CHECK_STR(id, k.id);
    auth_key_hash(key, strlen(key), h);
    CHECK(auth_hash_equal(h, k.hash));
    CHECK(!auth_hash_equal(h, k2.hash));
    auth_key_hash(fixed, strlen(fixed), h);
    for (int i = 0; i < 32; i++)
        snprintf(hash_hex + 2 * i, 3, "%02x", h[i]);
    CHECK_STR(hash_hex, fixed_hash);
    CHECK_INT(auth_key_id(fixed, strlen(fixed), id), 0);
    CHECK_STR(id, "0123456789abcdef");
    /* shapes that cannot be a key */
    CHECK_INT(auth_key_id(fixed, strlen(fixed) - 1, id), FX_EAUTH);
    CHECK_INT(auth_key_id("fxk_0123", 8, id), FX_EAUTH);
    char bad[AUTH_KEY_LEN + 1];
    memcpy(bad, fixed, sizeof(bad));
    bad[4] = 'G';
    CHECK_INT(auth_key_id(bad, AUTH_KEY_LEN, id), FX_EAUTH);
    memcpy(bad, fixed, sizeof(bad));
    bad[20] = '-';
    CHECK_INT(auth_key_id(bad, AUTH_KEY_LEN, id), FX_EAUTH);
    memcpy(bad, fixed, sizeof(bad));
    bad[AUTH_KEY_LEN - 1] = 'A';
    CHECK_INT(auth_key_id(bad, AUTH_KEY_LEN, id), FX_EAUTH);
    CHECK_INT(auth_secret_new(secret), 0);
    CHECK_INT(strlen(secret), AUTH_SECRET_LEN);
    CHECK(strncmp(secret, "whsec_", 6) == 0);
}

static void test_presented(void)
{
    const char *k;
    size_t n;
    char msg[200];
    CHECK_INT(auth_presented(NULL, NULL, &k, &n, msg, sizeof(msg)), FX_ENOENT);
    CHECK_INT(auth_presented("Bearer abc", NULL, &k, &n, msg, sizeof(msg)), 0);
    CHECK_INT(n, 3);
    CHECK(strncmp(k, "abc", 3) == 0);
    CHECK_INT(auth_presented("bearer \t abc  ", NULL, &k, &n, msg, sizeof(msg)), 0);
    CHECK_INT(n, 3);
    CHECK_INT(auth_presented(NULL, " abc ", &k, &n, msg, sizeof(msg)), 0);
    CHECK_INT(n, 3);
    CHECK_INT(auth_presented("Bearer abc", "abc", &k, &n, msg, sizeof(msg)), 0);
    /* malformed: another scheme, no key, two keys, a blank or a control character inside */
    CHECK_INT(auth_presented("Basic YWxhZGRpbjpvcGVu", NULL, &k, &n, msg, sizeof(msg)), FX_EFORMAT);
    CHECK(strstr(msg, "Bearer") != NULL);
    CHECK_INT(auth_presented("Bearer", NULL, &k, &n, msg, sizeof(msg)), FX_EFORMAT);
    CHECK_INT(auth_presented("Bearer ", NULL, &k, &n, msg, sizeof(msg)), FX_EFORMAT);
    CHECK_INT(auth_presented("Bearerabc", NULL, &k, &n, msg, sizeof(msg)), FX_EFORMAT);
    CHECK_INT(auth_presented("Bearer a b", NULL, &k, &n, msg, sizeof(msg)), FX_EFORMAT);
    CHECK_INT(auth_presented("Bearer a\x01", NULL, &k, &n, msg, sizeof(msg)), FX_EFORMAT);
    CHECK_INT(auth_presented("Bearer \xc3\xa9", NULL, &k, &n, msg, sizeof(msg)), FX_EFORMAT);
    CHECK_INT(auth_presented(NULL, "", &k, &n, msg, sizeof(msg)), FX_EFORMAT);
    CHECK_INT(auth_presented("Bearer abc", "abd", &k, &n, msg, sizeof(msg)), FX_EFORMAT);
    CHECK(strstr(msg, "different") != NULL);
    CHECK(strstr(msg, "abc") == NULL); /* never the key itself */
}

static void test_sign_and_lists(void)
{
    char sig[72], item[64], msg[256];
    int i = 0;
    /* python3: hmac.new(b"whsec_0123456789abcdef", b'1700000000.{"event":"end"}', sha256) */
    auth_sign("whsec_0123456789abcdef", "1700000000", "{\"event\":\"end\"}", 15, sig);
    CHECK_STR(sig, "sha256=31a55a9aa1d870b45f156f4bc0e98ded56e451bbef9b1b716b7a50d7118f2764");

    CHECK(auth_origin_allowed("https://a.example, http://b.example:8080", "https://a.example", &i));
    CHECK_INT(i, 1);
    CHECK(auth_origin_allowed("https://a.example, http://b.example:8080", "http://b.example:8080",
                              &i));
    CHECK_INT(i, 2);
    CHECK(!auth_origin_allowed("https://a.example", "https://a.example.evil", &i));
    CHECK_INT(i, 0);
    CHECK(!auth_origin_allowed("https://a.example", "http://a.example", NULL));
    CHECK(!auth_origin_allowed("", "https://a.example", NULL));
    CHECK(!auth_origin_allowed("https://a.example", "", NULL));
    CHECK(auth_origin_allowed("*", "https://anything.example", &i));
    auth_list_item("https://a.example, *", 2, item, sizeof(item));
    CHECK_STR(item, "*");
    auth_list_item("https://a.example", 3, item, sizeof(item));
    CHECK_STR(item, "");

    const char *hosts = "127.0.0.1:9000, hooks.example.com";
    CHECK_INT(auth_webhook_check("http://127.0.0.1:9000/hook", hosts, msg, sizeof(msg)), 0);
    CHECK_INT(auth_webhook_check("https://HOOKS.example.com/a?b=c", hosts, msg, sizeof(msg)), 0);
    CHECK_INT(auth_webhook_check("http://hooks.example.com:81/", hosts, msg, sizeof(msg)), 0);
    CHECK_INT(auth_webhook_check("http://127.0.0.1:9001/hook", hosts, msg, sizeof(msg)),
              FX_EFORBIDDEN);
    CHECK(strstr(msg, "webhook_hosts") != NULL);
    CHECK_INT(auth_webhook_check("http://169.254.169.254/latest", hosts, msg, sizeof(msg)),
              FX_EFORBIDDEN);
    CHECK_INT(auth_webhook_check("http://localhost:9000/", hosts, msg, sizeof(msg)), FX_EFORBIDDEN);
    CHECK_INT(auth_webhook_check("ftp://127.0.0.1:9000/", hosts, msg, sizeof(msg)), FX_EINVAL);
    CHECK_INT(auth_webhook_check("file:///etc/passwd", hosts, msg, sizeof(msg)), FX_EINVAL);
    CHECK_INT(auth_webhook_check("http://u:p@127.0.0.1:9000/", hosts, msg, sizeof(msg)), FX_EINVAL);
    CHECK_INT(auth_webhook_check("http://127.0.0.1:9000/a b", hosts, msg, sizeof(msg)), FX_EINVAL);
    CHECK_INT(auth_webhook_check("", hosts, msg, sizeof(msg)), FX_EINVAL);
    CHECK_INT(auth_webhook_check("http://127.0.0.1:9000/", "", msg, sizeof(msg)), FX_EFORBIDDEN);
    CHECK(strstr(msg, "not enabled") != NULL);
    CHECK_INT(webhook_backoff_ms(1), 1000);
    CHECK_INT(webhook_backoff_ms(3), 4000);
    CHECK_INT(webhook_backoff_ms(50), 300000);
}

static void test_config(void)
{
    struct fx_config c;
    char msg[512];
    const char *base = "db = x.db\nmodel = m\n";
    char text[1024];
    snprintf(text, sizeof(text),
             "%sauth = on\nmetrics_auth = admin\nkey_max_queued = 2\nkey_daily_images = 50\n"
             "key_daily_budget = 1000000\ncors_origins = https://a.example , http://b:8080\n"
             "webhook_hosts = 127.0.0.1:9000,hooks.example.com\nwebhook_attempts = 3\n"
             "webhook_timeout = 2s\nwebhook_secret = whsec_0123456789abcdef\n",
             base);
    CHECK_INT(config_parse(text, strlen(text), "t", NULL, &c, msg, sizeof(msg)), 0);
    CHECK_INT(c.auth, 1);
    CHECK_INT(c.metrics_auth, CONFIG_METRICS_ADMIN);
    CHECK_INT(c.key_max_queued, 2);
    CHECK_INT(c.key_daily_budget, 1000000);
    CHECK_STR(c.cors_origins, "https://a.example, http://b:8080");
    CHECK_STR(c.webhook_hosts, "127.0.0.1:9000, hooks.example.com");
    CHECK_INT(c.webhook_timeout_ms, 2000);
    config_parse(base, strlen(base), "t", NULL, &c, msg, sizeof(msg));
    CHECK_INT(c.auth, 0); /* off unless the config says so (the installed one does) */
    CHECK_STR(c.cors_origins, "");
    static const char *const bad[] = {
        "auth = maybe\n",
        "metrics_auth = key\n",
        "cors_origins = https://a.example/path\n",
        "cors_origins = a.example\n",
        "cors_origins = javascript://x\n",
        "webhook_hosts = http://a.example\n",
        "webhook_hosts = a.example:0\n",
        "webhook_hosts = a.example:99999\n",
        "webhook_secret = short\n",
        "webhook_attempts = 0\n",
        "key_max_queued = -1\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), "%s%s", base, bad[i]);
        CHECK_INT(config_parse(text, strlen(text), "t", NULL, &c, msg, sizeof(msg)), FX_EFORMAT);
    }
}

/* ---- the store ---------------------------------------------------------------------------- */

static struct store_key make_key(const char *name, bool admin, char key[AUTH_KEY_LEN + 1])
{
    struct store_key k;
    memset(&k, 0, sizeof(k));
    auth_key_new(key, &k);
    auth_secret_new(k.webhook_secret);
    snprintf(k.name, sizeof(k.name), "%s", name);
    k.admin = admin;
    k.created_ms = api_now_ms();
    k.max_queued = k.daily_images = -1;
    k.daily_budget = -1;
    return k;
}

static long query_long(const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *q;
    long v = -1;
    sqlite3_open(db_path, &db);
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW)
        v = (long)sqlite3_column_int64(q, 0);
    else
        fprintf(stderr, "query failed: %s: %s\n", sql, sqlite3_errmsg(db));
    sqlite3_finalize(q);
    sqlite3_close(db);
    return v;
}

static void test_store_keys(void)
{
    char key[AUTH_KEY_LEN + 1], id[STORE_KEY_ID_LEN + 1];
    struct store_key a = make_key("store-a", false, key), b, got, *list = NULL;
    size_t n = 0;
    long active = -1, before = 0;

    CHECK_INT(query_long("PRAGMA user_version"), STORE_SCHEMA_VERSION);
    CHECK_INT(store_key_active(st, api_now_ms(), &before), 0);
    CHECK_INT(store_key_add(st, &a), 0);
    CHECK_INT(store_key_active(st, api_now_ms(), &active), 0);
    CHECK_INT(active, before + 1);
    CHECK_INT(store_key_get(st, a.id, &got), 0);
    CHECK_STR(got.name, "store-a");
    CHECK(memcmp(got.hash, a.hash, 32) == 0);
    CHECK_INT(got.max_queued, -1);
    CHECK_INT(got.revoked_ms, 0);
    CHECK_INT(store_key_get(st, "0000000000000000", &got), FX_ENOENT);
    /* a name in use cannot be given twice; once revoked it can */
    b = make_key("store-a", false, key);
    CHECK_INT(store_key_add(st, &b), FX_EINVAL);
    CHECK_INT(store_key_revoke(st, "store-a", api_now_ms(), id), 0);
    CHECK_STR(id, a.id);
    CHECK_INT(store_key_revoke(st, a.id, api_now_ms(), id), FX_ENOENT);
    CHECK_INT(store_key_get(st, a.id, &got), 0);
    CHECK(got.revoked_ms > 0);
    CHECK_INT(store_key_add(st, &b), 0);
    CHECK_INT(store_key_revoke(st, b.id, api_now_ms(), NULL), 0);
    CHECK_INT(store_key_revoke(st, "no-such-key", api_now_ms(), NULL), FX_ENOENT);
    CHECK_INT(store_key_touch(st, b.id, 12345), 0);
    CHECK_INT(store_key_get(st, b.id, &got), 0);
    CHECK_INT(got.last_used_ms, 12345);
    CHECK_INT(store_key_list(st, &list, &n), 0);
    CHECK(n >= 2);
    free(list);
    /* only a hash is kept, never the key; the keys view shows no hash at all */
    CHECK_INT(query_long("SELECT count(*) FROM api_keys WHERE hash = CAST(id AS BLOB)"), 0);
    CHECK_INT(query_long("SELECT count(*) FROM keys WHERE name = 'store-a'"), 2);
}

/* Runs the oldest queued job to an end (completed when state is STORE_COMPLETED). */
static void run_one(enum store_state state)
{
    struct store_job j;
    static const unsigned char png[] = {0x89, 'P', 'N', 'G'};
    if (store_claim(st, "unit", api_now_ms(), 60000, &j) != 0) {
        CHECK(!"nothing to claim");
        return;
    }
    CHECK_INT(store_progress(st, j.id, "unit", 1, api_now_ms(), 60000, NULL), 0);
    if (state == STORE_COMPLETED)
        CHECK_INT(store_complete(st, j.id, "unit", png, sizeof(png), api_now_ms()), 0);
    else
        CHECK_INT(store_finish(st, j.id, "unit", state,
                               state == STORE_FAILED ? "model_runtime" : "cancelled", "by the test",
                               api_now_ms()),
                  0);
    store_job_release(&j);
}

/* Empties the queue (earlier tests leave jobs). */
static void drain(void)
{
    struct store_job j;
    while (store_claim(st, "unit", api_now_ms(), 60000, &j) == 0) {
        store_finish(st, j.id, "unit", STORE_FAILED, "internal", "cleared by the test",
                     api_now_ms());
        store_job_release(&j);
    }
}

static void test_store_usage(void)
{
    char key[AUTH_KEY_LEN + 1];
    struct store_key k = make_key("usage", false, key);
    struct store_owner o = {k.id, 2, 3, 1000, 100, NULL, false};
    struct store_key_usage u;
    struct store_job j;
    int64_t now = api_now_ms();
    long pos;
    char id[5][33];

    drain();
    CHECK_INT(store_key_add(st, &k), 0);
    for (int i = 0; i < 5; i++)
        snprintf(id[i], sizeof(id[i]), "%032x", 0xabc0 + i);
    CHECK_INT(store_enqueue_owned(st, id[0], false, "{}", 1, 2, now, 10, &o, &pos, &u), 0);
    CHECK_INT(u.queued, 1);
    CHECK_INT(u.images, 1);
    CHECK_INT(u.budget, 100);
    CHECK_INT(store_get(st, id[0], &j), 0);
    CHECK_STR(j.key_id, k.id);
    store_job_release(&j);
    CHECK_INT(store_enqueue_owned(st, id[1], false, "{}", 1, 2, now, 10, &o, &pos, &u), 0);
    /* at max_queued: the third is refused, and counts nothing */
    CHECK_INT(store_enqueue_owned(st, id[2], false, "{}", 1, 2, now, 10, &o, &pos, &u), FX_EQUOTA);
    CHECK_INT(u.limit, STORE_LIMIT_QUEUED);
    CHECK_INT(store_get(st, id[2], &j), FX_ENOENT);
    /* one runs: a place is free; images of the day are 2 of 3 */
    run_one(STORE_COMPLETED);
    CHECK_INT(store_enqueue_owned(st, id[2], false, "{}", 1, 2, now, 10, &o, &pos, &u), 0);
    CHECK_INT(u.images, 3);
    run_one(STORE_COMPLETED);
    CHECK_INT(store_enqueue_owned(st, id[3], false, "{}", 1, 2, now, 10, &o, &pos, &u), FX_EQUOTA);
    CHECK_INT(u.limit, STORE_LIMIT_IMAGES);
    /* a failed job and a cancelled one give their image and budget back */
    run_one(STORE_FAILED);
    CHECK_INT(store_key_usage(st, k.id, now, &u), 0);
    CHECK_INT(u.images, 2);
    CHECK_INT(u.budget, 200);
    CHECK_INT(u.queued, 0);
    /* the budget: 200 used, 1000 allowed, a job of 900 does not fit */
    o.cost = 900;
    CHECK_INT(store_enqueue_owned(st, id[3], false, "{}", 1, 2, now, 10, &o, &pos, &u), FX_EQUOTA);
    CHECK_INT(u.limit, STORE_LIMIT_BUDGET);
    o.cost = 800;
    CHECK_INT(store_enqueue_owned(st, id[3], false, "{}", 1, 2, now, 10, &o, &pos, &u), 0);
    enum store_state s;
    CHECK_INT(store_cancel(st, id[3], now, &s), 0);
    CHECK_INT(store_key_usage(st, k.id, now, &u), 0);
    CHECK_INT(u.budget, 200);
    /* another day starts from nothing */
    CHECK_INT(store_key_usage(st, k.id, now + STORE_DAY_MS, &u), 0);
    CHECK_INT(u.images + u.budget, 0);
    /* the audit views */
    CHECK_INT(query_long("SELECT images FROM jobs_by_key WHERE key = 'usage'"), 2);
    CHECK_INT(query_long("SELECT failed FROM jobs_by_key WHERE key = 'usage'"), 1);
    CHECK_INT(query_long("SELECT jobs FROM failures_by_key WHERE key = 'usage' AND state = "
                         "'cancelled'"),
              1);
    struct store_key_stat *stats = NULL;
    size_t n = 0;
    bool found = false;
    CHECK_INT(store_key_stats(st, now, &stats, &n), 0);
    for (size_t i = 0; i < n; i++)
        if (strcmp(stats[i].id, k.id) == 0)
            found = stats[i].usage.images == 2 && stats[i].max_queued == -1;
    CHECK(found);
    free(stats);
}

static void test_store_deliveries(void)
{
    struct store_owner o = {NULL, 0, 0, 0, 10, "http://127.0.0.1:9/hook", true};
    struct store_delivery d;
    int64_t now = api_now_ms(), next;
    char id[33];
    long pos, n;

    drain();
    snprintf(id, sizeof(id), "%032x", 0xdee1);
    CHECK_INT(store_enqueue_owned(st, id, false, "{}", 1, 2, now, 10, &o, &pos, NULL), 0);
    CHECK_INT(store_delivery_claim(st, now, 1000, &d), FX_ENOENT);
    run_one(STORE_COMPLETED); /* one step (progress) then the end */
    CHECK_INT(query_long("SELECT count(*) FROM webhook_deliveries WHERE event = 'progress'"), 1);
    CHECK_INT(store_delivery_next(st, &next), 0);
    CHECK(next <= api_now_ms());
    /* the progress event first, then the end */
    CHECK_INT(store_delivery_claim(st, api_now_ms(), 60000, &d), 0);
    CHECK_STR(d.event, "progress");
    CHECK_STR(d.job_id, id);
    CHECK_STR(d.url, "http://127.0.0.1:9/hook");
    CHECK(d.body == NULL);
    CHECK_INT(d.attempts, 1);
    CHECK_INT(store_delivery_done(st, d.seq, "dropped", 0, "superseded", 0, NULL, now), 0);
    store_delivery_release(&d);
    CHECK_INT(store_delivery_claim(st, api_now_ms(), 60000, &d), 0);
    CHECK_STR(d.event, "end");
    int64_t seq = d.seq;
    /* a failed attempt with a retry later keeps what was sent */
    CHECK_INT(
        store_delivery_done(st, seq, "pending", 500, "answered 500", now + 5000, "{\"a\":1}", now),
        0);
    store_delivery_release(&d);
    CHECK_INT(store_delivery_claim(st, now + 1000, 60000, &d), FX_ENOENT); /* not due yet */
    CHECK_INT(store_delivery_claim(st, now + 5000, 60000, &d), 0);
    CHECK_INT(d.attempts, 2);
    CHECK_STR(d.body, "{\"a\":1}");
    CHECK_INT(store_delivery_done(st, seq, "delivered", 204, NULL, 0, NULL, now + 5000), 0);
    store_delivery_release(&d);
    CHECK_INT(store_delivery_next(st, &next), FX_ENOENT);
    CHECK_INT(query_long("SELECT last_status FROM webhook_log WHERE event = 'end'"), 204);
    CHECK_INT(query_long("SELECT attempts FROM webhook_log WHERE event = 'end'"), 2);
    /* a job without a webhook queues nothing; cancelled and failed ones with one do */
    snprintf(id, sizeof(id), "%032x", 0xdee2);
    o.webhook_progress = false;
    CHECK_INT(store_enqueue_owned(st, id, false, "{}", 1, 2, now, 10, &o, &pos, NULL), 0);
    enum store_state s;
    CHECK_INT(store_cancel(st, id, now, &s), 0);
    CHECK_INT(query_long("SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'"), 1);
    /* purge of old finished rows */
    CHECK_INT(store_access_purge(st, now + 10000, 100, &n), 0);
    CHECK_INT(n, 2); /* the dropped progress and the delivered end */
    CHECK_INT(query_long("SELECT count(*) FROM webhook_deliveries"), 1);
}

/* ---- the HTTP API with auth on ------------------------------------------------------------- */

static struct api_headers hdr;

static void set_headers(const char *auth, const char *xkey, const char *origin, const char *acrm)
{
    const char *v[API_HDR_COUNT] = {auth, xkey, origin, acrm, "127.0.0.1"};
    memset(&hdr, 0, sizeof(hdr));
    for (int i = 0; i < API_HDR_COUNT; i++)
        if (v[i]) {
            hdr.present[i] = true;
            snprintf(hdr.value[i], sizeof(hdr.value[i]), "%s", v[i]);
        }
}

static struct api_response call_as(const char *key, const char *method, const char *uri,
                                   const char *body)
{
    char auth[300];
    struct api_request rq = {method, uri, body, body ? strlen(body) : 0, false, false, &hdr};
    struct api_response rs;
    snprintf(auth, sizeof(auth), "Bearer %s", key ? key : "");
    set_headers(key ? auth : NULL, NULL, NULL, NULL);
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

static bool has_code(const struct api_response *rs, const char *code)
{
    char want[64];
    snprintf(want, sizeof(want), "\"code\":\"%s\"", code);
    return rs->body && memmem(rs->body, rs->body_len, want, strlen(want)) != NULL;
}

/* Status and error code of a call (released); code NULL: any. */
#define EXPECT(rs_, status_, code_) expect(__LINE__, (rs_), (status_), (code_))

static void expect(int line, struct api_response rs, int status, const char *code)
{
    if (rs.status != status || (code && !has_code(&rs, code))) {
        unit_failed++;
        fprintf(stderr, "%s:%d: FAIL want %d %s, got %d %.*s\n", __FILE__, line, status,
                code ? code : "", rs.status, (int)rs.body_len, rs.body ? rs.body : "");
    } else {
        unit_passed++;
    }
    api_response_release(&rs);
}

static void job_id_of(const struct api_response *rs, char id[STORE_ID_LEN + 1])
{
    json_object *o = json_tokener_parse(rs->body), *v;
    id[0] = '\0';
    if (o && json_object_object_get_ex(o, "request_id", &v))
        snprintf(id, STORE_ID_LEN + 1, "%s", json_object_get_string(v));
    json_object_put(o);
}

static void test_api_auth(void)
{
    char ka[AUTH_KEY_LEN + 1], kb[AUTH_KEY_LEN + 1], kadm[AUTH_KEY_LEN + 1];
    char kold[AUTH_KEY_LEN + 1], uri[128], id[STORE_ID_LEN + 1];
    struct store_key a = make_key("api-a", false, ka), b = make_key("api-b", false, kb);
    struct store_key adm = make_key("api-admin", true, kadm),
                     old = make_key("api-old", false, kold);
    struct api_response rs;

    drain();
    cfg.auth = 1;
    /* a store with auth on and no key yet: 401, and nothing breaks */
    EXPECT(call_as(ka, "GET", "/queue/status", NULL), 401, "unauthorized");
    old.expires_ms = api_now_ms() - 1;
    CHECK_INT(store_key_add(st, &a), 0);
    CHECK_INT(store_key_add(st, &b), 0);
    CHECK_INT(store_key_add(st, &adm), 0);
    CHECK_INT(store_key_add(st, &old), 0);

    /* /ping stays open, and needs no store */
    set_headers(NULL, NULL, NULL, NULL);
    struct api_request ping = {"GET", "/ping", NULL, 0, false, false, &hdr};
    api_handle(&ctx, NULL, &ping, &rs);
    CHECK_INT(rs.status, 200);
    api_response_release(&rs);
    CHECK(!api_needs_store(NULL, "GET", "/ping"));

    /* no key, a malformed header, an unknown key, a wrong secret, an expired key */
    rs = call_as(NULL, "GET", "/queue/status", NULL);
    CHECK_INT(rs.status, 401);
    CHECK(header(&rs, "WWW-Authenticate") != NULL);
    api_response_release(&rs);
    set_headers("Basic YWxhZGRpbjpvcGVu", NULL, NULL, NULL);
    struct api_request basic = {"GET", "/queue/status", NULL, 0, false, false, &hdr};
    api_handle(&ctx, st, &basic, &rs);
    CHECK_INT(rs.status, 400);
    CHECK(has_code(&rs, "malformed"));
    api_response_release(&rs);
    EXPECT(call_as("fxk_not_a_key", "GET", "/queue/status", NULL), 401, "unauthorized");
    char wrong[AUTH_KEY_LEN + 1];
    snprintf(wrong, sizeof(wrong), "%s", ka);
    wrong[AUTH_KEY_LEN - 1] = wrong[AUTH_KEY_LEN - 1] == '0' ? '1' : '0';
    EXPECT(call_as(wrong, "GET", "/queue/status", NULL), 401, "unauthorized");
    EXPECT(call_as(kold, "GET", "/queue/status", NULL), 401, "unauthorized");
    CHECK(atomic_load(&metrics.auth_failures[METRICS_AUTH_EXPIRED]) >= 1);
    CHECK(atomic_load(&metrics.auth_failures[METRICS_AUTH_MALFORMED]) >= 1);
    CHECK(atomic_load(&metrics.auth_failures[METRICS_AUTH_UNKNOWN]) >= 2);

    /* a's job: a and the admin see it, b gets 404 exactly like an unknown id */
    rs = call_as(ka, "POST", "/generate/queue", "{\"prompt\":\"mine\",\"seed\":1}");
    CHECK_INT(rs.status, 202);
    job_id_of(&rs, id);
    api_response_release(&rs);
    static const char *const paths[][2] = {{"GET", "/queue/status/"},
                                           {"GET", "/result/"},
                                           {"GET", "/queue/events/"},
                                           {"DELETE", "/queue/"}};
    for (int i = 0; i < 4; i++) {
        struct api_response theirs, unknown;
        snprintf(uri, sizeof(uri), "%s%s", paths[i][1], id);
        theirs = call_as(kb, paths[i][0], uri, NULL);
        snprintf(uri, sizeof(uri), "%s%032x", paths[i][1], 0x5eed);
        unknown = call_as(kb, paths[i][0], uri, NULL);
        CHECK_INT(theirs.status, 404);
        /* the same answer but for the id in the message */
        CHECK_INT(theirs.body_len, unknown.body_len);
        api_response_release(&theirs);
        api_response_release(&unknown);
    }
    snprintf(uri, sizeof(uri), "/queue/status/%s", id);
    EXPECT(call_as(ka, "GET", uri, NULL), 200, NULL);
    EXPECT(call_as(kadm, "GET", uri, NULL), 200, NULL);

    /* revoked while its job runs: the job finishes, the key is refused, an admin reads it */
    struct store_job j;
    CHECK_INT(store_claim(st, "unit", api_now_ms(), 60000, &j), 0);
    CHECK_STR(j.id, id);
    CHECK_INT(store_key_revoke(st, "api-a", api_now_ms(), NULL), 0);
    static const unsigned char png[] = {0x89, 'P', 'N', 'G'};
    CHECK_INT(store_complete(st, j.id, "unit", png, sizeof(png), api_now_ms()), 0);
    store_job_release(&j);
    EXPECT(call_as(ka, "GET", uri, NULL), 401, "unauthorized");
    CHECK(atomic_load(&metrics.auth_failures[METRICS_AUTH_REVOKED]) >= 1);
    snprintf(uri, sizeof(uri), "/result/%s", id);
    EXPECT(call_as(kadm, "GET", uri, NULL), 200, NULL);
    EXPECT(call_as(kb, "GET", uri, NULL), 404, "not_found");

    /* /metrics: open by default; admin-only with metrics_auth admin */
    EXPECT(call_as(NULL, "GET", "/metrics", NULL), 200, NULL);
    cfg.metrics_auth = CONFIG_METRICS_ADMIN;
    EXPECT(call_as(NULL, "GET", "/metrics", NULL), 401, "unauthorized");
    EXPECT(call_as(kb, "GET", "/metrics", NULL), 403, "forbidden");
    rs = call_as(kadm, "GET", "/metrics", NULL);
    CHECK_INT(rs.status, 200);
    CHECK(memmem(rs.body, rs.body_len, "fluxcgi_key_queued{key=\"api-b\"", 30) != NULL);
    CHECK(memmem(rs.body, rs.body_len, "fluxcgi_auth_failures_total{reason=\"revoked\"}", 44) !=
          NULL);
    api_response_release(&rs);
    cfg.metrics_auth = CONFIG_METRICS_OPEN;

    /* per-key limits, visible in /queue/status */
    cfg.key_max_queued = 1;
    rs = call_as(kb, "POST", "/generate/queue", "{\"prompt\":\"one\"}");
    CHECK_INT(rs.status, 202);
    api_response_release(&rs);
    rs = call_as(kb, "POST", "/generate/queue", "{\"prompt\":\"two\"}");
    CHECK_INT(rs.status, 429);
    CHECK(has_code(&rs, "quota_exceeded"));
    CHECK(header(&rs, "Retry-After") != NULL);
    CHECK(memmem(rs.body, rs.body_len, "\"max_queued\":1", 14) != NULL);
    api_response_release(&rs);
    rs = call_as(kb, "GET", "/queue/status", NULL);
    CHECK(memmem(rs.body, rs.body_len, "\"name\":\"api-b\"", 14) != NULL);
    CHECK(memmem(rs.body, rs.body_len, "\"queued\":1,\"max_queued\":1", 25) != NULL);
    api_response_release(&rs);
    /* the admin key has its own count */
    EXPECT(call_as(kadm, "POST", "/generate/queue", "{\"prompt\":\"adm\"}"), 202, NULL);
    cfg.key_max_queued = 0;
    drain();
    cfg.key_daily_budget = 1; /* less than any image */
    rs = call_as(kb, "POST", "/generate", "{\"prompt\":\"big\"}");
    CHECK_INT(rs.status, 429);
    CHECK(!rs.park);
    CHECK(memmem(rs.body, rs.body_len, "budget", 6) != NULL);
    CHECK(atoi(header(&rs, "Retry-After")) >= 1);
    CHECK(atoi(header(&rs, "Retry-After")) <= 86400);
    api_response_release(&rs);
    cfg.key_daily_budget = 0;
    cfg.auth = 0;
}

static void test_api_cors_and_webhooks(void)
{
    struct api_response rs;
    struct api_request rq = {"OPTIONS", "/generate", NULL, 0, false, false, &hdr};

    /* nothing allowed by default */
    set_headers(NULL, NULL, "https://app.example", "POST");
    api_handle(&ctx, NULL, &rq, &rs);
    CHECK_INT(rs.status, 403);
    CHECK(header(&rs, "Access-Control-Allow-Origin") == NULL);
    api_response_release(&rs);
    CHECK(!api_needs_store(NULL, "OPTIONS", "/generate")); /* answered on the event thread */
    snprintf(cfg.cors_origins, sizeof(cfg.cors_origins), "https://app.example");
    api_handle(&ctx, NULL, &rq, &rs);
    CHECK_INT(rs.status, 204);
    CHECK_STR(header(&rs, "Access-Control-Allow-Origin"), "https://app.example");
    CHECK_STR(header(&rs, "Access-Control-Allow-Methods"), "POST");
    CHECK(strstr(header(&rs, "Access-Control-Allow-Headers"), "Authorization") != NULL);
    api_response_release(&rs);
    /* an answer to an allowed origin carries the headers; another origin's does not */
    struct api_request get = {"GET", "/queue/status", NULL, 0, false, false, &hdr};
    set_headers(NULL, NULL, "https://app.example", NULL);
    api_handle(&ctx, st, &get, &rs);
    CHECK_INT(rs.status, 200);
    CHECK_STR(header(&rs, "Access-Control-Allow-Origin"), "https://app.example");
    CHECK(strstr(header(&rs, "Access-Control-Expose-Headers"), "X-Request-Id") != NULL);
    api_response_release(&rs);
    set_headers(NULL, NULL, "https://evil.example", NULL);
    api_handle(&ctx, st, &get, &rs);
    CHECK(header(&rs, "Access-Control-Allow-Origin") == NULL);
    api_response_release(&rs);
    /* a parked POST /generate gets them in its later answer */
    set_headers(NULL, NULL, "https://app.example", NULL);
    struct api_request gen = {"POST", "/generate", "{\"prompt\":\"cors\"}", 17, false, false, &hdr};
    api_handle(&ctx, st, &gen, &rs);
    CHECK(rs.park);
    CHECK_INT(rs.events.cors, 1);
    struct api_response pr;
    CHECK(api_generate_poll(&ctx, st, rs.park_id, API_POLL_TIMEOUT, &rs.events, &pr));
    CHECK_STR(header(&pr, "Access-Control-Allow-Origin"), "https://app.example");
    api_response_release(&pr);
    api_response_release(&rs);
    cfg.cors_origins[0] = '\0';

    /* webhooks: refused unless the host is allowed; recorded with the job */
    set_headers(NULL, NULL, NULL, NULL);
    struct api_request wh = {"POST", "/generate/queue", NULL, 0, false, false, &hdr};
    const char *body = "{\"prompt\":\"w\",\"webhook\":\"http://127.0.0.1:9/x\"}";
    wh.body = body;
    wh.body_len = strlen(body);
    api_handle(&ctx, st, &wh, &rs);
    CHECK_INT(rs.status, 422);
    CHECK(memmem(rs.body, rs.body_len, "webhook: webhooks are not enabled", 33) != NULL);
    api_response_release(&rs);
    snprintf(cfg.webhook_hosts, sizeof(cfg.webhook_hosts), "127.0.0.1:9");
    drain();
    api_handle(&ctx, st, &wh, &rs);
    CHECK_INT(rs.status, 202);
    api_response_release(&rs);
    body = "{\"prompt\":\"w\",\"webhook\":\"http://10.0.0.1/x\"}";
    wh.body = body;
    wh.body_len = strlen(body);
    api_handle(&ctx, st, &wh, &rs);
    CHECK_INT(rs.status, 422);
    CHECK(memmem(rs.body, rs.body_len, "not in webhook_hosts", 20) != NULL);
    api_response_release(&rs);
    body = "{\"prompt\":\"w\",\"webhook_progress\":1}";
    wh.body = body;
    wh.body_len = strlen(body);
    api_handle(&ctx, st, &wh, &rs);
    CHECK_INT(rs.status, 422);
    api_response_release(&rs);
    CHECK_INT(query_long("SELECT count(*) FROM jobs WHERE webhook = 'http://127.0.0.1:9/x'"), 1);
    cfg.webhook_hosts[0] = '\0';
}

/* The string value of a top-level field of a JSON answer into out ("" when absent). */
static void field_of(const struct api_response *rs, const char *name, char *out, size_t n)
{
    json_object *o = rs->body ? json_tokener_parse(rs->body) : NULL, *v;
    out[0] = '\0';
    if (o && json_object_object_get_ex(o, name, &v) && json_object_is_type(v, json_type_string))
        snprintf(out, n, "%s", json_object_get_string(v));
    json_object_put(o);
}

/* Job groups and the OpenAI / A1111 routes under auth: another key's group is 404 (and is not
 * cancelled), a group counts each image toward the key's quota, the clients' routes answer
 * auth errors in their own shapes, A1111's "current job" is the caller's own, the fixed lists
 * need a key while /openapi.json stays open. */
static void test_api_groups_and_clients(void)
{
    char kc[AUTH_KEY_LEN + 1], kd[AUTH_KEY_LEN + 1], kadm[AUTH_KEY_LEN + 1];
    char gid[STORE_ID_LEN + 1], id[STORE_ID_LEN + 1], uri[128];
    struct store_key c = make_key("grp-c", false, kc), d = make_key("grp-d", false, kd);
    struct store_key adm = make_key("grp-admin", true, kadm);
    struct store_key_usage u;
    struct api_response rs;
    long counts[STORE_NSTATES];

    drain();
    cfg.auth = 1;
    CHECK_INT(store_key_add(st, &c), 0);
    CHECK_INT(store_key_add(st, &d), 0);
    CHECK_INT(store_key_add(st, &adm), 0);

    /* a group of 3 images of c's key */
    cfg.key_daily_images = 4;
    rs = call_as(kc, "POST", "/generate/queue", "{\"prompt\":\"three\",\"n\":3}");
    CHECK_INT(rs.status, 202);
    field_of(&rs, "group_id", gid, sizeof(gid));
    field_of(&rs, "request_id", id, sizeof(id));
    api_response_release(&rs);
    CHECK(gid[0] != '\0');
    CHECK_INT(store_key_usage(st, c.id, api_now_ms(), &u), 0);
    CHECK_INT(u.images, 3);
    CHECK_INT(u.queued, 3);
    CHECK_INT(query_long("SELECT count(*) FROM jobs WHERE key_id IS NOT NULL AND cost = 2 * 64 * "
                         "64 AND group_id IS NOT NULL"),
              3);
    /* 2 more images do not fit the 4 of the day (all or none), 1 does */
    rs = call_as(kc, "POST", "/generate/queue", "{\"prompt\":\"two\",\"n\":2}");
    CHECK_INT(rs.status, 429);
    CHECK(has_code(&rs, "quota_exceeded"));
    CHECK(header(&rs, "Retry-After") != NULL);
    api_response_release(&rs);
    /* the OpenAI route answers the quota in its own shape */
    rs = call_as(kc, "POST", "/v1/images/generations", "{\"prompt\":\"two\",\"n\":2}");
    CHECK_INT(rs.status, 429);
    CHECK(memmem(rs.body, rs.body_len, "\"type\"", 6) != NULL);
    api_response_release(&rs);
    CHECK_INT(store_counts(st, counts), 0);
    CHECK_INT(counts[STORE_QUEUED], 3);
    cfg.key_daily_images = 0;

    /* the group: c and the admin see it; d gets 404 and cannot cancel it */
    snprintf(uri, sizeof(uri), "/queue/group/%s", gid);
    EXPECT(call_as(kc, "GET", uri, NULL), 200, NULL);
    EXPECT(call_as(kadm, "GET", uri, NULL), 200, NULL);
    struct api_response theirs = call_as(kd, "GET", uri, NULL), unknown;
    CHECK_INT(theirs.status, 404);
    snprintf(uri, sizeof(uri), "/queue/group/%032x", 0x5eed);
    unknown = call_as(kd, "GET", uri, NULL);
    CHECK_INT(theirs.body_len, unknown.body_len);
    api_response_release(&theirs);
    api_response_release(&unknown);
    snprintf(uri, sizeof(uri), "/queue/group/%s", gid);
    EXPECT(call_as(kd, "DELETE", uri, NULL), 404, "not_found");
    CHECK_INT(store_counts(st, counts), 0);
    CHECK_INT(counts[STORE_QUEUED], 3);
    EXPECT(call_as(NULL, "GET", uri, NULL), 401, "unauthorized");

    /* A1111's current job is the caller's own: d sees none and stops nothing */
    struct store_job j;
    CHECK_INT(store_claim(st, "unit", api_now_ms(), 60000, &j), 0);
    CHECK_STR(j.id, id);
    store_job_release(&j);
    rs = call_as(kd, "GET", "/sdapi/v1/progress", NULL);
    CHECK_INT(rs.status, 200);
    CHECK(memmem(rs.body, rs.body_len, id, strlen(id)) == NULL);
    api_response_release(&rs);
    rs = call_as(kc, "GET", "/sdapi/v1/progress", NULL);
    CHECK_INT(rs.status, 200);
    CHECK(memmem(rs.body, rs.body_len, id, strlen(id)) != NULL);
    api_response_release(&rs);
    EXPECT(call_as(kd, "POST", "/sdapi/v1/interrupt", NULL), 200, NULL);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.cancel, 0);
    store_job_release(&j);
    EXPECT(call_as(kc, "POST", "/sdapi/v1/interrupt", NULL), 200, NULL);
    CHECK_INT(store_get(st, id, &j), 0);
    CHECK_INT(j.cancel, 1);
    store_job_release(&j);

    /* c cancels its group: the queued images are given back to its quota */
    EXPECT(call_as(kc, "DELETE", uri, NULL), 202, NULL);
    CHECK_INT(store_key_usage(st, c.id, api_now_ms(), &u), 0);
    CHECK_INT(u.images, 1); /* the running one, until it ends */
    CHECK_INT(u.queued, 0);

    /* the clients' routes answer auth errors in their own shapes */
    rs = call_as(NULL, "POST", "/v1/images/generations", "{\"prompt\":\"x\"}");
    CHECK_INT(rs.status, 401);
    CHECK(memmem(rs.body, rs.body_len, "\"type\"", 6) != NULL);
    api_response_release(&rs);
    rs = call_as(NULL, "POST", "/sdapi/v1/txt2img", "{\"prompt\":\"x\"}");
    CHECK_INT(rs.status, 401);
    CHECK(memmem(rs.body, rs.body_len, "\"detail\"", 8) != NULL);
    api_response_release(&rs);
    /* the fixed lists need a key (so the store) with auth on; /openapi.json is open */
    EXPECT(call_as(NULL, "GET", "/v1/models", NULL), 401, "unauthorized");
    EXPECT(call_as(kd, "GET", "/v1/models", NULL), 200, NULL);
    EXPECT(call_as(NULL, "GET", "/sdapi/v1/samplers", NULL), 401, NULL);
    CHECK(api_needs_store(&ctx, "GET", "/v1/models"));
    CHECK(api_needs_store(&ctx, "GET", "/sdapi/v1/options"));
    CHECK(!api_needs_store(&ctx, "GET", "/openapi.json"));
    CHECK(!api_needs_store(&ctx, "GET", "/ping"));
    set_headers(NULL, NULL, NULL, NULL);
    struct api_request doc = {"GET", "/openapi.json", NULL, 0, false, false, &hdr};
    api_handle(&ctx, NULL, &doc, &rs);
    CHECK_INT(rs.status, 200);
    CHECK(rs.body && memmem(rs.body, rs.body_len, "securitySchemes", 15) != NULL);
    api_response_release(&rs);
    cfg.auth = 0;
    CHECK(!api_needs_store(&ctx, "GET", "/v1/models"));
    drain();
}

int main(int argc, char **argv)
{
    char msg[512] = "";
    struct fx_manifest m = {0};

    unit_parse_args(argc, argv);
    test_keys();
    test_presented();
    test_sign_and_lists();
    test_config();
    if (mkdtemp(dir) == NULL)
        return 1;
    snprintf(db_path, sizeof(db_path), "%s/jobs.db", dir);
    CHECK_INT(store_open(db_path, 5000, &st, msg, sizeof(msg)), 0);
    test_store_keys();
    test_store_usage();
    test_store_deliveries();

    config_defaults(&cfg);
    cfg.queue_size = 50;
    cfg.default_steps = 2;
    cfg.default_width = cfg.default_height = 64;
    m.default_steps = 28;
    m.default_width = m.default_height = 1024;
    m.default_guidance = 3.5;
    m.min_size = 64;
    m.max_size = 2048;
    m.multiple_of = 16;
    CHECK_INT(api_ctx_limits(&ctx, &m, &cfg, msg, sizeof(msg)), 0);
    metrics_init(&metrics);
    ctx.cfg = &cfg;
    ctx.model_name = "unit-model";
    ctx.readiness = &readiness;
    ctx.metrics = &metrics;
    test_api_auth();
    test_api_groups_and_clients();
    test_api_cors_and_webhooks();

    store_close(st);
    metrics_release(&metrics);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    return unit_done();
}
