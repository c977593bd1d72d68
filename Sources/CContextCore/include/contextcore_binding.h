/*
 * contextcore_binding.h — the part of ContextKit's C API that only a
 * language binding needs: a runtime that tracks its own notion of "current
 * context" (Swift tasks, a Python interpreter's own task model) rather than
 * using the calling thread's.
 *
 * An application that only uses contexts from C includes contextcore.h
 * alone. A binding includes this header as well; it includes contextcore.h
 * and follows its ownership words and rules. These functions are as stable
 * as the rest of the API; they live apart because using them correctly
 * needs a model of ownership that plain C users never deal with:
 *
 *   claim/unclaim    a context "entered" by an owner that is not a thread
 *   cctx_context_get a borrowed read, sound only for the context's writer
 *   cctx_context_peek a borrowed read from any thread, valid until
 *                    cctx_context_peek_end: copy the value out, take no
 *                    reference
 *   notify           context-switch events for switches the runtime cannot
 *                    see (a task scope entered on the binding's side);
 *                    cctx_watchers_installed (contextcore_inline.h) says
 *                    whether anyone listens, for work around the call
 *   cctx_var_value,  reads for values that are never NULL (a binding's
 *   cctx_local_value boxes): NULL means "none", with no status to check
 *   read sections,   for a binding that replaces a pointer to a context
 *   deferred release readers may have loaded: they read inside a section,
 *                    and the old context's reference goes after a grace
 *                    period
 */
#ifndef CONTEXTCORE_BINDING_H
#define CONTEXTCORE_BINDING_H

#include "contextcore.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Marks `ctx` entered by an owner that is not a thread (an async task that
 *  tracks its own current context). While claimed, no thread can enter it
 *  and the claimer writes through cctx_context_set/reset. The claimer must
 *  not write from two threads at once. A claim does not retain `ctx`: the
 *  claimer keeps its own reference until it unclaims. Errors: CCTX_EINVAL
 *  (bad handle), CCTX_ALREADY_ENTERED if entered or claimed (nothing
 *  changes). Python: what `Context.run` does for an asyncio task, without a
 *  thread. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_context_claim(cctx_context *ctx);

/** Ends a claim. Errors: CCTX_EINVAL (bad handle), CCTX_NOT_ENTERED if `ctx`
 *  is not claimed. Borrows `ctx`. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_context_unclaim(cctx_context *ctx);

/** Reads the value of `var` in `ctx` (no defaults), BORROWED: valid until
 *  `ctx`'s writer next changes it, with no reference taken. Only for the
 *  context's writer: the thread that entered it, the claimer, or any thread
 *  when nobody writes `ctx`; every other reader uses cctx_context_lookup,
 *  which returns a new reference, or cctx_context_peek. CCTX_NOT_FOUND when missing, CCTX_EINVAL
 *  for bad handles. Python: `PyContext_*`-level `ctx[var]` under the GIL. */
CCTX_API cctx_status cctx_context_get(cctx_context *ctx, cctx_var *var,
                                      void **out);

/** The variable's hash (the one its HAMT placement uses): fixed for the
 *  variable's life, so a binding may read it once, keep it beside its
 *  handle and pass it to cctx_context_peek, which then never reads the
 *  variable. Borrows `var`; 0 for a bad handle. Safe from any thread.
 *  Python: `hash(var)` of a `ContextVar`. */
CCTX_API uint32_t cctx_var_hash(const cctx_var *var);

/** A read that cctx_context_peek began: opaque, kept by the caller (on its
 *  stack) until cctx_context_peek_end. Zero-initialise or leave it
 *  uninitialised; cctx_context_peek fills it. */
typedef struct cctx_read_guard {
    void *reserved[3];
} cctx_read_guard;

/** Reads the value of `var` in `ctx` (no defaults) from ANY thread, also
 *  while another thread writes `ctx`, without taking a reference: on
 *  CCTX_OK `*out` is BORROWED and stays valid until
 *  cctx_context_peek_end(`guard`), which the caller must call, on the same
 *  thread, before anything else of this library on that thread (other
 *  than further reads) — a peek holds one of the thread's hazard pointers,
 *  and the writer cannot free the map (or release the value) while it is
 *  held. Between the two the caller copies what it needs out of the value
 *  (a binding: the contents of its box, with the references the copy
 *  itself takes). `hash` is `var`'s (cctx_var_hash): `var` is compared by
 *  address and never read, so a stale or foreign `var` or a wrong `hash`
 *  returns CCTX_NOT_FOUND. On CCTX_NOT_FOUND or CCTX_EINVAL (`ctx` bad,
 *  `guard` or `out` NULL) nothing is held and peek_end must not be called.
 *  cctx_context_lookup for a caller that would only copy the value and
 *  release it: no retain/release callback runs, and the variable's line is
 *  not loaded. Python: `ctx[var]` (`PyContext` mapping lookup). */
CCTX_API cctx_status cctx_context_peek(cctx_context *ctx, cctx_var *var, uint32_t hash,
                                       cctx_read_guard *guard, void **out);

/** Ends the read that a cctx_context_peek returning CCTX_OK began on this
 *  thread; the value it returned may be freed from then on. Call it once. */
CCTX_API void cctx_context_peek_end(cctx_read_guard *guard);

/** A read section that cctx_read_section_begin opened: opaque, kept by the
 *  caller (on its stack) until cctx_read_section_end. */
typedef struct cctx_read_section {
    void *reserved[3];
} cctx_read_section;

/** Opens a read section on the calling thread: until the matching
 *  cctx_read_section_end (same thread; sections nest), no reference given
 *  to cctx_context_release_deferred after the section began is dropped, so
 *  a context the caller found through a pointer another thread may release
 *  that way stays valid memory. A section is short (a lookup, a copy): it
 *  holds back every thread's deferred frees while it is open; call no
 *  function that may wait (cctx_reclaim, thread cleanup) inside. Cost: one
 *  store and a full fence. */
CCTX_API void cctx_read_section_begin(cctx_read_section *section);

/** Closes a section cctx_read_section_begin opened. */
CCTX_API void cctx_read_section_end(cctx_read_section *section);

/** Drops one reference to `ctx` (the caller's, given up now) once every
 *  read section open at this call has closed: for a binding that published
 *  a replacement for a pointer to `ctx` that readers inside sections may
 *  still have loaded. The release runs before this returns: at once when
 *  no thread is inside a section (one scan of every thread's reclamation
 *  record), else after waiting for the sections open now to close (a
 *  grace period; sections are short). Called inside a section of the
 *  caller's own, it cannot wait: the release then runs when this thread's
 *  deferred frees are next polled (every few deferrals), by cctx_reclaim,
 *  or at its exit. May run release callbacks, also of other objects this
 *  thread deferred. Orders the caller's earlier stores (the replacement's
 *  publication) before the deferral with a full fence. NULL is ignored. */
CCTX_API void cctx_context_release_deferred(cctx_context *ctx);

/** The value of `var` in the calling thread's current context, BORROWED
 *  (valid as cctx_var_get's result), or NULL when that context holds none
 *  (the variable's default is not used), holds NULL, or `var` is not a
 *  valid handle. cctx_var_get without the status and out-parameter, for a
 *  binding whose values are never NULL; async-signal-safe like it. Python:
 *  `PyContextVar_Get(var, NULL, &value)`, which leaves NULL when the
 *  variable has no value. */
CCTX_API void *cctx_var_value(cctx_var *var);

/** The calling thread's value of `local`, BORROWED (valid as cctx_local_get's
 *  result), when the thread holds one that is not NULL; otherwise NULL —
 *  the thread has no value yet, deleted it, holds NULL, its value was
 *  released (the local's last release, the thread's exit), or `local` is
 *  not a valid handle. Never runs the initialiser, allocates or creates
 *  thread state. For a binding whose values are never NULL (Swift's
 *  per-thread boxes): NULL then means "call cctx_local_get", which runs the
 *  initialiser or reports the error. The same slot lookup as cctx_local_get
 *  without the status and out-parameter (a few instructions on a read that
 *  costs about twenty). Python: the C-level attribute read of a
 *  `threading.local` that has already been initialised on this thread. */
CCTX_API void *cctx_local_value(cctx_local *local);

/** A new context (`*out`, one reference, the caller's): a copy of `ctx`
 *  (borrowed), or of the calling thread's current context when `ctx` is
 *  NULL, in which `var` is bound to `value` (retained through the
 *  variable's value operations, as cctx_context_set does). One step
 *  instead of a copy and a set: no token, no write claim, nothing
 *  published; what `ContextVar.withValue` needs for its scope. Safe from any
 *  thread, also while another thread writes into `ctx`. Errors:
 *  CCTX_EINVAL (bad handle, `out` NULL), CCTX_ENOMEM (nothing made, nothing
 *  retained). Python: `ctx = copy_context(); ctx.run(var.set, value)`. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_context_copy_with(cctx_context *ctx, cctx_var *var,
                                                             void *value, cctx_context **out);

/** As cctx_context_copy_with from an empty context: a new context whose
 *  only binding is `var` = `value`. Errors: CCTX_EINVAL, CCTX_ENOMEM
 *  (nothing made, nothing retained). Python: `ctx = Context();
 *  ctx.run(var.set, value)`. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_context_new_with(cctx_var *var, void *value,
                                                            cctx_context **out);

/** cctx_context_copy_with that takes over the caller's reference to `value`
 *  instead of retaining it: for a binding that makes a value for the copy
 *  alone (Swift's withValue box), which would otherwise be retained through
 *  the variable's callback and released by the caller right after. `ctx`
 *  (NULL: the calling thread's current context) and `var` are borrowed,
 *  `*out` is one new reference, as for cctx_context_copy_with. Ownership of
 *  `value`: on CCTX_OK the caller's reference belongs to the copy and the
 *  caller must not release it. On the common writes (an empty source, or
 *  `var` replaced or added at the root of the source's map) the copy keeps
 *  that very reference and no value callback runs for `value`; on every
 *  other write (`var` already bound to `value`, or a write below the root
 *  node of the source's map, as in a large map) the copy holds a reference
 *  of its own (retained through the variable's retain callback, or the
 *  source's when `var` was already bound to `value`) and the caller's
 *  reference is then released through its release callback, during the call
 *  and on the calling thread — never the last release, as the copy holds
 *  one. For a variable without value operations nothing is retained or
 *  released either way. On any error — CCTX_EINVAL (bad handle, `out` NULL)
 *  or CCTX_ENOMEM — nothing was made and `value` was neither taken nor
 *  released: the reference is still the caller's, and `*out` is unchanged.
 *  Python: `ctx = copy_context(); ctx.run(var.set, value)` with the
 *  caller's reference stolen, as `PyTuple_SET_ITEM` steals. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_context_copy_with_adopting(cctx_context *ctx,
                                                                      cctx_var *var, void *value,
                                                                      cctx_context **out);

/** cctx_context_new_with taking over the caller's reference to `value`, as
 *  cctx_context_copy_with_adopting (the same ownership on success and
 *  error; from an empty map the copy always keeps the caller's reference
 *  itself, so no value callback runs on success). Errors: CCTX_EINVAL
 *  (bad `var`, `out` NULL), CCTX_ENOMEM; on either the reference is still
 *  the caller's and nothing was made. Python: `ctx = Context();
 *  ctx.run(var.set, value)`, the reference stolen. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_context_new_with_adopting(cctx_var *var, void *value,
                                                                     cctx_context **out);

/** cctx_var_set whose token (`*token_out`, one reference, as there) is
 *  light: it holds no reference to `var` or to the context. The caller
 *  keeps `var` alive until it releases the token (a binding whose own
 *  token object holds its variable); the token names its context by a
 *  serial that no other context ever has, so cctx_var_reset and
 *  cctx_context_reset behave exactly as for a cctx_var_set token — also
 *  CCTX_TOKEN_WRONG_CONTEXT in a context that reuses a freed one's
 *  address. cctx_token_context returns NULL for it; the rest of the token
 *  API is unchanged. Saves the context's count (two locked instructions)
 *  and the variable's reference per set + release. Errors as
 *  cctx_var_set. Python: `ContextVar.set`, whose Token keeps its context
 *  alive; here the binding's token needs no context. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_var_set_light(cctx_var *var, void *value,
                                                         cctx_token **token_out);

/** cctx_context_set with a light token (cctx_var_set_light); same rules
 *  and errors as cctx_context_set. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_context_set_light(cctx_context *ctx, cctx_var *var,
                                                             void *value,
                                                             cctx_token **token_out);

/** Sends `event` for `ctx` (borrowed; may be NULL) to every watcher, on the
 *  calling thread: for runtimes that track their own current context (the
 *  Swift facade's tasks). Costs one atomic load when no watcher is set; a
 *  binding that does work of its own around the call (re-reading state a
 *  callback may have changed) asks cctx_watchers_installed first and skips
 *  both when it is false. Python: what CPython does for
 *  `PyContext_AddWatcher` watchers when a context is entered or exited. */
CCTX_API void cctx_notify_watchers(cctx_event event, cctx_context *ctx);

#ifdef __cplusplus
}
#endif

/* The inlinable hit path of cctx_var_value, and cctx_watchers_installed. */
#include "contextcore_inline.h"

#endif /* CONTEXTCORE_BINDING_H */
