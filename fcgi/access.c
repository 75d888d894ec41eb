/* access.c - who may ask the HTTP API: API keys, admin keys, CORS and per-key usage.
 *
 * With `auth` on, every route but /ping and /openapi.json (and /metrics unless metrics_auth
 * is admin) needs a key; each request looks its key up in the store by id (no cache: a
 * revoked key is refused at its next request) and compares hashes in constant time (auth.h).
 * /ping and /openapi.json stay open and are answered on the event thread without the store;
 * so are unknown paths, refused methods and CORS preflights, which carry no key.  Everything
 * that reads a key runs on a handler thread. */
#include <json-c/json.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"
#include "api_int.h"
#include "auth.h"
#include "log.h"

const char *const api_header_params[API_HDR_COUNT] = {
    "HTTP_AUTHORIZATION", "HTTP_X_API_KEY", "HTTP_ORIGIN", "HTTP_ACCESS_CONTROL_REQUEST_METHOD",
    "REMOTE_ADDR"};

/* A key's last-used time is written at most this often (each write is a commit). */
#define TOUCH_EVERY_MS 60000
/* Refused keys are logged at most once a second; the others are counted in the next line. */
#define LOG_EVERY_MS 1000

const char *api_hdr(const struct api_request *rq, enum api_hdr h)
{
    if (rq == NULL || rq->hdr == NULL || (unsigned)h >= API_HDR_COUNT || !rq->hdr->present[h])
        return NULL;
    return rq->hdr->value[h];
}

void access_open_caller(const struct api_ctx *ctx, struct api_caller *who)
{
    memset(who, 0, sizeof(*who));
    who->admin = !ctx->cfg->auth;
}

/* Logs a refused key without the key, at most once a second. */
static void log_refused(const struct api_request *rq, const char *why)
{
    static _Atomic int64_t last;
    static atomic_long skipped;
    int64_t now = api_mono_ms(), prev = atomic_load(&last);
    const char *addr = api_hdr(rq, API_HDR_REMOTE_ADDR);
    if (now - prev < LOG_EVERY_MS || !atomic_compare_exchange_strong(&last, &prev, now)) {
        atomic_fetch_add(&skipped, 1);
        return;
    }
    long more = atomic_exchange(&skipped, 0);
    char uri[120];
    snprintf(uri, sizeof(uri), "%.*s", (int)strcspn(rq->uri ? rq->uri : "", "?#"),
             rq->uri ? rq->uri : "");
    for (char *p = uri; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            *p = '?';
    log_printf("warn", "auth: %s %s from %.64s refused: %s%s", rq->method ? rq->method : "-", uri,
               addr && addr[0] ? addr : "-", why, more ? " (and earlier refusals not logged)" : "");
}

static int refuse(const struct api_ctx *ctx, const struct api_request *rq, struct api_response *rs,
                  enum metrics_auth_failure why, int code, const char *log_why, const char *message)
{
    metrics_auth_failure(ctx->metrics, why);
    log_refused(rq, log_why);
    if (code == FX_EAUTH || code == FX_EFORMAT)
        api_add_header(rs, "WWW-Authenticate", "Bearer realm=\"fluxcgi\"%s",
                       code == FX_EFORMAT ? ", error=\"invalid_request\"" : "");
    api_send_error(rs, code, "%s", message);
    return code;
}

static long limit(long key_value, long config_value)
{
    return key_value >= 0 ? key_value : config_value;
}

int access_check(const struct api_ctx *ctx, struct store *st, const struct api_request *rq,
                 bool need_admin, struct api_caller *who, struct api_response *rs)
{
    const char *auth = api_hdr(rq, API_HDR_AUTHORIZATION), *xkey = api_hdr(rq, API_HDR_API_KEY);
    const char *key = NULL;
    char id[STORE_KEY_ID_LEN + 1], msg[200] = "", why[120];
    uint8_t hash[STORE_KEY_HASH_LEN];
    struct store_key k;
    size_t len = 0;
    int64_t now = api_now_ms();
    int rc;

    memset(who, 0, sizeof(*who));
    if ((auth && strlen(auth) >= API_HDR_MAX - 1) || (xkey && strlen(xkey) >= API_HDR_MAX - 1))
        return refuse(ctx, rq, rs, METRICS_AUTH_MALFORMED, FX_EFORMAT, "a header too long",
                      "the Authorization or X-API-Key header is too long for an API key");
    rc = auth_presented(auth, xkey, &key, &len, msg, sizeof(msg));
    if (rc == FX_ENOENT)
        return refuse(ctx, rq, rs, METRICS_AUTH_MISSING, FX_EAUTH, "no key",
                      "an API key is required: send 'Authorization: Bearer <key>' or "
                      "'X-API-Key: <key>'");
    if (rc)
        return refuse(ctx, rq, rs, METRICS_AUTH_MALFORMED, FX_EFORMAT, "a malformed header", msg);
    if (st == NULL) { /* cannot happen: api_needs_store routes keyed requests to handlers */
        api_send_error(rs, FX_EINTERNAL, "no store to check the API key");
        return FX_EINTERNAL;
    }
    if (auth_key_id(key, len, id) != 0)
        return refuse(ctx, rq, rs, METRICS_AUTH_UNKNOWN, FX_EAUTH, "not a key's shape",
                      "unknown API key");
    rc = store_key_get(st, id, &k);
    if (rc && rc != FX_ENOENT) {
        api_send_store_error(rs, rc, st);
        return rc;
    }
    auth_key_hash(key, len, hash);
    /* an unknown id and a wrong secret get the same answer */
    if (rc == FX_ENOENT || !auth_hash_equal(hash, k.hash))
        return refuse(ctx, rq, rs, METRICS_AUTH_UNKNOWN, FX_EAUTH,
                      rc == FX_ENOENT ? "unknown key id" : "a wrong secret for a key id",
                      "unknown API key");
    if (k.revoked_ms) {
        snprintf(why, sizeof(why), "key '%s' (%s) is revoked", k.name, k.id);
        return refuse(ctx, rq, rs, METRICS_AUTH_REVOKED, FX_EAUTH, why, "this API key was revoked");
    }
    if (k.expires_ms && k.expires_ms <= now) {
        snprintf(why, sizeof(why), "key '%s' (%s) has expired", k.name, k.id);
        return refuse(ctx, rq, rs, METRICS_AUTH_EXPIRED, FX_EAUTH, why, "this API key has expired");
    }
    if (need_admin && !k.admin) {
        snprintf(why, sizeof(why), "key '%s' (%s) is not an admin key", k.name, k.id);
        return refuse(ctx, rq, rs, METRICS_AUTH_FORBIDDEN, FX_EFORBIDDEN, why,
                      "this endpoint needs an admin key");
    }
    if (now - k.last_used_ms >= TOUCH_EVERY_MS)
        store_key_touch(st, k.id, now); /* bookkeeping: a busy store must not refuse the key */
    who->admin = k.admin;
    snprintf(who->key_id, sizeof(who->key_id), "%s", k.id);
    snprintf(who->name, sizeof(who->name), "%s", k.name);
    who->max_queued = limit(k.max_queued, ctx->cfg->key_max_queued);
    who->daily_images = limit(k.daily_images, ctx->cfg->key_daily_images);
    who->daily_budget = k.daily_budget >= 0 ? k.daily_budget : ctx->cfg->key_daily_budget;
    snprintf(who->webhook, sizeof(who->webhook), "%s", k.webhook_url);
    return 0;
}

/* ---- CORS --------------------------------------------------------------------------------- */

int access_cors_index(const struct api_ctx *ctx, const struct api_request *rq)
{
    const char *origin = api_hdr(rq, API_HDR_ORIGIN);
    int i = 0;
    if (origin && strlen(origin) < API_HDR_MAX - 1)
        auth_origin_allowed(ctx->cfg->cors_origins, origin, &i);
    return i;
}

void access_cors_headers(const struct api_ctx *ctx, int index, struct api_response *rs)
{
    char origin[256];
    if (index <= 0)
        return;
    auth_list_item(ctx->cfg->cors_origins, index, origin, sizeof(origin));
    if (origin[0] == '\0')
        return;
    api_add_header(rs, "Access-Control-Allow-Origin", "%s", origin);
    if (strcmp(origin, "*") != 0)
        api_add_header(rs, "Vary", "Origin");
    /* what a browser's script may read besides the simple headers */
    api_add_header(rs, "Access-Control-Expose-Headers",
                   "X-Request-Id, X-Seed, Location, "
                   "Retry-After, WWW-Authenticate");
}

bool access_is_preflight(const struct api_request *rq)
{
    return rq->method && strcmp(rq->method, "OPTIONS") == 0 && api_hdr(rq, API_HDR_ORIGIN) &&
           api_hdr(rq, API_HDR_ACR_METHOD);
}

void access_preflight(const struct api_ctx *ctx, const struct api_request *rq, const char *allow,
                      struct api_response *rs)
{
    int i = access_cors_index(ctx, rq);
    if (i == 0) {
        api_send_error(rs, FX_EFORBIDDEN, "origin not allowed (cors_origins)");
        return;
    }
    rs->status = 204;
    rs->content_type = NULL;
    access_cors_headers(ctx, i, rs);
    api_add_header(rs, "Access-Control-Allow-Methods", "%s", allow);
    api_add_header(rs, "Access-Control-Allow-Headers", "Authorization, X-API-Key, Content-Type");
    api_add_header(rs, "Access-Control-Max-Age", "600");
}

/* ---- usage -------------------------------------------------------------------------------- */

static json_object *limit_json(int64_t v)
{
    return v > 0 ? json_object_new_int64(v) : NULL;
}

json_object *access_usage_json(const struct api_caller *who, const struct store_key_usage *u)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(who->name));
    json_object_object_add(o, "id", json_object_new_string(who->key_id));
    json_object_object_add(o, "admin", json_object_new_boolean(who->admin));
    json_object_object_add(o, "queued", json_object_new_int64(u->queued));
    json_object_object_add(o, "max_queued", limit_json(who->max_queued));
    json_object_object_add(o, "images_today", json_object_new_int64(u->images));
    json_object_object_add(o, "daily_images", limit_json(who->daily_images));
    json_object_object_add(o, "budget_today", json_object_new_int64(u->budget));
    json_object_object_add(o, "daily_budget", limit_json(who->daily_budget));
    return o;
}

/* A key name as a Prometheus label value: \, " and newlines escaped. */
static void label(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fputc('\\', f);
        if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
}

char *access_metrics(const struct api_ctx *ctx, struct store *st, size_t *len)
{
    const struct fx_config *cfg = ctx->cfg;
    struct store_key_stat *v = NULL;
    size_t n = 0, blen = 0;
    char *buf = NULL;
    FILE *f;
    static const struct {
        const char *name, *help;
    } series[] = {
        {"fluxcgi_key_queued", "Jobs of an API key waiting to run."},
        {"fluxcgi_key_images_today", "Images an API key queued today (UTC; failed and "
                                     "cancelled jobs given back)."},
        {"fluxcgi_key_budget_today", "Steps x width x height an API key queued today (UTC)."},
        {"fluxcgi_key_max_queued", "Queued jobs an API key may have (0: no limit)."},
        {"fluxcgi_key_daily_images", "Images an API key may queue per UTC day (0: no limit)."},
        {"fluxcgi_key_daily_budget", "Steps x pixels an API key may queue per UTC day (0: no "
                                     "limit)."},
    };
    if (store_key_stats(st, api_now_ms(), &v, &n))
        return NULL;
    f = open_memstream(&buf, &blen);
    if (f == NULL) {
        free(v);
        return NULL;
    }
    for (size_t s = 0; s < sizeof(series) / sizeof(series[0]); s++) {
        fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n", series[s].name, series[s].help,
                series[s].name);
        for (size_t i = 0; i < n; i++) {
            int64_t val = s == 0                   ? v[i].usage.queued
                          : s == 1                 ? v[i].usage.images
                          : s == 2                 ? v[i].usage.budget
                          : s == 3                 ? limit(v[i].max_queued, cfg->key_max_queued)
                          : s == 4                 ? limit(v[i].daily_images, cfg->key_daily_images)
                          : v[i].daily_budget >= 0 ? v[i].daily_budget
                                                   : cfg->key_daily_budget;
            fprintf(f, "%s{key=\"", series[s].name);
            label(f, v[i].name);
            fprintf(f, "\",id=\"%s\"} %lld\n", v[i].id, (long long)val);
        }
    }
    free(v);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    *len = blen;
    return buf;
}
