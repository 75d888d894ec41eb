/* webhook.c - the webhook delivery thread (webhook.h). */
#include "webhook.h"

#include <curl/curl.h>
#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/err.h"
#include "../core/version.h"
#include "api_int.h"
#include "auth.h"
#include "log.h"

/* How long a claimed delivery is kept from other processes beyond its attempt. */
#define LEASE_EXTRA_MS 30000
/* Finished deliveries are purged (with audit_retention) at most this often. */
#define PURGE_EVERY_MS 60000
#define PURGE_BATCH 500
/* The most a receiver's answer is read (the rest is dropped). */
#define ANSWER_MAX 4096

struct webhook {
    const struct api_ctx *api;
    struct store *st;
    pthread_t thread;
    bool started, joined;
    atomic_int stopping;
    pthread_mutex_t lock;
    pthread_cond_t wake;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long webhook_backoff_ms(int attempts)
{
    long ms = 1000;
    for (int i = 1; i < attempts && ms < 300000; i++)
        ms *= 2;
    return ms > 300000 ? 300000 : ms;
}

/* The answer's body is not needed: take at most ANSWER_MAX bytes and drop them. */
static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    size_t *got = ud;
    (void)p;
    *got += size * n;
    return *got > ANSWER_MAX ? 0 : size * n; /* 0 ends a flood; the status is already in */
}

/* Ends an attempt in flight when the service stops. */
static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    struct webhook *w = ud;
    (void)a;
    (void)b;
    (void)c;
    (void)d;
    return atomic_load(&w->stopping) ? 1 : 0;
}

/* POSTs body to url; returns the HTTP status (0: no answer) and sets err on failure. */
static long post(struct webhook *w, const char *url, const char *event, int64_t seq,
                 const char *secret, const char *body, char *err, size_t err_len)
{
    const struct fx_config *cfg = w->api->cfg;
    struct curl_slist *h = NULL;
    char line[128], ts[32], sig[72], cerr[CURL_ERROR_SIZE] = "";
    size_t got = 0;
    long status = 0;
    CURLcode rc;
    CURL *c = curl_easy_init();

    if (c == NULL) {
        snprintf(err, err_len, "out of memory");
        return 0;
    }
    snprintf(ts, sizeof(ts), "%lld", (long long)(now_ms() / 1000));
    h = curl_slist_append(h, "Content-Type: application/json");
    snprintf(line, sizeof(line), "X-Fluxcgi-Event: %s", event);
    h = curl_slist_append(h, line);
    snprintf(line, sizeof(line), "X-Fluxcgi-Delivery: %lld", (long long)seq);
    h = curl_slist_append(h, line);
    snprintf(line, sizeof(line), "X-Fluxcgi-Timestamp: %s", ts);
    h = curl_slist_append(h, line);
    if (secret && secret[0]) {
        auth_sign(secret, ts, body, strlen(body), sig);
        snprintf(line, sizeof(line), "X-Fluxcgi-Signature: %s", sig);
        h = curl_slist_append(h, line);
    }
    h = curl_slist_append(h, "Expect:"); /* no 100-continue round trip */
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    curl_easy_setopt(c, CURLOPT_USERAGENT, "fluxcgi/" FX_VERSION);
    /* only where the allow-list pointed: no redirects, no other protocols, no proxy from
     * the environment */
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)cfg->webhook_timeout_ms);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &got);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, w);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && status > 0))
        snprintf(err, err_len, "%s", cerr[0] ? cerr : curl_easy_strerror(rc));
    else if (status < 200 || status > 299)
        snprintf(err, err_len, "answered %ld", status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return rc == CURLE_OK || (rc == CURLE_WRITE_ERROR && status > 0) ? status : 0;
}

/* The body of a delivery: {"event": ..., "job": the job's status JSON}; NULL with why set
 * when there is nothing to send (the job is gone, or a progress event came after the end). */
static char *make_body(struct webhook *w, const struct store_delivery *d, char *why, size_t n)
{
    struct store_job j;
    json_object *o;
    char *body = NULL;
    int rc = store_get(w->st, d->job_id, &j);
    if (rc) {
        snprintf(why, n, rc == FX_ENOENT ? "the job was deleted" : "the store failed");
        return NULL;
    }
    if (strcmp(d->event, "progress") == 0 && api_terminal(j.state)) {
        snprintf(why, n, "superseded: the job has ended");
        store_job_release(&j);
        return NULL;
    }
    o = json_object_new_object();
    json_object_object_add(o, "event", json_object_new_string(d->event));
    json_object_object_add(o, "job", api_job_status(w->api, &j));
    store_job_release(&j);
    body = strdup(
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
    if (body == NULL)
        snprintf(why, n, "out of memory");
    return body;
}

static void deliver(struct webhook *w, struct store_delivery *d)
{
    const struct fx_config *cfg = w->api->cfg;
    struct store_key k;
    char err[256] = "", *body = d->body;
    const char *secret = cfg->webhook_secret;
    bool progress = strcmp(d->event, "progress") == 0;
    long status;
    int64_t now;

    /* the allow-list of now decides, not the one of when the job was queued */
    if (auth_webhook_check(d->url, cfg->webhook_hosts, err, sizeof(err)) != 0 ||
        (body == NULL && (body = make_body(w, d, err, sizeof(err))) == NULL)) {
        store_delivery_done(w->st, d->seq, "dropped", 0, err, 0, NULL, now_ms());
        metrics_webhook(w->api->metrics, METRICS_WEBHOOK_DROPPED);
        log_printf("info", "webhook %lld (job %s, %s): dropped: %s", (long long)d->seq, d->job_id,
                   d->event, err);
        if (body != d->body)
            free(body);
        return;
    }
    if (d->key_id[0] && store_key_get(w->st, d->key_id, &k) == 0)
        secret = k.webhook_secret;
    status = post(w, d->url, d->event, d->seq, secret, body, err, sizeof(err));
    now = now_ms();
    if (status >= 200 && status <= 299) {
        store_delivery_done(w->st, d->seq, "delivered", (int)status, NULL, 0, body, now);
        metrics_webhook(w->api->metrics, METRICS_WEBHOOK_DELIVERED);
    } else if (progress || d->attempts >= cfg->webhook_attempts || atomic_load(&w->stopping)) {
        /* a stop leaves a pending end event for the next start: not a failure */
        bool again = !progress && d->attempts < cfg->webhook_attempts;
        store_delivery_done(w->st, d->seq, again ? "pending" : "failed", (int)status, err, now,
                            body, now);
        if (!again) {
            metrics_webhook(w->api->metrics, METRICS_WEBHOOK_FAILED);
            log_printf("warn", "webhook %lld (job %s, %s) to %.200s failed after %d attempt%s: %s",
                       (long long)d->seq, d->job_id, d->event, d->url, d->attempts,
                       d->attempts == 1 ? "" : "s", err);
        }
    } else {
        long wait = webhook_backoff_ms(d->attempts);
        store_delivery_done(w->st, d->seq, "pending", (int)status, err, now + wait, body, now);
        metrics_webhook(w->api->metrics, METRICS_WEBHOOK_RETRIED);
        log_printf("info", "webhook %lld (job %s, %s): attempt %d: %s; again in %ld ms",
                   (long long)d->seq, d->job_id, d->event, d->attempts, err, wait);
    }
    if (body != d->body)
        free(body);
}

static void *webhook_main(void *arg)
{
    struct webhook *w = arg;
    const struct fx_config *cfg = w->api->cfg;
    int64_t last_purge = 0;
    while (!atomic_load(&w->stopping)) {
        struct store_delivery d;
        int64_t now = now_ms(), next = 0;
        long wait = 1000;
        int rc = store_delivery_claim(w->st, now, cfg->webhook_timeout_ms + LEASE_EXTRA_MS, &d);
        if (rc == 0) {
            deliver(w, &d);
            store_delivery_release(&d);
            continue;
        }
        if (rc != FX_ENOENT)
            log_printf("warn", "webhook: claim failed: %s", store_errmsg(w->st));
        if (cfg->audit_retention_ms > 0 && now - last_purge >= PURGE_EVERY_MS) {
            last_purge = now;
            if (store_access_purge(w->st, now - cfg->audit_retention_ms, PURGE_BATCH, NULL))
                log_printf("warn", "webhook: purge failed: %s", store_errmsg(w->st));
        }
        /* sleep until the next one is due (new ones are found within a second; deliveries
         * are queued by the store, in any process) */
        if (store_delivery_next(w->st, &next) == 0 && next - now < wait)
            wait = next - now < 20 ? 20 : (long)(next - now);
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += wait / 1000;
        dl.tv_nsec += (wait % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&w->lock);
        while (!atomic_load(&w->stopping))
            if (pthread_cond_timedwait(&w->wake, &w->lock, &dl) == ETIMEDOUT)
                break;
        pthread_mutex_unlock(&w->lock);
    }
    return NULL;
}

int webhook_start(const struct api_ctx *api, struct webhook **out, char *msg, size_t msg_len)
{
    struct webhook *w = calloc(1, sizeof(*w));
    pthread_condattr_t ca;
    int rc;
    *out = NULL;
    if (w == NULL)
        return FX_ENOMEM;
    w->api = api;
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->wake, &ca);
    pthread_condattr_destroy(&ca);
    rc = store_open(api->cfg->db, (int)api->cfg->busy_timeout_ms, &w->st, msg, msg_len);
    if (rc)
        goto fail;
    if (pthread_create(&w->thread, NULL, webhook_main, w) != 0) {
        rc = FX_ENOMEM;
        snprintf(msg, msg_len, "cannot start the webhook thread");
        goto fail;
    }
    w->started = true;
    *out = w;
    return 0;
fail:
    webhook_free(w);
    return rc;
}

void webhook_stop(struct webhook *w)
{
    if (w == NULL || w->joined)
        return;
    pthread_mutex_lock(&w->lock);
    atomic_store(&w->stopping, 1);
    pthread_cond_broadcast(&w->wake);
    pthread_mutex_unlock(&w->lock);
    if (w->started)
        pthread_join(w->thread, NULL);
    w->joined = true;
}

void webhook_free(struct webhook *w)
{
    if (w == NULL)
        return;
    webhook_stop(w);
    store_close(w->st);
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    free(w);
}
