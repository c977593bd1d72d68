/*
 * context.c — context objects: creation, copies, the read-only mapping
 * seen from any thread, explicit-context writes and async claims.
 *
 * Reads come in two speeds. The writer of a context (the thread that has
 * entered it) reads `root` with a plain acquire load: nobody else can
 * replace it. Every other reader goes through reclaim.c (a `readers`
 * increment and a ck_epoch section) and keeps only what it took a
 * reference to. See context.h for the ownership rules.
 */
#include "internal.h"
#include "context.h"
#include "reclaim.h"
#include "token.h"

extern unsigned cctx_not_inherited_vars;

/* ------------------------------------------------------------ lifecycle */

cctx_status context_new_with_root(hamt_node *root, cctx_context **out)
{
    cctx_context *ctx = cctx_alloc_zeroed(sizeof *ctx);
    if (ctx == NULL)
        return CCTX_ENOMEM;
    ctx->magic = CCTX_CONTEXT_MAGIC;
    ctx->refcnt = 1;
    ctx->root = root;
    *out = ctx;
    return CCTX_OK;
}

cctx_status cctx_context_new(cctx_context **out)
{
    if (out == NULL)
        return CCTX_EINVAL;
    return context_new_with_root(NULL, out);
}

cctx_context *cctx_context_retain(cctx_context *ctx)
{
    if (context_is_valid(ctx))
        cctx_inc_uint(&ctx->refcnt);
    return ctx;
}

void cctx_context_release(cctx_context *ctx)
{
    if (!context_is_valid(ctx) || !cctx_dec_uint_is_zero(&ctx->refcnt))
        return;
    /* Entering retains, so a context with no references is entered by
     * nobody and read by nobody. */
    ctx->magic = 0;
    reclaim_context_destroy(ctx);
    hamt_release(ctx->root);
    cctx_dealloc(ctx);
}

/* ------------------------------------------------------------ reading */

/* A read of `ctx`'s root by the calling thread: direct when the thread is
 * the context's writer, guarded by reclaim.c otherwise. Never fails: a
 * thread whose state cannot be created (out of memory) reads through the
 * shared fallback record, so that reads which cannot report an error
 * (count, contains, equal) still answer correctly. */
typedef struct read_guard {
    bool guarded;
    bool fallback;
    reclaim_section section;
} read_guard;

static hamt_node *read_begin(cctx_context *ctx, read_guard *g)
{
    cctx_thread_state *ts = thread_state_get();
    g->guarded = true;
    g->fallback = false;
    if (ts != NULL && cctx_load_uintptr(&ctx->owner) == (uintptr_t)ts) {
        g->guarded = false;
    } else if (ts != NULL) {
        reclaim_read_begin(ctx, ts->record, &g->section);
    } else {
        g->fallback = true;
        reclaim_read_begin(ctx, reclaim_fallback_lock(), &g->section);
    }
    return cctx_load_ptr(&ctx->root);
}

static void read_end(cctx_context *ctx, read_guard *g)
{
    if (!g->guarded)
        return;
    /* The fallback lock is dropped before a possible drain (which waits for
     * a grace period): nobody waits while holding it. */
    if (g->fallback) {
        reclaim_section s = g->section;
        CCTX_TSAN_RELEASE(reclaim_epoch());
        ck_epoch_end(s.record, &s.section);
        reclaim_fallback_unlock();
        reclaim_read_finish(ctx);
        return;
    }
    reclaim_read_end(ctx, &g->section);
}

cctx_status context_snapshot(cctx_context *ctx, hamt_node **out)
{
    read_guard g;
    hamt_node *root = read_begin(ctx, &g);
    hamt_retain(root);
    read_end(ctx, &g);
    *out = root;
    return CCTX_OK;
}

size_t cctx_context_count(cctx_context *ctx)
{
    if (!context_is_valid(ctx))
        return 0;
    read_guard g;
    hamt_node *root = read_begin(ctx, &g);
    size_t n = hamt_count(root);
    read_end(ctx, &g);
    return n;
}

cctx_status cctx_context_lookup(cctx_context *ctx, cctx_var *var, void **out)
{
    if (!context_is_valid(ctx) || !var_is_valid(var) || out == NULL)
        return CCTX_EINVAL;
    read_guard g;
    hamt_node *root = read_begin(ctx, &g);
    void *value;
    bool found = hamt_find(root, var, &value);
    if (found)
        var_value_retain(var, value); /* inside the guard: still alive */
    read_end(ctx, &g);
    if (!found)
        return CCTX_NOT_FOUND;
    *out = value;
    return CCTX_OK;
}

cctx_status cctx_context_get(cctx_context *ctx, cctx_var *var, void **out)
{
    if (!context_is_valid(ctx) || !var_is_valid(var) || out == NULL)
        return CCTX_EINVAL;
    return hamt_find(cctx_load_ptr(&ctx->root), var, out) ? CCTX_OK : CCTX_NOT_FOUND;
}

bool cctx_context_contains(cctx_context *ctx, cctx_var *var)
{
    if (!context_is_valid(ctx) || !var_is_valid(var))
        return false;
    read_guard g;
    hamt_node *root = read_begin(ctx, &g);
    void *value;
    bool found = hamt_find(root, var, &value);
    read_end(ctx, &g);
    return found;
}

bool cctx_context_equal(cctx_context *a, cctx_context *b)
{
    if (!context_is_valid(a) || !context_is_valid(b))
        return false;
    if (a == b)
        return true;
    hamt_node *ra, *rb;
    if (context_snapshot(a, &ra) != CCTX_OK)
        return false;
    if (context_snapshot(b, &rb) != CCTX_OK) {
        hamt_release(ra);
        return false;
    }
    bool eq = hamt_equal(ra, rb);
    hamt_release(ra);
    hamt_release(rb);
    return eq;
}

/* ------------------------------------------------------------ copies */

cctx_status cctx_context_copy(cctx_context *ctx, cctx_context **out)
{
    if (!context_is_valid(ctx) || out == NULL)
        return CCTX_EINVAL;
    hamt_node *root;
    cctx_status st = context_snapshot(ctx, &root);
    if (st != CCTX_OK)
        return st;
    st = context_new_with_root(root, out);
    if (st != CCTX_OK)
        hamt_release(root);
    return st;
}

/* `root` without the variables marked CCTX_VAR_NOT_INHERITED. Consumes the
 * reference to `root`; on ENOMEM it is released and nothing is returned. */
static cctx_status strip_not_inherited(hamt_node *root, hamt_node **out)
{
    if (cctx_load_uint(&cctx_not_inherited_vars) == 0) {
        *out = root;
        return CCTX_OK;
    }
    /* Collect first (iterating a tree while replacing it is not allowed),
     * then remove one by one. Non-inherited variables are rare. */
    size_t n = 0, cap = 0;
    cctx_var **drop = NULL;
    hamt_iter it;
    cctx_var *key;
    void *value;
    hamt_iter_init(&it, root);
    while (hamt_iter_next(&it, &key, &value)) {
        if (!(key->flags & CCTX_VAR_NOT_INHERITED))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            cctx_var **grown = cctx_realloc(drop, ncap * sizeof *drop);
            if (grown == NULL) {
                cctx_dealloc(drop);
                hamt_release(root);
                return CCTX_ENOMEM;
            }
            drop = grown;
            cap = ncap;
        }
        drop[n++] = key;
    }
    hamt_node *cur = root;
    for (size_t i = 0; i < n; i++) {
        hamt_node *next;
        cctx_status st = hamt_without(cur, drop[i], &next);
        if (st == CCTX_ENOMEM) {
            hamt_release(cur);
            cctx_dealloc(drop);
            return CCTX_ENOMEM;
        }
        hamt_release(cur);
        cur = next;
    }
    cctx_dealloc(drop);
    *out = cur;
    return CCTX_OK;
}

cctx_status cctx_context_copy_inherit(cctx_context *ctx, cctx_context **out)
{
    if (!context_is_valid(ctx) || out == NULL)
        return CCTX_EINVAL;
    hamt_node *root;
    cctx_status st = context_snapshot(ctx, &root);
    if (st != CCTX_OK)
        return st;
    st = strip_not_inherited(root, &root);
    if (st != CCTX_OK)
        return st;
    st = context_new_with_root(root, out);
    if (st != CCTX_OK)
        hamt_release(root);
    return st;
}

/* ------------------------------------------------------------ writing */

void context_publish(cctx_context *ctx, hamt_node *new_root)
{
    /* The writer may be this thread writing its current context: its
     * lookup cache must not outlive the old root (thread_state.h). */
    cctx_thread_state *ts = thread_state_peek();
    if (ts != NULL)
        thread_state_invalidate(ts);
    /* Full barrier: readers that arrive later see new_root (reclaim.c). */
    hamt_node *old = cctx_fas_ptr(&ctx->root, new_root);
    reclaim_retire(ctx, old);
}

cctx_status context_write_set(cctx_context *ctx, cctx_var *var, void *value,
                              cctx_token **token_out)
{
    hamt_node *root = cctx_load_ptr(&ctx->root);
    cctx_token *token = NULL;
    if (token_out != NULL) {
        void *old = NULL;
        bool has_old = hamt_find(root, var, &old);
        cctx_status st = token_new(var, ctx, has_old, old, &token);
        if (st != CCTX_OK)
            return st;
    }
    hamt_node *next;
    cctx_status st = hamt_assoc(root, var, value, &next);
    if (st != CCTX_OK) {
        cctx_token_release(token);
        return st;
    }
    if (next == root)
        hamt_release(next); /* same binding: nothing to publish */
    else
        context_publish(ctx, next);
    if (token_out != NULL)
        *token_out = token;
    return CCTX_OK;
}

cctx_status context_write_reset(cctx_context *ctx, cctx_var *var, cctx_token *token)
{
    /* Python's order of checks. */
    if (cctx_load_uint(&token->used))
        return CCTX_TOKEN_USED;
    if (token->var != var)
        return CCTX_TOKEN_WRONG_VAR;
    if (token->ctx != ctx)
        return CCTX_TOKEN_WRONG_CONTEXT;

    hamt_node *root = cctx_load_ptr(&ctx->root);
    hamt_node *next;
    cctx_status st = token->has_old ? hamt_assoc(root, var, token->old_value, &next)
                                    : hamt_without(root, var, &next);
    if (st == CCTX_NOT_FOUND) { /* already without the variable */
        hamt_retain(root);
        next = root;
    } else if (st != CCTX_OK) {
        return st;
    }
    /* Commit point: the token is consumed exactly once. */
    if (!cctx_cas_uint(&token->used, 0, 1)) {
        hamt_release(next);
        return CCTX_TOKEN_USED;
    }
    if (next == root)
        hamt_release(next);
    else
        context_publish(ctx, next);
    return CCTX_OK;
}

/* Write ownership for the explicit-context functions: the thread that has
 * `ctx` entered, a claimer, or — for a context nobody has entered — a
 * one-off CCTX_OWNER_WRITING claim held for the duration of the write. */
static cctx_status write_begin(cctx_context *ctx, bool *transient)
{
    uintptr_t owner = cctx_load_uintptr(&ctx->owner);
    cctx_thread_state *ts = thread_state_peek();
    *transient = false;
    if (owner == CCTX_OWNER_CLAIMED || (ts != NULL && owner == (uintptr_t)ts))
        return CCTX_OK;
    if (owner == CCTX_OWNER_NONE &&
        cctx_cas_uintptr(&ctx->owner, CCTX_OWNER_NONE, CCTX_OWNER_WRITING)) {
        *transient = true;
        return CCTX_OK;
    }
    return CCTX_ALREADY_ENTERED;
}

static void write_end(cctx_context *ctx, bool transient)
{
    if (transient)
        cctx_store_uintptr(&ctx->owner, CCTX_OWNER_NONE);
}

cctx_status cctx_context_set(cctx_context *ctx, cctx_var *var, void *value,
                             cctx_token **token_out)
{
    if (!context_is_valid(ctx) || !var_is_valid(var))
        return CCTX_EINVAL;
    bool transient;
    cctx_status st = write_begin(ctx, &transient);
    if (st != CCTX_OK)
        return st;
    st = context_write_set(ctx, var, value, token_out);
    write_end(ctx, transient);
    return st;
}

cctx_status cctx_context_reset(cctx_context *ctx, cctx_var *var, cctx_token *token)
{
    if (!context_is_valid(ctx) || !var_is_valid(var) || !token_is_valid(token))
        return CCTX_EINVAL;
    bool transient;
    cctx_status st = write_begin(ctx, &transient);
    if (st != CCTX_OK)
        return st;
    st = context_write_reset(ctx, var, token);
    write_end(ctx, transient);
    return st;
}

cctx_status cctx_context_delete(cctx_context *ctx, cctx_var *var)
{
    if (!context_is_valid(ctx) || !var_is_valid(var))
        return CCTX_EINVAL;
    bool transient;
    cctx_status st = write_begin(ctx, &transient);
    if (st != CCTX_OK)
        return st;
    hamt_node *next;
    st = hamt_without(cctx_load_ptr(&ctx->root), var, &next);
    if (st == CCTX_OK)
        context_publish(ctx, next);
    write_end(ctx, transient);
    return st;
}

/* ------------------------------------------------------------ claims */

cctx_status cctx_context_claim(cctx_context *ctx)
{
    if (!context_is_valid(ctx))
        return CCTX_EINVAL;
    if (!cctx_cas_uintptr(&ctx->owner, CCTX_OWNER_NONE, CCTX_OWNER_CLAIMED))
        return CCTX_ALREADY_ENTERED;
    return CCTX_OK;
}

cctx_status cctx_context_unclaim(cctx_context *ctx)
{
    if (!context_is_valid(ctx))
        return CCTX_EINVAL;
    if (!cctx_cas_uintptr(&ctx->owner, CCTX_OWNER_CLAIMED, CCTX_OWNER_NONE))
        return CCTX_NOT_ENTERED;
    return CCTX_OK;
}

bool cctx_context_is_entered(const cctx_context *ctx)
{
    if (!context_is_valid(ctx))
        return false;
    uintptr_t owner = cctx_load_uintptr(&((cctx_context *)ctx)->owner);
    return owner != CCTX_OWNER_NONE && owner != CCTX_OWNER_WRITING;
}

/* ------------------------------------------------------------ iteration */

struct cctx_iter {
    hamt_node *root; /* the snapshot: one reference */
    hamt_iter it;
};

cctx_status cctx_iter_new(cctx_context *ctx, cctx_iter **out)
{
    if (!context_is_valid(ctx) || out == NULL)
        return CCTX_EINVAL;
    cctx_iter *iter = cctx_alloc(sizeof *iter);
    if (iter == NULL)
        return CCTX_ENOMEM;
    cctx_status st = context_snapshot(ctx, &iter->root);
    if (st != CCTX_OK) {
        cctx_dealloc(iter);
        return st;
    }
    hamt_iter_init(&iter->it, iter->root);
    *out = iter;
    return CCTX_OK;
}

bool cctx_iter_next(cctx_iter *iter, cctx_var **var_out, void **value_out)
{
    if (iter == NULL)
        return false;
    cctx_var *key;
    void *value;
    if (!hamt_iter_next(&iter->it, &key, &value))
        return false;
    if (var_out != NULL)
        *var_out = key;
    if (value_out != NULL)
        *value_out = value;
    return true;
}

void cctx_iter_free(cctx_iter *iter)
{
    if (iter == NULL)
        return;
    hamt_release(iter->root);
    cctx_dealloc(iter);
}

int cctx__context_check(cctx_context *ctx)
{
    hamt_node *root;
    if (!context_is_valid(ctx) || context_snapshot(ctx, &root) != CCTX_OK)
        return -1;
    int line = hamt_check(root);
    hamt_release(root);
    return line;
}
