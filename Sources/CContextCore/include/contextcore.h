/*
 * contextcore.h — the C API of ContextKit's runtime (CContextCore).
 *
 * Python's `contextvars` (PEP 567) and `threading.local`, for C11 and for the
 * Swift facade that wraps this library.
 *
 *   cctx_var      a context variable: a name, an optional default, and the
 *                 callbacks that let the runtime own its values.
 *   cctx_context  an immutable-by-sharing mapping var -> value (a persistent
 *                 hash array mapped trie). Copying one is O(1).
 *   cctx_token    what cctx_var_set returns; cctx_var_reset consumes it.
 *   cctx_local    a threading.local: one value per OS thread.
 *
 * Every OS thread has a current context, created empty on first use and
 * released when the thread exits. cctx_var_get/set/reset act on it.
 *
 * Ownership, stated at every function with these words:
 *   "new reference"  the caller owns one reference and must release it with
 *                    the matching *_release function.
 *   "borrowed"       the callee keeps ownership; the pointer stays valid for
 *                    as long as the function's comment says.
 *   "retains"        the runtime takes its own reference to a value through
 *                    the variable's or local's retain callback; the caller
 *                    keeps its own.
 *
 * Which reads hand out what (the rest of the API follows the same words):
 *
 *   call                          result                 valid until
 *   ----------------------------  ---------------------  ---------------------
 *   cctx_var_get / _get_default   borrowed value         this thread's next
 *                                                        set/reset/exit
 *   cctx_context_lookup           NEW reference (value)  cctx_var_release_value
 *   cctx_context_get (binding     borrowed value         the context's writer
 *     header; writer only)                               next changes it
 *   cctx_context_peek (binding    borrowed value         cctx_context_peek_end
 *     header; any thread)
 *   cctx_iter_next                borrowed var + value   cctx_iter_free
 *   cctx_token_old_value, _var    borrowed               the token lives
 *   cctx_var_default, _name       borrowed               the variable lives
 *   cctx_local_get / _peek        borrowed value         this thread's next
 *                                                        set/delete, or the
 *                                                        local's last release
 *   cctx_var_value,               borrowed value or      as cctx_var_get /
 *     cctx_local_value (binding   NULL for none          cctx_local_get
 *     header)
 *   cctx_context_current / _peek  borrowed context       the thread exits it
 *   cctx_context_copy*, _new      NEW reference          cctx_context_release
 *   cctx_var_new*, cctx_local_new NEW reference          *_release
 *
 * Values are `void *`. A variable or local created with value callbacks
 * (`cctx_value_ops`, or `cctx_value_ops_ex` whose callbacks also receive a
 * user pointer) owns its values: `retain` is called when the runtime
 * stores a value, `release` when it drops one. Callbacks are never called
 * with NULL; a NULL value is stored as is. With no callbacks the runtime
 * never touches values. `release` without `retain` is refused with
 * CCTX_EINVAL (the runtime would drop references it never took); `retain`
 * alone is allowed. Callbacks may run on any thread (values are released
 * by whichever thread drops the last reference), never while the runtime
 * holds a lock that another thread's reads, writes, exit or final release
 * of a local waits for. A release callback may use the library: release
 * objects, get/set/reset variables, use locals — also while its thread
 * exits (see cctx_thread_cleanup for what it sees then). A retain callback
 * must call no ContextKit function.
 *
 * Errors: every fallible call returns a `cctx_status`. After any error,
 * every context, variable, token and local is exactly as before the call,
 * and `*out` parameters are left untouched.
 *
 * Undefined behaviour (not detected): using any handle after its last
 * release; releasing a reference the caller does not own; passing anything
 * but a live iterator to cctx_iter_*, or using one iterator from two threads
 * at once; releasing a claimed context while its claimer still uses it (a
 * claim does not retain); a local's initialiser that uses its own local; a
 * retain callback that calls any ContextKit function; a release callback
 * that calls cctx_reclaim, or cctx_thread_cleanup other than during its
 * thread's teardown;
 * writing to a context claimed with cctx_context_claim from two threads at
 * once; leaving a callback (retain, release, watcher, local initialiser)
 * other than by returning — longjmp, pthread_exit, or a thread
 * cancellation acted on inside it (the call that ran it is left halfway:
 * e.g. cctx_clear_watcher then waits for ever for that watcher's call to
 * end). Detected misuse (NULL handles, foreign tokens, a handle of the wrong
 * kind while its memory is still alive) returns CCTX_EINVAL or the specific
 * status below and changes nothing.
 *
 * This header includes no Concurrency Kit header: every type is opaque.
 */
#ifndef CONTEXTCORE_H
#define CONTEXTCORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define CCTX_API __attribute__((visibility("default")))
#define CCTX_WARN_UNUSED __attribute__((warn_unused_result))
#else
#define CCTX_API
#define CCTX_WARN_UNUSED
#endif

/* ------------------------------------------------------------------------ */
/* Status codes                                                              */
/* ------------------------------------------------------------------------ */

/** Result of every fallible call. `cctx_strerror` names each. */
typedef enum cctx_status {
    CCTX_OK = 0,
    /** Allocation failed; nothing changed. */
    CCTX_ENOMEM = 1,
    /** A required argument was NULL, or a handle is of the wrong kind. */
    CCTX_EINVAL = 2,
    /** No value: the variable has no value in the context and no default
     *  (Python's LookupError), or a map/local lookup found nothing. */
    CCTX_NOT_FOUND = 3,
    /** cctx_var_reset: the token has already been used once. */
    CCTX_TOKEN_USED = 4,
    /** cctx_var_reset: the token was created by a different variable. */
    CCTX_TOKEN_WRONG_VAR = 5,
    /** cctx_var_reset: the token was created in a different context. */
    CCTX_TOKEN_WRONG_CONTEXT = 6,
    /** cctx_context_enter/claim: the context is already entered (on this or
     *  another thread, or claimed by an async task); also a write into a
     *  context entered by another thread. */
    CCTX_ALREADY_ENTERED = 7,
    /** cctx_context_exit: the context is not the calling thread's current one. */
    CCTX_NOT_CURRENT = 8,
    /** cctx_context_unclaim: the context is not claimed. */
    CCTX_NOT_ENTERED = 9,
    /** cctx_add_watcher: all CCTX_MAX_WATCHERS watcher slots are in use. */
    CCTX_TOO_MANY_WATCHERS = 10,
} cctx_status;

/** A static, human-readable description of `status` ("out of memory", …).
 *  Never returns NULL; unknown codes give "unknown ContextKit status". */
CCTX_API const char *cctx_strerror(cctx_status status);

/* ------------------------------------------------------------------------ */
/* Opaque types                                                              */
/* ------------------------------------------------------------------------ */

typedef struct cctx_var cctx_var;
typedef struct cctx_context cctx_context;
typedef struct cctx_token cctx_token;
typedef struct cctx_iter cctx_iter;
typedef struct cctx_local cctx_local;

/** How the runtime owns values. Both NULL: values are not owned. `retain`
 *  alone: the runtime reports the references it takes and never drops them.
 *  `release` without `retain` is refused (CCTX_EINVAL) by every function
 *  that takes ops: strings from strdup with `{ NULL, free }` would be freed
 *  once per store. To hand the runtime a value it then owns alone, pass a
 *  retain that counts (or copies) and a release that undoes it. */
typedef struct cctx_value_ops {
    /** Take one reference to `value` (never NULL). */
    void (*retain)(void *value);
    /** Drop one reference to `value` (never NULL). May run on any thread. */
    void (*release)(void *value);
} cctx_value_ops;

/** cctx_value_ops whose callbacks also receive `ctx` (a language binding's
 *  interpreter or owner): `retain(ctx, value)`, `release(ctx, value)`. Same
 *  rules as cctx_value_ops. `ctx` is borrowed: it must stay valid while a
 *  value may still be released through it — for a variable, until the
 *  variable is gone; for a local, until its last release has returned and
 *  every thread that stored a value of it has exited or cleaned up. */
typedef struct cctx_value_ops_ex {
    void (*retain)(void *ctx, void *value);
    void (*release)(void *ctx, void *value);
    void *ctx;
} cctx_value_ops_ex;

/* ------------------------------------------------------------------------ */
/* Variables                                                                 */
/* ------------------------------------------------------------------------ */

/** Variable flags, for cctx_var_new_ex. */
enum {
    /** Default: the value flows into copies made for other threads/tasks. */
    CCTX_VAR_INHERITED = 0,
    /** The value is dropped from copies made by cctx_context_copy_inherit
     *  (the helpers that start threads or tasks); explicit copies keep it. */
    CCTX_VAR_NOT_INHERITED = 1u << 0,
};

/** Creates a variable without a default — Python's `ContextVar(name)`.
 *  `name` is copied; `ops` is copied (NULL: values are not owned).
 *  On success `*out` is a new reference (release with cctx_var_release).
 *  Variables compare by identity; the hash is computed once, here.
 *  Errors: CCTX_EINVAL for a NULL `name`/`out` or ops with `release` but no
 *  `retain`; CCTX_ENOMEM. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_var_new(const char *name, const cctx_value_ops *ops, cctx_var **out);

/** Creates a variable with a default value (which it retains).
 *  Ownership and errors as cctx_var_new; `default_value` may be NULL (a
 *  NULL default). Python: `ContextVar(name, default=...)`. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_var_new_with_default(const char *name, const cctx_value_ops *ops,
                          void *default_value, cctx_var **out);

/** Creates a variable with every option: `has_default` says whether
 *  `default_value` is used; `flags` is a CCTX_VAR_* mask. Ownership as above;
 *  CCTX_EINVAL also for unknown flags. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_var_new_ex(const char *name, const cctx_value_ops *ops, bool has_default,
                void *default_value, unsigned flags, cctx_var **out);

/** cctx_var_new_ex for language bindings — Python's `ContextVar(name,
 *  default=...)` from a `str` object: the name is `name_len` bytes at `name`
 *  (copied; it may contain NUL bytes, as a Python str may; NULL is allowed
 *  when `name_len` is 0), the callbacks receive `ops->ctx`, and `userdata`
 *  is stored on the variable (cctx_var_userdata; not owned, never touched).
 *  `ops` may be NULL. On success `*out` is a new reference. Errors:
 *  CCTX_EINVAL (NULL `out`, NULL `name` with a non-zero length, unknown
 *  flags, `release` without `retain`), CCTX_ENOMEM. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_var_new_n(const char *name, size_t name_len, const cctx_value_ops_ex *ops,
               bool has_default, void *default_value, unsigned flags,
               void *userdata, cctx_var **out);

/** Adds a reference to `var`; returns `var` (NULL passes through). */
CCTX_API cctx_var *cctx_var_retain(cctx_var *var);

/** Drops a reference. Contexts that hold values of `var` keep it alive. */
CCTX_API void cctx_var_release(cctx_var *var);

/** The variable's name (Python's `ContextVar.name`); borrowed, valid while
 *  `var` is alive. Always NUL-terminated; a name given to cctx_var_new_n
 *  with NUL bytes inside reads as its first part here (use cctx_var_name_n).
 *  NULL for a bad handle. */
CCTX_API const char *cctx_var_name(const cctx_var *var);

/** The variable's whole name (Python's `ContextVar.name`, which may hold
 *  NUL characters): returns it (borrowed, as cctx_var_name, with a NUL
 *  after the last byte) and stores its length in bytes into `*len_out`
 *  (may be NULL). NULL, leaving `*len_out` alone, for a bad handle. */
CCTX_API const char *cctx_var_name_n(const cctx_var *var, size_t *len_out);

/** The pointer stored with cctx_var_new_n or cctx_var_set_userdata (NULL
 *  if none, or for a bad handle): lets a binding map a `cctx_var` met while
 *  iterating a context back to its own object without a side table. Not
 *  owned by the runtime. Safe from any thread. No Python equivalent (the
 *  binding's ContextVar object is the owner it names). */
CCTX_API void *cctx_var_userdata(const cctx_var *var);

/** Stores `userdata` on `var` (replacing the previous pointer, which is not
 *  released: the runtime never owns it; `var` is borrowed). Safe from any
 *  thread; a reader sees the old or the new pointer. CCTX_EINVAL for a bad
 *  handle. No Python equivalent (see cctx_var_userdata). */
CCTX_API cctx_status cctx_var_set_userdata(cctx_var *var, void *userdata);

/** Copies the variable's value callbacks into `*out` (both NULL when it was
 *  created without ops or with cctx_value_ops_ex). Lets a language binding recognise its own
 *  variables while iterating a context. CCTX_EINVAL for a bad handle. */
CCTX_API cctx_status cctx_var_ops(const cctx_var *var, cctx_value_ops *out);

/** The variable's flags (CCTX_VAR_*). */
CCTX_API unsigned cctx_var_flags(const cctx_var *var);

/** The variable's default: CCTX_OK with `*out` borrowed (valid while `var`
 *  lives), or CCTX_NOT_FOUND if it has none. */
CCTX_API cctx_status cctx_var_default(const cctx_var *var, void **out);

/** Reads `var` in the calling thread's current context.
 *  Precedence (Python): the value in the context, else the variable's
 *  default, else CCTX_NOT_FOUND.
 *  `*out` is borrowed: valid until this thread next sets, resets or exits a
 *  context, or until the caller retains it.
 *  Async-signal-safe (so is cctx_var_get_default): a signal handler may
 *  call it whatever the interrupted thread was doing in this library (get,
 *  set, reset, enter, exit); it returns the value the current context held
 *  just before or just after the interrupted operation, takes no lock,
 *  allocates nothing, and leaves the thread's state as it was. It does not
 *  run the value's retain callback (retaining in a handler is the
 *  handler's business). Not covered: a handler interrupting this thread's
 *  exit teardown. */
CCTX_API cctx_status cctx_var_get(cctx_var *var, void **out);

/** As cctx_var_get, but when the context has no value `default_value` is
 *  returned instead of the variable's own default (Python's
 *  `var.get(default)`). Never returns CCTX_NOT_FOUND. */
CCTX_API cctx_status cctx_var_get_default(cctx_var *var, void *default_value,
                                          void **out);

/** Sets `var` to `value` in the calling thread's current context (which it
 *  retains). If `token_out` is not NULL it receives a new reference to a
 *  token remembering the previous value; pass it to cctx_var_reset. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_var_set(cctx_var *var, void *value, cctx_token **token_out);

/** Restores `var` in the current context to what it was before the `set`
 *  that made `token`: the old value, or no value at all. Errors, checked in
 *  this order: CCTX_TOKEN_USED, CCTX_TOKEN_WRONG_VAR, CCTX_TOKEN_WRONG_CONTEXT
 *  (any context other than the token's, also one that reuses the address of
 *  the token's context after it was freed).
 *  Borrows `token` (the caller still releases it); marks it used on success. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_var_reset(cctx_var *var, cctx_token *token);

/* ------------------------------------------------------------------------ */
/* Tokens                                                                    */
/* ------------------------------------------------------------------------ */

CCTX_API cctx_token *cctx_token_retain(cctx_token *token);
CCTX_API void cctx_token_release(cctx_token *token);
/** The variable that made the token; borrowed, valid while `token` lives
 *  (for a light token, contextcore_binding.h: while its maker keeps the
 *  variable). */
CCTX_API cctx_var *cctx_token_var(const cctx_token *token);
/** The context the token was made in; borrowed, valid while `token` lives.
 *  NULL for a light token (contextcore_binding.h), which holds none. */
CCTX_API cctx_context *cctx_token_context(const cctx_token *token);
/** The value before the `set`: CCTX_OK with `*out` borrowed (valid while
 *  `token` lives), or CCTX_NOT_FOUND when the variable had no value
 *  (Python's Token.MISSING). */
CCTX_API cctx_status cctx_token_old_value(const cctx_token *token, void **out);
/** Whether cctx_var_reset has consumed the token. */
CCTX_API bool cctx_token_is_used(const cctx_token *token);

/* ------------------------------------------------------------------------ */
/* Contexts                                                                  */
/* ------------------------------------------------------------------------ */

/** A new empty context; `*out` is a new reference. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_context_new(cctx_context **out);

/** A copy of `ctx` sharing its structure (O(1)); `*out` is a new reference.
 *  Safe from any thread, also while another thread writes into `ctx`. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_context_copy(cctx_context *ctx, cctx_context **out);

/** As cctx_context_copy, but variables created with CCTX_VAR_NOT_INHERITED
 *  are left out. Used by helpers that hand a context to a new thread/task. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_context_copy_inherit(cctx_context *ctx, cctx_context **out);

/** A copy of the calling thread's current context (Python copy_context());
 *  `*out` is a new reference. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_context_copy_current(cctx_context **out);

CCTX_API cctx_context *cctx_context_retain(cctx_context *ctx);
CCTX_API void cctx_context_release(cctx_context *ctx);

/** Makes `ctx` the calling thread's current context; `ctx` stays alive until
 *  the matching exit even if the caller releases its last reference
 *  meanwhile (that reference is then dropped at the exit). CCTX_ALREADY_ENTERED if `ctx` is entered anywhere or
 *  claimed; nothing changes then. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_context_enter(cctx_context *ctx);

/** Leaves `ctx`, restoring the context that was current before the enter.
 *  CCTX_NOT_CURRENT if `ctx` is not the calling thread's current context. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_context_exit(cctx_context *ctx);

/** Enters `ctx`, calls `fn(arg)`, exits — Python's Context.run for C.
 *  Returns the enter status; `fn` runs only when it is CCTX_OK. Contexts
 *  `fn` entered and did not exit are exited too; if `fn` exited `ctx`
 *  itself, returns CCTX_NOT_CURRENT and leaves the thread's contexts as
 *  `fn` left them (what it entered after that stays entered). `ctx` stays
 *  alive until the run returns, even if `fn` exits it and releases the
 *  last reference. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_context_run(cctx_context *ctx, void (*fn)(void *arg), void *arg);

/** Whether `ctx` is entered by a thread or claimed (claims: see
 *  contextcore_binding.h). */
CCTX_API bool cctx_context_is_entered(const cctx_context *ctx);

/** Number of variables with a value in `ctx`. Safe from any thread. */
CCTX_API size_t cctx_context_count(cctx_context *ctx);

/** Reads the value of `var` in `ctx` (no defaults). CCTX_NOT_FOUND when
 *  missing. `*out` is a NEW reference: the variable's retain callback was
 *  called and the caller releases it with cctx_var_release_value. Safe from
 *  any thread, also while another thread writes into `ctx`. */
CCTX_API cctx_status cctx_context_lookup(cctx_context *ctx, cctx_var *var,
                                         void **out);

/** Whether `var` has a value in `ctx`. Safe from any thread. */
CCTX_API bool cctx_context_contains(cctx_context *ctx, cctx_var *var);

/** Sets `var` in `ctx` (not the current context: for callers that hold their
 *  context, e.g. Swift tasks). Allowed for the thread that entered `ctx`, for
 *  a claimer, or on a context nobody has entered (which the write owns for
 *  its duration: a concurrent enter or second writer gets
 *  CCTX_ALREADY_ENTERED); CCTX_ALREADY_ENTERED when another thread has
 *  entered it. Retains `value`; `token_out` as in
 *  cctx_var_set (may be NULL). */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_context_set(cctx_context *ctx, cctx_var *var, void *value,
                 cctx_token **token_out);

/** cctx_var_reset for an explicit context; same errors and rules as
 *  cctx_context_set. Borrows `token`. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_context_reset(cctx_context *ctx, cctx_var *var, cctx_token *token);

/** Removes `var` from `ctx` (no token). CCTX_NOT_FOUND if it had no value.
 *  Same rules as cctx_context_set. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_context_delete(cctx_context *ctx, cctx_var *var);

/** Structural equality: the same variables bound to the same (pointer-equal)
 *  values. Safe from any thread. */
CCTX_API bool cctx_context_equal(cctx_context *a, cctx_context *b);

/** Drops one reference to `value` through `var`'s release callback: for
 *  the new reference cctx_context_lookup returned, or one the caller took
 *  itself through the variable's ops. */
CCTX_API void cctx_var_release_value(cctx_var *var, void *value);

/* Iteration over a snapshot: later writes into the context do not show. */

/** Starts iterating `ctx`; `*out` is owned by the caller (cctx_iter_free).
 *  Safe from any thread. Order is unspecified but stable for a snapshot. */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_iter_new(cctx_context *ctx,
                                                    cctx_iter **out);

/** Next (variable, value) pair: true and both borrowed (valid while `iter`
 *  lives), or false at the end. Either out pointer may be NULL. */
CCTX_API bool cctx_iter_next(cctx_iter *iter, cctx_var **var_out,
                             void **value_out);

/** Frees the iterator and the snapshot it holds. NULL is ignored. */
CCTX_API void cctx_iter_free(cctx_iter *iter);

/* ------------------------------------------------------------------------ */
/* Threads                                                                   */
/* ------------------------------------------------------------------------ */

/** pthread_create that runs `fn(arg)` in a copy (cctx_context_copy_inherit)
 *  of the caller's current context — Python 3.14's Thread(context=...).
 *  Returns CCTX_ENOMEM (nothing started) or CCTX_EINVAL if pthread_create
 *  failed; `*thread` is set on success only. The copy is released when
 *  `fn` returns, and also when it calls pthread_exit or the thread is
 *  cancelled (then by the thread's teardown at exit) — outside a
 *  ContextKit callback (see "Undefined behaviour" above). */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_thread_create(pthread_t *thread, const pthread_attr_t *attr,
                   void *(*fn)(void *), void *arg);

/** Releases everything the calling thread holds (its base context, values
 *  of locals) now instead of at thread exit; the thread may keep using
 *  ContextKit afterwards (state is created again). Fails with
 *  CCTX_ALREADY_ENTERED, changing nothing, while a context is entered and
 *  inside a watcher callback on this thread (the enter, exit or state
 *  creation that fired it still uses the thread's state).
 *  Called from a release callback while the thread's state is being torn
 *  down, it does nothing and returns CCTX_OK.
 *
 *  Teardown (here and at thread exit) releases in rounds, and release
 *  callbacks may use the library throughout: each round leaves the
 *  contexts the thread still has entered, releases every value of its
 *  locals (their slots stay usable) and swaps its base context for an
 *  empty one before releasing the old. A callback reads the value it set
 *  earlier in the teardown, or the default (the thread's base is already
 *  empty); what it sets or stores is released by the next round. After 8
 *  rounds that still found values (callbacks that keep storing new ones),
 *  or when no memory is left for the fresh base, one last round runs
 *  with the thread's state already detached: reads see defaults and no
 *  local value, writes fail with CCTX_ENOMEM (as when a thread's state
 *  cannot be created), so it ends with nothing left. */
CCTX_API cctx_status cctx_thread_cleanup(void);

/** Frees what this thread deferred for reclamation (roots and values it
 *  replaced while other threads were reading the same contexts). Waits for
 *  readers that are inside a read (a grace period); never for a thread
 *  that is idle. Deferred memory is bounded without calling this; it is
 *  for tests and shutdown code that want a settled state. */
CCTX_API void cctx_reclaim(void);

/** The calling thread's current context, borrowed: valid until the thread
 *  exits it (cctx_context_exit) or the thread ends; retain it to keep it
 *  longer. Creates the thread's state (and so its empty base context) if
 *  the thread has none; NULL only when that runs out of memory. For
 *  introspection: a Swift task's context is not the thread's. */
CCTX_API cctx_context *cctx_context_current(void);

/** As cctx_context_current but without side effects: NULL on a thread that
 *  has no state yet (whose current context is, in effect, empty), and
 *  nothing is created or allocated. Borrowed as above. For bindings that
 *  look before they touch (Python has no equivalent: PyContext_CopyCurrent
 *  always creates). */
CCTX_API cctx_context *cctx_context_current_peek(void);

/** The calling thread's chain of contexts, innermost first: the contexts it
 *  entered (cctx_context_enter, most recent first) and last its base
 *  context. Stores up to `max` borrowed handles (each valid until the thread
 *  exits it; the base until the thread ends) into `out` (may be NULL when
 *  `max` is 0) and returns the length of the whole chain, which may exceed
 *  `max`. Returns 0, creating nothing, on a thread without state (one that
 *  never used a context). */
CCTX_API size_t cctx_thread_contexts(cctx_context **out, size_t max);

/* ------------------------------------------------------------------------ */
/* Context-switch watchers                                                   */
/* ------------------------------------------------------------------------ */

/** How many watchers may be installed at once. */
#define CCTX_MAX_WATCHERS 8

/** What happened to the current context of a thread (or, for events sent
 *  with cctx_notify_watchers, of an async task). */
typedef enum cctx_event {
    /** A context was entered; the callback's context is the one entered. */
    CCTX_EVENT_ENTERED = 0,
    /** A context was exited; the callback's context is the one now current
     *  (NULL when no context is current, e.g. an async task's scope ended). */
    CCTX_EVENT_EXITED = 1,
    /** The current context changed for another reason: a thread's state was
     *  created (callback gets its new empty context) or destroyed (NULL). */
    CCTX_EVENT_SWITCHED = 2,
} cctx_event;

/** A watcher callback. Runs on the thread where the event happened, before
 *  the operation returns; `ctx` is borrowed for the call. It must not call
 *  cctx_add_watcher/cctx_clear_watcher and should be quick: clearing a
 *  watcher waits for callbacks that are running. */
typedef void (*cctx_watcher_fn)(cctx_event event, cctx_context *ctx,
                                void *userdata);

/** Installs a watcher; `*id_out` receives its id (0 … CCTX_MAX_WATCHERS-1).
 *  `userdata` is borrowed until cctx_clear_watcher returns.
 *  CCTX_TOO_MANY_WATCHERS when every slot is taken. Safe from any thread,
 *  also while events fire on others. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_add_watcher(cctx_watcher_fn fn, void *userdata, int *id_out);

/** Removes watcher `id`. When it returns, the callback is not running on
 *  any thread and will not be called again. CCTX_EINVAL for an id that is
 *  not installed. */
CCTX_API cctx_status cctx_clear_watcher(int id);

/* ------------------------------------------------------------------------ */
/* threading.local                                                           */
/* ------------------------------------------------------------------------ */

/** A per-thread initialiser (Python: the `__init__` of a threading.local
 *  subclass): stores a new reference into `*value_out` and returns CCTX_OK,
 *  or returns an error that cctx_local_get passes on (and runs the
 *  initialiser again on the next get). */
typedef cctx_status (*cctx_local_init_fn)(void *userdata, void **value_out);

/** Creates a thread-local slot; `*out` is a new reference. `ops` is copied
 *  (NULL: values are not owned). If `init` is not NULL it runs once per
 *  thread, on the thread's first cctx_local_get when no value was set there
 *  (and again on the first get after a cctx_local_delete);
 *  `userdata` is borrowed and must outlive the local. Any number of locals
 *  may exist (not limited by PTHREAD_KEYS_MAX). Python: `threading.local()`
 *  (with `init`: a subclass with `__init__`). Errors: CCTX_EINVAL (NULL
 *  `out`, ops with `release` but no `retain`), CCTX_ENOMEM. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_local_new(const cctx_value_ops *ops, cctx_local_init_fn init,
               void *userdata, cctx_local **out);

/** cctx_local_new with callbacks that receive `ops->ctx` (see
 *  cctx_value_ops_ex for how long it must live); `ops` may be NULL. Python's
 *  `threading.local()` as a binding builds it. `*out` is a new reference.
 *  Errors: CCTX_EINVAL (NULL `out`, `release` without `retain`),
 *  CCTX_ENOMEM. */
CCTX_API CCTX_WARN_UNUSED cctx_status
cctx_local_new_ex(const cctx_value_ops_ex *ops, cctx_local_init_fn init,
                  void *userdata, cctx_local **out);

CCTX_API cctx_local *cctx_local_retain(cctx_local *local);

/** Drops a reference. The last release releases the local's values in every
 *  live thread (safe while those threads use other locals). */
CCTX_API void cctx_local_release(cctx_local *local);

/** This thread's value: CCTX_OK with `*out` borrowed (valid until this
 *  thread next sets or deletes it, or the local is released), or
 *  CCTX_NOT_FOUND. Runs the initialiser first if this thread never had a
 *  value and never ran it. */
CCTX_API cctx_status cctx_local_get(cctx_local *local, void **out);

/** Sets this thread's value (retains `value`, releases the old one). */
CCTX_API CCTX_WARN_UNUSED cctx_status cctx_local_set(cctx_local *local,
                                                     void *value);

/** This thread's value without side effects: CCTX_OK with `*out` borrowed
 *  (as cctx_local_get), or CCTX_NOT_FOUND when this thread has no value —
 *  never ran the initialiser, deleted it, or has no state. Never runs the
 *  initialiser, allocates or creates thread state. CCTX_EINVAL for a bad
 *  handle or NULL `out`. (Python: reading `local.__dict__` without
 *  triggering `__init__`, which Python itself cannot do.) */
CCTX_API cctx_status cctx_local_peek(cctx_local *local, void **out);

/** Deletes this thread's value (releases it); CCTX_NOT_FOUND if none. The
 *  thread is then as if it had never touched the local: the next
 *  cctx_local_get runs the initialiser again (Python calls `__init__` again
 *  for a thread whose local dict is gone). A delete on a thread that never
 *  had a value changes nothing and returns CCTX_NOT_FOUND. */
CCTX_API cctx_status cctx_local_delete(cctx_local *local);

#ifdef __cplusplus
}
#endif

#endif /* CONTEXTCORE_H */
