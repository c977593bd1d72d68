/*
 * var.h — the layout of a context variable (cctx_var).
 *
 * Invariants:
 * - `magic` is CCTX_VAR_MAGIC while the variable is alive (misuse checks).
 * - `hash` never changes after creation; HAMT keys compare by address and
 *   hash by this field.
 * - `refcnt` counts the user's references plus one per HAMT entry, token
 *   and default that names the variable — except HAMT entries that borrow
 *   their key from the node they were copied from (hamt.c, "Borrowed
 *   keys"): that node's own reference keeps the variable for them — plus
 *   the *variable credits* threads hold (var.c, "Variable credits").
 *   Either way a variable outlives every value stored under it and its
 *   `ops.release` can always be called. Updated with ck_pr atomics
 *   (atomic.h) (any thread).
 * - `users` counts the user's references alone (cctx_var_new, _retain,
 *   _release), each also counted in `refcnt`. Credits exist only while it
 *   is non-zero: the release that takes it to zero takes every thread's
 *   credits back before it drops its own reference, so that the variable
 *   is freed when the last user reference and the last map entry and
 *   token are gone, as without credits.
 * - `credited` is set (once, never cleared) before the first credits for
 *   the variable are installed: a variable nobody credited is released
 *   without looking at other threads' credit lines.
 */
#ifndef CCTX_VAR_H
#define CCTX_VAR_H

#ifndef CCTX_BUILDING_CORE
#error "var.h is internal to CContextCore"
#endif

#include "atomic.h"
#include "thread_line.h"

#define CCTX_VAR_MAGIC 0x43565241u /* "CVRA" */

struct cctx_var {
    uint32_t magic;
    uint32_t hash;
    unsigned refcnt;
    unsigned users;
    unsigned credited;
    unsigned flags;
    bool has_default;
    void *default_value;
    /* At most one of the two callback shapes is set: `ops` (no user data,
     * the common case and the Swift facade's) or `ops_ex` (callbacks that
     * receive ops_ex.ctx). Checking `ops` first keeps the plain shape as
     * fast as before; a variable without ops pays one more NULL test. */
    cctx_value_ops ops;
    cctx_value_ops_ex ops_ex;
    char *name;        /* name_len bytes, then a NUL */
    size_t name_len;
    void *userdata;    /* the binding's pointer; atomic load/store */
};

static inline bool var_is_valid(const cctx_var *var)
{
    return var != NULL && var->magic == CCTX_VAR_MAGIC;
}

/*
 * Variable credits (var.c): each thread has one cache line of its own with
 * VAR_CREDIT_WAYS words, way `hash % VAR_CREDIT_WAYS` holding references
 * to one variable taken in a batch: variable | credits << 48. A reference
 * taken from or given back to the calling thread's own line is a
 * compare-and-swap on that line; nothing of the variable is written.
 */
#define VAR_CREDIT_WAYS 4u
#define VAR_CREDIT_ONE ((uintptr_t)1 << 48)
#define VAR_CREDIT_PTR_MASK (VAR_CREDIT_ONE - 1)
/* Most credits a way holds; a give-back beyond is counted. */
#define VAR_CREDIT_CAP 64u

/* A line of thread_line.h: claimed on the thread's first install, given
 * back at its exit, never freed (a releaser scans every line without a
 * guard). */
typedef struct var_credit_line {
    thread_line line; /* first: the registry's header */
    /* Written by its thread and (to empty a way) by any thread. */
    uintptr_t word[VAR_CREDIT_WAYS];
} __attribute__((aligned(64))) var_credit_line;

extern __thread var_credit_line *cctx_var_credit_line
    __attribute__((tls_model("initial-exec"))) CCTX_HIDDEN;

static inline uintptr_t *var_credit_way(var_credit_line *l, const cctx_var *var)
{
    return &l->word[var->hash & (VAR_CREDIT_WAYS - 1)];
}

/* Counting build (make count-ops): locked writes to variables' own
 * counts (`refcnt`, `users`) by this thread, the lines that threads using
 * the same variable share; credit-line CASes are not among them. */
#ifdef CCTX_COUNT_LOCKED
extern __thread unsigned long cctx__var_count_writes;
#define VAR_COUNT_WRITE() (cctx__var_count_writes++)
#else
#define VAR_COUNT_WRITE() ((void)0)
#endif

void var_ref_missed(cctx_var *var) CCTX_HIDDEN;
void var_unref_counted(cctx_var *var) CCTX_HIDDEN;

/* Take a reference to the variable itself (HAMT entry, token, …): one of
 * this thread's credits for it when it has any (the CAS on its own line
 * fails only when another thread emptied the way meanwhile), else counted
 * (var_ref_missed may install credits). The caller holds a reference, so
 * the variable is alive throughout. */
static inline void var_ref(cctx_var *var)
{
    var_credit_line *l = cctx_var_credit_line;
    if (CCTX_LIKELY(l != NULL)) {
        uintptr_t *way = var_credit_way(l, var);
        uintptr_t w = cctx_load_uintptr(way);
        if ((w & VAR_CREDIT_PTR_MASK) == (uintptr_t)var && (w >> 48) != 0 &&
            cctx_cas_uintptr(way, w, w - VAR_CREDIT_ONE))
            return;
    }
    var_ref_missed(var);
}

/* Drop one (HAMT entry, token): back into this thread's credits when its
 * line holds credits for the variable, else counted down (the last one
 * frees it). A give-back needs no look at `users`: a way names a variable
 * whose users are gone only between an install and that install's own
 * check (var.c), on this same thread, which then empties the way with the
 * give-back in it. */
static inline void var_unref(cctx_var *var)
{
    var_credit_line *l = cctx_var_credit_line;
    if (CCTX_LIKELY(l != NULL)) {
        uintptr_t *way = var_credit_way(l, var);
        uintptr_t w = cctx_load_uintptr(way);
        if ((w & VAR_CREDIT_PTR_MASK) == (uintptr_t)var &&
            (w >> 48) < VAR_CREDIT_CAP &&
            cctx_cas_uintptr(way, w, w + VAR_CREDIT_ONE))
            return;
    }
    var_unref_counted(var);
}

/* Gives all of this thread's variable credits back (true if it held any);
 * `last`: and its line, at thread teardown. */
bool var_credits_flush(bool last) CCTX_HIDDEN;
/* In a fork child's handler: the lines of threads that did not survive
 * become reusable once the child's revocations have emptied them
 * (thread_line.h, ORPHANED). */
void var_credits_atfork_child(void) CCTX_HIDDEN;

/* Whether value callbacks are acceptable (var.c states the rule; locals
 * follow it too): at most one shape, and no release without retain. */
bool value_ops_are_valid(const cctx_value_ops *ops,
                         const cctx_value_ops_ex *ops_ex) CCTX_HIDDEN;

/* Retain / release one value through the variable's callbacks. */
static inline void var_value_retain(const cctx_var *var, void *value)
{
    if (value == NULL)
        return;
    if (var->ops.retain != NULL)
        var->ops.retain(value);
    else if (CCTX_UNLIKELY(var->ops_ex.retain != NULL))
        var->ops_ex.retain(var->ops_ex.ctx, value);
}

static inline void var_value_release(const cctx_var *var, void *value)
{
    if (value == NULL)
        return;
    if (var->ops.release != NULL)
        var->ops.release(value);
    else if (CCTX_UNLIKELY(var->ops_ex.release != NULL))
        var->ops_ex.release(var->ops_ex.ctx, value);
}

#endif
