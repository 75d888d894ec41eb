/*
 * fluxcgi - the FastCGI service: build/fluxcgi --config FILE
 *
 * One process per GPU.  It listens on the config's socket (a unix socket it binds itself,
 * or HOST:PORT), or on fd 0 when the config names none, which is how spawn-fcgi and
 * lighttpd's bin-path hand a socket over.  The front end (fcgi/server.h) multiplexes every
 * connection in one event loop and hands complete requests to handler threads, each with its
 * own SQLite connection; they parse, validate and answer from the store (fcgi/api.h) and
 * never touch the model.  The worker thread (fcgi/worker.h) owns the model.
 *
 * Signals: SIGTERM or SIGINT drain (stop accepting, put the running job back in the queue,
 * answer waiting POST /generate requests with 503, exit 0); SIGHUP reopens the log file;
 * SIGUSR1 and SIGUSR2 drain too but exit 1, so that a supervisor restarts the process (no
 * signal leaves it running without accepting).
 * Exit status: 0 after a drain; 1 when it cannot start or run (the model cannot be loaded,
 * the store cannot be opened, the address cannot be listened on, the device keeps failing)
 * or after SIGUSR1/SIGUSR2; 2 for a bad command line or config.
 */
#include <curl/curl.h>
#include <errno.h>
#include <libgen.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../core/err.h"
#include "../core/lora.h"
#include "../core/manifest.h"
#include "../core/plan.h"
#include "../core/version.h"
#include "../sql/store.h"
#include "api.h"
#include "config.h"
#include "keys.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "webhook.h"
#include "worker.h"

struct service {
    struct fx_config cfg;
    struct fx_manifest *man;
    struct fx_lora_map *lora_map; /* lora_dir set and the model has a lora_map.json */
    char lora_map_error[512];     /* why not (for the log and --check) */
    char lora_map_public[256];    /* the same for clients: no server path */
    struct fx_metrics metrics;
    struct api_ctx api;
    struct worker *worker;
    struct server *server;
    struct webhook *webhook;
    int listen_fd;
};

static atomic_int fatal_exit;

static void on_fatal(void)
{
    atomic_store(&fatal_exit, 1);
    kill(getpid(), SIGTERM);
}

/* A unix socket at path: a stale socket file (left by a crash) is replaced, anything else
 * at that path is an error. */
static int listen_unix(const char *path, int backlog, int mode, char *msg, size_t len)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat sb;
    int fd;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(msg, len, "cannot listen on '%s': the path is longer than %zu bytes", path,
                 sizeof(sa.sun_path) - 1);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (lstat(path, &sb) == 0) {
        if (!S_ISSOCK(sb.st_mode)) {
            snprintf(msg, len, "cannot listen on '%s': it exists and is not a socket", path);
            return -1;
        }
        /* a socket someone still answers on is another fluxcgi: do not steal it */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            close(fd);
            snprintf(msg, len, "cannot listen on '%s': another process is serving on it", path);
            return -1;
        }
        if (fd >= 0)
            close(fd);
        unlink(path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, backlog) != 0) {
        snprintf(msg, len, "cannot listen on '%s': %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (chmod(path, (mode_t)mode) != 0) {
        snprintf(msg, len, "cannot chmod '%s': %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* HOST:PORT or :PORT (all addresses). */
static int listen_tcp(const char *spec, int backlog, char *msg, size_t len)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int fd = -1, rc, err = 0, one = 1;
    size_t hl = colon ? (size_t)(colon - spec) : 0;
    if (colon == NULL || colon[1] == '\0' || hl >= sizeof(host)) {
        snprintf(msg, len, "cannot listen on '%s': not HOST:PORT or :PORT", spec);
        return -1;
    }
    memcpy(host, spec, hl);
    host[hl] = '\0';
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') { /* [v6]:port */
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    rc = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
    if (rc) {
        snprintf(msg, len, "cannot listen on '%s': %s", spec, gai_strerror(rc));
        return -1;
    }
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, backlog) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(msg, len, "cannot listen on '%s': %s", spec, strerror(err));
    return fd;
}

static int open_listener(struct service *svc, char *msg, size_t len)
{
    const char *s = svc->cfg.socket;
    if (s[0] == '\0') {
        int on = 0;
        socklen_t ol = sizeof(on);
        /* handed over by spawn-fcgi / lighttpd */
        if (getsockopt(0, SOL_SOCKET, SO_ACCEPTCONN, &on, &ol) != 0 || !on) {
            snprintf(msg, len,
                     "the config names no socket and fd 0 is not a listening socket: set "
                     "`socket = PATH` (or HOST:PORT), or start fluxcgi under spawn-fcgi or "
                     "lighttpd");
            return FX_EINVAL;
        }
        svc->listen_fd = 0;
        return 0;
    }
    svc->listen_fd = strchr(s, '/')
                         ? listen_unix(s, svc->cfg.backlog, svc->cfg.socket_mode, msg, len)
                         : listen_tcp(s, svc->cfg.backlog, msg, len);
    return svc->listen_fd < 0 ? FX_EIO : 0;
}

/* --check: the folders the service will write to must exist and be writable. */
static int check_dir_of(const char *what, const char *path, char *msg, size_t len)
{
    char copy[CONFIG_PATH_MAX];
    struct stat sb;
    const char *dir;
    snprintf(copy, sizeof(copy), "%s", path);
    dir = dirname(copy);
    if (stat(dir, &sb) != 0) {
        snprintf(msg, len, "%s '%s': the folder '%s' does not exist", what, path, dir);
        return FX_ENOENT;
    }
    if (!S_ISDIR(sb.st_mode)) {
        snprintf(msg, len, "%s '%s': '%s' is not a folder", what, path, dir);
        return FX_ENOENT;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        snprintf(msg, len, "%s '%s': the folder '%s' is not writable by this user", what, path,
                 dir);
        return FX_EIO;
    }
    return 0;
}

/*
 * lora_dir is set: it must be a folder (else the config is wrong: non-zero, msg says why), and
 * the model's lora map is loaded once for every request thread.  A model without one (exported
 * before LoRA support) still serves, without LoRAs: lora_map_error says why, requests with
 * loras get 422 loras_not_configured with that message.
 */
static int load_loras(struct service *svc, char *msg, size_t len)
{
    struct stat sb;
    int rc;
    if (stat(svc->cfg.lora_dir, &sb) != 0) {
        snprintf(msg, len, "key 'lora_dir': '%s': %s", svc->cfg.lora_dir, strerror(errno));
        return FX_EINVAL;
    }
    if (!S_ISDIR(sb.st_mode)) {
        snprintf(msg, len, "key 'lora_dir': '%s' is not a folder", svc->cfg.lora_dir);
        return FX_EINVAL;
    }
    rc = fx_lora_map_load(svc->cfg.model, &svc->lora_map, svc->lora_map_error,
                          sizeof(svc->lora_map_error));
    if (rc == FX_ENOMEM) {
        snprintf(msg, len, "out of memory loading the lora map");
        return rc;
    }
    if (rc) {
        svc->lora_map = NULL;
        if (svc->lora_map_error[0] == '\0')
            snprintf(svc->lora_map_error, sizeof(svc->lora_map_error), "%s", fx_strerror(rc));
        /* the reader's message names the model dir; a client hears of the model's name */
        snprintf(svc->lora_map_public, sizeof(svc->lora_map_public),
                 rc == FX_ENOTSUP ? "model '%s' was exported without lora_map.json, so no LoRA "
                                    "can be applied; the operator has to re-export it"
                                  : "model '%s' has a lora_map.json this service cannot read, so "
                                    "no LoRA can be applied (its log says why)",
                 svc->man->name);
    }
    return 0;
}

/* Raises the open-file limit toward what max_conns needs; lowers max_conns if it cannot. */
static void fit_open_files(struct fx_config *cfg)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)cfg->max_conns + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < need) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need) {
        int fit = rl.rlim_cur > 128 ? (int)(rl.rlim_cur - 64) : 64;
        log_printf("warn", "max_conns %d lowered to %d: the open-file limit is %llu",
                   cfg->max_conns, fit, (unsigned long long)rl.rlim_cur);
        cfg->max_conns = fit;
    }
}

static void usage(FILE *f)
{
    fputs("usage: fluxcgi --config FILE [--check]\n"
          "       fluxcgi keys add|list|revoke ... --config FILE   (fluxcgi keys --help)\n"
          "       fluxcgi --help | --version\n"
          "  --config FILE  the service's config (conf/fluxcgi.conf is the commented example)\n"
          "  --check        check the config, the model manifest and the folders of the db,\n"
          "                 the socket and the log, then exit (0: ok)\n"
          "exit status: 0 after a drain (SIGTERM/SIGINT); 1 cannot start or run (model, store,\n"
          "address, device), or after SIGUSR1/SIGUSR2; 2 bad command line or config\n",
          f);
}

int main(int argc, char **argv)
{
    static struct service svc;
    const char *config = NULL;
    bool check = false;
    int status = 1, rc, sig = 0;
    sigset_t sigs;
    char msg[2048] = "";

    if (argc > 1 && strcmp(argv[1], "keys") == 0) /* API keys in the store (keys.h) */
        return keys_main(argc - 1, argv + 1);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config = argv[++i];
        } else if (strcmp(argv[i], "--check") == 0) {
            check = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            puts("fluxcgi " FX_VERSION);
            return 0;
        } else {
            if (strcmp(argv[i], "--config") == 0)
                fprintf(stderr, "fluxcgi: --config needs a FILE\n");
            else
                fprintf(stderr, "fluxcgi: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (config == NULL) {
        fprintf(stderr, "fluxcgi: --config FILE is required\n");
        usage(stderr);
        return 2;
    }
    rc = config_load(config, &svc.cfg, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxcgi: %s\n", msg[0] ? msg : fx_strerror(rc));
        return 2;
    }
    rc = manifest_load(svc.cfg.model, &svc.man, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxcgi: model '%s': %s\n", svc.cfg.model, msg[0] ? msg : fx_strerror(rc));
        return 2;
    }
    rc = api_ctx_limits(&svc.api, svc.man, &svc.cfg, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxcgi: %s: %s\n", config, msg);
        manifest_free(svc.man);
        return rc == FX_EDEVICE ? 1 : 2; /* a model too large for the device: cannot start */
    }
    if (svc.cfg.lora_dir[0] && load_loras(&svc, msg, sizeof(msg)) != 0) {
        fprintf(stderr, "fluxcgi: %s: %s\n", config, msg);
        manifest_free(svc.man);
        return 2;
    }
    if (check) {
        const char *paths[3][2] = {{"db", svc.cfg.db},
                                   {"socket", strchr(svc.cfg.socket, '/') ? svc.cfg.socket : ""},
                                   {"log", svc.cfg.log}};
        for (int i = 0; i < 3; i++) {
            if (paths[i][1][0] && check_dir_of(paths[i][0], paths[i][1], msg, sizeof(msg))) {
                fprintf(stderr, "fluxcgi: %s: %s\n", config, msg);
                manifest_free(svc.man);
                return 2;
            }
        }
        printf("fluxcgi: %s: ok (model '%s', defaults %dx%d, %d steps)\n", config, svc.man->name,
               svc.api.defaults.width, svc.api.defaults.height, svc.api.defaults.steps);
        {
            /* the memory plan at the largest size requests may ask for (core/plan.h) */
            struct fx_plan pl;
            int side = svc.api.limits.max_size;
            const char *dev = svc.cfg.device[0] ? svc.cfg.device : NULL;
            enum fx_placement place = FX_PLACE_RESIDENT;
            bool is_auto = strcmp(svc.cfg.placement, "auto") == 0;
            int prc = plan_resolve_placement(svc.man, svc.cfg.placement, dev,
                                             (int64_t)svc.cfg.device_memory, svc.api.defaults.width,
                                             svc.api.defaults.height, &place, msg, sizeof(msg));
            if (prc == 0)
                printf("placement: %s%s, weights %s\n", plan_placement_name(place),
                       is_auto ? " (auto)" : "", manifest_weights_name(svc.man->weights));
            if (prc == 0 &&
                plan_compute(svc.man, place, side, side, dev, &pl, msg, sizeof(msg)) == 0)
                plan_print_text(stdout, &pl, (int64_t)svc.cfg.device_memory);
            else
                printf("memory plan: %s\n", msg);
        }
        if (svc.cfg.auth)
            printf("fluxcgi: auth is on: every request but /ping needs an API key (fluxcgi keys "
                   "add NAME --admin --config %s)\n",
                   config);
        if (svc.cfg.lora_dir[0])
            printf("loras: %s%s\n", svc.lora_map ? "on, files in " : "off: ",
                   svc.lora_map ? svc.cfg.lora_dir : svc.lora_map_error);
        fx_lora_map_free(svc.lora_map);
        manifest_free(svc.man);
        return 0;
    }
    if (log_open(svc.cfg.log))
        fprintf(stderr, "fluxcgi: cannot open log '%s'; logging to stderr\n", svc.cfg.log);

    /* Signals go to the main thread only (sigwait below); the others inherit the mask. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    sigaddset(&sigs, SIGUSR1);
    sigaddset(&sigs, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    metrics_init(&svc.metrics);
    svc.listen_fd = -1;
    fit_open_files(&svc.cfg);
    if (open_listener(&svc, msg, sizeof(msg))) {
        log_printf("error", "%s", msg);
        goto out;
    }
    {
        struct fx_request warm = svc.api.defaults;
        warm.prompt = "a warm-up image";
        warm.prompt_len = strlen(warm.prompt);
        warm.seed = 0;
        warm.has_seed = true;
        rc = worker_start(&svc.cfg, &svc.metrics, &warm, on_fatal, &svc.worker, msg, sizeof(msg));
    }
    if (rc) {
        log_printf("error", "%s", msg);
        goto out;
    }
    svc.api.cfg = &svc.cfg;
    svc.api.model_name = svc.man->name;
    svc.api.worker = svc.worker;
    svc.api.readiness = worker_readiness(svc.worker);
    svc.api.metrics = &svc.metrics;
    svc.api.lora_map = svc.lora_map;
    svc.api.lora_map_error = svc.cfg.lora_dir[0] ? svc.lora_map_public : NULL;
    if (svc.cfg.lora_dir[0] && svc.lora_map == NULL)
        log_printf("warn", "LoRAs are off: %s", svc.lora_map_error);
    /* webhooks go out from their own thread, never from a request's */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if ((rc = webhook_start(&svc.api, &svc.webhook, msg, sizeof(msg)))) {
        log_printf("error", "%s", msg);
        goto out;
    }
    keys_check_store(&svc.cfg, config);
    {
        struct server_params sp = {
            .listen_fd = svc.listen_fd,
            .handlers = svc.cfg.threads,
            .max_conns = svc.cfg.max_conns,
            .idle_timeout_ms = svc.cfg.idle_timeout_ms,
            .request_timeout_ms = svc.cfg.request_timeout_ms,
            .write_timeout_ms = svc.cfg.write_timeout_ms,
            .max_body = svc.cfg.max_body,
            .max_params = 128 * 1024,
            .sync_timeout_ms = svc.cfg.sync_timeout_ms,
            .db = svc.cfg.db,
            .busy_ms = (int)svc.cfg.busy_timeout_ms,
            .allowed_peers = getenv("FCGI_WEB_SERVER_ADDRS"),
            .on_fatal = on_fatal,
        };
        rc = server_start(&sp, &svc.api, &svc.server, msg, sizeof(msg));
    }
    if (rc) {
        log_printf("error", "%s", msg);
        goto out;
    }
    log_printf("info",
               "fluxcgi %s: listening on %s, %d threads, %d connections at most, db '%s', "
               "model '%s'",
               FX_VERSION, svc.cfg.socket[0] ? svc.cfg.socket : "fd 0", svc.cfg.threads,
               svc.cfg.max_conns, svc.cfg.db, svc.cfg.model);

    for (;;) {
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            if (log_reopen())
                log_printf("warn", "cannot reopen the log '%s'", svc.cfg.log);
            else
                log_printf("info", "log reopened");
            continue;
        }
        break;
    }
    if (sig == SIGUSR1 || sig == SIGUSR2) {
        log_printf("warn", "signal %d: draining, then exit status 1 (to be restarted)", sig);
        status = 1;
    } else {
        log_printf("info", "signal %d: draining", sig);
        status = atomic_load(&fatal_exit) ? 1 : 0;
    }
out:
    worker_stop(svc.worker);   /* re-queues the running job, wakes POST /generate waiters */
    server_stop(svc.server);   /* stops accepting, answers what is waiting, closes */
    webhook_stop(svc.webhook); /* pending deliveries stay in the store for the next start */
    if (svc.listen_fd > 0) {
        close(svc.listen_fd);
        if (svc.cfg.socket[0] && strchr(svc.cfg.socket, '/'))
            unlink(svc.cfg.socket);
    }
    server_free(svc.server);
    webhook_free(svc.webhook);
    curl_global_cleanup();
    worker_free(svc.worker);
    log_printf("info", "stopped");
    metrics_release(&svc.metrics);
    fx_lora_map_free(svc.lora_map);
    manifest_free(svc.man);
    log_close();
    return status;
}
