/* keys.c - the `fluxcgi keys` subcommand (keys.h). */
#include "keys.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/err.h"
#include "../sql/store.h"
#include "auth.h"
#include "log.h"

static void usage(FILE *f)
{
    fputs("usage: fluxcgi keys add NAME --config FILE [--admin] [--expires DURATION]\n"
          "                      [--max-queued N] [--daily-images N] [--daily-budget N]\n"
          "                      [--webhook URL]\n"
          "       fluxcgi keys list --config FILE\n"
          "       fluxcgi keys revoke NAME|ID --config FILE\n"
          "  add     creates a key and prints it once (the store keeps only its SHA-256)\n"
          "          --admin         sees and cancels every job, reads /metrics\n"
          "          --expires D     refused after D (30d, 12h, 90m; default never)\n"
          "          --max-queued N  queued jobs at most (default the config's key_max_queued)\n"
          "          --daily-images N  images per UTC day (default key_daily_images)\n"
          "          --daily-budget N  steps x width x height per UTC day (key_daily_budget)\n"
          "                          (0 for any of the three: no limit for this key)\n"
          "          --webhook URL   the default webhook of the key's jobs\n"
          "  list    every key (revoked ones too), never the keys themselves\n"
          "  revoke  refuses the key from its next request on; its jobs stay readable by an\n"
          "          admin key\n",
          f);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* N with a unit s, m, h or d (days); 0 on a bad value. */
static int64_t parse_duration_ms(const char *v)
{
    char *end;
    long long n;
    int64_t unit;
    if (!isdigit((unsigned char)v[0]))
        return 0;
    errno = 0;
    n = strtoll(v, &end, 10);
    if (errno || n <= 0 || end[0] == '\0' || end[1] != '\0')
        return 0;
    unit = end[0] == 's' ? 1000 : end[0] == 'm' ? 60000 : end[0] == 'h' ? 3600000 : 0;
    unit = end[0] == 'd' ? 86400000 : unit;
    if (unit == 0 || n > INT64_MAX / unit / 2)
        return 0;
    return (int64_t)n * unit;
}

/* A non-negative count; -1 on a bad value. */
static long long parse_count(const char *v)
{
    char *end;
    long long n;
    if (!isdigit((unsigned char)v[0]))
        return -1;
    errno = 0;
    n = strtoll(v, &end, 10);
    return errno || *end || n > 4000000000000000000LL ? -1 : n;
}

static bool name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && strchr("-_.@", *s) == NULL)
            return false;
    return true;
}

static void utc(int64_t ms, char *out, size_t n)
{
    struct tm tm;
    time_t t = (time_t)(ms / 1000);
    if (ms <= 0) {
        snprintf(out, n, "-");
        return;
    }
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void limit_text(int64_t v, char *out, size_t n)
{
    if (v < 0)
        snprintf(out, n, "config");
    else if (v == 0)
        snprintf(out, n, "none");
    else
        snprintf(out, n, "%lld", (long long)v);
}

static int cmd_add(struct store *st, const struct fx_config *cfg, const char *name, bool admin,
                   int64_t expires_ms, long long max_queued, long long daily_images,
                   long long daily_budget, const char *webhook)
{
    struct store_key k;
    char key[AUTH_KEY_LEN + 1], msg[256];
    int rc;

    memset(&k, 0, sizeof(k));
    if (webhook && (rc = auth_webhook_check(webhook, cfg->webhook_hosts, msg, sizeof(msg)))) {
        fprintf(stderr, "fluxcgi keys: --webhook: %s\n", msg);
        return 2;
    }
    if (auth_key_new(key, &k) || auth_secret_new(k.webhook_secret)) {
        fprintf(stderr, "fluxcgi keys: no random bytes from the system\n");
        return 1;
    }
    snprintf(k.name, sizeof(k.name), "%s", name);
    k.admin = admin;
    k.created_ms = now_ms();
    k.expires_ms = expires_ms ? k.created_ms + expires_ms : 0;
    k.max_queued = (long)max_queued;
    k.daily_images = (long)daily_images;
    k.daily_budget = daily_budget;
    snprintf(k.webhook_url, sizeof(k.webhook_url), "%s", webhook ? webhook : "");
    rc = store_key_add(st, &k);
    if (rc == FX_EINVAL) {
        fprintf(stderr, "fluxcgi keys: a key named '%s' is in use (revoke it first)\n", name);
        return 1;
    }
    if (rc) {
        fprintf(stderr, "fluxcgi keys: cannot add the key: %s\n", store_errmsg(st));
        return 1;
    }
    printf("key:            %s\n"
           "webhook secret: %s\n"
           "id:             %s\n"
           "name:           %s%s\n"
           "Keep both now: they are shown only this once (the store keeps the key's SHA-256).\n"
           "Use it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.\n",
           key, k.webhook_secret, k.id, k.name, admin ? " (admin)" : "");
    if (!cfg->auth)
        printf("Note: auth is off in this config; keys are checked once it says 'auth = on'.\n");
    return 0;
}

static int cmd_list(struct store *st)
{
    struct store_key *v = NULL;
    size_t n = 0;
    int64_t now = now_ms();
    if (store_key_list(st, &v, &n)) {
        fprintf(stderr, "fluxcgi keys: cannot list the keys: %s\n", store_errmsg(st));
        return 1;
    }
    printf("%-16s  %-20s  %-5s  %-8s  %-20s  %-20s  %-20s  %s\n", "id", "name", "admin", "state",
           "created", "last used", "expires", "max queued / images a day / budget a day");
    for (size_t i = 0; i < n; i++) {
        char c[32], u[32], e[32], a[24], b[24], d[24];
        const char *state = v[i].revoked_ms                             ? "revoked"
                            : v[i].expires_ms && v[i].expires_ms <= now ? "expired"
                                                                        : "active";
        utc(v[i].created_ms, c, sizeof(c));
        utc(v[i].last_used_ms, u, sizeof(u));
        utc(v[i].expires_ms, e, sizeof(e));
        limit_text(v[i].max_queued, a, sizeof(a));
        limit_text(v[i].daily_images, b, sizeof(b));
        limit_text(v[i].daily_budget, d, sizeof(d));
        printf("%-16s  %-20s  %-5s  %-8s  %-20s  %-20s  %-20s  %s / %s / %s\n", v[i].id, v[i].name,
               v[i].admin ? "yes" : "no", state, c, u, e, a, b, d);
    }
    free(v);
    return 0;
}

static int cmd_revoke(struct store *st, const char *which)
{
    char id[STORE_KEY_ID_LEN + 1] = "";
    int rc = store_key_revoke(st, which, now_ms(), id);
    if (rc == FX_ENOENT) {
        fprintf(stderr, "fluxcgi keys: no key in use is named or has the id '%s'\n", which);
        return 1;
    }
    if (rc) {
        fprintf(stderr, "fluxcgi keys: cannot revoke: %s\n", store_errmsg(st));
        return 1;
    }
    printf("revoked key %s ('%s'): refused from its next request on\n", id, which);
    return 0;
}

int keys_main(int argc, char **argv)
{
    const char *config = NULL, *cmd = argc > 1 ? argv[1] : NULL, *arg = NULL, *webhook = NULL;
    long long max_queued = -1, daily_images = -1, daily_budget = -1;
    int64_t expires = 0;
    bool admin = false;
    struct fx_config cfg;
    struct store *st = NULL;
    char msg[2048] = "";
    int status;

    if (cmd && (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (cmd == NULL || (strcmp(cmd, "add") && strcmp(cmd, "list") && strcmp(cmd, "revoke"))) {
        fprintf(stderr, "fluxcgi keys: expected add, list or revoke\n");
        usage(stderr);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool add = strcmp(cmd, "add") == 0;
        if (strcmp(a, "--config") == 0 && v) {
            config = argv[++i];
        } else if (add && strcmp(a, "--admin") == 0) {
            admin = true;
        } else if (add && strcmp(a, "--expires") == 0 && v) {
            if ((expires = parse_duration_ms(argv[++i])) == 0) {
                fprintf(stderr, "fluxcgi keys: --expires '%s': not a duration (30d, 12h, 90m)\n",
                        v);
                return 2;
            }
        } else if (add && v &&
                   (strcmp(a, "--max-queued") == 0 || strcmp(a, "--daily-images") == 0 ||
                    strcmp(a, "--daily-budget") == 0)) {
            long long n = parse_count(argv[++i]);
            if (n < 0 || (strcmp(a, "--max-queued") == 0 && n > 1000000)) {
                fprintf(stderr, "fluxcgi keys: %s '%s': not a count\n", a, v);
                return 2;
            }
            if (strcmp(a, "--max-queued") == 0)
                max_queued = n;
            else if (strcmp(a, "--daily-images") == 0)
                daily_images = n;
            else
                daily_budget = n;
        } else if (add && strcmp(a, "--webhook") == 0 && v) {
            webhook = argv[++i];
        } else if (a[0] != '-' && arg == NULL && strcmp(cmd, "list") != 0) {
            arg = a;
        } else {
            fprintf(stderr, "fluxcgi keys %s: unexpected argument '%s'\n", cmd, a);
            usage(stderr);
            return 2;
        }
    }
    if (config == NULL || (strcmp(cmd, "list") != 0 && arg == NULL)) {
        fprintf(stderr, "fluxcgi keys %s: %s\n", cmd,
                config == NULL ? "--config FILE is required" : "which key? (a NAME or an ID)");
        usage(stderr);
        return 2;
    }
    if (strcmp(cmd, "add") == 0 && !name_valid(arg)) {
        fprintf(stderr, "fluxcgi keys add: name '%.80s': 1 to 64 of [A-Za-z0-9-_.@]\n", arg);
        return 2;
    }
    if (config_load(config, &cfg, msg, sizeof(msg))) {
        fprintf(stderr, "fluxcgi keys: %s\n", msg);
        return 2;
    }
    if (store_open(cfg.db, (int)cfg.busy_timeout_ms, &st, msg, sizeof(msg))) {
        fprintf(stderr, "fluxcgi keys: %s\n", msg);
        return 1;
    }
    if (strcmp(cmd, "add") == 0)
        status =
            cmd_add(st, &cfg, arg, admin, expires, max_queued, daily_images, daily_budget, webhook);
    else if (strcmp(cmd, "list") == 0)
        status = cmd_list(st);
    else
        status = cmd_revoke(st, arg);
    store_close(st);
    return status;
}

long keys_check_store(const struct fx_config *cfg, const char *config_path)
{
    struct store *st = NULL;
    char msg[512];
    long n = -1;
    if (store_open(cfg->db, (int)cfg->busy_timeout_ms, &st, msg, sizeof(msg)) == 0 &&
        store_key_active(st, now_ms(), &n) != 0)
        n = -1;
    store_close(st);
    if (n == 0 && cfg->auth)
        log_printf("warn",
                   "auth is on and the store has no API key: every request but /ping is "
                   "answered 401 until one is added (no restart needed): fluxcgi keys add NAME "
                   "--admin --config %s",
                   config_path);
    return n;
}
