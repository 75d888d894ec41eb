/* lora_dir.c - LoRA names to files in lora_dir, and the directory's listing (lora_dir.h). */
#include "lora_dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/err.h"

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

bool lora_name_canon(const char *name, size_t len, char *canon)
{
    size_t sl = strlen(LORA_SUFFIX);
    canon[0] = '\0';
    if (name == NULL)
        return false;
    if (len > sl && memcmp(name + len - sl, LORA_SUFFIX, sl) == 0)
        len -= sl;
    if (len == 0 || len > LORA_NAME_MAX)
        return false;
    /* the first character is a letter or digit: no leading dot, so neither "." nor ".."
     * nor a hidden file; no '/' anywhere, so the name is one component inside the dir */
    if (name[0] == '.' || name[0] == '_' || name[0] == '-')
        return false;
    for (size_t i = 0; i < len; i++)
        if (!name_char(name[i]))
            return false;
    memcpy(canon, name, len);
    canon[len] = '\0';
    return true;
}

void lora_file_close(struct lora_file *f)
{
    if (f && f->fd >= 0) {
        close(f->fd);
        f->fd = -1;
    }
}

int lora_file_open(const char *dir, const char *canon, struct lora_file *f, char *msg,
                   size_t msg_len)
{
    char file[LORA_NAME_MAX + 16];
    struct stat sb;
    int dfd, fd, err;

    f->fd = -1;
    snprintf(file, sizeof(file), "%s%s", canon, LORA_SUFFIX);
    if ((size_t)snprintf(f->path, sizeof(f->path), "%s/%s", dir, file) >= sizeof(f->path))
        return fx_fail(msg, msg_len, FX_ETOOBIG, "the path of '%s' is too long", file);
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return fx_fail(msg, msg_len, FX_EIO, "the LoRA directory cannot be opened: %s",
                       strerror(errno));
    /* O_NOFOLLOW: a symbolic link is refused, not followed out of the directory;
     * O_NONBLOCK: a FIFO put there does not hang the thread (it is refused below) */
    fd = openat(dfd, file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    err = errno;
    close(dfd);
    if (fd < 0) {
        if (err == ENOENT || err == ENOTDIR)
            return fx_fail(msg, msg_len, FX_ELORA_UNKNOWN,
                           "no LoRA '%s' (no file '%s' in the LoRA directory; GET /loras lists "
                           "them)",
                           canon, file);
        if (err == ELOOP)
            return fx_fail(msg, msg_len, FX_ELORA_BAD,
                           "'%s' is a symbolic link; LoRAs must be regular files in the LoRA "
                           "directory",
                           file);
        return fx_fail(msg, msg_len, FX_ELORA_BAD, "'%s' cannot be opened: %s", file,
                       strerror(err));
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return fx_fail(msg, msg_len, FX_ELORA_BAD, "'%s' is not a regular file", file);
    }
    /* back to blocking reads for the reader */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    f->fd = fd;
    f->bytes = (int64_t)sb.st_size;
    f->modified_ms = (int64_t)sb.st_mtim.tv_sec * 1000 + sb.st_mtim.tv_nsec / 1000000;
    return 0;
}

/* Replaces every occurrence of from in msg with to (in place, cut at msg_len). */
static void replace_all(char *msg, size_t msg_len, const char *from, const char *to)
{
    char out[1024];
    size_t fl = strlen(from), k = 0;
    const char *p = msg;
    if (fl == 0 || msg == NULL || msg_len == 0)
        return;
    while (*p && k + 1 < sizeof(out)) {
        if (strncmp(p, from, fl) == 0) {
            k += (size_t)snprintf(out + k, sizeof(out) - k, "%s", to);
            if (k >= sizeof(out))
                k = sizeof(out) - 1;
            p += fl;
        } else {
            out[k++] = *p++;
        }
    }
    out[k] = '\0';
    k = strlen(out) < msg_len ? strlen(out) : msg_len - 1;
    memcpy(msg, out, k);
    msg[k] = '\0';
}

int lora_dir_check(const char *dir, const struct fx_lora_map *map, const char *canon,
                   struct fx_lora_info *info, struct lora_file *f, char *msg, size_t msg_len)
{
    struct lora_file own;
    struct lora_file *lf = f ? f : &own;
    char proc[64], file[LORA_NAME_MAX + 16], why[512] = "";
    struct stat sb;
    int rc = lora_file_open(dir, canon, lf, msg, msg_len);
    if (rc)
        return rc;
    /* the file that was opened, not whatever the name points at a moment later */
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", lf->fd);
    const char *path = stat(proc, &sb) == 0 ? proc : lf->path;
    rc = fx_lora_check(map, path, info, why, sizeof(why));
    if (rc) {
        /* the reader names the file it was given (its base name, or the path): the client
         * sees the LoRA's own file name instead, never a server path or an fd */
        char from[LORA_PATH_MAX + 8];
        const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        snprintf(file, sizeof(file), "'%s%s'", canon, LORA_SUFFIX);
        snprintf(from, sizeof(from), "'%s'", path);
        replace_all(why, sizeof(why), from, file);
        snprintf(from, sizeof(from), "'%s'", base);
        replace_all(why, sizeof(why), from, file);
        if (rc == FX_ENOMEM)
            fx_fail(msg, msg_len, FX_ENOMEM, "out of memory");
        else
            fx_fail(msg, msg_len, FX_ELORA_BAD, "LoRA '%s' does not fit the model: %s", canon,
                    why[0] ? why : fx_strerror(rc));
        rc = rc == FX_ENOMEM ? FX_ENOMEM : FX_ELORA_BAD;
    }
    if (f == NULL)
        lora_file_close(lf);
    return rc;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct lora_entry *)a)->name, ((const struct lora_entry *)b)->name);
}

int lora_dir_list(const char *dir, const struct fx_lora_map *map, const char *map_error,
                  struct lora_entry **out, size_t *n, bool *truncated, char *msg, size_t msg_len)
{
    struct lora_entry *e = NULL;
    struct dirent *d;
    size_t k = 0, sl = strlen(LORA_SUFFIX);
    DIR *dh;

    *out = NULL;
    *n = 0;
    *truncated = false;
    dh = opendir(dir);
    if (dh == NULL)
        return fx_fail(msg, msg_len, FX_EIO, "the LoRA directory cannot be read: %s",
                       strerror(errno));
    e = calloc(LORA_LIST_MAX, sizeof(*e));
    if (e == NULL) {
        closedir(dh);
        return FX_ENOMEM;
    }
    while ((d = readdir(dh)) != NULL) {
        size_t len = strlen(d->d_name);
        char canon[LORA_NAME_MAX + 1];
        /* only what a request could name: NAME.safetensors */
        if (len <= sl || strcmp(d->d_name + len - sl, LORA_SUFFIX) != 0 ||
            !lora_name_canon(d->d_name, len, canon))
            continue;
        if (k == LORA_LIST_MAX) {
            *truncated = true;
            break;
        }
        snprintf(e[k].name, sizeof(e[k].name), "%s", canon);
        k++;
    }
    closedir(dh);
    qsort(e, k, sizeof(*e), by_name);
    for (size_t i = 0; i < k; i++) {
        struct lora_file f;
        if (map == NULL) {
            /* the size and time still help the operator */
            e[i].rc = lora_file_open(dir, e[i].name, &f, e[i].error, sizeof(e[i].error));
            if (e[i].rc == 0) {
                e[i].bytes = f.bytes;
                e[i].modified_ms = f.modified_ms;
                lora_file_close(&f);
                e[i].rc = FX_ELORA_OFF;
                snprintf(e[i].error, sizeof(e[i].error), "%s",
                         map_error ? map_error : "LoRAs are not configured");
            }
            continue;
        }
        e[i].rc =
            lora_dir_check(dir, map, e[i].name, &e[i].info, &f, e[i].error, sizeof(e[i].error));
        if (e[i].rc == 0 || f.fd >= 0) {
            e[i].bytes = f.bytes;
            e[i].modified_ms = f.modified_ms;
            lora_file_close(&f);
        }
    }
    *out = e;
    *n = k;
    return 0;
}
