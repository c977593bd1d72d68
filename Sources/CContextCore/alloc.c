/*
 * alloc.c — allocation with a test-only failure countdown and live counts.
 *
 * Invariant: cctx__live_allocations() equals the number of blocks returned
 * by cctx_alloc* and not yet passed to cctx_dealloc.
 */
#include "internal.h"

#include "atomic.h"
#include <stdlib.h>
#include <string.h>

/* 0: disarmed. n > 0: the n-th allocation from now fails (then disarmed). */
static int fail_countdown;
static int live_allocations;
static int failures_injected;

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
        cctx_inc_int(&live_allocations);
    return p;
}

void *cctx_alloc_zeroed(size_t size)
{
    if (should_fail())
        return NULL;
    void *p = calloc(1, size);
    if (p != NULL)
        cctx_inc_int(&live_allocations);
    return p;
}

void *cctx_realloc(void *ptr, size_t size)
{
    if (should_fail())
        return NULL;
    void *p = realloc(ptr, size);
    if (p != NULL && ptr == NULL)
        cctx_inc_int(&live_allocations);
    return p;
}

void cctx_dealloc(void *ptr)
{
    if (ptr == NULL)
        return;
    cctx_dec_int(&live_allocations);
    free(ptr);
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
    return cctx_load_int(&live_allocations);
}
