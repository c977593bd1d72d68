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
 * - Firing reads the active mask and calls each slot inside a ck_epoch
 *   section. Removal clears the active bit, then waits for a grace period
 *   (every section that could have read the slot has ended), and only then
 *   gives the slot back. So a slot is never rewritten while a notifier may
 *   read it, and a removed callback never runs after removal returns.
 * The no-watcher path is the single load in watch.h.
 */
#include "internal.h"
#include "reclaim.h"
#include "watch.h"

struct watcher_slot {
    void *fn; /* a cctx_watcher_fn, stored as a pointer for atomic access */
    void *userdata;
};

static struct watcher_slot slots[CCTX_MAX_WATCHERS];
static unsigned claimed;
unsigned cctx_watchers_active;

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
    ck_epoch_synchronize_wait(reclaim_epoch(), NULL, NULL);
    CCTX_TSAN_ACQUIRE(reclaim_epoch());
    unsigned cur;
    do {
        cur = cctx_load_uint(&claimed);
    } while (!cctx_cas_uint(&claimed, cur, cur & ~bit));
    return CCTX_OK;
}

void watch_fire(cctx_thread_state *ts, cctx_event event, cctx_context *ctx)
{
    ck_epoch_section_t section;
    ck_epoch_begin(ts->record, &section);
    unsigned act = cctx_load_uint(&cctx_watchers_active);
    for (int i = 0; act != 0; i++, act >>= 1) {
        if (!(act & 1u))
            continue;
        cctx_watcher_fn fn = (cctx_watcher_fn)cctx_load_ptr(&slots[i].fn);
        void *userdata = cctx_load_ptr(&slots[i].userdata);
        fn(event, ctx, userdata);
    }
    CCTX_TSAN_RELEASE(reclaim_epoch());
    ck_epoch_end(ts->record, &section);
}

void cctx_notify_watchers(cctx_event event, cctx_context *ctx)
{
    if (CCTX_LIKELY(cctx_load_uint(&cctx_watchers_active) == 0))
        return;
    cctx_thread_state *ts = thread_state_get();
    if (ts != NULL) /* without state (out of memory) there is no section */
        watch_fire(ts, event, ctx);
}
