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
#include "thread_state.h"
#include "var.h"

#include <stdlib.h>
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
    var->users = 1;
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

/*
 * Variable credits
 * ----------------
 * The request pattern — copy a shared base context, set a variable the
 * base does not bind, read, let go — adds one map entry naming that
 * variable and frees it again: a var_ref and a var_unref on the
 * variable's count, a line every thread doing the same request writes.
 * Instead each thread keeps a *credit line* (var.h): per way one variable
 * and a batch of references to it, counted on the variable once when
 * installed. var_ref takes one (a CAS on the thread's own line), var_unref
 * gives one back; the variable's line is only read (its hash, `users`).
 *
 * Credits are references nobody uses, so they must never be what keeps
 * a variable alive: the variable must go, and its default be released,
 * when the last user reference, map entry and token are gone, as before.
 * The rule: credits exist only while the variable has a user reference
 * (`users` > 0). While it has one, credits are never the last references
 * (that user reference is counted too). The release that takes `users`
 * to zero (cctx_var_release) takes every line's credits for the variable
 * back (var_credits_revoke) before it drops its own reference; from then
 * on no credits are installed, so entries and tokens that still hold the
 * variable count down as before and the last one frees it.
 *
 * The race, Dekker's pattern (a locked write, then a load):
 *   install (var_ref_missed): load users (> 0); store credited; locked add
 *            of the batch to refcnt; CAS the way; load users — zero: take
 *            the way back (way_reclaim).
 *   last user release: locked decrement of users to zero; load credited —
 *            set: load every line's way and empty it if it names the
 *            variable.
 * Either the releaser's scan sees the installed way (and empties it), or
 * the installing thread sees `users` at zero (and empties its own).
 * `credited` is stored before the install's locked add, so a releaser
 * that reads it unset after its decrement comes before that add in the
 * locked order, and the installer's last load sees users at zero. A way is
 * emptied (by anyone) with a CAS from the value seen; whoever empties it
 * drops what it held, counted (the last drop frees the variable: only
 * when its users are gone and that was the last reference). A give-back
 * (var_unref) only adds to a way that names the variable: after the scan
 * that is only an install's way before its own check, on the same thread,
 * so the give-back is taken back with the batch and needs no check of its
 * own. The first load of `users` in an install only spares the batch when
 * the users are already gone; the check after the CAS is what decides.
 *
 * Which variables get credits: a thread installs them for a variable
 * the second time in a row it takes a counted reference to it in that
 * way (`wanted`), so that a path copy that retains many keys once each
 * (a copy of a large node) does not evict and refill credits for each;
 * a variable whose way already holds it refills at once. Only threads with
 * a state (whose teardown gives the line back: var_credits_flush) take a
 * line.
 *
 * A user reference taken again from a borrowed pointer after `users`
 * reached zero (cctx_var_retain on a variable an iterator returned) makes
 * credits possible again; the release that takes `users` to zero again
 * revokes again.
 *
 * fork: a thread that did not survive keeps its line, orphaned
 * (thread_line.h); its credits are taken back by the child's last user
 * release like any other thread's, and once every way of it is empty a
 * thread of the child reuses the line.
 */
#define VAR_CREDIT_BATCH 32u

#ifdef CCTX_COUNT_LOCKED
__thread unsigned long cctx__var_count_writes;
#endif

__thread var_credit_line *cctx_var_credit_line;
/* The variable that last missed in each way (see above); this thread's. */
static __thread const cctx_var *var_credit_wanted[VAR_CREDIT_WAYS]
    __attribute__((tls_model("initial-exec")));
static thread_line_registry var_credit_lines;

/* The registry's lines, as credit lines. */
#define LINES_FOREACH(l)                                                          \
    for (var_credit_line *l = (var_credit_line *)thread_line_first(&var_credit_lines); \
         l != NULL; l = (var_credit_line *)l->line.next)

static inline cctx_var *way_var(uintptr_t w)
{
    return (cctx_var *)(w & VAR_CREDIT_PTR_MASK);
}

static inline unsigned way_credits(uintptr_t w)
{
    return (unsigned)(w >> 48);
}

static void var_free(cctx_var *var)
{
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

void var_unref_counted(cctx_var *var)
{
    VAR_COUNT_WRITE();
    if (cctx_dec_uint_is_zero(&var->refcnt))
        var_free(var);
}

/* Drops `n` references that were credits. By the rule above they are
 * never the last: while `users` > 0 a user reference is counted; after
 * it the releaser holds its own through its scan, and an install that
 * reclaims its batch holds its caller's. So an eviction inside var_ref
 * (called from map builders) never runs a release callback; the free
 * below only keeps the count honest. */
static void credits_drop(cctx_var *var, unsigned n)
{
    if (n == 0)
        return;
    VAR_COUNT_WRITE();
    if (cctx_faa_uint(&var->refcnt, -n) == n)
        var_free(var);
}

/* Empties `way` if it holds `w`, dropping its credits. */
static bool way_empty(uintptr_t *way, uintptr_t w)
{
    if (!cctx_cas_uintptr(way, w, 0))
        return false;
    credits_drop(way_var(w), way_credits(w));
    return true;
}

/* Empties `way` of `var`'s credits, whoever it belongs to. */
static void way_reclaim(uintptr_t *way, const cctx_var *var)
{
    uintptr_t w = cctx_load_uintptr(way);
    while (way_var(w) == var && !way_empty(way, w))
        w = cctx_load_uintptr(way);
}

/* Every line's credits for `var` (its users are gone). The caller holds
 * a counted reference: `var` outlives the scan. */
static void var_credits_revoke(cctx_var *var)
{
    unsigned i = var->hash & (VAR_CREDIT_WAYS - 1);
    LINES_FOREACH(l)
        way_reclaim(&l->word[i], var);
}

/* This thread's line, claimed (or made) on first use; NULL without memory
 * or without a thread state (its teardown gives the line back). */
static var_credit_line *line_get(void)
{
    if (CCTX_LIKELY(cctx_var_credit_line != NULL))
        return cctx_var_credit_line;
    if (thread_state_peek() == NULL)
        return NULL;
    cctx_var_credit_line =
        (var_credit_line *)thread_line_claim(&var_credit_lines, sizeof(var_credit_line));
    return cctx_var_credit_line;
}

#ifdef CCTX_INTERNAL_CHECKS
void (*cctx__var_credit_install_hook)(void);
#endif
#define VAR_CREDIT_INSTALL_HOOK() CCTX_TEST_HOOK(cctx__var_credit_install_hook)

void var_ref_missed(cctx_var *var)
{
    var_credit_line *l = line_get();
    if (l == NULL || ((uintptr_t)var & ~VAR_CREDIT_PTR_MASK) != 0 ||
        cctx_load_uint(&var->users) == 0) {
        VAR_COUNT_WRITE();
        cctx_inc_uint(&var->refcnt);
        return;
    }
    unsigned i = var->hash & (VAR_CREDIT_WAYS - 1);
    uintptr_t *way = &l->word[i];
    if (var_credit_wanted[i] != var && way_var(cctx_load_uintptr(way)) != var) {
        var_credit_wanted[i] = var; /* the first miss in a row: counted */
        VAR_COUNT_WRITE();
        cctx_inc_uint(&var->refcnt);
        return;
    }
    var_credit_wanted[i] = NULL;
    if (cctx_load_uint(&var->credited) == 0)
        cctx_store_uint(&var->credited, 1);
    /* Locked: orders the store above before the way's CAS (see above).
     * One reference for the caller, the batch for the way. */
    VAR_COUNT_WRITE();
    cctx_faa_uint(&var->refcnt, 1 + VAR_CREDIT_BATCH);
    VAR_CREDIT_INSTALL_HOOK();
    const uintptr_t add = (uintptr_t)VAR_CREDIT_BATCH * VAR_CREDIT_ONE;
    for (;;) {
        uintptr_t w = cctx_load_uintptr(way);
        if (way_var(w) == var) {
            if (way_credits(w) + VAR_CREDIT_BATCH > VAR_CREDIT_CAP)
                break; /* full: drop them */
            if (cctx_cas_uintptr(way, w, w + add))
                goto installed;
            continue;
        }
        if (w != 0) {
            (void)way_empty(way, w); /* another variable's credits go back */
            continue;
        }
        if (cctx_cas_uintptr(way, 0, (uintptr_t)var | add))
            goto installed;
    }
    credits_drop(var, VAR_CREDIT_BATCH);
    return;
installed:
    /* After the CAS (a full barrier): the users gone meanwhile, and the
     * releaser's scan may have missed this way. */
    if (cctx_load_uint(&var->users) == 0)
        way_reclaim(way, var);
}

bool var_credits_flush(bool last)
{
    var_credit_line *l = cctx_var_credit_line;
    if (l == NULL)
        return false;
    bool any = false;
    for (unsigned i = 0; i < VAR_CREDIT_WAYS; i++) {
        uintptr_t w;
        while ((w = cctx_load_uintptr(&l->word[i])) != 0)
            any |= way_empty(&l->word[i], w);
        var_credit_wanted[i] = NULL;
    }
    if (last) {
        cctx_var_credit_line = NULL;
        thread_line_give_back(&var_credit_lines, &l->line); /* empty: see thread_line.h */
    }
    return any;
}

void var_credits_atfork_child(void)
{
    /* The dead threads' credits stay in their lines, where the child's
     * last user releases find them like anyone's (nothing is released
     * here: a release runs user callbacks); each line is reused once
     * emptied. */
    var_credit_line *mine = cctx_var_credit_line;
    thread_line_orphan_others(&var_credit_lines, mine != NULL ? &mine->line : NULL);
}

size_t cctx__var_credit_lines(size_t *held, size_t *orphaned)
{
    return thread_line_count(&var_credit_lines, held, orphaned);
}

unsigned cctx__var_credits(const cctx_var *var)
{
    if (!var_is_valid(var))
        return 0;
    unsigned n = 0, i = var->hash & (VAR_CREDIT_WAYS - 1);
    LINES_FOREACH(l) {
        uintptr_t w = cctx_load_uintptr(&l->word[i]);
        if (way_var(w) == var)
            n += way_credits(w);
    }
    return n;
}

cctx_var *cctx_var_retain(cctx_var *var)
{
    if (var_is_valid(var)) {
        VAR_COUNT_WRITE();
        VAR_COUNT_WRITE();
        cctx_inc_uint(&var->users);
        cctx_inc_uint(&var->refcnt); /* counted: never a credit */
    }
    return var;
}

void cctx_var_release(cctx_var *var)
{
    if (!var_is_valid(var))
        return;
    /* The last user reference: nobody may hold credits for the variable
     * once it is gone (see "Variable credits"); ours keeps it alive during
     * the scan. */
    VAR_COUNT_WRITE();
    if (cctx_dec_uint_is_zero(&var->users) && cctx_load_uint(&var->credited) != 0)
        var_credits_revoke(var);
    var_unref_counted(var);
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
