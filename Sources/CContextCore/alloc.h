/*
 * alloc.h — every allocation of the runtime goes through here.
 *
 * Why: one place to inject allocation failures (tests prove that an
 * out-of-memory at any allocation leaves every structure unchanged) and to
 * count live allocations (tests prove that nothing leaks). The counters are
 * Concurrency Kit atomics; the fault countdown is checked with one relaxed
 * load when disarmed.
 */
#ifndef CCTX_ALLOC_H
#define CCTX_ALLOC_H

#ifndef CCTX_BUILDING_CORE
#error "alloc.h is internal to CContextCore"
#endif

#include <stddef.h>

/* malloc that may fail on purpose (see testing.h). Returns NULL on failure. */
void *cctx_alloc(size_t size);
/* calloc-like: zeroed memory. */
void *cctx_alloc_zeroed(size_t size);
/* realloc through the same hook; on failure the old block is untouched. */
void *cctx_realloc(void *ptr, size_t size);
/* free; NULL is ignored. */
void cctx_dealloc(void *ptr);

#endif
