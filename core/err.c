/* err.c - messages for the error list in err.h. */
#include "err.h"

const char *fx_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
#define FX_ERR_MSG_(name, value, msg)                                                              \
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
#define FX_ERR_NAME_(name, value, msg)                                                             \
    case name:                                                                                     \
        return #name;
        FX_ERRNO_MAP(FX_ERR_NAME_)
#undef FX_ERR_NAME_
    }
    return "FX_EUNKNOWN";
}
