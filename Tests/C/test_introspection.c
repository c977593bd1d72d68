/*
 * test_introspection.c — cctx_context_current and cctx_thread_contexts: the
 * calling thread's current context and its chain of entered contexts,
 * innermost first, ending at the thread's base context.
 */
#include "test_support.h"

#include <pthread.h>

static void test_current_follows_enter_and_exit(void **state)
{
    (void)state;
    cctx_context *base = cctx_context_current();
    assert_non_null(base);
    assert_ptr_equal(cctx_context_current(), base); /* stable */
    cctx_context *a = NULL, *b = NULL;
    assert_ok(cctx_context_new(&a));
    assert_ok(cctx_context_new(&b));
    assert_ok(cctx_context_enter(a));
    assert_ptr_equal(cctx_context_current(), a);
    assert_ok(cctx_context_enter(b));
    assert_ptr_equal(cctx_context_current(), b);
    assert_ok(cctx_context_exit(b));
    assert_ptr_equal(cctx_context_current(), a);
    assert_ok(cctx_context_exit(a));
    assert_ptr_equal(cctx_context_current(), base);
    cctx_context_release(a);
    cctx_context_release(b);
}

static void test_chain_is_innermost_first(void **state)
{
    (void)state;
    cctx_context *base = cctx_context_current();
    cctx_context *chain[4] = { NULL };
    assert_int_equal(cctx_thread_contexts(chain, 4), 1);
    assert_ptr_equal(chain[0], base);

    cctx_context *a = NULL, *b = NULL;
    assert_ok(cctx_context_new(&a));
    assert_ok(cctx_context_new(&b));
    assert_ok(cctx_context_enter(a));
    assert_ok(cctx_context_enter(b));
    assert_int_equal(cctx_thread_contexts(chain, 4), 3);
    assert_ptr_equal(chain[0], b);
    assert_ptr_equal(chain[1], a);
    assert_ptr_equal(chain[2], base);

    /* A short buffer: the whole length is still returned. */
    cctx_context *one[1] = { NULL };
    assert_int_equal(cctx_thread_contexts(one, 1), 3);
    assert_ptr_equal(one[0], b);
    assert_int_equal(cctx_thread_contexts(NULL, 0), 3);

    assert_ok(cctx_context_exit(b));
    assert_ok(cctx_context_exit(a));
    assert_int_equal(cctx_thread_contexts(chain, 4), 1);
    cctx_context_release(a);
    cctx_context_release(b);
}

static void *fresh_thread(void *arg)
{
    size_t *out = arg;
    out[0] = cctx_thread_contexts(NULL, 0); /* no state yet: 0, none made */
    out[1] = cctx_context_current() != NULL; /* creates the state */
    out[2] = cctx_thread_contexts(NULL, 0);
    return NULL;
}

static void test_fresh_thread_has_no_chain_until_used(void **state)
{
    (void)state;
    size_t out[3] = { 99, 99, 99 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fresh_thread, out), 0);
    pthread_join(t, NULL);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 1);
    assert_int_equal(out[2], 1);
}

static void *helper_thread(void *arg)
{
    cctx_context **seen = arg;
    cctx_context *chain[4] = { NULL };
    size_t n = cctx_thread_contexts(chain, 4);
    seen[0] = (cctx_context *)(uintptr_t)n;
    seen[1] = chain[0];
    seen[2] = cctx_context_current();
    return NULL;
}

static void test_thread_helper_enters_a_copy(void **state)
{
    (void)state;
    cctx_context *seen[3] = { NULL };
    pthread_t t;
    assert_ok(cctx_thread_create(&t, NULL, helper_thread, seen));
    pthread_join(t, NULL);
    /* The helper enters its copy above the new thread's base. */
    assert_int_equal((uintptr_t)seen[0], 2);
    assert_ptr_equal(seen[1], seen[2]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_current_follows_enter_and_exit),
        cmocka_unit_test(test_chain_is_innermost_first),
        cmocka_unit_test(test_fresh_thread_has_no_chain_until_used),
        cmocka_unit_test(test_thread_helper_enters_a_copy),
    };
    int failed = cmocka_run_group_tests_name("introspection", tests, NULL, NULL);
    (void)cctx_thread_cleanup();
    return failed;
}
