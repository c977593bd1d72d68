/*
 * watch.h — firing context-switch watchers from the runtime.
 */
#ifndef CCTX_WATCH_H
#define CCTX_WATCH_H

#ifndef CCTX_BUILDING_CORE
#error "watch.h is internal to CContextCore"
#endif

#include "thread_state.h"

/* cctx_watchers_active (bit i set: watcher slot i is installed; read once
 * per event) is declared in contextcore_inline.h: public, so that a
 * binding's inlined cctx_watchers_installed can load it. */

/* Calls every installed watcher on the calling thread, whose state is `ts`
 * (passed in: it may be mid-creation or mid-destruction). */
void watch_fire(cctx_thread_state *ts, cctx_event event, cctx_context *ctx) CCTX_HIDDEN;

/* Whether the calling thread is inside a watcher callback. */
bool watch_in_callback(void) CCTX_HIDDEN;

/* In a fork child's handler (reclaim.c): forget the callbacks and the
 * installs/removals of threads that did not survive the fork. */
void watch_atfork_child(void) CCTX_HIDDEN;

/* The event fast path: one atomic load when nobody watches. */
static inline void watch_notify(cctx_thread_state *ts, cctx_event event, cctx_context *ctx)
{
    if (CCTX_UNLIKELY(cctx_load_uint(&cctx_watchers_active) != 0))
        watch_fire(ts, event, ctx);
}

#endif
