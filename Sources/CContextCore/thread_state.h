/*
 * thread_state.h — what each OS thread owns (cctx_thread_state).
 *
 * One pthread_key for the whole library holds each thread's state; its
 * destructor releases everything at thread exit. A `__thread` pointer caches
 * the same state so that the hot path reads it with one TLS load instead of
 * a pthread_getspecific call. The key is created once and never deleted, so
 * it outlives every value stored under it.
 *
 * Invariants:
 * - `current` is never NULL: it is `base` or a context this thread entered.
 *   Contexts entered by this thread form a chain through `prev` ending at
 *   `base`. `base->owner` is this state for the thread's whole life.
 * - `record` is this thread's ck_epoch record, registered (or recycled from
 *   an exited thread) when the state is created and unregistered when it
 *   is destroyed.
 * - `locals` and `local_chunk0` are owned by local.c: this thread's slots
 *   of threading.local objects.
 * Only the owning thread reads or writes a state, except `locals`, whose
 * rules local.c states, and `handover_pending`, whose context.c states.
 */
#ifndef CCTX_THREAD_STATE_H
#define CCTX_THREAD_STATE_H

#ifndef CCTX_BUILDING_CORE
#error "thread_state.h is internal to CContextCore"
#endif

#include "context.h"

#include <ck_epoch.h>

struct local_slots;

typedef struct cctx_thread_state {
    /* Lookup cache (CPython's idea, kept per thread so it needs no
     * synchronisation): `lookup.version` changes whenever the current
     * context's mapping may have changed — this thread entered or left a
     * context or published a root (only this thread writes its current
     * context, see context.h). An entry whose version matches therefore
     * names a value the current root still holds. Starts at 1 so zeroed
     * entries miss. `lookup.in_get` is non-zero while this thread is inside
     * a get (hit or miss): a get in a signal handler that interrupted one
     * must not write the cache (var_access.c). FIRST MEMBER: the public
     * contextcore_inline.h reads it through cctx_tls_state. */
    cctx_thread_lookup lookup;
    cctx_context *current;
    cctx_context *base;
    struct ck_epoch_record *record; /* reclaim.h's reclaim_record */
    struct local_slots *locals;
    /* The first chunk of `locals` (the slots of indices below 64), or
     * NULL: local.c's shortcut past the table's directory on the owner's
     * hot path. Set when that chunk is made, cleared before it is freed;
     * chunks never move while their table lives (local.c, I1). */
    struct local_slot *local_chunk0;
    /* The context cctx_thread_create started this thread in (one
     * reference), while its function runs; the teardown releases it when
     * the function never returned (pthread_exit, cancellation). */
    cctx_context *start_ctx;
    /* Set when teardown begins (thread_state.c): cctx_thread_cleanup from
     * a release callback must not start a second one. */
    bool tearing_down;
    /* The context whose root this thread has tagged for an in-place write
     * (context.c), NULL outside that window: only the fork child handler
     * reads it, for threads that did not survive the fork (reclaim.c). */
    cctx_context *in_place;
    /* How many contexts on context.c's handover list are waiting for an
     * exit of this thread (another thread released their last reference
     * while this one had them entered). Written under the handover lock,
     * possibly by other threads; read by this thread's exits without it
     * (context.c, "The handover"). */
    unsigned handover_pending;
    /* In a fork child only: links the states of threads that did not
     * survive the fork (reclaim.c), which stay allocated there. */
    struct cctx_thread_state *fork_orphan_next;
    /* This thread's root credits (context.c, thread-local), named here
     * once it takes any, so that a fork child can give back the credits
     * of a thread that did not survive the fork (context_fork_orphan_credits).
     * Only that handler reads it, before the child can start a thread. */
    struct root_credit *credits;
} cctx_thread_state;

/* cctx_tls_state, the calling thread's state, is declared in
 * contextcore_inline.h (public: a binding's inlined read loads it). */

/* The calling thread's state, created on first use; NULL on ENOMEM. */
cctx_thread_state *thread_state_slow(void) CCTX_HIDDEN;

static inline cctx_thread_state *thread_state_get(void)
{
    cctx_thread_state *ts = cctx_tls_state;
    if (CCTX_LIKELY(ts != NULL))
        return ts;
    return thread_state_slow();
}

/* Forget every cached lookup of this thread (its current mapping changed).
 * The compiler barriers keep the bump after the change that caused it and
 * before what follows (an old root's release): a signal handler on this
 * thread sees the program order (var_access.c). No CPU fence: only this
 * thread reads its cache. */
static inline void thread_state_invalidate(cctx_thread_state *ts)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    ts->lookup.version++;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* The calling thread's state if it exists, without creating it. */
static inline cctx_thread_state *thread_state_peek(void)
{
    return cctx_tls_state;
}

/* Teardown of this thread's threading.local slots (local.c), in two steps
 * (thread_state.c runs them in rounds):
 * - local_thread_release_values releases every value the thread holds and
 *   leaves the table registered and usable, so that release callbacks may
 *   use locals again; returns whether it released anything.
 * - local_thread_release, once callbacks can no longer reach the state,
 *   releases what is left, unlinks the table and frees it. */
bool local_thread_release_values(cctx_thread_state *ts) CCTX_HIDDEN;
void local_thread_release(cctx_thread_state *ts) CCTX_HIDDEN;
/* local.c's part of the fork handlers (reclaim.c registers them all, so
 * that the runtime takes its locks in one order): take / give back the
 * locals' locks. */
void local_atfork_prepare(void) CCTX_HIDDEN;
void local_atfork_parent(void) CCTX_HIDDEN;
void local_atfork_child(void) CCTX_HIDDEN;

#endif
