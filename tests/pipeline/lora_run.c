/*
 * lora_run - one pipeline, several requests with different LoRA sets, in one process: what
 * the service's worker does between jobs, for tests/pipeline/test_lora.py (restoring the
 * weights gives back the exact bytes) and tests/bench/bench_lora.py (patch and restore
 * times).  Not installed.
 *
 *   lora_run --model DIR [--placement P] [--threads N] [--prompt TEXT] [--steps N]
 *            [--size WxH] [--seed N] STEP...
 *
 * Each STEP is OUT[@FILE:SCALE[@FILE:SCALE...]]: the request with that LoRA set (none
 * without '@'), its image written to OUT; OUT "-" applies the set without generating
 * (fx_pipeline_set_loras); "touch:FILE" sets FILE's mtime to now (a file rewritten between
 * two requests).  One JSON line per step on stdout:
 *   {"step":0,"ok":true,"skipped":false,"t_lora":..,"t_read":..,"t_restore":..,
 *    "t_patch":..,"layers":..,"saved_bytes":..}
 * or {"step":1,"ok":false,"code":"malformed","message":"lora '...': ..."}; a failed step
 * does not end the run.  Exit status 0 unless the arguments or the model are bad.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../../core/err.h"
#include "../../core/lora.h"
#include "../../core/pipeline.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int usage(void)
{
    fputs("usage: lora_run --model DIR [--placement P] [--threads N] [--prompt TEXT] "
          "[--steps N] [--size WxH] [--seed N] OUT[@FILE:SCALE...]...\n",
          stderr);
    return 2;
}

static int write_file(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return -1;
    int bad = fwrite(b, 1, n, f) != n;
    return fclose(f) != 0 || bad ? -1 : 0;
}

/* Runs one step; prints its JSON line.  spec is modified (split at '@'). */
static void step(struct fx_pipeline *p, struct fx_request req, int k, char *spec)
{
    struct fx_lora l[FX_LORA_MAX];
    struct fx_lora_timing t = {0};
    struct fx_result res = {0};
    char msg[1024] = "";
    size_t n = 0;
    int rc = 0;
    double t0 = now();
    char *out = spec, *at = strchr(spec, '@');
    json_object *o = json_object_new_object();
    if (strncmp(spec, "touch:", 6) == 0) {
        /* a later mtime than the file had, even on a file system with coarse timestamps */
        struct stat st;
        struct timespec ts[2] = {{0, UTIME_OMIT}, {0, 0}};
        rc = stat(spec + 6, &st);
        ts[1].tv_sec = rc == 0 ? st.st_mtim.tv_sec + 1 : 0;
        if (rc == 0)
            rc = utimensat(AT_FDCWD, spec + 6, ts, 0);
        printf("{\"step\":%d,\"ok\":%s}\n", k, rc == 0 ? "true" : "false");
        fflush(stdout);
        json_object_put(o);
        return;
    }
    if (at)
        *at++ = '\0';
    while (at && n < FX_LORA_MAX) {
        char *next = strchr(at, '@'), *colon;
        if (next)
            *next++ = '\0';
        colon = strrchr(at, ':');
        l[n].name = at;
        l[n].path = at;
        l[n].scale = 1.0;
        if (colon) {
            *colon = '\0';
            l[n].scale = strtod(colon + 1, NULL);
        }
        n++;
        at = next;
    }
    req.loras = l;
    req.n_loras = n;
    if (strcmp(out, "-") == 0) {
        rc = fx_pipeline_set_loras(p, l, n, &t, msg, sizeof(msg));
    } else {
        const char *field;
        struct fx_limits lim;
        fx_limits_default(&lim, fx_pipeline_manifest(p));
        rc = fx_request_validate(&req, &lim, &field, msg, sizeof(msg));
        if (rc == 0)
            rc = fx_pipeline_generate(p, &req, NULL, &res, msg, sizeof(msg));
        if (rc == 0 && write_file(out, res.png, res.png_len) != 0)
            rc = fx_fail(msg, sizeof(msg), FX_EIO, "cannot write '%s': %s", out, strerror(errno));
        /* the set is applied now (or was): its state, for the report */
        if (rc == 0)
            fx_pipeline_set_loras(p, l, n, &t, NULL, 0);
        t.skipped = res.lora_skipped;
    }
    json_object_object_add(o, "step", json_object_new_int(k));
    json_object_object_add(o, "ok", json_object_new_boolean(rc == 0));
    if (rc) {
        json_object_object_add(o, "code", json_object_new_string(fx_errcode(rc)));
        json_object_object_add(o, "message", json_object_new_string(msg));
    } else {
        json_object_object_add(o, "skipped", json_object_new_boolean(t.skipped));
        json_object_object_add(
            o, "t_lora",
            json_object_new_double(out[0] == '-' && !out[1] ? now() - t0 : res.t_lora));
        json_object_object_add(o, "t_read", json_object_new_double(t.t_read));
        json_object_object_add(o, "t_restore", json_object_new_double(t.t_restore));
        json_object_object_add(o, "t_patch", json_object_new_double(t.t_patch));
        json_object_object_add(o, "layers", json_object_new_int64(t.layers));
        json_object_object_add(o, "saved_bytes", json_object_new_int64(t.saved_bytes));
    }
    puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    fflush(stdout);
    json_object_put(o);
    fx_result_release(&res);
}

int main(int argc, char **argv)
{
    struct fx_pipeline_params pp = {0};
    struct fx_request req = {0};
    struct fx_pipeline *p = NULL;
    char msg[1024];
    int i = 1;
    pp.device = "cpu";
    req.prompt = "a tiny red fox in the snow, watercolor";
    req.width = req.height = 256;
    req.steps = 2;
    req.guidance = 3.5;
    req.seed = 7;
    req.has_seed = true;
    for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (strcmp(a, "--model") == 0)
            pp.model_dir = v;
        else if (strcmp(a, "--placement") == 0)
            pp.placement = v;
        else if (strcmp(a, "--threads") == 0)
            pp.cpu_threads = atoi(v);
        else if (strcmp(a, "--prompt") == 0)
            req.prompt = v;
        else if (strcmp(a, "--steps") == 0)
            req.steps = atoi(v);
        else if (strcmp(a, "--seed") == 0)
            req.seed = strtoull(v, NULL, 10);
        else if (strcmp(a, "--size") == 0 && sscanf(v, "%dx%d", &req.width, &req.height) == 2)
            continue;
        else
            return usage();
    }
    if (pp.model_dir == NULL || i >= argc)
        return usage();
    req.prompt_len = strlen(req.prompt);
    int rc = fx_pipeline_load(&pp, &p, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "lora_run: %s\n", msg);
        return 3;
    }
    for (int k = 0; i < argc; i++, k++)
        step(p, req, k, argv[i]);
    fx_pipeline_free(p);
    return 0;
}
