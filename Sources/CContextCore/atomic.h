/*
 * atomic.h — the runtime's atomic operations: Concurrency Kit's ck_pr.
 *
 * Why a layer at all: ck_pr on x86-64 is inline assembly, which
 * ThreadSanitizer cannot see. Under TSan (and only there) the same
 * operations map to the compiler's __atomic builtins with the same ordering,
 * so that TSan checks the real happens-before edges instead of reporting
 * every published node as a race. Every other build uses ck_pr.
 *
 * Orderings: loads/stores named _acq/_rel carry acquire/release semantics
 * (on x86-64 ck_pr gives them for free, TSO); fas/cas/inc/dec are full
 * barriers.
 */
#ifndef CCTX_ATOMIC_H
#define CCTX_ATOMIC_H

#ifndef CCTX_BUILDING_CORE
#error "atomic.h is internal to CContextCore"
#endif

#if defined(__SANITIZE_THREAD__)
#define CCTX_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CCTX_TSAN 1
#endif
#endif

#include <ck_pr.h>

/* Counting build (make count-ops): every locked read-modify-write below
 * also bumps a per-thread counter, so that a driver can report locked
 * instructions per operation exactly instead of timing them. */
#ifdef CCTX_COUNT_LOCKED
extern __thread unsigned long cctx__locked_ops;
#define CCTX_LOCKED(x) (cctx__locked_ops++, (x))
#else
#define CCTX_LOCKED(x) (x)
#endif

#if defined(CCTX_TSAN)

/* ThreadSanitizer annotations for edges it cannot see (ck_epoch lives in
 * the uninstrumented libck.so): a reader's epoch section end releases, a
 * grace period completing acquires. */
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define CCTX_TSAN_ACQUIRE(p) __tsan_acquire((void *)(p))
#define CCTX_TSAN_RELEASE(p) __tsan_release((void *)(p))

#define cctx_load_ptr(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define cctx_store_ptr(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define cctx_fas_ptr(p, v) __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
#define cctx_cas_ptr(p, o, n) \
    __extension__({ __typeof__(*(p)) cctx_o_ = (o); \
        __atomic_compare_exchange_n((p), &cctx_o_, (n), false, \
            __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); })
#define cctx_load_uint(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define cctx_load_uint_relaxed(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define cctx_store_uint(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define cctx_inc_uint(p) ((void)__atomic_add_fetch((p), 1, __ATOMIC_SEQ_CST))
/* true when the count reached zero */
#define cctx_dec_uint_is_zero(p) (__atomic_sub_fetch((p), 1, __ATOMIC_SEQ_CST) == 0)
#define cctx_cas_uint(p, o, n) \
    __extension__({ unsigned cctx_o_ = (o); \
        __atomic_compare_exchange_n((p), &cctx_o_, (n), false, \
            __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); })
#define cctx_load_uintptr(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define cctx_store_uintptr(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define cctx_cas_uintptr(p, o, n) \
    __extension__({ uintptr_t cctx_o_ = (o); \
        __atomic_compare_exchange_n((p), &cctx_o_, (n), false, \
            __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); })
/* A read-modify-write rather than a fence: TSan does not model fences
 * (gcc warns), and on x86-64 a locked add is a full barrier all the same. */
static int cctx_tsan_fence_word __attribute__((unused));
#define cctx_fence_memory() ((void)__atomic_fetch_add(&cctx_tsan_fence_word, 0, __ATOMIC_SEQ_CST))
#define cctx_load_int(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define cctx_store_int(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define cctx_faa_int(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define cctx_faa_uint(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define cctx_faa_u64(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define cctx_inc_int(p) ((void)__atomic_add_fetch((p), 1, __ATOMIC_SEQ_CST))
#define cctx_dec_int(p) ((void)__atomic_sub_fetch((p), 1, __ATOMIC_SEQ_CST))

#else /* ck_pr */

#define CCTX_TSAN_ACQUIRE(p) ((void)0)
#define CCTX_TSAN_RELEASE(p) ((void)0)

#define cctx_load_ptr(p) ck_pr_load_ptr(p)
#define cctx_store_ptr(p, v) ck_pr_store_ptr((p), (v))
#define cctx_fas_ptr(p, v) CCTX_LOCKED(ck_pr_fas_ptr((p), (v)))
#define cctx_cas_ptr(p, o, n) CCTX_LOCKED(ck_pr_cas_ptr((p), (o), (n)))
#define cctx_load_uint(p) ck_pr_load_uint(p)
#define cctx_load_uint_relaxed(p) ck_pr_load_uint(p)
#define cctx_store_uint(p, v) ck_pr_store_uint((p), (v))
#define cctx_inc_uint(p) CCTX_LOCKED(ck_pr_inc_uint(p))
#define cctx_dec_uint_is_zero(p) __extension__({ bool cctx_z_; \
        CCTX_LOCKED(ck_pr_dec_uint_zero((p), &cctx_z_)); cctx_z_; })
#define cctx_cas_uint(p, o, n) CCTX_LOCKED(ck_pr_cas_uint((p), (o), (n)))
/* uintptr_t and uint64_t are the same type on the 64-bit targets CK's
 * 64-bit operations exist for. */
_Static_assert(sizeof(uintptr_t) == sizeof(uint64_t), "64-bit targets only");
#define cctx_load_uintptr(p) ((uintptr_t)ck_pr_load_64((uint64_t *)(p)))
#define cctx_store_uintptr(p, v) ck_pr_store_64((uint64_t *)(p), (uint64_t)(v))
#define cctx_cas_uintptr(p, o, n) \
    CCTX_LOCKED(ck_pr_cas_64((uint64_t *)(p), (uint64_t)(o), (uint64_t)(n)))
#define cctx_fence_memory() CCTX_LOCKED(ck_pr_fence_memory())
#define cctx_load_int(p) ck_pr_load_int(p)
#define cctx_store_int(p, v) ck_pr_store_int((p), (v))
#define cctx_faa_int(p, v) CCTX_LOCKED(ck_pr_faa_int((p), (v)))
#define cctx_faa_uint(p, v) CCTX_LOCKED(ck_pr_faa_uint((p), (v)))
#define cctx_faa_u64(p, v) CCTX_LOCKED(ck_pr_faa_64((p), (v)))
#define cctx_inc_int(p) CCTX_LOCKED(ck_pr_inc_int(p))
#define cctx_dec_int(p) CCTX_LOCKED(ck_pr_dec_int(p))

#endif

#endif
