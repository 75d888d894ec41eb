/* Schedule facts (docs/numerics.md) and SHA-256 test vectors. */
#include <math.h>
#include <string.h>

#include "../../core/err.h"
#include "../../core/sched.h"
#include "../../core/sha256.h"
#include "unit.h"

static void check_close(float got, double want, double tol, const char *what)
{
    if (fabs((double)got - want) <= tol) {
        unit_passed++;
    } else {
        unit_failed++;
        fprintf(stderr, "FAIL %s: got %.9g, want %.9g\n", what, (double)got, want);
    }
}

static void test_mu(void)
{
    CHECK(fabs(sched_mu(4096) - 1.15) < 1e-12);
    CHECK(fabs(sched_mu(256) - 0.5) < 1e-12);
    CHECK(fabs(sched_mu(4080) - 1.147292) < 1e-6);
}

static void test_sigmas(void)
{
    float s[101];
    CHECK_INT(sched_sigmas(28, 4096, s), 0);
    check_close(s[0], 1.0, 0.0, "sigma 0");
    check_close(s[1], 0.988409, 1e-6, "sigma 1");
    check_close(s[2], 0.976222, 1e-6, "sigma 2");
    check_close(s[3], 0.963394, 1e-6, "sigma 3");
    check_close(s[27], 0.104721, 1e-6, "sigma 27");
    check_close(s[28], 0.0, 0.0, "sigma 28");
    for (int i = 0; i < 28; i++)
        CHECK(s[i + 1] < s[i]);
    CHECK_INT(sched_sigmas(1, 256, s), 0);
    check_close(s[0], 1.0, 0.0, "one step, sigma 0");
    check_close(s[1], 0.0, 0.0, "one step, sigma 1");
    CHECK_INT(sched_sigmas(0, 256, s), FX_EINVAL);
    CHECK_INT(sched_sigmas(4, 256, NULL), FX_EINVAL);
    /* bit pattern of the Python reference, sampling.schedule(4, 256)[3] (the float32
     * torch.linspace form would give 0x3eb59629) */
    uint32_t bits;
    CHECK_INT(sched_sigmas(4, 256, s), 0);
    memcpy(&bits, &s[3], 4);
    CHECK_INT(bits, 0x3eb59628);
}

static void test_sha256(void)
{
    char hex[65];
    CHECK(sha256_hex("", 0, hex) == 0);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha256_hex("abc", 3, hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_hex(two, strlen(two), hex);
    CHECK_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    /* a million 'a', fed in uneven pieces */
    struct sha256 c;
    uint8_t d[32];
    char a[997];
    memset(a, 'a', sizeof(a));
    CHECK(sha256_init(&c) == 0);
    size_t left = 1000000;
    while (left > 0) {
        size_t k = left < sizeof(a) ? left : sizeof(a);
        CHECK(sha256_update(&c, a, k) == 0);
        left -= k;
    }
    CHECK(sha256_final(&c, d) == 0);
    sha256_to_hex(d, hex);
    CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    test_mu();
    test_sigmas();
    test_sha256();
    return unit_done();
}
