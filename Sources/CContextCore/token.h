/*
 * token.h — the layout of a token (cctx_token).
 *
 * Invariants: `old_value` is retained through var's ops when `has_old` is
 * true (Python's MISSING is `has_old == false`). A token names its context
 * by `ctx_serial` (the context's serial, context.h), never by address:
 * the serial is never reused, so a reset tells the token's context from
 * any other even after that context was freed and another object took its
 * address (PEP 567's identity check). A full token (cctx_var_set,
 * cctx_context_set) also owns references to `var` and `ctx`, for
 * cctx_token_var/_context; a light one (the binding's *_set_light) owns
 * neither: its maker keeps `var` alive while the token lives, and `ctx` is
 * NULL. `used` goes 0 -> 1 once, when a reset commits, by the writer of the
 * token's context (context.c's token_consume: a store, since write
 * ownership is exclusive); a reset that fails leaves it 0.
 */
#ifndef CCTX_TOKEN_H
#define CCTX_TOKEN_H

#ifndef CCTX_BUILDING_CORE
#error "token.h is internal to CContextCore"
/* Frees the calling thread's cache of token objects; called by the
 * thread-state teardown once the state is detached (nothing refills it). */
void token_cache_drain(void) CCTX_HIDDEN;

#endif

#include "context.h"

#define CCTX_TOKEN_MAGIC 0x43544f4bu /* "CTOK" */

struct cctx_token {
    uint32_t magic;
    unsigned refcnt;
    unsigned used;
    bool has_old;
    bool light;
    cctx_var *var;
    cctx_context *ctx; /* NULL for a light token */
    uint64_t ctx_serial;
    void *old_value;
};

static inline bool token_is_valid(const cctx_token *t)
{
    return t != NULL && t->magic == CCTX_TOKEN_MAGIC;
}

/* A new token (reference returned in *out) for a set of `var` in `ctx`
 * by the thread whose state is `ts` (NULL: none; the token then comes
 * from the allocator, not the thread's token cache),
 * whose context serial is `serial`, with no old binding yet (MISSING):
 * the writer fills `has_old`/`old_value` once it knows how the old value's
 * reference reaches the token (context_write_set). Retains var and ctx
 * unless `light`. */
cctx_status token_new(cctx_thread_state *ts, cctx_var *var, cctx_context *ctx,
                      uint64_t serial, bool light, cctx_token **out) CCTX_HIDDEN;

/* Frees the calling thread's cache of token objects; called by the
 * thread-state teardown once the state is detached (nothing refills it). */
void token_cache_drain(void) CCTX_HIDDEN;

#endif
