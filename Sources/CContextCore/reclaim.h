/*
 * reclaim.h — safe memory reclamation for roots read across threads.
 *
 * Scheme (Concurrency Kit's ck_epoch): a thread that reads a context it is
 * not the writer of increments the context's `readers` count and reads
 * inside an epoch section of its own ck_epoch record. A writer swaps the
 * root with a full barrier, then looks at `readers`: zero means no reader
 * can hold the old root (any later reader sees the new one), so it is
 * released at once; otherwise the old root goes on the context's retired
 * list, and whoever next finds the list non-empty with no readers left (the
 * last reader on its way out, the writer, or the context's destruction)
 * waits for a ck_epoch grace period and releases it. Reclamation thus
 * finishes through other threads' calls, never only the dropper's.
 */
#ifndef CCTX_RECLAIM_H
#define CCTX_RECLAIM_H

#ifndef CCTX_BUILDING_CORE
#error "reclaim.h is internal to CContextCore"
#endif

#include "thread_state.h"

typedef struct reclaim_section {
    ck_epoch_record_t *record;
    ck_epoch_section_t section;
} reclaim_section;

/* The process's epoch (initialised once). */
ck_epoch_t *reclaim_epoch(void) CCTX_HIDDEN;

/* A ck_epoch record for a new thread: recycled from an exited thread or
 * freshly registered. NULL on ENOMEM. Records are never freed (ck_epoch
 * keeps them in its global list); they are reused. */
ck_epoch_record_t *reclaim_record_acquire(void) CCTX_HIDDEN;
/* Gives the record back for reuse (thread exit). */
void reclaim_record_release(ck_epoch_record_t *record) CCTX_HIDDEN;

/* Brackets a read of `ctx` by a thread that is not its writer, inside an
 * epoch section of `record` (the thread's own). */
void reclaim_read_begin(cctx_context *ctx, ck_epoch_record_t *record,
                        reclaim_section *s) CCTX_HIDDEN;

/* For a thread whose state cannot be created (out of memory): a shared,
 * statically allocated record, registered once without allocating, used
 * under a mutex (a record serves one thread at a time). Off every normal
 * path: only reads that cannot report an error use it. */
ck_epoch_record_t *reclaim_fallback_lock(void) CCTX_HIDDEN;
void reclaim_fallback_unlock(void) CCTX_HIDDEN;
void reclaim_read_end(cctx_context *ctx, reclaim_section *s) CCTX_HIDDEN;
/* The second half of reclaim_read_end, after the section has ended: leaves
 * the readers count and drains if this was the last reader. */
void reclaim_read_finish(cctx_context *ctx) CCTX_HIDDEN;

/* Disposes of `old_root` after the writer replaced it (see above). */
void reclaim_retire(cctx_context *ctx, hamt_node *old_root) CCTX_HIDDEN;

/* Releases every retired root of a context that has no references left. */
void reclaim_context_destroy(cctx_context *ctx) CCTX_HIDDEN;

#endif
