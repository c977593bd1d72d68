/*
 * var.c — context variables: creation, identity hash, reference counting.
 *
 * The hash only places a variable in the HAMT: keys compare by identity
 * (address), so any hash works as long as the variables that share a
 * context mostly have distinct low bits. Each variable takes its hash from
 * a process-wide creation counter (var_ids, one atomic fetch-add per
 * creation). The HAMT consumes the hash 5 bits per level from the least
 * significant end, so consecutive ids differ in their level-0 fragment,
 * and any 32^k consecutive ids differ somewhere in their first k
 * fragments: the first 2^20 variables of a process fill four levels with
 * no two keys sharing a path, and a context holding many of them is made
 * of full 32-entry bitmap leaves (about 17 heap bytes per entry at 1e6,
 * where random hashes leave a third of the keys in two-entry subnodes and
 * cost 28). The per-thread lookup cache, indexed by the low hash bits,
 * likewise gives consecutive variables distinct slots.
 *
 * CPython hashes a ContextVar from its address mixed with its name's hash
 * (Python/context.c), to spread sequential allocations and separate equal
 * names. A counter does both better here: it never repeats before 2^32
 * creations (random 32-bit hashes already collide about 116 times among
 * 1e6 variables) and its fragments are dense rather than random. No mixing
 * bijection is applied on top: one that keeps consecutive ids' fragments
 * distinct (an odd multiplier, say) permutes residues modulo 2^(5k) and so
 * builds shapes just as dense, and one that does not would undo the
 * density. A program whose variables in use are spaced by a multiple of 32
 * ids gets deeper paths, never wrong ones.
 *
 * The corners:
 * - Wrap: after 2^32 creations the counter wraps (unsigned arithmetic) and
 *   a new variable may share its hash with a live one. Equal hashes are
 *   legal (collision nodes hold them, test_context's
 *   test_variables_with_equal_hashes); only those two variables' lookups
 *   get slower, and only in contexts holding both.
 * - Threads: the fetch-add hands every creating thread a distinct id; its
 *   ordering does not matter (the hash is published with the variable,
 *   like every other field, by whatever hands the pointer to another
 *   thread), so a relaxed increment would do, but atomic.h offers the full
 *   one and creation is not a hot path.
 * - fork: the child inherits the counter and continues after every id
 *   handed out before the fork, so its new variables never share an id
 *   with one it inherited; what the parent creates later never reaches the
 *   child's maps. Nothing to reset.
 * - Variables made by cctx__var_new_with_hash (tests) keep the given hash
 *   and take no id.
 */
#include "internal.h"
#include "var.h"

#include <string.h>

/* Non-zero while any variable with CCTX_VAR_NOT_INHERITED is alive; lets
 * cctx_context_copy_inherit skip its filter in the common case. */
unsigned cctx_not_inherited_vars CCTX_HIDDEN;

/* The next variable's hash (see the top of this file). */
static unsigned var_ids;

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
    var->hash = spec->hash_given ? spec->hash : (uint32_t)cctx_faa_uint(&var_ids, 1);
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

uint32_t cctx_var_hash(const cctx_var *var)
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
