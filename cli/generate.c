/*
 * fluxgen generate: one image from a prompt, through the C pipeline (core/pipeline.h).
 *
 *   fluxgen [generate] --model DIR --prompt TEXT [--steps N] [--guidance G] [--width W]
 *           [--height H] [--seed N] [--count N] [--device cpu|cuda|cuda:N] [--threads N]
 *           [--placement P] [--device-memory SIZE] [--lora FILE[:SCALE]]... [--json]
 *           [--dump-latents DIR] [--quiet] -o OUT.png
 *
 * Defaults come from the model's manifest (28 steps, guidance 3.5, 1024 x 1024) and the
 * device it was exported for.  --count N makes N images in one process (the modules load
 * once), with seeds seed, seed + 1, ... (or N random seeds); OUT then holds one "%d", which
 * becomes the image's index.  --lora patches the weights once after loading (core/lora.h,
 * fx_pipeline_set_loras); a missing or malformed LoRA file is a bad argument.  Exit status:
 * 0, 2 bad arguments, 3 bad model dir, 4 runtime failure, 130 interrupted (Ctrl-C stops
 * between steps).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "../core/err.h"
#include "../core/lora.h"
#include "../core/manifest.h"
#include "../core/pipeline.h"
#include "../core/plan.h"
#include "cli.h"

static atomic_int interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    atomic_store(&interrupted, 1);
}

static void usage(FILE *f)
{
    fputs("usage: fluxgen [generate] --model DIR --prompt TEXT [options] -o OUT.png\n"
          "\n"
          "Makes an image from a text prompt with a model dir written by `fluxexport export`.\n"
          "\n"
          "required:\n"
          "  --model DIR        the model dir (DIR/manifest.json, the four .pt modules and the\n"
          "                     tokenizer files); a checkpoint folder must be exported first\n"
          "  --prompt TEXT      the prompt (UTF-8, up to 64 KiB)\n"
          "  -o, --output OUT   the PNG to write (replaced atomically); with --count it holds\n"
          "                     one '%d', which becomes the image's index (0, 1, ...)\n"
          "options (defaults in brackets; 'model' = the model's manifest.json):\n"
          "  --steps N          denoising steps, 1 to 100 [model: 28 for FLUX.1]\n"
          "  --guidance G       guidance scale, a number from 0 to 100 [model: 3.5]\n"
          "  --width W          image width in pixels, a multiple of the model's multiple_of\n"
          "                     from its min_size to max_size (16, 64..2048) [model: 1024]\n"
          "  --height H         image height, the same rules [model: 1024]\n"
          "  --seed N           noise seed, 0 to 9007199254740991 (2^53 - 1) [random, and\n"
          "                     reported]; with --count, image i gets seed N + i\n"
          "  --count N          make N images in one process (modules load once), 1 to\n"
          "                     100000 [1]\n"
          "  --device D         cpu, cuda or cuda:N [the device the model was exported for]\n"
          "  --threads N        libtorch CPU threads, 0 to 1024; 0 = libtorch's default [0]\n"
          "  --placement P      where the weights live: resident, encoders-offload (CLIP and\n"
          "                     T5 on the CPU), stream (also the transformer's blocks in host\n"
          "                     memory, copied to the device one ahead of use) or auto (from\n"
          "                     --device-memory and `fluxgen plan`) [resident]\n"
          "  --device-memory S  device bytes for --placement auto (digits, optional k/M/G)\n"
          "                     [0: unknown, which makes auto resident]\n"
          "  --lora FILE[:SCALE] apply a LoRA (kohya, diffusers/PEFT or BFL/ComfyUI\n"
          "                     .safetensors, for the transformer and/or the text encoders)\n"
          "                     at strength SCALE, a number from -16 to 16 [1]; repeatable,\n"
          "                     up to 8, added in the order given.  FILE may hold ':' (the\n"
          "                     text after the last ':' is the scale when it is a number).\n"
          "                     The weights are patched once after loading (quantised layers\n"
          "                     are requantised); a bad file is refused before any weight\n"
          "                     changes (exit 2); the model dir needs its lora_map.json\n"
          "  --json             print one JSON object per image on stdout (output, seed, size,\n"
          "                     steps, guidance, device, placement, token counts, LoRAs,\n"
          "                     timings; with stream the last step's block schedule) instead\n"
          "                     of the summary line on stderr\n"
          "  --dump-latents DIR write the latents as DIR/step_000.npy (the noise) and\n"
          "                     DIR/step_K.npy after step K [off]\n"
          "  --quiet            no progress bar or summary on stderr\n"
          "  -h, --help         print this help and exit\n"
          "\n"
          "exit status: 0 done, 2 bad arguments, 3 bad model dir (missing, malformed or\n"
          "cannot be loaded), 4 generation or writing the output failed, 130 interrupted\n"
          "(Ctrl-C stops between steps).\n",
          f);
}

/* A one-line hint on stderr after a usage error: the help is long. */
static void usage_hint(void)
{
    fputs("(fluxgen generate --help lists the options)\n", stderr);
}

/*
 * Reads an integer option's text.  Returns 0 and sets *out, or -1 after saying on stderr that
 * s is not an integer.  A value too large for a long is kept as LONG_MIN/LONG_MAX, which the
 * range checks below then reject with the real bounds.
 */
static int parse_long(const char *opt, const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || (errno != 0 && errno != ERANGE)) {
        fprintf(stderr, "fluxgen: %s: '%s' is not an integer\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Parses an integer option and checks it against lo..hi; says which on stderr. */
static int parse_range(const char *opt, const char *s, long lo, long hi, long *out)
{
    if (parse_long(opt, s, out))
        return -1;
    if (*out < lo || *out > hi) {
        fprintf(stderr, "fluxgen: %s: must be from %ld to %ld, got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    return 0;
}

/* Parses --width or --height against the model's size limits. */
static int parse_size(const char *opt, const char *s, const struct fx_limits *l, int *out)
{
    long v;
    if (parse_long(opt, s, &v))
        return -1;
    if (v < l->min_size || v > l->max_size || v % l->multiple_of != 0) {
        fprintf(stderr,
                "fluxgen: %s: must be a multiple of %d from %d to %d (the model's limits), "
                "got '%s'\n",
                opt, l->multiple_of, l->min_size, l->max_size, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* The LoRAs of --lora options, with their names (the file name without .safetensors). */
struct lora_args {
    struct fx_lora l[FX_LORA_MAX];
    char *path[FX_LORA_MAX], *name[FX_LORA_MAX];
    size_t n;
};

static void lora_args_free(struct lora_args *a)
{
    for (size_t i = 0; i < a->n; i++) {
        free(a->path[i]);
        free(a->name[i]);
    }
    a->n = 0;
}

static bool is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/*
 * Parses one --lora value, FILE or FILE:SCALE: the text after the last ':' is the scale when
 * it parses as a number (so FILE may hold colons).  Returns 0, or -1 after saying why.
 */
static int parse_lora(const char *v, struct lora_args *a)
{
    const char *colon = strrchr(v, ':');
    size_t plen = strlen(v);
    double scale = 1.0;
    if (a->n >= FX_LORA_MAX) {
        fprintf(stderr, "fluxgen: --lora: at most %d LoRAs\n", FX_LORA_MAX);
        return -1;
    }
    if (colon) {
        char *end;
        errno = 0;
        double d = strtod(colon + 1, &end);
        if (colon[1] != '\0' && *end == '\0' && colon[1] != ' ') {
            if (!isfinite(d) || fabs(d) > FX_LORA_SCALE_MAX) {
                fprintf(stderr,
                        "fluxgen: --lora: the scale must be a number from %g to %g, got "
                        "'%s'\n",
                        -FX_LORA_SCALE_MAX, FX_LORA_SCALE_MAX, colon + 1);
                return -1;
            }
            scale = d;
            plen = (size_t)(colon - v);
        } else if (!is_file(v)) {
            /* not a number, and no file by the whole name: a mistyped scale is likelier */
            char *prefix = strndup(v, (size_t)(colon - v));
            bool pre = prefix && is_file(prefix);
            free(prefix);
            if (pre) {
                fprintf(stderr,
                        "fluxgen: --lora: '%s' is not a scale (FILE:SCALE, SCALE a "
                        "number)\n",
                        colon + 1);
                return -1;
            }
        }
    }
    if (plen == 0) {
        fprintf(stderr, "fluxgen: --lora: '%s' names no file (FILE[:SCALE])\n", v);
        return -1;
    }
    char *path = strndup(v, plen);
    const char *base = path ? strrchr(path, '/') : NULL;
    base = base ? base + 1 : path;
    size_t blen = base ? strlen(base) : 0;
    if (blen > 12 && strcmp(base + blen - 12, ".safetensors") == 0)
        blen -= 12;
    char *name = base ? strndup(base, blen) : NULL;
    if (path == NULL || name == NULL) {
        free(path);
        free(name);
        fprintf(stderr, "fluxgen: %s\n", fx_strerror(FX_ENOMEM));
        return -1;
    }
    a->path[a->n] = path;
    a->name[a->n] = name;
    a->l[a->n] = (struct fx_lora){name[0] ? name : path, path, scale};
    a->n++;
    return 0;
}

/*
 * Checks the --lora files against the model dir's map from their headers (cheap: before the
 * modules load).  Returns 0 or an exit status after saying why.
 */
static int check_loras(const char *model, const struct lora_args *a)
{
    struct fx_lora_map *map = NULL;
    char msg[1024];
    int status = 0;
    if (a->n == 0)
        return 0;
    int rc = fx_lora_map_load(model, &map, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxgen: --lora: model '%s': %s\n", model, msg);
        return rc == FX_ENOMEM ? EXIT_RUNTIME : EXIT_MODEL;
    }
    for (size_t i = 0; i < a->n && status == 0; i++) {
        rc = fx_lora_check(map, a->l[i].path, NULL, msg, sizeof(msg));
        if (rc) {
            fprintf(stderr, "fluxgen: --lora: lora '%s': %s\n", a->l[i].name, msg);
            status = rc == FX_ENOMEM ? EXIT_RUNTIME : EXIT_USAGE;
        }
    }
    fx_lora_map_free(map);
    return status;
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

/*
 * Prints one image's JSON line on stdout.  json-c does the quoting, so any output path
 * (tabs, quotes, backslashes) comes out as valid JSON.  Returns 0, FX_ENOMEM or FX_EIO.
 */
static int print_json(const char *path, const struct fx_request *r, const struct fx_result *res,
                      const struct fx_pipeline *pipe, double t_load)
{
    char sched[8192];
    json_object *o = json_object_new_object(), *t = json_object_new_object();
    int rc = FX_ENOMEM;
    if (o == NULL || t == NULL) {
        json_object_put(t);
        goto out;
    }
    json_object_object_add(o, "output", json_object_new_string(path));
    json_object_object_add(o, "seed", json_object_new_int64((int64_t)res->seed));
    json_object_object_add(o, "width", json_object_new_int(r->width));
    json_object_object_add(o, "height", json_object_new_int(r->height));
    json_object_object_add(o, "steps", json_object_new_int(r->steps));
    json_object_object_add(o, "guidance", json_object_new_double(r->guidance));
    json_object_object_add(o, "device", json_object_new_string(fx_pipeline_device(pipe)));
    json_object_object_add(o, "placement", json_object_new_string(fx_pipeline_placement(pipe)));
    if (fx_pipeline_stream_log(pipe, sched, sizeof(sched)) > 0)
        json_object_object_add(o, "stream_schedule", json_object_new_string(sched));
    json_object_object_add(o, "clip_tokens", json_object_new_int64((int64_t)res->clip_tokens));
    json_object_object_add(o, "t5_tokens", json_object_new_int64((int64_t)res->t5_tokens));
    json_object *la = json_object_new_array();
    json_object_object_add(o, "loras", la);
    for (size_t i = 0; la && i < r->n_loras; i++) {
        json_object *l = json_object_new_object();
        json_object_array_add(la, l);
        json_object_object_add(l, "name", json_object_new_string(r->loras[i].name));
        json_object_object_add(l, "path", json_object_new_string(r->loras[i].path));
        json_object_object_add(l, "scale", json_object_new_double(r->loras[i].scale));
    }
    json_object_object_add(o, "lora_skipped", json_object_new_boolean(res->lora_skipped));
    json_object_object_add(o, "load_seconds", json_object_new_double(t_load));
    json_object_object_add(o, "device_bytes_peak",
                           json_object_new_int64((int64_t)res->device_bytes_peak));
    json_object_object_add(t, "lora", json_object_new_double(res->t_lora));
    json_object_object_add(t, "tokenize", json_object_new_double(res->t_tokenize));
    json_object_object_add(t, "encode", json_object_new_double(res->t_encode));
    json_object_object_add(t, "denoise", json_object_new_double(res->t_denoise));
    json_object_object_add(t, "decode", json_object_new_double(res->t_decode));
    json_object_object_add(t, "png", json_object_new_double(res->t_png));
    json_object_object_add(o, "timings", t);
    const char *text =
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    if (text == NULL)
        goto out;
    rc = (puts(text) < 0 || fflush(stdout) != 0) ? FX_EIO : 0;
out:
    json_object_put(o);
    return rc;
}

/* cmd_generate's body; the caller frees *loras on every path. */
static int generate(int argc, char **argv, struct lora_args *loras)
{
    const char *model = NULL, *prompt = NULL, *out_path = NULL, *device = NULL, *dump = NULL;
    const char *v_steps = NULL, *v_guid = NULL, *v_w = NULL, *v_h = NULL, *v_seed = NULL;
    const char *v_threads = NULL, *v_count = NULL, *placement = NULL, *v_mem = NULL;
    int64_t device_memory = 0;
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
        const char *v_lora = NULL;
        if ((m = cli_opt_value(argc, argv, &i, "--lora", &v_lora)) != 0) {
            if (m < 0) {
                fprintf(stderr, "fluxgen: --lora needs a value (FILE[:SCALE])\n");
                usage_hint();
                return EXIT_USAGE;
            }
            if (parse_lora(v_lora, loras)) {
                usage_hint();
                return EXIT_USAGE;
            }
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
            (m = cli_opt_value(argc, argv, &i, "--placement", &placement)) ||
            (m = cli_opt_value(argc, argv, &i, "--device-memory", &v_mem)) ||
            (m = cli_opt_value(argc, argv, &i, "--count", &v_count)) ||
            (m = cli_opt_value(argc, argv, &i, "--dump-latents", &dump)) ||
            (m = cli_opt_value(argc, argv, &i, "-o", &out_path)) ||
            (m = cli_opt_value(argc, argv, &i, "--output", &out_path))) {
            if (m < 0) {
                fprintf(stderr, "fluxgen: %s needs a value\n", a);
                usage_hint();
                return EXIT_USAGE;
            }
            continue;
        }
        fprintf(stderr, "fluxgen: unknown option '%s'\n", a);
        usage_hint();
        return EXIT_USAGE;
    }
    if (model == NULL || prompt == NULL || out_path == NULL) {
        fprintf(stderr, "fluxgen: missing %s%s%s%s%s (all three are required)\n",
                model ? "" : "--model", !model && (!prompt || !out_path) ? ", " : "",
                prompt ? "" : "--prompt", !prompt && !out_path ? ", " : "", out_path ? "" : "-o");
        usage_hint();
        return EXIT_USAGE;
    }
    if (device && strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0 &&
        !(strncmp(device, "cuda:", 5) == 0 && device[5] &&
          strspn(device + 5, "0123456789") == strlen(device + 5))) {
        fprintf(stderr, "fluxgen: --device: '%s' is not cpu, cuda or cuda:N\n", device);
        return EXIT_USAGE;
    }
    if (placement && strcmp(placement, "auto") != 0) {
        enum fx_placement pl;
        if (plan_placement_parse(placement, &pl) != 0) {
            fprintf(stderr,
                    "fluxgen: --placement: '%s' is not resident, encoders-offload, stream or "
                    "auto\n",
                    placement);
            return EXIT_USAGE;
        }
    }
    if (v_mem && plan_parse_bytes(v_mem, &device_memory) != 0) {
        fprintf(stderr, "fluxgen: --device-memory: '%s' is not a byte count (digits, k/M/G)\n",
                v_mem);
        return EXIT_USAGE;
    }
    if (v_threads && parse_range("--threads", v_threads, 0, 1024, &threads))
        return EXIT_USAGE;
    if (v_count && parse_range("--count", v_count, 1, 100000, &count))
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
    /* Values that are not numbers are wrong whatever the model: say so before opening it. */
    if ((v_steps && parse_long("--steps", v_steps, &lv)) ||
        (v_w && parse_long("--width", v_w, &lv)) || (v_h && parse_long("--height", v_h, &lv)))
        return EXIT_USAGE;
    if (v_guid) {
        char *end;
        req.guidance = strtod(v_guid, &end);
        if (*v_guid == '\0' || *end != '\0') {
            fprintf(stderr, "fluxgen: --guidance: '%s' is not a number\n", v_guid);
            return EXIT_USAGE;
        }
    }
    if (v_seed) {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v_seed, &end, 10);
        if (*v_seed == '\0' || strspn(v_seed, "+-0123456789") == 0 || *end != '\0') {
            fprintf(stderr, "fluxgen: --seed: '%s' is not an integer\n", v_seed);
            return EXIT_USAGE;
        }
        /* strtoull accepts "-1" (as a huge value); a seed is never negative */
        if (*v_seed == '-' || errno == ERANGE || s > FX_SEED_MAX) {
            fprintf(stderr, "fluxgen: --seed: must be from 0 to %llu, got '%s'\n",
                    (unsigned long long)FX_SEED_MAX, v_seed);
            return EXIT_USAGE;
        }
        req.seed = s;
        req.has_seed = true;
        if ((unsigned long long)(count - 1) > FX_SEED_MAX - s) {
            fprintf(stderr, "fluxgen: --seed + --count - 1 exceeds %llu\n",
                    (unsigned long long)FX_SEED_MAX);
            return EXIT_USAGE;
        }
    }

    /* The manifest next: its defaults and limits decide whether the request is valid
     * before the modules are loaded. */
    rc = manifest_load(model, &man, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxgen: model '%s': %s\n", model, msg[0] ? msg : fx_strerror(rc));
        return EXIT_MODEL;
    }
    fx_limits_default(&lim, man);
    req.prompt = prompt;
    req.prompt_len = strlen(prompt);
    req.steps = man->default_steps;
    if (!v_guid)
        req.guidance = man->default_guidance;
    req.width = man->default_width;
    req.height = man->default_height;
    status = EXIT_USAGE;
    if (v_steps) {
        if (parse_range("--steps", v_steps, 1, lim.max_steps, &lv))
            goto out;
        req.steps = (int)lv;
    }
    if ((v_w && parse_size("--width", v_w, &lim, &req.width)) ||
        (v_h && parse_size("--height", v_h, &lim, &req.height)))
        goto out;
    if (v_guid && !(isfinite(req.guidance) && req.guidance >= lim.min_guidance &&
                    req.guidance <= lim.max_guidance)) {
        fprintf(stderr, "fluxgen: --guidance: must be a number from %g to %g, got '%s'\n",
                lim.min_guidance, lim.max_guidance, v_guid);
        goto out;
    }
    /* The checks above name the options; this catches what remains (an empty or too long
     * prompt) and anything the core adds later. */
    req.loras = loras->l;
    req.n_loras = loras->n;
    rc = fx_request_validate(&req, &lim, &field, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxgen: %s\n", msg);
        goto out;
    }
    /* LoRA files from their headers, before the modules take their time to load */
    status = check_loras(model, loras);
    if (status)
        goto out;
    status = EXIT_RUNTIME;

    double t_load = seconds();
    struct fx_pipeline_params pp = {
        model,     device ? device : man->device, (int)threads, placement, device_memory, req.width,
        req.height}; /* auto plans for the image asked for */
    rc = fx_pipeline_load(&pp, &pipe, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxgen: model '%s': %s\n", model, msg[0] ? msg : fx_strerror(rc));
        status = EXIT_MODEL;
        goto out;
    }
    t_load = seconds() - t_load;
    /* the LoRAs once (every image of --count then finds them applied); what the headers did
     * not show (values that are not finite) is still a bad argument */
    struct fx_lora_timing lt;
    rc = fx_pipeline_set_loras(pipe, req.loras, req.n_loras, &lt, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxgen: --lora: %s\n", msg[0] ? msg : fx_strerror(rc));
        status = rc == FX_ENOMEM || rc == FX_ERUNTIME ? EXIT_RUNTIME
                 : rc == FX_ENOTSUP                   ? EXIT_MODEL
                                                      : EXIT_USAGE;
        goto out;
    }
    if (req.n_loras && !quiet && !json)
        fprintf(stderr, "fluxgen: %zu LoRA%s applied: %lld layers patched in %.2fs\n", req.n_loras,
                req.n_loras > 1 ? "s" : "", (long long)lt.layers,
                lt.t_read + lt.t_restore + lt.t_patch);

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
            rc = print_json(path, &one, &res, pipe, t_load);
            if (rc) {
                fprintf(stderr, "fluxgen: cannot print the JSON line: %s\n", fx_strerror(rc));
                goto out;
            }
        } else if (!quiet) {
            char sched[8192];
            if (fx_pipeline_stream_log(pipe, sched, sizeof(sched)) > 0)
                fprintf(stderr, "fluxgen: stream: block schedule of the last step: %s\n", sched);
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

int cmd_generate(int argc, char **argv)
{
    struct lora_args loras = {0};
    int status = generate(argc, argv, &loras);
    lora_args_free(&loras);
    return status;
}
