/*
 * test_support.c — see test_support.h.
 */
#include "test_support.h"

#include <stdlib.h>

static long live, retains, releases;

static void tv_retain_cb(void *p)
{
    tv_value *v = p;
    __atomic_add_fetch(&v->refcnt, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&retains, 1, __ATOMIC_SEQ_CST);
}

static void tv_release_cb(void *p)
{
    tv_value *v = p;
    __atomic_add_fetch(&releases, 1, __ATOMIC_SEQ_CST);
    int left = __atomic_sub_fetch(&v->refcnt, 1, __ATOMIC_SEQ_CST);
    if (left < 0) {
        fprintf(stderr, "test value %ld released more often than retained\n", v->id);
        abort();
    }
    if (left == 0) {
        __atomic_sub_fetch(&live, 1, __ATOMIC_SEQ_CST);
        free(v);
    }
}

const cctx_value_ops tv_ops = { tv_retain_cb, tv_release_cb };

tv_value *tv_new(long id)
{
    tv_value *v = malloc(sizeof *v);
    if (v == NULL)
        abort();
    v->refcnt = 1;
    v->id = id;
    __atomic_add_fetch(&live, 1, __ATOMIC_SEQ_CST);
    return v;
}

void tv_drop(tv_value *v)
{
    if (v != NULL)
        tv_release_cb(v);
    __atomic_sub_fetch(&releases, 1, __ATOMIC_SEQ_CST); /* not a callback */
}

long tv_live(void) { return __atomic_load_n(&live, __ATOMIC_SEQ_CST); }
long tv_retains(void) { return __atomic_load_n(&retains, __ATOMIC_SEQ_CST); }
long tv_releases(void) { return __atomic_load_n(&releases, __ATOMIC_SEQ_CST); }

/* Leak checks compare cctx__live_allocations(): refuse to run against a
 * library built without allocation accounting, where they would pass
 * without checking anything. */
__attribute__((constructor)) static void require_accounting(void)
{
    if (cctx__live_allocations() < 0) {
        fprintf(stderr, "these tests need a library built with -DCCTX_ALLOC_ACCOUNTING "
                        "(make builds build/test/libcontextcore.a so)\n");
        exit(2);
    }
}

long scaled(long n)
{
    const char *s = getenv("CCTX_TEST_SCALE");
    long pct = s ? strtol(s, NULL, 10) : 100;
    if (pct <= 0)
        pct = 100;
    long r = n * pct / 100;
    return r < 1 ? 1 : r;
}

uint64_t rng_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 2685821657736338717ull;
}
