/*
 * fuzz_parse_generate.c - libFuzzer target for the generation request parser
 * (api_parse_generate, fcgi/parse.c): the input is the HTTP body as it arrives.
 *
 * Beyond memory safety (ASan, UBSan, LeakSanitizer) it checks the parser's contract: an
 * accepted request lies within the limits and its prompt is the malloc'd copy; a refused
 * one returns one of the documented codes with a message.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/err.h"
#include "../../core/manifest.h"
#include "../../fcgi/api.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct api_ctx ctx;
static struct fx_config cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct fx_manifest m = {0};
    char msg[256];

    (void)argc;
    (void)argv;
    config_defaults(&cfg);
    cfg.default_steps = 2;
    cfg.default_width = 64;
    cfg.default_height = 64;
    m.default_steps = 28;
    m.default_width = m.default_height = 1024;
    m.default_guidance = 3.5;
    m.min_size = 64;
    m.max_size = 2048;
    m.multiple_of = 16;
    if (api_ctx_limits(&ctx, &m, &cfg, msg, sizeof(msg)) != 0) {
        fprintf(stderr, "fuzz_parse_generate: %s\n", msg);
        abort();
    }
    ctx.cfg = &cfg;
    ctx.model_name = "fuzz-model";
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fx_request rq;
    char *prompt = NULL, msg[256] = "";
    const char *field = NULL;
    const struct fx_limits *l = &ctx.limits;
    int rc;

    /* a copy of exactly size bytes, so that ASan sees any read past the body */
    char *body = malloc(size ? size : 1);
    if (!body)
        return 0;
    memcpy(body, data, size);
    rc = api_parse_generate(&ctx, size ? body : NULL, size, &rq, &prompt, &field, msg, sizeof(msg));
    if (rc == 0) {
        if (!prompt || rq.prompt != prompt || rq.prompt_len == 0 ||
            rq.prompt_len > l->max_prompt_bytes || rq.width < l->min_size ||
            rq.width > l->max_size || rq.height < l->min_size || rq.height > l->max_size ||
            rq.width % l->multiple_of || rq.height % l->multiple_of || rq.steps < 1 ||
            rq.steps > l->max_steps || !(rq.guidance >= l->min_guidance) ||
            !(rq.guidance <= l->max_guidance) || (rq.has_seed && rq.seed > FX_SEED_MAX)) {
            fprintf(stderr, "accepted out of bounds: %dx%d steps %d guidance %g len %zu\n",
                    rq.width, rq.height, rq.steps, rq.guidance, rq.prompt_len);
            abort();
        }
    } else if ((rc != FX_EFORMAT && rc != FX_EUTF8 && rc != FX_EINVAL && rc != FX_ERANGE &&
                rc != FX_ENOMEM && rc != FX_ELORA_OFF) ||
               msg[0] == '\0' || prompt != NULL) {
        fprintf(stderr, "refused with code %d, message '%s'\n", rc, msg);
        abort();
    }
    free(prompt);
    free(body);
    return 0;
}
