/*
 * token.c — tokens returned by set and consumed by reset.
 */
#include "internal.h"
#include "thread_state.h"
#include "token.h"

/* Tokens this thread freed, kept for its next sets (as context.c keeps
 * context objects): a set + reset + release on one thread then calls no
 * allocator. Used only while the thread has a state; its teardown drains
 * it (token_cache_drain) once nothing can refill it. */
static __thread cctx_block_cache token_cache __attribute__((tls_model("initial-exec")));

void token_cache_drain(void)
{
    cctx_block_cache_drain(&token_cache);
}

cctx_status token_new(cctx_thread_state *ts, cctx_var *var, cctx_context *ctx,
                      uint64_t serial, bool light, cctx_token **out)
{
    cctx_token *t = ts != NULL ? cctx_alloc_cached(&token_cache, sizeof *t) : cctx_alloc(sizeof *t);
    if (t == NULL)
        return CCTX_ENOMEM;
    t->magic = CCTX_TOKEN_MAGIC;
    t->refcnt = 1;
    t->used = 0;
    t->has_old = false;
    t->light = light;
    t->var = var;
    t->ctx_serial = serial;
    t->old_value = NULL;
    if (light) {
        /* Its maker keeps `var` alive; the serial alone names `ctx`, so
         * no reference to either: two locked instructions and two
         * credit-line CASes fewer per set, and as many per release. */
        t->ctx = NULL;
    } else {
        var_ref(var);
        t->ctx = cctx_context_retain(ctx);
    }
    *out = t;
    return CCTX_OK;
}

cctx_token *cctx_token_retain(cctx_token *token)
{
    if (token_is_valid(token))
        cctx_inc_uint(&token->refcnt);
    return token;
}

void cctx_token_release(cctx_token *token)
{
    /* Count 1 is the caller's own reference: nobody else can retain the
     * token concurrently, so no locked decrement (see hamt_release). */
    if (!token_is_valid(token))
        return;
    if (cctx_load_uint(&token->refcnt) != 1 && !cctx_dec_uint_is_zero(&token->refcnt))
        return;
    if (token->has_old)
        var_value_release(token->var, token->old_value);
    token->magic = 0;
    if (!token->light) {
        var_unref(token->var);
        cctx_context_release(token->ctx);
    }
    cctx_dealloc_cached(thread_state_peek() != NULL ? &token_cache : NULL, token);
}

cctx_var *cctx_token_var(const cctx_token *token)
{
    return token_is_valid(token) ? token->var : NULL;
}

cctx_context *cctx_token_context(const cctx_token *token)
{
    return token_is_valid(token) ? token->ctx : NULL;
}

cctx_status cctx_token_old_value(const cctx_token *token, void **out)
{
    if (!token_is_valid(token) || out == NULL)
        return CCTX_EINVAL;
    if (!token->has_old)
        return CCTX_NOT_FOUND;
    *out = token->old_value;
    return CCTX_OK;
}

bool cctx_token_is_used(const cctx_token *token)
{
    return token_is_valid(token) && cctx_load_uint(&token->used) != 0;
}
