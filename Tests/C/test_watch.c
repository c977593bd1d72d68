/*
 * test_watch.c — context-switch watchers: events for nested enter/exit,
 * thread start/exit, the slot limit, cctx_watchers_installed, and watchers
 * added and removed while four threads fire events (a removed watcher is
 * never called again).
 */
#include "test_support.h"

#include <pthread.h>
#include <sched.h>

struct recorder {
    long entered, exited, switched;
    cctx_context *last_ctx;
    int removed;    /* set after cctx_clear_watcher returned */
    long late_calls; /* calls after removal: must stay 0 */
};

static void record(cctx_event event, cctx_context *ctx, void *userdata)
{
    struct recorder *r = userdata;
    if (__atomic_load_n(&r->removed, __ATOMIC_ACQUIRE))
        __atomic_add_fetch(&r->late_calls, 1, __ATOMIC_RELAXED);
    switch (event) {
    case CCTX_EVENT_ENTERED:
        __atomic_add_fetch(&r->entered, 1, __ATOMIC_RELAXED);
        break;
    case CCTX_EVENT_EXITED:
        __atomic_add_fetch(&r->exited, 1, __ATOMIC_RELAXED);
        break;
    case CCTX_EVENT_SWITCHED:
        __atomic_add_fetch(&r->switched, 1, __ATOMIC_RELAXED);
        break;
    }
    __atomic_store_n(&r->last_ctx, ctx, __ATOMIC_RELAXED);
}

static void test_nested_enter_exit_events(void **state)
{
    (void)state;
    struct recorder r = { 0 };
    int id;
    assert_ok(cctx_add_watcher(record, &r, &id));
    cctx_context *a = NULL, *b = NULL;
    assert_ok(cctx_context_new(&a));
    assert_ok(cctx_context_new(&b));
    assert_ok(cctx_context_enter(a));
    assert_ptr_equal(r.last_ctx, a);
    assert_ok(cctx_context_enter(b));
    assert_ptr_equal(r.last_ctx, b);
    assert_int_equal(r.entered, 2);
    assert_ok(cctx_context_exit(b));
    assert_ptr_equal(r.last_ctx, a); /* the context now current */
    assert_ok(cctx_context_exit(a));
    assert_non_null(r.last_ctx);     /* the thread's own context */
    assert_int_equal(r.exited, 2);
    /* A failed enter fires nothing. */
    assert_ok(cctx_context_enter(a));
    assert_int_equal(cctx_context_enter(a), CCTX_ALREADY_ENTERED);
    assert_int_equal(r.entered, 3);
    assert_ok(cctx_context_exit(a));
    /* Events sent by another runtime (the Swift facade's tasks). */
    cctx_notify_watchers(CCTX_EVENT_ENTERED, b);
    assert_int_equal(r.entered, 4);
    assert_ptr_equal(r.last_ctx, b);
    cctx_notify_watchers(CCTX_EVENT_EXITED, NULL);
    assert_null(r.last_ctx);
    assert_ok(cctx_clear_watcher(id));
    assert_ok(cctx_context_enter(a));
    assert_ok(cctx_context_exit(a));
    assert_int_equal(r.entered, 4); /* removed: no more events */
    assert_int_equal(cctx_clear_watcher(id), CCTX_EINVAL);
    cctx_context_release(a);
    cctx_context_release(b);
    assert_ok(cctx_thread_cleanup());
}

static void *touch_and_exit(void *p)
{
    (void)p;
    cctx_var *v = NULL;
    assert_ok(cctx_var_new("v", NULL, &v));
    assert_ok(cctx_var_set(v, NULL, NULL)); /* creates the thread's state */
    cctx_var_release(v);
    return NULL;
}

static void test_thread_start_and_exit_switch(void **state)
{
    (void)state;
    struct recorder r = { 0 };
    int id;
    assert_ok(cctx_add_watcher(record, &r, &id));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, touch_and_exit, NULL), 0);
    pthread_join(t, NULL);
    assert_int_equal(r.switched, 2); /* state created, state destroyed */
    assert_null(r.last_ctx);
    assert_ok(cctx_clear_watcher(id));
}

static void *add_watcher_on_thread(void *userdata)
{
    int id = -1;
    assert_ok(cctx_add_watcher(record, userdata, &id));
    return (void *)(intptr_t)id;
}

static void test_watcher_limit_and_bad_arguments(void **state)
{
    (void)state;
    struct recorder r = { 0 };
    int ids[CCTX_MAX_WATCHERS];
    for (int i = 0; i < CCTX_MAX_WATCHERS; i++)
        assert_ok(cctx_add_watcher(record, &r, &ids[i]));
    int extra = -1;
    assert_int_equal(cctx_add_watcher(record, &r, &extra), CCTX_TOO_MANY_WATCHERS);
    assert_int_equal(extra, -1);
    cctx_context *a = NULL;
    assert_ok(cctx_context_new(&a));
    assert_ok(cctx_context_enter(a));
    assert_int_equal(r.entered, CCTX_MAX_WATCHERS); /* every watcher called once */
    assert_ok(cctx_context_exit(a));
    for (int i = 0; i < CCTX_MAX_WATCHERS; i++)
        assert_ok(cctx_clear_watcher(ids[i]));
    assert_int_equal(cctx_add_watcher(NULL, &r, &extra), CCTX_EINVAL);
    assert_int_equal(cctx_add_watcher(record, &r, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_clear_watcher(-1), CCTX_EINVAL);
    assert_int_equal(cctx_clear_watcher(CCTX_MAX_WATCHERS), CCTX_EINVAL);
    cctx_context_release(a);
    assert_ok(cctx_thread_cleanup());
}

/* cctx_watchers_installed (contextcore_inline.h): a binding skips the work
 * around cctx_notify_watchers when it is false, so it must be true exactly
 * while some watcher is installed — whichever slots, in whatever order they
 * are added and removed — and false again after the last removal. */
static void test_watchers_installed(void **state)
{
    (void)state;
    struct recorder r = { 0 };
    assert_false(cctx_watchers_installed()); /* no other test left one */
    int a, b;
    assert_ok(cctx_add_watcher(record, &r, &a));
    assert_true(cctx_watchers_installed());
    assert_ok(cctx_clear_watcher(a));
    assert_false(cctx_watchers_installed());
    /* Several: true until the last one goes, in either order. */
    assert_ok(cctx_add_watcher(record, &r, &a));
    assert_ok(cctx_add_watcher(record, &r, &b));
    assert_int_not_equal(a, b);
    assert_true(cctx_watchers_installed());
    assert_ok(cctx_clear_watcher(a)); /* the first added, removed first */
    assert_true(cctx_watchers_installed());
    assert_ok(cctx_clear_watcher(b));
    assert_false(cctx_watchers_installed());
    assert_ok(cctx_add_watcher(record, &r, &a));
    assert_ok(cctx_add_watcher(record, &r, &b));
    assert_ok(cctx_clear_watcher(b)); /* the last added, removed first */
    assert_true(cctx_watchers_installed());
    assert_ok(cctx_clear_watcher(a));
    assert_false(cctx_watchers_installed());
    /* Every slot (the highest bit of the mask too), then none. */
    int ids[CCTX_MAX_WATCHERS];
    for (int i = 0; i < CCTX_MAX_WATCHERS; i++)
        assert_ok(cctx_add_watcher(record, &r, &ids[i]));
    for (int i = 0; i < CCTX_MAX_WATCHERS; i++) {
        assert_true(cctx_watchers_installed());
        assert_ok(cctx_clear_watcher(ids[CCTX_MAX_WATCHERS - 1 - i]));
    }
    assert_false(cctx_watchers_installed());
    /* A failed removal changes nothing. */
    assert_int_equal(cctx_clear_watcher(ids[0]), CCTX_EINVAL);
    assert_false(cctx_watchers_installed());
    /* An add on another thread that this thread joins is seen. */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, add_watcher_on_thread, &r), 0);
    void *id = NULL;
    pthread_join(t, &id);
    assert_true(cctx_watchers_installed());
    assert_ok(cctx_clear_watcher((int)(intptr_t)id));
    assert_false(cctx_watchers_installed());
    assert_int_equal(r.entered + r.exited + r.switched, 0); /* no event fired here */
}

static int stop_firing;
static long fired; /* enter/exit pairs done by the firing threads */

static void *fire_events(void *p)
{
    (void)p;
    cctx_context *c = NULL;
    assert_ok(cctx_context_new(&c));
    while (!__atomic_load_n(&stop_firing, __ATOMIC_ACQUIRE)) {
        assert_ok(cctx_context_enter(c));
        assert_ok(cctx_context_exit(c));
        __atomic_add_fetch(&fired, 1, __ATOMIC_RELAXED);
    }
    cctx_context_release(c);
    return NULL;
}

static void test_add_and_remove_while_events_fire(void **state)
{
    (void)state;
    enum { THREADS = 4 };
    pthread_t t[THREADS];
    __atomic_store_n(&stop_firing, 0, __ATOMIC_RELEASE);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, fire_events, NULL), 0);
    /* Under load the firing threads may start late: wait for them. */
    while (__atomic_load_n(&fired, __ATOMIC_RELAXED) == 0)
        sched_yield();
    long rounds = scaled(2000), late = 0, delivered = 0;
    for (long n = 0; n < rounds; n++) {
        struct recorder r = { 0 };
        int id;
        assert_ok(cctx_add_watcher(record, &r, &id));
        /* Let some events reach the watcher (bounded: threads may be
         * descheduled), then remove it while they keep firing. */
        for (int spin = 0; spin < 1000 && __atomic_load_n(&r.entered, __ATOMIC_RELAXED) == 0; spin++)
            sched_yield();
        assert_ok(cctx_clear_watcher(id));
        __atomic_store_n(&r.removed, 1, __ATOMIC_RELEASE);
        /* A late call would write into `r` after this frame is gone: the
         * grace period in cctx_clear_watcher is what makes this safe. */
        for (volatile int spin = 0; spin < 200; spin++) {
        }
        late += __atomic_load_n(&r.late_calls, __ATOMIC_RELAXED);
        delivered += r.entered + r.exited;
    }
    __atomic_store_n(&stop_firing, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    print_message("watcher rounds: %ld, events delivered: %ld\n", rounds, delivered);
    assert_int_equal(late, 0);
    assert_true(delivered > 0);
}

/* ------------------------------------- cleanup inside a watcher callback */

struct cleanup_in_watcher {
    cctx_event when;  /* the event whose callback calls cctx_thread_cleanup */
    cctx_status st;   /* what it returned */
    int calls;
};

static void cleanup_watcher(cctx_event event, cctx_context *ctx, void *userdata)
{
    struct cleanup_in_watcher *c = userdata;
    if (event != c->when || (event == CCTX_EVENT_SWITCHED && ctx == NULL))
        return;
    c->calls++;
    c->st = cctx_thread_cleanup();
}

/* A watcher callback (a tracer flushing its per-thread buffers when a
 * request's context is left) calls cctx_thread_cleanup: the exit, or the
 * creation of the thread's state, that fired it still uses the state
 * after the callback returns, so the cleanup must refuse
 * (CCTX_ALREADY_ENTERED, as while a context is entered) and change
 * nothing. Before the fix it freed the state under that operation
 * (valgrind: invalid reads in owner_leave / var_set after the free in
 * cctx_thread_cleanup) and dropped the thread's values. In a child: the
 * use after free may crash. */
static void scenario_cleanup_in_watcher(void *arg)
{
    cctx_event when = (cctx_event)(intptr_t)arg;
    cctx_var *var;
    T_CHECK(cctx_var_new("kept", &tv_ops, &var) == CCTX_OK);
    T_CHECK(cctx_thread_cleanup() == CCTX_OK);
    struct cleanup_in_watcher c = { when, CCTX_EINVAL, 0 };
    int id;
    T_CHECK(cctx_add_watcher(cleanup_watcher, &c, &id) == CCTX_OK);
    tv_value *v = tv_new(1);
    /* The thread's first write creates its state (SWITCHED). */
    T_CHECK(cctx_var_set(var, v, NULL) == CCTX_OK);
    cctx_context *ctx;
    T_CHECK(cctx_context_new(&ctx) == CCTX_OK);
    T_CHECK(cctx_context_enter(ctx) == CCTX_OK);
    T_CHECK(cctx_context_exit(ctx) == CCTX_OK); /* EXITED */
    T_CHECK(c.calls == 1);
    T_CHECK(c.st == CCTX_ALREADY_ENTERED);
    void *out = NULL;
    T_CHECK(cctx_var_get(var, &out) == CCTX_OK); /* the base kept its value */
    T_CHECK(out == v);
    T_CHECK(!cctx_context_is_entered(ctx));
    T_CHECK(cctx_clear_watcher(id) == CCTX_OK);
    T_CHECK(cctx_context_enter(ctx) == CCTX_OK);
    T_CHECK(cctx_context_exit(ctx) == CCTX_OK);
    cctx_context_release(ctx);
    T_CHECK(cctx_thread_cleanup() == CCTX_OK);
    T_CHECK(tv_live() == 1); /* v: the test's own reference */
    tv_drop(v);
    cctx_var_release(var);
}

static void test_cleanup_in_an_exited_callback_is_refused(void **state)
{
    (void)state;
    assert_child_ok(scenario_cleanup_in_watcher, (void *)(intptr_t)CCTX_EVENT_EXITED);
}

static void test_cleanup_in_a_state_created_callback_is_refused(void **state)
{
    (void)state;
    assert_child_ok(scenario_cleanup_in_watcher, (void *)(intptr_t)CCTX_EVENT_SWITCHED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nested_enter_exit_events),
        cmocka_unit_test(test_thread_start_and_exit_switch),
        cmocka_unit_test(test_watcher_limit_and_bad_arguments),
        cmocka_unit_test(test_watchers_installed),
        cmocka_unit_test(test_add_and_remove_while_events_fire),
        cmocka_unit_test(test_cleanup_in_an_exited_callback_is_refused),
        cmocka_unit_test(test_cleanup_in_a_state_created_callback_is_refused),
    };
    return cmocka_run_group_tests_name("watch", tests, NULL, NULL);
}
