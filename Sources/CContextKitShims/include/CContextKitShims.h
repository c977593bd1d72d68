/*
 * CContextKitShims — what only the Swift facade needs from C: the Swift
 * runtime entry points it calls, each behind a one-line C function (as
 * swift-nio keeps CNIOLinux); the ones every scope calls also as inline
 * functions below that call the runtime directly (`…_inline`), declared
 * here for that.
 *
 * Why a target of its own: the C runtime (CContextCore, contextcore.h) is
 * usable from plain C with no Swift present, so it must not carry calls into
 * the Swift runtime; this target is compiled only into Swift programs (the
 * ContextKit target depends on it).
 *
 * Why C: Swift code may not name a runtime symbol (`@_silgen_name` of a
 * runtime function warns that it will become an error); a C declaration is
 * the supported way to reach one. `swift_task_getCurrent` and
 * `swift_isUniquelyReferenced_nonNull_native`, and the task-local entry
 * points `swift_task_localValuePush`/`Pop` and
 * are called by the standard library's own inlinable code (`TaskLocal.withValue`), so they are part of
 * the Swift ABI; TaskLocalShimTests fails loudly if the task-local ones
 * stop behaving as `withValue`.
 * `swift_task_getJobTaskId` and `swift_task_getJobFlags` are exported by the
 * runtime but not called from inlinable code: they are used for soundness
 * (task identity that is never reused), not speed, and TaskWriteTests'
 * `taskIdentityShimsMatchTheRuntime` fails loudly if they stop answering as
 * documented. When the standard library offers a task id, they can go.
 * Not part of ContextKit's public API.
 */
#ifndef CCONTEXTKIT_SHIMS_H
#define CCONTEXTKIT_SHIMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The Swift task running on the calling thread (an identity to compare,
 *  never to dereference), or NULL outside any task. */
const void *cctx_swift_current_task(void);

/*
 * The runtime's entry point behind cctx_swift_current_task (swift_task.c
 * argues the call: no argument, a +0 pointer in the ordinary return
 * register under both calling conventions), declared here so that the
 * inline checks below call it directly: through cctx_swift_current_task
 * every scope and read paid a frame around a tail call (≈ 5 instructions).
 * Weak, as there: a program without the Concurrency runtime still links.
 */
#if defined(__clang__)
#define CCTX_SHIM_RUNTIME_SWIFTCALL __attribute__((swiftcall))
#else
#define CCTX_SHIM_RUNTIME_SWIFTCALL
#endif
extern void *swift_task_getCurrent(void) CCTX_SHIM_RUNTIME_SWIFTCALL __attribute__((weak));

/** cctx_swift_current_task, inlined into the caller. */
static inline const void *cctx_swift_current_task_inline(void)
{
    return swift_task_getCurrent ? swift_task_getCurrent() : NULL;
}

/**
 * Whether the native Swift object `object` (non-NULL, borrowed) has exactly
 * one strong reference: the runtime's
 * `swift_isUniquelyReferenced_nonNull_native`, which the standard
 * library's inlinable `isKnownUniquelyReferenced` calls. ContextKit asks it
 * of a task object it retains: a running task holds a reference to itself,
 * so "unique" means the task has completed and nothing else refers to it.
 */
bool cctx_shim_is_uniquely_referenced(const void *object);

/* The runtime's entry point behind it (C calling convention; shims.c),
 * declared here for the inline copy below. */
extern bool swift_isUniquelyReferenced_nonNull_native(const void *object) __attribute__((weak));

/** cctx_shim_is_uniquely_referenced, inlined into the caller: the scope's
 *  end asks it once per scope, and the shim's frame around the runtime's
 *  call was most of the shim. */
static inline bool cctx_shim_is_uniquely_referenced_inline(const void *object)
{
    return swift_isUniquelyReferenced_nonNull_native(object);
}

/**
 * The unique id of the task `task` (non-NULL, borrowed, alive): the
 * runtime's `swift_task_getJobTaskId`, which `ExecutorJob`'s description
 * uses. Task ids are never reused in a process (unlike task addresses), so
 * they identify a task soundly after other tasks have come and gone.
 */
uint64_t cctx_shim_task_id(const void *task);

/**
 * Whether `task` (non-NULL, borrowed, alive) is an `async let` child: the
 * runtime allocates those inside their parent's task memory and frees them
 * when the `async let` scope ends whatever their reference count, so they
 * must never be retained. The runtime's `swift_task_getJobFlags`, bit 28
 * (`Task_IsAsyncLetTask` in the ABI's JobFlags).
 */
bool cctx_shim_task_is_async_let(const void *task);

/**
 * The calling thread's cached unscoped binding (a `TaskBinding`, unretained)
 * of the running task `task` (non-NULL, borrowed), or NULL when the thread
 * has cached none for this task's id. Sound without locks because a task's
 * unscoped binding stays in the table until the task ends and task ids are
 * never reused (unscoped_cache.c). Mirrors no Python API (CPython's
 * per-variable cache keyed by thread and context version is the analogue).
 */
const void *cctx_shim_unscoped_cache_get(const void *task);

/**
 * Caches `binding` (unretained; the table keeps it alive while `task` runs)
 * as the unscoped binding of the running task `task` on the calling thread,
 * replacing the thread's previous entry.
 */
void cctx_shim_unscoped_cache_put(const void *task, const void *binding);

/**
 * The unscoped-binding lookup of the running task `task`, before the
 * table's lock: sets `*id` to the task's id and `*binding` to the cached
 * binding when this thread's cache holds the task's (see
 * cctx_shim_unscoped_cache_get()); otherwise NULL, and returns false when
 * the task surely has no entry (its filter slot is 0: see
 * unscoped_cache.c), true when the table must be asked.
 */
bool cctx_shim_unscoped_probe(const void *task, const void **binding, uint64_t *id);

/** Counts an entry of the task with id `id` in the table (call before the
 * entry is made, in that task). */
void cctx_shim_unscoped_filter_add(uint64_t id);

/** Uncounts an entry of `id` (after the entry left the table). */
void cctx_shim_unscoped_filter_remove(uint64_t id);

/** Whether the running task `task` may have an unscoped binding: its
 * filter slot is not 0 (a false positive when another task shares the
 * slot). `id`: the task's id if known, else 0 (asked of the runtime). */
bool cctx_shim_unscoped_filter_may_hold(const void *task, uint64_t id);

/**
 * The process-wide place generation: bumped by ContextKit right after any
 * task binds or unbinds a scope or makes its unscoped binding
 * (place_cache.c). Read it BEFORE resolving a task's place, and cache the
 * place under the value read.
 */
uint64_t cctx_shim_place_generation(void);

/**
 * Bumps the place generation (one relaxed atomic increment) and returns the
 * new value, under which the caller may cache the place it has just made
 * current (another thread's bump in between only makes that entry miss).
 */
uint64_t cctx_shim_place_generation_bump(void);

/**
 * The calling thread's place-cache entry (place_cache.c). Only the calling
 * thread reads or writes it; Swift reads `binding`/`owned` and reads and
 * fills the value fields through the pointer cctx_shim_current_place
 * returns. Not part of any public API.
 */
typedef struct cctx_shim_place_entry {
    uint64_t generation;     /**< the place generation it was made at; 0: empty */
    const void *task;        /**< the running task's address then */
    uint64_t id;             /**< that task's id (checked unless `scoped`) */
    const void *binding;     /**< its binding (a `TaskBinding`, unretained), or NULL */
    bool owned;              /**< whether the task owns `binding` */
    bool scoped;             /**< owned scope binding: the address alone identifies the task */
    bool unbound;            /**< resolved while ContextKit's task-local read no binding: checked again on each hit */
    uint32_t fill_blocked;   /**< > 0 inside an unsafe-handle window: fill no value */
    const void *variable;    /**< value cache: the `cctx_var` read, or NULL for none */
    uint64_t version;        /**< `binding`'s write count when the value was read */
    void *value;             /**< the box the map held (borrowed), or NULL: no value */
} cctx_shim_place_entry;

/** The running task and, when valid for it, the thread's place entry. */
typedef struct cctx_shim_place {
    const void *task;              /**< NULL outside any task */
    cctx_shim_place_entry *entry;  /**< NULL: no entry for this task at this generation */
} cctx_shim_place;

/**
 * The Swift task running on the calling thread (`swift_task_getCurrent`,
 * as cctx_swift_current_task) and the calling thread's place entry when it
 * is the running task's at the current generation (see place_cache.c for
 * why that proves it is still right). One call for both: the hot path of
 * every read in a task. Mirrors no Python API (CPython caches per
 * variable, keyed by thread and context version).
 */
cctx_shim_place cctx_shim_current_place(void);

/*
 * The thread's place entry and the place generation, as variables, for
 * cctx_shim_current_place_inline (place_cache.c defines them and argues
 * their rules: the entry is the calling thread's alone; the generation is
 * read and bumped with relaxed atomics only). Visible to Swift clients that
 * inline ContextVar's read; nothing else touches them.
 */
extern __thread cctx_shim_place_entry cctx_shim_place_cache
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((tls_model("initial-exec"), visibility("default")))
#endif
    ;
extern uint64_t cctx_shim_place_generation_counter
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((visibility("default")))
#endif
    ;

/** The end of the place check for an entry that is not `scoped`: `task`
 *  (the running task, whose address and generation the entry matched) and
 *  the entry when the entry's task id is also the running task's — and,
 *  for an `unbound` entry, ContextKit's task-local still reads no binding
 *  (place_cache.c, "Hidden task-locals") — else `task` and NULL. Out of
 *  line: one runtime call (the task's id), two for an `unbound` entry. */
cctx_shim_place cctx_shim_place_check_id(const void *task);

/**
 * cctx_shim_current_place, inlined into the caller: one call (the running
 * task, straight into the runtime) instead of two frames, so that a read
 * outside any task pays the runtime's answer and little else. The one
 * copy of the check: cctx_shim_current_place is this, out of line.
 */
static inline cctx_shim_place cctx_shim_current_place_inline(void)
{
    cctx_shim_place place = {cctx_swift_current_task_inline(), NULL};
    if (place.task == NULL)
        return place;
    cctx_shim_place_entry *entry = &cctx_shim_place_cache;
    if (entry->generation != __atomic_load_n(&cctx_shim_place_generation_counter, __ATOMIC_RELAXED)
        || entry->task != place.task)
        return place;
    if (!entry->scoped)
        return cctx_shim_place_check_id(place.task);
    place.entry = entry;
    return place;
}

/**
 * Caches the place of the running task `task`, resolved after reading
 * `generation` from cctx_shim_place_generation(): `binding` (unretained, or
 * NULL), whether the task owns it, whether it is a scope binding (not
 * the unscoped one), and whether ContextKit's task-local read no binding
 * when it was resolved (`unbound`: each hit checks that it still reads
 * none; place_cache.c, "Hidden task-locals"). Replaces the thread's entry
 * and empties its value.
 */
void cctx_shim_place_cache_put(const void *task, uint64_t generation, const void *binding, bool owned,
                               bool scoped, bool unbound);

/**
 * As cctx_shim_place_cache_put() with the task's id already known (`id`,
 * from cctx_shim_place_cached_id(); 0: unknown, asked of the runtime).
 */
void cctx_shim_place_cache_put_id(const void *task, uint64_t generation, const void *binding, bool owned,
                                  bool scoped, bool unbound, uint64_t id);

/**
 * Whether a read that missed the cache in task `task` at `generation` (read
 * before resolving), and found a binding the task does not own, should
 * fill the entry: true when the calling thread's previous such miss was in
 * the same task at the same generation (the task reads again), false on
 * its first (and remembers both). A structured child that reads its
 * parent's value once then never pays for a fill it does not use, and
 * leaves the thread's entry to its parent. A hint only: the address of an
 * ended child is reused by the next (the parent's task allocator), and the
 * generation — bumped by every scope entry and exit — tells them apart in
 * the common case; when it does not, the cost is one fill, as without the
 * hint.
 */
bool cctx_shim_place_fill_inherited(const void *task, uint64_t generation);

/**
 * The id of the running task `task` as the calling thread's entry holds
 * it, when that entry is the task's at the current generation and was
 * checked by id (not a scope entry); else 0. Lets a scope that ends hand
 * the id back to the put that restores the task's place, instead of
 * asking the runtime (`swift_task_getJobTaskId`, ≈ 35 instructions).
 */
uint64_t cctx_shim_place_cached_id(const void *task);

/**
 * Brackets a window in which C code may write a context through a handle
 * Swift gave it (Context.withUnsafeHandle): both bump the place generation
 * (so that no thread's cached value survives the window), and inside it the
 * calling thread caches no value. Windows nest.
 */
void cctx_shim_unsafe_window_begin(void);
void cctx_shim_unsafe_window_end(void);

/**
 * The calling thread's own slots for ContextKit's synchronous scopes, in
 * one thread-local block (place_cache.c defines it, spare_binding.c cleans
 * it up at thread exit), read and written by the inline functions below:
 * a synchronous `run` outside any task touches them four times (the
 * enclosing binding, the spare, the exchange around the body, the park),
 * and as calls into this target each one was a frame of its own.
 * initial-exec, as cctx_shim_place_cache: the code that inlines them is
 * linked into the image that defines the block. Only its own thread reads
 * or writes a thread's block: plain accesses.
 */
typedef struct cctx_shim_thread_slots {
    /** Outside any task, what `TaskBinding.current` reads on the thread (a
     *  `TaskBinding`, unretained; the thread's task-local storage keeps it
     *  alive), or NULL: see cctx_shim_thread_scope_binding. */
    const void *scope_binding;
    /** The thread's spare scope binding (+1), or NULL (spare_binding.c). */
    void *spare;
    /** Whether the thread-exit cleanup of `spare` is registered. */
    bool spare_armed;
} cctx_shim_thread_slots;

extern __thread cctx_shim_thread_slots cctx_shim_thread_slot_block
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((tls_model("initial-exec"), visibility("default")))
#endif
    ;

/**
 * Outside any task, what `TaskBinding.current` reads on the calling thread
 * (a `TaskBinding`, unretained; the thread's task-local storage keeps it
 * alive), or NULL: ContextKit sets it wherever it binds that task-local on
 * a thread (its sync scopes and the spawn helpers' unbinding), and restores
 * it when the binding ends, so that opening a scope on a thread need not
 * read the task-local through the unspecialised `TaskLocal.get`.
 */
static inline const void *cctx_shim_thread_scope_binding(void)
{
    return cctx_shim_thread_slot_block.scope_binding;
}

/** Sets the calling thread's value above and returns the previous one. */
static inline const void *cctx_shim_thread_scope_binding_exchange(const void *binding)
{
    cctx_shim_thread_slots *slots = &cctx_shim_thread_slot_block;
    const void *previous = slots->scope_binding;
    slots->scope_binding = binding;
    return previous;
}

/**
 * The calling thread's spare scope binding (a `TaskBinding`, +1), removed
 * from the slot, or NULL (spare_binding.c). The caller owns the reference.
 */
static inline void *cctx_shim_spare_binding_take(void)
{
    cctx_shim_thread_slots *slots = &cctx_shim_thread_slot_block;
    void *binding = slots->spare;
    slots->spare = NULL;
    return binding;
}

/** cctx_shim_spare_binding_put on a thread whose exit cleanup is not
 *  registered yet: registers it, then parks (spare_binding.c). */
void *cctx_shim_spare_binding_put_arming(void *binding, void (*release)(void *));

/**
 * Parks `binding` (+1, taken over) as the calling thread's spare; returns
 * the spare it displaced (+1, the caller's to release), or NULL. `release`
 * drops one reference to a binding: the thread's exit calls it for the
 * spare left then. When the exit cleanup cannot be registered, returns
 * `binding` itself (not parked).
 */
static inline void *cctx_shim_spare_binding_put(void *binding, void (*release)(void *))
{
    cctx_shim_thread_slots *slots = &cctx_shim_thread_slot_block;
    if (!slots->spare_armed)
        return cctx_shim_spare_binding_put_arming(binding, release);
    void *displaced = slots->spare;
    slots->spare = binding;
    return displaced;
}

/**
 * Binds the task-local `key` (a `TaskLocal` object, borrowed) to `object` (a
 * native Swift object reference or NULL, +1: the binding takes it over) for
 * the running task, or the calling thread outside any task — exactly what
 * the standard library's inlinable `TaskLocal.withValue` does, through the
 * same runtime entry point (`swift_task_localValuePush`), for a value whose
 * type `type` (the metadata of an `Optional` of a class) is one pointer;
 * also inside a `withTaskGroup` body, where the runtime's push binds as
 * `withValue` does there. Pair each push with cctx_shim_task_local_pop() in
 * the same task or thread, in LIFO order with its other task-local
 * bindings.
 */
void cctx_shim_task_local_push(const void *key, const void *object, const void *type);

/**
 * As cctx_shim_task_local_push() for the one task-local ContextKit binds
 * in every scope, whose key and type were given once to
 * cctx_shim_task_local_register_binding(). Returns false, pushing nothing,
 * before that (the caller registers, then pushes again). Why: Swift reads
 * a `static let` through `swift_once` on every access, a call per scope.
 */
bool cctx_shim_task_local_push_binding(const void *object);

/*
 * The key and type cctx_shim_task_local_register_binding() records, and
 * the runtime's push and pop, for the inline copies below (task_local.c
 * defines the two words and argues their order: the key is stored last
 * with release and loaded with acquire, so a push that sees the key sees
 * the type; and the runtime calls' ABI). Visible to Swift clients that
 * inline a scope; nothing else touches them.
 */
extern const void *cctx_shim_binding_key
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((visibility("default")))
#endif
    ;
extern const void *cctx_shim_binding_type
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((visibility("default")))
#endif
    ;
extern void swift_task_localValuePush(const void *key, void *value, const void *type)
    CCTX_SHIM_RUNTIME_SWIFTCALL __attribute__((weak));
extern void swift_task_localValuePop(void) CCTX_SHIM_RUNTIME_SWIFTCALL __attribute__((weak));

/** cctx_shim_task_local_push_binding, inlined into the caller (every
 *  scope's push): the shim's frame and its copy of the value word were a
 *  third of its cost. */
static inline bool cctx_shim_task_local_push_binding_inline(const void *object)
{
    const void *key = __atomic_load_n(&cctx_shim_binding_key, __ATOMIC_ACQUIRE);
    if (key == NULL)
        return false;
    /* The value's storage: one word holding the reference, which the
     * runtime takes over (initializeWithTake: a move, no retain). */
    const void *value = object;
    swift_task_localValuePush(key, &value, __atomic_load_n(&cctx_shim_binding_type, __ATOMIC_RELAXED));
    return true;
}

/** Records the key and type cctx_shim_task_local_push_binding() uses
 * (the same values from every caller; any thread, any number of times). */
void cctx_shim_task_local_register_binding(const void *key, const void *type);

/** Ends the innermost task-local binding (`swift_task_localValuePop`). */
void cctx_shim_task_local_pop(void);

/** cctx_shim_task_local_pop, inlined into the caller. */
static inline void cctx_shim_task_local_pop_inline(void)
{
    swift_task_localValuePop();
}

/**
 * Reads the task-local cctx_shim_task_local_register_binding() named for
 * the running task (or the calling thread outside any task), as the
 * standard library's `TaskLocal.get` does, through the same runtime entry
 * point (`swift_task_localValueGet`): `*object` is the reference the
 * innermost binding of it holds (borrowed: alive while that binding is, so
 * at least until the running code next pops one), or NULL (none, or bound
 * to nil). Returns false, writing nothing, before the registration (the
 * caller registers, then asks again). Why: `TaskLocal.get` is generic and
 * left unspecialised in ContextKit (a value-witness copy of the value, a
 * retain, and a `swift_once` for the key: ≈ 180 instructions against ≈ 60).
 */
bool cctx_shim_task_local_get_binding(const void **object);

/**
 * Whether the binding task-local reads no binding in the running code (as
 * cctx_shim_task_local_get_binding() answering NULL). False when the key
 * is not registered yet: the caller then cannot tell, and must resolve.
 */
bool cctx_shim_task_local_unbound(void);

#ifdef __cplusplus
}
#endif

#endif
