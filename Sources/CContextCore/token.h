/*
 * token.h — the layout of a token (cctx_token).
 *
 * Invariants: `var` and `ctx` are references the token owns; `old_value`
 * is retained through var's ops when `has_old` is true (Python's MISSING is
 * `has_old == false`). `used` goes 0 -> 1 once, when a reset commits, by
 * the writer of `ctx` (context.c's token_consume: a store, since write
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
    cctx_var *var;
    cctx_context *ctx;
    void *old_value;
};

static inline bool token_is_valid(const cctx_token *t)
{
    return t != NULL && t->magic == CCTX_TOKEN_MAGIC;
}

/* A new token (reference returned in *out) remembering the old binding.
 * Retains var, ctx and old_value. */
cctx_status token_new(cctx_var *var, cctx_context *ctx, bool has_old,
                      void *old_value, cctx_token **out) CCTX_HIDDEN;

/* Frees the calling thread's cache of token objects; called by the
 * thread-state teardown once the state is detached (nothing refills it). */
void token_cache_drain(void) CCTX_HIDDEN;

#endif
