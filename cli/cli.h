/*
 * cli.h - what the fluxgen subcommands share.  Each subcommand is a function taking the
 * arguments after its name and returning the process exit status.
 */
#ifndef FX_CLI_H
#define FX_CLI_H

/* Exit statuses of fluxgen. */
#define EXIT_FAIL 1    /* tokenize: unreadable tokenizer files */
#define EXIT_USAGE 2   /* bad arguments or an out-of-range request */
#define EXIT_MODEL 3   /* the model dir is missing, malformed or cannot be loaded */
#define EXIT_RUNTIME 4 /* generation or writing the output failed */
#define EXIT_CANCEL 130

/*
 * Matches argv[*i] against "--name VALUE" or "--name=VALUE".  Returns 1 and sets *value
 * (advancing *i past a separate value) on a match, 0 when argv[*i] is another option, -1
 * when the value is missing.
 */
int cli_opt_value(int argc, char **argv, int *i, const char *name, const char **value);

/* fluxgen [generate] --model DIR --prompt TEXT ... -o FILE */
int cmd_generate(int argc, char **argv);

/* fluxgen plan --model DIR ... (also fluxgen --plan): the memory plan, cli/plan.c */
int cmd_plan(int argc, char **argv);

#endif
