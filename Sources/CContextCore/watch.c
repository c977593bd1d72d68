/*
 * watch.c — context-switch watchers (CPython 3.14's PyContext_AddWatcher,
 * with entered/exited/switched events).
 *
 * Slots and their invariants:
 * - `claimed` bit i: slot i belongs to an installed watcher or to one being
 *   installed or removed; only its claimer writes slots[i].
 * - `cctx_watchers_active` bit i: slot i's fn/userdata are written and may
 *   be called. Set (release) after the slot is written; cleared first when
 *   the watcher is removed.
 * - `calls[i]` counts callbacks of slot i in progress. A notifier raises it
 *   (full fence), then re-checks the active bit, and only then reads and
 *   calls the slot. Removal clears the active bit (full fence), then waits
 *   for calls[i] to reach zero, and only then gives the slot back. Either a
 *   notifier's re-check sees the bit cleared (and calls nothing), or its
 *   increment is seen by the remover (which waits for the call to end): a
 *   slot is never rewritten while a notifier may read it, and a removed
 *   callback never runs after removal returns.
 * Callbacks do not run inside an epoch section: a callback may read or
 * write contexts — which may wait for a grace period — without waiting on
 * itself, and a slow callback holds up only the removal of its own slot.
 * The no-watcher path is the single load in watch.h (and, for a binding
 * that sends its own events, cctx_watchers_installed in
 * contextcore_inline.h, which names `cctx_watchers_active` and argues why
 * a relaxed load of it is enough there).
 */
#include "internal.h"
#include "reclaim.h"
#include "watch.h"

#include <sched.h>

struct watcher_slot {
    void *fn; /* a cctx_watcher_fn, stored as a pointer for atomic access */
    void *userdata;
};

static struct watcher_slot slots[CCTX_MAX_WATCHERS];
static unsigned calls[CCTX_MAX_WATCHERS];
static unsigned claimed;
unsigned cctx_watchers_active;
/* This thread's share of calls[i]: the callbacks of slot i it is inside
 * (more than one when a callback enters or exits a context). Only
 * watch_atfork_child reads another view of it: in a fork child the other
 * threads' calls never end, so calls[i] becomes the forking thread's own. */
static __thread unsigned own_calls[CCTX_MAX_WATCHERS] __attribute__((tls_model("initial-exec")));

cctx_status cctx_add_watcher(cctx_watcher_fn fn, void *userdata, int *id_out)
{
    if (fn == NULL || id_out == NULL)
        return CCTX_EINVAL;
    for (int i = 0; i < CCTX_MAX_WATCHERS; i++) {
        unsigned bit = 1u << i;
        unsigned cur = cctx_load_uint(&claimed);
        if (cur & bit)
            continue;
        if (!cctx_cas_uint(&claimed, cur, cur | bit)) {
            i = -1; /* lost a race for the mask: rescan */
            continue;
        }
        cctx_store_ptr(&slots[i].fn, (void *)fn);
        cctx_store_ptr(&slots[i].userdata, userdata);
        unsigned act;
        do {
            act = cctx_load_uint(&cctx_watchers_active);
        } while (!cctx_cas_uint(&cctx_watchers_active, act, act | bit));
        *id_out = i;
        return CCTX_OK;
    }
    return CCTX_TOO_MANY_WATCHERS;
}

cctx_status cctx_clear_watcher(int id)
{
    if (id < 0 || id >= CCTX_MAX_WATCHERS)
        return CCTX_EINVAL;
    unsigned bit = 1u << id;
    unsigned act;
    do {
        act = cctx_load_uint(&cctx_watchers_active);
        if (!(act & bit))
            return CCTX_EINVAL;
    } while (!cctx_cas_uint(&cctx_watchers_active, act, act & ~bit));
    /* Wait until no notifier can still be calling the slot. */
    while (cctx_load_uint(&calls[id]) != 0)
        sched_yield();
    CCTX_TSAN_ACQUIRE(&calls[id]);
    unsigned cur;
    do {
        cur = cctx_load_uint(&claimed);
    } while (!cctx_cas_uint(&claimed, cur, cur & ~bit));
    return CCTX_OK;
}

void watch_fire(cctx_thread_state *ts, cctx_event event, cctx_context *ctx)
{
    (void)ts;
    unsigned act = cctx_load_uint(&cctx_watchers_active);
    for (int i = 0; act != 0; i++, act >>= 1) {
        if (!(act & 1u))
            continue;
        unsigned bit = 1u << i;
        own_calls[i]++;
        cctx_inc_uint(&calls[i]); /* full fence: ordered before the re-check */
        if (cctx_load_uint(&cctx_watchers_active) & bit) {
            cctx_watcher_fn fn = (cctx_watcher_fn)cctx_load_ptr(&slots[i].fn);
            void *userdata = cctx_load_ptr(&slots[i].userdata);
            fn(event, ctx, userdata);
        }
        CCTX_TSAN_RELEASE(&calls[i]);
        (void)cctx_dec_uint_is_zero(&calls[i]);
        own_calls[i]--;
    }
}

bool watch_in_callback(void)
{
    for (int i = 0; i < CCTX_MAX_WATCHERS; i++)
        if (own_calls[i] != 0)
            return true;
    return false;
}

void cctx_notify_watchers(cctx_event event, cctx_context *ctx)
{
    if (CCTX_LIKELY(cctx_load_uint(&cctx_watchers_active) == 0))
        return;
    cctx_thread_state *ts = thread_state_get();
    if (ts != NULL) /* without state (out of memory) there is no section */
        watch_fire(ts, event, ctx);
}

/* In a fork child only the forking thread runs. Callbacks other threads
 * were inside at the fork never return there, and cctx_clear_watcher would
 * wait for them for ever: each slot's count becomes the forking thread's
 * own (its callbacks in progress still return and decrement it). A slot
 * claimed but not active was being installed or removed by a thread that
 * is gone (the forking thread is in neither: both run no user code, and
 * fork is not called from inside the library): give it back. Runs before
 * any other code in the child, so plain stores do. */
void watch_atfork_child(void)
{
    for (int i = 0; i < CCTX_MAX_WATCHERS; i++)
        calls[i] = own_calls[i];
    claimed &= cctx_watchers_active;
}
