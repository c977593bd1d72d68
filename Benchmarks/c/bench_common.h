/*
 * bench_common.h — the timing harness shared by bench_core.c and
 * bench_cpython.c, so both sides of every comparison are measured the same
 * way in the same run.
 *
 * Method, for every row:
 *   1. calibrate: double the iteration count until one loop takes at least
 *      BENCH_TARGET_NS (25 ms), so a loop lasts ~25–50 ms;
 *   2. warm up: run the loop once more, untimed;
 *   3. time BENCH_REPS (7) loops with clock_gettime(CLOCK_MONOTONIC);
 *   4. report the median and the min–max of ns per operation.
 * Loop bodies feed every result to BENCH_SINK (an empty asm statement that
 * claims to read the value), so nothing is optimised away and the sink
 * itself costs no instruction.
 *
 * Output: one TSV line per row on stdout,
 *   group  operation  impl  median  min  max  unit  note
 * read by scripts/bench/table.py. Progress goes to stderr.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef BENCH_REPS
#define BENCH_REPS 7
#endif
#define BENCH_TARGET_NS 25000000.0

#define BENCH_SINK(x) __asm__ volatile("" : : "g"(x) : "memory")
#define BENCH_NOINLINE __attribute__((noinline))
/* Helpers below: each program uses a subset. */
#define BENCH_FN __attribute__((unused)) static

typedef void (*bench_loop_fn)(void *arg, uint64_t iters);

typedef struct bench_result {
    double median, min, max; /* ns per op */
} bench_result;

static inline uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

BENCH_FN int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

BENCH_FN bench_result bench_summarise(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    bench_result r;
    r.median = (n & 1) ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
    r.min = v[0];
    r.max = v[n - 1];
    return r;
}

/* Iterations for one loop of ~25-50 ms (at least `min_iters`). */
BENCH_FN uint64_t bench_calibrate(bench_loop_fn fn, void *arg, uint64_t min_iters)
{
    uint64_t n = min_iters ? min_iters : 1;
    for (;;) {
        uint64_t t0 = bench_now_ns();
        fn(arg, n);
        double dt = (double)(bench_now_ns() - t0);
        if (dt >= BENCH_TARGET_NS || n >= (1ull << 40))
            return n;
        /* Jump close to the target once a loop is long enough to trust. */
        if (dt > 1e6)
            n = (uint64_t)((double)n * (BENCH_TARGET_NS * 1.1) / dt) + 1;
        else
            n *= 4;
    }
}

/* Times `fn`: calibrate, warm up, BENCH_REPS timed loops. */
BENCH_FN bench_result bench_time(bench_loop_fn fn, void *arg)
{
    uint64_t n = bench_calibrate(fn, arg, 16);
    fn(arg, n); /* warm-up */
    double v[BENCH_REPS];
    for (int r = 0; r < BENCH_REPS; r++) {
        uint64_t t0 = bench_now_ns();
        fn(arg, n);
        v[r] = (double)(bench_now_ns() - t0) / (double)n;
    }
    return bench_summarise(v, BENCH_REPS);
}

/* Times `fn` net of `base` (the same loop without the operation measured):
 * each repetition runs both with one iteration count and keeps the
 * difference, so drifts in machine load cancel as far as they can. */
BENCH_FN bench_result bench_time_net(bench_loop_fn fn, bench_loop_fn base, void *arg)
{
    uint64_t n = bench_calibrate(fn, arg, 16);
    fn(arg, n);
    base(arg, n);
    double v[BENCH_REPS];
    for (int r = 0; r < BENCH_REPS; r++) {
        uint64_t t0 = bench_now_ns();
        fn(arg, n);
        uint64_t t1 = bench_now_ns();
        base(arg, n);
        uint64_t t2 = bench_now_ns();
        double d = ((double)(t1 - t0) - (double)(t2 - t1)) / (double)n;
        v[r] = d;
    }
    return bench_summarise(v, BENCH_REPS);
}

BENCH_FN void bench_row(const char *group, const char *op, const char *impl,
                      bench_result r, const char *unit, const char *note)
{
    printf("%s\t%s\t%s\t%.3f\t%.3f\t%.3f\t%s\t%s\n", group, op, impl, r.median,
           r.min, r.max, unit, note ? note : "");
    fflush(stdout);
    fprintf(stderr, "  %-10s %-28s %-14s %10.2f %s  [%.2f .. %.2f]\n", group, op,
            impl, r.median, unit, r.min, r.max);
}

BENCH_FN void bench_skip(const char *group, const char *op, const char *impl,
                       const char *why)
{
    printf("%s\t%s\t%s\t\t\t\tskip\tskipped: %s\n", group, op, impl, why);
    fflush(stdout);
    fprintf(stderr, "  %-10s %-28s %-14s skipped: %s\n", group, op, impl, why);
}

/* A deterministic xorshift generator, for shuffles that are the same in
 * every program and every run. */
static inline uint64_t bench_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* A permutation of 0..n-1. */
BENCH_FN size_t *bench_shuffled(size_t n, uint64_t seed)
{
    size_t *p = malloc(n * sizeof *p);
    if (p == NULL) {
        perror("malloc");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = i;
    uint64_t s = seed | 1;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(bench_rand(&s) % i);
        size_t t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
    return p;
}

#endif
