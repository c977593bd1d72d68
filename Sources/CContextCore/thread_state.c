/*
 * thread_state.c — each OS thread's state: its current context, the chain
 * of contexts it entered, its reclamation record, its threading.local
 * slots; starting threads in a copy of the caller's context. Entering and
 * leaving contexts live in context.c, next to the owner state machine.
 *
 * Lifetime: created on the first call that needs it (a get on a thread
 * without state reads an empty context and creates nothing); destroyed by
 * the pthread_key destructor at thread exit or by cctx_thread_cleanup. The
 * main thread's state is not destroyed by exit() (POSIX runs no key
 * destructors there); programs that check for leaks call
 * cctx_thread_cleanup() before returning from main.
 *
 * Teardown in rounds
 * ------------------
 * Destroying a state releases user values, and their release callbacks may
 * use the library on this very thread (a Swift `deinit` reading a request
 * id, a ThreadLocal's value touching another ThreadLocal). So the state
 * stays installed and usable while values are released, and nothing is
 * freed while a callback could still reach it:
 *
 *   round (at most TEARDOWN_ROUNDS):
 *     1. leave every context the thread still has entered (again before
        step 3, for those the callbacks of step 2 entered), and drop the
 *        context cctx_thread_create gave the thread if its function did
 *        not return (pthread_exit, cancellation);
 *     2. release every value in this thread's local slots (local.c); the
 *        slot table stays registered and usable, so a callback that uses a
 *        local — even one this thread never touched — stores into it;
 *     3. if the base context holds anything, install a fresh empty base
 *        and only then drop the old one: its values' callbacks read and
 *        write a live current context.
 *     A round that found nothing to release ends the teardown; anything a
 *     callback stored during a round is found by the next one.
 *   final round (only if callbacks kept storing through every round): the
 *     state is detached first (the TLS pointer is cleared and
 *     `teardown_closed` keeps thread_state_slow from making a new one), so
 *     callbacks read defaults and their writes fail with CCTX_ENOMEM; then
 *     the same three steps release what is left, which can no longer grow.
 *   Then the empty slot table is unlinked and freed, the epoch record
 *     given back and the state freed.
 *
 * The old base is swapped out rather than emptied in place because other
 * threads may hold references to it (a borrowed current context someone
 * retained): their view must not change, and the values it holds are then
 * theirs to release.
 */
#include "internal.h"
#include "hamt.h"
#include "reclaim.h"
#include "thread_state.h"
#include "token.h"
#include "var.h"
#include "watch.h"

#include <pthread.h>
#include <errno.h>
#include <stdio.h>

__thread cctx_thread_state *cctx_tls_state __attribute__((tls_model("initial-exec")));

static pthread_key_t state_key;
static pthread_once_t state_key_once = PTHREAD_ONCE_INIT;
static int state_key_error;

/* Rounds with the state usable before the final, closed one (see the
 * essay at the top). Callbacks that store a value whose own release stores
 * another one would otherwise never let a thread finish exiting. */
#define TEARDOWN_ROUNDS 8

/* Set during a final teardown round: thread_state_slow creates nothing, so
 * a callback cannot bring a new state into being while the old one is
 * being freed (at thread exit, glibc would destroy it in a later pass, but
 * only for PTHREAD_DESTRUCTOR_ITERATIONS passes). */
static __thread bool teardown_closed;

/* One round: leaves entered contexts, releases local values, swaps the base
 * for an empty one. Returns whether it released anything (a callback may
 * then have stored something new). With `closed`, the old base is dropped
 * without a replacement: nothing reads the detached state's current any
 * more. On ENOMEM for the new base, sets *stuck and drops nothing. */
static bool teardown_round(cctx_thread_state *ts, bool closed, bool *stuck)
{
    bool busy = false;
    /* Innermost first, so that each is free to be entered elsewhere. */
    while (ts->current != ts->base) {
        context_exit_innermost(ts);
        busy = true;
    }
    if (ts->start_ctx != NULL) { /* the thread function did not return */
        cctx_context *start = ts->start_ctx;
        ts->start_ctx = NULL;
        cctx_context_release(start);
        busy = true;
    }
    if (local_thread_release_values(ts))
        busy = true;
    /* Shared root credits (hamt.h): their values may be released now. */
    if (hamt_credits_flush(false))
        busy = true;
    /* Variable credits (var.h): never the last references to a variable
     * while its users hold it, but given back before the thread goes. */
    if (var_credits_flush(false))
        busy = true;
    /* Roots and values this thread replaced while others read them: freed
     * now, while their callbacks may still use the state. */
    if (!closed && reclaim_flush(ts->record))
        busy = true;
    if (closed || cctx_context_count(ts->base) == 0)
        return busy;
    /* The callbacks above may have entered contexts and not left them:
     * leave them before the base is swapped in under them (the current
     * pointer goes to the fresh base; a context still entered would stay
     * ENTERED(ts) after ts is freed). */
    while (ts->current != ts->base) {
        context_exit_innermost(ts);
        busy = true;
    }
    cctx_context *fresh;
    if (context_new_with_root(NULL, &fresh) != CCTX_OK) {
        *stuck = true;
        return busy;
    }
    cctx_context *old = ts->base;
    context_owner_adopt(fresh, ts);
    ts->base = fresh;
    ts->current = fresh;
    thread_state_invalidate(ts);
    /* The owner transition releases: this thread's writes to `old` happen
     * before whatever its other holders do with it. */
    context_owner_leave_base(old, ts);
    cctx_context_release(old); /* callbacks see `fresh` as current */
    return true;
}

/* Destroys `ts`, which is the calling thread's state and still installed
 * in cctx_tls_state. Leaves cctx_tls_state NULL. */
static void state_destroy(cctx_thread_state *ts)
{
    ts->tearing_down = true;
    /* Watchers see the entered contexts exited, then the state gone (as
     * before rounds existed); the base swaps of later rounds are not. */
    while (ts->current != ts->base)
        context_exit_innermost(ts);
    watch_notify(ts, CCTX_EVENT_SWITCHED, NULL);
    bool stuck = false;
    for (int round = 0; round < TEARDOWN_ROUNDS && !stuck; round++) {
        if (!teardown_round(ts, false, &stuck))
            break;
    }
    /* Final round, closed: this thread can no longer reach `ts`. Readers
     * see an empty context; writes fail as if state could not be made. */
    cctx_tls_state = NULL;
    teardown_closed = true;
    (void)teardown_round(ts, true, &stuck);
    local_thread_release(ts); /* the table is empty now: unlink, free */
    context_owner_leave_base(ts->base, ts);
    cctx_context_release(ts->base);
    (void)hamt_credits_flush(true); /* the slot goes to a later thread */
    (void)var_credits_flush(true);  /* the line too */
    context_cache_drain(); /* detached: later frees bypass the caches */
    token_cache_drain();
    hamt_node_cache_drain();
    teardown_closed = false;
    reclaim_record_release(ts->record);
    context_handover_quiesce(ts);
    cctx_dealloc(ts);
}

static void state_key_destructor(void *p)
{
    cctx_thread_state *ts = p;
    /* glibc has cleared the key, but the __thread pointer still names `ts`:
     * callbacks during the teardown find the state through it. */
    cctx_tls_state = ts;
    state_destroy(ts);
}

static void state_key_create(void)
{
    state_key_error = pthread_key_create(&state_key, state_key_destructor);
    context_barrier_init(); /* before any state, hence before any exit */
}

cctx_thread_state *thread_state_slow(void)
{
    if (CCTX_UNLIKELY(teardown_closed))
        return NULL; /* the thread's state is being freed (see the essay) */
    pthread_once(&state_key_once, state_key_create);
    if (state_key_error != 0)
        return NULL;
    cctx_thread_state *ts = cctx_alloc_zeroed(sizeof *ts); /* once per thread */
    if (ts == NULL)
        return NULL;
    cctx_context *base;
    if (context_new_with_root(NULL, &base) != CCTX_OK) {
        cctx_dealloc(ts);
        return NULL;
    }
    ts->record = reclaim_record_acquire(ts);
    if (ts->record == NULL || pthread_setspecific(state_key, ts) != 0) {
        reclaim_record_release(ts->record);
        cctx_context_release(base);
        cctx_dealloc(ts);
        return NULL;
    }
    context_owner_adopt(base, ts);
    ts->lookup.version = 1;
    ts->base = base;
    ts->current = base;
    cctx_tls_state = ts;
    watch_notify(ts, CCTX_EVENT_SWITCHED, base);
    return ts;
}

cctx_status cctx_thread_cleanup(void)
{
    cctx_thread_state *ts = thread_state_peek();
    if (ts == NULL || ts->tearing_down)
        return CCTX_OK; /* nothing, or a callback during the teardown */
    if (ts->current != ts->base)
        return CCTX_ALREADY_ENTERED;
    /* Inside a watcher callback the enter, exit or state creation that
     * fired it goes on with `ts` once the callback returns (an exited
     * context's owner word still names it): it must not be freed. */
    if (watch_in_callback())
        return CCTX_ALREADY_ENTERED;
    /* The key no longer names `ts` (a thread exit during the teardown must
     * not destroy it twice); cctx_tls_state does until the final round. */
    (void)pthread_setspecific(state_key, NULL);
    state_destroy(ts);
    return CCTX_OK;
}

/* ------------------------------------------------------------ threads */

struct thread_start {
    void *(*fn)(void *);
    void *arg;
    cctx_context *ctx;
};

static void *thread_trampoline(void *p)
{
    /* No cancellation until the thread state holds the copy (fprintf is a
     * cancellation point). */
    int cancel_state;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
    struct thread_start start = *(struct thread_start *)p;
    cctx_dealloc(p);
    cctx_status st = cctx_context_enter(start.ctx);
    if (st != CCTX_OK) { /* only ENOMEM creating this thread's state */
        fprintf(stderr, "contextcore: thread starts without its context: %s\n",
                cctx_strerror(st));
        cctx_context_release(start.ctx); /* unused: nothing left to leak */
        pthread_setcancelstate(cancel_state, NULL);
        return start.fn(start.arg);
    }
    /* From here the thread's state owns the copy's reference: if `fn` ends
     * the thread with pthread_exit or the thread is cancelled, the state's
     * teardown (the pthread_key destructor, which runs on both) releases
     * it. This needs no unwinding through our frame, unlike a cleanup
     * handler (whose setjmp-based C form ASan cannot follow on cancel). */
    cctx_thread_state *ts = thread_state_peek();
    ts->start_ctx = start.ctx;
    pthread_setcancelstate(cancel_state, NULL);
    void *result = start.fn(start.arg);
    /* `fn` returned. Its state may have been cleaned up meanwhile (then the
     * teardown released the copy, and a newer state holds none). */
    ts = thread_state_peek();
    if (ts != NULL && ts->start_ctx == start.ctx) {
        ts->start_ctx = NULL;
        if (context_owner(start.ctx) == (uintptr_t)ts) {
            context_exit_above(ts, start.ctx);
            context_exit_innermost(ts);
        }
        cctx_context_release(start.ctx);
    }
    return result;
}

cctx_status cctx_thread_create(pthread_t *thread, const pthread_attr_t *attr,
                               void *(*fn)(void *), void *arg)
{
    if (thread == NULL || fn == NULL)
        return CCTX_EINVAL;
    struct thread_start *start = cctx_alloc(sizeof *start);
    if (start == NULL)
        return CCTX_ENOMEM;
    cctx_context *current;
    cctx_status st = cctx_context_copy_current(&current);
    if (st == CCTX_OK) {
        st = cctx_context_copy_inherit(current, &start->ctx);
        cctx_context_release(current);
    }
    if (st != CCTX_OK) {
        cctx_dealloc(start);
        return st;
    }
    start->fn = fn;
    start->arg = arg;
    cctx_context *ctx = start->ctx;
    int rc = pthread_create(thread, attr, thread_trampoline, start);
    if (rc != 0) {
        cctx_context_release(ctx);
        cctx_dealloc(start);
        return rc == EAGAIN ? CCTX_ENOMEM : CCTX_EINVAL;
    }
    return CCTX_OK;
}
