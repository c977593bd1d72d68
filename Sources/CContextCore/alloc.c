/*
 * alloc.c — allocation with a test-only failure countdown and live counts.
 *
 * Live counts are compiled in only with CCTX_ALLOC_ACCOUNTING (the Makefile
 * builds the library that the C tests, fuzzer and soak link that way): one
 * process-wide counter written by every allocation and free is a cache line
 * all threads fight over, which no production build should pay for. With
 * accounting, cctx__live_allocations() equals the number of blocks returned
 * by cctx_alloc* and not yet passed to cctx_dealloc; without, it is -1.
 */
#include "internal.h"

#include "atomic.h"
#include <stdlib.h>
#include <string.h>

/* 0: disarmed. n > 0: the n-th allocation from now fails (then disarmed). */
int cctx_alloc_fail_countdown;
#define fail_countdown cctx_alloc_fail_countdown
#ifdef CCTX_ALLOC_ACCOUNTING
int cctx_alloc_live; /* also counted by alloc.h's inline cache paths */
#define live_allocations cctx_alloc_live
#endif
static int failures_injected;

#ifdef CCTX_ALLOC_ACCOUNTING
#define COUNT_ALLOCATION() cctx_inc_int(&live_allocations)
#define COUNT_DEALLOCATION() cctx_dec_int(&live_allocations)
#else
#define COUNT_ALLOCATION() ((void)0)
#define COUNT_DEALLOCATION() ((void)0)
#endif

static int should_fail(void)
{
    /* Fast path: one relaxed load. The countdown is armed only by tests. */
    if (cctx_load_int(&fail_countdown) == 0)
        return 0;
    int left = cctx_faa_int(&fail_countdown, -1);
    if (left == 1) {
        cctx_inc_int(&failures_injected);
        return 1;
    }
    if (left <= 0) /* raced past zero: put it back, never fail twice */
        cctx_store_int(&fail_countdown, 0);
    return 0;
}

void *cctx_alloc(size_t size)
{
    if (should_fail())
        return NULL;
    void *p = malloc(size);
    if (p != NULL)
        COUNT_ALLOCATION();
    return p;
}

void *cctx_alloc_zeroed(size_t size)
{
    if (should_fail())
        return NULL;
    /* malloc + memset, not calloc: glibc's calloc bypasses the per-thread
     * cache on threads other than the main one (extra atomics). */
    void *p = malloc(size);
    if (p != NULL) {
        memset(p, 0, size);
        COUNT_ALLOCATION();
    }
    return p;
}

void *cctx_realloc(void *ptr, size_t size)
{
    if (should_fail())
        return NULL;
    void *p = realloc(ptr, size);
    if (p != NULL && ptr == NULL)
        COUNT_ALLOCATION();
    return p;
}

void cctx_dealloc(void *ptr)
{
    if (ptr == NULL)
        return;
    COUNT_DEALLOCATION();
    free(ptr);
}

void *cctx_alloc_cached_slow(cctx_block_cache *cache, size_t size)
{
    void *p = cache->head;
    if (p == NULL)
        return cctx_alloc(size);
    /* An injected failure fails here too: a test that walks every
     * allocation of an operation must not depend on what a cache holds. */
    if (should_fail())
        return NULL;
    cache->head = *(void **)p;
    cache->count--;
    COUNT_ALLOCATION();
    return p;
}

void cctx_block_cache_drain(cctx_block_cache *cache)
{
    void *p = cache->head;
    cache->head = NULL;
    cache->count = 0;
    while (p != NULL) {
        void *next = *(void **)p;
        free(p); /* already uncounted when cached */
        p = next;
    }
}

void cctx__fail_allocation(long nth)
{
    cctx_store_int(&fail_countdown, nth < 0 ? 0 : (int)nth);
}

long cctx__allocation_failures(void)
{
    return cctx_load_int(&failures_injected);
}

long cctx__live_allocations(void)
{
#ifdef CCTX_ALLOC_ACCOUNTING
    return cctx_load_int(&live_allocations);
#else
    return -1;
#endif
}
