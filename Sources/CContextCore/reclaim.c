/*
 * reclaim.c — the one file that calls Concurrency Kit's ck_epoch (see
 * reclaim.h for the API and its memory bound).
 *
 * Why epochs and not a per-object reader count: a count can only say "no
 * reader right now", and readers that overlap without pause never let it
 * reach zero, so what waits for that moment grows with the number of writes.
 * An epoch grace period needs only that every section open at some point
 * ends, which short sections always do, however much they overlap.
 *
 * ck_epoch in brief: each thread has a record; a section stamps the record
 * active with the global epoch it saw. A deferred object goes on the
 * deferring record's bucket for the current epoch. The global epoch may
 * advance once every active record has seen it; an object deferred in
 * epoch e is safe once the epoch has reached e + 2 (no section can still
 * be running that began before the object was unpublished).
 * ck_epoch_poll advances and frees without waiting; ck_epoch_synchronize
 * waits until it can advance (twice) — a grace period.
 *
 * Memory ordering: the object was unpublished by the caller with a full
 * barrier (an exchange) or a release store before reclaim_defer; ck_epoch
 * orders the record's epoch load in ck_epoch_begin before the section's
 * reads (a full fence there) and its end after them (a release store), so
 * the standard epoch argument applies. ThreadSanitizer does not see inside
 * libck: a section's end releases `epoch`, and every free after a grace
 * period acquires it.
 */
#include "internal.h"
#include "hamt.h"
#include "reclaim.h"
#include "watch.h"
#include "thread_state.h"
#include "var.h"

#include <ck_epoch.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(ck_epoch_section_t) == sizeof(unsigned),
               "reclaim_section keeps a ck_epoch_section_t as an unsigned");

/* ck_epoch's record states (private to ck_epoch.c in 0.7.1, where USED is
 * 0 and FREE is 1); only the fork handler needs them. */
enum { RECLAIM_CK_STATE_USED = 0, RECLAIM_CK_STATE_FREE = 1 };

static ck_epoch_entry_t *entry_of(ck_stack_entry_t *s)
{
    return (ck_epoch_entry_t *)((char *)s - offsetof(ck_epoch_entry_t, stack_entry));
}

#ifdef CCTX_COUNT_LOCKED
__thread unsigned long cctx__locked_ops; /* atomic.h */
#endif

static ck_epoch_t epoch;
static pthread_once_t epoch_once = PTHREAD_ONCE_INIT;

/* A record registered for a thread (as opposed to the static fallback
 * record and other static records) carries this as its ck_epoch context:
 * the fork handler recycles only these. The fallback record carries
 * fallback_tag. Both are the first member of a reclaim_thread. */
static char thread_record_tag;
static char fallback_tag;

struct retired {
    struct retired *next;
    void *object;
    void (*free_fn)(void *);
};

/* A thread's reclamation state: its ck_epoch record, its hazard slots and
 * its retired list. Allocated once, never freed, recycled with the record
 * (ck_epoch keeps records in its list for ever). */
struct reclaim_thread {
    ck_epoch_record_t record; /* first: thread_of() casts */
    /* Written by the owner, read by every scanning writer: a line of their
     * own, apart from the record's fields. */
    void *hazard[RECLAIM_HAZARDS] __attribute__((aligned(64)));
    unsigned depth; /* hazard slots in use (owner only) */
    void *owner;    /* the thread's state (cctx_thread_state) */
    struct retired *retired __attribute__((aligned(64))); /* owner only */
    unsigned n_retired;
};

static struct reclaim_thread *thread_of(ck_epoch_record_t *r)
{
    return (struct reclaim_thread *)r;
}

static bool has_hazards(const ck_epoch_record_t *r)
{
    return r->ct == &thread_record_tag || r->ct == &fallback_tag;
}

/* How deep the calling thread is in sections (any record). A thread inside
 * a section must never wait for a grace period: it would wait for itself. */
static __thread unsigned section_depth;
/* Set while this thread runs deferred frees, so that a free that defers
 * again (a release callback that sets a variable) does not recurse into
 * another barrier. */
static __thread unsigned dispatch_depth;

/* Objects left on the records of threads that did not survive a fork, and
 * the contexts whose handover waited for such a thread (context.c):
 * freed by the child's next poll or barrier. Only touched in the child
 * handler (single-threaded) and under orphan_lock. */
static ck_stack_t orphans;
static pthread_mutex_t orphan_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned orphan_count;

static void reclaim_atfork_prepare(void);
static void reclaim_atfork_parent(void);
static void reclaim_atfork_child(void);

static void epoch_init(void)
{
    ck_epoch_init(&epoch);
    ck_stack_init(&orphans);
}

/* The runtime's fork handlers, registered when the library is loaded: a
 * lock may be taken before any record exists (a local created on a thread
 * that never read a context), and the handlers must already cover it. */
__attribute__((constructor)) static void reclaim_fork_handlers_install(void)
{
    (void)pthread_atfork(reclaim_atfork_prepare, reclaim_atfork_parent,
                         reclaim_atfork_child);
}

static ck_epoch_t *reclaim_epoch(void)
{
    pthread_once(&epoch_once, epoch_init);
    return &epoch;
}

/* ------------------------------------------------------------ records */

static void retired_drain(struct reclaim_thread *t);
static void orphans_retired_scan(void);
static unsigned retired_scan(struct retired **list);

reclaim_record *reclaim_record_acquire(void *owner)
{
    ck_epoch_t *e = reclaim_epoch();
    ck_epoch_record_t *r = ck_epoch_recycle(e, &thread_record_tag);
    if (r != NULL) {
        /* ck_epoch hands the record over (an exchange of its state, inside
         * libck where ThreadSanitizer cannot see): the previous thread's
         * writes to it happen before ours. */
        CCTX_TSAN_ACQUIRE(r);
        thread_of(r)->owner = owner;
        return r;
    }
    /* Records are cache-line aligned and, once registered, can never leave
     * ck_epoch's global list: they are allocated outside cctx_alloc so that
     * the live-allocation count used by leak tests stays meaningful, and
     * reused through ck_epoch_recycle when their thread exits. */
    void *mem = NULL;
    if (posix_memalign(&mem, 64, sizeof(struct reclaim_thread)) != 0)
        return NULL;
    memset(mem, 0, sizeof(struct reclaim_thread));
    r = &((struct reclaim_thread *)mem)->record;
    ((struct reclaim_thread *)mem)->owner = owner;
    /* ck_epoch_register pushes the record with a locked exchange inside
     * libck, where ThreadSanitizer cannot see it: its initialisation
     * happens before any scan that finds it (hazarded). */
    CCTX_TSAN_RELEASE(r);
    ck_epoch_register(e, r, &thread_record_tag);
    return r;
}

void reclaim_record_release(reclaim_record *record)
{
    if (record == NULL)
        return;
    /* ck_epoch_unregister requires an empty record: free what it deferred.
     * Frees may defer again (release callbacks), so repeat until empty. */
    while (ck_pr_load_uint(&record->n_pending) != 0 && section_depth == 0)
        reclaim_barrier(record);
    retired_drain(thread_of(record));
    thread_of(record)->owner = NULL;
    CCTX_TSAN_RELEASE(record); /* to the next thread that recycles it */
    ck_epoch_unregister(record);
}

bool reclaim_flush(reclaim_record *record)
{
    if (record == NULL || section_depth != 0)
        return false;
    struct reclaim_thread *t = thread_of(record);
    bool freed = ck_pr_load_uint(&record->n_pending) != 0 || t->retired != NULL;
    /* Frees may defer or retire again (release callbacks that write): the
     * caller loops on the result until a round frees nothing. */
    if (ck_pr_load_uint(&record->n_pending) != 0)
        reclaim_barrier(record);
    retired_drain(t);
    return freed;
}

/* The fallback record: for a thread whose state cannot be created. Static
 * storage registered once without allocating; one thread at a time. */
static struct reclaim_thread fallback_thread __attribute__((aligned(64)));
#define fallback_record (fallback_thread.record)
static pthread_once_t fallback_once = PTHREAD_ONCE_INIT;

static void fallback_register(void)
{
    ck_epoch_register(reclaim_epoch(), &fallback_record, &fallback_tag);
}
/* Re-entrant on one thread: a read on the fallback record may run a
 * callback that opens another (a retain callback that drops a local's last
 * reference walks the registry in a section). ck_epoch sections nest on
 * one record, and hazard slots stack. A plain mutex plus a per-thread
 * depth rather than a recursive mutex: the fork child can unlock a plain
 * one (a recursive one checks its owner's thread id, which changes). */
static pthread_mutex_t fallback_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread unsigned fallback_depth;

static void fallback_acquire(void)
{
    pthread_once(&fallback_once, fallback_register);
    if (fallback_depth++ == 0)
        pthread_mutex_lock(&fallback_lock);
}

static void fallback_release(void)
{
    if (--fallback_depth == 0)
        pthread_mutex_unlock(&fallback_lock);
}

/* ------------------------------------------------------------ sections */

void reclaim_section_begin(reclaim_record *record, reclaim_section *s)
{
    s->fallback = record == NULL;
    if (s->fallback) {
        fallback_acquire();
        record = &fallback_record;
    }
    s->record = record;
    section_depth++;
    ck_epoch_begin(record, (ck_epoch_section_t *)&s->bucket);
}

void reclaim_section_end(reclaim_section *s)
{
    /* Everything read in the section happens before frees that waited. */
    CCTX_TSAN_RELEASE(&epoch);
    ck_epoch_end(s->record, (ck_epoch_section_t *)&s->bucket);
    section_depth--;
    if (s->fallback)
        fallback_release();
}

/* ------------------------------------------------------------ deferral */

struct reclaim_deferral {
    ck_epoch_entry_t entry; /* first: ck_epoch hands this pointer back */
    void *object;
    void (*free_fn)(void *);
};

static void deferred_run(ck_epoch_entry_t *entry)
{
    struct reclaim_deferral *d = (struct reclaim_deferral *)entry;
    void *object = d->object;
    void (*free_fn)(void *) = d->free_fn;
    cctx_dealloc(d);
    CCTX_TSAN_ACQUIRE(&epoch);
    dispatch_depth++;
    free_fn(object);
    dispatch_depth--;
}

static void orphans_free(void)
{
    if (ck_pr_load_uint(&orphan_count) == 0)
        return;
    pthread_mutex_lock(&orphan_lock);
    ck_stack_entry_t *list = ck_stack_batch_pop_npsc(&orphans);
    orphan_count = 0;
    pthread_mutex_unlock(&orphan_lock);
    /* Deferred by threads that no longer exist (fork): nobody reads them,
     * and the child's own sections began after they were unpublished. */
    while (list != NULL) {
        ck_stack_entry_t *next = list->next;
        ck_epoch_entry_t *e = entry_of(list);
        e->function(e);
        list = next;
    }
}

void reclaim_fork_orphan(void *object, void (*free_fn)(void *))
{
    struct reclaim_deferral *d = reclaim_deferral_new();
    if (d == NULL)
        return;
    d->object = object;
    d->free_fn = free_fn;
    d->entry.function = deferred_run;
    ck_stack_push_spnc(&orphans, &d->entry.stack_entry);
    orphan_count++;
}

/* Called by ck_epoch while a grace period waits for a reader that has not
 * moved on. Readers may be descheduled inside their section (more threads
 * than cores): spinning would keep them off the core we hold, so give it
 * up instead. */
static void wait_yield(ck_epoch_t *e, ck_epoch_record_t *blocking, void *arg)
{
    (void)e;
    (void)blocking;
    (void)arg;
    sched_yield();
}

void reclaim_synchronize(void)
{
    ck_epoch_synchronize_wait(reclaim_epoch(), wait_yield, NULL);
    CCTX_TSAN_ACQUIRE(&epoch);
}

reclaim_deferral *reclaim_deferral_new(void)
{
    return cctx_alloc(sizeof(reclaim_deferral));
}

void reclaim_deferral_discard(reclaim_deferral *d)
{
    cctx_dealloc(d);
}

void reclaim_defer(reclaim_record *record, void *object, void (*free_fn)(void *))
{
    reclaim_defer_prepared(record, record != NULL ? reclaim_deferral_new() : NULL, object,
                           free_fn);
}

void reclaim_defer_prepared(reclaim_record *record, reclaim_deferral *d, void *object,
                            void (*free_fn)(void *))
{
    if (record == NULL) {
        cctx_dealloc(d);
        d = NULL;
    }
    if (d == NULL) {
        /* No record (no thread state) or no memory to defer with: wait for
         * the grace period here. Slower, never wrong. A thread inside a
         * section cannot wait; it has a record (sections on the fallback
         * record do not write), so only ENOMEM inside a section gets here:
         * then the object is kept, as the old code did, rather than freed
         * early. */
        if (section_depth != 0)
            return;
        reclaim_synchronize();
        free_fn(object);
        return;
    }
    d->object = object;
    d->free_fn = free_fn;
    ck_epoch_call(record, &d->entry, deferred_run);
    unsigned n = ck_pr_load_uint(&record->n_pending);
    if (n % RECLAIM_POLL_EVERY == 0 && dispatch_depth == 0)
        reclaim_poll(record);
    /* The bound: a record never holds more than RECLAIM_PENDING_MAX. */
    if (ck_pr_load_uint(&record->n_pending) >= RECLAIM_PENDING_MAX &&
        section_depth == 0 && dispatch_depth == 0)
        reclaim_barrier(record);
}

void reclaim_poll(reclaim_record *record)
{
    if (record == NULL || section_depth != 0)
        return;
    /* ck_epoch_poll frees the buckets two epochs old; a record inside a
     * section cannot poll (ck_epoch requires it be outside). */
    (void)ck_epoch_poll(record);
    orphans_free();
}

void reclaim_barrier(reclaim_record *record)
{
    if (section_depth != 0)
        return;
    if (record == NULL) {
        reclaim_synchronize();
    } else {
        /* Grace period, then free every bucket of this record. */
        ck_epoch_barrier_wait(record, wait_yield, NULL);
        CCTX_TSAN_ACQUIRE(&epoch);
    }
    orphans_free();
}

unsigned reclaim_pending(reclaim_record *record)
{
    return (record != NULL ? ck_pr_load_uint(&record->n_pending) : 0) +
           ck_pr_load_uint(&orphan_count);
}

/* The public read section (contextcore_binding.h): a reclaim_section in
 * the caller's storage, on the calling thread's record (the fallback
 * record when it has no state; the section then holds its mutex). */
_Static_assert(sizeof(reclaim_section) <= sizeof(cctx_read_section), "cctx_read_section too small");

void cctx_read_section_begin(cctx_read_section *section)
{
    cctx_thread_state *ts = thread_state_get();
    reclaim_section s;
    reclaim_section_begin(ts != NULL ? ts->record : NULL, &s);
    memcpy(section, &s, sizeof s);
}

void cctx_read_section_end(cctx_read_section *section)
{
    reclaim_section s;
    memcpy(&s, section, sizeof s);
    reclaim_section_end(&s);
}

void cctx_reclaim(void)
{
    /* Frees what this thread deferred (and what a fork left over), after a
     * grace period: tests and shutdown code observe a settled state. */
    cctx_thread_state *ts = thread_state_peek();
    reclaim_barrier(ts != NULL ? ts->record : NULL);
    struct reclaim_thread *t = ts != NULL && ts->record != NULL ? thread_of(ts->record) : NULL;
    if (t != NULL && section_depth == 0 && t->depth == 0) {
        retired_drain(t);
    } else if (t != NULL) {
        /* Called from inside a read (a retain callback): waiting for
         * hazards could wait for our own; free what is free now. */
        t->n_retired = 0;
        t->n_retired += retired_scan(&t->retired);
    } else {
        orphans_retired_scan();
    }
}

/* ------------------------------------------------------------ hazards */

/* Readers past RECLAIM_HAZARDS nested reads: while any exists, no scan
 * frees anything (it cannot tell what they hold). */
static unsigned overflow_readers;

/* Retired objects of threads that did not survive a fork (child only). */
static struct retired *orphan_retired;
/* Their thread states: their owners are gone, and releasing what they hold
 * would run user callbacks on behalf of threads that no longer exist, so
 * they stay allocated — linked here, one per thread that existed at the
 * fork. */
cctx_thread_state *cctx_fork_orphan_states CCTX_HIDDEN; /* not static: never optimised away */

/* The list is written only by the child handler, before the child can
 * start a thread, and only read after: plain loads. */
bool reclaim_thread_is_gone(const cctx_thread_state *ts)
{
    for (const cctx_thread_state *d = cctx_fork_orphan_states; d != NULL; d = d->fork_orphan_next)
        if (d == ts)
            return true;
    return false;
}

void *reclaim_protect(reclaim_record *record, void *const *src, reclaim_guard *g)
{
    if (record == NULL) {
        fallback_acquire();
        record = &fallback_record;
    }
    struct reclaim_thread *t = thread_of(record);
    g->thread = t;
    g->slot = t->depth++;
    if (CCTX_UNLIKELY(g->slot >= RECLAIM_HAZARDS)) {
        /* Full barrier: counted before the load, against the scanner's
         * exchange-then-load (retired_scan). */
        cctx_inc_uint(&overflow_readers);
        return cctx_load_ptr((void **)src);
    }
    void *p = cctx_load_ptr((void **)src);
    for (;;) {
        /* Exchange: a full barrier between naming `p` and re-reading the
         * source. If the source still holds `p` after our hazard became
         * visible, any writer that unpublishes it later scans after that
         * and sees the hazard. */
        (void)cctx_fas_ptr(&t->hazard[g->slot], p);
        void *again = cctx_load_ptr((void **)src);
        if (again == p)
            return p;
        p = again;
    }
}

void reclaim_unprotect(reclaim_guard *g)
{
    struct reclaim_thread *t = g->thread;
    if (CCTX_UNLIKELY(g->slot >= RECLAIM_HAZARDS)) {
        (void)cctx_dec_uint_is_zero(&overflow_readers);
    } else {
        /* Release: our reads of the object happen before its free. */
        cctx_store_ptr(&t->hazard[g->slot], NULL);
    }
    t->depth--;
    if (t == &fallback_thread)
        fallback_release();
}

/* Is `object` named by any hazard slot of any thread? */
static bool hazarded(void *object)
{
    ck_stack_entry_t *cursor;
    CK_STACK_FOREACH(&reclaim_epoch()->records, cursor) {
        ck_epoch_record_t *r = (ck_epoch_record_t *)cursor;
        CCTX_TSAN_ACQUIRE(r); /* its registration (reclaim_record_acquire) */
        if (!has_hazards(r))
            continue;
        struct reclaim_thread *t = thread_of(r);
        for (unsigned i = 0; i < RECLAIM_HAZARDS; i++)
            if (((uintptr_t)cctx_load_ptr(&t->hazard[i]) & ~(uintptr_t)3) == (uintptr_t)object)
                return true; /* a context root may carry tags in its 2 low bits */
    }
    return false;
}

bool reclaim_is_protected(void *object)
{
    return cctx_load_uint(&overflow_readers) != 0 || hazarded(object);
}

/* Frees every entry of `*list` that no hazard names; returns how many
 * remain. The caller unpublished each with a full barrier before it got
 * here, so a hazard set after our load is validated against the new value
 * and never names it (reclaim_protect). */
static unsigned retired_scan(struct retired **list)
{
    if (cctx_load_uint(&overflow_readers) != 0) {
        unsigned n = 0;
        for (struct retired *r = *list; r != NULL; r = r->next)
            n++;
        return n;
    }
    struct retired *keep = NULL, *free_list = NULL;
    unsigned kept = 0;
    for (struct retired *r = *list, *next; r != NULL; r = next) {
        next = r->next;
        if (hazarded(r->object)) {
            r->next = keep;
            keep = r;
            kept++;
        } else {
            r->next = free_list;
            free_list = r;
        }
    }
    *list = keep;
    /* Free after the list is consistent: a free_fn may retire again. */
    CCTX_TSAN_ACQUIRE(&epoch);
    while (free_list != NULL) {
        struct retired *next = free_list->next;
        free_list->free_fn(free_list->object);
        cctx_dealloc(free_list);
        free_list = next;
    }
    return kept;
}

static void orphans_retired_scan(void)
{
    if (cctx_load_ptr(&orphan_retired) == NULL)
        return;
    pthread_mutex_lock(&orphan_lock);
    struct retired *list = orphan_retired;
    orphan_retired = NULL;
    pthread_mutex_unlock(&orphan_lock);
    while (list != NULL) { /* nobody alive can hold them: free all */
        struct retired *next = list->next;
        list->free_fn(list->object);
        cctx_dealloc(list);
        list = next;
    }
}

void reclaim_retire(reclaim_record *record, void *object, void (*free_fn)(void *))
{
    struct retired *r = record != NULL ? cctx_alloc(sizeof *r) : NULL;
    if (r == NULL) {
        /* No record or no memory: wait here until no hazard names it.
         * Protected reads are short; yield to a descheduled reader. If
         * this very thread is inside a read (a callback that writes), the
         * hazard may be its own: then the object is kept (leaked) rather
         * than waited for — out of memory inside a callback only. */
        if (record != NULL && thread_of(record)->depth != 0)
            return;
        while (hazarded(object) || cctx_load_uint(&overflow_readers) != 0)
            sched_yield();
        CCTX_TSAN_ACQUIRE(&epoch);
        free_fn(object);
        return;
    }
    struct reclaim_thread *t = thread_of(record);
    r->object = object;
    r->free_fn = free_fn;
    r->next = t->retired;
    t->retired = r;
    if (++t->n_retired >= RECLAIM_SCAN_EVERY) {
        /* Zeroed first: a free_fn that retires again (a release callback
         * that sets a variable) counts onto the fresh total. What stays
         * after the scan is hazarded: at most the slots in use. */
        t->n_retired = 0;
        t->n_retired += retired_scan(&t->retired);
        orphans_retired_scan();
    }
}

/* Thread exit (and cctx_reclaim): free the whole list, waiting for
 * hazards to clear. */
static void retired_drain(struct reclaim_thread *t)
{
    while (t->retired != NULL) {
        t->n_retired = 0;
        t->n_retired += retired_scan(&t->retired);
        if (t->retired != NULL)
            sched_yield();
    }
    orphans_retired_scan();
}

unsigned reclaim_retired_count(reclaim_record *record)
{
    return record != NULL ? thread_of(record)->n_retired : 0;
}

/* ------------------------------------------------------------ fork */

/* Locks another thread could hold at the fork are taken first, so that the
 * child starts with them free and its structures consistent. One order for
 * the whole runtime: the fallback lock first (a read on the fallback
 * record may run a callback that creates a local, taking local.c's index
 * lock), then local.c's locks, then orphan_lock and context.c's handover
 * lock (leaves: nothing is locked while either is held). */
static void reclaim_atfork_prepare(void)
{
    pthread_mutex_lock(&fallback_lock);
    local_atfork_prepare();
    pthread_mutex_lock(&orphan_lock);
    context_atfork_prepare();
}

static void reclaim_atfork_parent(void)
{
    context_atfork_release();
    pthread_mutex_unlock(&orphan_lock);
    local_atfork_parent();
    pthread_mutex_unlock(&fallback_lock);
}

/* The child has one thread. Every record but its own belongs to a thread
 * that is gone: if that thread was in a section, its record says "active"
 * forever and every grace period would wait for it. Deactivate them all;
 * thread records become recyclable and hand their deferred objects to the
 * orphan list (static records stay registered: their owners keep using
 * them). Runs before any other code in the child, so plain stores do. */
static void reclaim_atfork_child(void)
{
    context_atfork_child();
    /* Credit lines of the threads that are gone: reusable once emptied. */
    hamt_credits_atfork_child();
    var_credits_atfork_child();
    /* Watcher callbacks the threads that are gone were inside. */
    watch_atfork_child();
    pthread_mutex_unlock(&orphan_lock);
    local_atfork_child();
    pthread_mutex_unlock(&fallback_lock);
    cctx_thread_state *ts = thread_state_peek();
    ck_epoch_record_t *mine = ts != NULL ? ts->record : NULL;
    /* Nested reads past the hazard slots belonged to threads now gone
     * (the forking thread is not inside a read: fork is not called from
     * inside the library). */
    overflow_readers = 0;
    ck_stack_entry_t *cursor;
    CK_STACK_FOREACH(&epoch.records, cursor) {
        ck_epoch_record_t *r = (ck_epoch_record_t *)cursor;
        if (r == mine)
            continue;
        r->active = 0;
        for (unsigned b = 0; b < CK_EPOCH_SENSE; b++)
            r->local.bucket[b].count = 0;
        if (has_hazards(r)) {
            struct reclaim_thread *t = thread_of(r);
            for (unsigned i = 0; i < RECLAIM_HAZARDS; i++)
                t->hazard[i] = NULL;
            t->depth = 0;
            while (t->retired != NULL) {
                struct retired *next = t->retired->next;
                t->retired->next = orphan_retired;
                orphan_retired = t->retired;
                t->retired = next;
            }
            t->n_retired = 0;
        }
        if (r->state != RECLAIM_CK_STATE_USED || r->ct != &thread_record_tag)
            continue;
        cctx_thread_state *dead = thread_of(r)->owner;
        thread_of(r)->owner = NULL;
        if (dead != NULL) {
            /* A thread stopped inside an in-place write (context.c) left
             * its context's root tagged, and readers wait for the tag to
             * clear: clear it. The slot holds the old value or the new one
             * whole (one aligned store); the reference the write would
             * have dropped stays with the dead thread, as everything else
             * it held does. */
            if (dead->in_place != NULL)
                dead->in_place->root = context_own_root(dead->in_place);
            /* Its root credits, which only its exit would give back. */
            context_fork_orphan_credits(dead);
            dead->fork_orphan_next = cctx_fork_orphan_states;
            cctx_fork_orphan_states = dead;
        }
        for (unsigned i = 0; i < CK_EPOCH_LENGTH; i++) {
            ck_stack_entry_t *list = ck_stack_batch_pop_npsc(&r->pending[i]);
            while (list != NULL) {
                ck_stack_entry_t *next = list->next;
                ck_stack_push_spnc(&orphans, list);
                orphan_count++;
                list = next;
            }
        }
        r->n_pending = 0;
        r->epoch = 0;
        r->state = RECLAIM_CK_STATE_FREE;
        epoch.n_free++;
    }
}
