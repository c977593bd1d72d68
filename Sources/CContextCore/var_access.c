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

/*
 * A get counts itself in `in_get` once, on entry, and holds the count
 * across the hit check and, on a miss, across the lookup and the cache
 * fill: the miss path takes over the count rather than dropping it and
 * taking it again (cache_probe / lookup_missed).
 */

/* The hit path: counts this get in `in_get` and looks `var` up in the
 * thread's lookup cache (cctx_lookup_probe, contextcore_inline.h: the one
 * copy, shared with bindings that inline it). On a hit, stores the value,
 * ends the count and returns true; on a miss returns false with the get
 * still counted, for lookup_missed to finish. Small enough to inline into
 * the public entry points, whose hit path then saves no registers and
 * makes no call. */
static inline bool cache_probe(cctx_thread_state *ts, const cctx_var *var, void **out)
{
    return cctx_lookup_probe(&ts->lookup, var, var->hash, out);
}

/* The miss path, after cache_probe missed (the get still counted): a HAMT
 * lookup in the current root, cached when found and when no other get of
 * this thread is in progress; ends the count. Inlined into one out-of-line
 * function per entry point, so that a cold get makes one call of its own
 * (plus hamt_find's). Within a get neither the current root nor the
 * version can change (only this thread changes them, never inside a get;
 * a handler that interrupts it only gets), so the version is read after
 * the walk (one register fewer to keep across the call) and `in_get` once
 * (a handler that ran meanwhile left it as it found it). */
static inline __attribute__((always_inline)) bool lookup_missed(cctx_thread_state *ts,
                                                                const cctx_var *var, void **out)
{
    bool found = hamt_find(context_own_root(ts->current), var, out);
    const unsigned in_get = ENTRY_LOAD(&ts->lookup.in_get);
    if (found && in_get == 1) {
        cctx_lookup_entry *e = &ts->lookup.cache[var->hash & (CCTX_LOOKUP_CACHE_SIZE - 1)];
        ENTRY_STORE(&e->version, 0);
        SIGNAL_FENCE();
        ENTRY_STORE(&e->var, var);
        ENTRY_STORE(&e->value, *out);
        SIGNAL_FENCE();
        ENTRY_STORE(&e->version, ts->lookup.version);
    }
    SIGNAL_FENCE();
    ENTRY_STORE(&ts->lookup.in_get, in_get - 1);
    return found;
}

/* What cctx_var_get answers when the context has no value: the
 * variable's default, if it has one. */
static inline cctx_status var_get_unbound(const cctx_var *var, void **out)
{
    if (var->has_default) {
        *out = var->default_value;
        return CCTX_OK;
    }
    return CCTX_NOT_FOUND;
}

/* The miss path of cctx_var_get (a tail call from it). */
static __attribute__((noinline)) cctx_status var_get_missed(cctx_thread_state *ts, cctx_var *var,
                                                            void **out)
{
    if (CCTX_LIKELY(lookup_missed(ts, var, out)))
        return CCTX_OK;
    return var_get_unbound(var, out);
}

cctx_status cctx_var_get(cctx_var *var, void **out)
{
    if (CCTX_UNLIKELY(!var_is_valid(var) || out == NULL))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_peek();
    if (CCTX_LIKELY(ts != NULL)) {
        if (CCTX_LIKELY(cache_probe(ts, var, out)))
            return CCTX_OK;
        return var_get_missed(ts, var, out);
    }
    return var_get_unbound(var, out); /* no state: an empty context */
}

/* The miss path of cctx_var_value (out of line: the hit path keeps its
 * value in a register instead of a stack slot the lookup writes). */
static __attribute__((noinline)) void *var_value_missed(cctx_thread_state *ts, cctx_var *var)
{
    void *value;
    return lookup_missed(ts, var, &value) ? value : NULL;
}

void *cctx_var_value(cctx_var *var)
{
    if (CCTX_UNLIKELY(!var_is_valid(var)))
        return NULL;
    cctx_thread_state *ts = thread_state_peek();
    if (CCTX_UNLIKELY(ts == NULL))
        return NULL;
    void *value;
    if (CCTX_LIKELY(cache_probe(ts, var, &value)))
        return value;
    return var_value_missed(ts, var);
}

/* The miss path of cctx_var_get_default. */
static __attribute__((noinline)) void var_get_default_missed(cctx_thread_state *ts, cctx_var *var,
                                                            void *default_value, void **out)
{
    if (!lookup_missed(ts, var, out))
        *out = default_value;
}

cctx_status cctx_var_get_default(cctx_var *var, void *default_value, void **out)
{
    if (CCTX_UNLIKELY(!var_is_valid(var) || out == NULL))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_peek();
    if (CCTX_UNLIKELY(ts == NULL))
        *out = default_value;
    else if (!cache_probe(ts, var, out))
        var_get_default_missed(ts, var, default_value, out);
    return CCTX_OK;
}

/* Both set entry points: a full token (`light` false) or a light one. */
static inline cctx_status var_set(cctx_var *var, void *value, bool light, cctx_token **token_out)
{
    if (CCTX_UNLIKELY(!var_is_valid(var)))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_get();
    if (ts == NULL)
        return CCTX_ENOMEM;
    return context_write_set(ts, ts->current, var, value, light, token_out);
}

cctx_status cctx_var_set(cctx_var *var, void *value, cctx_token **token_out)
{
    return var_set(var, value, false, token_out);
}

cctx_status cctx_var_set_light(cctx_var *var, void *value, cctx_token **token_out)
{
    return var_set(var, value, true, token_out);
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
