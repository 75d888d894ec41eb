/*
 * lora_dir.h - the service's LoRA directory (config key lora_dir, docs/operations.md "LoRA
 * adapters"): the names requests use, the files they resolve to, and the directory's listing.
 *
 * A request names a LoRA, never a path.  A name is [A-Za-z0-9][A-Za-z0-9._-]{0,127}, given
 * with or without the ".safetensors" suffix (so no '/', no leading dot, no ".." component);
 * it resolves to the file <lora_dir>/<name>.safetensors and nothing else.  The file is
 * opened relative to the directory with O_NOFOLLOW and must be a regular file: a symbolic
 * link in lora_dir is refused (bad_lora), so no name reaches outside the directory.  The
 * check against the model (core/lora.h fx_lora_check: the header alone) reads the very file
 * that was opened, through /proc/self/fd when /proc is there.
 *
 * Messages never name lora_dir's own path: a client sees "'NAME.safetensors'".
 * Every function is thread-safe (no state; the map is read-only).
 */
#ifndef FX_LORA_DIR_H
#define FX_LORA_DIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/lora.h"

/* The longest name (without the suffix), and the most files GET /loras lists. */
#define LORA_NAME_MAX 128
#define LORA_LIST_MAX 1000
#define LORA_SUFFIX ".safetensors"
#define LORA_PATH_MAX 1100 /* lora_dir (CONFIG_PATH_MAX) + '/' + a file name */

/*
 * Checks a name as a request gives it (len bytes, which may hold NUL) and writes it without
 * the ".safetensors" suffix to canon (LORA_NAME_MAX + 1 bytes).  Returns true when it is a
 * valid name; false leaves canon "".
 */
bool lora_name_canon(const char *name, size_t len, char *canon);

/* What lora_dir_open found. */
struct lora_file {
    int fd;                   /* open read-only; close it (lora_file_close) */
    int64_t bytes;            /* the file's size */
    int64_t modified_ms;      /* its mtime, Unix epoch milliseconds */
    char path[LORA_PATH_MAX]; /* <dir>/<name>.safetensors */
};

/*
 * Opens the file of canonical name canon in dir (O_NOFOLLOW, regular files only).  Returns
 * 0 with *f filled, or FX_ELORA_UNKNOWN (no such file), FX_ELORA_BAD (a symbolic link, not a
 * regular file, not readable), FX_EIO (dir cannot be opened), FX_ETOOBIG (the path is too
 * long); msg says why.
 */
int lora_file_open(const char *dir, const char *canon, struct lora_file *f, char *msg,
                   size_t msg_len);
void lora_file_close(struct lora_file *f);

/*
 * lora_file_open, then fx_lora_check of that file against map.  Returns 0 (and *info, may
 * be NULL), the errors of lora_file_open, FX_ELORA_BAD (the file does not fit the model: msg
 * says why, from fx_lora_check) or FX_ENOMEM.  With f NULL the file is closed again; else,
 * once opened, it stays open in *f (f->fd >= 0, whatever the check said) for the caller to
 * close.
 */
int lora_dir_check(const char *dir, const struct fx_lora_map *map, const char *canon,
                   struct fx_lora_info *info, struct lora_file *f, char *msg, size_t msg_len);

/* One file of the listing. */
struct lora_entry {
    char name[LORA_NAME_MAX + 1]; /* without the suffix */
    int64_t bytes, modified_ms;
    int rc;                   /* 0: fits the model (info); else the error (error) */
    struct fx_lora_info info; /* rc 0 */
    char error[256];          /* rc != 0 */
};

/*
 * Lists the *.safetensors files of dir with valid names (hidden files and others are
 * skipped), sorted by name, at most LORA_LIST_MAX (*truncated: there are more; the listing
 * is then the first LORA_LIST_MAX names in directory order, sorted), each checked against
 * map (NULL: each gets rc FX_ELORA_OFF and map_error as its error).  Returns 0 with *out
 * (malloc'd, free it) and *n, or FX_EIO (dir cannot be read: msg says why), FX_ENOMEM.
 */
int lora_dir_list(const char *dir, const struct fx_lora_map *map, const char *map_error,
                  struct lora_entry **out, size_t *n, bool *truncated, char *msg, size_t msg_len);

#endif
