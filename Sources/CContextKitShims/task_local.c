/*
 * task_local.c — binding ContextKit's one task-local (`TaskBinding.current`)
 * without the generic `TaskLocal.withValue`, which the compiler leaves
 * unspecialised in ContextKit: each call then copies the value through
 * generic value witnesses and, in async code, nests two more generic async
 * frames (task-allocator allocations and executor checks) around the body.
 * The calls below are the ones `withValue`'s inlinable body makes: a push
 * and a pop, nothing before them. (Older standard libraries first asked
 * `swift_task_hasTaskGroupStatusRecord` and stopped inside a `withTaskGroup`
 * body; that check is deprecated there — "handled gracefully rather than by
 * crashing" — because the runtime's push now asks it itself and binds
 * correctly inside a group body: since the Swift 6.0 runtime, older than
 * any runtime ContextKit can run on (it needs `nonisolated(nonsending)` and
 * the Synchronization module). Asking it a second time here took the
 * task's status-record lock once more per scope, ≈ 185 instructions.)
 *
 * ABI, as the standard library declares it (`@_silgen_name`, Swift calling
 * convention):
 *   swift_task_localValuePush(key: Builtin.RawPointer, value: __owned Value)
 *     lowered for a generic Value to (key, pointer to the value, +1, taken
 *     by the runtime with the type's initializeWithTake, Value's metadata);
 *   swift_task_localValuePop()
 *   swift_task_localValueGet(key: Builtin.RawPointer) -> UnsafeMutableRawPointer?
 *     the address of the innermost bound value's storage, or nil.
 * Both are weak so that a program without the Concurrency runtime still
 * links (it never reaches here: ContextKit needs that runtime).
 */
#include "CContextKitShims.h"

#include <stddef.h>

/* The push and the pop are declared in the header (for their inline
 * copies); the get only here. */
extern void *swift_task_localValueGet(const void *key) CCTX_SHIM_RUNTIME_SWIFTCALL __attribute__((weak));
void cctx_shim_task_local_push(const void *key, const void *object, const void *type)
{
    /* The value's storage: one word holding the reference, which the
     * runtime takes over (initializeWithTake: a move, no retain). */
    const void *value = object;
    swift_task_localValuePush(key, &value, type);
}

/* The binding task-local's key and type. Written (the same values) by
 * every register call; the key is stored last with release and loaded
 * with acquire, so a push that sees the key sees the type. Plain words
 * accessed only through the `__atomic` builtins (as `_Atomic` objects they
 * could not be declared in the header the inline push reads them from). */
const void *cctx_shim_binding_key;
const void *cctx_shim_binding_type;

void cctx_shim_task_local_register_binding(const void *key, const void *type)
{
    __atomic_store_n(&cctx_shim_binding_type, type, __ATOMIC_RELAXED);
    __atomic_store_n(&cctx_shim_binding_key, key, __ATOMIC_RELEASE);
}

bool cctx_shim_task_local_push_binding(const void *object)
{
    return cctx_shim_task_local_push_binding_inline(object);
}

void cctx_shim_task_local_pop(void)
{
    cctx_shim_task_local_pop_inline();
}

bool cctx_shim_task_local_get_binding(const void **object)
{
    /* Acquire, as in the push: a key seen here comes with its type. Every
     * binding of this task-local the running code can see was pushed
     * before it (by this task, a parent, or the task it copied its items
     * from), and that push happened before this read, so a NULL key means
     * no binding was ever pushed through the shim — but `TaskLocal.withValue`
     * may have pushed one (`Context.runFresh`): the caller
     * registers and asks again rather than answer NULL here. */
    const void *key = __atomic_load_n(&cctx_shim_binding_key, __ATOMIC_ACQUIRE);
    if (key == NULL) return false;
    /* The storage holds one word: the pushed reference (the shim pushes
     * with `TaskBinding`'s metadata; `withValue` with `TaskBinding?`'s,
     * whose nil is the null word). Items are immutable once pushed. */
    const void *const *storage = swift_task_localValueGet(key);
    *object = storage != NULL ? *storage : NULL;
    return true;
}

bool cctx_shim_task_local_unbound(void)
{
    /* As cctx_shim_task_local_get_binding (acquire: a key seen comes with
     * its type). No key: no push through the shim yet, but one through
     * `TaskLocal.withValue` may have happened; answer "cannot tell". */
    const void *key = __atomic_load_n(&cctx_shim_binding_key, __ATOMIC_ACQUIRE);
    if (key == NULL) return false;
    const void *const *storage = swift_task_localValueGet(key);
    return storage == NULL || *storage == NULL;
}
