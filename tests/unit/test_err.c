/* test_err.c - the error list: codes are negative and distinct, every code has a message. */
#include "../../core/err.h"
#include "unit.h"

static const int codes[] = {
#define X_(name, value, msg, code) name,
    FX_ERRNO_MAP(X_)
#undef X_
};

int main(void)
{
    size_t n = sizeof(codes) / sizeof(codes[0]);

    for (size_t i = 0; i < n; i++) {
        CHECK(codes[i] < 0);
        CHECK(strcmp(fx_strerror(codes[i]), "unknown error") != 0);
        CHECK(strncmp(fx_errname(codes[i]), "FX_E", 4) == 0);
        CHECK_INT(fx_errcode_parse(fx_errcode(codes[i])), codes[i]);
        for (size_t j = i + 1; j < n; j++) {
            CHECK(codes[i] != codes[j]);
            CHECK(strcmp(fx_errcode(codes[i]), fx_errcode(codes[j])) != 0);
        }
    }
    CHECK_STR(fx_strerror(0), "success");
    CHECK_STR(fx_strerror(FX_ENOMEM), "out of memory");
    CHECK_STR(fx_strerror(12345), "unknown error");
    CHECK_STR(fx_errname(FX_EFORMAT), "FX_EFORMAT");
    CHECK_STR(fx_errname(0), "FX_OK");
    CHECK_STR(fx_errname(-9999), "FX_EUNKNOWN");
    CHECK_STR(fx_errcode(FX_EFULL), "queue_full");
    CHECK_STR(fx_errcode(0), "ok");
    CHECK_STR(fx_errcode(-9999), "unknown");
    CHECK_INT(fx_errcode_parse("no_such_code"), FX_EINTERNAL);
    CHECK_INT(fx_errcode_parse(NULL), FX_EINTERNAL);
    return unit_done();
}
