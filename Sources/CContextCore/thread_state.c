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
 */
#include "internal.h"
#include "reclaim.h"
#include "thread_state.h"
#include "watch.h"

#include <pthread.h>
#include <errno.h>
#include <stdio.h>

__thread cctx_thread_state *cctx_tls_state __attribute__((tls_model("initial-exec")));

static pthread_key_t state_key;
static pthread_once_t state_key_once = PTHREAD_ONCE_INIT;
static int state_key_error;

/* Leaves the innermost context the thread has entered (not the base). */
static void leave_innermost(cctx_thread_state *ts)
{
    context_exit_innermost(ts);
}

/* Leaves every context entered after `ctx` (which stays entered); used when
 * a callback returned without leaving what it entered. */
static void leave_above(cctx_thread_state *ts, cctx_context *ctx)
{
    context_exit_above(ts, ctx);
}

static void state_destroy(cctx_thread_state *ts)
{
    /* Leave every context this thread still has entered, innermost first,
     * so that each is free to be entered elsewhere. */
    while (ts->current != ts->base)
        leave_innermost(ts);
    watch_notify(ts, CCTX_EVENT_SWITCHED, NULL);
    local_thread_release(ts);
    context_owner_leave(ts->base, ts);
    cctx_context_release(ts->base);
    reclaim_record_release(ts->record);
    cctx_dealloc(ts);
}

static void state_key_destructor(void *p)
{
    cctx_thread_state *ts = p;
    state_destroy(ts);
    cctx_tls_state = NULL;
}

static void state_key_create(void)
{
    state_key_error = pthread_key_create(&state_key, state_key_destructor);
}

cctx_thread_state *thread_state_slow(void)
{
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
    ts->version = 1;
    ts->base = base;
    ts->current = base;
    cctx_tls_state = ts;
    watch_notify(ts, CCTX_EVENT_SWITCHED, base);
    return ts;
}

cctx_status cctx_thread_cleanup(void)
{
    cctx_thread_state *ts = thread_state_peek();
    if (ts == NULL)
        return CCTX_OK;
    if (ts->current != ts->base)
        return CCTX_ALREADY_ENTERED;
    cctx_tls_state = NULL;
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
    struct thread_start start = *(struct thread_start *)p;
    cctx_dealloc(p);
    cctx_status st = cctx_context_enter(start.ctx);
    if (st != CCTX_OK) /* only ENOMEM creating this thread's state */
        fprintf(stderr, "contextcore: thread starts without its context: %s\n",
                cctx_strerror(st));
    void *result = start.fn(start.arg);
    if (st == CCTX_OK) {
        cctx_thread_state *ts = thread_state_peek();
        if (context_owner(start.ctx) == (uintptr_t)ts) {
            leave_above(ts, start.ctx);
            leave_innermost(ts);
        }
    }
    cctx_context_release(start.ctx);
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
