/*
 * place_cache.c — a per-thread, one-entry cache of "which ContextKit
 * binding the running task reads, whether it owns it, and the last value it
 * read there", so that a read in a task skips the task-local lookup (a
 * runtime call, generic value witnesses, a retain/release of the binding)
 * and, for a binding the task owns, the map lookup too.
 *
 * The place. What a task reads changes only when that task itself binds or
 * unbinds a scope (its task-local stack is its own) or makes its unscoped
 * binding. ContextKit does all of these, and bumps one process-wide
 * generation right after each (cctx_shim_place_generation_bump). An entry
 * is used only when the generation matches and the entry is the running
 * task's:
 * - for a scope binding the task owns (`scoped`): the task's address
 *   matches. Proof: the scope was active when the entry was made at
 *   generation G, and a scope's end bumps the generation (ContextScope.leave,
 *   after its task-local pop, before anything reads). So while the
 *   generation is still G the scope is active, its owner task is alive, and
 *   no other task can have its address. A task that later reuses the
 *   address starts after the owner ended, hence after the bump, and reads
 *   the generation on a thread it was handed to through the executor, which
 *   orders the bump before its read: it sees G+1 or later and misses.
 * - for any other entry (an inherited binding, none, the unscoped binding):
 *   the task's id (never reused in a process, unlike addresses; one call
 *   into the runtime) matches too.
 * Then the task has not changed what it reads since the entry was made, and
 * the binding is still kept alive by what kept it alive then (the task's own
 * task-local stack, its parent's — which outlives a structured child — or
 * the unscoped table, which keeps an entry until its task ends). The cache
 * holds no reference, so it never keeps values alive.
 *
 * Hidden task-locals: one change of what a task reads is not ContextKit's.
 * An isolated deinit (SE-0371) that runs inline, on the executor it is
 * isolated to, runs with every task-local of the task hidden: the runtime
 * pushes a stop marker (swift_task_deinitOnExecutor) and pops it when the
 * deinit returns, without moving the generation. A place resolved while the
 * marker is there reads no binding through the task-local even when the
 * task is inside a scope of its own, and resolves to the task's unscoped
 * binding or to none; so does a scope opened in the deinit, which restores
 * that place at its end. Such an entry must not outlive the marker. Every
 * entry that may have been resolved while the task-local read no binding
 * is marked `unbound` (with the marker there it reads none, so an entry
 * naming a binding the task-local gave never needs it): a resolution
 * knows; a put that restores or makes a place (TaskBinding.placeChanged)
 * marks none, and the task's unscoped binding unless its task's last
 * resolution that found it read an inherited binding
 * (TaskBinding.readInherited: then no marker was there, and the task's
 * inherited binding never changes; a check that fails only costs one
 * resolution, which sets the flag). Its hit checks that the
 * task-local still reads none (cctx_shim_task_local_unbound). Sound: a
 * resolution depends only on what the task-local reads and on the task's
 * unscoped binding, whose making bumps the generation; so while the
 * task-local still reads none, resolving again would give the entry's
 * answer — with the marker still there, or without one (then the entry is
 * right outside any deinit too). Once the marker is popped, the task-local
 * reads the scope or the inherited binding around the deinit again, the
 * hit fails and the task resolves afresh. A `scoped` entry needs no check: it
 * names a binding the task-local gave (above the marker, for a scope
 * opened in the deinit, which ends, and bumps the generation, before the
 * deinit returns). The cost is one runtime call (swift_task_localValueGet)
 * per hit of an `unbound` entry: reads in a task after an unscoped set
 * outside any scope, and the start of a scope in a task with no binding
 * around it.
 *
 * The value (owned bindings only; filled and read by ContextVar.swift
 * through the pointer cctx_shim_current_place returns): the variable, the
 * binding's write count and the box the map held. The owner is the only
 * writer of its binding's context (the claim), and every write it makes
 * bumps the binding's write count before and after (ContextVar.set/reset;
 * C writes through an unsafe handle are fenced by
 * cctx_shim_unsafe_window_begin/end, scope exits by ContextScope.leave). So
 * an equal write count proves the map still holds the box: the borrowed
 * read is as sound as cctx_context_get's.
 *
 * Ordering: only the task's own bumps decide whether its entry is current,
 * and a task that resumes on another thread does so after the executor's
 * hand-off (which orders everything it did before), so relaxed atomics are
 * enough; other tasks' bumps only cost misses. The entry itself is
 * thread-local: no other thread reads or writes it.
 */
#include "CContextKitShims.h"

#include <stddef.h>

#if defined(__clang__)
#define CCTX_PLACE_SWIFTCALL __attribute__((swiftcall))
#else
#define CCTX_PLACE_SWIFTCALL
#endif

extern uint64_t swift_task_getJobTaskId(const void *job) CCTX_PLACE_SWIFTCALL __attribute__((weak));

/* Accessed only through __atomic builtins (relaxed: see above); a plain
 * type so that the header's inline check can name it. */
uint64_t cctx_shim_place_generation_counter = 1;

/* initial-exec: the shim is linked into the Swift module's image, and the
 * default model would go through __tls_get_addr on every read. */
__thread __attribute__((tls_model("initial-exec"))) cctx_shim_place_entry cctx_shim_place_cache;

uint64_t cctx_shim_place_generation(void)
{
    return __atomic_load_n(&cctx_shim_place_generation_counter, __ATOMIC_RELAXED);
}

uint64_t cctx_shim_place_generation_bump(void)
{
    return __atomic_fetch_add(&cctx_shim_place_generation_counter, 1, __ATOMIC_RELAXED) + 1;
}

/* The id check, out of line: the scoped hit path then saves no registers.
 * An `unbound` entry also checks that the task-local still reads no
 * binding (see "Hidden task-locals" above). */
cctx_shim_place cctx_shim_place_check_id(const void *task)
{
    cctx_shim_place_entry *entry = &cctx_shim_place_cache;
    bool valid = entry->id == swift_task_getJobTaskId(task)
                 && (!entry->unbound || cctx_shim_task_local_unbound());
    cctx_shim_place place = {task, valid ? entry : NULL};
    return place;
}

cctx_shim_place cctx_shim_current_place(void)
{
    return cctx_shim_current_place_inline();
}

void cctx_shim_place_cache_put(const void *task, uint64_t generation, const void *binding, bool owned,
                               bool scoped, bool unbound)
{
    cctx_shim_place_cache_put_id(task, generation, binding, owned, scoped, unbound, 0);
}

uint64_t cctx_shim_place_cached_id(const void *task)
{
    const cctx_shim_place_entry *entry = &cctx_shim_place_cache;
    if (entry->task != task || entry->scoped
        || entry->generation != __atomic_load_n(&cctx_shim_place_generation_counter, __ATOMIC_RELAXED))
        return 0;
    return entry->id;
}

void cctx_shim_place_cache_put_id(const void *task, uint64_t generation, const void *binding, bool owned,
                                  bool scoped, bool unbound, uint64_t id)
{
    cctx_shim_place_cache.generation = generation;
    cctx_shim_place_cache.task = task;
    cctx_shim_place_cache.scoped = scoped && owned && binding != NULL;
    /* Read only by the id check, which a scoped entry never reaches: it
     * names a binding the task-local gave (see "Hidden task-locals"). */
    cctx_shim_place_cache.unbound = unbound;
    /* A scoped entry is checked by address alone: no id to look up. An
     * id the caller knows is the running task's (ids never change). */
    cctx_shim_place_cache.id = cctx_shim_place_cache.scoped ? 0 : id != 0 ? id : swift_task_getJobTaskId(task);
    cctx_shim_place_cache.binding = binding;
    cctx_shim_place_cache.owned = owned;
    cctx_shim_place_cache.variable = NULL;
    cctx_shim_place_cache.value = NULL;
}

/* The task and generation of this thread's last inherited-read miss that
 * did not fill (cctx_shim_place_fill_inherited); compared only, never
 * dereferenced. */
static __thread __attribute__((tls_model("initial-exec"))) const void *inherited_miss_task;
static __thread __attribute__((tls_model("initial-exec"))) uint64_t inherited_miss_generation;

bool cctx_shim_place_fill_inherited(const void *task, uint64_t generation)
{
    if (inherited_miss_task == task && inherited_miss_generation == generation)
        return true;
    inherited_miss_task = task;
    inherited_miss_generation = generation;
    return false;
}

void cctx_shim_unsafe_window_begin(void)
{
    cctx_shim_place_cache.fill_blocked += 1;
    (void)cctx_shim_place_generation_bump();
}

void cctx_shim_unsafe_window_end(void)
{
    cctx_shim_place_cache.fill_blocked -= 1;
    (void)cctx_shim_place_generation_bump();
}

/* The calling thread's slots for synchronous scopes; see CContextKitShims.h
 * (its inline functions are the only accessors besides spare_binding.c).
 * Thread-local: only its own thread reads or writes it. */
__thread __attribute__((tls_model("initial-exec"))) cctx_shim_thread_slots cctx_shim_thread_slot_block;
