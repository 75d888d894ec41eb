/*
 * fluxgen generate: one image from a prompt, through the C pipeline (core/pipeline.h).
 *
 *   fluxgen [generate] --model DIR --prompt TEXT [--steps N] [--guidance G] [--width W]
 *           [--height H] [--seed N] [--count N] [--device cpu|cuda|cuda:N] [--threads N]
 *           [--json] [--dump-latents DIR] [--quiet] -o OUT.png
 *
 * Defaults come from the model's manifest (28 steps, guidance 3.5, 1024 x 1024) and the
 * device it was exported for.  --count N makes N images in one process (the modules load
 * once), with seeds seed, seed + 1, ... (or N random seeds); OUT then holds one "%d", which
 * becomes the image's index.  Exit status: 0, 2 bad arguments, 3 bad model dir, 4 runtime
 * failure, 130 interrupted (Ctrl-C stops between steps).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../core/err.h"
#include "../core/manifest.h"
#include "../core/pipeline.h"
#include "cli.h"

static atomic_int interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    atomic_store(&interrupted, 1);
}

static void usage(FILE *f)
{
    fputs("usage: fluxgen [generate] --model DIR --prompt TEXT [--steps N] [--guidance G]\n"
          "               [--width W] [--height H] [--seed N] [--count N]\n"
          "               [--device cpu|cuda|cuda:N] [--threads N] [--json]\n"
          "               [--dump-latents DIR] [--quiet] -o OUT.png ('%d' in OUT with --count)\n",
          f);
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno == ERANGE || v < lo || v > hi) {
        fprintf(stderr, "fluxgen: %s: '%s' is not an integer from %ld to %ld\n", opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct bar {
    bool on;
    double t0;
};

static void progress(void *ud, int step, int steps)
{
    struct bar *b = ud;
    if (!b->on)
        return;
    int width = 30, fill = steps ? step * width / steps : width;
    fprintf(stderr, "\r  step %3d/%-3d [%.*s%*s] %6.1fs", step, steps, fill,
            "##############################", width - fill, "", seconds() - b->t0);
    if (step == steps)
        fputc('\n', stderr);
    fflush(stderr);
}

static int write_file(const char *path, const uint8_t *data, size_t len)
{
    char tmp[4096];
    FILE *f;
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= sizeof(tmp))
        return ENAMETOOLONG;
    f = fopen(tmp, "wb");
    if (f == NULL)
        return errno;
    if (fwrite(data, 1, len, f) != len || fflush(f) != 0) {
        int e = errno ? errno : EIO;
        fclose(f);
        unlink(tmp);
        return e;
    }
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return e;
    }
    return 0;
}

int cmd_generate(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *out_path = NULL, *device = NULL, *dump = NULL;
    const char *v_steps = NULL, *v_guid = NULL, *v_w = NULL, *v_h = NULL, *v_seed = NULL;
    const char *v_threads = NULL, *v_count = NULL;
    bool json = false, quiet = false;
    struct fx_manifest *man = NULL;
    struct fx_pipeline *pipe = NULL;
    struct fx_result res = {0};
    struct fx_request req = {0};
    struct fx_limits lim;
    char msg[1024] = "";
    const char *field;
    long lv, threads = 0, count = 1;
    int rc, status = EXIT_RUNTIME;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int m;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--json") == 0) {
            json = true;
            continue;
        }
        if (strcmp(a, "--quiet") == 0) {
            quiet = true;
            continue;
        }
        if ((m = cli_opt_value(argc, argv, &i, "--model", &model)) ||
            (m = cli_opt_value(argc, argv, &i, "--prompt", &prompt)) ||
            (m = cli_opt_value(argc, argv, &i, "--steps", &v_steps)) ||
            (m = cli_opt_value(argc, argv, &i, "--guidance", &v_guid)) ||
            (m = cli_opt_value(argc, argv, &i, "--width", &v_w)) ||
            (m = cli_opt_value(argc, argv, &i, "--height", &v_h)) ||
            (m = cli_opt_value(argc, argv, &i, "--seed", &v_seed)) ||
            (m = cli_opt_value(argc, argv, &i, "--device", &device)) ||
            (m = cli_opt_value(argc, argv, &i, "--threads", &v_threads)) ||
            (m = cli_opt_value(argc, argv, &i, "--count", &v_count)) ||
            (m = cli_opt_value(argc, argv, &i, "--dump-latents", &dump)) ||
            (m = cli_opt_value(argc, argv, &i, "-o", &out_path)) ||
            (m = cli_opt_value(argc, argv, &i, "--output", &out_path))) {
            if (m < 0) {
                fprintf(stderr, "fluxgen: %s needs a value\n", a);
                return EXIT_USAGE;
            }
            continue;
        }
        fprintf(stderr, "fluxgen: unknown option '%s'\n", a);
        usage(stderr);
        return EXIT_USAGE;
    }
    if (model == NULL || prompt == NULL || out_path == NULL) {
        fprintf(stderr, "fluxgen: --model, --prompt and -o are required\n");
        usage(stderr);
        return EXIT_USAGE;
    }
    if (device && strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0 &&
        !(strncmp(device, "cuda:", 5) == 0 && device[5] &&
          strspn(device + 5, "0123456789") == strlen(device + 5))) {
        fprintf(stderr, "fluxgen: --device: '%s' is not cpu, cuda or cuda:N\n", device);
        return EXIT_USAGE;
    }
    if (v_threads && parse_long("--threads", v_threads, 0, 1024, &threads))
        return EXIT_USAGE;
    if (v_count && parse_long("--count", v_count, 1, 100000, &count))
        return EXIT_USAGE;
    if (count > 1) {
        const char *pct = strchr(out_path, '%');
        if (pct == NULL || pct[1] != 'd' || strchr(pct + 2, '%') != NULL) {
            fprintf(stderr, "fluxgen: with --count, -o needs exactly one '%%d' (the index)\n");
            return EXIT_USAGE;
        }
    } else if (strchr(out_path, '%') != NULL) {
        fprintf(stderr, "fluxgen: '%%' in -o is only for --count\n");
        return EXIT_USAGE;
    }

    /* The manifest first: its defaults and limits decide whether the request is valid
     * before the modules are loaded. */
    rc = manifest_load(model, &man, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxgen: model '%s': %s\n", model, msg[0] ? msg : fx_strerror(rc));
        return EXIT_MODEL;
    }
    req.prompt = prompt;
    req.prompt_len = strlen(prompt);
    req.steps = man->default_steps;
    req.guidance = man->default_guidance;
    req.width = man->default_width;
    req.height = man->default_height;
    if ((v_steps && parse_long("--steps", v_steps, -1000000000L, 1000000000L, &lv)) ||
        (v_steps && ((req.steps = (int)lv), 0)) ||
        (v_w && parse_long("--width", v_w, -1000000000L, 1000000000L, &lv)) ||
        (v_w && ((req.width = (int)lv), 0)) ||
        (v_h && parse_long("--height", v_h, -1000000000L, 1000000000L, &lv)) ||
        (v_h && ((req.height = (int)lv), 0))) {
        status = EXIT_USAGE;
        goto out;
    }
    if (v_guid) {
        char *end;
        req.guidance = strtod(v_guid, &end);
        if (*v_guid == '\0' || *end != '\0') {
            fprintf(stderr, "fluxgen: --guidance: '%s' is not a number\n", v_guid);
            status = EXIT_USAGE;
            goto out;
        }
    }
    if (v_seed) {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v_seed, &end, 10);
        if (*v_seed < '0' || *v_seed > '9' || *end != '\0' || errno == ERANGE) {
            fprintf(stderr, "fluxgen: --seed: '%s' is not an integer from 0 to %llu\n", v_seed,
                    (unsigned long long)FX_SEED_MAX);
            status = EXIT_USAGE;
            goto out;
        }
        req.seed = s;
        req.has_seed = true;
        if (s <= FX_SEED_MAX && (unsigned long long)(count - 1) > FX_SEED_MAX - s) {
            fprintf(stderr, "fluxgen: --seed + --count - 1 exceeds %llu\n",
                    (unsigned long long)FX_SEED_MAX);
            status = EXIT_USAGE;
            goto out;
        }
    }
    fx_limits_default(&lim, man);
    rc = fx_request_validate(&req, &lim, &field, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxgen: %s\n", msg);
        status = EXIT_USAGE;
        goto out;
    }

    double t_load = seconds();
    struct fx_pipeline_params pp = {model, device ? device : man->device, (int)threads};
    rc = fx_pipeline_load(&pp, &pipe, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxgen: model '%s': %s\n", model, msg[0] ? msg : fx_strerror(rc));
        status = EXIT_MODEL;
        goto out;
    }
    t_load = seconds() - t_load;

    signal(SIGINT, on_sigint);
    for (long n = 0; n < count; n++) {
        char path[4096];
        struct bar bar = {!quiet && isatty(STDERR_FILENO), seconds()};
        struct fx_hooks hooks = {progress, &bar, &interrupted, dump};
        struct fx_request one = req;
        if (req.has_seed)
            one.seed = req.seed + (uint64_t)n;
        rc = fx_pipeline_generate(pipe, &one, &hooks, &res, msg, sizeof(msg));
        if (rc == FX_ECANCELED) {
            fprintf(stderr, "\nfluxgen: interrupted\n");
            status = EXIT_CANCEL;
            goto out;
        }
        if (rc) {
            fprintf(stderr, "fluxgen: generation failed: %s\n", msg[0] ? msg : fx_strerror(rc));
            goto out;
        }
        if (count > 1)
            snprintf(path, sizeof(path), out_path, (int)n);
        else
            snprintf(path, sizeof(path), "%s", out_path);
        rc = write_file(path, res.png, res.png_len);
        if (rc) {
            fprintf(stderr, "fluxgen: cannot write '%s': %s\n", path, strerror(rc));
            goto out;
        }
        if (json) {
            printf("{\"output\":\"%s\",\"seed\":%llu,\"width\":%d,\"height\":%d,"
                   "\"steps\":%d,\"guidance\":%.17g,\"device\":\"%s\",\"clip_tokens\":%zu,"
                   "\"t5_tokens\":%zu,\"load_seconds\":%.6f,\"device_bytes_peak\":%lld,"
                   "\"timings\":{\"tokenize\":%.6f,"
                   "\"encode\":%.6f,\"denoise\":%.6f,\"decode\":%.6f,\"png\":%.6f}}\n",
                   strpbrk(path, "\"\\") ? "(unprintable)" : path, (unsigned long long)res.seed,
                   one.width, one.height, one.steps, one.guidance, fx_pipeline_device(pipe),
                   res.clip_tokens, res.t5_tokens, t_load, (long long)res.device_bytes_peak,
                   res.t_tokenize, res.t_encode, res.t_denoise, res.t_decode, res.t_png);
            fflush(stdout);
        } else if (!quiet) {
            fprintf(stderr, "fluxgen: wrote %s (%dx%d, %d steps, seed %llu) in %.2fs\n", path,
                    one.width, one.height, one.steps, (unsigned long long)res.seed,
                    res.t_tokenize + res.t_encode + res.t_denoise + res.t_decode + res.t_png);
        }
        fx_result_release(&res);
    }
    signal(SIGINT, SIG_DFL);
    status = 0;
out:
    fx_result_release(&res);
    fx_pipeline_free(pipe);
    manifest_free(man);
    return status;
}
