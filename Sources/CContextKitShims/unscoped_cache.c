/*
 * unscoped_cache.c — a per-thread, one-entry cache of "the unscoped binding
 * of the task with this id", so that a task's reads after its first
 * unscoped write skip the sharded table's mutex and dictionary lookup.
 *
 * Why an entry can be trusted without any lock: a task's unscoped binding
 * is made once, by the task itself, and leaves the table only after the
 * task has ended (see TaskBinding.swift). So while the RUNNING task's id
 * matches the cached id, the cached binding is still in the table, alive.
 * Task ids are never reused in a process, so an entry left behind by an
 * ended task (its binding maybe freed) can never match again; it is only
 * ever compared, never followed. The cache is thread-local: no other thread
 * reads or writes it, so it needs no atomics.
 */
#include "CContextKitShims.h"

#include <stdatomic.h>
#include <stddef.h>

#if defined(__clang__)
#define CCTX_CACHE_SWIFTCALL __attribute__((swiftcall))
#else
#define CCTX_CACHE_SWIFTCALL
#endif

extern uint64_t swift_task_getJobTaskId(const void *job) CCTX_CACHE_SWIFTCALL __attribute__((weak));

/* initial-exec: the shim is linked into the Swift module's image, and the
 * default model would go through __tls_get_addr on every read. */
static __thread __attribute__((tls_model("initial-exec"))) struct {
    uint64_t id;
    const void *binding;
} unscoped_cache;

const void *cctx_shim_unscoped_cache_get(const void *task)
{
    if (unscoped_cache.binding == NULL) return NULL;
    return unscoped_cache.id == swift_task_getJobTaskId(task) ? unscoped_cache.binding : NULL;
}

void cctx_shim_unscoped_cache_put(const void *task, const void *binding)
{
    unscoped_cache.id = swift_task_getJobTaskId(task);
    unscoped_cache.binding = binding;
}

/*
 * A counting filter over the ids of the tasks that have an entry in the
 * table: slot id % CCTX_FILTER_SLOTS counts those entries. A task whose slot
 * is 0 has no entry, and its lookup skips the shard's mutex and dictionary
 * (the common case for a child task's first read: it inherited a binding
 * and never wrote).
 *
 * Why relaxed is enough: only the running task asks about itself, and its
 * own entry is added by itself, before the entry is made (program order,
 * carried across its thread hops by the executor's hand-offs), and removed
 * only after it has ended. Other tasks' counts only make a slot non-zero:
 * a false positive costs the locked lookup, as before the filter. Task ids
 * are given out in increasing order, so live tasks spread over the slots.
 */
#define CCTX_FILTER_SLOTS 4096u
static _Atomic uint32_t unscoped_filter[CCTX_FILTER_SLOTS];

void cctx_shim_unscoped_filter_add(uint64_t id)
{
    atomic_fetch_add_explicit(&unscoped_filter[id % CCTX_FILTER_SLOTS], 1, memory_order_relaxed);
}

void cctx_shim_unscoped_filter_remove(uint64_t id)
{
    atomic_fetch_sub_explicit(&unscoped_filter[id % CCTX_FILTER_SLOTS], 1, memory_order_relaxed);
}

bool cctx_shim_unscoped_filter_may_hold(const void *task, uint64_t id)
{
    if (id == 0) id = swift_task_getJobTaskId(task);
    return atomic_load_explicit(&unscoped_filter[id % CCTX_FILTER_SLOTS], memory_order_relaxed) != 0;
}

bool cctx_shim_unscoped_probe(const void *task, const void **binding, uint64_t *id)
{
    const uint64_t task_id = swift_task_getJobTaskId(task);
    *id = task_id;
    *binding = NULL;
    if (unscoped_cache.binding != NULL && unscoped_cache.id == task_id) {
        *binding = unscoped_cache.binding;
        return true;
    }
    return atomic_load_explicit(&unscoped_filter[task_id % CCTX_FILTER_SLOTS], memory_order_relaxed) != 0;
}
