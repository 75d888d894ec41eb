/* test_err.c - the error list: codes are negative and distinct, every code has a message. */
#include "../../core/err.h"
#include "unit.h"

static const int codes[] = {
#define X_(name, value, msg) name,
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
        for (size_t j = i + 1; j < n; j++)
            CHECK(codes[i] != codes[j]);
    }
    CHECK_STR(fx_strerror(0), "success");
    CHECK_STR(fx_strerror(FX_ENOMEM), "out of memory");
    CHECK_STR(fx_strerror(12345), "unknown error");
    CHECK_STR(fx_errname(FX_EFORMAT), "FX_EFORMAT");
    CHECK_STR(fx_errname(0), "FX_OK");
    CHECK_STR(fx_errname(-9999), "FX_EUNKNOWN");
    return unit_done();
}
