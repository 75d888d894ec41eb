/*
 * fluxgen plan (also `fluxgen --plan`): the memory plan of a model dir (core/plan.h) for each
 * placement, at the largest size its manifest allows or at --width x --height.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"
#include "../core/manifest.h"
#include "../core/plan.h"
#include "cli.h"

static void plan_usage(FILE *f)
{
    fputs("usage: fluxgen plan --model DIR [--placement P|all] [--width N --height N | --size N]\n"
          "                    [--device cpu|cuda] [--device-memory SIZE] [--json]\n"
          "       (fluxgen --plan ... is the same)\n"
          "  --model DIR          a model dir (a manifest-only one will do)\n"
          "  --placement P        resident, encoders-offload, stream or all (default: all)\n"
          "  --size N             N x N (default: the manifest's max_size, the largest image)\n"
          "  --width/--height N   another size\n"
          "  --device D           the device to plan for (default: the manifest's)\n"
          "  --device-memory SIZE say whether it fits and the largest side that does\n"
          "                       (bytes, or a number with k, M or G)\n"
          "  --json               one JSON object per placement, one per line\n"
          "Bytes on the device and in host memory per module, the activation peak, totals.\n",
          f);
}

static int parse_side(const char *name, const char *v, int *out)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (*v == '\0' || *end || n < 16 || n > 65536 || n % 16) {
        fprintf(stderr, "fluxgen plan: %s '%s' is not a multiple of 16 from 16 to 65536\n", name,
                v);
        return -1;
    }
    *out = (int)n;
    return 0;
}

int cmd_plan(int argc, char **argv)
{
    const char *model = NULL, *placement = "all", *device = NULL, *mem = NULL;
    const char *width_s = NULL, *height_s = NULL, *size_s = NULL;
    int json = 0, width = 0, height = 0, status = 0;
    int64_t device_bytes = 0;
    struct fx_manifest *m = NULL;
    char msg[1024];

    for (int i = 0; i < argc; i++) {
        int r;
        if ((r = cli_opt_value(argc, argv, &i, "--model", &model)) ||
            (r = cli_opt_value(argc, argv, &i, "--placement", &placement)) ||
            (r = cli_opt_value(argc, argv, &i, "--width", &width_s)) ||
            (r = cli_opt_value(argc, argv, &i, "--height", &height_s)) ||
            (r = cli_opt_value(argc, argv, &i, "--size", &size_s)) ||
            (r = cli_opt_value(argc, argv, &i, "--device-memory", &mem)) ||
            (r = cli_opt_value(argc, argv, &i, "--device", &device))) {
            if (r < 0) {
                fprintf(stderr, "fluxgen plan: '%s' needs a value\n", argv[i]);
                return EXIT_USAGE;
            }
        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            plan_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "fluxgen plan: unknown argument '%s'\n", argv[i]);
            plan_usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (model == NULL) {
        fputs("fluxgen plan: --model DIR is required\n", stderr);
        plan_usage(stderr);
        return EXIT_USAGE;
    }
    if ((size_s && (width_s || height_s)) || (!width_s != !height_s)) {
        fputs("fluxgen plan: give --size N, or --width N and --height N\n", stderr);
        return EXIT_USAGE;
    }
    if ((size_s && parse_side("--size", size_s, &width)) ||
        (width_s &&
         (parse_side("--width", width_s, &width) || parse_side("--height", height_s, &height))))
        return EXIT_USAGE;
    if (size_s)
        height = width;
    if (mem && plan_parse_bytes(mem, &device_bytes) != 0) {
        fprintf(stderr, "fluxgen plan: --device-memory '%s' is not a size (e.g. 24G)\n", mem);
        return EXIT_USAGE;
    }
    if (device && strcmp(device, "cpu") != 0 && strncmp(device, "cuda", 4) != 0) {
        fprintf(stderr, "fluxgen plan: --device '%s' is not cpu, cuda or cuda:N\n", device);
        return EXIT_USAGE;
    }
    {
        enum fx_placement one;
        if (strcmp(placement, "all") != 0 && plan_placement_parse(placement, &one) != 0) {
            fprintf(stderr,
                    "fluxgen plan: --placement '%s' is not resident, encoders-offload, stream "
                    "or all\n",
                    placement);
            return EXIT_USAGE;
        }
    }
    int rc = manifest_load(model, &m, msg, sizeof(msg));
    if (rc) {
        fprintf(stderr, "fluxgen plan: model '%s': %s\n", model, msg);
        return EXIT_MODEL;
    }
    if (width == 0)
        width = height = m->max_size;
    if (!json)
        printf("model '%s': weights %s, compute %s, attention %s, device %s%s\n", m->name,
               manifest_weights_name(m->weights), m->bf16 ? "bf16" : "fp32",
               m->sdpa ? "sdpa" : "explicit", device ? device : m->device,
               m->manifest_only ? " (manifest only)" : "");
    for (int p = 0; p < FX_PLACEMENTS; p++) {
        struct fx_plan pl;
        if (strcmp(placement, "all") != 0 && strcmp(placement, plan_placement_name(p)) != 0)
            continue;
        rc = plan_compute(m, (enum fx_placement)p, width, height, device, &pl, msg, sizeof(msg));
        if (rc == FX_ENOTSUP && strcmp(placement, "all") == 0) {
            if (!json)
                printf("placement %s: %s\n", plan_placement_name(p), msg);
            continue;
        }
        if (rc) {
            fprintf(stderr, "fluxgen plan: %s\n", msg);
            status = EXIT_MODEL;
            break;
        }
        rc = json ? plan_print_json(stdout, &pl, device_bytes)
                  : plan_print_text(stdout, &pl, device_bytes);
        if (rc == 0 && !json && device_bytes > 0) {
            int s = plan_max_size(m, (enum fx_placement)p, device, device_bytes, m->min_size,
                                  m->max_size, m->multiple_of);
            if (s > 0)
                printf("  largest size that fits %d x %d\n", s, s);
            else
                printf("  largest size that fits none (not even %d x %d)\n", m->min_size,
                       m->min_size);
        }
        if (rc) {
            fprintf(stderr, "fluxgen plan: cannot write the plan\n");
            status = EXIT_RUNTIME;
            break;
        }
    }
    manifest_free(m);
    if (status == 0 && fflush(stdout) != 0)
        status = EXIT_RUNTIME;
    return status;
}
