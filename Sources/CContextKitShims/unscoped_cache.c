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
