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

static uint32_t hash_name(const char *name, size_t len)
{
    /* FNV-1a, 32 bits, over every byte (a name may contain NULs). */
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)name[i];
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

/* Ops that release without retaining would release references the runtime
 * never took (a value stored twice would be freed twice): refused, so that
 * `{ NULL, free }` fails at creation instead of corrupting the heap later.
 * Retain without release is allowed (a hook that observes stores). */
bool value_ops_are_valid(const cctx_value_ops *ops, const cctx_value_ops_ex *ops_ex)
{
    if (ops != NULL && ops_ex != NULL)
        return false;
    if (ops != NULL && ops->release != NULL && ops->retain == NULL)
        return false;
    if (ops_ex != NULL && ops_ex->release != NULL && ops_ex->retain == NULL)
        return false;
    return true;
}

/* The one constructor behind every cctx_var_new* function. */
typedef struct var_spec {
    const char *name;
    size_t name_len;
    const cctx_value_ops *ops;
    const cctx_value_ops_ex *ops_ex;
    bool has_default;
    void *default_value;
    unsigned flags;
    bool hash_given;
    uint32_t hash;
} var_spec;

static cctx_status var_create(const var_spec *spec, cctx_var **out)
{
    if (spec->name == NULL || out == NULL)
        return CCTX_EINVAL;
    if (spec->flags & ~(unsigned)CCTX_VAR_NOT_INHERITED)
        return CCTX_EINVAL;
    if (!value_ops_are_valid(spec->ops, spec->ops_ex) || spec->name_len == SIZE_MAX)
        return CCTX_EINVAL;

    cctx_var *var = cctx_alloc_zeroed(sizeof *var);
    if (var == NULL)
        return CCTX_ENOMEM;
    size_t len = spec->name_len;
    var->name = cctx_alloc(len + 1);
    if (var->name == NULL) {
        cctx_dealloc(var);
        return CCTX_ENOMEM;
    }
    memcpy(var->name, spec->name, len);
    var->name[len] = '\0';
    var->name_len = len;

    var->magic = CCTX_VAR_MAGIC;
    var->refcnt = 1;
    var->flags = spec->flags;
    if (spec->ops != NULL)
        var->ops = *spec->ops;
    if (spec->ops_ex != NULL)
        var->ops_ex = *spec->ops_ex;
    var->hash = spec->hash_given
                    ? spec->hash
                    : mix32((uint64_t)(uintptr_t)var ^
                            ((uint64_t)hash_name(spec->name, len) << 32));
    var->has_default = spec->has_default;
    if (spec->has_default) {
        var->default_value = spec->default_value;
        var_value_retain(var, spec->default_value);
    }
    if (spec->flags & CCTX_VAR_NOT_INHERITED)
        cctx_inc_uint(&cctx_not_inherited_vars);
    *out = var;
    return CCTX_OK;
}

static inline size_t name_length(const char *name)
{
    return name != NULL ? strlen(name) : 0;
}

cctx_status cctx_var_new(const char *name, const cctx_value_ops *ops, cctx_var **out)
{
    var_spec spec = { .name = name, .name_len = name_length(name), .ops = ops };
    return var_create(&spec, out);
}

cctx_status cctx_var_new_with_default(const char *name, const cctx_value_ops *ops,
                                      void *default_value, cctx_var **out)
{
    var_spec spec = { .name = name, .name_len = name_length(name), .ops = ops,
                      .has_default = true, .default_value = default_value };
    return var_create(&spec, out);
}

cctx_status cctx_var_new_ex(const char *name, const cctx_value_ops *ops, bool has_default,
                            void *default_value, unsigned flags, cctx_var **out)
{
    var_spec spec = { .name = name, .name_len = name_length(name), .ops = ops,
                      .has_default = has_default, .default_value = default_value,
                      .flags = flags };
    return var_create(&spec, out);
}

cctx_status cctx_var_new_n(const char *name, size_t name_len, const cctx_value_ops_ex *ops,
                           bool has_default, void *default_value, unsigned flags,
                           void *userdata, cctx_var **out)
{
    if (name == NULL && name_len == 0)
        name = ""; /* an empty name needs no bytes */
    var_spec spec = { .name = name, .name_len = name_len, .ops_ex = ops,
                      .has_default = has_default, .default_value = default_value,
                      .flags = flags };
    cctx_status st = var_create(&spec, out);
    if (st == CCTX_OK)
        (*out)->userdata = userdata; /* not yet shared: a plain store */
    return st;
}

cctx_status cctx__var_new_with_hash(const char *name, const cctx_value_ops *ops,
                                    uint32_t hash, cctx_var **out)
{
    var_spec spec = { .name = name, .name_len = name_length(name), .ops = ops,
                      .hash_given = true, .hash = hash };
    return var_create(&spec, out);
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

const char *cctx_var_name_n(const cctx_var *var, size_t *len_out)
{
    if (!var_is_valid(var))
        return NULL;
    if (len_out != NULL)
        *len_out = var->name_len;
    return var->name;
}

void *cctx_var_userdata(const cctx_var *var)
{
    return var_is_valid(var) ? cctx_load_ptr(&((cctx_var *)var)->userdata) : NULL;
}

cctx_status cctx_var_set_userdata(cctx_var *var, void *userdata)
{
    if (!var_is_valid(var))
        return CCTX_EINVAL;
    /* Release: a thread that loads the pointer sees what it points at as
     * the setter left it. */
    cctx_store_ptr(&var->userdata, userdata);
    return CCTX_OK;
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
