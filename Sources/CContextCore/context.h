/*
 * context.h — the layout of a context (cctx_context) and the operations the
 * rest of the runtime uses on it.
 *
 * Invariants:
 * - `root` is the context's map (a HAMT root, NULL when empty). It is
 *   replaced, never mutated: a writer builds a new root by path copying and
 *   publishes it with one atomic exchange. The context holds one reference
 *   to the root it points at.
 * - Writers are serialized by `owner`: 0 when nobody has entered the
 *   context; the entering thread's state (a pointer, always even and > 2)
 *   while a thread has it entered; CCTX_OWNER_CLAIMED while an async task
 *   claims it; CCTX_OWNER_WRITING during a one-off write into a context
 *   nobody has entered. Only the owner writes `root`.
 * - Readers on other threads never block the writer and never see freed
 *   memory: they announce themselves in `readers` and read inside a
 *   ck_epoch section (reclaim.c). A writer that replaces a root while
 *   `readers` is non-zero hands the old root to reclaim.c instead of
 *   releasing it.
 * - `prev` is meaningful only while entered by a thread: the context that
 *   was that thread's current one before the enter. Only that thread
 *   touches it.
 */
#ifndef CCTX_CONTEXT_H
#define CCTX_CONTEXT_H

#ifndef CCTX_BUILDING_CORE
#error "context.h is internal to CContextCore"
#endif

#include "hamt.h"

#define CCTX_CONTEXT_MAGIC 0x43435458u /* "CCTX" */

#define CCTX_OWNER_NONE ((uintptr_t)0)
#define CCTX_OWNER_CLAIMED ((uintptr_t)1)
#define CCTX_OWNER_WRITING ((uintptr_t)2)

struct reclaim_retired;

struct cctx_context {
    uint32_t magic;
    unsigned refcnt;
    hamt_node *root;
    uintptr_t owner;
    cctx_context *prev;
    unsigned readers;
    struct reclaim_retired *retired;
};

static inline bool context_is_valid(const cctx_context *ctx)
{
    return ctx != NULL && ctx->magic == CCTX_CONTEXT_MAGIC;
}

/* A new context holding `root` (the reference is transferred to it). On
 * CCTX_ENOMEM the caller keeps its reference. */
cctx_status context_new_with_root(hamt_node *root, cctx_context **out) CCTX_HIDDEN;

/* Publishes `new_root` (reference transferred) in place of the current
 * root, and disposes of the old one (reclaim.c). Caller is the writer. */
void context_publish(cctx_context *ctx, hamt_node *new_root) CCTX_HIDDEN;

/* A reference to the context's current root, taken safely from any thread
 * (also one whose state cannot be created: context.c). Always CCTX_OK. */
cctx_status context_snapshot(cctx_context *ctx, hamt_node **out) CCTX_HIDDEN;

/* The writes behind cctx_var_set/reset and cctx_context_set/reset; the
 * caller has checked the arguments and holds write ownership. */
cctx_status context_write_set(cctx_context *ctx, cctx_var *var, void *value,
                              cctx_token **token_out) CCTX_HIDDEN;
cctx_status context_write_reset(cctx_context *ctx, cctx_var *var,
                                cctx_token *token) CCTX_HIDDEN;

#endif
