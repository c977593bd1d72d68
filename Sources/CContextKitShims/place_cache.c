/*
 * place_cache.c — a per-thread, one-entry cache of "which ContextKit
 * binding the running task reads, and whether it owns it", so that a read
 * in a task skips the task-local lookup (a runtime call, generic value
 * witnesses, and a retain/release of the binding).
 *
 * What a task reads changes only when that task itself binds or unbinds a
 * scope (its task-local stack is its own) or makes its unscoped binding.
 * ContextKit does all of these, and bumps one process-wide generation right
 * after each (cctx_shim_place_generation_bump). An entry is used only when
 * both the running task's id (never reused in a process) and the
 * generation match: then the task has not changed what it reads since the
 * entry was made, and the binding is still kept alive by what kept it alive
 * then (the task's own task-local stack, its parent's — which outlives a
 * structured child — or the unscoped table, which keeps an entry until its
 * task ends). The cache holds no reference, so it never keeps values alive.
 *
 * Ordering: only the task's own bumps decide whether its entry is current,
 * and a task that resumes on another thread does so after the executor's
 * hand-off (which orders everything it did before), so relaxed atomics are
 * enough; other tasks' bumps only cost misses. The entry itself is
 * thread-local: no other thread reads or writes it.
 */
#include "CContextKitShims.h"

#include <stdatomic.h>
#include <stddef.h>

#if defined(__clang__)
#define CCTX_PLACE_SWIFTCALL __attribute__((swiftcall))
#else
#define CCTX_PLACE_SWIFTCALL
#endif

extern uint64_t swift_task_getJobTaskId(const void *job) CCTX_PLACE_SWIFTCALL __attribute__((weak));

static _Atomic uint64_t place_generation = 1;

static __thread __attribute__((tls_model("initial-exec"))) struct {
    uint64_t id;
    uint64_t generation; /* 0: empty */
    const void *binding;
    bool owned;
} place_cache;

uint64_t cctx_shim_place_generation(void)
{
    return atomic_load_explicit(&place_generation, memory_order_relaxed);
}

uint64_t cctx_shim_place_generation_bump(void)
{
    return atomic_fetch_add_explicit(&place_generation, 1, memory_order_relaxed) + 1;
}

bool cctx_shim_place_cache_get(const void *task, const void **binding, bool *owned)
{
    if (place_cache.generation != atomic_load_explicit(&place_generation, memory_order_relaxed)) return false;
    if (place_cache.id != swift_task_getJobTaskId(task)) return false;
    *binding = place_cache.binding;
    *owned = place_cache.owned;
    return true;
}

void cctx_shim_place_cache_put(const void *task, uint64_t generation, const void *binding, bool owned)
{
    place_cache.id = swift_task_getJobTaskId(task);
    place_cache.generation = generation;
    place_cache.binding = binding;
    place_cache.owned = owned;
}
