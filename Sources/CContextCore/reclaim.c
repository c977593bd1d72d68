/*
 * reclaim.c — when a root replaced by a writer may be freed.
 *
 * The argument, in order of events (see also reclaim.h):
 *
 * Reader R (not the writer)          Writer W
 *   inc ctx->readers   (full fence)    old = fas(ctx->root, new) (full fence)
 *   ck_epoch_begin                     n = load(ctx->readers)
 *   r = load(ctx->root)                n == 0: release(old) now
 *   ... use r (retain what escapes)    n != 0: push old on ctx->retired,
 *   ck_epoch_end                               then if readers is now 0,
 *   dec ctx->readers   (full fence)            drain the list (below)
 *   if ctx->retired: drain
 *
 * If W reads readers == 0, every reader's increment comes after W's
 * exchange in the single total order of locked operations, so its load of
 * ctx->root returns `new` (or later): `old` is unreachable and released at
 * once. That is the common case (nobody reads the context from outside)
 * and costs the writer one exchange and one load.
 *
 * Otherwise `old` goes on the retired list. Draining takes the whole list
 * with one exchange and then waits for a ck_epoch grace period
 * (ck_epoch_synchronize_wait): every section that began before the drain —
 * among them every reader that could have loaded a retired root, since
 * those roots were unpublished before the drain started — has ended. Then
 * the roots are released. Readers drain on their way out, so a list never
 * waits for the writer's next call: the last reader finishes it, or the
 * context's destruction does. Sections are short (a lookup, an increment)
 * and never run user code beyond a value's retain callback, so the wait is
 * bounded.
 */
#include "internal.h"
#include "reclaim.h"

#include <pthread.h>
#include <stdlib.h>

struct reclaim_retired {
    struct reclaim_retired *next;
    hamt_node *root;
};

static ck_epoch_t epoch;
static pthread_once_t epoch_once = PTHREAD_ONCE_INIT;

static void epoch_init(void)
{
    ck_epoch_init(&epoch);
}

ck_epoch_t *reclaim_epoch(void)
{
    pthread_once(&epoch_once, epoch_init);
    return &epoch;
}

ck_epoch_record_t *reclaim_record_acquire(void)
{
    ck_epoch_t *e = reclaim_epoch();
    ck_epoch_record_t *r = ck_epoch_recycle(e, NULL);
    if (r != NULL)
        return r;
    /* Records are cache-line aligned and, once registered, can never leave
     * ck_epoch's global list: they are allocated outside cctx_alloc so that
     * the live-allocation count used by leak tests stays meaningful, and
     * reused through ck_epoch_recycle when their thread exits. */
    void *mem = NULL;
    if (posix_memalign(&mem, 64, sizeof(ck_epoch_record_t)) != 0)
        return NULL;
    r = mem;
    ck_epoch_register(e, r, NULL);
    return r;
}

static ck_epoch_record_t fallback_record __attribute__((aligned(64)));
static pthread_mutex_t fallback_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t fallback_once = PTHREAD_ONCE_INIT;

static void fallback_register(void)
{
    ck_epoch_register(reclaim_epoch(), &fallback_record, NULL);
}

ck_epoch_record_t *reclaim_fallback_lock(void)
{
    pthread_once(&fallback_once, fallback_register);
    pthread_mutex_lock(&fallback_lock);
    return &fallback_record;
}

void reclaim_fallback_unlock(void)
{
    pthread_mutex_unlock(&fallback_lock);
}

void reclaim_record_release(ck_epoch_record_t *record)
{
    if (record != NULL)
        ck_epoch_unregister(record);
}

void reclaim_read_begin(cctx_context *ctx, ck_epoch_record_t *record, reclaim_section *s)
{
    cctx_inc_uint(&ctx->readers); /* full fence: ordered before the root load */
    s->record = record;
    ck_epoch_begin(s->record, &s->section);
}

static void drain(cctx_context *ctx)
{
    struct reclaim_retired *list = cctx_fas_ptr(&ctx->retired, NULL);
    if (list == NULL)
        return;
    /* Grace period: every epoch section open now ends before this returns. */
    ck_epoch_synchronize_wait(reclaim_epoch(), NULL, NULL);
    CCTX_TSAN_ACQUIRE(&epoch);
    while (list != NULL) {
        struct reclaim_retired *next = list->next;
        hamt_release(list->root);
        cctx_dealloc(list);
        list = next;
    }
}

void reclaim_read_finish(cctx_context *ctx)
{
    bool last = cctx_dec_uint_is_zero(&ctx->readers); /* full fence */
    if (last && cctx_load_ptr(&ctx->retired) != NULL)
        drain(ctx);
}

void reclaim_read_end(cctx_context *ctx, reclaim_section *s)
{
    CCTX_TSAN_RELEASE(&epoch);
    ck_epoch_end(s->record, &s->section);
    reclaim_read_finish(ctx);
}

void reclaim_retire(cctx_context *ctx, hamt_node *old_root)
{
    if (old_root == NULL)
        return;
    if (cctx_load_uint(&ctx->readers) == 0) {
        hamt_release(old_root);
        return;
    }
    struct reclaim_retired *item = cctx_alloc(sizeof *item);
    if (item == NULL) {
        /* No memory to defer with: wait for the grace period here instead.
         * Slower, never wrong, and the write has already succeeded. */
        ck_epoch_synchronize_wait(reclaim_epoch(), NULL, NULL);
        CCTX_TSAN_ACQUIRE(&epoch);
        hamt_release(old_root);
        return;
    }
    item->root = old_root;
    struct reclaim_retired *head;
    do {
        head = cctx_load_ptr(&ctx->retired);
        item->next = head;
    } while (!cctx_cas_ptr(&ctx->retired, head, item)); /* full fence */
    /* A reader that left between our first look and the push may have
     * missed the item: if none is left now, drain it ourselves. */
    if (cctx_load_uint(&ctx->readers) == 0)
        drain(ctx);
}

void reclaim_context_destroy(cctx_context *ctx)
{
    /* No references are left, so no reader or writer is inside: a plain
     * load (not an exchange) and a direct release. */
    struct reclaim_retired *list = cctx_load_ptr(&ctx->retired);
    ctx->retired = NULL;
    while (list != NULL) {
        struct reclaim_retired *next = list->next;
        hamt_release(list->root);
        cctx_dealloc(list);
        list = next;
    }
}

void cctx_reclaim(void)
{
    /* Drains happen eagerly (see above); what can remain is a grace period
     * in progress on another thread. Waiting for one more grace period here
     * lets tests and shutdown code observe a settled state. */
    ck_epoch_synchronize_wait(reclaim_epoch(), NULL, NULL);
    CCTX_TSAN_ACQUIRE(&epoch);
}
