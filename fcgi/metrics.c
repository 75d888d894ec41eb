/* metrics.c - counters and histograms for GET /metrics. */
#include "metrics.h"

#include <stdatomic.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Upper bounds in seconds: a tiny CPU step takes milliseconds, a 1024^2 GPU job seconds. */
static const double bounds[METRICS_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                               1,     2.5,  5,     10,   30,  60,   300};

static const char *const state_names[6] = {"queued", "running",   "completed",
                                           "failed", "cancelled", "expired"};

void metrics_init(struct fx_metrics *m)
{
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->lock, NULL);
}

void metrics_release(struct fx_metrics *m)
{
    pthread_mutex_destroy(&m->lock);
}

static void observe(struct metrics_hist *h, double v)
{
    int i = 0;
    while (i < METRICS_BUCKETS && v > bounds[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->n++;
}

void metrics_observe_step(struct fx_metrics *m, double seconds)
{
    pthread_mutex_lock(&m->lock);
    observe(&m->step, seconds);
    pthread_mutex_unlock(&m->lock);
}

void metrics_observe_job(struct fx_metrics *m, int outcome, double seconds)
{
    pthread_mutex_lock(&m->lock);
    if (outcome == 0) {
        observe(&m->job, seconds);
        m->jobs_completed++;
    } else if (outcome == 1) {
        m->jobs_failed++;
    } else {
        m->jobs_cancelled++;
    }
    pthread_mutex_unlock(&m->lock);
}

void metrics_store_write(struct fx_metrics *m, bool ok)
{
    pthread_mutex_lock(&m->lock);
    if (!ok)
        m->store_write_failures++;
    m->store_degraded = !ok;
    pthread_mutex_unlock(&m->lock);
}

void metrics_count_http(struct fx_metrics *m, int status)
{
    if (status < 100 || status >= METRICS_STATUS_MAX)
        return;
    pthread_mutex_lock(&m->lock);
    m->http[status]++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_auth_failure(struct fx_metrics *m, enum metrics_auth_failure why)
{
    if (m && (unsigned)why < sizeof(m->auth_failures) / sizeof(m->auth_failures[0]))
        atomic_fetch_add(&m->auth_failures[why], 1);
}

void metrics_webhook(struct fx_metrics *m, enum metrics_webhook what)
{
    if (m && (unsigned)what < sizeof(m->webhooks) / sizeof(m->webhooks[0]))
        atomic_fetch_add(&m->webhooks[what], 1);
}

void metrics_lora(struct fx_metrics *m, enum metrics_lora what, double seconds)
{
    if (m == NULL || (unsigned)what >= sizeof(m->loras) / sizeof(m->loras[0]))
        return;
    atomic_fetch_add(&m->loras[what], 1);
    if (what == METRICS_LORA_APPLIED && seconds > 0)
        atomic_fetch_add(&m->lora_apply_us, (uint64_t)(seconds * 1e6));
}

static void hist(FILE *f, const char *name, const char *help, const struct metrics_hist *h)
{
    uint64_t cum = 0;
    fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < METRICS_BUCKETS; i++) {
        cum += h->counts[i];
        fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
    }
    cum += h->counts[METRICS_BUCKETS];
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    fprintf(f, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->n);
}

char *metrics_render(struct fx_metrics *m, const struct metrics_extra *x, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (f == NULL)
        return NULL;
    fprintf(f,
            "# HELP fluxcgi_ready 1 when the model is loaded and warmed up.\n"
            "# TYPE fluxcgi_ready gauge\nfluxcgi_ready %d\n",
            x->ready);
    if (x->placement && x->weights)
        fprintf(f,
                "# HELP fluxcgi_placement_info Where the weights live and their format; always 1.\n"
                "# TYPE fluxcgi_placement_info gauge\n"
                "fluxcgi_placement_info{placement=\"%s\",weights=\"%s\"} 1\n",
                x->placement, x->weights);
    fprintf(f,
            "# HELP fluxcgi_queue_depth Jobs waiting to run.\n"
            "# TYPE fluxcgi_queue_depth gauge\nfluxcgi_queue_depth %ld\n",
            x->by_state[0]);
    fprintf(f,
            "# HELP fluxcgi_queue_capacity Most jobs that may wait.\n"
            "# TYPE fluxcgi_queue_capacity gauge\nfluxcgi_queue_capacity %ld\n",
            x->capacity);
    fprintf(f, "# HELP fluxcgi_jobs Jobs in the store by state, read from the shared store: every "
               "process of one store reports the same numbers, so aggregate with max (or read one "
               "process), never sum; fluxcgi_worker_jobs_total is per process and sums.\n"
               "# TYPE fluxcgi_jobs gauge\n");
    for (int i = 0; i < 6; i++)
        fprintf(f, "fluxcgi_jobs{state=\"%s\"} %ld\n", state_names[i], x->by_state[i]);
    pthread_mutex_lock(&m->lock);
    fprintf(f,
            "# HELP fluxcgi_worker_jobs_total Jobs this process ended, by outcome.\n"
            "# TYPE fluxcgi_worker_jobs_total counter\n"
            "fluxcgi_worker_jobs_total{outcome=\"completed\"} %llu\n"
            "fluxcgi_worker_jobs_total{outcome=\"failed\"} %llu\n"
            "fluxcgi_worker_jobs_total{outcome=\"cancelled\"} %llu\n",
            (unsigned long long)m->jobs_completed, (unsigned long long)m->jobs_failed,
            (unsigned long long)m->jobs_cancelled);
    fprintf(f,
            "# HELP fluxcgi_store_write_failures_total Outcome writes the job store refused "
            "(disk full, lock held too long); each is retried.\n"
            "# TYPE fluxcgi_store_write_failures_total counter\n"
            "fluxcgi_store_write_failures_total %llu\n"
            "# HELP fluxcgi_store_degraded 1 while a finished job waits to be stored.\n"
            "# TYPE fluxcgi_store_degraded gauge\nfluxcgi_store_degraded %d\n",
            (unsigned long long)m->store_write_failures, m->store_degraded);
    fprintf(f,
            "# HELP fluxcgi_connections_open FastCGI connections open now (kept-alive ones "
            "included).\n"
            "# TYPE fluxcgi_connections_open gauge\nfluxcgi_connections_open %ld\n"
            "# HELP fluxcgi_connections_total FastCGI connections accepted, refused (max_conns "
            "with none idle, or a peer not in FCGI_WEB_SERVER_ADDRS) and closed by a timeout.\n"
            "# TYPE fluxcgi_connections_total counter\n"
            "fluxcgi_connections_total{event=\"accepted\"} %llu\n"
            "fluxcgi_connections_total{event=\"refused\"} %llu\n"
            "fluxcgi_connections_total{event=\"timed_out\"} %llu\n"
            "# HELP fluxcgi_requests_waiting POST /generate requests waiting for their image.\n"
            "# TYPE fluxcgi_requests_waiting gauge\nfluxcgi_requests_waiting %ld\n",
            atomic_load(&m->conns_open), (unsigned long long)atomic_load(&m->conns_accepted),
            (unsigned long long)atomic_load(&m->conns_refused),
            (unsigned long long)atomic_load(&m->conns_timed_out), atomic_load(&m->requests_parked));
    {
        static const char *const why[6] = {"missing", "malformed", "unknown",
                                           "revoked", "expired",   "forbidden"};
        static const char *const what[4] = {"delivered", "retried", "failed", "dropped"};
        fprintf(f, "# HELP fluxcgi_auth_failures_total Requests refused for their API key, by "
                   "reason.\n# TYPE fluxcgi_auth_failures_total counter\n");
        for (int i = 0; i < 6; i++)
            fprintf(f, "fluxcgi_auth_failures_total{reason=\"%s\"} %llu\n", why[i],
                    (unsigned long long)atomic_load(&m->auth_failures[i]));
        fprintf(f, "# HELP fluxcgi_webhook_attempts_total Webhook delivery attempts of this "
                   "process, by outcome.\n# TYPE fluxcgi_webhook_attempts_total counter\n");
        for (int i = 0; i < 4; i++)
            fprintf(f, "fluxcgi_webhook_attempts_total{outcome=\"%s\"} %llu\n", what[i],
                    (unsigned long long)atomic_load(&m->webhooks[i]));
        fprintf(f,
                "# HELP fluxcgi_lora_sets_total Jobs with LoRAs this process ran: their set "
                "patched in (applied) or already in place (kept).\n"
                "# TYPE fluxcgi_lora_sets_total counter\n"
                "fluxcgi_lora_sets_total{how=\"applied\"} %llu\n"
                "fluxcgi_lora_sets_total{how=\"kept\"} %llu\n"
                "# HELP fluxcgi_lora_apply_seconds_total Time spent applying jobs' LoRA sets "
                "(reading the files, restoring the previous set, patching).\n"
                "# TYPE fluxcgi_lora_apply_seconds_total counter\n"
                "fluxcgi_lora_apply_seconds_total %.6f\n"
                "# HELP fluxcgi_lora_refused_total Generation requests refused for a LoRA, by "
                "code.\n# TYPE fluxcgi_lora_refused_total counter\n"
                "fluxcgi_lora_refused_total{code=\"unknown_lora\"} %llu\n"
                "fluxcgi_lora_refused_total{code=\"bad_lora\"} %llu\n"
                "fluxcgi_lora_refused_total{code=\"loras_not_configured\"} %llu\n",
                (unsigned long long)atomic_load(&m->loras[METRICS_LORA_APPLIED]),
                (unsigned long long)atomic_load(&m->loras[METRICS_LORA_KEPT]),
                (double)atomic_load(&m->lora_apply_us) / 1e6,
                (unsigned long long)atomic_load(&m->loras[METRICS_LORA_UNKNOWN]),
                (unsigned long long)atomic_load(&m->loras[METRICS_LORA_BAD]),
                (unsigned long long)atomic_load(&m->loras[METRICS_LORA_OFF]));
    }
    hist(f, "fluxcgi_step_seconds", "Time of one denoising step.", &m->step);
    hist(f, "fluxcgi_job_seconds", "Run time of a completed job (claim to stored PNG).", &m->job);
    fprintf(f, "# HELP fluxcgi_http_responses_total HTTP answers by status.\n"
               "# TYPE fluxcgi_http_responses_total counter\n");
    for (int s = 100; s < METRICS_STATUS_MAX; s++)
        if (m->http[s])
            fprintf(f, "fluxcgi_http_responses_total{code=\"%d\"} %llu\n", s,
                    (unsigned long long)m->http[s]);
    pthread_mutex_unlock(&m->lock);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}
