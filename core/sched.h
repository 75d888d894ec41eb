/*
 * sched.h - the FLUX.1 dev sampling schedule (docs/numerics.md, "Schedule").
 *
 * N + 1 sigmas from 1 to 0, as diffusers computes them: t = float64 linspace(1, 1/N, N) rounded
 * to float32, sigma = e^mu / (e^mu + (1 / t - 1)) in float32 with mu linear in the number of
 * image tokens (256 -> 0.5, 4096 -> 1.15), then a final 0.  The Python reference
 * (export/fluxexport/sampling.py) computes the same steps, so the two agree bit for bit.
 * Pure functions, thread-safe.
 */
#ifndef FX_SCHED_H
#define FX_SCHED_H

#include <stddef.h>

/* The shift mu for a number of packed image tokens ((H/16) * (W/16)). */
double sched_mu(long image_tokens);

/*
 * Writes steps + 1 sigmas into out[0..steps].  Returns 0, or FX_EINVAL when steps < 1 or
 * out is NULL.
 */
int sched_sigmas(int steps, long image_tokens, float *out);

#endif
