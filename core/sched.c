#include "sched.h"

#include <math.h>

#include "err.h"

#define BASE_SEQ 256.0
#define BASE_SHIFT 0.5
#define MAX_SEQ 4096.0
#define MAX_SHIFT 1.15

double sched_mu(long image_tokens)
{
    double m = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ - BASE_SEQ);
    return (double)image_tokens * m + (BASE_SHIFT - m * BASE_SEQ);
}

int sched_sigmas(int steps, long image_tokens, float *out)
{
    if (steps < 1 || out == NULL)
        return FX_EINVAL;
    /* diffusers' form: numpy's float64 linspace(1, 1/N, N) (i * step + start, the last
     * value set to the end), rounded to float32; the shift in float32; then a final 0.
     * Python's float e^mu meets a float32 array: it is rounded to float32 first. */
    double start = 1.0, stop = 1.0 / steps;
    double step = steps > 1 ? (stop - start) / (double)(steps - 1) : 0.0;
    float e = (float)exp(sched_mu(image_tokens));
    for (int i = 0; i < steps; i++) {
        double y = (double)i * step;
        y += start;
        if (i == steps - 1 && steps > 1)
            y = stop;
        float t = (float)y;
        out[i] = e / (e + (1.0f / t - 1.0f));
    }
    out[steps] = 0.0f;
    return 0;
}
