/*
 * soak.c — long-running mixed load on the C runtime, with leak and RSS
 * tracking. Usage: soak [seconds] (default 300; `make soak SOAK_SECONDS=N`).
 *
 * 8 worker threads run a random mix of: set/get/reset in their current
 * context, copy_current + enter/exit, enter/exit of shared contexts (which
 * others read concurrently: lookup, count, contains, iterate, equal, copy),
 * cctx_context_run, claims with explicit-context writes, shared and private
 * threading.local objects (get/set/delete, create/release churn), variable
 * churn, cctx_reclaim and cctx_thread_cleanup. A churn thread starts short-
 * lived threads continuously (cctx_thread_create and plain pthread_create,
 * two at a time) that run a few of the same operations and exit.
 *
 * Every second the main thread prints live counted values, the runtime's
 * live allocations (cctx__live_allocations) and RSS (/proc/self/statm).
 *
 * Passes when (1) every operation returned what it should, (2) after the
 * threads stop and everything is released, live values and live runtime
 * allocations are back at their start, and (3) RSS is flat: the median of
 * the last 10 samples is within 10% + 2 MiB of the median of the 10
 * samples that follow the warm-up (the first max(10 s, 20%) of the run).
 * The last line is "soak: 1 passed, 0 failed" or "soak: 0 passed, 1 failed".
 */
#include "contextcore.h"
#include "contextcore_binding.h"
#include "testing.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 8
#define NSV 16 /* shared variables */
#define NSC 4  /* shared contexts */
#define NSL 4  /* shared locals */

/* ------------------------------------------------------------ values */

typedef struct sv {
    atomic_int refs;
    long id;
} sv;

static atomic_long values_live;
static atomic_long failures;
static atomic_long ops_done;
static atomic_long threads_started;
static atomic_int stop;

static void sv_retain(void *p) { atomic_fetch_add(&((sv *)p)->refs, 1); }
static void sv_release(void *p)
{
    sv *v = p;
    int left = atomic_fetch_sub(&v->refs, 1) - 1;
    if (left < 0) {
        fprintf(stderr, "soak: value %ld released more than retained\n", v->id);
        abort();
    }
    if (left == 0) {
        atomic_fetch_sub(&values_live, 1);
        free(v);
    }
}
static const cctx_value_ops sv_ops = { sv_retain, sv_release };

static sv *sv_new(long id)
{
    sv *v = malloc(sizeof *v);
    if (v == NULL)
        abort();
    atomic_init(&v->refs, 1);
    v->id = id;
    atomic_fetch_add(&values_live, 1);
    return v;
}

#define FAIL(...)                                              \
    do {                                                       \
        if (atomic_fetch_add(&failures, 1) < 20) {             \
            fprintf(stderr, "soak: %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                      \
            fputc('\n', stderr);                               \
        }                                                      \
    } while (0)
#define EXPECT_ST(expr, want)                                                  \
    do {                                                                       \
        cctx_status st_ = (expr);                                              \
        if (st_ != (want))                                                     \
            FAIL("%s -> %s (want %s)", #expr, cctx_strerror(st_),              \
                 cctx_strerror(want));                                         \
    } while (0)

/* ------------------------------------------------------------ shared */

static cctx_var *svars[NSV];
static cctx_context *sctx[NSC];
static cctx_local *slocals[NSL];

static cctx_status local_init(void *userdata, void **out)
{
    (void)userdata;
    *out = sv_new(-1);
    return CCTX_OK;
}

static uint64_t rnd(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 2685821657736338717ull;
}

/* ------------------------------------------------------------ operations */

static __thread bool in_created_thread;

static void run_body(void *p)
{
    cctx_var *v = svars[0];
    sv *x = p;
    void *out;
    EXPECT_ST(cctx_var_set(v, x, NULL), CCTX_OK);
    EXPECT_ST(cctx_var_get(v, &out), CCTX_OK);
    if (out != x)
        FAIL("run: get after set");
}

static void one_op(uint64_t *rng, long id)
{
    uint64_t r = rnd(rng);
    cctx_var *v = svars[r % NSV];
    r >>= 8;
    void *out;
    switch (r % 12) {
    case 0: { /* set / get / reset in the current context */
        sv *x = sv_new(id);
        cctx_token *t;
        void *before = NULL;
        cctx_status had = cctx_var_get(v, &before);
        EXPECT_ST(cctx_var_set(v, x, &t), CCTX_OK);
        EXPECT_ST(cctx_var_get(v, &out), CCTX_OK);
        if (out != x)
            FAIL("get after set");
        if ((r >> 4) & 1) {
            EXPECT_ST(cctx_var_reset(v, t), CCTX_OK);
            void *after = NULL;
            cctx_status now = cctx_var_get(v, &after);
            if (now != had || (had == CCTX_OK && after != before))
                FAIL("reset did not restore");
        }
        cctx_token_release(t);
        sv_release(x);
        break;
    }
    case 1: { /* copy_current, enter, write, exit */
        cctx_context *c;
        EXPECT_ST(cctx_context_copy_current(&c), CCTX_OK);
        EXPECT_ST(cctx_context_enter(c), CCTX_OK);
        sv *x = sv_new(id);
        EXPECT_ST(cctx_var_set(v, x, NULL), CCTX_OK);
        sv_release(x);
        EXPECT_ST(cctx_context_exit(c), CCTX_OK);
        if (!cctx_context_contains(c, v))
            FAIL("copy lost its write");
        cctx_context_release(c);
        break;
    }
    case 2: { /* enter a shared context others read */
        cctx_context *c = sctx[(r >> 4) % NSC];
        cctx_status st = cctx_context_enter(c);
        if (st == CCTX_ALREADY_ENTERED)
            break;
        EXPECT_ST(st, CCTX_OK);
        if (st != CCTX_OK)
            break;
        for (int i = 0; i < 4; i++) {
            sv *x = sv_new(id);
            cctx_token *t;
            EXPECT_ST(cctx_var_set(svars[(r >> (8 + i)) % NSV], x, &t), CCTX_OK);
            if (i & 1)
                EXPECT_ST(cctx_var_reset(svars[(r >> (8 + i)) % NSV], t), CCTX_OK);
            cctx_token_release(t);
            sv_release(x);
        }
        EXPECT_ST(cctx_context_exit(c), CCTX_OK);
        break;
    }
    case 3: { /* read shared contexts from outside */
        cctx_context *c = sctx[(r >> 4) % NSC];
        if (cctx_context_lookup(c, v, &out) == CCTX_OK)
            cctx_var_release_value(v, out);
        (void)cctx_context_count(c);
        (void)cctx_context_contains(c, v);
        cctx_iter *it;
        EXPECT_ST(cctx_iter_new(c, &it), CCTX_OK);
        size_t n = 0;
        cctx_var *k;
        while (cctx_iter_next(it, &k, &out))
            n++;
        cctx_iter_free(it);
        if (n > NSV)
            FAIL("iteration saw %zu entries", n);
        cctx_context *cp;
        EXPECT_ST(cctx_context_copy(c, &cp), CCTX_OK);
        (void)cctx_context_equal(cp, c);
        cctx_context_release(cp);
        break;
    }
    case 4: { /* shared locals */
        cctx_local *l = slocals[(r >> 4) % NSL];
        switch ((r >> 8) % 3) {
        case 0: {
            cctx_status st = cctx_local_get(l, &out);
            if (st != CCTX_OK && st != CCTX_NOT_FOUND)
                FAIL("local get: %s", cctx_strerror(st));
            break;
        }
        case 1: {
            sv *x = sv_new(id);
            EXPECT_ST(cctx_local_set(l, x), CCTX_OK);
            EXPECT_ST(cctx_local_get(l, &out), CCTX_OK);
            if (out != x)
                FAIL("local get after set");
            sv_release(x);
            break;
        }
        default: {
            cctx_status st = cctx_local_delete(l);
            if (st != CCTX_OK && st != CCTX_NOT_FOUND)
                FAIL("local delete: %s", cctx_strerror(st));
        }
        }
        break;
    }
    case 5: { /* private local churn (index reuse across threads) */
        cctx_local *l;
        EXPECT_ST(cctx_local_new(&sv_ops, (r >> 4) & 1 ? local_init : NULL, NULL, &l), CCTX_OK);
        sv *x = sv_new(id);
        EXPECT_ST(cctx_local_set(l, x), CCTX_OK);
        sv_release(x);
        EXPECT_ST(cctx_local_get(l, &out), CCTX_OK);
        cctx_local_release(l);
        break;
    }
    case 6: { /* variable churn */
        cctx_var *nv;
        EXPECT_ST(cctx_var_new_ex("churn", &sv_ops, false, NULL,
                                  (r >> 4) & 1 ? CCTX_VAR_NOT_INHERITED : 0, &nv),
                  CCTX_OK);
        sv *x = sv_new(id);
        EXPECT_ST(cctx_var_set(nv, x, NULL), CCTX_OK);
        sv_release(x);
        cctx_var_release(nv); /* the current context keeps it alive */
        break;
    }
    case 7: { /* run */
        cctx_context *c;
        EXPECT_ST(cctx_context_new(&c), CCTX_OK);
        sv *x = sv_new(id);
        EXPECT_ST(cctx_context_run(c, run_body, x), CCTX_OK);
        sv_release(x);
        if (cctx_context_count(c) != 1)
            FAIL("run: count");
        cctx_context_release(c);
        break;
    }
    case 8: { /* claim a copy, write explicitly, unclaim */
        cctx_context *c;
        EXPECT_ST(cctx_context_copy(sctx[(r >> 4) % NSC], &c), CCTX_OK);
        EXPECT_ST(cctx_context_claim(c), CCTX_OK);
        sv *x = sv_new(id);
        cctx_token *t;
        EXPECT_ST(cctx_context_set(c, v, x, &t), CCTX_OK);
        EXPECT_ST(cctx_context_reset(c, v, t), CCTX_OK);
        EXPECT_ST(cctx_context_set(c, v, x, NULL), CCTX_OK);
        EXPECT_ST(cctx_context_delete(c, v), CCTX_OK);
        cctx_token_release(t);
        sv_release(x);
        EXPECT_ST(cctx_context_unclaim(c), CCTX_OK);
        cctx_context_release(c);
        break;
    }
    case 9: /* drop what this thread holds; state is created again */
        if (((r >> 4) & 63) == 0)
            /* A thread started by cctx_thread_create runs inside its
             * inherited context: cleanup refuses, changing nothing. */
            EXPECT_ST(cctx_thread_cleanup(), in_created_thread ? CCTX_ALREADY_ENTERED : CCTX_OK);
        break;
    case 10:
        if (((r >> 4) & 255) == 0)
            cctx_reclaim();
        break;
    default: {
        cctx_status st = cctx_var_get(v, &out);
        if (st != CCTX_OK && st != CCTX_NOT_FOUND)
            FAIL("get: %s", cctx_strerror(st));
    }
    }
    atomic_fetch_add(&ops_done, 1);
}

static void *worker(void *p)
{
    long id = (long)(intptr_t)p;
    uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1);
    while (!atomic_load(&stop))
        for (int i = 0; i < 64; i++)
            one_op(&rng, id);
    return NULL;
}

static void *short_lived(void *p)
{
    long id = (long)(intptr_t)p;
    in_created_thread = id & 1; /* odd ids: started by cctx_thread_create */
    uint64_t rng = 0xd1b54a32d192ed03ull * (uint64_t)(id + 7);
    for (int i = 0; i < 32; i++)
        one_op(&rng, id);
    return NULL;
}

static void *churn(void *p)
{
    (void)p;
    long n = 0;
    while (!atomic_load(&stop)) {
        pthread_t th[2];
        for (int i = 0; i < 2; i++, n++) {
            if (n & 1) {
                EXPECT_ST(cctx_thread_create(&th[i], NULL, short_lived, (void *)(intptr_t)(n + 100)),
                          CCTX_OK);
            } else if (pthread_create(&th[i], NULL, short_lived, (void *)(intptr_t)(n + 100)) != 0) {
                FAIL("pthread_create");
            }
        }
        for (int i = 0; i < 2; i++)
            pthread_join(th[i], NULL);
        atomic_fetch_add(&threads_started, 2);
    }
    return NULL;
}

/* ------------------------------------------------------------ sampling */

static double rss_mib(void)
{
    long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *xs, int n)
{
    double tmp[n > 0 ? n : 1];
    memcpy(tmp, xs, (size_t)n * sizeof *xs);
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_double);
    return n == 0 ? 0 : (n & 1) ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    long seconds = argc > 1 ? strtol(argv[1], NULL, 10) : 300;
    if (seconds < 20) {
        fprintf(stderr, "soak: run for at least 20 seconds (RSS needs a baseline)\n");
        seconds = 20;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    (void)cctx_thread_cleanup();
    const long allocs_start = cctx__live_allocations();
    const long values_start = atomic_load(&values_live);

    for (int i = 0; i < NSV; i++) {
        cctx_status st;
        if (i < 3)
            st = cctx__var_new_with_hash("collide", &sv_ops, 0x40u * (uint32_t)(i & 1), &svars[i]);
        else if (i == 3)
            st = cctx_var_new_ex("noinherit", &sv_ops, false, NULL, CCTX_VAR_NOT_INHERITED, &svars[i]);
        else
            st = cctx_var_new("shared", &sv_ops, &svars[i]);
        if (st != CCTX_OK)
            abort();
    }
    for (int i = 0; i < NSC; i++) {
        if (cctx_context_new(&sctx[i]) != CCTX_OK)
            abort();
        for (int k = 0; k < NSV; k += 2) {
            sv *x = sv_new(k);
            EXPECT_ST(cctx_context_set(sctx[i], svars[k], x, NULL), CCTX_OK);
            sv_release(x);
        }
    }
    for (int i = 0; i < NSL; i++)
        EXPECT_ST(cctx_local_new(&sv_ops, i & 1 ? local_init : NULL, NULL, &slocals[i]), CCTX_OK);

    printf("soak: %d workers + thread churn for %ld s; start: values=0 allocs=%ld; with the "
           "shared fixtures: values=%ld allocs=%ld rss=%.1fMiB\n",
           WORKERS, seconds, allocs_start, atomic_load(&values_live) - values_start,
           cctx__live_allocations(), rss_mib());

    pthread_t w[WORKERS], ch;
    for (long i = 0; i < WORKERS; i++)
        if (pthread_create(&w[i], NULL, worker, (void *)(intptr_t)i) != 0)
            abort();
    if (pthread_create(&ch, NULL, churn, NULL) != 0)
        abort();

    double *rss = calloc((size_t)seconds + 1, sizeof *rss);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long s = 1; s <= seconds; s++) {
        struct timespec next = { t0.tv_sec + s, t0.tv_nsec };
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) != 0) {
        }
        rss[s] = rss_mib();
        printf("soak: t=%4lds values=%6ld allocs=%7ld rss=%7.1fMiB ops=%ld threads=%ld\n", s,
               atomic_load(&values_live) - values_start, cctx__live_allocations(), rss[s],
               atomic_load(&ops_done), atomic_load(&threads_started));
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(w[i], NULL);
    pthread_join(ch, NULL);

    for (int i = 0; i < NSL; i++)
        cctx_local_release(slocals[i]);
    for (int i = 0; i < NSC; i++)
        cctx_context_release(sctx[i]);
    for (int i = 0; i < NSV; i++)
        cctx_var_release(svars[i]);
    (void)cctx_thread_cleanup();
    cctx_reclaim();

    long values_end = atomic_load(&values_live) - values_start;
    long allocs_end = cctx__live_allocations();
    long warm = seconds / 5 > 10 ? seconds / 5 : 10;
    int nbase = (int)(seconds - warm < 10 ? seconds - warm : 10);
    double base = median(&rss[warm + 1], nbase);
    double last = median(&rss[seconds - 9], 10);
    double limit = base * 1.10 + 2.0;
    bool ok = true;
    printf("soak: %ld ops, %ld short-lived threads, %ld check failures\n",
           atomic_load(&ops_done), atomic_load(&threads_started), atomic_load(&failures));
    printf("soak: end: values=%ld (start 0) allocs=%ld (start %ld)\n", values_end, allocs_end,
           allocs_start);
    printf("soak: rss after warm-up (median of t=%ld..%lds) %.1f MiB, last 10 s median %.1f MiB, "
           "limit %.1f MiB\n", warm + 1, warm + nbase, base, last, limit);
    if (atomic_load(&failures) != 0) {
        printf("soak: FAIL: %ld operations returned something unexpected\n",
               atomic_load(&failures));
        ok = false;
    }
    if (values_end != 0 || allocs_end != allocs_start) {
        printf("soak: FAIL: live objects did not return to the start\n");
        ok = false;
    }
    if (last > limit) {
        printf("soak: FAIL: RSS grew\n");
        ok = false;
    }
    free(rss);
    printf("soak: %d passed, %d failed\n", ok ? 1 : 0, ok ? 0 : 1);
    return ok ? 0 : 1;
}
