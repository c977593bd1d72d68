/*
 * reclaim.h — the runtime's one safe-memory-reclamation API.
 *
 * Memory that one thread unpublishes while another may still be reading it
 * (a context's replaced root, a local's replaced slot directory) is freed
 * only after a grace period: once every read section that was open when it
 * was unpublished has ended. Scheme: Concurrency Kit's ck_epoch, called
 * from reclaim.c only.
 *
 *   reclaim_section_begin/end   bracket a read of shared memory
 *   reclaim_defer               free an object after a grace period
 *   reclaim_poll                free what is already safe, without waiting
 *   reclaim_barrier             wait for a grace period, then free all of
 *                               this record's deferred objects
 *   reclaim_synchronize         wait for a grace period (frees nothing)
 *
 * Bounded memory: deferred objects sit on the deferring thread's record.
 * Every RECLAIM_POLL_EVERY deferrals the record polls (advances the global
 * epoch when every active reader has seen it and frees what two epoch
 * steps made safe); a record that holds RECLAIM_PENDING_MAX objects waits
 * for a grace period before it defers more. Read sections are short (a
 * lookup, a retain callback), so that wait is bounded, and what is held
 * for reclamation is at most RECLAIM_PENDING_MAX objects per thread,
 * whatever the readers do and however many writes there are.
 *
 * Hazard pointers for context roots. A popular context is read by many
 * threads without pause, and with more threads than cores some reader is
 * always descheduled inside its read: an epoch grace period then lasts a
 * scheduler round, and a writer that must wait for one to stay bounded
 * slows to a crawl. So a context root is read under a hazard pointer
 * instead: the reader names the root it reads in one of its record's
 * hazard slots, and a writer frees a replaced root as soon as no slot
 * names it — a descheduled reader keeps only the one root it named.
 *
 *   reclaim_protect/unprotect   read a published pointer under a hazard
 *   reclaim_retire              free once no hazard names it
 *
 * A record's retired list is scanned every RECLAIM_SCAN_EVERY retirements;
 * after a scan at most (hazard slots in use) entries remain, so a thread
 * holds at most RECLAIM_SCAN_EVERY + RECLAIM_HAZARDS x threads retired
 * roots.
 *
 * fork(): reclaim.c installs the runtime's only pthread_atfork handlers,
 * at load time. Prepare takes every runtime lock in one order (the
 * fallback lock, local.c's locks, the orphan lock); parent and child give
 * them back. In the child, every record but the forking thread's belongs
 * to a thread that no longer exists: those records are marked inactive
 * (no grace period waits for them) and recyclable, the objects they had
 * deferred are adopted and freed by the child's next poll or barrier, and
 * a context root such a thread had tagged for an in-place write
 * (cctx_thread_state.in_place) is untagged.
 */
#ifndef CCTX_RECLAIM_H
#define CCTX_RECLAIM_H

#ifndef CCTX_BUILDING_CORE
#error "reclaim.h is internal to CContextCore"
#endif

#include "internal.h"

#include <stdbool.h>

/* A thread's reclamation record (ck_epoch_record_t; opaque outside
 * reclaim.c). */
typedef struct ck_epoch_record reclaim_record;

/* A read section. `record` NULL means the shared fallback record (for a
 * thread whose state could not be created, or whose teardown gave its
 * record back); it is held under a mutex, re-entrant on one thread, so
 * sections and protected reads on it nest. */
typedef struct reclaim_section {
    reclaim_record *record;
    bool fallback;
    /* ck_epoch_section_t: one unsigned bucket index. */
    unsigned bucket;
} reclaim_section;

/* Hazard slots per thread (nested reads: a retain callback that reads
 * another context). Deeper nesting is safe but stops every thread from
 * freeing retired roots until it unwinds. */
#define RECLAIM_HAZARDS 4u
/* Retirements between scans of a record's retired list. */
#define RECLAIM_SCAN_EVERY 64u

/* A hazard-pointer read in progress. */
typedef struct reclaim_guard {
    struct reclaim_thread *thread;
    unsigned slot; /* RECLAIM_HAZARDS: the overflow path */
} reclaim_guard;

/* Loads `*src` (a pointer published with a full barrier or a release
 * store) and protects it: it is not freed through reclaim_retire until
 * reclaim_unprotect. `record` is the calling thread's (NULL: the fallback
 * record, under its mutex until reclaim_unprotect). */
void *reclaim_protect(reclaim_record *record, void *const *src, reclaim_guard *g) CCTX_HIDDEN;
void reclaim_unprotect(reclaim_guard *g) CCTX_HIDDEN;

/* True when a read that reclaim_protect began may still hold `object`:
 * some hazard slot names it, or some thread reads past its hazard slots
 * (then nothing can be ruled out). The caller unpublished `object` (or
 * tagged its source) with a full barrier first: a reader whose hazard this
 * misses re-reads the source after its own barrier and sees the change
 * (reclaim_protect). Reads every thread's hazard line, writes nothing. */
bool reclaim_is_protected(void *object) CCTX_HIDDEN;

/* Frees `object` with `free_fn(object)` once no hazard names it. The
 * caller unpublished it with a full barrier (an exchange). `record` is the
 * caller's own (NULL: waits for the hazards to clear, then frees). */
void reclaim_retire(reclaim_record *record, void *object, void (*free_fn)(void *)) CCTX_HIDDEN;

/* Retired objects this record still holds (tests). */
unsigned reclaim_retired_count(reclaim_record *record) CCTX_HIDDEN;

/* How many deferrals between polls, and the most one record holds. */
#define RECLAIM_POLL_EVERY 32u
#define RECLAIM_PENDING_MAX 256u

/* A record for a new thread whose state is `owner`: recycled from an
 * exited thread or freshly registered. NULL on ENOMEM. */
reclaim_record *reclaim_record_acquire(void *owner) CCTX_HIDDEN;
/* Thread exit: waits for a grace period, frees everything the record had
 * deferred, and gives the record back for reuse. NULL is ignored. */
void reclaim_record_release(reclaim_record *record) CCTX_HIDDEN;

/* Thread teardown, while the thread's state is still usable: waits for a
 * grace period and the hazards, and frees everything the record deferred
 * or retired, so that release callbacks run while they may still use the
 * library. Returns whether there was anything to free (a freed value's
 * callback may have deferred more: call again until false). Does nothing
 * inside a read section or for NULL. */
bool reclaim_flush(reclaim_record *record) CCTX_HIDDEN;

/* Brackets a read. `record` is the calling thread's own (or NULL: the
 * fallback record). Sections nest. Never waits for a grace period inside
 * one: reclaim_barrier and the bound in reclaim_defer skip their wait on a
 * thread that is inside a section (it would wait for itself). */
void reclaim_section_begin(reclaim_record *record, reclaim_section *s) CCTX_HIDDEN;
void reclaim_section_end(reclaim_section *s) CCTX_HIDDEN;

/* Frees `object` with `free_fn(object)` once no section open now can still
 * read it. `record` is the calling thread's own record; NULL (no thread
 * state) waits for a grace period and frees at once. Uses one small
 * allocation; when that fails it also waits and frees at once. free_fn may
 * run user code (release callbacks) and may call back into the runtime. */
void reclaim_defer(reclaim_record *record, void *object,
                   void (*free_fn)(void *)) CCTX_HIDDEN;

/* The same in two steps, for a change that must not fail once it is
 * visible (a local's directory growth): reclaim_deferral_new allocates the
 * deferral before anything changes (NULL on ENOMEM; give an unused one
 * back with reclaim_deferral_discard), and reclaim_defer_prepared defers
 * with it and cannot fail. Same rules as reclaim_defer otherwise. */
typedef struct reclaim_deferral reclaim_deferral;
reclaim_deferral *reclaim_deferral_new(void) CCTX_HIDDEN;
void reclaim_deferral_discard(reclaim_deferral *d) CCTX_HIDDEN;
void reclaim_defer_prepared(reclaim_record *record, reclaim_deferral *d, void *object,
                            void (*free_fn)(void *)) CCTX_HIDDEN;

/* In a fork child's handler only (one thread): free_fn(object) runs at the
 * child's next poll or barrier, with the objects that threads which did
 * not survive the fork had deferred. Allocates; without memory the object
 * stays allocated (as everything else a dead thread held does). */
void reclaim_fork_orphan(void *object, void (*free_fn)(void *)) CCTX_HIDDEN;

/* Whether `ts` is the state of a thread that did not survive a fork (only
 * ever true in a fork child). Walks one list entry per such thread; for
 * rare paths. */
struct cctx_thread_state;
bool reclaim_thread_is_gone(const struct cctx_thread_state *ts) CCTX_HIDDEN;

/* Frees what this record deferred that is already safe; never waits. */
void reclaim_poll(reclaim_record *record) CCTX_HIDDEN;

/* Waits for a grace period and frees everything this record (NULL: none)
 * deferred, plus objects adopted after a fork. */
void reclaim_barrier(reclaim_record *record) CCTX_HIDDEN;

/* Waits for a grace period: every section open at the call has ended when
 * it returns. Frees nothing. */
void reclaim_synchronize(void) CCTX_HIDDEN;

/* Objects deferred and not yet freed, on every record (tests, docs). */
unsigned reclaim_pending(reclaim_record *record) CCTX_HIDDEN;

#endif
