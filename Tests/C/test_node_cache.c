/*
 * test_node_cache.c — the per-thread cache of small map nodes (hamt.c):
 * nodes of every small shape are made on one thread and freed on another
 * (so a thread's cache holds blocks another thread allocated), a cached
 * block is reused for the largest small shape (ASan and valgrind see a
 * block too small for it), nodes with an unfilled key-source slot go back
 * too, and a thread's exit leaves nothing behind (its cache is drained).
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

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, nothing_left_setup, nothing_left_teardown)
    const struct CMUnitTest tests[] = {
        T(test_small_nodes_freed_on_another_thread_are_reused_whole),
        T(test_nodes_with_an_unused_key_source_slot_go_back_too),
    };
#undef T
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cctx_thread_cleanup();
    return failed;
}
