/*
 * thread_line.h — per-thread lines: one 64-byte-aligned block per thread
 * and per registry, claimed on the thread's first need, given back at its
 * exit, reused by later threads, never freed.
 *
 * Two structures use them: the shared root credits (hamt.c, a credit slot
 * per thread) and the variable credits (var.c, a credit line per thread).
 * Each embeds a `thread_line` header as its first member and keeps, after
 * it, only `uintptr_t` words (its credits) that its own thread writes and
 * that any thread may empty (a CAS to 0, dropping what the word held).
 *
 * Invariants of a registry:
 * - Lines are pushed once (a CAS on `head`) and never unlinked or freed:
 *   a revoker on another thread may be scanning the list, reading a line's
 *   words, at any moment, with no guard. So a line outlives every reader,
 *   and `next` never changes after the push.
 * - The push CAS publishes the line: its words were zeroed and `in_use`
 *   set before the CAS (a full barrier), so a scanner that loads `head`
 *   (acquire) or follows `next` sees a zeroed, claimed line, never garbage.
 * - `in_use` is THREAD_LINE_FREE, _CLAIMED or _ORPHANED:
 *     FREE: no thread owns the line, and every word after the header is 0.
 *       The thread giving it back empties its words first (its credits go
 *       back before its line: hamt_credits_flush, var_credits_flush); the
 *       release store of FREE comes after those emptying CASes, so the
 *       next claimer, whose CAS reads FREE, finds the words empty and
 *       starts from nothing.
 *     CLAIMED: one live thread owns it (its thread-local pointer names it);
 *       only that thread puts anything into a word.
 *     ORPHANED: only in a fork child. The owner did not survive the fork:
 *       nobody puts anything into its words any more, and others only
 *       empty them (revocation), so a word that reads 0 stays 0. Once
 *       every word reads 0 (its credits were taken back in the child) the
 *       line is as good as FREE, and a claimer takes it.
 *
 * Concurrency Kit only through atomic.h.
 */
#ifndef CCTX_THREAD_LINE_H
#define CCTX_THREAD_LINE_H

#ifndef CCTX_BUILDING_CORE
#error "thread_line.h is internal to CContextCore"
#endif

#include <stddef.h>
#include <stdint.h>

#include "atomic.h"

#define THREAD_LINE_FREE 0u
#define THREAD_LINE_CLAIMED 1u
#define THREAD_LINE_ORPHANED 2u

/* The header every line starts with. */
typedef struct thread_line {
    struct thread_line *next; /* the registry: pushed once, never unlinked */
    unsigned in_use;          /* THREAD_LINE_FREE / _CLAIMED / _ORPHANED */
} thread_line;

/* A registry: a lock-free list of lines of one size. Zero-initialized. */
typedef struct thread_line_registry {
    thread_line *head;
    unsigned free; /* FREE lines not reserved by a claimer (see above) */
} thread_line_registry;

/* A line of `size` bytes (the embedding structure's, header included, a
 * multiple of 64) claimed for the calling thread: a FREE line (or an
 * ORPHANED one whose words are all 0) from the registry, else a new one,
 * zeroed and pushed. Every word after the header is 0. NULL without
 * memory. The caller stores it in its thread-local pointer and gives it
 * back with thread_line_give_back. */
thread_line *thread_line_claim(thread_line_registry *r, size_t size) CCTX_HIDDEN;

/* Gives the calling thread's line back to `r` (release store of FREE,
 * then `free` counts it). The caller has emptied every word of it already
 * (see FREE above) and no longer names it in its thread-local pointer. */
void thread_line_give_back(thread_line_registry *r, thread_line *l) CCTX_HIDDEN;

/* In a fork child's handler only (one thread): every CLAIMED line but
 * `mine` (the forking thread's, or NULL) belonged to a thread that did not
 * survive; mark it ORPHANED. Its words keep their credits, which stay
 * visible to revocation; the line is reused once they are taken back.
 * (A thread stopped between a give-back's two steps, or between a
 * reservation and its claim, leaves one FREE line that `free` does not
 * offer: never reused, never wrong.) */
void thread_line_orphan_others(thread_line_registry *r, thread_line *mine) CCTX_HIDDEN;

/* Lines in the registry (ever made); with `claimed` / `orphaned`, those
 * CLAIMED / ORPHANED now. A snapshot (tests). */
size_t thread_line_count(thread_line_registry *r, size_t *claimed, size_t *orphaned) CCTX_HIDDEN;

/* The first line to scan; the rest through ->next (never changes). */
static inline thread_line *thread_line_first(thread_line_registry *r)
{
    return cctx_load_ptr(&r->head);
}

#endif
