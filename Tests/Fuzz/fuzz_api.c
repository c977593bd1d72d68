/*
 * fuzz_api.c — libFuzzer target for the C API of CContextCore.
 *
 * Each input is decoded into a sequence of API calls (one opcode byte plus
 * argument bytes per call). A reference model written here — per-context
 * dictionaries, the entered stack, owners and claims, token states, per-local
 * values of this thread, open iterators' snapshots — predicts the status of
 * every call; after every call the whole observable state is compared with
 * the model, so "after any error nothing changed" is checked for every error
 * the fuzzer provokes. An "arm" opcode makes the k-th allocation of the next
 * call fail (cctx__fail_allocation): that call must return CCTX_ENOMEM and
 * change nothing.
 *
 * Tokens are full (cctx_var_set, cctx_context_set) or light
 * (cctx_var_set_light, cctx_context_set_light: bit 1 of the byte whose
 * bit 0 asks for a token, so an older input consumes the same bytes and
 * makes the same calls, light ones where that bit is set; of the older
 * seeds only `faults` sets it, once). A light token holds neither its variable nor its context: the
 * model holds one reference to the variable per live light token and drops
 * it after the token's last release (as the Swift binding's token object
 * does), cctx_token_context must be NULL, and the token does not keep its
 * context — nor that context's values — alive.
 * Its context may then be freed and its object handed out again to a new
 * context (the context cache): a reset there must be
 * CCTX_TOKEN_WRONG_CONTEXT, which the model predicts because the new
 * context is another record. The run's statistics count such resets.
 *
 * Values are counted objects: the model knows which values are reachable
 * (from live contexts, tokens, iterator snapshots, locals and defaults) and
 * checks after every call that exactly those are alive — single-threaded,
 * so nothing is deferred. At the end of each input everything is torn down:
 * no value may be left, and cctx__live_allocations() must return to where
 * it started once cctx_thread_cleanup() has run.
 *
 * Build: see the `fuzz` target in the Makefile (toolchain clang,
 * -fsanitize=fuzzer,address,undefined, library sources compiled in).
 * Reads never give a wrong answer, also under an injected allocation
 * failure: a read whose thread state cannot be created goes through the
 * shared fallback record (context.c) — it may then succeed although a
 * failure was injected (the failure hit the state's creation).
 */
#include "contextcore.h"
#include "contextcore_binding.h"
#include "testing.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ checking */

static int op_no;
static const char *op_name = "none";

#define CHECK(c)                                                                \
    do {                                                                        \
        if (!(c)) {                                                             \
            fprintf(stderr, "fuzz_api: check failed at %s:%d: %s (op #%d %s)\n", \
                    __FILE__, __LINE__, #c, op_no, op_name);                    \
            abort();                                                            \
        }                                                                       \
    } while (0)

#define CHECK_ST(st, exp)                                                       \
    do {                                                                        \
        cctx_status st__ = (st), exp__ = (exp);                                 \
        if (st__ != exp__) {                                                    \
            fprintf(stderr, "fuzz_api: %s:%d: status %s, model expects %s "    \
                    "(op #%d %s)\n", __FILE__, __LINE__, cctx_strerror(st__),   \
                    cctx_strerror(exp__), op_no, op_name);                      \
            abort();                                                            \
        }                                                                       \
    } while (0)

/* ------------------------------------------------------------ values */

#define FV_TAG 0x46564c55u /* "FVLU": differs from every runtime magic */

typedef struct fv {
    uint32_t tag;
    int refcnt;
    long id;
} fv;

static long fv_live;
static long fv_ids;

static void fv_retain(void *p)
{
    fv *v = p;
    CHECK(v->tag == FV_TAG && v->refcnt > 0);
    v->refcnt++;
}

static void model_value_freed(const fv *v);

static void fv_release(void *p)
{
    fv *v = p;
    CHECK(v->tag == FV_TAG && v->refcnt > 0); /* released more than retained */
    if (--v->refcnt == 0) {
        model_value_freed(v);
        v->tag = 0;
        fv_live--;
        free(v);
    }
}

static const cctx_value_ops fv_ops = { fv_retain, fv_release };

static fv *fv_new(void)
{
    fv *v = malloc(sizeof *v);
    if (v == NULL)
        abort();
    v->tag = FV_TAG;
    v->refcnt = 1;
    v->id = ++fv_ids;
    fv_live++;
    return v;
}

/* ------------------------------------------------------------ model */

#define MAXV 16
#define MAXC 48
#define MAXT 40
#define MAXL 8
#define MAXI 2
#define MAXREFS 3

enum { OWN_NONE, OWN_THREAD, OWN_CLAIMED };
enum { L_UNTOUCHED, L_VALUE }; /* a delete returns a local to L_UNTOUCHED */
enum { INIT_NONE, INIT_VALUE, INIT_FAIL, INIT_NULL };

typedef struct dict {
    bool has[MAXV];
    void *val[MAXV];
} dict;

typedef struct mvar {
    cctx_var *ptr;
    int refs;  /* ours */
    int holds; /* the model's, one per live light token of this variable */
    bool has_def;
    void *def;
    bool def_gone; /* the default was released (its variable was freed) */
    bool not_inh;
} mvar;

typedef struct mctx {
    cctx_context *ptr; /* NULL for a thread's base until a token shows it */
    dict d;
    int refs;          /* ours */
    int owner;
    bool thread_holds; /* the base of the live thread state */
} mctx;

typedef struct mtok {
    cctx_token *ptr;
    int var, ctx;
    bool has_old;
    void *old;
    bool used;
    bool light; /* cctx_var_set_light / cctx_context_set_light: holds no
                 * variable and no context; the model holds the variable
                 * for it (mvar.holds) as a binding's token object does */
    int refs;
} mtok;

typedef struct mloc {
    cctx_local *ptr;
    int refs;
    int init_mode;
    int state;
    void *val;
    long init_calls;  /* counted by the initialiser */
    long model_calls; /* predicted */
    void *last_init;  /* what the initialiser returned last */
} mloc;

typedef struct miter {
    cctx_iter *it;
    dict snap;
    bool open;
} miter;

static struct model {
    mvar v[MAXV];
    int nv;
    mctx c[MAXC];
    int nc;
    mtok t[MAXT];
    int nt;
    mloc l[MAXL];
    int nl;
    miter it[MAXI];
    int stack[MAXC];
    int depth;
    int base; /* the live thread state's base record, -1: none known */
} M;

/* ------------------------------------------------------------ input */

static const uint8_t *in_p;
static size_t in_n;

static uint8_t u8(void)
{
    if (in_n == 0)
        return 0;
    in_n--;
    return *in_p++;
}

static uint32_t u32(void)
{
    uint32_t x = u8();
    x |= (uint32_t)u8() << 8;
    x |= (uint32_t)u8() << 16;
    x |= (uint32_t)u8() << 24;
    return x;
}

/* ------------------------------------------------------------ fault arming */

static long arm;          /* k > 0: the k-th allocation of the next call fails */
static long fails_before;
static long stats_injected, stats_read_degraded, stats_stateless;
static long stats_light_sets, stats_light_gone, stats_light_reused;

static void arm_now(void)
{
    fails_before = cctx__allocation_failures();
    if (arm > 0)
        cctx__fail_allocation(arm);
}

static bool disarm(void)
{
    cctx__fail_allocation(0);
    arm = 0;
    bool injected = cctx__allocation_failures() != fails_before;
    if (injected)
        stats_injected++;
    return injected;
}

/* Status check for a call that may have had an injected failure: ENOMEM
 * then, the model's prediction otherwise. True when the call succeeded. */
static bool expect(cctx_status st, cctx_status model, bool injected)
{
    if (injected) {
        CHECK_ST(st, CCTX_ENOMEM);
        return false;
    }
    CHECK_ST(st, model);
    return st == CCTX_OK;
}

/* As `expect`, for calls that only read a context: they may absorb an
 * injected failure of creating this thread's state (reads fall back to a
 * shared epoch record) and succeed with the model's answer. */
static bool expect_read(cctx_status st, cctx_status model, bool injected)
{
    if (injected && st == CCTX_ENOMEM)
        return false;
    CHECK_ST(st, model);
    return st == CCTX_OK;
}

/* ------------------------------------------------------------ helpers */

static size_t dict_count(const dict *d)
{
    size_t n = 0;
    for (int i = 0; i < MAXV; i++)
        n += d->has[i];
    return n;
}

static int cur_ctx(void)
{
    return M.depth > 0 ? M.stack[M.depth - 1] : M.base;
}

static bool in_stack(int ci)
{
    for (int i = 0; i < M.depth; i++)
        if (M.stack[i] == ci)
            return true;
    return false;
}

static int pick(int n, bool (*ok)(int), uint8_t b)
{
    int cand[64], k = 0;
    for (int i = 0; i < n && k < 64; i++)
        if (ok(i))
            cand[k++] = i;
    return k == 0 ? -1 : cand[b % k];
}

static bool var_ok(int i) { return M.v[i].refs > 0; }
static bool ctx_ok(int i) { return M.c[i].refs > 0; }
static bool tok_ok(int i) { return M.t[i].refs > 0; }
static bool loc_ok(int i) { return M.l[i].refs > 0; }

static int pick_var(void) { return pick(M.nv, var_ok, u8()); }
static int pick_ctx(void) { return pick(M.nc, ctx_ok, u8()); }
static int pick_tok(void) { return pick(M.nt, tok_ok, u8()); }
static int pick_loc(void) { return pick(M.nl, loc_ok, u8()); }

/* Liveness as the runtime sees it (single thread: nothing deferred). */
static bool ctx_alive[MAXC], var_alive[MAXV];

static void compute_alive(void)
{
    memset(ctx_alive, 0, sizeof ctx_alive);
    memset(var_alive, 0, sizeof var_alive);
    for (int i = 0; i < M.nc; i++)
        ctx_alive[i] = M.c[i].refs > 0 || M.c[i].thread_holds || in_stack(i);
    /* A full token holds its variable and its context; a light one holds
     * neither (its variable stays alive through the model's hold, below). */
    for (int i = 0; i < M.nt; i++)
        if (M.t[i].refs > 0 && !M.t[i].light) {
            ctx_alive[M.t[i].ctx] = true;
            var_alive[M.t[i].var] = true;
        }
    for (int i = 0; i < M.nv; i++)
        if (M.v[i].refs > 0 || M.v[i].holds > 0)
            var_alive[i] = true;
    for (int i = 0; i < M.nc; i++)
        if (ctx_alive[i])
            for (int k = 0; k < MAXV; k++)
                if (M.c[i].d.has[k])
                    var_alive[k] = true;
    for (int i = 0; i < MAXI; i++)
        if (M.it[i].open)
            for (int k = 0; k < MAXV; k++)
                if (M.it[i].snap.has[k])
                    var_alive[k] = true;
}

static void model_value_freed(const fv *v)
{
    for (int i = 0; i < M.nv; i++)
        if (M.v[i].has_def && M.v[i].def == v)
            M.v[i].def_gone = true;
}

/* Every value the model says is alive, deduplicated. The one exception
 * it allows: a variable that no map, token or user reaches any more may
 * still be alive with its default, because a map that borrows its keys
 * from a node that holds the variable keeps it (hamt.c, "Borrowed keys")
 * until that map goes; teardown still checks that nothing is left. */
static int reachable(void **out, int cap)
{
    int n = 0;
#define ADD(p)                                                  \
    do {                                                        \
        void *p_ = (p);                                         \
        if (p_ != NULL) {                                       \
            int j_;                                             \
            for (j_ = 0; j_ < n && out[j_] != p_; j_++) {       \
            }                                                   \
            if (j_ == n && n < cap)                             \
                out[n++] = p_;                                  \
        }                                                       \
    } while (0)
    compute_alive();
    for (int i = 0; i < M.nc; i++)
        if (ctx_alive[i])
            for (int k = 0; k < MAXV; k++)
                if (M.c[i].d.has[k])
                    ADD(M.c[i].d.val[k]);
    for (int i = 0; i < MAXI; i++)
        if (M.it[i].open)
            for (int k = 0; k < MAXV; k++)
                if (M.it[i].snap.has[k])
                    ADD(M.it[i].snap.val[k]);
    for (int i = 0; i < M.nt; i++)
        if (M.t[i].refs > 0 && M.t[i].has_old)
            ADD(M.t[i].old);
    for (int i = 0; i < M.nv; i++)
        if (M.v[i].has_def && (var_alive[i] || !M.v[i].def_gone))
            ADD(M.v[i].def);
    for (int i = 0; i < M.nl; i++)
        if (M.l[i].refs > 0 && M.l[i].state == L_VALUE)
            ADD(M.l[i].val);
#undef ADD
    return n;
}

/* A value for a set: a fresh one (the caller drops its reference after the
 * call), one that is alive already, or NULL. */
static void *choose_value(bool *fresh)
{
    uint8_t b = u8();
    *fresh = false;
    if (b == 255)
        return NULL;
    if (b < 64) {
        void *all[4 * MAXV + MAXT + MAXL + 8];
        int n = reachable(all, (int)(sizeof all / sizeof all[0]));
        if (n > 0)
            return all[b % n];
    }
    *fresh = true;
    return fv_new();
}

static void drop_fresh(void *v, bool fresh)
{
    if (fresh)
        fv_release(v);
}

/* The var record whose pointer is `p` among entries of `d`. */
static int var_in_dict(const cctx_var *p, const dict *d)
{
    for (int i = 0; i < MAXV; i++)
        if (d->has[i] && M.v[i].ptr == p)
            return i;
    return -1;
}

static void check_iter(cctx_iter *it, const dict *d)
{
    bool seen[MAXV] = { false };
    size_t n = 0;
    cctx_var *k;
    void *val;
    while (cctx_iter_next(it, &k, &val)) {
        int vi = var_in_dict(k, d);
        CHECK(vi >= 0);
        CHECK(!seen[vi]);
        seen[vi] = true;
        CHECK(d->val[vi] == val);
        n++;
    }
    CHECK(n == dict_count(d));
    CHECK(!cctx_iter_next(it, NULL, NULL));
}

static int new_ctx_record(cctx_context *ptr, const dict *d)
{
    int ci = M.nc++;
    memset(&M.c[ci], 0, sizeof M.c[ci]);
    M.c[ci].ptr = ptr;
    if (d != NULL)
        M.c[ci].d = *d;
    M.c[ci].refs = ptr != NULL ? 1 : 0;
    M.c[ci].owner = OWN_NONE;
    return ci;
}

/* Learns or checks a context record's pointer from a token. */
static void learn_ctx_ptr(int ci, cctx_context *p)
{
    CHECK(p != NULL);
    if (M.c[ci].ptr == NULL) {
        compute_alive();
        for (int i = 0; i < M.nc; i++)
            CHECK(i == ci || !ctx_alive[i] || M.c[i].ptr != p);
        M.c[ci].ptr = p;
    }
    CHECK(M.c[ci].ptr == p);
}

/* What cctx_token_context says for token record ti: its context for a
 * full token, NULL for a light one (which holds none). */
static void check_token_context(int ti)
{
    mtok *t = &M.t[ti];
    cctx_context *p = cctx_token_context(t->ptr);
    if (t->light)
        CHECK(p == NULL);
    else
        learn_ctx_ptr(t->ctx, p);
}

static int new_token_record(cctx_token *tok, int vi, int ci, bool light)
{
    int ti = M.nt++;
    mtok *t = &M.t[ti];
    memset(t, 0, sizeof *t);
    t->ptr = tok;
    t->var = vi;
    t->ctx = ci;
    t->has_old = M.c[ci].d.has[vi];
    t->old = t->has_old ? M.c[ci].d.val[vi] : NULL;
    t->light = light;
    t->refs = 1;
    CHECK(cctx_token_var(tok) == M.v[vi].ptr);
    check_token_context(ti);
    if (light) {
        /* The caller keeps the variable alive until it releases a light
         * token: the model holds one reference per live light token, as
         * the Swift binding's token object holds its variable. */
        CHECK(cctx_var_retain(M.v[vi].ptr) == M.v[vi].ptr);
        M.v[vi].holds++;
    }
    return ti;
}

/* Drops one of our references to token record ti; with the last one goes
 * the model's hold on a light token's variable — after the token, whose
 * release of its old value still uses the variable's value operations. */
static void token_release(int ti)
{
    mtok *t = &M.t[ti];
    cctx_token_release(t->ptr);
    if (--t->refs == 0 && t->light) {
        M.v[t->var].holds--;
        cctx_var_release(M.v[t->var].ptr);
    }
}

/* The base record of the live thread state, created when first written. */
static int ensure_base(void)
{
    if (M.base < 0) {
        M.base = new_ctx_record(NULL, NULL);
        M.c[M.base].owner = OWN_THREAD;
        M.c[M.base].thread_holds = true;
    }
    return M.base;
}

/* ------------------------------------------------------------ full check */

static void check_ctx(int ci)
{
    mctx *c = &M.c[ci];
    cctx_context *p = c->ptr;
    CHECK(cctx_context_count(p) == dict_count(&c->d));
    CHECK(cctx__context_check(p) == 0);
    CHECK(cctx_context_is_entered(p) == (c->owner != OWN_NONE));
    for (int vi = 0; vi < M.nv; vi++) {
        if (M.v[vi].refs <= 0)
            continue;
        cctx_var *v = M.v[vi].ptr;
        void *out = (void *)0x1;
        cctx_status st = cctx_context_get(p, v, &out);
        CHECK_ST(st, c->d.has[vi] ? CCTX_OK : CCTX_NOT_FOUND);
        if (st == CCTX_OK)
            CHECK(out == c->d.val[vi]);
        else
            CHECK(out == (void *)0x1); /* *out untouched on error */
        CHECK(cctx_context_contains(p, v) == c->d.has[vi]);
        st = cctx_context_lookup(p, v, &out);
        CHECK_ST(st, c->d.has[vi] ? CCTX_OK : CCTX_NOT_FOUND);
        if (st == CCTX_OK) {
            CHECK(out == c->d.val[vi]);
            cctx_var_release_value(v, out);
        }
        cctx_read_guard g;
        out = (void *)0x1;
        st = cctx_context_peek(p, v, cctx_var_hash(v), &g, &out);
        CHECK_ST(st, c->d.has[vi] ? CCTX_OK : CCTX_NOT_FOUND);
        if (st == CCTX_OK) {
            CHECK(out == c->d.val[vi]);
            cctx_context_peek_end(&g);
        } else {
            CHECK(out == (void *)0x1);
        }
    }
    cctx_iter *it;
    CHECK_ST(cctx_iter_new(p, &it), CCTX_OK);
    check_iter(it, &c->d);
    cctx_iter_free(it);
}

static void check_all(void)
{
    for (int ci = 0; ci < M.nc; ci++)
        if (M.c[ci].refs > 0)
            check_ctx(ci);

    /* The current context through the variable API. */
    int cur = cur_ctx();
    static char sentinel;
    for (int vi = 0; vi < M.nv; vi++) {
        mvar *v = &M.v[vi];
        if (v->refs <= 0)
            continue;
        bool has = cur >= 0 && M.c[cur].d.has[vi];
        void *out = NULL;
        cctx_status st = cctx_var_get(v->ptr, &out);
        if (has) {
            CHECK_ST(st, CCTX_OK);
            CHECK(out == M.c[cur].d.val[vi]);
        } else if (v->has_def) {
            CHECK_ST(st, CCTX_OK);
            CHECK(out == v->def);
        } else {
            CHECK_ST(st, CCTX_NOT_FOUND);
        }
        CHECK_ST(cctx_var_get_default(v->ptr, &sentinel, &out), CCTX_OK);
        CHECK(out == (has ? M.c[cur].d.val[vi] : (void *)&sentinel));
        st = cctx_var_default(v->ptr, &out);
        CHECK_ST(st, v->has_def ? CCTX_OK : CCTX_NOT_FOUND);
        if (v->has_def)
            CHECK(out == v->def);
        CHECK(cctx_var_name(v->ptr) != NULL);
        CHECK(cctx_var_flags(v->ptr) == (v->not_inh ? CCTX_VAR_NOT_INHERITED : 0u));
    }

    for (int ti = 0; ti < M.nt; ti++) {
        mtok *t = &M.t[ti];
        if (t->refs <= 0)
            continue;
        CHECK(cctx_token_is_used(t->ptr) == t->used);
        CHECK(cctx_token_var(t->ptr) == M.v[t->var].ptr);
        check_token_context(ti);
        void *old = NULL;
        cctx_status st = cctx_token_old_value(t->ptr, &old);
        CHECK_ST(st, t->has_old ? CCTX_OK : CCTX_NOT_FOUND);
        if (t->has_old)
            CHECK(old == t->old);
    }

    for (int li = 0; li < M.nl; li++) {
        mloc *l = &M.l[li];
        if (l->refs <= 0)
            continue;
        CHECK(l->init_calls == l->model_calls);
        void *out = NULL;
        if (l->state == L_VALUE) {
            CHECK_ST(cctx_local_get(l->ptr, &out), CCTX_OK);
            CHECK(out == l->val);
        } else if (l->init_mode == INIT_NONE) {
            CHECK_ST(cctx_local_get(l->ptr, &out), CCTX_NOT_FOUND);
        }
        CHECK(l->init_calls == l->model_calls);
    }

    void *all[4 * MAXV * MAXC + MAXT + MAXL + 8];
    int n = reachable(all, (int)(sizeof all / sizeof all[0]));
    if (n != fv_live) {
        fprintf(stderr, "fuzz_api: %ld values alive, model reaches %d (op #%d %s)\n",
                fv_live, n, op_no, op_name);
        abort();
    }
    for (int i = 0; i < n; i++)
        CHECK(((fv *)all[i])->tag == FV_TAG && ((fv *)all[i])->refcnt > 0);

    /* The thread's chain (innermost first, ending at its base) is the
     * model's entered stack. */
    cctx_context *chain[MAXC + 2];
    size_t nchain = cctx_thread_contexts(chain, MAXC + 2);
    if (nchain == 0) {
        CHECK(M.depth == 0 && M.base < 0);
    } else {
        CHECK(nchain == (size_t)M.depth + 1);
        for (int i = 0; i < M.depth; i++)
            CHECK(chain[i] == M.c[M.stack[M.depth - 1 - i]].ptr);
        if (M.base >= 0)
            learn_ctx_ptr(M.base, chain[M.depth]);
        CHECK(cctx_context_current() == chain[0]);
    }

    /* The reads above create the thread's state. When the model says the
     * thread holds nothing (no base values, nothing entered, no local
     * touched), drop it again, so that the next call meets a thread without
     * state — the path where calls allocate the state first. */
    bool holds = M.base >= 0 || M.depth > 0;
    for (int i = 0; i < M.nl; i++)
        holds = holds || (M.l[i].refs > 0 && M.l[i].state != L_UNTOUCHED);
    if (!holds) {
        CHECK_ST(cctx_thread_cleanup(), CCTX_OK);
        stats_stateless++;
    }
}

/* ------------------------------------------------------------ operations */

static const uint32_t hashes[8] = {
    0x00000000u, 0x00000001u, 0x00000020u, 0x00000400u,
    0x80000000u, 0xffffffffu, 0x00000021u, 0x40000000u,
};

static void op_var_new(void)
{
    uint8_t kind = u8() % 6;
    cctx_var *v = NULL;
    cctx_status st;
    if (kind == 5) { /* misuse: NULL name, NULL out, unknown flags */
        switch (u8() % 3) {
        case 0: CHECK_ST(cctx_var_new(NULL, &fv_ops, &v), CCTX_EINVAL); break;
        case 1: CHECK_ST(cctx_var_new("x", &fv_ops, NULL), CCTX_EINVAL); break;
        default:
            CHECK_ST(cctx_var_new_ex("x", &fv_ops, false, NULL, 0x80, &v), CCTX_EINVAL);
        }
        return;
    }
    if (M.nv == MAXV)
        return;
    bool fresh = false, has_def = false, not_inh = false;
    void *def = NULL;
    if (kind == 1 || kind == 2) {
        has_def = kind == 1 || (u8() & 1);
        if (has_def)
            def = choose_value(&fresh);
    }
    if (kind == 2)
        not_inh = true;
    uint32_t hash = 0;
    if (kind == 3 || kind == 4) {
        uint8_t h = u8();
        hash = h < 200 ? hashes[h % 8] : u32();
    }
    arm_now();
    switch (kind) {
    case 0: st = cctx_var_new("v", &fv_ops, &v); break;
    case 1: st = cctx_var_new_with_default("vd", &fv_ops, def, &v); break;
    case 2:
        st = cctx_var_new_ex("vn", &fv_ops, has_def, def, CCTX_VAR_NOT_INHERITED, &v);
        break;
    default: st = cctx__var_new_with_hash("vh", &fv_ops, hash, &v); break;
    }
    bool inj = disarm();
    if (expect(st, CCTX_OK, inj)) {
        mvar *m = &M.v[M.nv++];
        memset(m, 0, sizeof *m);
        m->ptr = v;
        m->refs = 1;
        m->has_def = has_def;
        m->def = def;
        m->not_inh = not_inh;
        if (kind >= 3)
            CHECK(cctx__var_hash(v) == hash);
    } else {
        CHECK(v == NULL); /* *out untouched */
    }
    drop_fresh(def, fresh);
}

static void op_var_refs(void)
{
    int vi = pick_var();
    if (vi < 0)
        return;
    if ((u8() & 1) && M.v[vi].refs < MAXREFS) {
        CHECK(cctx_var_retain(M.v[vi].ptr) == M.v[vi].ptr);
        M.v[vi].refs++;
    } else {
        cctx_var_release(M.v[vi].ptr);
        M.v[vi].refs--;
    }
}

/* Applies a set to context record ci, with a new token record for `tok`
 * (when not NULL). */
static void model_set(int ci, int vi, void *val, cctx_token *tok, bool light)
{
    if (tok != NULL)
        new_token_record(tok, vi, ci, light);
    M.c[ci].d.has[vi] = true;
    M.c[ci].d.val[vi] = val;
}

/* A failed set leaves *token_out alone. */
static cctx_token *const tok_untouched = (cctx_token *)(uintptr_t)0x5eed;

static void op_var_set(void)
{
    int vi = pick_var();
    /* Bit 0: a token; bit 1: the light entry point (cctx_var_set_light,
     * also without a token). */
    uint8_t how = u8();
    bool want_tok = how & 1, light = how & 2;
    bool fresh;
    void *val = choose_value(&fresh);
    if (vi < 0 || M.nc >= MAXC || (want_tok && M.nt >= MAXT)) {
        drop_fresh(val, fresh);
        return;
    }
    cctx_token *tok = tok_untouched;
    arm_now();
    cctx_status st = light ? cctx_var_set_light(M.v[vi].ptr, val, want_tok ? &tok : NULL)
                           : cctx_var_set(M.v[vi].ptr, val, want_tok ? &tok : NULL);
    bool inj = disarm();
    if (expect(st, CCTX_OK, inj)) {
        int ci = M.depth > 0 ? M.stack[M.depth - 1] : ensure_base();
        CHECK(want_tok ? tok != tok_untouched && tok != NULL : tok == tok_untouched);
        stats_light_sets += light;
        model_set(ci, vi, val, want_tok ? tok : NULL, light);
    } else {
        CHECK(tok == tok_untouched);
    }
    drop_fresh(val, fresh);
}

static cctx_status model_reset_status(int ti, int vi, int ci)
{
    mtok *t = &M.t[ti];
    if (t->used)
        return CCTX_TOKEN_USED;
    if (t->var != vi)
        return CCTX_TOKEN_WRONG_VAR;
    if (t->ctx != ci)
        return CCTX_TOKEN_WRONG_CONTEXT;
    return CCTX_OK;
}

/* Stats for a reset of a light token whose context is gone: in a context
 * at the same address (the context cache handed the object out again)
 * the runtime must still tell them apart by the token's serial. */
static void count_light_reset(int ti, int ci)
{
    mtok *t = &M.t[ti];
    if (!t->light || ci < 0)
        return;
    compute_alive();
    if (ctx_alive[t->ctx])
        return;
    stats_light_gone++;
    if (M.c[t->ctx].ptr != NULL && M.c[t->ctx].ptr == M.c[ci].ptr)
        stats_light_reused++;
}

static void model_reset_apply(int ti, int ci)
{
    mtok *t = &M.t[ti];
    t->used = true;
    M.c[ci].d.has[t->var] = t->has_old;
    M.c[ci].d.val[t->var] = t->has_old ? t->old : NULL;
}

static void op_var_reset(void)
{
    int ti = pick_tok();
    /* Mostly the token's own variable; sometimes another one. */
    int vi = (u8() % 4 == 0 || ti < 0) ? pick_var() : M.t[ti].var;
    /* The token's own variable is alive while the token is (a full token
     * holds it; the model holds a light token's), handle or not. */
    if (ti < 0 || vi < 0 || (M.v[vi].refs <= 0 && vi != M.t[ti].var))
        return;
    int ci = cur_ctx();
    cctx_status exp = model_reset_status(ti, vi, ci);
    count_light_reset(ti, ci);
    arm_now();
    cctx_status st = cctx_var_reset(M.v[vi].ptr, M.t[ti].ptr);
    bool inj = disarm();
    if (expect(st, exp, inj))
        model_reset_apply(ti, ci);
}

static void op_ctx_new(void)
{
    if (M.nc >= MAXC)
        return;
    uint8_t kind = u8() % 4;
    int src = kind == 0 || kind == 3 ? -1 : pick_ctx();
    if ((kind == 1 || kind == 2) && src < 0)
        return;
    cctx_context *c = NULL;
    arm_now();
    cctx_status st;
    switch (kind) {
    case 0: st = cctx_context_new(&c); break;
    case 1: st = cctx_context_copy(M.c[src].ptr, &c); break;
    case 2: st = cctx_context_copy_inherit(M.c[src].ptr, &c); break;
    default: st = cctx_context_copy_current(&c); break;
    }
    bool inj = disarm();
    bool ok = kind == 1 || kind == 2 ? expect_read(st, CCTX_OK, inj) : expect(st, CCTX_OK, inj);
    if (!ok) {
        CHECK(c == NULL);
        return;
    }
    dict d;
    memset(&d, 0, sizeof d);
    if (kind == 1)
        d = M.c[src].d;
    if (kind == 2) {
        d = M.c[src].d;
        for (int i = 0; i < MAXV; i++)
            if (M.v[i].not_inh) {
                d.has[i] = false;
                d.val[i] = NULL;
            }
    }
    if (kind == 3 && cur_ctx() >= 0)
        d = M.c[cur_ctx()].d;
    for (int i = 0; i < M.nc; i++) /* a new object, not an old handle */
        CHECK(M.c[i].refs == 0 || M.c[i].ptr != c);
    new_ctx_record(c, &d);
}

/* cctx_context_copy_with (from a context or the current one) and
 * cctx_context_new_with: a new context, the source's map with one
 * binding. */
static void op_ctx_copy_with(void)
{
    if (M.nc >= MAXC)
        return;
    uint8_t kind = u8() % 3; /* 0: from a context, 1: the current one, 2: empty */
    int src = kind == 0 ? pick_ctx() : -1;
    int vi = pick_var();
    bool fresh;
    void *val = choose_value(&fresh);
    if ((kind == 0 && src < 0) || vi < 0) {
        drop_fresh(val, fresh);
        return;
    }
    cctx_context *c = NULL;
    arm_now();
    cctx_status st = kind == 0   ? cctx_context_copy_with(M.c[src].ptr, M.v[vi].ptr, val, &c)
                     : kind == 1 ? cctx_context_copy_with(NULL, M.v[vi].ptr, val, &c)
                                 : cctx_context_new_with(M.v[vi].ptr, val, &c);
    bool inj = disarm();
    /* From a context: its read may absorb a failure to make this thread's
     * state, as cctx_context_copy does. */
    bool ok = kind == 0 ? expect_read(st, CCTX_OK, inj) : expect(st, CCTX_OK, inj);
    if (!ok) {
        CHECK(c == NULL);
        drop_fresh(val, fresh);
        return;
    }
    dict d;
    memset(&d, 0, sizeof d);
    if (kind == 0)
        d = M.c[src].d;
    if (kind == 1 && cur_ctx() >= 0)
        d = M.c[cur_ctx()].d;
    d.has[vi] = true;
    d.val[vi] = val;
    for (int i = 0; i < M.nc; i++) /* a new object, not an old handle */
        CHECK(M.c[i].refs == 0 || M.c[i].ptr != c);
    new_ctx_record(c, &d);
    drop_fresh(val, fresh);
}

static void op_ctx_refs(void)
{
    int ci = pick_ctx();
    if (ci < 0)
        return;
    if ((u8() & 1) && M.c[ci].refs < MAXREFS) {
        CHECK(cctx_context_retain(M.c[ci].ptr) == M.c[ci].ptr);
        M.c[ci].refs++;
    } else {
        cctx_context_release(M.c[ci].ptr);
        M.c[ci].refs--;
    }
}

static void op_enter(void)
{
    int ci = pick_ctx();
    if (ci < 0 || M.depth >= MAXC)
        return;
    cctx_status exp = M.c[ci].owner != OWN_NONE ? CCTX_ALREADY_ENTERED : CCTX_OK;
    arm_now();
    cctx_status st = cctx_context_enter(M.c[ci].ptr);
    bool inj = disarm();
    if (expect(st, exp, inj)) {
        M.c[ci].owner = OWN_THREAD;
        M.stack[M.depth++] = ci;
    }
}

static void op_exit(void)
{
    /* The current context by its pointer (it may have no handle of ours
     * left: the enter keeps it alive), or any handle. */
    int ci = (u8() & 1) && M.depth > 0 ? M.stack[M.depth - 1] : pick_ctx();
    if (ci < 0)
        return;
    bool top = M.depth > 0 && M.stack[M.depth - 1] == ci;
    arm_now();
    cctx_status st = cctx_context_exit(M.c[ci].ptr);
    bool inj = disarm();
    if (expect(st, top ? CCTX_OK : CCTX_NOT_CURRENT, inj)) {
        M.depth--;
        M.c[ci].owner = OWN_NONE;
    }
}

static void op_claim(void)
{
    int ci = pick_ctx();
    if (ci < 0)
        return;
    bool claim = u8() & 1;
    arm_now();
    cctx_status st = claim ? cctx_context_claim(M.c[ci].ptr) : cctx_context_unclaim(M.c[ci].ptr);
    bool inj = disarm();
    cctx_status exp;
    if (claim)
        exp = M.c[ci].owner == OWN_NONE ? CCTX_OK : CCTX_ALREADY_ENTERED;
    else
        exp = M.c[ci].owner == OWN_CLAIMED ? CCTX_OK : CCTX_NOT_ENTERED;
    if (expect(st, exp, inj))
        M.c[ci].owner = claim ? OWN_CLAIMED : OWN_NONE;
}

static void op_ctx_set(void)
{
    int ci = pick_ctx();
    int vi = pick_var();
    uint8_t how = u8(); /* as in op_var_set */
    bool want_tok = how & 1, light = how & 2;
    bool fresh;
    void *val = choose_value(&fresh);
    if (ci < 0 || vi < 0 || (want_tok && M.nt >= MAXT)) {
        drop_fresh(val, fresh);
        return;
    }
    cctx_token *tok = tok_untouched;
    cctx_token **tok_out = want_tok ? &tok : NULL;
    arm_now();
    cctx_status st = light ? cctx_context_set_light(M.c[ci].ptr, M.v[vi].ptr, val, tok_out)
                           : cctx_context_set(M.c[ci].ptr, M.v[vi].ptr, val, tok_out);
    bool inj = disarm();
    /* Single thread: the owner is always this thread, a claim or nobody. */
    if (expect(st, CCTX_OK, inj)) {
        CHECK(want_tok ? tok != tok_untouched && tok != NULL : tok == tok_untouched);
        stats_light_sets += light;
        model_set(ci, vi, val, want_tok ? tok : NULL, light);
    } else {
        CHECK(tok == tok_untouched);
    }
    drop_fresh(val, fresh);
}

static void op_ctx_reset(void)
{
    int ci = pick_ctx();
    int ti = pick_tok();
    if (ci < 0 || ti < 0)
        return;
    int vi = (u8() % 4 == 0) ? pick_var() : M.t[ti].var;
    if (vi < 0 || (M.v[vi].refs <= 0 && vi != M.t[ti].var))
        return;
    cctx_status exp = model_reset_status(ti, vi, ci);
    count_light_reset(ti, ci);
    arm_now();
    cctx_status st = cctx_context_reset(M.c[ci].ptr, M.v[vi].ptr, M.t[ti].ptr);
    bool inj = disarm();
    if (expect(st, exp, inj))
        model_reset_apply(ti, ci);
}

static void op_ctx_delete(void)
{
    int ci = pick_ctx();
    int vi = pick_var();
    if (ci < 0 || vi < 0)
        return;
    cctx_status exp = M.c[ci].d.has[vi] ? CCTX_OK : CCTX_NOT_FOUND;
    arm_now();
    cctx_status st = cctx_context_delete(M.c[ci].ptr, M.v[vi].ptr);
    bool inj = disarm();
    if (expect(st, exp, inj)) {
        M.c[ci].d.has[vi] = false;
        M.c[ci].d.val[vi] = NULL;
    }
}

/* Reads with an injected failure: lookup must say ENOMEM; count, contains
 * and equal cannot, and degrade (counted; see the file comment). */
static void op_reads(void)
{
    int ci = pick_ctx();
    int vi = pick_var();
    int cj = pick_ctx();
    if (ci < 0 || vi < 0 || cj < 0)
        return;
    uint8_t kind = u8() % 4;
    mctx *c = &M.c[ci];
    arm_now();
    void *out = (void *)0x1;
    cctx_status st = CCTX_OK;
    size_t n = 0;
    bool b = false;
    switch (kind) {
    case 0: st = cctx_context_lookup(c->ptr, M.v[vi].ptr, &out); break;
    case 1: n = cctx_context_count(c->ptr); break;
    case 2: b = cctx_context_contains(c->ptr, M.v[vi].ptr); break;
    default: b = cctx_context_equal(c->ptr, M.c[cj].ptr); break;
    }
    bool inj = disarm();
    bool eq = true;
    for (int i = 0; i < MAXV; i++)
        eq = eq && c->d.has[i] == M.c[cj].d.has[i] &&
             (!c->d.has[i] || c->d.val[i] == M.c[cj].d.val[i]);
    bool right = kind == 1 ? n == dict_count(&c->d)
               : kind == 2 ? b == c->d.has[vi]
               : kind == 3 ? b == eq : true;
    if (kind == 0) {
        if (expect_read(st, c->d.has[vi] ? CCTX_OK : CCTX_NOT_FOUND, inj)) {
            CHECK(out == c->d.val[vi]);
            cctx_var_release_value(M.v[vi].ptr, out);
        } else {
            CHECK(out == (void *)0x1);
        }
        return;
    }
    if (!right)
        stats_read_degraded++;
    CHECK(right); /* also under an injected failure (formerly bug B1) */
}

static void op_iter(void)
{
    int slot = u8() % MAXI;
    miter *m = &M.it[slot];
    if (m->open) { /* drain, compare with the snapshot taken at creation */
        check_iter(m->it, &m->snap);
        cctx_iter_free(m->it);
        m->open = false;
        return;
    }
    int ci = pick_ctx();
    if (ci < 0)
        return;
    cctx_iter *it = NULL;
    arm_now();
    cctx_status st = cctx_iter_new(M.c[ci].ptr, &it);
    bool inj = disarm();
    if (expect_read(st, CCTX_OK, inj)) {
        m->it = it;
        m->snap = M.c[ci].d;
        m->open = true;
    } else {
        CHECK(it == NULL);
    }
}

static void op_tok_refs(void)
{
    int ti = pick_tok();
    if (ti < 0)
        return;
    uint8_t k = u8() % 3;
    if (k == 0 && M.t[ti].refs < MAXREFS) {
        CHECK(cctx_token_retain(M.t[ti].ptr) == M.t[ti].ptr);
        M.t[ti].refs++;
    } else if (k == 1) { /* adopt the token's context as a handle */
        int ci = M.t[ti].ctx;
        if (M.t[ti].light) { /* it names none */
            CHECK(cctx_token_context(M.t[ti].ptr) == NULL);
            return;
        }
        if (M.c[ci].refs >= MAXREFS)
            return;
        cctx_context *p = cctx_token_context(M.t[ti].ptr);
        learn_ctx_ptr(ci, p);
        CHECK(cctx_context_retain(p) == p);
        M.c[ci].refs++;
    } else {
        token_release(ti);
    }
}

static cctx_status local_init(void *userdata, void **value_out)
{
    mloc *l = userdata;
    l->init_calls++;
    switch (l->init_mode) {
    case INIT_VALUE:
        l->last_init = fv_new();
        *value_out = l->last_init;
        return CCTX_OK;
    case INIT_NULL:
        l->last_init = NULL;
        *value_out = NULL;
        return CCTX_OK;
    default:
        return CCTX_EINVAL;
    }
}

static void op_local_new(void)
{
    if (M.nl >= MAXL)
        return;
    int mode = u8() % 4;
    mloc *l = &M.l[M.nl];
    memset(l, 0, sizeof *l);
    l->init_mode = mode;
    cctx_local *p = NULL;
    arm_now();
    cctx_status st = cctx_local_new(&fv_ops, mode == INIT_NONE ? NULL : local_init, l, &p);
    bool inj = disarm();
    if (expect(st, CCTX_OK, inj)) {
        l->ptr = p;
        l->refs = 1;
        l->state = L_UNTOUCHED;
        M.nl++;
    } else {
        CHECK(p == NULL);
    }
}

static void op_local(void)
{
    int li = pick_loc();
    if (li < 0)
        return;
    mloc *l = &M.l[li];
    uint8_t kind = u8() % 5;
    if (kind == 0) { /* get */
        void *out = (void *)0x1;
        bool runs_init = l->state == L_UNTOUCHED && l->init_mode != INIT_NONE;
        arm_now();
        cctx_status st = cctx_local_get(l->ptr, &out);
        bool inj = disarm();
        cctx_status exp = l->state == L_VALUE ? CCTX_OK : CCTX_NOT_FOUND;
        if (runs_init && !inj) {
            l->model_calls++;
            exp = l->init_mode == INIT_FAIL ? CCTX_EINVAL : CCTX_OK;
        }
        CHECK(l->init_calls == l->model_calls);
        if (expect(st, exp, inj)) {
            if (runs_init) {
                l->state = L_VALUE;
                l->val = l->last_init;
            }
            CHECK(out == l->val);
        } else {
            CHECK(out == (void *)0x1);
        }
    } else if (kind == 1 || kind == 2) { /* set */
        bool fresh;
        void *val = choose_value(&fresh);
        arm_now();
        cctx_status st = cctx_local_set(l->ptr, val);
        bool inj = disarm();
        if (expect(st, CCTX_OK, inj)) {
            l->state = L_VALUE;
            l->val = val;
        }
        drop_fresh(val, fresh);
    } else if (kind == 3) { /* delete */
        arm_now();
        cctx_status st = cctx_local_delete(l->ptr);
        bool inj = disarm();
        cctx_status exp = l->state == L_VALUE ? CCTX_OK : CCTX_NOT_FOUND;
        if (inj) {
            CHECK_ST(st, CCTX_ENOMEM);
        } else {
            CHECK_ST(st, exp);
            /* A delete puts the thread back to "never touched": the next
             * get runs the initialiser again. With no value it settles
             * nothing. */
            if (l->state == L_VALUE) {
                l->state = L_UNTOUCHED;
                l->val = NULL;
            }
        }
    } else { /* references */
        if ((u8() & 1) && l->refs < MAXREFS) {
            CHECK(cctx_local_retain(l->ptr) == l->ptr);
            l->refs++;
        } else {
            cctx_local_release(l->ptr);
            l->refs--;
        }
    }
}

static void model_thread_gone(void)
{
    if (M.base >= 0) {
        M.c[M.base].thread_holds = false;
        M.c[M.base].owner = OWN_NONE;
        M.base = -1;
    }
    for (int i = 0; i < M.nl; i++)
        if (M.l[i].refs > 0) {
            M.l[i].state = L_UNTOUCHED;
            M.l[i].val = NULL;
        }
}

static void op_cleanup(void)
{
    /* Cleanup cannot fail for lack of memory: an injected failure (the
     * teardown's fresh base) only makes it finish sooner. */
    arm_now();
    cctx_status st = cctx_thread_cleanup();
    (void)disarm();
    CHECK_ST(st, M.depth > 0 ? CCTX_ALREADY_ENTERED : CCTX_OK);
    if (st == CCTX_OK)
        model_thread_gone();
}

struct run_arg {
    cctx_var *var;
    void *val;
    cctx_status st;
    bool ran;
};

static void run_body(void *p)
{
    struct run_arg *a = p;
    a->ran = true;
    a->st = cctx_var_set(a->var, a->val, NULL);
}

static void op_run(void)
{
    int ci = pick_ctx();
    int vi = pick_var();
    bool fresh;
    void *val = choose_value(&fresh);
    if (ci < 0 || vi < 0) {
        drop_fresh(val, fresh);
        return;
    }
    struct run_arg a = { M.v[vi].ptr, val, CCTX_OK, false };
    cctx_status exp = M.c[ci].owner != OWN_NONE ? CCTX_ALREADY_ENTERED : CCTX_OK;
    arm_now();
    cctx_status st = cctx_context_run(M.c[ci].ptr, run_body, &a);
    bool inj = disarm();
    if (st == CCTX_OK) {
        CHECK(exp == CCTX_OK && a.ran);
        if (a.st == CCTX_OK)
            model_set(ci, vi, val, NULL, false);
        else
            CHECK(inj && a.st == CCTX_ENOMEM);
        CHECK(M.c[ci].owner == OWN_NONE);
    } else {
        CHECK(!a.ran);
        expect(st, exp, inj);
    }
    drop_fresh(val, fresh);
}

/* Handles of the wrong kind and NULL arguments: the documented status,
 * and nothing changes (the full check after the op verifies that). */
static void op_misuse(void)
{
    int vi = pick_var(), ci = pick_ctx(), ti = pick_tok(), li = pick_loc();
    cctx_var *v = vi >= 0 ? M.v[vi].ptr : NULL;
    cctx_context *c = ci >= 0 ? M.c[ci].ptr : NULL;
    cctx_token *t = ti >= 0 ? M.t[ti].ptr : NULL;
    cctx_local *l = li >= 0 ? M.l[li].ptr : NULL;
    void *out = (void *)0x1;
    cctx_context *cout = NULL;
    cctx_iter *iout = NULL;
    fv *x = fv_new();
    switch (u8() % 12) {
    case 0:
        if (c) CHECK_ST(cctx_var_get((cctx_var *)c, &out), CCTX_EINVAL);
        if (t) CHECK_ST(cctx_var_set((cctx_var *)t, x, NULL), CCTX_EINVAL);
        if (c) CHECK_ST(cctx_var_set_light((cctx_var *)c, x, NULL), CCTX_EINVAL);
        break;
    case 1:
        if (v) CHECK_ST(cctx_context_enter((cctx_context *)v), CCTX_EINVAL);
        if (t) CHECK_ST(cctx_context_exit((cctx_context *)t), CCTX_EINVAL);
        if (l) CHECK_ST(cctx_context_claim((cctx_context *)l), CCTX_EINVAL);
        break;
    case 2:
        if (v && c) CHECK_ST(cctx_var_reset(v, (cctx_token *)c), CCTX_EINVAL);
        if (v && c) CHECK_ST(cctx_context_reset(c, v, (cctx_token *)v), CCTX_EINVAL);
        if (t) CHECK_ST(cctx_var_reset((cctx_var *)t, t), CCTX_EINVAL);
        break;
    case 3:
        if (t && v) CHECK_ST(cctx_context_set((cctx_context *)t, v, x, NULL), CCTX_EINVAL);
        if (c && t) CHECK_ST(cctx_context_set(c, (cctx_var *)t, x, NULL), CCTX_EINVAL);
        if (t && v) CHECK_ST(cctx_context_set_light((cctx_context *)t, v, x, NULL), CCTX_EINVAL);
        if (c && l) CHECK_ST(cctx_context_set_light(c, (cctx_var *)l, x, NULL), CCTX_EINVAL);
        if (c && l) CHECK_ST(cctx_context_delete(c, (cctx_var *)l), CCTX_EINVAL);
        break;
    case 4:
        if (v) CHECK_ST(cctx_local_get((cctx_local *)v, &out), CCTX_EINVAL);
        if (c) CHECK_ST(cctx_local_set((cctx_local *)c, x), CCTX_EINVAL);
        if (t) CHECK_ST(cctx_local_delete((cctx_local *)t), CCTX_EINVAL);
        break;
    case 5:
        if (l) CHECK(cctx_context_count((cctx_context *)l) == 0);
        if (v) CHECK(!cctx_context_is_entered((cctx_context *)v));
        if (c && t) CHECK(!cctx_context_contains(c, (cctx_var *)t));
        if (c && v) CHECK(!cctx_context_equal(c, (cctx_context *)v));
        break;
    case 6:
        CHECK_ST(cctx_var_set(NULL, x, NULL), CCTX_EINVAL);
        {
            cctx_token *tout = tok_untouched;
            CHECK_ST(cctx_var_set_light(NULL, x, &tout), CCTX_EINVAL);
            if (v) CHECK_ST(cctx_context_set_light(NULL, v, x, &tout), CCTX_EINVAL);
            if (c) CHECK_ST(cctx_context_set_light(c, NULL, x, &tout), CCTX_EINVAL);
            CHECK(tout == tok_untouched);
        }
        CHECK_ST(cctx_var_get(NULL, &out), CCTX_EINVAL);
        if (v) CHECK_ST(cctx_var_get(v, NULL), CCTX_EINVAL);
        if (v) CHECK_ST(cctx_var_reset(v, NULL), CCTX_EINVAL);
        CHECK_ST(cctx_context_copy(NULL, &cout), CCTX_EINVAL);
        if (c) CHECK_ST(cctx_context_copy(c, NULL), CCTX_EINVAL);
        CHECK_ST(cctx_context_copy_current(NULL), CCTX_EINVAL);
        CHECK_ST(cctx_iter_new(NULL, &iout), CCTX_EINVAL);
        break;
    case 7: /* releases of the wrong kind are ignored */
        if (v) cctx_context_release((cctx_context *)v);
        if (c) cctx_var_release((cctx_var *)c);
        if (l) cctx_token_release((cctx_token *)l);
        if (t) cctx_local_release((cctx_local *)t);
        cctx_context_release(NULL);
        cctx_var_release(NULL);
        cctx_token_release(NULL);
        cctx_local_release(NULL);
        cctx_iter_free(NULL);
        break;
    case 8:
        CHECK_ST(cctx_context_exit(NULL), CCTX_EINVAL);
        CHECK_ST(cctx_context_enter(NULL), CCTX_EINVAL);
        CHECK_ST(cctx_context_unclaim(NULL), CCTX_EINVAL);
        CHECK_ST(cctx_context_claim(NULL), CCTX_EINVAL);
        if (c) CHECK_ST(cctx_context_run(c, NULL, NULL), CCTX_EINVAL);
        break;
    case 9:
        if (c && t) CHECK_ST(cctx_context_lookup(c, (cctx_var *)t, &out), CCTX_EINVAL);
        if (c && v) CHECK_ST(cctx_context_lookup(c, v, NULL), CCTX_EINVAL);
        if (c && v) CHECK_ST(cctx_context_get(c, v, NULL), CCTX_EINVAL);
        if (v) CHECK_ST(cctx_context_get((cctx_context *)v, v, &out), CCTX_EINVAL);
        break;
    case 10:
        CHECK_ST(cctx_local_new(&fv_ops, NULL, NULL, NULL), CCTX_EINVAL);
        if (l) CHECK_ST(cctx_local_get(l, NULL), CCTX_EINVAL);
        CHECK_ST(cctx_local_set(NULL, x), CCTX_EINVAL);
        CHECK(cctx_token_var((cctx_token *)c) == NULL || c == NULL);
        CHECK(cctx_token_context(NULL) == NULL);
        CHECK(!cctx_token_is_used((cctx_token *)v));
        if (t) CHECK_ST(cctx_token_old_value(t, NULL), CCTX_EINVAL);
        break;
    default:
        CHECK(cctx_var_name((cctx_var *)c) == NULL || c == NULL);
        CHECK(cctx_var_flags(NULL) == 0);
        CHECK_ST(cctx_var_default((cctx_var *)t, &out), t ? CCTX_EINVAL : CCTX_EINVAL);
        CHECK(cctx__var_hash(NULL) == 0);
        CHECK(cctx_var_retain(NULL) == NULL && cctx_context_retain(NULL) == NULL);
        CHECK(cctx_token_retain(NULL) == NULL && cctx_local_retain(NULL) == NULL);
        break;
    }
    CHECK(out == (void *)0x1 && cout == NULL && iout == NULL);
    fv_release(x);
}

/* ------------------------------------------------------------ teardown */

static long alloc_baseline = -1;

static void teardown(void)
{
    op_name = "teardown";
    while (M.depth > 0) {
        int ci = M.stack[--M.depth];
        CHECK_ST(cctx_context_exit(M.c[ci].ptr), CCTX_OK);
        M.c[ci].owner = OWN_NONE;
    }
    for (int i = 0; i < MAXI; i++)
        if (M.it[i].open) {
            check_iter(M.it[i].it, &M.it[i].snap);
            cctx_iter_free(M.it[i].it);
            M.it[i].open = false;
        }
    for (int i = 0; i < M.nt; i++)
        while (M.t[i].refs > 0)
            token_release(i);
    for (int i = 0; i < M.nc; i++)
        while (M.c[i].refs > 0) {
            cctx_context_release(M.c[i].ptr);
            M.c[i].refs--;
        }
    for (int i = 0; i < M.nl; i++)
        while (M.l[i].refs > 0) {
            cctx_local_release(M.l[i].ptr);
            M.l[i].refs--;
        }
    for (int i = 0; i < M.nv; i++)
        while (M.v[i].refs > 0) {
            cctx_var_release(M.v[i].ptr);
            M.v[i].refs--;
        }
    CHECK_ST(cctx_thread_cleanup(), CCTX_OK);
    model_thread_gone();
    if (fv_live != 0) {
        fprintf(stderr, "fuzz_api: %ld values leaked after teardown\n", fv_live);
        abort();
    }
    long live = cctx__live_allocations();
    if (live != alloc_baseline) {
        fprintf(stderr, "fuzz_api: %ld runtime allocations after teardown, %ld before\n",
                live, alloc_baseline);
        abort();
    }
}

/* ------------------------------------------------------------ driver */

static void print_stats(void)
{
    fprintf(stderr, "fuzz_api: injected allocation failures: %ld; calls made on a thread "
            "without state: %ld; reads degraded by an injected failure "
            "(count/contains/equal): %ld\n",
            stats_injected, stats_stateless, stats_read_degraded);
    fprintf(stderr, "fuzz_api: light sets: %ld; resets of a light token whose context "
            "is gone: %ld, %ld of them in a context at its address\n",
            stats_light_sets, stats_light_gone, stats_light_reused);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (alloc_baseline < 0) {
        (void)cctx_thread_cleanup();
        alloc_baseline = cctx__live_allocations();
        atexit(print_stats);
    }
    memset(&M, 0, sizeof M);
    M.base = -1;
    in_p = data;
    in_n = size;
    arm = 0;
    op_no = 0;
    while (in_n > 0) {
        uint8_t op = u8();
        op_no++;
        switch (op % 24) {
        case 0: op_name = "var_new"; op_var_new(); break;
        case 1: op_name = "var_refs"; op_var_refs(); break;
        case 2: case 3: op_name = "var_set"; op_var_set(); break;
        case 4: op_name = "var_reset"; op_var_reset(); break;
        case 5: op_name = "ctx_new/copy"; op_ctx_new(); break;
        case 6: op_name = "ctx_refs"; op_ctx_refs(); break;
        case 7: op_name = "enter"; op_enter(); break;
        case 8: op_name = "exit"; op_exit(); break;
        case 9: op_name = "claim/unclaim"; op_claim(); break;
        case 10: op_name = "ctx_set"; op_ctx_set(); break;
        case 11: op_name = "ctx_reset"; op_ctx_reset(); break;
        case 12: op_name = "ctx_delete"; op_ctx_delete(); break;
        case 13: op_name = "reads"; op_reads(); break;
        case 14: op_name = "iter"; op_iter(); break;
        case 15: op_name = "tok_refs"; op_tok_refs(); break;
        case 16: op_name = "local_new"; op_local_new(); break;
        case 17: case 18: op_name = "local"; op_local(); break;
        case 19: op_name = "thread_cleanup"; op_cleanup(); break;
        case 20: op_name = "run"; op_run(); break;
        case 21: op_name = "misuse"; op_misuse(); break;
        case 22: op_name = "ctx_copy_with"; op_ctx_copy_with(); break;
        default:
            op_name = "arm";
            arm = 1 + u8() % 6;
            continue; /* applies to the next operation; no check needed */
        }
        check_all();
    }
    teardown();
    return 0;
}
