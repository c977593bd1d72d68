/*
 * test_shared_base.c — copies of one shared base context that set, reset,
 * delete and overwrite in place what they share with it (the request
 * pattern: Benchmarks/c/bench_core.c, request_loop), through the public
 * API:
 *
 *   - lifetime: values released in every order (base first, copy first,
 *     reset through a token, in-place overwrite of a value the base also
 *     binds, the base's own value stored again, deletes), with release
 *     callbacks that read and set variables; every count ends at 0 and
 *     each value is released as soon as no map binds it;
 *   - stress: threads copying one shared base and writing their copies
 *     while another thread keeps replacing and deleting the base's values.
 */
#include "test_support.h"

#include <string.h>

static cctx_var *new_var(const char *name)
{
    cctx_var *v = NULL;
    assert_ok(cctx_var_new(name, &tv_ops, &v));
    return v;
}

static long lookup_id(cctx_context *ctx, cctx_var *var)
{
    void *out = NULL;
    cctx_status st = cctx_context_lookup(ctx, var, &out);
    if (st == CCTX_NOT_FOUND)
        return -1;
    assert_ok(st);
    long id = ((tv_value *)out)->id;
    cctx_var_release_value(var, out);
    return id;
}

static long current_id(cctx_var *var)
{
    void *out = NULL;
    cctx_status st = cctx_var_get(var, &out);
    if (st == CCTX_NOT_FOUND)
        return -1;
    assert_ok(st);
    return ((tv_value *)out)->id;
}

/* A base context binding vars[0..n) to values with ids 1..n. */
static cctx_context *base_new(cctx_var **vars, int n, tv_hook hook)
{
    cctx_context *base = NULL;
    assert_ok(cctx_context_new(&base));
    for (int i = 0; i < n; i++) {
        tv_value *v = hook != NULL ? tv_new_hooked(i + 1, hook, NULL) : tv_new(i + 1);
        assert_ok(cctx_context_set(base, vars[i], v, NULL));
        tv_drop(v);
    }
    return base;
}

/* ------------------------------------------------------------- lifetime */

enum { LIFE_VARS = 40 };
static cctx_var *life_vars[LIFE_VARS + 2];
static cctx_var *probe, *sink;
static long hook_runs;

/* A release callback that uses the library: reads a variable, sets one
 * (with a token, reset again) on whatever context is current. */
static void hook_reads_and_sets(tv_value *v, void *arg)
{
    (void)arg;
    (void)v;
    __atomic_add_fetch(&hook_runs, 1, __ATOMIC_SEQ_CST);
    void *out = NULL;
    cctx_status st = cctx_var_get(probe, &out);
    T_CHECK(st == CCTX_OK || st == CCTX_NOT_FOUND);
    tv_value *s = tv_new(999);
    cctx_token *tok = NULL;
    T_CHECK(cctx_var_set(sink, s, &tok) == CCTX_OK);
    T_CHECK(cctx_var_get(sink, &out) == CCTX_OK && out == s);
    T_CHECK(cctx_var_reset(sink, tok) == CCTX_OK);
    cctx_token_release(tok);
    tv_drop(s);
}

static void life_setup(void)
{
    for (int i = 0; i < LIFE_VARS + 2; i++)
        life_vars[i] = new_var("life");
    probe = new_var("probe");
    sink = new_var("sink");
    hook_runs = 0;
}

static void life_teardown(void)
{
    for (int i = 0; i < LIFE_VARS + 2; i++)
        cctx_var_release(life_vars[i]);
    cctx_var_release(probe);
    cctx_var_release(sink);
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(thread_failures(), 0);
    assert_int_equal(tv_live(), 0);
}

/* A copy of `base` with a new variable set and an existing one replaced
 * (so its root is its own, sharing the rest with the base's). Entered
 * when `enter`. */
static cctx_context *derived_new(cctx_context *base, bool enter)
{
    cctx_context *c = NULL;
    assert_ok(cctx_context_copy(base, &c));
    tv_value *x = tv_new_hooked(1001, hook_reads_and_sets, NULL);
    tv_value *y = tv_new_hooked(1002, hook_reads_and_sets, NULL);
    assert_ok(cctx_context_set(c, life_vars[LIFE_VARS], x, NULL));
    assert_ok(cctx_context_set(c, life_vars[3], y, NULL));
    tv_drop(x);
    tv_drop(y);
    if (enter)
        assert_ok(cctx_context_enter(c));
    assert_int_equal(lookup_id(c, life_vars[3]), 1002);
    assert_int_equal(lookup_id(base, life_vars[3]), 4);
    assert_int_equal(cctx__context_check(c), 0);
    return c;
}

static void test_release_base_first(void **state)
{
    (void)state;
    life_setup();
    cctx_context *base = base_new(life_vars, LIFE_VARS, hook_reads_and_sets);
    cctx_context *c = derived_new(base, false);
    cctx_context_release(base);
    /* Id 4, which the copy replaced, is bound by no map now: released at
     * once. The copy still reads every value it shares with the base. */
    assert_int_equal(hook_runs, 1);
    for (int i = 0; i < LIFE_VARS; i++)
        assert_int_equal(lookup_id(c, life_vars[i]), i == 3 ? 1002 : i + 1);
    assert_int_equal(cctx__context_check(c), 0);
    cctx_context_release(c);
    assert_int_equal(hook_runs, LIFE_VARS + 2);
    life_teardown();
}

static void test_release_copy_first(void **state)
{
    (void)state;
    life_setup();
    cctx_context *base = base_new(life_vars, LIFE_VARS, hook_reads_and_sets);
    cctx_context *c = derived_new(base, false);
    long live = tv_live();
    cctx_context_release(c);
    assert_int_equal(tv_live(), live - 2); /* what only the copy held */
    for (int i = 0; i < LIFE_VARS; i++)
        assert_int_equal(lookup_id(base, life_vars[i]), i + 1);
    cctx_context_release(base);
    assert_int_equal(hook_runs, LIFE_VARS + 2);
    life_teardown();
}

/* Inside the entered copy: set each base variable with a token and reset
 * it (the reset stores the base's own value again). */
static void test_reset_restores_the_base_value(void **state)
{
    (void)state;
    life_setup();
    cctx_context *base = base_new(life_vars, LIFE_VARS, hook_reads_and_sets);
    cctx_context *c = derived_new(base, true);
    for (int i = 0; i < LIFE_VARS; i++) {
        tv_value *v = tv_new_hooked(2000 + i, hook_reads_and_sets, NULL);
        cctx_token *t = NULL;
        assert_ok(cctx_var_set(life_vars[i], v, &t));
        tv_drop(v);
        assert_int_equal(current_id(life_vars[i]), 2000 + i);
        assert_ok(cctx_var_reset(life_vars[i], t));
        cctx_token_release(t);
        assert_int_equal(current_id(life_vars[i]), i == 3 ? 1002 : i + 1);
        assert_int_equal(cctx__context_check(c), 0);
    }
    assert_int_equal(hook_runs, LIFE_VARS); /* each 2000+i, once */
    assert_ok(cctx_context_exit(c));
    cctx_context_release(base);
    cctx_context_release(c);
    assert_int_equal(hook_runs, 2 * LIFE_VARS + 2);
    life_teardown();
}

/* The entered copy overwrites base variables (in place where its path is
 * its own): the base keeps its values, and each value the copy replaces
 * is released at once when no map binds it any more; storing the base's
 * own value again gives the copy one reference to it (exact counts). */
static void test_overwrite_of_values_shared_with_the_base(void **state)
{
    (void)state;
    life_setup();
    tv_value *shared[LIFE_VARS];
    cctx_context *base = NULL;
    assert_ok(cctx_context_new(&base));
    for (int i = 0; i < LIFE_VARS; i++) {
        shared[i] = tv_new_hooked(i + 1, hook_reads_and_sets, NULL);
        assert_ok(cctx_context_set(base, life_vars[i], shared[i], NULL));
    }
    cctx_context *c = derived_new(base, true);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < LIFE_VARS; i++) {
            tv_value *v = tv_new_hooked(3000 + i, hook_reads_and_sets, NULL);
            assert_ok(cctx_var_set(life_vars[i], v, NULL));
            tv_drop(v);
            assert_int_equal(v->refcnt, 1); /* the copy's only */
            assert_int_equal(shared[i]->refcnt, 2); /* user + base */
            assert_int_equal(lookup_id(base, life_vars[i]), i + 1);
            /* Back to the base's value: the replaced value is released
             * at once. */
            long runs = hook_runs;
            assert_ok(cctx_var_set(life_vars[i], shared[i], NULL));
            assert_int_equal(hook_runs, runs + 1);
            assert_int_equal(shared[i]->refcnt, 3); /* user, base, copy */
            assert_int_equal(cctx__context_check(c), 0);
        }
    }
    assert_ok(cctx_context_exit(c));
    cctx_context_release(c);
    for (int i = 0; i < LIFE_VARS; i++)
        assert_int_equal(shared[i]->refcnt, 2); /* user + base */
    cctx_context_release(base);
    for (int i = 0; i < LIFE_VARS; i++) {
        assert_int_equal(shared[i]->refcnt, 1);
        tv_drop(shared[i]);
    }
    life_teardown();
}

/* Deleting in the copy what it shares with the base. */
static void test_delete_in_derived_map(void **state)
{
    (void)state;
    life_setup();
    cctx_context *base = base_new(life_vars, LIFE_VARS, hook_reads_and_sets);
    cctx_context *c = derived_new(base, false);
    for (int i = 0; i < LIFE_VARS; i += 2)
        assert_ok(cctx_context_delete(c, life_vars[i]));
    assert_int_equal(cctx__context_check(c), 0);
    for (int i = 0; i < LIFE_VARS; i++) {
        assert_int_equal(lookup_id(c, life_vars[i]),
                         i % 2 == 0 ? -1 : i == 3 ? 1002 : i + 1);
        assert_int_equal(lookup_id(base, life_vars[i]), i + 1);
    }
    cctx_context_release(base);
    cctx_context_release(c);
    assert_int_equal(hook_runs, LIFE_VARS + 2);
    life_teardown();
}

/* --------------------------------------------------------------- stress */

enum { STRESS_VARS = 24, STRESS_WORKERS = 4 };
static cctx_var *stress_vars[STRESS_VARS + STRESS_WORKERS];
static cctx_context *stress_base;
static volatile int stress_stop;

struct stress_worker {
    int index;
    long iters;
};

static void *stress_copier(void *p)
{
    struct stress_worker *w = p;
    cctx_var *own = stress_vars[STRESS_VARS + w->index];
    uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)(w->index + 1);
    for (long i = 0; i < w->iters; i++) {
        cctx_context *c = NULL;
        T_CHECK(cctx_context_copy(stress_base, &c) == CCTX_OK);
        T_CHECK(cctx_context_enter(c) == CCTX_OK);
        int k = (int)(rng_next(&rng) % STRESS_VARS);
        void *copied = NULL;
        cctx_status had = cctx_var_get(stress_vars[k], &copied);
        T_CHECK(had == CCTX_OK || had == CCTX_NOT_FOUND);
        tv_value *a = tv_new(-1), *b = tv_new(-2);
        cctx_token *t = NULL;
        T_CHECK(cctx_var_set(own, a, NULL) == CCTX_OK);
        T_CHECK(cctx_var_set(stress_vars[k], b, &t) == CCTX_OK);
        tv_drop(a);
        tv_drop(b);
        void *out = NULL;
        T_CHECK(cctx_var_get(stress_vars[k], &out) == CCTX_OK && out == b);
        T_CHECK(cctx_var_get(own, &out) == CCTX_OK && out == a);
        T_CHECK(cctx_var_reset(stress_vars[k], t) == CCTX_OK);
        cctx_token_release(t);
        /* Back to what the base held when it was copied. */
        out = NULL;
        T_CHECK(cctx_var_get(stress_vars[k], &out) == had && out == copied);
        if (i % 4 == 0) {
            cctx_status st = cctx_context_delete(c, stress_vars[(k + 1) % STRESS_VARS]);
            T_CHECK(st == CCTX_OK || st == CCTX_NOT_FOUND);
        }
        T_CHECK(cctx__context_check(c) == 0);
        T_CHECK(cctx_context_exit(c) == CCTX_OK);
        cctx_context_release(c);
    }
    return NULL;
}

static void *stress_replacer(void *p)
{
    (void)p;
    uint64_t rng = 12345;
    long id = 100000;
    while (!__atomic_load_n(&stress_stop, __ATOMIC_ACQUIRE)) {
        int k = (int)(rng_next(&rng) % STRESS_VARS);
        cctx_status st;
        if (rng_next(&rng) % 8 == 0) {
            st = cctx_context_delete(stress_base, stress_vars[k]);
            T_CHECK(st == CCTX_OK || st == CCTX_NOT_FOUND);
        } else {
            tv_value *v = tv_new(id++);
            T_CHECK(cctx_context_set(stress_base, stress_vars[k], v, NULL) == CCTX_OK);
            tv_drop(v);
        }
    }
    return NULL;
}

static void test_threads_copy_a_base_that_is_being_replaced(void **state)
{
    (void)state;
    long allocs = cctx__live_allocations();
    for (int i = 0; i < STRESS_VARS + STRESS_WORKERS; i++)
        stress_vars[i] = new_var("stress");
    stress_base = base_new(stress_vars, STRESS_VARS, NULL);
    stress_stop = 0;
    pthread_t rep, t[STRESS_WORKERS];
    struct stress_worker ws[STRESS_WORKERS];
    assert_int_equal(pthread_create(&rep, NULL, stress_replacer, NULL), 0);
    for (int i = 0; i < STRESS_WORKERS; i++) {
        ws[i] = (struct stress_worker){ .index = i, .iters = scaled(20000) };
        assert_int_equal(pthread_create(&t[i], NULL, stress_copier, &ws[i]), 0);
    }
    for (int i = 0; i < STRESS_WORKERS; i++)
        pthread_join(t[i], NULL);
    __atomic_store_n(&stress_stop, 1, __ATOMIC_RELEASE);
    pthread_join(rep, NULL);
    assert_int_equal(thread_failures(), 0);
    assert_int_equal(cctx__context_check(stress_base), 0);
    cctx_context_release(stress_base);
    for (int i = 0; i < STRESS_VARS + STRESS_WORKERS; i++)
        cctx_var_release(stress_vars[i]);
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(tv_live(), 0);
    if (allocs >= 0)
        assert_int_equal(cctx__live_allocations(), allocs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_release_base_first),
        cmocka_unit_test(test_release_copy_first),
        cmocka_unit_test(test_reset_restores_the_base_value),
        cmocka_unit_test(test_overwrite_of_values_shared_with_the_base),
        cmocka_unit_test(test_delete_in_derived_map),
        cmocka_unit_test(test_threads_copy_a_base_that_is_being_replaced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
