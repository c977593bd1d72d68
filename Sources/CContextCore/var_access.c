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

/*
 * Async-signal safety (contextcore.h promises it for get). A signal handler
 * that calls get runs on this thread between two instructions of whatever
 * the thread was doing; it sees this thread's memory in program order,
 * which the compiler barriers below (no CPU fences: one thread) enforce.
 * - A cache entry is valid only through its `version`, written last: a
 *   writer first zeroes it, then writes var and value, then the version. A
 *   handler that interrupted the write sees version 0 (a miss) or a whole
 *   entry.
 * - A get inside a handler that interrupted a get's cache write must not
 *   write the entry itself: the interrupted write would then finish on top
 *   of it and leave one variable's entry holding another's value. `in_get`
 *   marks a get in progress; a nested get reads but never caches.
 * - Publishing a root and switching contexts bump the version after the
 *   change and before anything is freed (context.c), so that a handler in
 *   between either hits an entry of the old mapping (still alive) or caches
 *   a new value under the old version, which the bump then invalidates.
 * - The map is read with no lock and no allocation: nodes never change
 *   once published, and the thread's current root stays alive while it is
 *   current.
 */
#define SIGNAL_FENCE() __atomic_signal_fence(__ATOMIC_SEQ_CST)

static inline bool current_lookup(const cctx_var *var, void **out)
{
    cctx_thread_state *ts = thread_state_peek();
    if (ts == NULL)
        return false;
    lookup_cache_entry *e = &ts->cache[var->hash & (CCTX_LOOKUP_CACHE_SIZE - 1)];
    const uint64_t version = ts->version;
    /* Cache hit: same variable, current mapping unchanged since. */
    if (CCTX_LIKELY(e->version == version && e->var == var)) {
        *out = e->value;
        return true;
    }
    ts->in_get++;
    SIGNAL_FENCE();
    bool found = hamt_find(context_own_root(ts->current), var, out);
    if (found && ts->in_get == 1) {
        e->version = 0;
        SIGNAL_FENCE();
        e->var = var;
        e->value = *out;
        SIGNAL_FENCE();
        e->version = version;
    }
    SIGNAL_FENCE();
    ts->in_get--;
    return found;
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
    return context_write_set(ts, ts->current, var, value, token_out);
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
    return context_write_reset(ts, ts->current, var, token);
}
