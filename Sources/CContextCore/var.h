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
 *   keys"): that node's own reference keeps the variable for them. Either
 *   way a variable outlives every value stored under it and its
 *   `ops.release` can always be called. Updated with ck_pr atomics
 *   (atomic.h) (any thread).
 */
#ifndef CCTX_VAR_H
#define CCTX_VAR_H

#ifndef CCTX_BUILDING_CORE
#error "var.h is internal to CContextCore"
#endif

#include "atomic.h"

#define CCTX_VAR_MAGIC 0x43565241u /* "CVRA" */

struct cctx_var {
    uint32_t magic;
    uint32_t hash;
    unsigned refcnt;
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

/* Take a reference to the variable itself (HAMT entry, token, …). */
static inline void var_ref(cctx_var *var)
{
    cctx_inc_uint(&var->refcnt);
}

/* Drop one (same as cctx_var_release). */
void var_unref(cctx_var *var) CCTX_HIDDEN;

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
