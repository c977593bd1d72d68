/*
 * var.h — the layout of a context variable (cctx_var).
 *
 * Invariants:
 * - `magic` is CCTX_VAR_MAGIC while the variable is alive (misuse checks).
 * - `hash` never changes after creation; HAMT keys compare by address and
 *   hash by this field.
 * - `refcnt` counts the user's references plus one per HAMT entry, token
 *   and default that names the variable. The HAMT retains its keys, so a
 *   variable outlives every value stored under it and its `ops.release`
 *   can always be called. Updated with ck_pr atomics (atomic.h) (any thread).
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
    cctx_value_ops ops;
    char *name;
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

/* Retain / release one value through the variable's callbacks. */
static inline void var_value_retain(const cctx_var *var, void *value)
{
    if (value != NULL && var->ops.retain != NULL)
        var->ops.retain(value);
}

static inline void var_value_release(const cctx_var *var, void *value)
{
    if (value != NULL && var->ops.release != NULL)
        var->ops.release(value);
}

#endif
