/*
 * test_context.c — PEP 567 semantics of variables, tokens and contexts in
 * C, every error path, thread lifetimes, and allocation-failure atomicity.
 */
#include "test_support.h"

/* The shape of a context's map, for the tests of how variables hash. */
#include "internal.h"
#include "context.h"
#include "hamt.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>

static cctx_var *new_var(const char *name)
{
    cctx_var *v = NULL;
    assert_ok(cctx_var_new(name, &tv_ops, &v));
    return v;
}

static long get_id(cctx_var *var)
{
    void *out = NULL;
    cctx_status st = cctx_var_get(var, &out);
    if (st == CCTX_NOT_FOUND)
        return -1;
    assert_int_equal(st, CCTX_OK);
    return out ? ((tv_value *)out)->id : 0;
}

static void leave_thread_clean(void)
{
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(tv_live(), 0);
}

/* ------------------------------------------------------------ variables */

static void test_get_precedence(void **state)
{
    (void)state;
    tv_value *def = tv_new(100), *call_def = tv_new(200), *val = tv_new(1);
    cctx_var *plain = new_var("plain");
    cctx_var *with_def = NULL;
    assert_ok(cctx_var_new_with_default("with_def", &tv_ops, def, &with_def));

    void *out = NULL;
    assert_int_equal(cctx_var_get(plain, &out), CCTX_NOT_FOUND);
    assert_ok(cctx_var_get_default(plain, call_def, &out));
    assert_ptr_equal(out, call_def);
    assert_ok(cctx_var_get(with_def, &out));
    assert_ptr_equal(out, def);
    /* A default given to the call wins over the variable's default. */
    assert_ok(cctx_var_get_default(with_def, call_def, &out));
    assert_ptr_equal(out, call_def);
    assert_ok(cctx_var_default(with_def, &out));
    assert_ptr_equal(out, def);
    assert_int_equal(cctx_var_default(plain, &out), CCTX_NOT_FOUND);

    /* A value in the context wins over both. */
    assert_ok(cctx_var_set(with_def, val, NULL));
    assert_ok(cctx_var_get(with_def, &out));
    assert_ptr_equal(out, val);
    assert_ok(cctx_var_get_default(with_def, call_def, &out));
    assert_ptr_equal(out, val);

    assert_string_equal(cctx_var_name(with_def), "with_def");
    cctx_var_release(plain);
    cctx_var_release(with_def);
    tv_drop(def);
    tv_drop(call_def);
    tv_drop(val);
    leave_thread_clean();
}

static void test_set_reset_tokens(void **state)
{
    (void)state;
    cctx_var *x = new_var("x");
    tv_value *a = tv_new(1), *b = tv_new(2);
    cctx_token *t1 = NULL, *t2 = NULL;
    void *out;

    assert_ok(cctx_var_set(x, a, &t1));
    assert_int_equal(cctx_token_old_value(t1, &out), CCTX_NOT_FOUND); /* MISSING */
    assert_ptr_equal(cctx_token_var(t1), x);
    assert_false(cctx_token_is_used(t1));
    assert_int_equal(get_id(x), 1);

    assert_ok(cctx_var_set(x, b, &t2));
    assert_ok(cctx_token_old_value(t2, &out));
    assert_ptr_equal(out, a);
    assert_int_equal(get_id(x), 2);

    assert_ok(cctx_var_reset(x, t2));
    assert_true(cctx_token_is_used(t2));
    assert_int_equal(get_id(x), 1);
    assert_int_equal(cctx_var_reset(x, t2), CCTX_TOKEN_USED);
    assert_int_equal(get_id(x), 1);

    /* Resetting to MISSING removes the variable again. */
    assert_ok(cctx_var_reset(x, t1));
    assert_int_equal(get_id(x), -1);
    cctx_context *cur = NULL;
    assert_ok(cctx_context_copy_current(&cur));
    assert_int_equal(cctx_context_count(cur), 0);
    cctx_context_release(cur);

    cctx_token_release(t1);
    cctx_token_release(t2);
    cctx_var_release(x);
    tv_drop(a);
    tv_drop(b);
    leave_thread_clean();
}

static void test_reset_errors_in_python_order(void **state)
{
    (void)state;
    cctx_var *x = new_var("x"), *y = new_var("y");
    tv_value *a = tv_new(1);
    cctx_token *tx = NULL;
    assert_ok(cctx_var_set(x, a, &tx));

    /* Wrong variable. */
    assert_int_equal(cctx_var_reset(y, tx), CCTX_TOKEN_WRONG_VAR);
    assert_false(cctx_token_is_used(tx));

    /* Wrong context: the token was made in this thread's base context. */
    cctx_context *other = NULL;
    assert_ok(cctx_context_new(&other));
    assert_ok(cctx_context_enter(other));
    assert_int_equal(cctx_var_reset(x, tx), CCTX_TOKEN_WRONG_CONTEXT);
    /* Wrong variable is reported before wrong context. */
    assert_int_equal(cctx_var_reset(y, tx), CCTX_TOKEN_WRONG_VAR);
    assert_int_equal(get_id(x), -1);
    assert_ok(cctx_context_exit(other));
    assert_int_equal(get_id(x), 1); /* nothing changed by the failures */

    assert_ok(cctx_var_reset(x, tx));
    /* Used is reported before everything else. */
    assert_int_equal(cctx_var_reset(y, tx), CCTX_TOKEN_USED);
    assert_ok(cctx_context_enter(other));
    assert_int_equal(cctx_var_reset(x, tx), CCTX_TOKEN_USED);
    assert_ok(cctx_context_exit(other));

    cctx_context_release(other);
    cctx_token_release(tx);
    cctx_var_release(x);
    cctx_var_release(y);
    tv_drop(a);
    leave_thread_clean();
}

/* ------------------------------------------------------------ contexts */

static void test_new_context_is_empty_and_copies_are_independent(void **state)
{
    (void)state;
    cctx_var *x = new_var("x");
    tv_value *a = tv_new(1), *b = tv_new(2);
    cctx_context *c1 = NULL, *c2 = NULL;
    assert_ok(cctx_context_new(&c1));
    assert_int_equal(cctx_context_count(c1), 0);
    assert_false(cctx_context_contains(c1, x));

    assert_ok(cctx_context_set(c1, x, a, NULL));
    assert_ok(cctx_context_copy(c1, &c2));
    assert_true(cctx_context_equal(c1, c2));
    assert_ok(cctx_context_set(c2, x, b, NULL));
    assert_false(cctx_context_equal(c1, c2));

    void *out;
    assert_ok(cctx_context_lookup(c1, x, &out));
    assert_ptr_equal(out, a);
    cctx_var_release_value(x, out);
    assert_ok(cctx_context_lookup(c2, x, &out));
    assert_ptr_equal(out, b);
    cctx_var_release_value(x, out);

    assert_ok(cctx_context_delete(c2, x));
    assert_int_equal(cctx_context_delete(c2, x), CCTX_NOT_FOUND);
    assert_int_equal(cctx_context_count(c2), 0);
    assert_int_equal(cctx_context_count(c1), 1);

    cctx_context_release(c1);
    cctx_context_release(c2);
    cctx_var_release(x);
    tv_drop(a);
    tv_drop(b);
    leave_thread_clean();
}

static void test_run_sets_are_visible_through_the_context(void **state)
{
    (void)state;
    cctx_var *x = new_var("x");
    tv_value *a = tv_new(1), *b = tv_new(2);
    assert_ok(cctx_var_set(x, a, NULL));

    cctx_context *ctx = NULL;
    assert_ok(cctx_context_copy_current(&ctx));
    assert_ok(cctx_context_enter(ctx));
    assert_true(cctx_context_is_entered(ctx));
    assert_int_equal(get_id(x), 1);
    assert_ok(cctx_var_set(x, b, NULL));
    assert_int_equal(get_id(x), 2);
    assert_ok(cctx_context_exit(ctx));
    assert_false(cctx_context_is_entered(ctx));

    assert_int_equal(get_id(x), 1); /* the outer context never changed */
    void *out;
    assert_ok(cctx_context_get(ctx, x, &out));
    assert_ptr_equal(out, b);

    cctx_context_release(ctx);
    cctx_var_release(x);
    tv_drop(a);
    tv_drop(b);
    leave_thread_clean();
}

static cctx_var *run_var;
static void run_body(void *arg)
{
    tv_value *v = arg;
    assert_ok(cctx_var_set(run_var, v, NULL));
}

static void test_context_run(void **state)
{
    (void)state;
    run_var = new_var("r");
    tv_value *a = tv_new(7);
    cctx_context *ctx = NULL;
    assert_ok(cctx_context_new(&ctx));
    assert_ok(cctx_context_run(ctx, run_body, a));
    assert_int_equal(get_id(run_var), -1);
    void *out;
    assert_ok(cctx_context_get(ctx, run_var, &out));
    assert_ptr_equal(out, a);
    assert_int_equal(cctx_context_run(ctx, NULL, NULL), CCTX_EINVAL);
    cctx_context_release(ctx);
    cctx_var_release(run_var);
    tv_drop(a);
    leave_thread_clean();
}

static void test_enter_exit_errors(void **state)
{
    (void)state;
    cctx_context *a = NULL, *b = NULL;
    assert_ok(cctx_context_new(&a));
    assert_ok(cctx_context_new(&b));

    assert_int_equal(cctx_context_exit(a), CCTX_NOT_CURRENT); /* never entered */
    assert_ok(cctx_context_enter(a));
    assert_int_equal(cctx_context_enter(a), CCTX_ALREADY_ENTERED); /* nested */
    assert_ok(cctx_context_enter(b));
    assert_int_equal(cctx_context_exit(a), CCTX_NOT_CURRENT); /* not current */
    assert_int_equal(cctx_thread_cleanup(), CCTX_ALREADY_ENTERED);
    assert_ok(cctx_context_exit(b));
    assert_ok(cctx_context_exit(a));
    assert_int_equal(cctx_context_exit(a), CCTX_NOT_CURRENT);

    /* Claims exclude enters and the other way round. */
    assert_ok(cctx_context_claim(a));
    assert_int_equal(cctx_context_enter(a), CCTX_ALREADY_ENTERED);
    assert_int_equal(cctx_context_claim(a), CCTX_ALREADY_ENTERED);
    assert_ok(cctx_context_unclaim(a));
    assert_int_equal(cctx_context_unclaim(a), CCTX_NOT_ENTERED);
    assert_ok(cctx_context_enter(a));
    assert_int_equal(cctx_context_claim(a), CCTX_ALREADY_ENTERED);
    assert_ok(cctx_context_exit(a));

    cctx_context_release(a);
    cctx_context_release(b);
    leave_thread_clean();
}

struct cross_thread {
    cctx_context *ctx;
    cctx_var *var;
    cctx_status enter_status, set_status, exit_status;
    size_t count_seen;
};

static void *try_enter_elsewhere(void *p)
{
    struct cross_thread *c = p;
    c->enter_status = cctx_context_enter(c->ctx);
    c->set_status = cctx_context_set(c->ctx, c->var, NULL, NULL);
    c->exit_status = cctx_context_exit(c->ctx);
    c->count_seen = cctx_context_count(c->ctx);
    return NULL;
}

static void test_entered_context_refused_on_another_thread(void **state)
{
    (void)state;
    struct cross_thread c = { 0 };
    c.var = new_var("x");
    tv_value *a = tv_new(1);
    assert_ok(cctx_context_new(&c.ctx));
    assert_ok(cctx_context_enter(c.ctx));
    assert_ok(cctx_var_set(c.var, a, NULL));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, try_enter_elsewhere, &c), 0);
    pthread_join(t, NULL);
    assert_int_equal(c.enter_status, CCTX_ALREADY_ENTERED);
    assert_int_equal(c.set_status, CCTX_ALREADY_ENTERED);
    assert_int_equal(c.exit_status, CCTX_NOT_CURRENT);
    assert_int_equal(c.count_seen, 1); /* reading from outside is fine */
    assert_int_equal(get_id(c.var), 1);
    assert_ok(cctx_context_exit(c.ctx));

    /* Once exited, another thread may enter it. */
    pthread_create(&t, NULL, try_enter_elsewhere, &c);
    pthread_join(t, NULL);
    assert_int_equal(c.enter_status, CCTX_OK);
    assert_int_equal(c.set_status, CCTX_OK);
    assert_int_equal(c.exit_status, CCTX_OK);

    cctx_context_release(c.ctx);
    cctx_var_release(c.var);
    tv_drop(a);
    leave_thread_clean();
}

static void test_mapping_and_iteration(void **state)
{
    (void)state;
    enum { N = 300 };
    cctx_var *vars[N];
    tv_value *vals[N];
    cctx_context *ctx = NULL;
    assert_ok(cctx_context_new(&ctx));
    for (int i = 0; i < N; i++) {
        char name[16];
        snprintf(name, sizeof name, "v%d", i);
        vars[i] = new_var(name);
        vals[i] = tv_new(i);
        if (i % 3 != 0)
            assert_ok(cctx_context_set(ctx, vars[i], vals[i], NULL));
    }
    assert_int_equal(cctx_context_count(ctx), N - (N + 2) / 3);
    int seen[N] = { 0 };
    cctx_iter *it = NULL;
    assert_ok(cctx_iter_new(ctx, &it));
    /* A write after the snapshot does not show in the iteration. */
    assert_ok(cctx_context_set(ctx, vars[0], vals[0], NULL));
    cctx_var *k;
    void *v;
    size_t n = 0;
    while (cctx_iter_next(it, &k, &v)) {
        tv_value *tv = v;
        assert_ptr_equal(vars[tv->id], k);
        seen[tv->id]++;
        n++;
    }
    assert_false(cctx_iter_next(it, &k, &v));
    cctx_iter_free(it);
    assert_int_equal(n, N - (N + 2) / 3);
    for (int i = 0; i < N; i++) {
        assert_int_equal(seen[i], i % 3 != 0 ? 1 : 0);
        assert_int_equal(cctx_context_contains(ctx, vars[i]), i % 3 != 0 || i == 0);
    }
    assert_int_equal(cctx__context_check(ctx), 0);
    cctx_context_release(ctx);
    for (int i = 0; i < N; i++) {
        cctx_var_release(vars[i]);
        tv_drop(vals[i]);
    }
    leave_thread_clean();
}

static void test_invalid_arguments(void **state)
{
    (void)state;
    cctx_var *x = new_var("x");
    cctx_context *ctx = NULL;
    cctx_token *tok = NULL;
    void *out = NULL;
    assert_ok(cctx_context_new(&ctx));
    assert_int_equal(cctx_var_new(NULL, NULL, &x), CCTX_EINVAL);
    assert_int_equal(cctx_var_new("n", NULL, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_var_new_ex("n", NULL, false, NULL, 0x80, &(cctx_var *){ NULL }), CCTX_EINVAL);
    assert_int_equal(cctx_var_get(NULL, &out), CCTX_EINVAL);
    assert_int_equal(cctx_var_get(x, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_var_set(NULL, NULL, &tok), CCTX_EINVAL);
    assert_int_equal(cctx_var_reset(x, NULL), CCTX_EINVAL);
    /* A handle of the wrong kind is detected by its magic number. */
    assert_int_equal(cctx_var_reset(x, (cctx_token *)ctx), CCTX_EINVAL);
    assert_int_equal(cctx_var_get((cctx_var *)ctx, &out), CCTX_EINVAL);
    assert_int_equal(cctx_context_enter(NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_enter((cctx_context *)x), CCTX_EINVAL);
    assert_int_equal(cctx_context_exit(NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_copy(NULL, &ctx), CCTX_EINVAL);
    assert_int_equal(cctx_context_copy(ctx, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_lookup(ctx, NULL, &out), CCTX_EINVAL);
    assert_int_equal(cctx_context_set(NULL, x, NULL, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_claim(NULL), CCTX_EINVAL);
    assert_int_equal(cctx_iter_new(NULL, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_count(NULL), 0);
    assert_false(cctx_context_contains(NULL, x));
    assert_false(cctx_context_equal(ctx, NULL));
    assert_null(cctx_var_name(NULL));
    assert_int_equal(cctx_token_old_value(NULL, &out), CCTX_EINVAL);
    assert_int_equal(cctx_thread_create(NULL, NULL, NULL, NULL), CCTX_EINVAL);
    cctx_var_release(NULL);
    cctx_context_release(NULL);
    cctx_token_release(NULL);
    cctx_iter_free(NULL);
    for (int s = 0; s <= CCTX_NOT_ENTERED; s++)
        assert_true(strlen(cctx_strerror((cctx_status)s)) > 0);
    assert_string_equal(cctx_strerror((cctx_status)999), "unknown ContextKit status");
    cctx_context_release(ctx);
    cctx_var_release(x);
    leave_thread_clean();
}

/* ------------------------------------------------------------ threads */

struct exit_job {
    cctx_var *var;
    long id;
};

static void *set_and_exit(void *p)
{
    struct exit_job *job = p;
    tv_value *v = tv_new(job->id);
    /* One value in the base context, one in an entered (leaked) context. */
    assert_ok(cctx_var_set(job->var, v, NULL));
    cctx_context *c = NULL;
    assert_ok(cctx_context_new(&c));
    assert_ok(cctx_context_enter(c));
    tv_value *w = tv_new(job->id + 1000);
    assert_ok(cctx_var_set(job->var, w, NULL));
    cctx_context_release(c); /* still entered: the thread holds it */
    tv_drop(v);
    tv_drop(w);
    return NULL;
}

static void test_thread_exit_releases_context_and_values(void **state)
{
    (void)state;
    long start_allocs = cctx__live_allocations();
    cctx_var *x = new_var("x");
    struct exit_job jobs[8];
    pthread_t t[8];
    for (int i = 0; i < 8; i++) {
        jobs[i] = (struct exit_job){ x, i };
        assert_int_equal(pthread_create(&t[i], NULL, set_and_exit, &jobs[i]), 0);
    }
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(tv_live(), 0);
    assert_int_equal(get_id(x), -1); /* a new thread sees none of their values */
    cctx_var_release(x);
    leave_thread_clean();
    assert_int_equal(cctx__live_allocations(), start_allocs);
}

struct child_view {
    cctx_var *inherited, *private_var;
    long inherited_id, private_id;
};

static void *child_reads(void *p)
{
    struct child_view *c = p;
    c->inherited_id = get_id(c->inherited);
    c->private_id = get_id(c->private_var);
    tv_value *v = tv_new(99);
    assert_ok(cctx_var_set(c->inherited, v, NULL)); /* must not leak back */
    tv_drop(v);
    return NULL;
}

static void test_thread_create_starts_in_a_copy(void **state)
{
    (void)state;
    struct child_view c = { 0 };
    c.inherited = new_var("inherited");
    assert_ok(cctx_var_new_ex("private", &tv_ops, false, NULL, CCTX_VAR_NOT_INHERITED,
                              &c.private_var));
    assert_int_equal(cctx_var_flags(c.private_var), CCTX_VAR_NOT_INHERITED);
    tv_value *a = tv_new(1), *b = tv_new(2);
    assert_ok(cctx_var_set(c.inherited, a, NULL));
    assert_ok(cctx_var_set(c.private_var, b, NULL));
    pthread_t t;
    assert_ok(cctx_thread_create(&t, NULL, child_reads, &c));
    pthread_join(t, NULL);
    assert_int_equal(c.inherited_id, 1);
    assert_int_equal(c.private_id, -1);
    assert_int_equal(get_id(c.inherited), 1);
    assert_int_equal(get_id(c.private_var), 2);

    /* An explicit copy keeps non-inherited variables. */
    cctx_context *copy = NULL;
    assert_ok(cctx_context_copy_current(&copy));
    assert_true(cctx_context_contains(copy, c.private_var));
    cctx_context_release(copy);

    cctx_var_release(c.inherited);
    cctx_var_release(c.private_var);
    tv_drop(a);
    tv_drop(b);
    leave_thread_clean();
}

/* ------------------------------------------------------------ lifetimes */

static void test_values_released_exactly_once(void **state)
{
    (void)state;
    long start_allocs = cctx__live_allocations();
    cctx_var *x = new_var("x");
    tv_value *a = tv_new(1), *b = tv_new(2);
    cctx_token *t = NULL;
    assert_ok(cctx_var_set(x, a, NULL));
    assert_ok(cctx_var_set(x, b, &t));
    tv_drop(a);
    tv_drop(b);
    assert_int_equal(tv_live(), 2); /* a lives in the token, b in the context */
    cctx_context *copy = NULL;
    assert_ok(cctx_context_copy_current(&copy));
    assert_ok(cctx_var_reset(x, t));
    cctx_token_release(t);
    assert_int_equal(tv_live(), 2); /* b still in the copy */
    cctx_context_release(copy);
    assert_int_equal(tv_live(), 1);
    /* The variable outlives the user's reference while a context holds it. */
    cctx_var_release(x);
    leave_thread_clean();
    assert_int_equal(cctx__live_allocations(), start_allocs);
}

/* The per-thread lookup cache must never answer for a context that is no
 * longer current, nor for a root replaced since — even when a freed root's
 * address is reused by the next context's root. */
static void test_lookup_cache_follows_every_change(void **state)
{
    (void)state;
    cctx_var *x = new_var("x");
    for (long i = 0; i < 2000; i++) {
        tv_value *v = tv_new(i), *w = tv_new(i + 100000);
        cctx_context *c = NULL;
        assert_ok(cctx_context_new(&c));
        assert_ok(cctx_context_set(c, x, v, NULL));
        assert_ok(cctx_context_enter(c));
        assert_int_equal(get_id(x), i);       /* fills the cache */
        assert_int_equal(get_id(x), i);       /* hits it */
        assert_ok(cctx_context_set(c, x, w, NULL)); /* explicit write, same thread */
        assert_int_equal(get_id(x), i + 100000);
        assert_ok(cctx_context_delete(c, x));
        assert_int_equal(get_id(x), -1);
        assert_ok(cctx_context_exit(c));
        assert_int_equal(get_id(x), -1);      /* the base context has none */
        cctx_context_release(c);              /* frees the root: its address may be reused */
        tv_drop(v);
        tv_drop(w);
    }
    cctx_var_release(x);
    leave_thread_clean();
}

/* ------------------------------------------------------------ OOM */

/* Runs `op` with the nth allocation failing for n = 1, 2, … until it
 * succeeds with no failure injected. After each failure `check` verifies
 * that nothing changed. Returns how many failure points were covered. */
typedef cctx_status (*op_fn)(void *env);
typedef void (*check_fn)(void *env);

static int walk_failures(op_fn op, check_fn check, void *env)
{
    for (int n = 1;; n++) {
        long fails = cctx__allocation_failures();
        cctx__fail_allocation(n);
        cctx_status st = op(env);
        cctx__fail_allocation(0);
        if (cctx__allocation_failures() == fails) {
            assert_int_equal(st, CCTX_OK);
            return n - 1;
        }
        assert_int_equal(st, CCTX_ENOMEM);
        check(env);
    }
}

struct oom_env {
    cctx_var *vars[40];
    tv_value *vals[40];
    cctx_context *ctx;
    cctx_context *out_ctx;
    cctx_token *token;
    cctx_var *new_var;
    cctx_iter *iter;
    cctx_token *reset_token; /* for op_reset */
    tv_value *replaced;      /* the value a replace must leave in place */
    int target;
    long live_before;
    long allocs_before;
};

static void check_ctx_unchanged(void *p)
{
    struct oom_env *e = p;
    assert_int_equal(cctx_context_count(e->ctx), 30);
    for (int i = 0; i < 40; i++) {
        void *out;
        cctx_status st = cctx_context_get(e->ctx, e->vars[i], &out);
        if (i < 30) {
            assert_int_equal(st, CCTX_OK);
            assert_ptr_equal(out, e->vals[i]);
        } else {
            assert_int_equal(st, CCTX_NOT_FOUND);
        }
    }
    assert_int_equal(tv_live(), e->live_before);
    assert_int_equal(cctx__live_allocations(), e->allocs_before);
    assert_null(e->token);
    assert_null(e->out_ctx);
    assert_int_equal(cctx__context_check(e->ctx), 0);
}

static cctx_status op_set_new(void *p)
{
    struct oom_env *e = p;
    return cctx_context_set(e->ctx, e->vars[e->target], e->vals[e->target], &e->token);
}

static cctx_status op_reset(void *p)
{
    struct oom_env *e = p;
    return cctx_context_reset(e->ctx, e->vars[e->target], e->reset_token);
}

/* After a failed reset of a new variable's set: the token is unused and the
 * variable still counted. */
static void check_reset_unchanged(void *p)
{
    struct oom_env *e = p;
    assert_false(cctx_token_is_used(e->reset_token));
    assert_int_equal(cctx_context_count(e->ctx), 31);
}

/* After a failed replace: the old value is still bound. */
static void check_replace_unchanged(void *p)
{
    struct oom_env *e = p;
    void *out;
    assert_ok(cctx_context_get(e->ctx, e->vars[e->target], &out));
    assert_ptr_equal(out, e->replaced);
}

static cctx_status op_delete(void *p)
{
    struct oom_env *e = p;
    return cctx_context_delete(e->ctx, e->vars[e->target]);
}

static cctx_status op_copy(void *p)
{
    struct oom_env *e = p;
    return cctx_context_copy(e->ctx, &e->out_ctx);
}

static cctx_status op_iter(void *p)
{
    struct oom_env *e = p;
    return cctx_iter_new(e->ctx, &e->iter);
}

static cctx_status op_var_new(void *p)
{
    struct oom_env *e = p;
    return cctx_var_new_with_default("fresh", &tv_ops, e->vals[0], &e->new_var);
}

static void check_var_new(void *p)
{
    struct oom_env *e = p;
    assert_null(e->new_var);
    check_ctx_unchanged(p);
}

static void test_allocation_failure_changes_nothing(void **state)
{
    (void)state;
    struct oom_env e = { 0 };
    assert_ok(cctx_context_new(&e.ctx));
    for (int i = 0; i < 40; i++) {
        assert_ok(cctx__var_new_with_hash("v", &tv_ops, (uint32_t)(i % 7) * 0x21u, &e.vars[i]));
        e.vals[i] = tv_new(i);
        if (i < 30)
            assert_ok(cctx_context_set(e.ctx, e.vars[i], e.vals[i], NULL));
    }
    /* Make sure this thread's state exists (its creation is covered below). */
    cctx_context *tmp = NULL;
    assert_ok(cctx_context_copy(e.ctx, &tmp));
    cctx_context_release(tmp);
    e.live_before = tv_live();
    e.allocs_before = cctx__live_allocations();

    int points = 0;
    for (int target = 30; target < 40; target++) { /* set of a new variable */
        e.target = target;
        points += walk_failures(op_set_new, check_ctx_unchanged, &e);
        /* Undo: reset with the token, walking failures of reset too. */
        e.reset_token = e.token;
        e.token = NULL;
        points += walk_failures(op_reset, check_reset_unchanged, &e);
        cctx_token_release(e.reset_token);
        e.reset_token = NULL;
        check_ctx_unchanged(&e);
    }
    for (int target = 0; target < 30; target += 7) { /* replace, with token */
        e.target = target;
        tv_value *old = e.vals[target];
        e.replaced = old;
        e.vals[target] = tv_new(500 + target);
        e.live_before++;
        points += walk_failures(op_set_new, check_replace_unchanged, &e);
        assert_ok(cctx_context_reset(e.ctx, e.vars[target], e.token));
        cctx_token_release(e.token);
        e.token = NULL;
        tv_drop(e.vals[target]);
        e.vals[target] = old;
        e.live_before--;
        check_ctx_unchanged(&e);
    }
    points += walk_failures(op_copy, check_ctx_unchanged, &e);
    cctx_context_release(e.out_ctx);
    e.out_ctx = NULL;
    points += walk_failures(op_iter, check_ctx_unchanged, &e);
    cctx_iter_free(e.iter);
    points += walk_failures(op_var_new, check_var_new, &e);
    cctx_var_release(e.new_var);
    e.new_var = NULL;
    /* Delete: on failure the variable is still there. */
    e.target = 3;
    points += walk_failures(op_delete, check_ctx_unchanged, &e);
    assert_false(cctx_context_contains(e.ctx, e.vars[3]));
    assert_true(points > 20);
    print_message("allocation failure points covered: %d\n", points);

    cctx_context_release(e.ctx);
    for (int i = 0; i < 40; i++) {
        cctx_var_release(e.vars[i]);
        tv_drop(e.vals[i]);
    }
    leave_thread_clean();
}

static void *oom_fresh_thread(void *p)
{
    int *points = p;
    cctx_var *x = NULL;
    assert_ok(cctx_var_new("x", &tv_ops, &x));
    tv_value *a = tv_new(1);
    long allocs = cctx__live_allocations();
    /* The first set creates the thread's state: fail each allocation. */
    for (int n = 1;; n++) {
        long fails = cctx__allocation_failures();
        cctx__fail_allocation(n);
        cctx_status st = cctx_var_set(x, a, NULL);
        cctx__fail_allocation(0);
        if (cctx__allocation_failures() == fails) {
            assert_int_equal(st, CCTX_OK);
            break;
        }
        assert_int_equal(st, CCTX_ENOMEM);
        /* The thread's state may now exist (it is not observable); the
         * variable has no value. Discard the state to fail it again. */
        assert_int_equal(get_id(x), -1);
        assert_ok(cctx_thread_cleanup());
        assert_int_equal(cctx__live_allocations(), allocs);
        assert_int_equal(tv_live(), 1);
        (*points)++;
    }
    assert_int_equal(get_id(x), 1);
    /* Enter on a fresh thread state, and copy_current. */
    assert_ok(cctx_thread_cleanup());
    cctx_context *c = NULL;
    assert_ok(cctx_context_new(&c));
    for (int n = 1;; n++) {
        long fails = cctx__allocation_failures();
        cctx__fail_allocation(n);
        cctx_status st = cctx_context_enter(c);
        cctx__fail_allocation(0);
        if (cctx__allocation_failures() == fails) {
            assert_int_equal(st, CCTX_OK);
            break;
        }
        assert_int_equal(st, CCTX_ENOMEM);
        assert_false(cctx_context_is_entered(c));
        (*points)++;
    }
    assert_ok(cctx_context_exit(c));
    cctx_context_release(c);
    cctx_var_release(x);
    tv_drop(a);
    return NULL;
}

/* Copies of the current context reuse the thread's freed context objects
 * (a per-thread cache); a reused object must still fail when an allocation
 * failure is injected, leave nothing changed, and the cache must be empty
 * of live blocks once the thread's state is gone. */
static void *copy_cache_thread(void *p)
{
    (void)p;
    cctx_var *x = NULL;
    assert_ok(cctx_var_new("x", &tv_ops, &x));
    tv_value *a = tv_new(7);
    assert_ok(cctx_var_set(x, a, NULL));
    long allocs = cctx__live_allocations();
    /* Fill the cache. */
    cctx_context *c[4];
    for (int i = 0; i < 4; i++)
        assert_ok(cctx_context_copy_current(&c[i]));
    for (int i = 0; i < 4; i++)
        cctx_context_release(c[i]);
    assert_int_equal(cctx__live_allocations(), allocs);
    cctx_context *d = NULL;
    long fails = cctx__allocation_failures();
    cctx__fail_allocation(1);
    cctx_status st = cctx_context_copy_current(&d);
    cctx__fail_allocation(0);
    assert_int_equal(cctx__allocation_failures(), fails + 1);
    assert_int_equal(st, CCTX_ENOMEM);
    assert_null(d);
    assert_int_equal(cctx__live_allocations(), allocs);
    /* Reused objects are whole contexts: values, writes, independence. */
    assert_ok(cctx_context_copy_current(&d));
    void *out = NULL;
    assert_ok(cctx_context_get(d, x, &out));
    assert_ptr_equal(out, a);
    tv_value *b = tv_new(8);
    assert_ok(cctx_context_set(d, x, b, NULL));
    assert_int_equal(get_id(x), 7);
    cctx_context_release(d);
    tv_drop(b);
    cctx_var_release(x);
    tv_drop(a);
    return NULL; /* the thread's teardown drains its cache */
}

/* Copies of the current context share its root through references taken
 * in batches; a value the context stops holding must still be released as
 * soon as nothing else holds it: after a later set in the same context, and
 * after leaving and releasing an entered context whose copies are gone.
 * The copies here are released on this thread and on another one. */
struct release_job { cctx_context *ctx; };
static void *release_elsewhere(void *p)
{
    cctx_context_release(((struct release_job *)p)->ctx);
    return NULL;
}

static void *copy_credit_thread(void *p)
{
    (void)p;
    cctx_var *x = NULL;
    assert_ok(cctx_var_new("x", &tv_ops, &x));
    long live = tv_live();
    tv_value *a = tv_new(1);
    assert_ok(cctx_var_set(x, a, NULL));
    tv_drop(a); /* the base context holds it alone */
    cctx_context *c[3];
    for (int i = 0; i < 3; i++)
        assert_ok(cctx_context_copy_current(&c[i]));
    cctx_context_release(c[0]);
    struct release_job job = { c[1] };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_elsewhere, &job), 0);
    pthread_join(t, NULL);
    assert_int_equal(tv_live(), live + 1);
    /* c[2] still holds `a`; once it goes, the next set frees it. */
    cctx_context_release(c[2]);
    tv_value *b = tv_new(2);
    assert_ok(cctx_var_set(x, b, NULL));
    tv_drop(b);
    assert_int_equal(tv_live(), live + 1); /* `a` is gone: only `b` */
    assert_int_equal(get_id(x), 2);

    /* An entered context: copies of it, then exit and release. */
    cctx_context *e = NULL;
    assert_ok(cctx_context_new(&e));
    assert_ok(cctx_context_enter(e));
    tv_value *v = tv_new(3);
    assert_ok(cctx_var_set(x, v, NULL));
    tv_drop(v);
    for (int i = 0; i < 3; i++)
        assert_ok(cctx_context_copy_current(&c[i]));
    for (int i = 0; i < 3; i++)
        cctx_context_release(c[i]);
    assert_ok(cctx_context_exit(e));
    assert_int_equal(tv_live(), live + 2);
    cctx_context_release(e);
    assert_int_equal(tv_live(), live + 1); /* `v` went with `e` */
    assert_int_equal(get_id(x), 2);
    cctx_var_release(x);
    return NULL;
}

static void test_copy_current_credits_release_values_promptly(void **state)
{
    (void)state;
    long start_allocs = cctx__live_allocations();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, copy_credit_thread, NULL), 0);
    pthread_join(t, NULL);
    assert_int_equal(tv_live(), 0);
    assert_int_equal(cctx__live_allocations(), start_allocs);
}

/* Entering takes no reference: the caller's last release while the context
 * is entered hands that reference to the entered state, which drops it at
 * exit. Here the release comes from another thread, racing the exit, many
 * times; and once on the same thread followed by a retain of the borrowed
 * current context. Every value is released exactly once, nothing leaks
 * (the sanitizers and valgrind see the memory). */
struct handover {
    cctx_context *ctx;
    unsigned go; /* 1: release now */
};

static void *handover_releaser(void *p)
{
    struct handover *h = p;
    while (__atomic_load_n(&h->go, __ATOMIC_ACQUIRE) == 0)
        sched_yield();
    cctx_context_release(h->ctx);
    return NULL;
}

static void *handover_thread(void *p)
{
    (void)p;
    cctx_var *x = NULL;
    assert_ok(cctx_var_new("x", &tv_ops, &x));
    long live = tv_live();
    long rounds = scaled(2000);
    for (long i = 0; i < rounds; i++) {
        struct handover h = { NULL, 0 };
        assert_ok(cctx_context_new(&h.ctx));
        assert_ok(cctx_context_enter(h.ctx));
        tv_value *v = tv_new(i);
        assert_ok(cctx_var_set(x, v, NULL));
        tv_drop(v);
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, handover_releaser, &h), 0);
        __atomic_store_n(&h.go, 1, __ATOMIC_RELEASE);
        if (i % 2 == 0)
            sched_yield(); /* let the release come first, sometimes */
        assert_int_equal(get_id(x), i); /* still alive while entered */
        assert_ok(cctx_context_exit(h.ctx));
        pthread_join(t, NULL);
        assert_int_equal(tv_live(), live);
    }
    /* Same thread: release while entered, then retain the borrowed current. */
    cctx_context *c = NULL;
    assert_ok(cctx_context_new(&c));
    assert_ok(cctx_context_enter(c));
    tv_value *w = tv_new(99);
    assert_ok(cctx_var_set(x, w, NULL));
    tv_drop(w);
    cctx_context_release(c);
    cctx_context *again = cctx_context_retain(cctx_context_current());
    assert_ptr_equal(again, c);
    assert_ok(cctx_context_exit(c));
    assert_int_equal(tv_live(), live + 1); /* `again` keeps it */
    void *out = NULL;
    assert_ok(cctx_context_get(again, x, &out));
    assert_ptr_equal(out, w);
    cctx_context_release(again);
    assert_int_equal(tv_live(), live);
    assert_int_equal(get_id(x), -1);
    cctx_var_release(x);
    return NULL;
}

static void test_last_release_while_entered_is_handed_to_exit(void **state)
{
    (void)state;
    long start_allocs = cctx__live_allocations();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, handover_thread, NULL), 0);
    pthread_join(t, NULL);
    assert_int_equal(tv_live(), 0);
    assert_int_equal(cctx__live_allocations(), start_allocs);
}

/* Another thread's last release of an entered context, step by step:
 * the context stays readable until its owner exits; the exit drops it and
 * its value, whose release callback (it uses the library) drops the last
 * reference of a second context entered on a third thread, which in turn
 * keeps its value until that thread exits. A retained borrowed current
 * context outlives the handover. */
struct chain {
    cctx_var *x;
    cctx_context *c1, *c2;
    test_gate in1, in2, go1, go2, out1;
    long hook1_calls, hook2_calls;
    bool c2_readable_in_hook;
};

static void chain_hook1(tv_value *v, void *arg)
{
    (void)v;
    struct chain *s = arg;
    /* The library from a release callback, on the exiting thread: a copy
     * entered and left, then the last reference of c2 (entered elsewhere). */
    cctx_context *c = NULL;
    T_CHECK(cctx_context_copy_current(&c) == CCTX_OK);
    T_CHECK(cctx_context_enter(c) == CCTX_OK);
    T_CHECK(cctx_context_exit(c) == CCTX_OK);
    cctx_context_release(c);
    cctx_context_release(s->c2);
    __atomic_add_fetch(&s->hook1_calls, 1, __ATOMIC_RELAXED);
}

static void chain_hook2(tv_value *v, void *arg)
{
    (void)v;
    struct chain *s = arg;
    cctx_context *c = NULL;
    T_CHECK(cctx_context_copy_current(&c) == CCTX_OK);
    T_CHECK(cctx_context_enter(c) == CCTX_OK);
    T_CHECK(cctx_var_set(s->x, NULL, NULL) == CCTX_OK);
    T_CHECK(cctx_context_exit(c) == CCTX_OK);
    cctx_context_release(c);
    __atomic_add_fetch(&s->hook2_calls, 1, __ATOMIC_RELAXED);
}

static void *chain_owner1(void *p)
{
    struct chain *s = p;
    T_CHECK(cctx_context_enter(s->c1) == CCTX_OK); /* borrowed */
    gate_open(&s->in1);
    T_CHECK(gate_wait(&s->go1));
    /* Released by the main thread by now: still ours to read. */
    void *out = NULL;
    T_CHECK(cctx_var_get(s->x, &out) == CCTX_OK && ((tv_value *)out)->id == 1);
    cctx_context *again = cctx_context_retain(cctx_context_current());
    T_CHECK(again == s->c1);
    T_CHECK(cctx_context_exit(s->c1) == CCTX_OK);
    T_CHECK(__atomic_load_n(&s->hook1_calls, __ATOMIC_RELAXED) == 0); /* `again` */
    /* Entered again with our own reference, left, dropped: now it goes. */
    T_CHECK(cctx_context_enter(again) == CCTX_OK);
    T_CHECK(cctx_context_exit(again) == CCTX_OK);
    cctx_context_release(again);
    T_CHECK(__atomic_load_n(&s->hook1_calls, __ATOMIC_RELAXED) == 1);
    gate_open(&s->out1);
    return NULL;
}

static void *chain_owner2(void *p)
{
    struct chain *s = p;
    T_CHECK(cctx_context_enter(s->c2) == CCTX_OK); /* borrowed */
    gate_open(&s->in2);
    T_CHECK(gate_wait(&s->go2));
    void *out = NULL;
    T_CHECK(cctx_var_get(s->x, &out) == CCTX_OK && ((tv_value *)out)->id == 2);
    T_CHECK(cctx_context_exit(s->c2) == CCTX_OK);
    T_CHECK(__atomic_load_n(&s->hook2_calls, __ATOMIC_RELAXED) == 1);
    return NULL;
}

static void test_release_by_another_thread_while_entered(void **state)
{
    (void)state;
    long start_allocs = cctx__live_allocations();
    long live = tv_live();
    for (int mode = 1; mode <= 2; mode++) {
        (void)cctx__context_exit_barrier(mode);
        struct chain s = { .in1 = TEST_GATE_INIT, .in2 = TEST_GATE_INIT,
                           .go1 = TEST_GATE_INIT, .go2 = TEST_GATE_INIT,
                           .out1 = TEST_GATE_INIT };
        assert_ok(cctx_var_new("x", &tv_ops, &s.x));
        assert_ok(cctx_context_new(&s.c1));
        assert_ok(cctx_context_new(&s.c2));
        tv_value *v1 = tv_new_hooked(1, chain_hook1, &s);
        tv_value *v2 = tv_new_hooked(2, chain_hook2, &s);
        assert_ok(cctx_context_set(s.c1, s.x, v1, NULL));
        assert_ok(cctx_context_set(s.c2, s.x, v2, NULL));
        tv_drop(v1);
        tv_drop(v2);
        pthread_t t1, t2;
        assert_int_equal(pthread_create(&t1, NULL, chain_owner1, &s), 0);
        assert_int_equal(pthread_create(&t2, NULL, chain_owner2, &s), 0);
        assert_true(gate_wait(&s.in1));
        assert_true(gate_wait(&s.in2));
        cctx_context_release(s.c1); /* the last reference, c1 entered on t1 */
        assert_int_equal(tv_live(), live + 2);
        gate_open(&s.go1);
        assert_true(gate_wait(&s.out1));
        /* v1 went; its callback dropped c2's last reference: kept for t2. */
        assert_int_equal(tv_live(), live + 1);
        assert_int_equal(s.hook2_calls, 0);
        gate_open(&s.go2);
        pthread_join(t1, NULL);
        pthread_join(t2, NULL);
        assert_int_equal(thread_failures(), 0);
        assert_int_equal(s.hook1_calls, 1);
        assert_int_equal(s.hook2_calls, 1);
        assert_int_equal(tv_live(), live);
        cctx_var_release(s.x);
    }
    (void)cctx__context_exit_barrier(2);
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(cctx__live_allocations(), start_allocs);
}

/* Two contexts entered one inside the other on one thread, both of whose
 * last references another thread releases: leaving the inner one drops
 * it, while the outer one, still entered, keeps its value until it is
 * left too. */
struct nested {
    cctx_var *x;
    cctx_context *outer, *inner;
    test_gate in, go;
    long live;
};

static void *nested_owner(void *p)
{
    struct nested *s = p;
    T_CHECK(cctx_context_enter(s->outer) == CCTX_OK); /* borrowed */
    T_CHECK(cctx_context_enter(s->inner) == CCTX_OK); /* borrowed */
    gate_open(&s->in);
    T_CHECK(gate_wait(&s->go)); /* both released by now */
    T_CHECK(get_id(s->x) == 2);
    T_CHECK(cctx_context_exit(s->inner) == CCTX_OK);
    T_CHECK(tv_live() == s->live + 1); /* the inner value went */
    T_CHECK(get_id(s->x) == 1);        /* the outer one is still there */
    T_CHECK(cctx_context_exit(s->outer) == CCTX_OK);
    T_CHECK(tv_live() == s->live);
    return NULL;
}

static void test_release_of_nested_entered_contexts_by_another_thread(void **state)
{
    (void)state;
    long start_allocs = cctx__live_allocations();
    for (int mode = 1; mode <= 2; mode++) {
        (void)cctx__context_exit_barrier(mode);
        struct nested s = { .in = TEST_GATE_INIT, .go = TEST_GATE_INIT, .live = tv_live() };
        assert_ok(cctx_var_new("x", &tv_ops, &s.x));
        assert_ok(cctx_context_new(&s.outer));
        assert_ok(cctx_context_new(&s.inner));
        tv_value *v1 = tv_new(1), *v2 = tv_new(2);
        assert_ok(cctx_context_set(s.outer, s.x, v1, NULL));
        assert_ok(cctx_context_set(s.inner, s.x, v2, NULL));
        tv_drop(v1);
        tv_drop(v2);
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, nested_owner, &s), 0);
        assert_true(gate_wait(&s.in));
        cctx_context_release(s.outer);
        cctx_context_release(s.inner);
        assert_int_equal(tv_live(), s.live + 2);
        gate_open(&s.go);
        pthread_join(t, NULL);
        assert_int_equal(thread_failures(), 0);
        assert_int_equal(tv_live(), s.live);
        cctx_var_release(s.x);
    }
    (void)cctx__context_exit_barrier(2);
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(cctx__live_allocations(), start_allocs);
}

static void test_copy_current_cache_fails_and_drains(void **state)
{
    (void)state;
    long start_allocs = cctx__live_allocations();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, copy_cache_thread, NULL), 0);
    pthread_join(t, NULL);
    assert_int_equal(tv_live(), 0);
    assert_int_equal(cctx__live_allocations(), start_allocs);
}

/* Token objects come from a per-thread cache as context objects do: an
 * injected failure still fails a set that asks for a token (and changes
 * nothing), a token released on another thread or during a thread's
 * teardown is freed, nothing leaks. And a cached context object freed in
 * an unusual state (claimed; entered and left) is whole when reused. */
struct token_job { cctx_token *t; };
static void *release_token_elsewhere(void *p)
{
    struct token_job *j = p;
    cctx_token_release(j->t); /* into this thread's cache; drained at exit */
    return NULL;
}

static void release_token_hook(tv_value *v, void *arg)
{
    (void)v;
    cctx_token_release(arg); /* during the owning thread's teardown */
}

static void *token_cache_thread(void *p)
{
    (void)p;
    cctx_var *x = NULL;
    assert_ok(cctx_var_new("x", &tv_ops, &x));
    tv_value *a = tv_new(7), *b = tv_new(8);
    assert_ok(cctx_var_set(x, a, NULL));
    long allocs = cctx__live_allocations();
    for (int i = 0; i < 4; i++) { /* fill the cache */
        cctx_token *t = NULL;
        assert_ok(cctx_var_set(x, b, &t));
        assert_ok(cctx_var_reset(x, t));
        cctx_token_release(t);
    }
    assert_int_equal(cctx__live_allocations(), allocs);
    cctx_token *t = NULL;
    long fails = cctx__allocation_failures();
    cctx__fail_allocation(1);
    cctx_status st = cctx_var_set(x, b, &t);
    cctx__fail_allocation(0);
    assert_int_equal(cctx__allocation_failures(), fails + 1);
    assert_int_equal(st, CCTX_ENOMEM);
    assert_null(t);
    assert_int_equal(get_id(x), 7);
    assert_int_equal(cctx__live_allocations(), allocs);
    /* A reused token is a whole token. */
    assert_ok(cctx_var_set(x, b, &t));
    assert_false(cctx_token_is_used(t));
    assert_ptr_equal(cctx_token_var(t), x);
    void *old = NULL;
    assert_ok(cctx_token_old_value(t, &old));
    assert_ptr_equal(old, a);
    assert_ok(cctx_var_reset(x, t));
    assert_true(cctx_token_is_used(t));
    assert_int_equal(cctx_var_reset(x, t), CCTX_TOKEN_USED);
    assert_int_equal(get_id(x), 7);
    struct token_job j = { t };
    pthread_t other;
    assert_int_equal(pthread_create(&other, NULL, release_token_elsewhere, &j), 0);
    pthread_join(other, NULL);
    /* Context objects freed claimed, or after being entered, come back
     * free and outside any chain. */
    cctx_context *c = NULL;
    assert_ok(cctx_context_copy_current(&c));
    assert_ok(cctx_context_claim(c));
    cctx_context_release(c);
    assert_ok(cctx_context_copy_current(&c));
    assert_false(cctx_context_is_entered(c));
    assert_ok(cctx_context_enter(c));
    assert_int_equal(cctx_thread_contexts(NULL, 0), 2);
    assert_ok(cctx_context_exit(c));
    cctx_context_release(c);
    assert_ok(cctx_context_copy_current(&c));
    assert_int_equal(cctx_context_unclaim(c), CCTX_NOT_ENTERED);
    assert_ok(cctx_context_claim(c));
    assert_ok(cctx_context_unclaim(c));
    assert_int_equal(cctx_context_count(c), 1);
    cctx_context_release(c);
    /* A token whose last release runs in this thread's teardown, from a
     * value's release callback (the base context drops the value). The
     * token's context is another one, which the token keeps. */
    cctx_token *late = NULL;
    assert_ok(cctx_context_copy_current(&c));
    assert_ok(cctx_context_enter(c));
    assert_ok(cctx_var_set(x, b, &late));
    assert_ok(cctx_context_exit(c));
    cctx_context_release(c);
    tv_value *hooked = tv_new_hooked(9, release_token_hook, late);
    assert_ok(cctx_var_set(x, hooked, NULL));
    tv_drop(hooked);
    tv_drop(a);
    tv_drop(b);
    cctx_var_release(x);
    return NULL; /* the teardown releases `hooked`, then drains the caches */
}

static void test_token_cache_fails_and_drains(void **state)
{
    (void)state;
    long start_allocs = cctx__live_allocations();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, token_cache_thread, NULL), 0);
    pthread_join(t, NULL);
    assert_int_equal(tv_live(), 0);
    assert_int_equal(cctx__live_allocations(), start_allocs);
}

static void test_allocation_failure_creating_thread_state(void **state)
{
    (void)state;
    int points = 0;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, oom_fresh_thread, &points), 0);
    pthread_join(t, NULL);
    assert_true(points >= 2);
    assert_int_equal(tv_live(), 0);
}

/* ------------------------------------------------------------ hashes */

/* Variables are hashed by a creation counter (var.c): each one created
 * takes the next hash, so the ones a program creates together differ in
 * their low bits, which the HAMT reads first. (No other thread of this test
 * creates variables meanwhile.) */
static void test_variables_hash_in_creation_order(void **state)
{
    (void)state;
    cctx_var *v[4];
    for (int i = 0; i < 4; i++)
        assert_ok(cctx_var_new("n", NULL, &v[i]));
    for (int i = 1; i < 4; i++) /* unsigned: the counter may wrap between them */
        assert_int_equal(cctx__var_hash(v[i]), (uint32_t)(cctx__var_hash(v[0]) + (uint32_t)i));
    for (int i = 0; i < 4; i++)
        cctx_var_release(v[i]);
}

/* Any 32 consecutive ids have 32 different level-0 fragments and any 1024
 * have 1024 different two-level prefixes: a context of 1024 variables
 * created in a row is an array root over 32 full bitmap leaves (32 entries
 * each, no subnode). Random hashes put two or more keys in most fragments
 * and push them into small subnodes. */
static void test_consecutive_variables_fill_whole_nodes(void **state)
{
    (void)state;
    enum { N = 1024 };
    cctx_var **v = malloc(N * sizeof *v);
    assert_non_null(v);
    cctx_context *ctx;
    assert_ok(cctx_context_new(&ctx));
    for (int i = 0; i < N; i++) {
        assert_ok(cctx_var_new("d", NULL, &v[i]));
        assert_ok(cctx_context_set(ctx, v[i], &v[i], NULL));
        if (i == 31) { /* the first 32: one bitmap node holds them all */
            hamt_node *root;
            assert_ok(context_snapshot(ctx, &root));
            hamt_shape s = hamt_shape_at(root, "");
            assert_int_equal(s.kind, 'b');
            assert_int_equal(s.entries, 32);
            assert_int_equal(s.children, 0);
            hamt_release(root);
        }
    }
    assert_int_equal(cctx__context_check(ctx), 0);
    hamt_node *root;
    assert_ok(context_snapshot(ctx, &root));
    hamt_shape top = hamt_shape_at(root, "");
    assert_int_equal(top.kind, 'a');
    assert_int_equal(top.children, 32);
    for (int f = 0; f < 32; f++) {
        char path[16];
        snprintf(path, sizeof path, "%d", f);
        hamt_shape leaf = hamt_shape_at(root, path);
        assert_int_equal(leaf.kind, 'b');
        assert_int_equal(leaf.entries, 32);
        assert_int_equal(leaf.children, 0);
    }
    hamt_release(root);
    for (int i = 0; i < N; i++) {
        void *got;
        assert_ok(cctx_context_lookup(ctx, v[i], &got));
        assert_ptr_equal(got, &v[i]);
    }
    cctx_context_release(ctx);
    for (int i = 0; i < N; i++)
        cctx_var_release(v[i]);
    free(v);
}

/* Two live variables may share a hash: the counter wraps after 2^32
 * creations, and cctx__var_new_with_hash gives any hash. Identity still
 * tells them apart (a collision node holds both). */
static void test_variables_with_equal_hashes(void **state)
{
    (void)state;
    long live = tv_live();
    cctx_var *a, *b, *c;
    assert_ok(cctx_var_new("a", &tv_ops, &a));
    /* b and c: what a wrapped counter would hand out beside a */
    assert_ok(cctx__var_new_with_hash("b", &tv_ops, cctx__var_hash(a), &b));
    assert_ok(cctx__var_new_with_hash("c", &tv_ops, cctx__var_hash(a), &c));
    assert_int_equal(cctx__var_hash(b), cctx__var_hash(a));
    cctx_var *vars[3] = { a, b, c };
    tv_value *vals[3];
    cctx_context *ctx;
    assert_ok(cctx_context_new(&ctx));
    for (int i = 0; i < 3; i++) {
        vals[i] = tv_new(i);
        assert_ok(cctx_context_set(ctx, vars[i], vals[i], NULL));
        tv_drop(vals[i]);
    }
    assert_int_equal(cctx_context_count(ctx), 3);
    assert_int_equal(cctx__context_check(ctx), 0);
    for (int i = 0; i < 3; i++) {
        void *got;
        assert_ok(cctx_context_lookup(ctx, vars[i], &got));
        assert_ptr_equal(got, vals[i]);
        cctx_var_release_value(vars[i], got);
    }
    /* Replacing one and deleting another leaves the rest as they were. */
    tv_value *nb = tv_new(10);
    assert_ok(cctx_context_set(ctx, b, nb, NULL));
    tv_drop(nb);
    assert_ok(cctx_context_delete(ctx, a));
    assert_false(cctx_context_contains(ctx, a));
    assert_int_equal(cctx_context_count(ctx), 2);
    assert_int_equal(cctx__context_check(ctx), 0);
    void *got;
    assert_ok(cctx_context_lookup(ctx, b, &got));
    assert_ptr_equal(got, nb);
    cctx_var_release_value(b, got);
    assert_ok(cctx_context_lookup(ctx, c, &got));
    assert_ptr_equal(got, vals[2]);
    cctx_var_release_value(c, got);
    cctx_context_release(ctx);
    cctx_var_release(a);
    cctx_var_release(b);
    cctx_var_release(c);
    assert_int_equal(tv_live(), live);
}

/* A biased enter (context.c, "The bias") held inside its window while
 * another thread's enter revokes the bias: the revoke must wait for the
 * window, and exactly one of the two gets the context. Held before the
 * biased thread looks at `owner` again (where 1), the revoke wins; held
 * after that look and before its store (where 2), the biased thread wins
 * and the revoker is refused. A revoke that did not wait would let both in
 * (neither reports, and the bounded wait below fails). */
struct bw_side {
    cctx_status st;
    unsigned reported;
    bool current;
};

static cctx_context *bw_ctx;
static int bw_where;
static __thread bool bw_armed;
static test_gate bw_in_window, bw_go, bw_done;
static struct bw_side bw_holder_side, bw_revoker_side;

static void bw_hook(int where)
{
    if (!bw_armed || where != bw_where)
        return;
    bw_armed = false;
    gate_open(&bw_in_window);
    T_CHECK(gate_wait(&bw_go));
}

static void bw_take(struct bw_side *side)
{
    side->st = cctx_context_enter(bw_ctx);
    if (side->st == CCTX_OK) {
        side->current = cctx_context_current_peek() == bw_ctx;
        T_CHECK(gate_wait(&bw_done)); /* hold it while the other finishes */
        T_CHECK(cctx_context_exit(bw_ctx) == CCTX_OK);
    }
    __atomic_store_n(&side->reported, 1, __ATOMIC_RELEASE);
}

static void *bw_holder(void *p)
{
    (void)p;
    for (int i = 0; i < 2; i++) { /* the second exit biases it to us */
        T_CHECK(cctx_context_enter(bw_ctx) == CCTX_OK);
        T_CHECK(cctx_context_exit(bw_ctx) == CCTX_OK);
    }
    bw_armed = true;
    bw_take(&bw_holder_side);
    (void)cctx_thread_cleanup();
    return NULL;
}

static void *bw_revoker(void *p)
{
    (void)p;
    bw_take(&bw_revoker_side);
    (void)cctx_thread_cleanup();
    return NULL;
}

static bool bw_wait(bool (*cond)(void))
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (!cond()) {
        sched_yield();
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > TEST_WAIT_SECONDS)
            return false;
    }
    return true;
}

static bool bw_revoke_started(void)
{
    /* LEFT reads as free; REVOKING (or ENTERED) as taken. */
    return cctx_context_is_entered(bw_ctx);
}

static bool bw_one_reported(void)
{
    return __atomic_load_n(&bw_holder_side.reported, __ATOMIC_ACQUIRE) ||
           __atomic_load_n(&bw_revoker_side.reported, __ATOMIC_ACQUIRE);
}

static void revoke_waits(void *arg)
{
    (void)arg;
    for (int mode = 1; mode <= 2; mode++) {
        (void)cctx__context_exit_barrier(mode);
        for (bw_where = 1; bw_where <= 2; bw_where++) {
            test_gate closed = TEST_GATE_INIT;
            bw_in_window = bw_go = bw_done = closed;
            memset(&bw_holder_side, 0, sizeof bw_holder_side);
            memset(&bw_revoker_side, 0, sizeof bw_revoker_side);
            T_CHECK(cctx_context_new(&bw_ctx) == CCTX_OK);
            __atomic_store_n(&cctx__bias_window_hook, bw_hook, __ATOMIC_RELEASE);
            pthread_t holder, revoker;
            T_CHECK(pthread_create(&holder, NULL, bw_holder, NULL) == 0);
            T_CHECK(gate_wait(&bw_in_window));
            T_CHECK(pthread_create(&revoker, NULL, bw_revoker, NULL) == 0);
            T_CHECK(bw_wait(bw_revoke_started));
            gate_open(&bw_go);
            bool one = bw_wait(bw_one_reported);
            gate_open(&bw_done);
            pthread_join(holder, NULL);
            pthread_join(revoker, NULL);
            __atomic_store_n(&cctx__bias_window_hook, NULL, __ATOMIC_RELEASE);
            T_CHECK(one);
            struct bw_side *winner = bw_where == 1 ? &bw_revoker_side : &bw_holder_side;
            struct bw_side *loser = bw_where == 1 ? &bw_holder_side : &bw_revoker_side;
            T_CHECK(winner->st == CCTX_OK);
            T_CHECK(winner->current);
            T_CHECK(loser->st == CCTX_ALREADY_ENTERED);
            /* Free again for anyone. */
            T_CHECK(!cctx_context_is_entered(bw_ctx));
            T_CHECK(cctx_context_enter(bw_ctx) == CCTX_OK);
            T_CHECK(cctx_context_exit(bw_ctx) == CCTX_OK);
            cctx_context_release(bw_ctx);
        }
    }
    (void)cctx__context_exit_barrier(2);
}

static void test_revoke_waits_for_a_biased_enter_in_its_window(void **state)
{
    (void)state;
    /* In a child: a revoke that did not wait leaves two owners, which an
     * internal check stops. */
    assert_child_ok(revoke_waits, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_precedence),
        cmocka_unit_test(test_variables_hash_in_creation_order),
        cmocka_unit_test(test_consecutive_variables_fill_whole_nodes),
        cmocka_unit_test(test_variables_with_equal_hashes),
        cmocka_unit_test(test_set_reset_tokens),
        cmocka_unit_test(test_reset_errors_in_python_order),
        cmocka_unit_test(test_new_context_is_empty_and_copies_are_independent),
        cmocka_unit_test(test_run_sets_are_visible_through_the_context),
        cmocka_unit_test(test_context_run),
        cmocka_unit_test(test_enter_exit_errors),
        cmocka_unit_test(test_entered_context_refused_on_another_thread),
        cmocka_unit_test(test_mapping_and_iteration),
        cmocka_unit_test(test_invalid_arguments),
        cmocka_unit_test(test_thread_exit_releases_context_and_values),
        cmocka_unit_test(test_thread_create_starts_in_a_copy),
        cmocka_unit_test(test_values_released_exactly_once),
        cmocka_unit_test(test_lookup_cache_follows_every_change),
        cmocka_unit_test(test_allocation_failure_changes_nothing),
        cmocka_unit_test(test_allocation_failure_creating_thread_state),
        cmocka_unit_test(test_copy_current_cache_fails_and_drains),
        cmocka_unit_test(test_token_cache_fails_and_drains),
        cmocka_unit_test(test_last_release_while_entered_is_handed_to_exit),
        cmocka_unit_test(test_release_by_another_thread_while_entered),
        cmocka_unit_test(test_release_of_nested_entered_contexts_by_another_thread),
        cmocka_unit_test(test_copy_current_credits_release_values_promptly),
        cmocka_unit_test(test_revoke_waits_for_a_biased_enter_in_its_window),
    };
    return cmocka_run_group_tests_name("context", tests, NULL, NULL);
}
