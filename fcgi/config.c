/* config.c - the key = value config file (format in config.h). */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"
#include "../core/plan.h"
#include "jobid.h"

void config_defaults(struct fx_config *c)
{
    memset(c, 0, sizeof(*c));
    c->socket_mode = 0660;
    c->backlog = 1024;
    c->max_conns = 4096;
    c->idle_timeout_ms = 75 * 1000;
    c->request_timeout_ms = 30 * 1000;
    c->write_timeout_ms = 30 * 1000;
    c->threads = 4;
    snprintf(c->placement, sizeof(c->placement), "resident");
    c->max_body = 64 * 1024;
    c->queue_size = 10;
    c->retention_ms = 10 * 60 * 1000;
    c->max_attempts = 3;
    c->sync_timeout_ms = 10 * 60 * 1000;
    c->busy_timeout_ms = 5000;
    c->audit_retention_ms = 7L * 24 * 3600 * 1000;
    c->lease_ms = 60 * 1000;
    c->device_failures_fatal = 3;
    c->warmup_steps = 1;
    c->default_guidance = -1.0;
    c->max_steps = 100;
    c->webhook_attempts = 5;
    c->webhook_timeout_ms = 10 * 1000;
}

/* Where a message goes and which line it is about. */
struct ctx {
    const char *name;
    int line;
    const char *key;
    char *msg;
    size_t msg_len;
};

__attribute__((format(printf, 2, 3))) static int bad(struct ctx *x, const char *fmt, ...)
{
    if (x->msg && x->msg_len) {
        char reason[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(reason, sizeof(reason), fmt, ap);
        va_end(ap);
        if (x->key)
            snprintf(x->msg, x->msg_len, "%s:%d: key '%s': %s", x->name, x->line, x->key, reason);
        else
            snprintf(x->msg, x->msg_len, "%s:%d: %s", x->name, x->line, reason);
    }
    return FX_EFORMAT;
}

/* A decimal integer with an optional unit suffix from units[] (scale[] alike). */
static int parse_scaled(struct ctx *x, const char *v, const char *const *units,
                        const int64_t *scale, int64_t lo, int64_t hi, const char *what,
                        int64_t *out)
{
    char *end;
    long long n;
    int64_t mul = scale[0];
    if (!isdigit((unsigned char)v[0]))
        return bad(x, "'%s' is not %s", v, what);
    errno = 0;
    n = strtoll(v, &end, 10);
    if (errno == ERANGE)
        return bad(x, "'%s' is too large", v);
    if (*end) {
        bool found = false;
        for (int i = 1; units[i]; i++) {
            if (strcmp(end, units[i]) == 0) {
                mul = scale[i];
                found = true;
                break;
            }
        }
        if (!found)
            return bad(x, "'%s' is not %s", v, what);
    }
    if (n > hi / mul || n * mul < lo || n * mul > hi)
        return bad(x, "'%s' is out of range (%lld to %lld%s)", v, (long long)(lo / scale[0]),
                   (long long)(hi / scale[0]), units[0]);
    *out = n * mul;
    return 0;
}

static int parse_int(struct ctx *x, const char *v, long lo, long hi, long *out)
{
    static const char *const units[] = {"", NULL};
    static const int64_t scale[] = {1};
    int64_t n;
    char what[96];
    snprintf(what, sizeof(what), "an integer from %ld to %ld", lo, hi);
    int rc = parse_scaled(x, v, units, scale, lo, hi, what, &n);
    if (rc == 0)
        *out = (long)n;
    return rc;
}

static int parse_duration(struct ctx *x, const char *v, int64_t lo_ms, int64_t hi_ms, int64_t *out)
{
    static const char *const units[] = {"ms", "ms", "s", "m", "h", NULL};
    static const int64_t scale[] = {1, 1, 1000, 60000, 3600000};
    const char *p = v;
    while (isdigit((unsigned char)*p))
        p++;
    if (*p == '\0') /* no unit: seconds */ {
        static const char *const s_units[] = {"s", NULL};
        static const int64_t s_scale[] = {1000};
        return parse_scaled(x, v, s_units, s_scale, lo_ms, hi_ms,
                            "a duration (number with unit ms, s, m or h)", out);
    }
    return parse_scaled(x, v, units, scale, lo_ms, hi_ms,
                        "a duration (number with unit ms, s, m or h)", out);
}

static int parse_size(struct ctx *x, const char *v, int64_t lo, int64_t hi, int64_t *out)
{
    static const char *const units[] = {" bytes", "k", "K", "M", "G", NULL};
    static const int64_t scale[] = {1, 1024, 1024, 1024 * 1024, 1024 * 1024 * 1024};
    return parse_scaled(x, v, units, scale, lo, hi, "a size (bytes, or a number with k, M or G)",
                        out);
}

static int parse_path(struct ctx *x, const char *v, const char *base, char *dst, size_t n)
{
    int w;
    if (v[0] == '\0' || v[0] == '/' || v[0] == ':' || base == NULL || base[0] == '\0' ||
        (strchr(v, ':') && strchr(v, '/') == NULL))
        w = snprintf(dst, n, "%s", v);
    else
        w = snprintf(dst, n, "%s/%s", base, v);
    if (w < 0 || (size_t)w >= n)
        return bad(x, "path longer than %zu bytes", n - 1);
    return 0;
}

static int parse_text(struct ctx *x, const char *v, char *dst, size_t n, const char *allowed)
{
    if (strlen(v) >= n)
        return bad(x, "longer than %zu bytes", n - 1);
    for (const char *p = v; *p; p++)
        if (!isalnum((unsigned char)*p) && strchr(allowed, *p) == NULL)
            return bad(x, "'%s': character '%c' is not allowed", v, *p);
    snprintf(dst, n, "%s", v);
    return 0;
}

static int parse_device(struct ctx *x, const char *v, char *dst, size_t n)
{
    if (strcmp(v, "cpu") != 0 && strcmp(v, "cuda") != 0 &&
        !(strncmp(v, "cuda:", 5) == 0 && v[5] && strlen(v) < 12 &&
          strspn(v + 5, "0123456789") == strlen(v + 5)))
        return bad(x, "'%s' is not cpu, cuda or cuda:N", v);
    snprintf(dst, n, "%s", v);
    return 0;
}

static int parse_double(struct ctx *x, const char *v, double lo, double hi, double *out)
{
    char *end;
    double d;
    errno = 0;
    d = strtod(v, &end);
    if (v[0] == '\0' || *end || errno == ERANGE || !isfinite(d) || d < lo || d > hi)
        return bad(x, "'%s' is not a number from %g to %g", v, lo, hi);
    *out = d;
    return 0;
}

static int parse_bool(struct ctx *x, const char *v, int *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"}, *const no[] = {"no", "false",
                                                                                "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(v, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcmp(v, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return bad(x, "'%s' is not a boolean (yes/no, true/false, on/off, 1/0)", v);
}

/* A host name or IPv4 address, with an optional :PORT (n bytes of it). */
static bool host_port_valid(const char *h, size_t n)
{
    size_t k = 0;
    while (k < n && (isalnum((unsigned char)h[k]) || h[k] == '.' || h[k] == '-'))
        k++;
    if (k == 0 || h[0] == '-' || h[0] == '.')
        return false;
    if (k == n)
        return true;
    if (h[k] != ':' || k + 1 == n || n - k - 1 > 5)
        return false;
    for (size_t i = k + 1; i < n; i++)
        if (!isdigit((unsigned char)h[i]))
            return false;
    return atol(h + k + 1) >= 1 && atol(h + k + 1) <= 65535;
}

/* A comma-separated list (blanks around items ignored) where every item passes ok(); stored
 * with ", " between items. */
static int parse_list(struct ctx *x, const char *v, char *dst, size_t n, const char *what,
                      bool (*ok)(const char *item, size_t len))
{
    size_t at = 0;
    dst[0] = '\0';
    for (const char *p = v; *p;) {
        p += strspn(p, ", \t");
        size_t k = strcspn(p, ", \t");
        if (k == 0)
            break;
        if (!ok(p, k))
            return bad(x, "'%.*s' is not %s", (int)(k > 80 ? 80 : k), p, what);
        if (at + k + 3 > n)
            return bad(x, "longer than %zu bytes", n - 1);
        at += (size_t)snprintf(dst + at, n - at, "%s%.*s", at ? ", " : "", (int)k, p);
        p += k;
    }
    return 0;
}

/* "*" or scheme://host[:port] with scheme http or https and nothing after (a browser's
 * Origin header). */
static bool origin_valid(const char *o, size_t n)
{
    if (n == 1 && o[0] == '*')
        return true;
    if (n > 7 && strncmp(o, "http://", 7) == 0)
        return host_port_valid(o + 7, n - 7);
    if (n > 8 && strncmp(o, "https://", 8) == 0)
        return host_port_valid(o + 8, n - 8);
    return false;
}

static int parse_mode(struct ctx *x, const char *v, int *out)
{
    char *end;
    long m;
    if (v[0] < '0' || v[0] > '7')
        return bad(x, "'%s' is not an octal mode such as 0660", v);
    m = strtol(v, &end, 8);
    if (*end || m > 0777)
        return bad(x, "'%s' is not an octal mode such as 0660", v);
    *out = (int)m;
    return 0;
}

enum kind {
    K_SOCKET,
    K_PATH,
    K_PATH_OPT,
    K_INT,
    K_SIZE,
    K_DURATION,
    K_DEVICE,
    K_NAME,
    K_DOUBLE,
    K_MODE,
    K_LONG,
    K_IDPREFIX,
    K_PLACEMENT,
    K_BOOL,
    K_METRICS_AUTH,
    K_ORIGINS,
    K_HOSTS,
    K_SECRET
};

struct key {
    const char *name;
    enum kind kind;
    size_t off;
    long lo, hi; /* ints; durations in ms; sizes in bytes */
};

#define OFF(f) offsetof(struct fx_config, f)
static const struct key keys[] = {
    {"socket", K_SOCKET, OFF(socket), 0, 0},
    {"socket_mode", K_MODE, OFF(socket_mode), 0, 0},
    {"backlog", K_INT, OFF(backlog), 1, 65535},
    {"max_conns", K_INT, OFF(max_conns), 1, 1000000},
    {"idle_timeout", K_DURATION, OFF(idle_timeout_ms), 1000, 24L * 3600 * 1000},
    {"request_timeout", K_DURATION, OFF(request_timeout_ms), 100, 3600L * 1000},
    {"write_timeout", K_DURATION, OFF(write_timeout_ms), 100, 3600L * 1000},
    {"db", K_PATH, OFF(db), 0, 0},
    {"model", K_PATH, OFF(model), 0, 0},
    {"device", K_DEVICE, OFF(device), 0, 0},
    {"cpu_threads", K_INT, OFF(cpu_threads), 0, 1024},
    {"threads", K_INT, OFF(threads), 1, 256},
    {"max_body", K_SIZE, OFF(max_body), 256, 64L * 1024 * 1024},
    {"queue_size", K_LONG, OFF(queue_size), 1, 1000000},
    {"retention", K_DURATION, OFF(retention_ms), 1000, 366L * 24 * 3600 * 1000},
    {"max_attempts", K_INT, OFF(max_attempts), 1, 100},
    {"sync_timeout", K_DURATION, OFF(sync_timeout_ms), 1000, 24L * 3600 * 1000},
    {"busy_timeout", K_DURATION, OFF(busy_timeout_ms), 1, 600000},
    {"audit_retention", K_DURATION, OFF(audit_retention_ms), 0, 3660L * 24 * 3600 * 1000},
    {"lease", K_DURATION, OFF(lease_ms), 1000, 24L * 3600 * 1000},
    {"device_failures_fatal", K_INT, OFF(device_failures_fatal), 1, 1000},
    {"log", K_PATH_OPT, OFF(log), 0, 0},
    {"worker_name", K_NAME, OFF(worker_name), 0, 0},
    {"id_prefix", K_IDPREFIX, OFF(id_prefix), 0, 0},
    {"warmup_steps", K_INT, OFF(warmup_steps), 0, 100},
    {"default_steps", K_INT, OFF(default_steps), 1, 1000},
    {"default_width", K_INT, OFF(default_width), 16, 65536},
    {"default_height", K_INT, OFF(default_height), 16, 65536},
    {"default_guidance", K_DOUBLE, OFF(default_guidance), 0, 100},
    {"max_size", K_INT, OFF(max_size), 16, 65536},
    {"max_steps", K_INT, OFF(max_steps), 1, 1000},
    {"device_memory", K_SIZE, OFF(device_memory), 0, 1L << 50},
    {"placement", K_PLACEMENT, OFF(placement), 0, 0},
    {"auth", K_BOOL, OFF(auth), 0, 0},
    {"metrics_auth", K_METRICS_AUTH, OFF(metrics_auth), 0, 0},
    {"key_max_queued", K_LONG, OFF(key_max_queued), 0, 1000000},
    {"key_daily_images", K_LONG, OFF(key_daily_images), 0, 100000000},
    {"key_daily_budget", K_LONG, OFF(key_daily_budget), 0, 4000000000000000000L},
    {"cors_origins", K_ORIGINS, OFF(cors_origins), 0, 0},
    {"webhook_hosts", K_HOSTS, OFF(webhook_hosts), 0, 0},
    {"webhook_attempts", K_INT, OFF(webhook_attempts), 1, 100},
    {"webhook_timeout", K_DURATION, OFF(webhook_timeout_ms), 100, 600L * 1000},
    {"webhook_secret", K_SECRET, OFF(webhook_secret), 0, 0},
    {"lora_dir", K_PATH_OPT, OFF(lora_dir), 0, 0},
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

static int set_value(struct ctx *x, const struct key *k, const char *v, const char *base,
                     struct fx_config *c)
{
    char *f = (char *)c + k->off;
    long n;
    int64_t w;
    int rc;
    switch (k->kind) {
    case K_SOCKET:
        if (v[0] == '\0')
            return bad(x, "empty; leave the key out to use the socket on fd 0");
        return parse_path(x, v, base, c->socket, sizeof(c->socket));
    case K_PATH:
        if (v[0] == '\0')
            return bad(x, "empty path");
        return parse_path(x, v, base, f, CONFIG_PATH_MAX);
    case K_PATH_OPT:
        return parse_path(x, v, base, f, CONFIG_PATH_MAX);
    case K_INT:
        if ((rc = parse_int(x, v, k->lo, k->hi, &n)))
            return rc;
        *(int *)(void *)f = (int)n;
        return 0;
    case K_LONG:
        if ((rc = parse_int(x, v, k->lo, k->hi, &n)))
            return rc;
        *(long *)(void *)f = n;
        return 0;
    case K_SIZE:
        if ((rc = parse_size(x, v, k->lo, k->hi, &w)))
            return rc;
        *(size_t *)(void *)f = (size_t)w;
        return 0;
    case K_DURATION:
        if ((rc = parse_duration(x, v, k->lo, k->hi, &w)))
            return rc;
        *(int64_t *)(void *)f = w;
        return 0;
    case K_DEVICE:
        return parse_device(x, v, c->device, sizeof(c->device));
    case K_NAME:
        return parse_text(x, v, c->worker_name, sizeof(c->worker_name), "-_.:/@");
    case K_DOUBLE:
        return parse_double(x, v, (double)k->lo, (double)k->hi, (double *)(void *)f);
    case K_MODE:
        return parse_mode(x, v, (int *)(void *)f);
    case K_BOOL:
        return parse_bool(x, v, (int *)(void *)f);
    case K_METRICS_AUTH:
        if (strcmp(v, "open") == 0)
            c->metrics_auth = CONFIG_METRICS_OPEN;
        else if (strcmp(v, "admin") == 0)
            c->metrics_auth = CONFIG_METRICS_ADMIN;
        else
            return bad(x, "'%s' is not open or admin", v);
        return 0;
    case K_ORIGINS:
        return parse_list(x, v, c->cors_origins, sizeof(c->cors_origins),
                          "an origin such as https://app.example.com (or *)", origin_valid);
    case K_HOSTS:
        return parse_list(x, v, c->webhook_hosts, sizeof(c->webhook_hosts),
                          "a host name or address with an optional :PORT", host_port_valid);
    case K_SECRET:
        if (strlen(v) < 16 || strlen(v) >= sizeof(c->webhook_secret))
            return bad(x, "must be 16 to %zu characters", sizeof(c->webhook_secret) - 1);
        return parse_text(x, v, c->webhook_secret, sizeof(c->webhook_secret), "-_.+/=");
    case K_IDPREFIX:
        if (!jobid_prefix_valid(v))
            return bad(x, "'%s' is not 1 to %d characters from [a-z0-9]", v, JOBID_PREFIX_MAX);
        snprintf(c->id_prefix, sizeof(c->id_prefix), "%s", v);
        return 0;
    case K_PLACEMENT: {
        enum fx_placement pl;
        if (strcmp(v, "auto") != 0 && plan_placement_parse(v, &pl) != 0)
            return bad(x, "'%s' is not resident, encoders-offload, stream or auto", v);
        snprintf(c->placement, sizeof(c->placement), "%s", v);
        return 0;
    }
    }
    return FX_EINTERNAL;
}

static char *trim(char *s)
{
    char *e;
    while (*s == ' ' || *s == '\t')
        s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
        *--e = '\0';
    return s;
}

int config_parse(const char *text, size_t len, const char *name, const char *base_dir,
                 struct fx_config *c, char *msg, size_t msg_len)
{
    struct ctx x = {name ? name : "config", 0, NULL, msg, msg_len};
    bool seen[NKEYS] = {false};
    char line[2048];
    size_t pos = 0;
    int rc;

    config_defaults(c);
    while (pos < len) {
        size_t end = pos;
        char *key, *val, *eq, *p;
        const struct key *k = NULL;
        size_t ki;

        while (end < len && text[end] != '\n')
            end++;
        x.line++;
        x.key = NULL;
        if (memchr(text + pos, '\0', end - pos))
            return bad(&x, "NUL byte in the line");
        if (end - pos >= sizeof(line))
            return bad(&x, "line longer than %zu bytes", sizeof(line) - 1);
        memcpy(line, text + pos, end - pos);
        line[end - pos] = '\0';
        pos = end + 1;

        key = trim(line);
        if (key[0] == '\0' || key[0] == '#')
            continue;
        eq = strchr(key, '=');
        if (eq == NULL)
            return bad(&x, "expected 'key = value', got '%.60s'", key);
        *eq = '\0';
        val = eq + 1;
        /* an inline comment: '#' after a blank */
        for (p = val; *p; p++) {
            if (*p == '#' && (p == val || p[-1] == ' ' || p[-1] == '\t')) {
                *p = '\0';
                break;
            }
        }
        key = trim(key);
        val = trim(val);
        for (ki = 0; ki < NKEYS; ki++) {
            if (strcmp(keys[ki].name, key) == 0) {
                k = &keys[ki];
                break;
            }
        }
        if (k == NULL)
            return bad(&x, "unknown key '%.60s'", key);
        x.key = k->name;
        if (seen[ki])
            return bad(&x, "given twice");
        seen[ki] = true;
        if ((rc = set_value(&x, k, val, base_dir, c)))
            return rc;
    }
    x.key = NULL;
    if (c->db[0] == '\0' || c->model[0] == '\0') {
        if (msg && msg_len)
            snprintf(msg, msg_len, "%s: key '%s' is required", x.name,
                     c->db[0] == '\0' ? "db" : "model");
        return FX_EINVAL;
    }
    return 0;
}

int config_load(const char *path, struct fx_config *c, char *msg, size_t msg_len)
{
    FILE *f = NULL;
    char *text = NULL, *base = NULL, *slash;
    size_t len = 0, cap = 0;
    int rc;

    config_defaults(c);
    f = fopen(path, "rb");
    if (f == NULL) {
        rc = errno == ENOENT ? FX_ENOENT : FX_EIO;
        if (msg && msg_len)
            snprintf(msg, msg_len, "cannot open config '%s': %s", path, strerror(errno));
        goto out;
    }
    for (;;) {
        if (len + 4096 > cap) {
            char *t;
            if (cap >= 1024 * 1024) {
                rc = FX_ETOOBIG;
                if (msg && msg_len)
                    snprintf(msg, msg_len, "config '%s': larger than 1 MiB", path);
                goto out;
            }
            t = realloc(text, cap = cap ? 2 * cap : 8192);
            if (t == NULL) {
                rc = FX_ENOMEM;
                goto out;
            }
            text = t;
        }
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        rc = FX_EIO;
        if (msg && msg_len)
            snprintf(msg, msg_len, "cannot read config '%s'", path);
        goto out;
    }
    base = strdup(path);
    if (base == NULL) {
        rc = FX_ENOMEM;
        goto out;
    }
    slash = strrchr(base, '/');
    if (slash == base)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        strcpy(base, ".");
    rc = config_parse(text, len, path, base, c, msg, msg_len);
out:
    if (f)
        fclose(f);
    free(text);
    free(base);
    return rc;
}
