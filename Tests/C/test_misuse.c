/*
 * test_misuse.c — misuse of the C API: NULL arguments to every function,
 * handles of the wrong kind (told apart by their magic), tokens of another
 * variable or context, used tokens, exit without enter, exit of a context
 * that is not current, double enter, unclaim of an unclaimed context,
 * writes into a context another thread has entered, cleanup while entered.
 *
 * Each misuse must return its documented status and corrupt nothing: every
 * test keeps a "witness" context (and the thread's base context) with known
 * contents and checks them afterwards; the teardown checks that no value
 * and no runtime allocation is left.
 */
#include "test_support.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

typedef struct fixture {
    cctx_var *a, *b;
    cctx_context *witness; /* never touched by a test: must stay as built */
    cctx_context *c1, *c2;
    tv_value *v1, *v2, *v3;
    cctx_local *local;
    long allocs;
} fixture;

static long base_allocs = -1;

static int setup(void **state)
{
    assert_ok(cctx_thread_cleanup());
    if (base_allocs < 0)
        base_allocs = cctx__live_allocations();
    fixture *f = calloc(1, sizeof *f);
    f->v1 = tv_new(1);
    f->v2 = tv_new(2);
    f->v3 = tv_new(3);
    assert_ok(cctx_var_new("a", &tv_ops, &f->a));
    assert_ok(cctx_var_new_with_default("b", &tv_ops, f->v3, &f->b));
    assert_ok(cctx_context_new(&f->witness));
    assert_ok(cctx_context_set(f->witness, f->a, f->v1, NULL));
    assert_ok(cctx_context_set(f->witness, f->b, f->v2, NULL));
    assert_ok(cctx_context_new(&f->c1));
    assert_ok(cctx_context_new(&f->c2));
    assert_ok(cctx_var_set(f->a, f->v3, NULL)); /* the base context: a = v3 */
    assert_ok(cctx_local_new(&tv_ops, NULL, NULL, &f->local));
    assert_ok(cctx_local_set(f->local, f->v1));
    *state = f;
    return 0;
}

/* The witness, the base context and the local are as built. */
static void check_untouched(fixture *f)
{
    void *out;
    assert_int_equal(cctx_context_count(f->witness), 2);
    assert_ok(cctx_context_get(f->witness, f->a, &out));
    assert_ptr_equal(out, f->v1);
    assert_ok(cctx_context_get(f->witness, f->b, &out));
    assert_ptr_equal(out, f->v2);
    assert_int_equal(cctx__context_check(f->witness), 0);
    assert_false(cctx_context_is_entered(f->witness));
    assert_ok(cctx_local_get(f->local, &out));
    assert_ptr_equal(out, f->v1);
}

/* After cctx_thread_cleanup in a test: this thread's base and local values
 * are gone by design; put them back as the fixture built them. */
static void rebuild_thread(fixture *f)
{
    assert_ok(cctx_var_set(f->a, f->v3, NULL));
    assert_ok(cctx_local_set(f->local, f->v1));
}

static void check_base(fixture *f)
{
    void *out;
    assert_ok(cctx_var_get(f->a, &out));
    assert_ptr_equal(out, f->v3);
}

static int teardown(void **state)
{
    fixture *f = *state;
    check_untouched(f);
    cctx_local_release(f->local);
    cctx_context_release(f->witness);
    cctx_context_release(f->c1);
    cctx_context_release(f->c2);
    cctx_var_release(f->a);
    cctx_var_release(f->b);
    assert_ok(cctx_thread_cleanup());
    tv_drop(f->v1);
    tv_drop(f->v2);
    tv_drop(f->v3);
    assert_int_equal(tv_live(), 0);
    assert_int_equal(cctx__live_allocations(), base_allocs);
    free(f);
    return 0;
}

static void body_nop(void *arg) { (void)arg; }
static void *thread_nop(void *arg) { return arg; }
static void watcher_nop(cctx_event e, cctx_context *c, void *u) { (void)e, (void)c, (void)u; }

/* ------------------------------------------------------------ NULL */

static void test_null_arguments(void **state)
{
    fixture *f = *state;
    cctx_var *v = NULL;
    cctx_context *c = NULL;
    cctx_token *t = NULL;
    cctx_iter *it = NULL;
    cctx_local *l = NULL;
    void *out = (void *)0x1;
    int id = -7;
    pthread_t th;

    assert_non_null(cctx_strerror((cctx_status)12345));
    assert_string_equal(cctx_strerror((cctx_status)12345), "unknown ContextKit status");

    /* variables */
    assert_int_equal(cctx_var_new(NULL, &tv_ops, &v), CCTX_EINVAL);
    assert_int_equal(cctx_var_new("x", &tv_ops, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_var_new_with_default(NULL, &tv_ops, f->v1, &v), CCTX_EINVAL);
    assert_int_equal(cctx_var_new_with_default("x", &tv_ops, f->v1, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_var_new_ex(NULL, NULL, false, NULL, 0, &v), CCTX_EINVAL);
    assert_int_equal(cctx_var_new_ex("x", NULL, false, NULL, 0, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_var_new_ex("x", NULL, false, NULL, 0x10, &v), CCTX_EINVAL);
    assert_null(v);
    assert_null(cctx_var_retain(NULL));
    cctx_var_release(NULL);
    assert_null(cctx_var_name(NULL));
    assert_int_equal(cctx_var_flags(NULL), 0);
    assert_int_equal(cctx_var_default(NULL, &out), CCTX_EINVAL);
    assert_int_equal(cctx_var_default(f->b, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_var_get(NULL, &out), CCTX_EINVAL);
    assert_int_equal(cctx_var_get(f->a, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_var_get_default(NULL, f->v1, &out), CCTX_EINVAL);
    assert_int_equal(cctx_var_get_default(f->a, f->v1, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_var_set(NULL, f->v1, &t), CCTX_EINVAL);
    assert_null(t);
    assert_int_equal(cctx_var_reset(NULL, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_var_reset(f->a, NULL), CCTX_EINVAL);
    cctx_var_release_value(NULL, f->v1); /* ignored: v1 keeps its references */
    cctx_value_ops ops = { NULL, NULL };
    assert_int_equal(cctx_var_ops(NULL, &ops), CCTX_EINVAL);
    assert_int_equal(cctx_var_ops(f->a, NULL), CCTX_EINVAL);
    assert_null(ops.retain);

    /* introspection: a NULL buffer only counts */
    assert_int_equal(cctx_thread_contexts(NULL, 0), 1); /* the base context */
    assert_int_equal(cctx_thread_contexts(NULL, 5), 1);
    assert_non_null(cctx_context_current());

    /* tokens */
    assert_null(cctx_token_retain(NULL));
    cctx_token_release(NULL);
    assert_null(cctx_token_var(NULL));
    assert_null(cctx_token_context(NULL));
    assert_int_equal(cctx_token_old_value(NULL, &out), CCTX_EINVAL);
    assert_false(cctx_token_is_used(NULL));
    assert_ok(cctx_var_set(f->b, f->v2, &t));
    assert_int_equal(cctx_token_old_value(t, NULL), CCTX_EINVAL);
    assert_ok(cctx_var_reset(f->b, t));
    cctx_token_release(t);

    /* contexts */
    assert_int_equal(cctx_context_new(NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_copy(NULL, &c), CCTX_EINVAL);
    assert_int_equal(cctx_context_copy(f->witness, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_copy_inherit(NULL, &c), CCTX_EINVAL);
    assert_int_equal(cctx_context_copy_inherit(f->witness, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_copy_current(NULL), CCTX_EINVAL);
    assert_null(c);
    assert_null(cctx_context_retain(NULL));
    cctx_context_release(NULL);
    assert_int_equal(cctx_context_enter(NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_exit(NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_run(NULL, body_nop, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_run(f->c1, NULL, NULL), CCTX_EINVAL);
    assert_false(cctx_context_is_entered(f->c1));
    assert_int_equal(cctx_context_claim(NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_unclaim(NULL), CCTX_EINVAL);
    assert_false(cctx_context_is_entered(NULL));
    assert_int_equal(cctx_context_count(NULL), 0);
    assert_int_equal(cctx_context_lookup(NULL, f->a, &out), CCTX_EINVAL);
    assert_int_equal(cctx_context_lookup(f->witness, NULL, &out), CCTX_EINVAL);
    assert_int_equal(cctx_context_lookup(f->witness, f->a, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_get(NULL, f->a, &out), CCTX_EINVAL);
    assert_int_equal(cctx_context_get(f->witness, NULL, &out), CCTX_EINVAL);
    assert_int_equal(cctx_context_get(f->witness, f->a, NULL), CCTX_EINVAL);
    assert_false(cctx_context_contains(NULL, f->a));
    assert_false(cctx_context_contains(f->witness, NULL));
    assert_int_equal(cctx_context_set(NULL, f->a, f->v1, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_set(f->c1, NULL, f->v1, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_reset(NULL, f->a, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_reset(f->c1, NULL, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_reset(f->c1, f->a, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_context_delete(NULL, f->a), CCTX_EINVAL);
    assert_int_equal(cctx_context_delete(f->witness, NULL), CCTX_EINVAL);
    assert_false(cctx_context_equal(NULL, f->witness));
    assert_false(cctx_context_equal(f->witness, NULL));
    assert_false(cctx_context_equal(NULL, NULL));
    assert_int_equal(cctx_iter_new(NULL, &it), CCTX_EINVAL);
    assert_int_equal(cctx_iter_new(f->witness, NULL), CCTX_EINVAL);
    assert_null(it);
    assert_false(cctx_iter_next(NULL, NULL, NULL));
    cctx_iter_free(NULL);
    assert_int_equal(cctx_context_count(f->c1), 0);

    /* threads and watchers */
    assert_int_equal(cctx_thread_create(NULL, NULL, thread_nop, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_thread_create(&th, NULL, NULL, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_add_watcher(NULL, NULL, &id), CCTX_EINVAL);
    assert_int_equal(cctx_add_watcher(watcher_nop, NULL, NULL), CCTX_EINVAL);
    assert_int_equal(id, -7);
    assert_int_equal(cctx_clear_watcher(-1), CCTX_EINVAL);
    assert_int_equal(cctx_clear_watcher(CCTX_MAX_WATCHERS), CCTX_EINVAL);
    assert_int_equal(cctx_clear_watcher(0), CCTX_EINVAL); /* not installed */
    cctx_notify_watchers(CCTX_EVENT_EXITED, NULL);

    /* locals */
    assert_int_equal(cctx_local_new(NULL, NULL, NULL, NULL), CCTX_EINVAL);
    assert_null(cctx_local_retain(NULL));
    cctx_local_release(NULL);
    assert_int_equal(cctx_local_get(NULL, &out), CCTX_EINVAL);
    assert_int_equal(cctx_local_get(f->local, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_local_set(NULL, f->v2), CCTX_EINVAL);
    assert_int_equal(cctx_local_delete(NULL), CCTX_EINVAL);
    assert_null(l);

    assert_ptr_equal(out, (void *)0x1); /* no error wrote an out parameter */
    check_untouched(f);
    check_base(f);
}

/* ------------------------------------------------------------ wrong kind */

static void test_wrong_kind_handles(void **state)
{
    fixture *f = *state;
    cctx_token *tok;
    assert_ok(cctx_context_set(f->c1, f->a, f->v2, &tok));
    cctx_var *as_var[] = { (cctx_var *)f->witness, (cctx_var *)tok, (cctx_var *)f->local,
                           (cctx_var *)f->v1 };
    cctx_context *as_ctx[] = { (cctx_context *)f->a, (cctx_context *)tok,
                               (cctx_context *)f->local, (cctx_context *)f->v1 };
    cctx_token *as_tok[] = { (cctx_token *)f->a, (cctx_token *)f->witness,
                             (cctx_token *)f->local, (cctx_token *)f->v1 };
    cctx_local *as_loc[] = { (cctx_local *)f->a, (cctx_local *)f->witness, (cctx_local *)tok,
                             (cctx_local *)f->v1 };
    void *out = (void *)0x1;
    cctx_context *c = NULL;
    cctx_iter *it = NULL;
    cctx_token *t2 = NULL;
    for (int i = 0; i < 4; i++) {
        cctx_var *v = as_var[i];
        assert_int_equal(cctx_var_get(v, &out), CCTX_EINVAL);
        assert_int_equal(cctx_var_get_default(v, NULL, &out), CCTX_EINVAL);
        assert_int_equal(cctx_var_set(v, f->v1, &t2), CCTX_EINVAL);
        assert_int_equal(cctx_var_reset(v, tok), CCTX_EINVAL);
        assert_int_equal(cctx_var_default(v, &out), CCTX_EINVAL);
        cctx_value_ops ops = { NULL, NULL };
        assert_int_equal(cctx_var_ops(v, &ops), CCTX_EINVAL);
        assert_null(ops.release);
        assert_null(cctx_var_name(v));
        assert_int_equal(cctx_var_flags(v), 0);
        assert_ptr_equal(cctx_var_retain(v), v); /* passes through, no effect */
        cctx_var_release(v);
        cctx_var_release_value(v, f->v1);
        assert_int_equal(cctx_context_lookup(f->witness, v, &out), CCTX_EINVAL);
        assert_int_equal(cctx_context_get(f->witness, v, &out), CCTX_EINVAL);
        assert_false(cctx_context_contains(f->witness, v));
        assert_int_equal(cctx_context_set(f->witness, v, f->v1, NULL), CCTX_EINVAL);
        assert_int_equal(cctx_context_delete(f->witness, v), CCTX_EINVAL);
        assert_int_equal(cctx_context_reset(f->c1, v, tok), CCTX_EINVAL);

        cctx_context *x = as_ctx[i];
        assert_int_equal(cctx_context_copy(x, &c), CCTX_EINVAL);
        assert_int_equal(cctx_context_copy_inherit(x, &c), CCTX_EINVAL);
        assert_int_equal(cctx_context_enter(x), CCTX_EINVAL);
        assert_int_equal(cctx_context_exit(x), CCTX_EINVAL);
        assert_int_equal(cctx_context_run(x, body_nop, NULL), CCTX_EINVAL);
        assert_int_equal(cctx_context_claim(x), CCTX_EINVAL);
        assert_int_equal(cctx_context_unclaim(x), CCTX_EINVAL);
        assert_false(cctx_context_is_entered(x));
        assert_int_equal(cctx_context_count(x), 0);
        assert_int_equal(cctx_context_lookup(x, f->a, &out), CCTX_EINVAL);
        assert_int_equal(cctx_context_get(x, f->a, &out), CCTX_EINVAL);
        assert_false(cctx_context_contains(x, f->a));
        assert_int_equal(cctx_context_set(x, f->a, f->v1, &t2), CCTX_EINVAL);
        assert_int_equal(cctx_context_reset(x, f->a, tok), CCTX_EINVAL);
        assert_int_equal(cctx_context_delete(x, f->a), CCTX_EINVAL);
        assert_false(cctx_context_equal(x, f->witness));
        assert_false(cctx_context_equal(f->witness, x));
        assert_int_equal(cctx_iter_new(x, &it), CCTX_EINVAL);
        assert_ptr_equal(cctx_context_retain(x), x);
        cctx_context_release(x);

        cctx_token *y = as_tok[i];
        assert_int_equal(cctx_var_reset(f->a, y), CCTX_EINVAL);
        assert_int_equal(cctx_context_reset(f->c1, f->a, y), CCTX_EINVAL);
        assert_null(cctx_token_var(y));
        assert_null(cctx_token_context(y));
        assert_int_equal(cctx_token_old_value(y, &out), CCTX_EINVAL);
        assert_false(cctx_token_is_used(y));
        assert_ptr_equal(cctx_token_retain(y), y);
        cctx_token_release(y);

        cctx_local *z = as_loc[i];
        assert_int_equal(cctx_local_get(z, &out), CCTX_EINVAL);
        assert_int_equal(cctx_local_set(z, f->v1), CCTX_EINVAL);
        assert_int_equal(cctx_local_delete(z), CCTX_EINVAL);
        assert_ptr_equal(cctx_local_retain(z), z);
        cctx_local_release(z);
    }
    assert_ptr_equal(out, (void *)0x1);
    assert_null(c);
    assert_null(it);
    assert_null(t2);
    /* The token and c1 survived every wrong-kind release. */
    assert_false(cctx_token_is_used(tok));
    assert_ok(cctx_context_reset(f->c1, f->a, tok));
    assert_int_equal(cctx_context_count(f->c1), 0);
    cctx_token_release(tok);
    assert_int_equal(tv_live(), 3);
    check_untouched(f);
    check_base(f);
}

/* ------------------------------------------------------------ tokens */

static void test_token_wrong_var(void **state)
{
    fixture *f = *state;
    cctx_token *t;
    void *out;
    assert_ok(cctx_var_set(f->a, f->v1, &t));
    assert_int_equal(cctx_var_reset(f->b, t), CCTX_TOKEN_WRONG_VAR);
    assert_false(cctx_token_is_used(t));
    assert_ok(cctx_var_get(f->a, &out));
    assert_ptr_equal(out, f->v1);
    assert_ok(cctx_var_get(f->b, &out));
    assert_ptr_equal(out, f->v3); /* b's default: never set */
    assert_ok(cctx_var_reset(f->a, t));
    cctx_token_release(t);
    check_base(f);
    check_untouched(f);
}

static void test_token_wrong_context(void **state)
{
    fixture *f = *state;
    cctx_token *t;
    void *out;
    assert_ok(cctx_context_set(f->c1, f->a, f->v1, &t));
    /* In the current context (base), in c2 entered, and explicitly. */
    assert_int_equal(cctx_var_reset(f->a, t), CCTX_TOKEN_WRONG_CONTEXT);
    assert_ok(cctx_context_enter(f->c2));
    assert_int_equal(cctx_var_reset(f->a, t), CCTX_TOKEN_WRONG_CONTEXT);
    assert_int_equal(cctx_context_reset(f->c2, f->a, t), CCTX_TOKEN_WRONG_CONTEXT);
    assert_int_equal(cctx_context_reset(f->witness, f->a, t), CCTX_TOKEN_WRONG_CONTEXT);
    assert_ok(cctx_context_exit(f->c2));
    assert_int_equal(cctx_context_count(f->c2), 0);
    assert_false(cctx_token_is_used(t));
    assert_ok(cctx_context_get(f->c1, f->a, &out));
    assert_ptr_equal(out, f->v1);
    /* On a thread without state, too. */
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(cctx_var_reset(f->a, t), CCTX_TOKEN_WRONG_CONTEXT);
    assert_int_equal(cctx_var_reset(f->b, t), CCTX_TOKEN_WRONG_VAR);
    assert_ok(cctx_context_reset(f->c1, f->a, t));
    assert_int_equal(cctx_var_reset(f->a, t), CCTX_TOKEN_USED);
    cctx_token_release(t);
    rebuild_thread(f);
    check_untouched(f);
}

static void test_token_used(void **state)
{
    fixture *f = *state;
    cctx_token *t;
    assert_ok(cctx_var_set(f->a, f->v2, &t));
    assert_ok(cctx_var_reset(f->a, t));
    check_base(f);
    assert_ok(cctx_var_set(f->a, f->v1, NULL));
    /* A used token changes nothing, whatever else is wrong with it
     * (Python's order: used is reported first). */
    assert_int_equal(cctx_var_reset(f->a, t), CCTX_TOKEN_USED);
    assert_int_equal(cctx_var_reset(f->b, t), CCTX_TOKEN_USED);
    assert_int_equal(cctx_context_reset(f->c1, f->b, t), CCTX_TOKEN_USED);
    void *out;
    assert_ok(cctx_var_get(f->a, &out));
    assert_ptr_equal(out, f->v1);
    assert_true(cctx_token_is_used(t));
    cctx_token_release(t);
    assert_ok(cctx_var_set(f->a, f->v3, NULL));
    check_untouched(f);
}

/* ------------------------------------------------------------ enter/exit */

static void test_exit_without_enter(void **state)
{
    fixture *f = *state;
    assert_int_equal(cctx_context_exit(f->c1), CCTX_NOT_CURRENT);
    assert_int_equal(cctx_context_exit(f->witness), CCTX_NOT_CURRENT);
    /* The base context (reachable through a token) cannot be exited. */
    cctx_token *t;
    assert_ok(cctx_var_set(f->b, f->v1, &t));
    assert_int_equal(cctx_context_exit(cctx_token_context(t)), CCTX_NOT_CURRENT);
    assert_int_equal(cctx_context_enter(cctx_token_context(t)), CCTX_ALREADY_ENTERED);
    assert_int_equal(cctx_context_claim(cctx_token_context(t)), CCTX_ALREADY_ENTERED);
    assert_ok(cctx_var_reset(f->b, t));
    cctx_token_release(t);
    /* On a thread without state. */
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(cctx_context_exit(f->c1), CCTX_NOT_CURRENT);
    rebuild_thread(f);
    check_base(f);
    check_untouched(f);
}

static void test_exit_not_current(void **state)
{
    fixture *f = *state;
    void *out;
    assert_ok(cctx_context_set(f->c1, f->a, f->v1, NULL));
    assert_ok(cctx_context_set(f->c2, f->a, f->v2, NULL));
    assert_ok(cctx_context_enter(f->c1));
    assert_ok(cctx_context_enter(f->c2));
    assert_int_equal(cctx_context_exit(f->c1), CCTX_NOT_CURRENT);
    assert_int_equal(cctx_context_exit(f->witness), CCTX_NOT_CURRENT);
    assert_true(cctx_context_is_entered(f->c1));
    assert_ok(cctx_var_get(f->a, &out)); /* still in c2 */
    assert_ptr_equal(out, f->v2);
    assert_ok(cctx_context_exit(f->c2));
    assert_ok(cctx_var_get(f->a, &out)); /* back in c1 */
    assert_ptr_equal(out, f->v1);
    assert_int_equal(cctx_context_exit(f->c2), CCTX_NOT_CURRENT);
    assert_ok(cctx_context_exit(f->c1));
    check_base(f);
    check_untouched(f);
}

static void test_double_enter_and_claims(void **state)
{
    fixture *f = *state;
    assert_ok(cctx_context_enter(f->c1));
    assert_int_equal(cctx_context_enter(f->c1), CCTX_ALREADY_ENTERED);
    assert_int_equal(cctx_context_claim(f->c1), CCTX_ALREADY_ENTERED);
    assert_int_equal(cctx_context_unclaim(f->c1), CCTX_NOT_ENTERED); /* entered, not claimed */
    assert_int_equal(cctx_context_run(f->c1, body_nop, NULL), CCTX_ALREADY_ENTERED);
    assert_true(cctx_context_is_entered(f->c1));
    assert_int_equal(cctx_thread_cleanup(), CCTX_ALREADY_ENTERED); /* nothing changes */
    assert_ok(cctx_context_exit(f->c1));
    check_base(f);

    assert_int_equal(cctx_context_unclaim(f->c2), CCTX_NOT_ENTERED); /* never claimed */
    assert_ok(cctx_context_claim(f->c2));
    assert_int_equal(cctx_context_claim(f->c2), CCTX_ALREADY_ENTERED);
    assert_int_equal(cctx_context_enter(f->c2), CCTX_ALREADY_ENTERED);
    assert_int_equal(cctx_context_exit(f->c2), CCTX_NOT_CURRENT);
    assert_ok(cctx_context_set(f->c2, f->a, f->v1, NULL)); /* the claimer writes */
    assert_ok(cctx_context_unclaim(f->c2));
    assert_int_equal(cctx_context_unclaim(f->c2), CCTX_NOT_ENTERED);
    assert_false(cctx_context_is_entered(f->c2));
    assert_int_equal(cctx_context_count(f->c2), 1);
    check_untouched(f);
}

/* A context entered by another thread: enter, claim and every write from
 * this thread are refused; the other thread's contents stay. */
struct holder {
    cctx_context *ctx;
    cctx_var *var;
    void *value;
    pthread_mutex_t m;
    pthread_cond_t cv;
    int stage; /* 1: entered, 2: may leave */
    cctx_status st;
};

static void *hold_entered(void *p)
{
    struct holder *h = p;
    h->st = cctx_context_enter(h->ctx);
    if (h->st == CCTX_OK)
        h->st = cctx_var_set(h->var, h->value, NULL);
    pthread_mutex_lock(&h->m);
    h->stage = 1;
    pthread_cond_broadcast(&h->cv);
    while (h->stage != 2)
        pthread_cond_wait(&h->cv, &h->m);
    pthread_mutex_unlock(&h->m);
    if (h->st == CCTX_OK)
        h->st = cctx_context_exit(h->ctx);
    return NULL;
}

static void test_entered_on_another_thread(void **state)
{
    fixture *f = *state;
    struct holder h = { f->c1, f->a, f->v2, PTHREAD_MUTEX_INITIALIZER,
                        PTHREAD_COND_INITIALIZER, 0, CCTX_OK };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, hold_entered, &h), 0);
    pthread_mutex_lock(&h.m);
    while (h.stage != 1)
        pthread_cond_wait(&h.cv, &h.m);
    pthread_mutex_unlock(&h.m);
    assert_ok(h.st);

    cctx_token *t = NULL;
    assert_int_equal(cctx_context_enter(f->c1), CCTX_ALREADY_ENTERED);
    assert_int_equal(cctx_context_claim(f->c1), CCTX_ALREADY_ENTERED);
    assert_int_equal(cctx_context_unclaim(f->c1), CCTX_NOT_ENTERED);
    assert_int_equal(cctx_context_exit(f->c1), CCTX_NOT_CURRENT);
    assert_int_equal(cctx_context_set(f->c1, f->b, f->v1, &t), CCTX_ALREADY_ENTERED);
    assert_null(t);
    assert_int_equal(cctx_context_delete(f->c1, f->a), CCTX_ALREADY_ENTERED);
    /* reset: a token made in c1 by this thread before, refused too */
    void *out;
    assert_ok(cctx_context_lookup(f->c1, f->a, &out)); /* reading is fine */
    assert_ptr_equal(out, f->v2);
    cctx_var_release_value(f->a, out);
    assert_int_equal(cctx_context_count(f->c1), 1);

    pthread_mutex_lock(&h.m);
    h.stage = 2;
    pthread_cond_broadcast(&h.cv);
    pthread_mutex_unlock(&h.m);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_ok(h.st);
    assert_false(cctx_context_is_entered(f->c1));
    assert_ok(cctx_context_get(f->c1, f->a, &out));
    assert_ptr_equal(out, f->v2);
    check_base(f);
    check_untouched(f);
}

static void test_reset_refused_while_entered_elsewhere(void **state)
{
    fixture *f = *state;
    cctx_token *t;
    assert_ok(cctx_context_set(f->c1, f->a, f->v1, &t));
    struct holder h = { f->c1, f->b, f->v2, PTHREAD_MUTEX_INITIALIZER,
                        PTHREAD_COND_INITIALIZER, 0, CCTX_OK };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, hold_entered, &h), 0);
    pthread_mutex_lock(&h.m);
    while (h.stage != 1)
        pthread_cond_wait(&h.cv, &h.m);
    pthread_mutex_unlock(&h.m);
    assert_int_equal(cctx_context_reset(f->c1, f->a, t), CCTX_ALREADY_ENTERED);
    assert_false(cctx_token_is_used(t));
    pthread_mutex_lock(&h.m);
    h.stage = 2;
    pthread_cond_broadcast(&h.cv);
    pthread_mutex_unlock(&h.m);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_ok(cctx_context_reset(f->c1, f->a, t));
    assert_int_equal(cctx_context_count(f->c1), 1); /* b, set by the other thread */
    cctx_token_release(t);
    check_untouched(f);
}

/* ------------------------------------------------------------ run */

struct run_exit {
    cctx_context *self, *other;
    cctx_status st1, st2;
};

static void body_exits_itself(void *p)
{
    struct run_exit *r = p;
    r->st1 = cctx_context_exit(r->self);
}

static void body_enters_other(void *p)
{
    struct run_exit *r = p;
    r->st2 = cctx_context_enter(r->other);
}

/* What cctx_context_run does when the body unbalances the thread's chain
 * (not stated in the header; see docs/reliability.md). */
static void test_run_unbalanced_body(void **state)
{
    fixture *f = *state;
    struct run_exit r = { f->c1, f->c2, CCTX_EINVAL, CCTX_EINVAL };
    assert_int_equal(cctx_context_run(f->c1, body_exits_itself, &r), CCTX_NOT_CURRENT);
    assert_ok(r.st1);
    assert_false(cctx_context_is_entered(f->c1));
    check_base(f);
    assert_ok(cctx_context_run(f->c1, body_enters_other, &r));
    assert_ok(r.st2);
    assert_false(cctx_context_is_entered(f->c2)); /* left for the body */
    assert_false(cctx_context_is_entered(f->c1));
    check_base(f);
    check_untouched(f);
}

struct run_release {
    cctx_context *self;  /* the reference the test hands the body */
    cctx_context *again; /* a context the body made at self's address */
    cctx_status exit_st, enter_st;
};

/* An event-loop callback that owns the context it runs in: it leaves it,
 * drops the last reference, and goes on in a new context of its own,
 * which it means to stay in. The allocator reuses the freed context's
 * memory; the body takes a new context until it gets that address (so
 * that the run cannot tell them apart by the pointer). */
static void body_exits_releases_and_enters_a_new_context(void *p)
{
    struct run_release *r = p;
    void *freed = r->self;
    r->exit_st = cctx_context_exit(r->self);
    cctx_context_release(r->self);
    cctx_context *tries[64];
    int n = 0;
    for (; n < 64; n++) {
        if (cctx_context_new(&tries[n]) != CCTX_OK)
            break;
        if ((void *)tries[n] == freed) {
            r->again = tries[n];
            break;
        }
    }
    for (int i = 0; i < n; i++)
        cctx_context_release(tries[i]);
    if (r->again != NULL)
        r->enter_st = cctx_context_enter(r->again);
}

/* The body of cctx_context_run exits the run's context and releases its
 * last reference (as cctx_context_enter allows), then enters a new context
 * that happens to get the same address. The header: "if fn exited ctx
 * itself, returns CCTX_NOT_CURRENT" — and the body's own context stays
 * entered. Before the fix the run, which held no reference, took the new
 * context for its own: it returned CCTX_OK and exited the body's context
 * (and read the freed one when the address was not reused). */
static void test_run_whose_body_exits_and_releases_its_context(void **state)
{
    (void)state;
    struct run_release r = { NULL, NULL, CCTX_EINVAL, CCTX_EINVAL };
    assert_ok(cctx_context_new(&r.self));
    cctx_context *before = cctx_context_current();
    cctx_status st = cctx_context_run(r.self, body_exits_releases_and_enters_a_new_context, &r);
    assert_ok(r.exit_st);
    if (r.again == NULL) {
        /* The allocator gave the address to none of 64 new contexts: the
         * scenario did not arise (the run may still have read freed
         * memory, which ASan/valgrind runs would show). */
        assert_int_equal(st, CCTX_NOT_CURRENT);
        assert_ptr_equal(cctx_context_current(), before);
        return;
    }
    assert_ok(r.enter_st);
    assert_int_equal(st, CCTX_NOT_CURRENT);
    assert_ptr_equal(cctx_context_current(), r.again); /* still the body's */
    assert_true(cctx_context_is_entered(r.again));
    assert_ok(cctx_context_exit(r.again));
    assert_ptr_equal(cctx_context_current(), before);
    cctx_context_release(r.again);
}

/* ------------------------------------------------------------ locals */

static void test_local_misuse(void **state)
{
    fixture *f = *state;
    cctx_local *l;
    void *out = (void *)0x1;
    assert_ok(cctx_local_new(&tv_ops, NULL, NULL, &l));
    assert_int_equal(cctx_local_delete(l), CCTX_NOT_FOUND); /* never set */
    assert_int_equal(cctx_local_get(l, &out), CCTX_NOT_FOUND);
    assert_ok(cctx_local_set(l, f->v2));
    assert_ok(cctx_local_delete(l));
    assert_int_equal(cctx_local_delete(l), CCTX_NOT_FOUND); /* twice */
    assert_int_equal(cctx_local_get(l, &out), CCTX_NOT_FOUND);
    assert_ptr_equal(out, (void *)0x1);
    cctx_local_release(l);
    check_untouched(f);
}

/* ------------------------------------------------------------ known bug */

/* B2 (docs/reliability.md, fixed): watcher callbacks once ran inside an
 * epoch section, so a read in a callback that was the last one out of a
 * context whose writer had retired roots drained them with
 * ck_epoch_synchronize_wait — waiting for its own open section, for ever.
 * Callbacks now run outside any section (watch.c). A 5-second watchdog
 * turns a hang into a failure. */
static __thread int slow_ms;
static void ms_sleep(int n)
{
    struct timespec t = { n / 1000, (n % 1000) * 1000000L };
    nanosleep(&t, NULL);
}
static void slow_retain(void *p)
{
    (void)p;
    if (slow_ms)
        ms_sleep(slow_ms);
}
static const cctx_value_ops slow_ops = { slow_retain, NULL };
static cctx_context *dl_ctx;
static cctx_var *dl_var;
static int dl_done;

static void *dl_reader(void *p)
{
    void *out;
    (void)p;
    slow_ms = 100; /* inside the read for 100 ms */
    (void)cctx_context_lookup(dl_ctx, dl_var, &out);
    (void)cctx_thread_cleanup();
    return NULL;
}
static void dl_watcher(cctx_event e, cctx_context *c, void *u)
{
    void *out;
    (void)c, (void)u;
    if (e != CCTX_EVENT_ENTERED || slow_ms < 0)
        return;
    slow_ms = 200; /* outlives the other reader: last one out */
    (void)cctx_context_lookup(dl_ctx, dl_var, &out);
    slow_ms = -1;
}
static void *dl_watched(void *p)
{
    cctx_context *d;
    (void)p;
    if (cctx_context_new(&d) == CCTX_OK && cctx_context_enter(d) == CCTX_OK &&
        cctx_context_exit(d) != CCTX_OK)
        abort();
    cctx_context_release(d);
    (void)cctx_thread_cleanup();
    __atomic_store_n(&dl_done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void test_read_inside_watcher_callback_does_not_deadlock(void **state)
{
    fixture *f = *state;
    static int x, y;
    cctx_var *w;
    int id;
    assert_ok(cctx_var_new("slow", &slow_ops, &dl_var));
    assert_ok(cctx_var_new("w", NULL, &w));
    assert_ok(cctx_context_new(&dl_ctx));
    assert_ok(cctx_context_set(dl_ctx, dl_var, &x, NULL));
    assert_ok(cctx_add_watcher(dl_watcher, NULL, &id));
    pthread_t r, a;
    assert_int_equal(pthread_create(&r, NULL, dl_reader, NULL), 0);
    ms_sleep(20);
    assert_ok(cctx_context_set(dl_ctx, w, &y, NULL)); /* retires: a reader is inside */
    assert_int_equal(pthread_create(&a, NULL, dl_watched, NULL), 0);
    pthread_join(r, NULL);
    for (int i = 0; i < 50 && !__atomic_load_n(&dl_done, __ATOMIC_SEQ_CST); i++)
        ms_sleep(100);
    if (!__atomic_load_n(&dl_done, __ATOMIC_SEQ_CST))
        fail_msg("deadlock: the watcher's read is still waiting for a grace period "
                 "after 5 s (ck_epoch_synchronize_wait inside its own section)");
    pthread_join(a, NULL);
    assert_ok(cctx_clear_watcher(id));
    cctx_context_release(dl_ctx);
    cctx_var_release(dl_var);
    cctx_var_release(w);
    check_untouched(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_null_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_kind_handles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_wrong_var, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_wrong_context, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_used, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exit_without_enter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exit_not_current, setup, teardown),
        cmocka_unit_test_setup_teardown(test_double_enter_and_claims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_entered_on_another_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_refused_while_entered_elsewhere, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_unbalanced_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_whose_body_exits_and_releases_its_context, setup, teardown),
        cmocka_unit_test_setup_teardown(test_local_misuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_inside_watcher_callback_does_not_deadlock, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
