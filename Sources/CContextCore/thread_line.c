/*
 * thread_line.c — per-thread lines: claim, give back, orphan after fork.
 * The invariants are in thread_line.h.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#include "thread_line.h"

/* Whether every word after the header reads 0. */
static bool line_words_empty(const thread_line *l, size_t size)
{
    const uintptr_t *w = (const uintptr_t *)(l + 1);
    const size_t n = (size - sizeof *l) / sizeof *w;
    for (size_t i = 0; i < n; i++)
        if (cctx_load_uintptr(&w[i]) != 0)
            return false;
    return true;
}

/* Claims a FREE line for a caller that reserved one (see `free`). */
static thread_line *claim_reserved(thread_line_registry *r)
{
    /* The reservation guarantees a FREE line exists throughout; a scan
     * misses it only when another reserver claimed the one it reached,
     * and then another is FREE: scan again. */
    for (;;) {
        for (thread_line *l = thread_line_first(r); l != NULL; l = l->next) {
            if (cctx_load_uint(&l->in_use) == THREAD_LINE_FREE &&
                cctx_cas_uint(&l->in_use, THREAD_LINE_FREE, THREAD_LINE_CLAIMED))
                return l; /* its words are 0 (thread_line.h, FREE) */
        }
    }
}

thread_line *thread_line_claim(thread_line_registry *r, size_t size)
{
    unsigned f = cctx_load_uint(&r->free);
    while (f != 0) {
        if (cctx_cas_uint(&r->free, f, f - 1))
            return claim_reserved(r);
        f = cctx_load_uint(&r->free);
    }
    /* An orphan's words only ever go to 0 (its owner is gone; others only
     * empty them), so all 0 now stays all 0 until we own it: the CAS makes
     * it ours with nothing in it. */
    for (thread_line *l = thread_line_first(r); l != NULL; l = l->next) {
        if (cctx_load_uint(&l->in_use) == THREAD_LINE_ORPHANED && line_words_empty(l, size) &&
            cctx_cas_uint(&l->in_use, THREAD_LINE_ORPHANED, THREAD_LINE_CLAIMED))
            return l;
    }
    void *mem;
    /* Never freed (a revoker may be reading it): reused by later threads.
     * So not through cctx_alloc, whose live count must go back to where a
     * test started. */
    if (posix_memalign(&mem, 64, size) != 0)
        return NULL;
    memset(mem, 0, size);
    thread_line *l = mem;
    l->in_use = THREAD_LINE_CLAIMED;
    for (;;) {
        thread_line *head = thread_line_first(r);
        l->next = head;
        /* The CAS is a full barrier: the zeroed words, `in_use` and `next`
         * are visible to every scanner that reaches the line through it. */
        if (cctx_cas_ptr(&r->head, head, l))
            return l;
    }
}

void thread_line_give_back(thread_line_registry *r, thread_line *l)
{
    /* Release: after the caller's CASes that emptied the words. Then
     * offered: a reserver that counts it finds it FREE. */
    cctx_store_uint(&l->in_use, THREAD_LINE_FREE);
    cctx_inc_uint(&r->free);
}

void thread_line_orphan_others(thread_line_registry *r, thread_line *mine)
{
    /* One thread in the child: plain order is enough, the atomics only
     * keep the accesses the same kind as everywhere else. */
    for (thread_line *l = thread_line_first(r); l != NULL; l = l->next)
        if (l != mine && cctx_load_uint(&l->in_use) == THREAD_LINE_CLAIMED)
            cctx_store_uint(&l->in_use, THREAD_LINE_ORPHANED);
}

size_t thread_line_count(thread_line_registry *r, size_t *claimed, size_t *orphaned)
{
    size_t n = 0, c = 0, o = 0;
    for (thread_line *l = thread_line_first(r); l != NULL; l = l->next) {
        unsigned u = cctx_load_uint(&l->in_use);
        n++;
        c += u == THREAD_LINE_CLAIMED;
        o += u == THREAD_LINE_ORPHANED;
    }
    if (claimed != NULL)
        *claimed = c;
    if (orphaned != NULL)
        *orphaned = o;
    return n;
}
