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

static void test_copy_with_bad_arguments_change_nothing(void **state)
{
    (void)state;
    cctx_var *a;
    assert_ok(cctx_var_new("a", &tv_ops, &a));
    tv_value *x = tv_new(1);
    cctx_context *out = NULL;
    assert_int_equal(cctx_context_copy_with(NULL, a, x, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_copy_with(NULL, NULL, x, &out), CCTX_EINVAL);
    assert_int_equal(cctx_context_new_with(NULL, x, &out), CCTX_EINVAL);
    assert_int_equal(cctx_context_new_with(a, x, NULL), CCTX_EINVAL);
    assert_null(out);
    assert_int_equal(x->refcnt, 1);
    tv_drop(x);
    cctx_var_release(a);
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

static void test_release_of_a_copy_runs_callbacks_that_use_the_library(void **state)
{
    (void)state;
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
        /* round 0: from the current context; 1: explicit; 2: empty. */
        cctx_status st = round == 0   ? cctx_context_copy_with(NULL, b, h, &copy)
                         : round == 1 ? cctx_context_copy_with(cctx_context_current(), b, h, &copy)
                                      : cctx_context_new_with(b, h, &copy);
        assert_ok(st);
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

/* Sets up the source for `c`, makes an adopting copy binding vars[0] to a
 * fresh value whose only reference is handed over, and checks the counts:
 * no retain callback for the value on the paths that adopt, exactly one
 * release in all (the copy's, when it goes), and the value's last release
 * runs its hook then and only then. */
static long adopt_hook_runs;
static void count_hook(tv_value *value, void *arg)
{
    (void)value;
    (void)arg;
    adopt_hook_runs++;
}

static void test_adopting_copy_takes_over_the_reference(void **state)
{
    (void)state;
    cctx_var *vars[40];
    tv_value *vals[40];
    for (int i = 0; i < 40; i++) {
        assert_ok(cctx_var_new("v", &tv_ops, &vars[i]));
        vals[i] = tv_new(i);
    }
    for (int c = 0; c < ADOPT_CASES; c++) {
        cctx_context *src = NULL;
        cctx_token *t = NULL;
        adopt_hook_runs = 0;
        tv_value *n = tv_new_hooked(100 + c, count_hook, NULL);
        if (c == ADOPT_REPLACE)
            assert_ok(cctx_var_set(vars[0], vals[0], &t));
        if (c == ADOPT_ADD)
            assert_ok(cctx_var_set(vars[1], vals[1], &t));
        if (c == ADOPT_SAME) {
            /* The variable holds `n` already: the copy needs no new
             * reference, so the handed-over one is released (not the last). */
            assert_ok(cctx_var_set(vars[0], n, &t));
        }
        if (c == ADOPT_ARRAY) {
            assert_ok(cctx_context_new(&src));
            for (int i = 0; i < 40; i++)
                assert_ok(cctx_context_set(src, vars[i], vals[i], NULL));
        }
        const long retains = tv_retains(), releases = tv_releases();
        cctx_context *copy = NULL;
        cctx_status st = c == ADOPT_EMPTY ? cctx_context_new_with_adopting(vars[0], n, &copy)
                                          : cctx_context_copy_with_adopting(src, vars[0], n, &copy);
        assert_ok(st);
        assert_ptr_equal(value_in(copy, vars[0]), n);
        if (c == ADOPT_ADD)
            assert_ptr_equal(value_in(copy, vars[1]), vals[1]);
        if (c == ADOPT_ARRAY)
            for (int i = 1; i < 40; i++)
                assert_ptr_equal(value_in(copy, vars[i]), vals[i]);
        /* The one reference moved into the copy (with SAME, the copy
         * shares the current context's map, which holds the one left). */
        assert_int_equal(n->refcnt, 1);
        if (c == ADOPT_EMPTY || c == ADOPT_REPLACE || c == ADOPT_ADD) {
            /* Taken over: no callback ran for the value (ADOPT_REPLACE and
             * ADOPT_ADD retain the root's other values: one each). */
            assert_int_equal(tv_retains() - retains, c == ADOPT_EMPTY ? 0 : 1 - (c == ADOPT_REPLACE));
            assert_int_equal(tv_releases() - releases, 0);
        }
        if (src != NULL)
            cctx_context_release(src);
        if (t != NULL) {
            assert_ok(cctx_var_reset(c == ADOPT_ADD ? vars[1] : vars[0], t));
            cctx_token_release(t);
        }
        assert_int_equal(adopt_hook_runs, 0);
        cctx_context_release(copy); /* the last reference: the hook runs */
        assert_int_equal(adopt_hook_runs, 1);
    }
    for (int i = 0; i < 40; i++) {
        assert_int_equal(vals[i]->refcnt, 1);
        tv_drop(vals[i]);
        cctx_var_release(vars[i]);
    }
}

/* Out of memory at each allocation in turn, for each case: CCTX_ENOMEM
 * leaves the reference with the caller (count 1, no release callback
 * ran), nothing made; the first success takes it over. */
static void test_adopting_copy_out_of_memory_leaves_the_reference(void **state)
{
    (void)state;
    cctx_var *vars[40];
    tv_value *vals[40];
    for (int i = 0; i < 40; i++) {
        assert_ok(cctx_var_new("v", &tv_ops, &vars[i]));
        vals[i] = tv_new(i);
    }
    for (int c = 0; c < ADOPT_CASES; c++) {
        cctx_context *src = NULL;
        cctx_token *t = NULL;
        adopt_hook_runs = 0;
        tv_value *n = tv_new_hooked(200 + c, count_hook, NULL);
        if (c == ADOPT_REPLACE)
            assert_ok(cctx_var_set(vars[0], vals[0], &t));
        if (c == ADOPT_ADD)
            assert_ok(cctx_var_set(vars[1], vals[1], &t));
        if (c == ADOPT_SAME)
            assert_ok(cctx_var_set(vars[0], n, &t));
        if (c == ADOPT_ARRAY) {
            assert_ok(cctx_context_new(&src));
            for (int i = 0; i < 40; i++)
                assert_ok(cctx_context_set(src, vars[i], vals[i], NULL));
        }
        const int held = n->refcnt;
        bool done = false;
        for (long nth = 1; !done && nth < 50; nth++) {
            const long allocs = cctx__live_allocations();
            const long retains = tv_retains(), releases = tv_releases();
            cctx__fail_allocation(nth);
            cctx_context *copy = NULL;
            cctx_status st = c == ADOPT_EMPTY
                                 ? cctx_context_new_with_adopting(vars[0], n, &copy)
                                 : cctx_context_copy_with_adopting(src, vars[0], n, &copy);
            cctx__fail_allocation(0);
            if (st == CCTX_OK) {
                assert_ptr_equal(value_in(copy, vars[0]), n);
                assert_int_equal(n->refcnt, 1); /* as in the test above */
                if (src != NULL)
                    cctx_context_release(src);
                if (t != NULL) {
                    assert_ok(cctx_var_reset(c == ADOPT_ADD ? vars[1] : vars[0], t));
                    cctx_token_release(t);
                }
                assert_int_equal(adopt_hook_runs, 0);
                cctx_context_release(copy);
                assert_int_equal(adopt_hook_runs, 1);
                done = true;
            } else {
                assert_int_equal(st, CCTX_ENOMEM);
                assert_null(copy);
                assert_int_equal(cctx__live_allocations(), allocs);
                assert_int_equal(tv_retains() - retains, tv_releases() - releases);
                /* Still ours (plus the current context's, with SAME). */
                assert_int_equal(n->refcnt, held);
            }
        }
        assert_true(done);
    }
    for (int i = 0; i < 40; i++) {
        assert_int_equal(vals[i]->refcnt, 1);
        tv_drop(vals[i]);
        cctx_var_release(vars[i]);
    }
}

/* Bad arguments take nothing: the reference stays the caller's. */
static void test_adopting_copy_bad_arguments_take_nothing(void **state)
{
    (void)state;
    cctx_var *a;
    assert_ok(cctx_var_new("a", &tv_ops, &a));
    tv_value *x = tv_new(1);
    cctx_context *out = NULL;
    assert_int_equal(cctx_context_copy_with_adopting(NULL, a, x, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_copy_with_adopting(NULL, NULL, x, &out), CCTX_EINVAL);
    assert_int_equal(cctx_context_new_with_adopting(NULL, x, &out), CCTX_EINVAL);
    assert_int_equal(cctx_context_new_with_adopting(a, x, NULL), CCTX_EINVAL);
    assert_null(out);
    assert_int_equal(x->refcnt, 1);
    tv_drop(x);
    cctx_var_release(a);
}

/* A handed-over value whose last release uses the library (reads,
 * sets, copies): runs when the copy goes, on the thread that drops it. */
static void test_adopted_value_released_with_a_hook_that_uses_the_library(void **state)
{
    (void)state;
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
        /* round 0: replaces a's root entry; 1: adds b; 2: empty. */
        cctx_status st = round == 0   ? cctx_context_copy_with_adopting(NULL, a, h, &copy)
                         : round == 1 ? cctx_context_copy_with_adopting(NULL, b, h, &copy)
                                      : cctx_context_new_with_adopting(b, h, &copy);
        assert_ok(st); /* h's one reference is the copy's now */
        assert_int_equal(env.ran, round);
        cctx_context_release(copy); /* runs the hook */
        assert_int_equal(env.ran, round + 1);
        assert_int_equal(env.seen, 7);
    }
    assert_int_equal(thread_failures(), failures);
    assert_ptr_equal(value_in(cctx_context_current(), a), base);
    assert_ok(cctx_var_reset(a, t));
    cctx_token_release(t);
    tv_drop(base);
    tv_drop(w);
    cctx_var_release(a);
    cctx_var_release(b);
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
    };
#undef T
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cctx_thread_cleanup();
    return failed;
}
