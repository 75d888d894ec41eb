/* err.c - messages for the error list in err.h. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

#include <string.h>

const char *fx_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
#define FX_ERR_MSG_(name, value, msg, code)                                                        \
    case name:                                                                                     \
        return msg;
        FX_ERRNO_MAP(FX_ERR_MSG_)
#undef FX_ERR_MSG_
    }
    return "unknown error";
}

const char *fx_errname(int code)
{
    switch (code) {
    case 0:
        return "FX_OK";
#define FX_ERR_NAME_(name, value, msg, code)                                                       \
    case name:                                                                                     \
        return #name;
        FX_ERRNO_MAP(FX_ERR_NAME_)
#undef FX_ERR_NAME_
    }
    return "FX_EUNKNOWN";
}

const char *fx_errcode(int code)
{
    switch (code) {
    case 0:
        return "ok";
#define FX_ERR_CODE_(name, value, msg, code)                                                       \
    case name:                                                                                     \
        return code;
        FX_ERRNO_MAP(FX_ERR_CODE_)
#undef FX_ERR_CODE_
    }
    return "unknown";
}

int fx_errcode_parse(const char *s)
{
    static const int all[] = {
#define FX_ERR_ALL_(name, value, msg, code) name,
        FX_ERRNO_MAP(FX_ERR_ALL_)
#undef FX_ERR_ALL_
    };
    if (s == NULL)
        return FX_EINTERNAL;
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (strcmp(fx_errcode(all[i]), s) == 0)
            return all[i];
    return FX_EINTERNAL;
}

int fx_fail(char *msg, size_t msg_len, int code, const char *fmt, ...)
{
    if (msg && msg_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msg_len, fmt, ap);
        va_end(ap);
    }
    return code;
}
