/*
 * fuzz_config.c - libFuzzer target for the config parser (config_parse, fcgi/config.c): the
 * input is the file's text.  Each input is parsed twice, with a short folder for relative
 * paths and with one close to CONFIG_PATH_MAX (the joined paths must be refused or fit).
 *
 * Checked beyond memory safety: the result is 0 or a documented code with a message, and
 * an accepted config has terminated strings and values inside their ranges.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/err.h"
#include "../../fcgi/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TERMINATED(a) (memchr((a), '\0', sizeof(a)) != NULL)

static void parse(const char *text, size_t size, const char *base)
{
    struct fx_config c;
    char msg[512] = "";
    int rc = config_parse(text, size, "fuzz.conf", base, &c, msg, sizeof(msg));

    if (rc != 0) {
        if ((rc != FX_EFORMAT && rc != FX_EINVAL) || msg[0] == '\0') {
            fprintf(stderr, "config_parse: code %d, message '%s'\n", rc, msg);
            abort();
        }
        return;
    }
    if (!TERMINATED(c.socket) || !TERMINATED(c.db) || !TERMINATED(c.model) ||
        !TERMINATED(c.device) || !TERMINATED(c.log) || !TERMINATED(c.worker_name) ||
        !TERMINATED(c.id_prefix) || c.db[0] == '\0' || c.model[0] == '\0') {
        fprintf(stderr, "config_parse: accepted a config with a bad string\n");
        abort();
    }
    /* the ranges of the key table in config.c */
    if (c.threads < 1 || c.threads > 256 || c.backlog < 1 || c.backlog > 65535 ||
        c.queue_size < 1 || c.queue_size > 1000000 || c.max_attempts < 1 || c.max_attempts > 100 ||
        c.max_body < 256 || c.max_body > 64L * 1024 * 1024 || c.retention_ms < 1000 ||
        c.sync_timeout_ms < 1000 || c.busy_timeout_ms < 1 || c.busy_timeout_ms > 600000 ||
        c.cpu_threads < 0 || c.cpu_threads > 1024 || c.warmup_steps < 0 || c.warmup_steps > 100) {
        fprintf(stderr,
                "config_parse: accepted out of range: threads %d backlog %d queue %ld "
                "attempts %d\n",
                c.threads, c.backlog, c.queue_size, c.max_attempts);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char long_base[CONFIG_PATH_MAX - 8];
    /* exactly size bytes: ASan sees any read past the text */
    char *text = malloc(size ? size : 1);

    if (!text)
        return 0;
    if (!long_base[0]) {
        memset(long_base, 'd', sizeof(long_base) - 1);
        long_base[0] = '/';
    }
    memcpy(text, data, size);
    parse(text, size, "/srv/fluxcgi");
    parse(text, size, long_base);
    parse(text, size, NULL);
    free(text);
    return 0;
}
