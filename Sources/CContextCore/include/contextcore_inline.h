/*
 * contextcore_inline.h — two reads a language binding makes often enough
 * that the call itself is a large part of them, as static inline
 * functions:
 *
 *   cctx_var_value_inline   the hit path of cctx_var_value (Swift's
 *                           `ContextVar.get()` outside a task)
 *   cctx_watchers_installed whether any context-switch watcher is
 *                           installed (Swift's task scopes, which send
 *                           their own events, skip the work around
 *                           cctx_notify_watchers when none is)
 *
 * What this exposes is the calling thread's lookup cache (its layout and
 * the thread-local pointer to it) and the watcher mask of watch.c
 * (`cctx_watchers_active`). These are the only library variables a
 * binding may name, and only through the functions here: their layout and
 * meaning belong to this version of the library, so a binding that uses
 * them is compiled against the same headers as the library it links (a
 * Swift package builds both together). Plain C users have no reason to
 * include this header; contextcore_binding.h does.
 *
 * The cache's rules (the thread state owns it; var_access.c argues them):
 * - only its own thread, and signal handlers on that thread, read or write
 *   it; an entry names a value that the thread's current map still holds
 *   while the entry's `version` equals the cache's `version`;
 * - every get counts itself in `in_get` around its use of an entry, and a
 *   get that finds another in progress (a signal handler that interrupted
 *   one) never writes an entry: so an entry cannot change under a get,
 *   and the read below is async-signal-safe like cctx_var_get;
 * - `in_get` and the entries are accessed as relaxed atomics, ordered
 *   against this thread's signal handlers by compiler-only fences.
 */
#ifndef CONTEXTCORE_INLINE_H
#define CONTEXTCORE_INLINE_H

#include "contextcore.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Entries of a thread's lookup cache (a power of two). */
#define CCTX_LOOKUP_CACHE_SIZE 16

/** One remembered lookup: `var` had `value` in the thread's current
 *  context when the cache's version was `version` (0: empty). */
typedef struct cctx_lookup_entry {
    const cctx_var *var;
    uint64_t version;
    void *value;
} cctx_lookup_entry;

/** The head of every thread's state: its lookup cache. `version` changes
 *  whenever the thread's current mapping may have changed (it entered or
 *  left a context, or published a root); it starts at 1 so that zeroed
 *  entries miss. `in_get` is non-zero while a get of this thread is in
 *  progress. */
typedef struct cctx_thread_lookup {
    uint64_t version;
    unsigned in_get;
    cctx_lookup_entry cache[CCTX_LOOKUP_CACHE_SIZE];
} cctx_thread_lookup;

/** The calling thread's state (its head is a cctx_thread_lookup), or NULL
 *  before the thread's first use of the library and from the start of its
 *  teardown. Written only by the library, on its own thread. */
struct cctx_thread_state;
extern __thread struct cctx_thread_state *cctx_tls_state
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((tls_model("initial-exec"), visibility("default")))
#endif
    ;

/** Counts a get in `in_get` and looks `var` up in the thread's cache at
 *  the slot of `hash` (cctx_var_hash(var)). On a hit stores the value in
 *  `*out`, ends the count and returns true; on a miss returns false WITH
 *  THE GET STILL COUNTED: the caller finishes it (cctx_lookup_uncount, or
 *  the library's own miss path, which takes the count over). */
static inline bool cctx_lookup_probe(cctx_thread_lookup *lookup, const cctx_var *var, uint32_t hash,
                                     void **out)
{
    const cctx_lookup_entry *e = &lookup->cache[hash & (CCTX_LOOKUP_CACHE_SIZE - 1)];
    /* A handler that runs during this get leaves `in_get` as it found it,
     * so the count loaded here is still right to store back at the end. */
    const unsigned in_get = __atomic_load_n(&lookup->in_get, __ATOMIC_RELAXED);
    __atomic_store_n(&lookup->in_get, in_get + 1, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    /* All three fields loaded, then compared: `in_get` keeps the entry
     * still meanwhile. */
    const cctx_var *entry_var = __atomic_load_n(&e->var, __ATOMIC_RELAXED);
    const uint64_t entry_version = __atomic_load_n(&e->version, __ATOMIC_RELAXED);
    void *value = __atomic_load_n(&e->value, __ATOMIC_RELAXED);
    if ((entry_version == lookup->version) & (entry_var == var)) {
        *out = value;
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        __atomic_store_n(&lookup->in_get, in_get, __ATOMIC_RELAXED);
        return true;
    }
    return false;
}

/** Ends the count a missed cctx_lookup_probe left. */
static inline void cctx_lookup_uncount(cctx_thread_lookup *lookup)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&lookup->in_get, __atomic_load_n(&lookup->in_get, __ATOMIC_RELAXED) - 1,
                     __ATOMIC_RELAXED);
}

/** cctx_var_value(`var`), with its hit path inlined into the caller: the
 *  value of `var` in the calling thread's current context, BORROWED (valid
 *  as cctx_var_get's result), or NULL when that context holds none or
 *  holds NULL. `var` must be a valid handle (not checked: a binding keeps
 *  its variable alive while it reads it) and `hash` its cctx_var_hash; a
 *  wrong `hash` only costs a miss. A miss calls cctx_var_value, which
 *  fills the cache. Async-signal-safe like cctx_var_get. Python:
 *  `PyContextVar_Get(var, NULL, &value)` on its cached path. */
static inline void *cctx_var_value_inline(cctx_var *var, uint32_t hash)
{
    struct cctx_thread_state *ts = cctx_tls_state;
    if (ts == NULL)
        return NULL; /* no state yet: an empty context */
    /* The state's first member is its lookup cache (thread_state.h). */
    cctx_thread_lookup *lookup = (cctx_thread_lookup *)(void *)ts;
    void *value;
    if (__builtin_expect(cctx_lookup_probe(lookup, var, hash, &value), 1))
        return value;
    cctx_lookup_uncount(lookup);
    return cctx_var_value(var);
}

/** Bit i set: watcher slot i is installed (watch.c: set with release once
 *  the slot is written, cleared first on removal; only cctx_add_watcher and
 *  cctx_clear_watcher write it). Named here only so that
 *  cctx_watchers_installed can be inlined: read it through that. */
extern unsigned cctx_watchers_active
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((visibility("default")))
#endif
    ;

/** Whether at least one context-switch watcher is installed right now
 *  (cctx_add_watcher done, its cctx_clear_watcher not): one relaxed load.
 *  For a binding that sends its own events (cctx_notify_watchers) and does
 *  work around them — Swift's task scopes re-resolve the task's place after
 *  the `entered` callbacks and fence the value cache around the `exited`
 *  ones: when this is false it skips that work together with the call.
 *  False never skips an event the watcher contract promises, and true never
 *  lets a removed callback run, because the answer only decides whether to
 *  call cctx_notify_watchers, which loads the mask again (acquire) and runs
 *  the per-slot protocol of watch.c; nothing is read under this load. So a
 *  relaxed load is enough:
 *  - A watcher installed by this thread, or by one whose add
 *    happens-before this call (it started the task, or signalled it), is
 *    seen: read-after-write coherence on the mask (the load returns the
 *    add's value or a later one, whose bit is cleared only by a removal).
 *    The same holds in an async scope whose end runs on another thread
 *    than the add in its body: the task's hops are ordered by the Swift
 *    runtime's job hand-over.
 *  - A watcher added concurrently on another thread (no happens-before)
 *    may be missed: the event is then ordered before the add, as when the
 *    C runtime's own check (watch.h) misses it. cctx_add_watcher promises
 *    no event that races with it.
 *  - A watcher removed (concurrently, or earlier on this thread): a stale
 *    true only leads to cctx_notify_watchers, whose re-check under its
 *    slot count sees the bit cleared; a false skips a call, which is always
 *    allowed. cctx_clear_watcher's "never called again once it returns" is
 *    watch.c's to keep, not this load's.
 *  Ask it at each event rather than remembering an earlier answer: a scope
 *  that skipped its `entered` still sends its `exited` to a watcher added
 *  inside it, as cctx_context_exit does for a thread (the exit fires to
 *  whatever is installed at the exit). Safe from any thread and from a
 *  signal handler. */
static inline bool cctx_watchers_installed(void)
{
    return __atomic_load_n(&cctx_watchers_active, __ATOMIC_RELAXED) != 0;
}

#ifdef __cplusplus
}
#endif

#endif
