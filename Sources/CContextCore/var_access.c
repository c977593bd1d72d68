/*
 * var_access.c — get, set and reset of a variable in the calling thread's
 * current context: the hot path of the C API.
 *
 * get is one TLS load, one magic check and a hit in the thread's lookup
 * cache (thread_state.h), or else a HAMT lookup: the thread is the only
 * writer of its current context (context.h), so it reads the root without
 * any fence or reference count. A thread that has no state yet is in an
 * empty context; get creates nothing.
 */
#include "internal.h"
#include "context.h"
#include "thread_state.h"
#include "token.h"

static inline bool current_lookup(const cctx_var *var, void **out)
{
    cctx_thread_state *ts = thread_state_peek();
    if (ts == NULL)
        return false;
    /* Cache hit: same variable, current mapping unchanged since. */
    lookup_cache_entry *e = &ts->cache[var->hash & (CCTX_LOOKUP_CACHE_SIZE - 1)];
    if (CCTX_LIKELY(e->var == var && e->version == ts->version)) {
        *out = e->value;
        return true;
    }
    if (!hamt_find(cctx_load_ptr(&ts->current->root), var, out))
        return false;
    e->var = var;
    e->version = ts->version;
    e->value = *out;
    return true;
}

cctx_status cctx_var_get(cctx_var *var, void **out)
{
    if (CCTX_UNLIKELY(!var_is_valid(var) || out == NULL))
        return CCTX_EINVAL;
    if (current_lookup(var, out))
        return CCTX_OK;
    if (var->has_default) {
        *out = var->default_value;
        return CCTX_OK;
    }
    return CCTX_NOT_FOUND;
}

cctx_status cctx_var_get_default(cctx_var *var, void *default_value, void **out)
{
    if (CCTX_UNLIKELY(!var_is_valid(var) || out == NULL))
        return CCTX_EINVAL;
    if (!current_lookup(var, out))
        *out = default_value;
    return CCTX_OK;
}

cctx_status cctx_var_set(cctx_var *var, void *value, cctx_token **token_out)
{
    if (CCTX_UNLIKELY(!var_is_valid(var)))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_get();
    if (ts == NULL)
        return CCTX_ENOMEM;
    return context_write_set(ts->current, var, value, token_out);
}

cctx_status cctx_var_reset(cctx_var *var, cctx_token *token)
{
    if (CCTX_UNLIKELY(!var_is_valid(var) || !token_is_valid(token)))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_peek();
    if (ts == NULL) {
        /* No state: the current context is a fresh empty one, which no
         * token can have been made in. Check in Python's order. */
        if (cctx_token_is_used(token))
            return CCTX_TOKEN_USED;
        return token->var != var ? CCTX_TOKEN_WRONG_VAR : CCTX_TOKEN_WRONG_CONTEXT;
    }
    return context_write_reset(ts->current, var, token);
}
