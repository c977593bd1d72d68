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

/*
 * A per-thread cache of same-size blocks (a free list), for objects that
 * are made and dropped at a high rate on one thread (contexts from
 * copy_current). Taking a block from the cache still consults the failure
 * countdown and the live counts exactly as cctx_alloc/cctx_dealloc do, so
 * fault injection and leak checks see no difference: a cached block is
 * not live. The caller owns the cache's storage (a __thread variable) and
 * must drain it before the thread's storage goes away.
 */
typedef struct cctx_block_cache {
    void *head; /* first free block; each block's first word links the next */
    unsigned count;
} cctx_block_cache;

/* How many blocks a cache keeps at most; the rest go back to malloc. */
#define CCTX_BLOCK_CACHE_MAX 16

/* Out of line: a take from an empty cache or while the failure countdown
 * is armed. */
void *cctx_alloc_cached_slow(cctx_block_cache *cache, size_t size) __attribute__((visibility("hidden")));

/* For the inline paths below: alloc.c's failure countdown (0: disarmed)
 * and, with accounting, its live count. */
extern int cctx_alloc_fail_countdown __attribute__((visibility("hidden")));
#ifdef CCTX_ALLOC_ACCOUNTING
extern int cctx_alloc_live __attribute__((visibility("hidden")));
#define CCTX_ALLOC_LIVE_ADD(d) ((void)__atomic_add_fetch(&cctx_alloc_live, (d), __ATOMIC_SEQ_CST))
#else
#define CCTX_ALLOC_LIVE_ADD(d) ((void)0)
#endif

/* A block of `size` bytes (>= sizeof(void *)): from `cache` if it holds
 * one, else from cctx_alloc. NULL on (injected) failure. Inline: a copy
 * of a context takes its object here. */
static inline void *cctx_alloc_cached(cctx_block_cache *cache, size_t size)
{
    void *p = cache->head;
    if (__builtin_expect(p == NULL || __atomic_load_n(&cctx_alloc_fail_countdown,
                                                      __ATOMIC_RELAXED) != 0, 0))
        return cctx_alloc_cached_slow(cache, size);
    cache->head = *(void **)p;
    cache->count--;
    CCTX_ALLOC_LIVE_ADD(1);
    return p;
}

/* cctx_alloc_cached for a caller that has seen `cache` non-empty and the
 * failure countdown disarmed (cctx_alloc_fail_countdown == 0). */
static inline void *cctx_alloc_cached_checked(cctx_block_cache *cache)
{
    void *p = cache->head;
    cache->head = *(void **)p;
    cache->count--;
    CCTX_ALLOC_LIVE_ADD(1);
    return p;
}

/* Gives `ptr` (not NULL) back to `cache`, or frees it when the cache is
 * full or `cache` is NULL. */
static inline void cctx_dealloc_cached(cctx_block_cache *cache, void *ptr)
{
    if (__builtin_expect(cache == NULL || cache->count >= CCTX_BLOCK_CACHE_MAX, 0)) {
        cctx_dealloc(ptr);
        return;
    }
    CCTX_ALLOC_LIVE_ADD(-1); /* a cached block is not live */
    *(void **)ptr = cache->head;
    cache->head = ptr;
    cache->count++;
}

/* Frees every block in `cache`. */
void cctx_block_cache_drain(cctx_block_cache *cache);

#endif
