/*
 * test_copy_with.c — cctx_context_copy_with / cctx_context_new_with, the
 * binding header's one-step "copy and bind one variable": the copy sees the
 * source plus the one binding, the source never changes, the copy is a
 * snapshot, every value it took is released with it (also when the release
 * callback uses the library), and a failure leaves nothing behind.
 */
#include "test_support.h"

/* The value of `v` in `ctx` (borrowed), or NULL when unbound. */
static tv_value *value_in(cctx_context *ctx, cctx_var *v)
{
    void *out = NULL;
    return cctx_context_get(ctx, v, &out) == CCTX_OK ? out : NULL;
}

/* From the thread's current context: the copy has the current bindings
 * plus the new one, replacing an existing binding of the same variable;
 * the current context is untouched. */
static void test_copy_with_current_adds_one_binding(void **state)
{
    (void)state;
    cctx_var *a, *b;
    assert_ok(cctx_var_new("a", &tv_ops, &a));
    assert_ok(cctx_var_new("b", &tv_ops, &b));
    tv_value *x = tv_new(1), *y = tv_new(2), *z = tv_new(3);
    cctx_token *ta, *tb;
    assert_ok(cctx_var_set(a, x, &ta));
    assert_ok(cctx_var_set(b, y, &tb));

    cctx_context *copy = NULL;
    assert_ok(cctx_context_copy_with(NULL, a, z, &copy));
    assert_ptr_equal(value_in(copy, a), z);
    assert_ptr_equal(value_in(copy, b), y);
    assert_int_equal(cctx_context_count(copy), 2);
    assert_false(cctx_context_is_entered(copy));
    /* The thread's current context still has the old value. */
    assert_ptr_equal(value_in(cctx_context_current(), a), x);
    assert_int_equal(z->refcnt, 2); /* ours and the copy's */

    /* A snapshot: later writes to the current context are not seen. */
    cctx_token *t2;
    assert_ok(cctx_var_set(b, z, &t2));
    assert_ptr_equal(value_in(copy, b), y);
    assert_ok(cctx_var_reset(b, t2));
    cctx_token_release(t2);

    /* The copy can be entered and written like any context. */
    assert_ok(cctx_context_enter(copy));
    void *got;
    assert_ok(cctx_var_get(a, &got));
    assert_ptr_equal(got, z);
    assert_ok(cctx_context_exit(copy));

    cctx_context_release(copy);
    assert_int_equal(z->refcnt, 1);
    assert_ok(cctx_var_reset(b, tb));
    assert_ok(cctx_var_reset(a, ta));
    cctx_token_release(ta);
    cctx_token_release(tb);
    tv_drop(x);
    tv_drop(y);
    tv_drop(z);
    cctx_var_release(a);
    cctx_var_release(b);
}

/* Binding the value the source already has makes an equal copy. */
static void test_copy_with_the_same_value_is_an_equal_copy(void **state)
{
    (void)state;
    cctx_var *a;
    assert_ok(cctx_var_new("a", &tv_ops, &a));
    tv_value *x = tv_new(1);
    cctx_token *t;
    assert_ok(cctx_var_set(a, x, &t));
    cctx_context *copy;
    assert_ok(cctx_context_copy_with(NULL, a, x, &copy));
    assert_true(cctx_context_equal(copy, cctx_context_current()));
    cctx_context_release(copy);
    assert_ok(cctx_var_reset(a, t));
    cctx_token_release(t);
    tv_drop(x);
    cctx_var_release(a);
}

/* From an explicit context (also one another thread could be writing):
 * the source is unchanged, the copy independent of it. */
static void test_copy_with_an_explicit_context(void **state)
{
    (void)state;
    cctx_var *vars[40];
    tv_value *vals[40];
    cctx_context *src;
    assert_ok(cctx_context_new(&src));
    for (int i = 0; i < 40; i++) {
        assert_ok(cctx_var_new("v", &tv_ops, &vars[i]));
        vals[i] = tv_new(i);
        assert_ok(cctx_context_set(src, vars[i], vals[i], NULL));
    }
    tv_value *n = tv_new(100);
    cctx_context *copy;
    assert_ok(cctx_context_copy_with(src, vars[7], n, &copy));
    for (int i = 0; i < 40; i++) {
        assert_ptr_equal(value_in(src, vars[i]), vals[i]);
        assert_ptr_equal(value_in(copy, vars[i]), i == 7 ? n : vals[i]);
    }
    /* Releasing the source first: the copy keeps what it shares. */
    cctx_context_release(src);
    for (int i = 0; i < 40; i++)
        assert_ptr_equal(value_in(copy, vars[i]), i == 7 ? n : vals[i]);
    assert_int_equal(vals[7]->refcnt, 1); /* the copy replaced it */
    cctx_context_release(copy);
    for (int i = 0; i < 40; i++) {
        assert_int_equal(vals[i]->refcnt, 1);
        tv_drop(vals[i]);
        cctx_var_release(vars[i]);
    }
    assert_int_equal(n->refcnt, 1);
    tv_drop(n);
}

static void test_new_with_has_only_that_binding(void **state)
{
    (void)state;
    cctx_var *a, *b;
    assert_ok(cctx_var_new("a", &tv_ops, &a));
    assert_ok(cctx_var_new("b", &tv_ops, &b));
    tv_value *x = tv_new(1), *y = tv_new(2);
    cctx_token *t;
    assert_ok(cctx_var_set(b, y, &t)); /* in the current context: not seen */
    cctx_context *ctx;
    assert_ok(cctx_context_new_with(a, x, &ctx));
    assert_int_equal(cctx_context_count(ctx), 1);
    assert_ptr_equal(value_in(ctx, a), x);
    assert_null(value_in(ctx, b));
    cctx_context_release(ctx);
    assert_int_equal(x->refcnt, 1);
    assert_ok(cctx_var_reset(b, t));
    cctx_token_release(t);
    tv_drop(x);
    tv_drop(y);
    cctx_var_release(a);
    cctx_var_release(b);
}

/* On a thread that has no state yet: copy_with(NULL) copies an empty
 * current context. Run on a new thread. */
static void *fresh_thread(void *arg)
{
    cctx_var *a = arg;
    tv_value *x = tv_new(5);
    cctx_context *ctx = NULL;
    T_CHECK(cctx_context_copy_with(NULL, a, x, &ctx) == CCTX_OK);
    if (ctx != NULL) {
        T_CHECK(cctx_context_count(ctx) == 1);
        T_CHECK(value_in(ctx, a) == x);
        cctx_context_release(ctx);
    }
    T_CHECK(x->refcnt == 1);
    tv_drop(x);
    cctx_thread_cleanup();
    return NULL;
}

static void test_copy_with_on_a_thread_without_state(void **state)
{
    (void)state;
    cctx_var *a;
    assert_ok(cctx_var_new("a", &tv_ops, &a));
    long failures = thread_failures();
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, fresh_thread, a), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(thread_failures(), failures);
    cctx_var_release(a);
}

typedef cctx_status (*copy_with_fn)(cctx_context *, cctx_var *, void *, cctx_context **);
typedef cctx_status (*new_with_fn)(cctx_var *, void *, cctx_context **);

/* Bad arguments to a copy_with / new_with pair: CCTX_EINVAL, nothing made,
 * the value neither retained nor (for the adopting pair) taken. */
static void check_bad_arguments_take_nothing(copy_with_fn copy_with, new_with_fn new_with)
{
    cctx_var *a;
    assert_ok(cctx_var_new("a", &tv_ops, &a));
    tv_value *x = tv_new(1);
    cctx_context *out = NULL;
    assert_int_equal(copy_with(NULL, a, x, NULL), CCTX_EINVAL);
    assert_int_equal(copy_with(NULL, NULL, x, &out), CCTX_EINVAL);
    assert_int_equal(new_with(NULL, x, &out), CCTX_EINVAL);
    assert_int_equal(new_with(a, x, NULL), CCTX_EINVAL);
    assert_null(out);
    assert_int_equal(x->refcnt, 1);
    tv_drop(x);
    cctx_var_release(a);
}

static void test_copy_with_bad_arguments_change_nothing(void **state)
{
    (void)state;
    check_bad_arguments_take_nothing(cctx_context_copy_with, cctx_context_new_with);
}

/* Out of memory at each allocation in turn: CCTX_ENOMEM with nothing made
 * and no value retained, until one succeeds. */
static void test_copy_with_out_of_memory_changes_nothing(void **state)
{
    (void)state;
    cctx_var *vars[20];
    tv_value *vals[20];
    cctx_context *src;
    assert_ok(cctx_context_new(&src));
    for (int i = 0; i < 20; i++) {
        assert_ok(cctx_var_new("v", &tv_ops, &vars[i]));
        vals[i] = tv_new(i);
        assert_ok(cctx_context_set(src, vars[i], vals[i], NULL));
    }
    assert_ok(cctx_context_enter(src));
    tv_value *n = tv_new(100);
    for (int mode = 0; mode < 3; mode++) {
        bool done = false;
        for (long nth = 1; !done && nth < 50; nth++) {
            const long allocs = cctx__live_allocations();
            const long retains = tv_retains(), releases = tv_releases();
            cctx__fail_allocation(nth);
            cctx_context *copy = NULL;
            cctx_status st = mode == 0   ? cctx_context_copy_with(NULL, vars[3], n, &copy)
                             : mode == 1 ? cctx_context_copy_with(src, vars[3], n, &copy)
                                         : cctx_context_new_with(vars[3], n, &copy);
            cctx__fail_allocation(0);
            if (st == CCTX_OK) {
                assert_ptr_equal(value_in(copy, vars[3]), n);
                cctx_context_release(copy);
                done = true;
            } else {
                assert_int_equal(st, CCTX_ENOMEM);
                assert_null(copy);
                assert_int_equal(cctx__live_allocations(), allocs);
                /* Every retain taken was given back. */
                assert_int_equal(tv_retains() - retains, tv_releases() - releases);
                assert_int_equal(n->refcnt, 1);
            }
        }
        assert_true(done);
    }
    assert_ok(cctx_context_exit(src));
    cctx_context_release(src);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(vals[i]->refcnt, 1);
        tv_drop(vals[i]);
        cctx_var_release(vars[i]);
    }
    tv_drop(n);
}

/* ---------------------------------------- callbacks that use the library */

typedef struct hook_env {
    cctx_var *read_var;
    cctx_var *write_var;
    tv_value *write_value;
    long seen;
    int ran;
} hook_env;

/* The last release of a value reads and sets variables in the thread's
 * current context (as a Swift deinit may), and makes a copy_with itself. */
static void release_hook(tv_value *value, void *arg)
{
    (void)value;
    hook_env *env = arg;
    void *got = NULL;
    if (cctx_var_get(env->read_var, &got) == CCTX_OK && got != NULL)
        env->seen = ((tv_value *)got)->id;
    cctx_token *t;
    T_CHECK(cctx_var_set(env->write_var, env->write_value, &t) == CCTX_OK);
    T_CHECK(cctx_var_reset(env->write_var, t) == CCTX_OK);
    cctx_token_release(t);
    cctx_context *inner = NULL;
    T_CHECK(cctx_context_copy_with(NULL, env->write_var, env->write_value, &inner) == CCTX_OK);
    cctx_context_release(inner);
    env->ran++;
}

/* Makes round `round`'s copy binding `h` (a: set in the current context,
 * b: not). */
typedef cctx_status (*hooked_copy_fn)(int round, cctx_var *a, cctx_var *b, tv_value *h,
                                      cctx_context **copy);

/* Three copies, each binding a value whose last release uses the library
 * (release_hook), released in turn: the hook runs exactly then, on this
 * thread, reads the current context and leaves it as it was. `adopts`:
 * `make` takes over the value's reference (else the test drops its own
 * after the copy). */
static void check_copy_release_runs_hooks_that_use_the_library(hooked_copy_fn make, bool adopts)
{
    cctx_var *a, *b;
    assert_ok(cctx_var_new("a", &tv_ops, &a));
    assert_ok(cctx_var_new("b", &tv_ops, &b));
    tv_value *base = tv_new(7), *w = tv_new(8);
    cctx_token *t;
    assert_ok(cctx_var_set(a, base, &t));
    hook_env env = { a, b, w, 0, 0 };
    const long failures = thread_failures();
    for (int round = 0; round < 3; round++) {
        tv_value *h = tv_new_hooked(100 + round, release_hook, &env);
        cctx_context *copy;
        assert_ok(make(round, a, b, h, &copy));
        if (!adopts)
            tv_drop(h); /* the copy holds the last reference */
        assert_int_equal(env.ran, round);
        cctx_context_release(copy); /* runs the hook */
        assert_int_equal(env.ran, round + 1);
        assert_int_equal(env.seen, 7);
    }
    assert_int_equal(thread_failures(), failures);
    assert_ptr_equal(value_in(cctx_context_current(), a), base);
    assert_null(value_in(cctx_context_current(), b));
    assert_ok(cctx_var_reset(a, t));
    cctx_token_release(t);
    tv_drop(base);
    tv_drop(w);
    cctx_var_release(a);
    cctx_var_release(b);
}

/* Round 0: from the current context; 1: explicit; 2: empty. */
static cctx_status retaining_copy(int round, cctx_var *a, cctx_var *b, tv_value *h,
                                  cctx_context **copy)
{
    (void)a;
    return round == 0   ? cctx_context_copy_with(NULL, b, h, copy)
           : round == 1 ? cctx_context_copy_with(cctx_context_current(), b, h, copy)
                        : cctx_context_new_with(b, h, copy);
}

static void test_release_of_a_copy_runs_callbacks_that_use_the_library(void **state)
{
    (void)state;
    check_copy_release_runs_hooks_that_use_the_library(retaining_copy, false);
}

/* Value ops whose retain writes the thread's current context: the insert
 * retains the values it shares with the source, and the write replaces
 * (and frees) the source's root meanwhile. copy_with must hold its own
 * reference to the source root (ASan/valgrind see a use after free
 * otherwise), and the copy is still the source as it was when it began. */
static cctx_var *retain_writes_var;
static tv_value *retain_writes_value;
static int retain_writes_armed;

static void writing_retain(void *p)
{
    tv_ops.retain(p);
    if (retain_writes_armed) {
        retain_writes_armed = 0;
        cctx_token *t;
        T_CHECK(cctx_var_set(retain_writes_var, retain_writes_value, &t) == CCTX_OK);
        cctx_token_release(t); /* the set stays */
    }
}

static void writing_release(void *p) { tv_ops.release(p); }

static void test_a_retain_callback_that_writes_the_source_is_safe(void **state)
{
    (void)state;
    static const cctx_value_ops ops = { writing_retain, writing_release };
    cctx_var *vars[20], *extra;
    tv_value *vals[20];
    assert_ok(cctx_var_new("extra", &tv_ops, &extra));
    retain_writes_var = extra;
    retain_writes_value = tv_new(99);
    cctx_context *scope;
    assert_ok(cctx_context_new(&scope));
    assert_ok(cctx_context_enter(scope));
    cctx_token *tokens[20];
    for (int i = 0; i < 20; i++) {
        assert_ok(cctx_var_new("v", &ops, &vars[i]));
        vals[i] = tv_new(i);
        assert_ok(cctx_var_set(vars[i], vals[i], &tokens[i]));
        cctx_token_release(tokens[i]);
    }
    const long failures = thread_failures();
    tv_value *n = tv_new(100);
    retain_writes_armed = 1;
    cctx_context *copy;
    assert_ok(cctx_context_copy_with(NULL, vars[0], n, &copy));
    assert_int_equal(retain_writes_armed, 0); /* the write happened */
    assert_int_equal(thread_failures(), failures);
    /* The copy is the source as it was: no `extra`. */
    assert_null(value_in(copy, extra));
    assert_ptr_equal(value_in(copy, vars[0]), n);
    for (int i = 1; i < 20; i++)
        assert_ptr_equal(value_in(copy, vars[i]), vals[i]);
    assert_ptr_equal(value_in(scope, extra), retain_writes_value);
    cctx_context_release(copy);
    assert_ok(cctx_context_exit(scope));
    cctx_context_release(scope);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(vals[i]->refcnt, 1);
        tv_drop(vals[i]);
        cctx_var_release(vars[i]);
    }
    tv_drop(n);
    tv_drop(retain_writes_value);
    cctx_var_release(extra);
}

/* ------------------------------------------ adopting the caller's reference */

/* The ways an adopting copy is made: each shape hamt_assoc_adopt builds
 * itself (an empty map, the root's entry replaced with and without a
 * borrow, an entry added to the root) and ones it leaves to hamt_assoc
 * (an array root, a variable in a child node, the same value again). */
enum adopt_case {
    ADOPT_EMPTY,      /* new_with: a leaf */
    ADOPT_REPLACE,    /* current context binds the variable in its root */
    ADOPT_ADD,        /* current context's root lacks the variable */
    ADOPT_ARRAY,      /* explicit context with 40 variables: an array root */
    ADOPT_SAME,       /* the variable already bound to that value */
    ADOPT_CASES
};

/* Runs of the hook of the value handed over: its last release. */
static long adopt_hook_runs;
static void count_hook(tv_value *value, void *arg)
{
    (void)value;
    (void)arg;
    adopt_hook_runs++;
}

/* The variables and values the adopting cases bind (besides the one
 * handed over). */
struct adopt_fixture {
    cctx_var *vars[40];
    tv_value *vals[40];
};

static void adopt_fixture_make(struct adopt_fixture *f)
{
    for (int i = 0; i < 40; i++) {
        assert_ok(cctx_var_new("v", &tv_ops, &f->vars[i]));
        f->vals[i] = tv_new(i);
    }
}

/* Checks that every value is back to its own one reference, then drops all. */
static void adopt_fixture_drop(struct adopt_fixture *f)
{
    for (int i = 0; i < 40; i++) {
        assert_int_equal(f->vals[i]->refcnt, 1);
        tv_drop(f->vals[i]);
        cctx_var_release(f->vars[i]);
    }
}

/* One adopting case under way. */
struct adopt_run {
    struct adopt_fixture *f;
    int c;
    tv_value *n;       /* the value whose one reference is handed over */
    cctx_context *src; /* an explicit source context (ADOPT_ARRAY), or NULL */
    cctx_token *t;     /* undoes what the current context was set to, or NULL */
};

/* Sets up case `r->c` for `r->n`: the thread's current context binds what
 * the case needs (a token to undo it in `r->t`), or `r->src` is an
 * explicit source context (ADOPT_ARRAY). */
static void adopt_case_setup(struct adopt_run *r)
{
    struct adopt_fixture *f = r->f;
    if (r->c == ADOPT_REPLACE)
        assert_ok(cctx_var_set(f->vars[0], f->vals[0], &r->t));
    if (r->c == ADOPT_ADD)
        assert_ok(cctx_var_set(f->vars[1], f->vals[1], &r->t));
    if (r->c == ADOPT_SAME) {
        /* The variable holds `n` already: the copy needs no new
         * reference, so the handed-over one is released (not the last). */
        assert_ok(cctx_var_set(f->vars[0], r->n, &r->t));
    }
    if (r->c == ADOPT_ARRAY) {
        assert_ok(cctx_context_new(&r->src));
        for (int i = 0; i < 40; i++)
            assert_ok(cctx_context_set(r->src, f->vars[i], f->vals[i], NULL));
    }
}

/* Starts case `c`: a fresh value `id` whose last release counts in
 * adopt_hook_runs (reset here), the case set up for it (adopt_case_setup).
 * The caller hands over the value's one reference (`n`). */
static struct adopt_run adopt_case_begin(struct adopt_fixture *f, int c, long id)
{
    adopt_hook_runs = 0;
    struct adopt_run r = {.f = f, .c = c, .n = tv_new_hooked(id, count_hook, NULL)};
    adopt_case_setup(&r);
    return r;
}

/* The adopting copy of the case. */
static cctx_status adopt_case_copy(const struct adopt_run *r, cctx_context **copy)
{
    return r->c == ADOPT_EMPTY
               ? cctx_context_new_with_adopting(r->f->vars[0], r->n, copy)
               : cctx_context_copy_with_adopting(r->src, r->f->vars[0], r->n, copy);
}

/* Undoes the case's setup, then releases `copy`, which holds the last
 * reference to the handed-over value: its hook runs then and only then. */
static void adopt_case_end(const struct adopt_run *r, cctx_context *copy)
{
    if (r->src != NULL)
        cctx_context_release(r->src);
    if (r->t != NULL) {
        assert_ok(cctx_var_reset(r->f->vars[r->c == ADOPT_ADD ? 1 : 0], r->t));
        cctx_token_release(r->t);
    }
    assert_int_equal(adopt_hook_runs, 0);
    cctx_context_release(copy);
    assert_int_equal(adopt_hook_runs, 1);
}

/* Each case makes an adopting copy binding vars[0] to a fresh value whose
 * only reference is handed over, and checks the counts: no retain
 * callback for the value on the paths that adopt, exactly one release in
 * all (the copy's, when it goes). */
static void test_adopting_copy_takes_over_the_reference(void **state)
{
    (void)state;
    struct adopt_fixture f;
    adopt_fixture_make(&f);
    for (int c = 0; c < ADOPT_CASES; c++) {
        const struct adopt_run r = adopt_case_begin(&f, c, 100 + c);
        const long retains = tv_retains(), releases = tv_releases();
        cctx_context *copy = NULL;
        assert_ok(adopt_case_copy(&r, &copy));
        assert_ptr_equal(value_in(copy, f.vars[0]), r.n);
        if (c == ADOPT_ADD)
            assert_ptr_equal(value_in(copy, f.vars[1]), f.vals[1]);
        if (c == ADOPT_ARRAY)
            for (int i = 1; i < 40; i++)
                assert_ptr_equal(value_in(copy, f.vars[i]), f.vals[i]);
        /* The one reference moved into the copy (with SAME, the copy
         * shares the current context's map, which holds the one left). */
        assert_int_equal(r.n->refcnt, 1);
        if (c == ADOPT_EMPTY || c == ADOPT_REPLACE || c == ADOPT_ADD) {
            /* Taken over: no callback ran for the value (ADOPT_REPLACE and
             * ADOPT_ADD retain the root's other values: one each). */
            assert_int_equal(tv_retains() - retains, c == ADOPT_EMPTY ? 0 : 1 - (c == ADOPT_REPLACE));
            assert_int_equal(tv_releases() - releases, 0);
        }
        adopt_case_end(&r, copy);
    }
    adopt_fixture_drop(&f);
}

/* Out of memory at each allocation in turn, for each case: CCTX_ENOMEM
 * leaves the reference with the caller (count 1, no release callback
 * ran), nothing made; the first success takes it over. */
static void test_adopting_copy_out_of_memory_leaves_the_reference(void **state)
{
    (void)state;
    struct adopt_fixture f;
    adopt_fixture_make(&f);
    for (int c = 0; c < ADOPT_CASES; c++) {
        const struct adopt_run r = adopt_case_begin(&f, c, 200 + c);
        const int held = r.n->refcnt;
        bool done = false;
        for (long nth = 1; !done && nth < 50; nth++) {
            const long allocs = cctx__live_allocations();
            const long retains = tv_retains(), releases = tv_releases();
            cctx__fail_allocation(nth);
            cctx_context *copy = NULL;
            cctx_status st = adopt_case_copy(&r, &copy);
            cctx__fail_allocation(0);
            if (st == CCTX_OK) {
                assert_ptr_equal(value_in(copy, f.vars[0]), r.n);
                assert_int_equal(r.n->refcnt, 1); /* as in the test above */
                adopt_case_end(&r, copy);
                done = true;
            } else {
                assert_int_equal(st, CCTX_ENOMEM);
                assert_null(copy);
                assert_int_equal(cctx__live_allocations(), allocs);
                assert_int_equal(tv_retains() - retains, tv_releases() - releases);
                /* Still ours (plus the current context's, with SAME). */
                assert_int_equal(r.n->refcnt, held);
            }
        }
        assert_true(done);
    }
    adopt_fixture_drop(&f);
}

/* Bad arguments take nothing: the reference stays the caller's. */
static void test_adopting_copy_bad_arguments_take_nothing(void **state)
{
    (void)state;
    check_bad_arguments_take_nothing(cctx_context_copy_with_adopting,
                                     cctx_context_new_with_adopting);
}

/* Round 0: replaces a's root entry; 1: adds b; 2: empty. */
static cctx_status adopting_copy(int round, cctx_var *a, cctx_var *b, tv_value *h,
                                 cctx_context **copy)
{
    return round == 0   ? cctx_context_copy_with_adopting(NULL, a, h, copy)
           : round == 1 ? cctx_context_copy_with_adopting(NULL, b, h, copy)
                        : cctx_context_new_with_adopting(b, h, copy);
}

/* A handed-over value whose last release uses the library (reads,
 * sets, copies): runs when the copy goes, on the thread that drops it. */
static void test_adopted_value_released_with_a_hook_that_uses_the_library(void **state)
{
    (void)state;
    check_copy_release_runs_hooks_that_use_the_library(adopting_copy, true);
}

/* ------------------------------ adopting copies of every shape (review) */

/* Every map shape an adopting copy can meet, beyond the root's own entries
 * that hamt_assoc_adopt builds itself: the variable in a child node
 * (replaced or added there), a root entry of another key pushed one level
 * down (with and without other entries), a collision made at the root
 * (shape rule 2), a collision root added to, replaced in and moved down, a
 * collision in a child, a root promoted to an array node, a source whose
 * root borrows its keys (a copy_with's path copy), and the value already
 * bound (in a child and in the root). Hashes are forced
 * (cctx__var_new_with_hash) so that each shape is the one named. For each
 * shape, from an explicit context and from the thread's current one, out
 * of memory at each allocation in turn: every failure leaves the value's
 * reference the caller's (its count unchanged, its hook not run) and no
 * allocation behind; the success holds exactly one reference to it (the
 * copy's, shared with the source when it was already bound), the copy has
 * the source's bindings plus the new one and passes the HAMT checks, the
 * source is unchanged, and the value's hook runs once, when the copy goes.
 * A hamt_assoc_adopt that took the reference on a path that also retains
 * it, released it on a path that stored it, or dropped it on a failure
 * after a partial build fails here (counts, or the hook's runs). */
enum { SH_VARS = 48 };
enum shape_id {
    SH_CHILD_REPLACE,
    SH_CHILD_ADD,
    SH_SPLIT,
    SH_SPLIT_ONLY,
    SH_COLLISION_NEW,
    SH_COLLISION_ADD,
    SH_COLLISION_REPLACE,
    SH_COLLISION_OTHER,
    SH_COLLISION_IN_CHILD,
    SH_PROMOTE,
    SH_BORROWING_REPLACE,
    SH_BORROWING_ADD,
    SH_SAME_IN_CHILD,
    SH_SAME_IN_ROOT,
    SH_COUNT
};
/* Variable indexes: Y 0x01; K 0x21 (Y's fragment at level 0, not at 1);
 * Z 0x41 (the same); C1, C2 0x01 (Y's whole hash); O 0x02; Q 20 and KQ
 * 20|0x20 (fragment 20); P: 32 variables, two per fragment 4..19, making
 * 16 children of the root. */
enum { V_Y, V_K, V_Z, V_C1, V_C2, V_O, V_Q, V_KQ, V_P0 };

static long shape_hook_runs;
static void shape_hook(tv_value *value, void *arg)
{
    (void)value;
    (void)arg;
    shape_hook_runs++;
}

/* The source of `shape` (one reference), its base (another reference,
 * or NULL) and the variable the copy binds. */
static cctx_context *shape_source(int shape, cctx_var **v, tv_value **vals, tv_value *same,
                                  cctx_context **base_out, int *target)
{
    static const struct {
        int target;
        int vars[4];
    } plain[] = {
        [SH_CHILD_REPLACE] = { V_K, { V_Y, V_K, V_O, -1 } },
        [SH_CHILD_ADD] = { V_K, { V_Y, V_Z, V_O, -1 } },
        [SH_SPLIT] = { V_K, { V_Y, V_O, -1 } },
        [SH_SPLIT_ONLY] = { V_K, { V_Y, -1 } },
        [SH_COLLISION_NEW] = { V_C1, { V_Y, -1 } },
        [SH_COLLISION_ADD] = { V_C2, { V_Y, V_C1, -1 } },
        [SH_COLLISION_REPLACE] = { V_C1, { V_Y, V_C1, -1 } },
        [SH_COLLISION_OTHER] = { V_K, { V_Y, V_C1, -1 } },
        [SH_COLLISION_IN_CHILD] = { V_C2, { V_Y, V_C1, V_O, -1 } },
    };
    cctx_context *src;
    *base_out = NULL;
    assert_ok(cctx_context_new(&src));
    if (shape < (int)(sizeof plain / sizeof plain[0]) && plain[shape].vars[0] >= 0 &&
        shape != SH_PROMOTE) {
        for (int i = 0; i < 4 && plain[shape].vars[i] >= 0; i++)
            assert_ok(cctx_context_set(src, v[plain[shape].vars[i]], vals[plain[shape].vars[i]],
                                       NULL));
        *target = plain[shape].target;
        return src;
    }
    switch (shape) {
    case SH_PROMOTE:
        for (int i = V_P0; i < V_P0 + 32; i++)
            assert_ok(cctx_context_set(src, v[i], vals[i], NULL));
        assert_ok(cctx_context_set(src, v[V_Q], vals[V_Q], NULL));
        *target = V_KQ;
        return src;
    case SH_BORROWING_REPLACE:
    case SH_BORROWING_ADD: {
        /* The source is a copy_with of a shared base: its root is a path
         * copy that may borrow the base's keys. */
        cctx_context *base = src;
        assert_ok(cctx_context_set(base, v[V_O], vals[V_O], NULL));
        assert_ok(cctx_context_set(base, v[V_Q], vals[V_Q], NULL));
        assert_ok(cctx_context_set(base, v[V_Y], vals[V_Y], NULL));
        assert_ok(cctx_context_copy_with(base, v[V_O], vals[V_Z], &src));
        *base_out = base;
        *target = shape == SH_BORROWING_REPLACE ? V_Q : V_KQ;
        return src;
    }
    case SH_SAME_IN_CHILD:
        assert_ok(cctx_context_set(src, v[V_Y], vals[V_Y], NULL));
        assert_ok(cctx_context_set(src, v[V_K], same, NULL));
        *target = V_K;
        return src;
    case SH_SAME_IN_ROOT:
        assert_ok(cctx_context_set(src, v[V_O], same, NULL));
        assert_ok(cctx_context_set(src, v[V_Y], vals[V_Y], NULL));
        *target = V_O;
        return src;
    }
    fail_msg("no shape %d", shape);
    return NULL;
}

static void test_adopting_copy_every_shape_and_failure(void **state)
{
    (void)state;
    cctx_var *v[SH_VARS];
    tv_value *vals[SH_VARS];
    uint32_t hashes[SH_VARS] = { [V_Y] = 0x01, [V_K] = 0x21, [V_Z] = 0x41, [V_C1] = 0x01,
                                 [V_C2] = 0x01, [V_O] = 0x02, [V_Q] = 20, [V_KQ] = 20 | 0x20 };
    for (int i = 0; i < 32; i++)
        hashes[V_P0 + i] = (uint32_t)(4 + i / 2) | (uint32_t)(i % 2) << 5;
    const int nvars = V_P0 + 32;
    for (int i = 0; i < nvars; i++) {
        assert_ok(cctx__var_new_with_hash("v", &tv_ops, hashes[i], &v[i]));
        vals[i] = tv_new(i);
    }
    for (int shape = 0; shape < SH_COUNT; shape++) {
        for (int current = 0; current < 2; current++) {
            const bool same = shape == SH_SAME_IN_CHILD || shape == SH_SAME_IN_ROOT;
            shape_hook_runs = 0;
            tv_value *n = tv_new_hooked(1000 + shape, shape_hook, NULL);
            cctx_context *base = NULL;
            int target = -1;
            cctx_context *src = shape_source(shape, v, vals, same ? n : NULL, &base, &target);
            assert_int_equal(cctx__context_check(src), 0);
            /* What the source binds, before. */
            tv_value *before[SH_VARS];
            for (int i = 0; i < nvars; i++)
                before[i] = value_in(src, v[i]);
            if (current)
                assert_ok(cctx_context_enter(src));
            const int held = n->refcnt; /* ours, plus the source's with `same` */
            assert_int_equal(held, same ? 2 : 1);
            cctx_context *copy = NULL;
            bool done = false;
            for (long nth = 1; !done && nth < 80; nth++) {
                const long allocs = cctx__live_allocations();
                cctx__fail_allocation(nth);
                cctx_status st = cctx_context_copy_with_adopting(current ? NULL : src, v[target], n,
                                                                 &copy);
                cctx__fail_allocation(0);
                if (st != CCTX_OK) {
                    assert_int_equal(st, CCTX_ENOMEM);
                    assert_null(copy);
                    assert_int_equal(cctx__live_allocations(), allocs);
                    assert_int_equal(n->refcnt, held);
                    assert_int_equal(shape_hook_runs, 0);
                    continue;
                }
                done = true;
            }
            assert_true(done);
            if (current)
                assert_ok(cctx_context_exit(src));
            assert_int_equal(cctx__context_check(copy), 0);
            assert_int_equal(n->refcnt, 1);
            for (int i = 0; i < nvars; i++) {
                assert_ptr_equal(value_in(src, v[i]), before[i]);
                assert_ptr_equal(value_in(copy, v[i]), i == target ? n : before[i]);
            }
            cctx_context_release(src);
            if (base != NULL)
                cctx_context_release(base);
            assert_int_equal(shape_hook_runs, 0);
            for (int i = 0; i < nvars; i++)
                if (before[i] != NULL && i != target)
                    assert_ptr_equal(value_in(copy, v[i]), before[i]);
            cctx_context_release(copy);
            assert_int_equal(shape_hook_runs, 1);
        }
    }
    for (int i = 0; i < nvars; i++) {
        assert_int_equal(vals[i]->refcnt, 1);
        tv_drop(vals[i]);
        cctx_var_release(v[i]);
    }
}

/* A variable whose release callback uses the library on EVERY release
 * (not only the last: a C binding's bookkeeping may), bound by an adopting
 * copy on the paths that release the handed-over reference inside the
 * call (hamt_assoc's: a child node, a collision, the value already bound),
 * from the current context: the callback writes the current context (the
 * copy's source, whose root the copy holds a credit on) and makes a copy
 * of its own in the middle of the copy. The copy is still the source plus
 * the one binding, and every count comes back. */
static cctx_var *busy_probe;
static tv_value *busy_value;
static int busy_depth;
static long busy_calls;
static void busy_retain(void *p)
{
    tv_ops.retain(p);
}
static void busy_release(void *p)
{
    if (busy_depth == 0 && busy_probe != NULL) {
        busy_depth++;
        busy_calls++;
        cctx_token *t = NULL;
        T_CHECK(cctx_var_set(busy_probe, busy_value, &t) == CCTX_OK);
        cctx_context *inner = NULL;
        T_CHECK(cctx_context_copy_with(NULL, busy_probe, busy_value, &inner) == CCTX_OK);
        if (inner != NULL)
            cctx_context_release(inner);
        if (t != NULL) {
            T_CHECK(cctx_var_reset(busy_probe, t) == CCTX_OK);
            cctx_token_release(t);
        }
        busy_depth--;
    }
    tv_ops.release(p);
}
static const cctx_value_ops busy_ops = { busy_retain, busy_release };

static void test_adopting_copy_whose_release_callback_writes_the_source(void **state)
{
    (void)state;
    cctx_var *y, *k, *c, *probe;
    assert_ok(cctx__var_new_with_hash("y", &busy_ops, 0x01, &y));
    assert_ok(cctx__var_new_with_hash("k", &busy_ops, 0x21, &k));
    assert_ok(cctx__var_new_with_hash("c", &busy_ops, 0x01, &c));
    assert_ok(cctx_var_new("probe", &tv_ops, &probe));
    tv_value *vy = tv_new(1), *vk = tv_new(2), *w = tv_new(3);
    cctx_token *ty, *tk;
    assert_ok(cctx_var_set(y, vy, &ty));
    assert_ok(cctx_var_set(k, vk, &tk)); /* y and k share a child node */
    busy_probe = probe;
    busy_value = w;
    const long failures = thread_failures();
    cctx_var *targets[] = { k, c, y };
    for (int round = 0; round < 4; round++) {
        shape_hook_runs = 0;
        tv_value *n = round == 3 ? vy : tv_new_hooked(10 + round, shape_hook, NULL);
        if (round == 3)
            tv_ops.retain(n); /* y already holds vy: the same value again */
        const long calls = busy_calls;
        cctx_context *copy = NULL;
        assert_ok(cctx_context_copy_with_adopting(NULL, targets[round % 3], n, &copy));
        /* The handed-over reference was released inside the call (the
         * paths into a child or a collision retain, then release). */
        assert_int_equal(busy_calls - calls, 1);
        assert_int_equal(cctx__context_check(copy), 0);
        assert_ptr_equal(value_in(copy, targets[round % 3]), n);
        assert_ptr_equal(value_in(copy, y), round % 3 == 2 ? n : vy);
        assert_ptr_equal(value_in(copy, k), round % 3 == 0 ? n : vk);
        assert_null(value_in(copy, probe));
        assert_null(value_in(cctx_context_current(), probe));
        assert_ptr_equal(value_in(cctx_context_current(), y), vy);
        busy_probe = NULL; /* the copy's release: plain */
        cctx_context_release(copy);
        busy_probe = probe;
        /* The handed-over reference went with the copy: a new value's hook
         * ran then; vy is back to ours and y's in the current context. */
        if (round == 3)
            assert_int_equal(n->refcnt, 2);
        else
            assert_int_equal(shape_hook_runs, 1);
    }
    busy_probe = NULL;
    assert_int_equal(thread_failures(), failures);
    assert_ok(cctx_var_reset(k, tk));
    assert_ok(cctx_var_reset(y, ty));
    cctx_token_release(tk);
    cctx_token_release(ty);
    assert_int_equal(w->refcnt, 1);
    tv_drop(vy);
    tv_drop(vk);
    tv_drop(w);
    cctx_var_release(y);
    cctx_var_release(k);
    cctx_var_release(c);
    cctx_var_release(probe);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, nothing_left_setup, nothing_left_teardown)
    const struct CMUnitTest tests[] = {
        T(test_copy_with_current_adds_one_binding),
        T(test_copy_with_the_same_value_is_an_equal_copy),
        T(test_copy_with_an_explicit_context),
        T(test_new_with_has_only_that_binding),
        T(test_copy_with_on_a_thread_without_state),
        T(test_copy_with_bad_arguments_change_nothing),
        T(test_copy_with_out_of_memory_changes_nothing),
        T(test_release_of_a_copy_runs_callbacks_that_use_the_library),
        T(test_a_retain_callback_that_writes_the_source_is_safe),
        T(test_adopting_copy_takes_over_the_reference),
        T(test_adopting_copy_out_of_memory_leaves_the_reference),
        T(test_adopting_copy_bad_arguments_take_nothing),
        T(test_adopted_value_released_with_a_hook_that_uses_the_library),
        T(test_adopting_copy_every_shape_and_failure),
        T(test_adopting_copy_whose_release_callback_writes_the_source),
    };
#undef T
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cctx_thread_cleanup();
    return failed;
}
