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
 * - A get in a handler must not write an entry while an interrupted get
 *   of this thread is using it: under a hit, between its checks and its
 *   load of the value, a rewrite for another variable would make the hit
 *   return that variable's value (loading the value first does not help: a
 *   rewrite for the same variable after the load passes the checks with
 *   the old entry's value); under a miss, the interrupted write would
 *   finish on top of the handler's and leave one variable's entry holding
 *   another's value. So every get, hit or miss, counts itself in `in_get`,
 *   and only a get that finds no other in progress (in_get == 1) writes
 *   the cache; a nested get reads but never caches. The entry cannot change
 *   under a get then: only this thread writes it, and not inside a get.
 * - Publishing a root and switching contexts bump the version after the
 *   change and before anything is freed (context.c), so that a handler in
 *   between either hits an entry of the old mapping (still alive) or caches
 *   a new value under the old version, which the bump then invalidates.
 * - The map is read with no lock and no allocation: nodes never change
 *   once published, and the thread's current root stays alive while it is
 *   current.
 */
#define SIGNAL_FENCE() __atomic_signal_fence(__ATOMIC_SEQ_CST)
/* The cache entries and `in_get` are shared with this thread's signal
 * handlers, so they are read and written as (relaxed) atomics: a signal
 * fence orders atomic accesses only, and clang does move plain loads of an
 * entry across it. On x86 these are plain moves. */
#define ENTRY_LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define ENTRY_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

/* The hit path: the value `var` has in the thread's current context when
 * the thread's lookup cache holds it. Small enough to inline into the
 * public entry points, whose hit path then saves no registers and makes
 * no call. Counted in `in_get` (see the essay). */
static inline bool cache_lookup(cctx_thread_state *ts, const cctx_var *var, void **out)
{
    const lookup_cache_entry *e = &ts->cache[var->hash & (CCTX_LOOKUP_CACHE_SIZE - 1)];
    ENTRY_STORE(&ts->in_get, ENTRY_LOAD(&ts->in_get) + 1);
    SIGNAL_FENCE();
    /* All three fields loaded, then compared (in_get keeps the entry
     * still meanwhile): each addressed from the state, a few instructions
     * fewer than loading the value after the tests. */
    const cctx_var *entry_var = ENTRY_LOAD(&e->var);
    const uint64_t entry_version = ENTRY_LOAD(&e->version);
    void *value = ENTRY_LOAD(&e->value);
    bool hit = (entry_version == ts->version) & (entry_var == var);
    if (CCTX_LIKELY(hit))
        *out = value;
    SIGNAL_FENCE();
    ENTRY_STORE(&ts->in_get, ENTRY_LOAD(&ts->in_get) - 1);
    return hit;
}

/* The miss path: a HAMT lookup in the current root, cached when found. Out
 * of line (see cache_lookup). */
static __attribute__((noinline)) bool current_lookup_missed(cctx_thread_state *ts, const cctx_var *var,
                                                           void **out)
{
    if (ts == NULL)
        return false; /* no state: an empty context */
    lookup_cache_entry *e = &ts->cache[var->hash & (CCTX_LOOKUP_CACHE_SIZE - 1)];
    const uint64_t version = ts->version;
    ENTRY_STORE(&ts->in_get, ENTRY_LOAD(&ts->in_get) + 1);
    SIGNAL_FENCE();
    bool found = hamt_find(context_own_root(ts->current), var, out);
    if (found && ENTRY_LOAD(&ts->in_get) == 1) {
        ENTRY_STORE(&e->version, 0);
        SIGNAL_FENCE();
        ENTRY_STORE(&e->var, var);
        ENTRY_STORE(&e->value, *out);
        SIGNAL_FENCE();
        ENTRY_STORE(&e->version, version);
    }
    SIGNAL_FENCE();
    ENTRY_STORE(&ts->in_get, ENTRY_LOAD(&ts->in_get) - 1);
    return found;
}

/* The miss path of cctx_var_get, with the variable's default. */
static __attribute__((noinline)) cctx_status var_get_missed(cctx_thread_state *ts, cctx_var *var,
                                                            void **out)
{
    if (current_lookup_missed(ts, var, out))
        return CCTX_OK;
    if (var->has_default) {
        *out = var->default_value;
        return CCTX_OK;
    }
    return CCTX_NOT_FOUND;
}

cctx_status cctx_var_get(cctx_var *var, void **out)
{
    if (CCTX_UNLIKELY(!var_is_valid(var) || out == NULL))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_peek();
    if (CCTX_LIKELY(ts != NULL) && cache_lookup(ts, var, out))
        return CCTX_OK;
    return var_get_missed(ts, var, out);
}

/* The miss path of cctx_var_value (out of line: the hit path keeps its
 * value in a register instead of a stack slot the lookup writes). */
static __attribute__((noinline)) void *var_value_missed(cctx_thread_state *ts, cctx_var *var)
{
    void *value;
    return current_lookup_missed(ts, var, &value) ? value : NULL;
}

void *cctx_var_value(cctx_var *var)
{
    if (CCTX_UNLIKELY(!var_is_valid(var)))
        return NULL;
    cctx_thread_state *ts = thread_state_peek();
    void *value;
    if (CCTX_LIKELY(ts != NULL) && cache_lookup(ts, var, &value))
        return value;
    return var_value_missed(ts, var);
}

cctx_status cctx_var_get_default(cctx_var *var, void *default_value, void **out)
{
    if (CCTX_UNLIKELY(!var_is_valid(var) || out == NULL))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_peek();
    if (CCTX_LIKELY(ts != NULL) && cache_lookup(ts, var, out))
        return CCTX_OK;
    if (!current_lookup_missed(ts, var, out))
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
