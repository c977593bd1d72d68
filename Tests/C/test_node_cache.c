/*
 * test_node_cache.c — the per-thread cache of small map nodes (hamt.c):
 * nodes of every small shape are made on one thread and freed on another
 * (so a thread's cache holds blocks another thread allocated), a cached
 * block is reused for the largest small shape (ASan and valgrind see a
 * block too small for it), nodes with an unfilled key-source slot go back
 * too, a one-entry leaf frees its value, then its key, then its block
 * (also when the value's release uses the library and the leaf holds the
 * variable's last reference), and a thread's exit leaves nothing behind
 * (its cache is drained).
 */
#include "test_support.h"

enum { VARS = 4, ROUNDS = 2000 };

typedef struct shared {
    cctx_var *vars[VARS];
    tv_value *values[VARS];
    cctx_context *made[ROUNDS];
} shared;

/* Contexts with 1..VARS entries (root nodes of 2..8 slots, with and
 * without a key-source slot): each a copy of a small context with one
 * more binding. */
static void make_contexts(shared *s)
{
    cctx_context *base[VARS + 1];
    assert_ok(cctx_context_new(&base[0]));
    for (int i = 0; i < VARS; i++)
        assert_ok(cctx_context_copy_with(base[i], s->vars[i], s->values[i], &base[i + 1]));
    for (int r = 0; r < ROUNDS; r++) {
        int from = r % (VARS + 1);
        int var = (r / (VARS + 1)) % VARS;
        assert_ok(cctx_context_copy_with(base[from], s->vars[var], s->values[(var + r) % VARS],
                                         &s->made[r]));
    }
    for (int i = 0; i <= VARS; i++)
        cctx_context_release(base[i]);
}

static void check_contexts(shared *s)
{
    for (int r = 0; r < ROUNDS; r++) {
        int var = (r / (VARS + 1)) % VARS;
        void *got = NULL;
        assert_ok(cctx_context_get(s->made[r], s->vars[var], &got));
        assert_ptr_equal(got, s->values[(var + r) % VARS]);
    }
}

static void *release_all(void *arg)
{
    shared *s = arg;
    for (int r = 0; r < ROUNDS; r++)
        cctx_context_release(s->made[r]);
    /* This thread's cache now holds blocks the test thread allocated:
     * fill every small shape from it, writing every slot. */
    cctx_context *ctx = NULL;
    for (int r = 0; r < ROUNDS; r++) {
        cctx_context *next = NULL;
        T_CHECK(cctx_context_copy_with(ctx, s->vars[r % VARS], s->values[r % VARS], &next) ==
                CCTX_OK);
        if (ctx != NULL)
            cctx_context_release(ctx);
        ctx = next;
        if (r % (VARS + 1) == VARS) {
            cctx_context_release(ctx);
            ctx = NULL;
        }
    }
    if (ctx != NULL)
        cctx_context_release(ctx);
    cctx_thread_cleanup(); /* the cache is drained here */
    return NULL;
}

static void test_small_nodes_freed_on_another_thread_are_reused_whole(void **state)
{
    (void)state;
    shared s;
    for (int i = 0; i < VARS; i++) {
        assert_ok(cctx_var_new("v", &tv_ops, &s.vars[i]));
        s.values[i] = tv_new(i);
    }
    for (int round = 0; round < 3; round++) {
        make_contexts(&s);
        check_contexts(&s);
        const long failures = thread_failures();
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, release_all, &s), 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        assert_int_equal(thread_failures(), failures);
        /* And back: this thread reuses what it cached itself. */
        make_contexts(&s);
        check_contexts(&s);
        for (int r = 0; r < ROUNDS; r++)
            cctx_context_release(s.made[r]);
    }
    for (int i = 0; i < VARS; i++) {
        assert_int_equal(s.values[i]->refcnt, 1);
        tv_drop(s.values[i]);
        cctx_var_release(s.vars[i]);
    }
}

/* A copy that cannot borrow keys (its source already has the most
 * borrowers) is built with a key-source slot it leaves unused, so it is
 * allocated one slot larger than its maps say: freed into the cache and
 * reused like any other small node. */
static void test_nodes_with_an_unused_key_source_slot_go_back_too(void **state)
{
    (void)state;
    enum { COPIES = 300 };
    cctx_var *a, *b, *c;
    assert_ok(cctx_var_new("a", &tv_ops, &a));
    assert_ok(cctx_var_new("b", &tv_ops, &b));
    assert_ok(cctx_var_new("c", &tv_ops, &c));
    tv_value *x = tv_new(1);
    cctx_context *src;
    assert_ok(cctx_context_new(&src));
    assert_ok(cctx_context_set(src, a, x, NULL));
    assert_ok(cctx_context_set(src, b, x, NULL));
    cctx_context *copies[COPIES];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < COPIES; i++)
            assert_ok(cctx_context_copy_with(src, c, x, &copies[i]));
        for (int i = 0; i < COPIES; i++) {
            void *got;
            assert_ok(cctx_context_get(copies[i], a, &got));
            assert_ptr_equal(got, x);
            assert_int_equal(cctx_context_count(copies[i]), 3);
        }
        for (int i = 0; i < COPIES; i++)
            cctx_context_release(copies[i]);
    }
    cctx_context_release(src);
    assert_int_equal(x->refcnt, 1);
    tv_drop(x);
    cctx_var_release(a);
    cctx_var_release(b);
    cctx_var_release(c);
}

/* The commonest free: a context whose map is a one-entry leaf (a set into
 * an empty context). The leaf's value goes first, through a release that
 * uses the library again (it reads the leaf's own variable, copies the
 * current context and sets the variable there: another leaf, freed inside
 * the first free), then the leaf's reference to its variable — the last
 * one in the second round, whose user reference went first — then the
 * block. Each round on the test thread (its node cache) and on a thread
 * whose state was cleaned up before its release. Nothing may be left. */
typedef struct leaf_round {
    bool drop_var_first;
    long runs;
} leaf_round;

static void leaf_round_run(leaf_round *lr)
{
    for (int r = 0; r < 200; r++) {
        cctx_var *v = NULL, *probe = NULL;
        T_CHECK(cctx_var_new("leaf", &tv_ops, &v) == CCTX_OK);
        T_CHECK(cctx_var_new("probe", &tv_ops, &probe) == CCTX_OK);
        tv_reentry re = { lr->drop_var_first ? probe : v, 0 };
        tv_value *value = tv_new_hooked(r, tv_hook_uses_library, &re);
        cctx_context *ctx = NULL;
        T_CHECK(cctx_context_new(&ctx) == CCTX_OK);
        T_CHECK(cctx_context_set(ctx, v, value, NULL) == CCTX_OK);
        tv_drop(value);
        void *got = NULL;
        T_CHECK(cctx_context_get(ctx, v, &got) == CCTX_OK && got == value);
        if (lr->drop_var_first)
            cctx_var_release(v);
        if (r % 2 == 1)
            T_CHECK(cctx_thread_cleanup() == CCTX_OK);
        cctx_context_release(ctx);
        T_CHECK(re.runs == 1);
        lr->runs += re.runs;
        if (!lr->drop_var_first)
            cctx_var_release(v);
        cctx_var_release(probe);
    }
    T_CHECK(cctx_thread_cleanup() == CCTX_OK);
}

static void *leaf_round_thread(void *arg)
{
    leaf_round_run(arg);
    return NULL;
}

static void test_one_entry_leaves_release_value_then_key_then_block(void **state)
{
    (void)state;
    for (int drop = 0; drop < 2; drop++) {
        leaf_round here = { drop == 1, 0 };
        leaf_round_run(&here);
        assert_int_equal(here.runs, 200);
        leaf_round there = { drop == 1, 0 };
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, leaf_round_thread, &there), 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        assert_int_equal(there.runs, 200);
    }
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, nothing_left_setup, nothing_left_teardown)
    const struct CMUnitTest tests[] = {
        T(test_small_nodes_freed_on_another_thread_are_reused_whole),
        T(test_nodes_with_an_unused_key_source_slot_go_back_too),
        T(test_one_entry_leaves_release_value_then_key_then_block),
    };
#undef T
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cctx_thread_cleanup();
    return failed;
}
