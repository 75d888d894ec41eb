/* The config file parser: values and units, comments, relative paths, and an error naming
 * the line and key for every kind of bad input.  Also the conf/fluxcgi.conf template. */
#include <stdlib.h>
#include <unistd.h>

#include "../../core/err.h"
#include "../../fcgi/config.h"
#include "unit.h"

static int parse(const char *text, struct fx_config *c, char *msg, size_t len)
{
    return config_parse(text, strlen(text), "t.conf", "/etc/fx", c, msg, len);
}

static void test_good(void)
{
    struct fx_config c;
    char msg[512] = "";
    const char *text = "# a comment\n"
                       "\n"
                       "  socket = run/fx.sock   # inline comment\n"
                       "db = /var/lib/fx/jobs.db\n"
                       "model=models/tiny\r\n"
                       "device = cuda:1\n"
                       "threads = 8\n"
                       "max_body = 1M\n"
                       "queue_size = 3\n"
                       "retention = 2s\n"
                       "sync_timeout = 1m\n"
                       "busy_timeout = 250ms\n"
                       "max_attempts = 5\n"
                       "socket_mode = 0600\n"
                       "log = \n"
                       "worker_name = gpu-1.host\n"
                       "default_steps = 4\n"
                       "default_guidance = 2.5\n"
                       "default_width = 256\n"
                       "default_height = 128\n"
                       "max_size = 512\n"
                       "warmup_steps = 0\n"
                       "cpu_threads = 2\n"
                       "lora_dir = loras\n";
    int rc = parse(text, &c, msg, sizeof(msg));
    CHECK_INT(rc, 0);
    if (rc)
        fprintf(stderr, "  %s\n", msg);
    CHECK_STR(c.socket, "/etc/fx/run/fx.sock");
    CHECK_STR(c.db, "/var/lib/fx/jobs.db");
    CHECK_STR(c.model, "/etc/fx/models/tiny");
    CHECK_STR(c.device, "cuda:1");
    CHECK_INT(c.threads, 8);
    CHECK_INT(c.max_body, 1024 * 1024);
    CHECK_INT(c.queue_size, 3);
    CHECK_INT(c.retention_ms, 2000);
    CHECK_INT(c.sync_timeout_ms, 60000);
    CHECK_INT(c.busy_timeout_ms, 250);
    CHECK_INT(c.max_attempts, 5);
    CHECK_INT(c.socket_mode, 0600);
    CHECK_STR(c.log, "");
    CHECK_STR(c.worker_name, "gpu-1.host");
    CHECK_INT(c.default_steps, 4);
    CHECK(c.default_guidance == 2.5);
    CHECK_INT(c.default_width, 256);
    CHECK_INT(c.default_height, 128);
    CHECK_INT(c.max_size, 512);
    CHECK_INT(c.warmup_steps, 0);
    CHECK_INT(c.cpu_threads, 2);
    CHECK_STR(c.placement, "resident");     /* the default */
    CHECK_STR(c.lora_dir, "/etc/fx/loras"); /* relative to the config's folder */
    for (int i = 0; i < 4; i++) {
        static const char *const names[] = {"resident", "encoders-offload", "stream", "auto"};
        char text[128];
        snprintf(text, sizeof(text), "db = a\nmodel = b\nplacement = %s\n", names[i]);
        CHECK_INT(parse(text, &c, msg, sizeof(msg)), 0);
        CHECK_STR(c.placement, names[i]);
    }

    /* defaults; TCP sockets are not paths; bare durations are seconds */
    rc = parse("db = a.db\nmodel = /m\nsocket = 127.0.0.1:9000\nretention = 30\n", &c, msg,
               sizeof(msg));
    CHECK_INT(rc, 0);
    CHECK_STR(c.socket, "127.0.0.1:9000");
    CHECK_STR(c.db, "/etc/fx/a.db");
    CHECK_INT(c.retention_ms, 30000);
    CHECK_INT(c.threads, 4);
    CHECK_INT(c.queue_size, 10);
    CHECK_INT(c.max_body, 64 * 1024);
    CHECK_INT(c.max_attempts, 3);
    CHECK_INT(c.socket_mode, 0660);
    CHECK(c.default_guidance < 0);
    CHECK_INT(c.default_steps, 0);
    CHECK_INT(c.audit_retention_ms, 7LL * 24 * 3600 * 1000);
    CHECK_INT(c.lease_ms, 60000);
    CHECK_INT(c.device_failures_fatal, 3);
    CHECK_STR(c.lora_dir, ""); /* LoRAs off */
    rc = parse("db = a.db\nmodel = /m\naudit_retention = 0\nlease = 90s\n"
               "device_failures_fatal = 1\n",
               &c, msg, sizeof(msg));
    CHECK_INT(rc, 0);
    CHECK_INT(c.audit_retention_ms, 0); /* 0: kept forever */
    CHECK_INT(c.lease_ms, 90000);
    CHECK_INT(c.device_failures_fatal, 1);
    rc = parse("db = a.db\nmodel = /m\nsocket = :9000\nretention = 1h\n", &c, msg, sizeof(msg));
    CHECK_INT(rc, 0);
    CHECK_STR(c.socket, ":9000");
    CHECK_INT(c.retention_ms, 3600 * 1000);
    CHECK_STR(c.socket, ":9000");
    /* no socket key: fd 0 */
    rc = parse("db = a.db\nmodel = /m\n", &c, msg, sizeof(msg));
    CHECK_INT(rc, 0);
    CHECK_STR(c.socket, "");
}

struct bad_case {
    const char *text;
    int rc;
    const char *want; /* a substring of the message */
};

static void test_bad(void)
{
    static const struct bad_case cases[] = {
        {"db = a\nmodel = b\nthreads = 0\n", FX_EFORMAT, "t.conf:3: key 'threads'"},
        {"db = a\nmodel = b\nthreads = 1000\n", FX_EFORMAT, "out of range"},
        {"db = a\nmodel = b\nthreads = four\n", FX_EFORMAT, "'four' is not an integer"},
        {"db = a\nmodel = b\nthreads = -1\n", FX_EFORMAT, "key 'threads'"},
        {"db = a\nmodel = b\nthreads = 4x\n", FX_EFORMAT, "key 'threads'"},
        {"db = a\nmodel = b\nthreads =\n", FX_EFORMAT, "key 'threads'"},
        {"db = a\nmodel = b\nthreads = 99999999999999999999999\n", FX_EFORMAT, "too large"},
        {"db = a\nmodel = b\nretention = 10 m\n", FX_EFORMAT, "key 'retention'"},
        {"db = a\nmodel = b\nretention = 10d\n", FX_EFORMAT, "not a duration"},
        {"db = a\nmodel = b\nretention = 0\n", FX_EFORMAT, "key 'retention'"},
        {"db = a\nmodel = b\nlease = 10ms\n", FX_EFORMAT, "key 'lease'"},
        {"db = a\nmodel = b\ndevice_failures_fatal = 0\n", FX_EFORMAT,
         "key 'device_failures_fatal'"},
        {"db = a\nmodel = b\naudit_retention = -1\n", FX_EFORMAT, "key 'audit_retention'"},
        {"db = a\nmodel = b\nmax_body = 1G\n", FX_EFORMAT, "key 'max_body'"},
        {"db = a\nmodel = b\nmax_body = 1000M\n", FX_EFORMAT, "out of range"},
        {"db = a\nmodel = b\ndevice = gpu\n", FX_EFORMAT, "'gpu' is not cpu, cuda or cuda:N"},
        {"db = a\nmodel = b\ndevice = cuda:\n", FX_EFORMAT, "key 'device'"},
        {"db = a\nmodel = b\nplacement = offload\n", FX_EFORMAT,
         "t.conf:3: key 'placement': 'offload' is not resident, encoders-offload, stream or auto"},
        {"db = a\nmodel = b\nplacement =\n", FX_EFORMAT, "key 'placement'"},
        {"db = a\nmodel = b\ndefault_guidance = nan\n", FX_EFORMAT, "key 'default_guidance'"},
        {"db = a\nmodel = b\ndefault_guidance = 1e999\n", FX_EFORMAT, "key 'default_guidance'"},
        {"db = a\nmodel = b\nsocket_mode = 0999\n", FX_EFORMAT, "octal"},
        {"db = a\nmodel = b\nworker_name = a b\n", FX_EFORMAT, "not allowed"},
        {"db = a\nmodel = b\nsocket =\n", FX_EFORMAT, "fd 0"},
        {"db = a\nmodel = b\ncolour = blue\n", FX_EFORMAT, "t.conf:3: unknown key 'colour'"},
        {"db = a\nmodel = b\ndb = c\n", FX_EFORMAT, "t.conf:3: key 'db': given twice"},
        {"db = a\nmodel = b\njust words\n", FX_EFORMAT, "t.conf:3: expected 'key = value'"},
        {"db = a\nmodel = b\n = 3\n", FX_EFORMAT, "unknown key ''"},
        {"db =\nmodel = b\n", FX_EFORMAT, "t.conf:1: key 'db': empty path"},
        {"model = b\n", FX_EINVAL, "key 'db' is required"},
        {"db = a\n", FX_EINVAL, "key 'model' is required"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx_config c;
        char msg[512] = "";
        int rc = parse(cases[i].text, &c, msg, sizeof(msg));
        CHECK_INT(rc, cases[i].rc);
        if (strstr(msg, cases[i].want) == NULL) {
            unit_failed++;
            fprintf(stderr, "FAIL case %zu: message \"%s\" lacks \"%s\"\n", i, msg, cases[i].want);
        } else {
            unit_passed++;
        }
    }
    /* a NUL byte and an overlong line */
    struct fx_config c;
    char msg[512] = "", big[5000];
    CHECK_INT(config_parse("db = a\0b\nmodel = b\n", 19, "t.conf", NULL, &c, msg, sizeof(msg)),
              FX_EFORMAT);
    CHECK(strstr(msg, "t.conf:1: NUL byte") != NULL);
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CHECK_INT(parse(big, &c, msg, sizeof(msg)), FX_EFORMAT);
    CHECK(strstr(msg, "longer than") != NULL);
    /* msg may be NULL */
    CHECK_INT(parse("nonsense\n", &c, NULL, 0), FX_EFORMAT);
}

static void test_files(void)
{
    struct fx_config c;
    char msg[512] = "", dir[] = "/tmp/fx-conf-XXXXXX", path[300], line[1024];
    FILE *f, *t;

    CHECK_INT(config_load("/nonexistent/fluxcgi.conf", &c, msg, sizeof(msg)), FX_ENOENT);
    CHECK(strstr(msg, "/nonexistent/fluxcgi.conf") != NULL);
    if (mkdtemp(dir) == NULL)
        return;
    /* the shipped template, filled as `make run` fills it */
    snprintf(path, sizeof(path), "%s/fluxcgi.conf", dir);
    t = fopen("conf/fluxcgi.conf", "r");
    f = fopen(path, "w");
    CHECK(t != NULL && f != NULL);
    while (t && f && fgets(line, sizeof(line), t)) {
        char *at;
        while ((at = strstr(line, "@SOCKET@")) || (at = strstr(line, "@DB@")) ||
               (at = strstr(line, "@MODEL@")) || (at = strstr(line, "@DEVICE@")) ||
               (at = strstr(line, "@LOG@"))) {
            char rest[1024];
            const char *val = at[1] == 'S'                   ? "fx.sock"
                              : at[1] == 'D' && at[2] == 'B' ? "j.db"
                              : at[1] == 'M'                 ? "model"
                              : at[1] == 'D'                 ? "cpu"
                                                             : "fx.log";
            snprintf(rest, sizeof(rest), "%s", strchr(at + 1, '@') + 1);
            snprintf(at, sizeof(line) - (size_t)(at - line), "%s%s", val, rest);
        }
        fputs(line, f);
    }
    if (t)
        fclose(t);
    if (f)
        fclose(f);
    int rc = config_load(path, &c, msg, sizeof(msg));
    CHECK_INT(rc, 0);
    if (rc)
        fprintf(stderr, "  %s\n", msg);
    CHECK(strstr(c.db, "/j.db") && strncmp(c.db, dir, strlen(dir)) == 0);
    CHECK_INT(c.queue_size, 10);
    CHECK_INT(c.retention_ms, 600000);
    /* an error names the file */
    f = fopen(path, "a");
    fputs("queue_size = 0\n", f);
    fclose(f);
    CHECK_INT(config_load(path, &c, msg, sizeof(msg)), FX_EFORMAT);
    CHECK(strstr(msg, path) != NULL && strstr(msg, "key 'queue_size'") != NULL);
    unlink(path);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    unit_parse_args(argc, argv);
    test_good();
    test_bad();
    test_files();
    return unit_done();
}
