/*
 * var.c — context variables: creation, identity hash, reference counting.
 *
 * The hash is computed once, here, from the variable's address mixed with
 * its name's hash (CPython does the same): variables compare by identity,
 * so the address alone would do, but allocators hand out addresses with
 * regular low bits and strides; mixing spreads them over the HAMT levels.
 */
#include "internal.h"
#include "var.h"

#include <string.h>

/* Non-zero while any variable with CCTX_VAR_NOT_INHERITED is alive; lets
 * cctx_context_copy_inherit skip its filter in the common case. */
unsigned cctx_not_inherited_vars CCTX_HIDDEN;

static uint32_t hash_name(const char *name)
{
    /* FNV-1a, 32 bits. */
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h;
}

static uint32_t mix32(uint64_t x)
{
    /* A 64-bit finalizer (splitmix64's), folded to 32 bits. */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return (uint32_t)(x ^ (x >> 32));
}

static cctx_status var_create(const char *name, const cctx_value_ops *ops,
                              bool has_default, void *default_value,
                              unsigned flags, bool hash_given, uint32_t hash,
                              cctx_var **out)
{
    if (name == NULL || out == NULL)
        return CCTX_EINVAL;
    if (flags & ~(unsigned)CCTX_VAR_NOT_INHERITED)
        return CCTX_EINVAL;

    cctx_var *var = cctx_alloc_zeroed(sizeof *var);
    if (var == NULL)
        return CCTX_ENOMEM;
    size_t len = strlen(name);
    var->name = cctx_alloc(len + 1);
    if (var->name == NULL) {
        cctx_dealloc(var);
        return CCTX_ENOMEM;
    }
    memcpy(var->name, name, len + 1);

    var->magic = CCTX_VAR_MAGIC;
    var->refcnt = 1;
    var->flags = flags;
    if (ops != NULL)
        var->ops = *ops;
    var->hash = hash_given ? hash
                           : mix32((uint64_t)(uintptr_t)var ^ ((uint64_t)hash_name(name) << 32));
    var->has_default = has_default;
    if (has_default) {
        var->default_value = default_value;
        var_value_retain(var, default_value);
    }
    if (flags & CCTX_VAR_NOT_INHERITED)
        cctx_inc_uint(&cctx_not_inherited_vars);
    *out = var;
    return CCTX_OK;
}

cctx_status cctx_var_new(const char *name, const cctx_value_ops *ops, cctx_var **out)
{
    return var_create(name, ops, false, NULL, 0, false, 0, out);
}

cctx_status cctx_var_new_with_default(const char *name, const cctx_value_ops *ops,
                                      void *default_value, cctx_var **out)
{
    return var_create(name, ops, true, default_value, 0, false, 0, out);
}

cctx_status cctx_var_new_ex(const char *name, const cctx_value_ops *ops, bool has_default,
                            void *default_value, unsigned flags, cctx_var **out)
{
    return var_create(name, ops, has_default, default_value, flags, false, 0, out);
}

cctx_status cctx__var_new_with_hash(const char *name, const cctx_value_ops *ops,
                                    uint32_t hash, cctx_var **out)
{
    return var_create(name, ops, false, NULL, 0, true, hash, out);
}

uint32_t cctx__var_hash(const cctx_var *var)
{
    return var_is_valid(var) ? var->hash : 0;
}

cctx_var *cctx_var_retain(cctx_var *var)
{
    if (var_is_valid(var))
        var_ref(var);
    return var;
}

void var_unref(cctx_var *var)
{
    if (!cctx_dec_uint_is_zero(&var->refcnt))
        return;
    /* Last reference: no context, token or user holds the variable, so no
     * value of it is stored anywhere but (possibly) its default. */
    if (var->has_default)
        var_value_release(var, var->default_value);
    if (var->flags & CCTX_VAR_NOT_INHERITED)
        (void)cctx_dec_uint_is_zero(&cctx_not_inherited_vars);
    var->magic = 0;
    cctx_dealloc(var->name);
    cctx_dealloc(var);
}

void cctx_var_release(cctx_var *var)
{
    if (var_is_valid(var))
        var_unref(var);
}

const char *cctx_var_name(const cctx_var *var)
{
    return var_is_valid(var) ? var->name : NULL;
}

cctx_status cctx_var_ops(const cctx_var *var, cctx_value_ops *out)
{
    if (!var_is_valid(var) || out == NULL)
        return CCTX_EINVAL;
    *out = var->ops;
    return CCTX_OK;
}

unsigned cctx_var_flags(const cctx_var *var)
{
    return var_is_valid(var) ? var->flags : 0;
}

cctx_status cctx_var_default(const cctx_var *var, void **out)
{
    if (!var_is_valid(var) || out == NULL)
        return CCTX_EINVAL;
    if (!var->has_default)
        return CCTX_NOT_FOUND;
    *out = var->default_value;
    return CCTX_OK;
}

void cctx_var_release_value(cctx_var *var, void *value)
{
    if (var_is_valid(var))
        var_value_release(var, value);
}
