/*
 * fluxgen - command-line front end of the fluxcgi core.
 *
 *   fluxgen [generate] --model DIR --prompt TEXT [options] -o OUT.png   (cli/generate.c)
 *   fluxgen tokenize (--model DIR | --clip DIR --t5 FILE) (--prompt TEXT | --stdin)
 *   fluxgen plan --model DIR [...]   (also fluxgen --plan ...; cli/plan.c)
 *   fluxgen --version | --help
 *
 * Each subcommand is one function taking (argc, argv) after the subcommand name and
 * returning the process exit status (cli.h): 0 success, 1 failure, 2 usage error, 3 bad
 * model dir, 4 runtime failure, 130 interrupted.  Help goes to stdout with status 0; usage
 * errors go to stderr, say what was wrong, and exit 2.  New subcommands add a row to the table in
 * main().
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"
#include "../core/tok_clip.h"
#include "../core/tok_t5.h"
#include "../core/version.h"
#include "cli.h"

struct subcommand {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

/* ---- option parsing ---------------------------------------------------------------------- */

int cli_opt_value(int argc, char **argv, int *i, const char *name, const char **value)
{
    size_t n = strlen(name);
    const char *a = argv[*i];

    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *value = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *value = argv[++*i];
    return 1;
}

/* ---- tokenize ---------------------------------------------------------------------------- */

struct tokenize_ctx {
    struct tok_clip *clip;
    struct tok_t5 *t5;
    char *out; /* one JSON line */
    size_t cap;
};

static char *put_str(char *p, const char *s)
{
    size_t n = strlen(s);
    memcpy(p, s, n);
    return p + n;
}

static char *put_uint(char *p, unsigned long long v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

static char *put_ids(char *p, const int32_t *ids, size_t n)
{
    *p++ = '[';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *p++ = ',';
        p = put_uint(p, (unsigned long long)ids[i]);
    }
    *p++ = ']';
    return p;
}

/* Tokenizes one prompt and prints its JSON line.  Returns 0 or an FX_E* code. */
static int tokenize_one(struct tokenize_ctx *c, const char *text, size_t len)
{
    int32_t clip[TOK_CLIP_LEN], t5[TOK_T5_LEN];
    size_t n_clip = 0, n_t5 = 0;
    int rc;
    char *p = c->out;

    if (c->clip) {
        rc = tok_clip_encode(c->clip, text, len, clip, &n_clip);
        if (rc < 0)
            return rc;
    }
    if (c->t5) {
        rc = tok_t5_encode(c->t5, text, len, t5, &n_t5);
        if (rc < 0)
            return rc;
    }
    *p++ = '{';
    if (c->clip) {
        p = put_str(p, "\"clip\":");
        p = put_ids(p, clip, TOK_CLIP_LEN);
    }
    if (c->t5) {
        p = put_str(p, c->clip ? ",\"t5\":" : "\"t5\":");
        p = put_ids(p, t5, TOK_T5_LEN);
    }
    if (c->clip) {
        p = put_str(p, ",\"clip_tokens\":");
        p = put_uint(p, n_clip);
    }
    if (c->t5) {
        p = put_str(p, ",\"t5_tokens\":");
        p = put_uint(p, n_t5);
    }
    p = put_str(p, "}\n");
    if (fwrite(c->out, 1, (size_t)(p - c->out), stdout) != (size_t)(p - c->out))
        return FX_EIO;
    return 0;
}

static void tokenize_usage(FILE *f)
{
    fputs("usage: fluxgen tokenize (--model DIR | [--clip DIR] [--t5 FILE]) "
          "(--prompt TEXT | --stdin)\n"
          "  --model DIR   a model folder: DIR/tokenizer/ and DIR/tokenizer_2/spiece.model\n"
          "  --clip DIR    CLIP tokenizer folder (vocab.json, merges.txt)\n"
          "  --t5 FILE     T5 SentencePiece model (spiece.model)\n"
          "  --prompt TEXT tokenize TEXT\n"
          "  --stdin       tokenize each line of standard input (\\n or \\r\\n ends a line)\n"
          "Prints one JSON object per prompt:\n"
          "  {\"clip\":[77 ids],\"t5\":[512 ids],\"clip_tokens\":N,\"t5_tokens\":M}\n"
          "where N and M are the lengths before truncation (bos/eos included).\n",
          f);
}

static int cmd_tokenize(int argc, char **argv)
{
    const char *clip_dir = NULL, *t5_file = NULL, *model = NULL, *prompt = NULL;
    bool use_stdin = false;
    char *clip_buf = NULL, *t5_buf = NULL, *line = NULL;
    struct tokenize_ctx c = {0};
    char msg[512];
    int status = 1, rc = 0;

    for (int i = 0; i < argc; i++) {
        int m;
        if ((m = cli_opt_value(argc, argv, &i, "--clip", &clip_dir)) ||
            (m = cli_opt_value(argc, argv, &i, "--t5", &t5_file)) ||
            (m = cli_opt_value(argc, argv, &i, "--model", &model)) ||
            (m = cli_opt_value(argc, argv, &i, "--prompt", &prompt))) {
            if (m < 0) {
                fprintf(stderr, "fluxgen tokenize: '%s' needs a value\n", argv[i]);
                return EXIT_USAGE;
            }
        } else if (strcmp(argv[i], "--stdin") == 0) {
            use_stdin = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            tokenize_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "fluxgen tokenize: unknown argument '%s'\n", argv[i]);
            tokenize_usage(stderr);
            return EXIT_USAGE;
        }
    }
    if ((prompt != NULL) == use_stdin || (model && (clip_dir || t5_file)) ||
        (!model && !clip_dir && !t5_file)) {
        fprintf(stderr, "fluxgen tokenize: %s\n",
                (prompt != NULL) == use_stdin ? "give one of --prompt TEXT and --stdin"
                : model                       ? "--model excludes --clip and --t5"
                                              : "give --model DIR, or --clip DIR and/or --t5 FILE");
        tokenize_usage(stderr);
        return EXIT_USAGE;
    }
    if (model) {
        size_t n = strlen(model) + sizeof("/tokenizer_2/spiece.model");
        clip_buf = malloc(n);
        t5_buf = malloc(n);
        if (!clip_buf || !t5_buf) {
            fprintf(stderr, "fluxgen tokenize: %s\n", fx_strerror(FX_ENOMEM));
            goto out;
        }
        snprintf(clip_buf, n, "%s/tokenizer", model);
        snprintf(t5_buf, n, "%s/tokenizer_2/spiece.model", model);
        clip_dir = clip_buf;
        t5_file = t5_buf;
    }
    if (clip_dir && (rc = tok_clip_load(clip_dir, &c.clip, msg, sizeof(msg))) < 0) {
        fprintf(stderr, "fluxgen tokenize: %s\n", msg);
        goto out;
    }
    if (t5_file && (rc = tok_t5_load(t5_file, &c.t5, msg, sizeof(msg))) < 0) {
        fprintf(stderr, "fluxgen tokenize: %s\n", msg);
        goto out;
    }
    c.cap = 16 + 12 * (TOK_CLIP_LEN + TOK_T5_LEN) + 128;
    c.out = malloc(c.cap);
    if (!c.out) {
        rc = FX_ENOMEM;
        fprintf(stderr, "fluxgen tokenize: %s\n", fx_strerror(rc));
        goto out;
    }
    if (prompt) {
        rc = tokenize_one(&c, prompt, strlen(prompt));
    } else {
        size_t cap = 0;
        ssize_t got;
        while (rc == 0 && (got = getline(&line, &cap, stdin)) >= 0) {
            size_t n = (size_t)got;
            if (n && line[n - 1] == '\n')
                n--;
            if (n && line[n - 1] == '\r')
                n--;
            rc = tokenize_one(&c, line, n);
        }
        if (rc == 0 && ferror(stdin))
            rc = FX_EIO;
    }
    if (rc == 0 && fflush(stdout) != 0)
        rc = FX_EIO;
    if (rc < 0) {
        fprintf(stderr, "fluxgen tokenize: %s\n", fx_strerror(rc));
        goto out;
    }
    status = 0;
out:
    free(line);
    free(c.out);
    tok_clip_free(c.clip);
    tok_t5_free(c.t5);
    free(clip_buf);
    free(t5_buf);
    return status;
}

/* ---- main -------------------------------------------------------------------------------- */

static const struct subcommand subcommands[] = {
    {"generate", cmd_generate, "make an image (the default: 'fluxgen --model DIR ...')"},
    {"tokenize", cmd_tokenize, "print the CLIP and T5 token ids of prompts as JSON"},
    {"plan", cmd_plan, "the memory plan: device and host bytes per placement ('--plan')"},
};

static void usage(FILE *f)
{
    fputs("usage: fluxgen COMMAND [ARGS]    ('fluxgen COMMAND --help' for its options)\n"
          "       fluxgen --model DIR ...   (the same as 'fluxgen generate --model DIR ...')\n"
          "       fluxgen --plan --model DIR ... (the same as 'fluxgen plan --model DIR ...')\n"
          "       fluxgen --version | --help\n"
          "\n"
          "commands:\n",
          f);
    for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
        fprintf(f, "  %-10s %s\n", subcommands[i].name, subcommands[i].summary);
    fputs("\n"
          "exit status: 0 done, 1 tokenize failed, 2 bad arguments, 3 bad model dir, 4 runtime\n"
          "failure, 130 interrupted.  A model dir is written by `fluxexport export`.\n",
          f);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs("fluxgen: no command given\n", stderr);
        usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--plan") == 0)
        return cmd_plan(argc - 2, argv + 2);
    if (strcmp(argv[1], "--version") == 0) {
        printf("fluxgen %s\n", FX_VERSION);
        return fflush(stdout) == 0 ? 0 : EXIT_FAIL;
    }
    for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++) {
        if (strcmp(argv[1], subcommands[i].name) == 0)
            return subcommands[i].run(argc - 2, argv + 2);
    }
    if (argv[1][0] == '-')
        return cmd_generate(argc - 1, argv + 1);
    fprintf(stderr, "fluxgen: unknown command '%s' (commands: ", argv[1]);
    for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
        fprintf(stderr, "%s%s", i ? ", " : "", subcommands[i].name);
    fputs("; fluxgen --help for more)\n", stderr);
    return EXIT_USAGE;
}
