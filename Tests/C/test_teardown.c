/*
 * test_teardown.c — what happens to values when a thread's state goes:
 * release callbacks that use the library while their thread exits, threads
 * started by cctx_thread_create that leave early, release callbacks that
 * block, and the shared library unloaded under running threads.
 *
 * Values are the toolbox's counted tv_value objects; a hook on a value runs
 * when its last reference goes and plays the part of a Swift `deinit` or a
 * binding's release function. Scenarios that crashed or hung before their
 * fix run in a forked child (run_in_child), so a crash fails one test.
 */
#include "test_support.h"

#include <dlfcn.h>
#include <string.h>
#include <unistd.h>

#define NTHREADS_EXIT 200

/* reader's default: a counted value that is never freed (not in tv_live) */
static tv_value default_tv = { 1 << 30, -1, NULL, NULL };
#define DEFAULT_VALUE ((void *)&default_tv)

static cctx_var *reader;   /* read by hooks; has a default */
static cctx_var *holder;   /* holds hooked values */
static cctx_var *sink;     /* set by hooks */
static cctx_local *local_a, *local_b, *local_init;

static cctx_status make_init_value(void *userdata, void **out)
{
    (void)userdata;
    *out = tv_new(500);
    return CCTX_OK;
}

static int setup(void **state)
{
    (void)state;
    assert_ok(cctx_var_new_with_default("reader", &tv_ops, DEFAULT_VALUE, &reader));
    assert_ok(cctx_var_new("holder", &tv_ops, &holder));
    assert_ok(cctx_var_new("sink", &tv_ops, &sink));
    assert_ok(cctx_local_new(&tv_ops, NULL, NULL, &local_a));
    assert_ok(cctx_local_new(&tv_ops, NULL, NULL, &local_b));
    assert_ok(cctx_local_new(&tv_ops, make_init_value, NULL, &local_init));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cctx_var_release(reader);
    cctx_var_release(holder);
    cctx_var_release(sink);
    cctx_local_release(local_a);
    cctx_local_release(local_b);
    cctx_local_release(local_init);
    return 0;
}

/* Runs `fn` on `n` threads started with pthread_create and joins them. */
static void run_threads(int n, void *(*fn)(void *))
{
    pthread_t *th = malloc((size_t)n * sizeof *th);
    for (int i = 0; i < n; i++)
        if (pthread_create(&th[i], NULL, fn, (void *)(intptr_t)i) != 0)
            abort();
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    free(th);
}

/* What was alive when a scenario began (a child inherits its parent's
 * counts, which an earlier failed test may have left non-zero). */
static long values_before;

/* Cleans up the calling thread and records the runtime's allocations and
 * the live values; expect_everything_released compares against them. */
static long take_baseline(void)
{
    T_CHECK(cctx_thread_cleanup() == CCTX_OK);
    values_before = tv_live();
    return cctx__live_allocations();
}

/* Checks, after every thread has exited, that every value was released and
 * that the runtime holds exactly what it held before. */
static void expect_everything_released(long allocations_before)
{
    T_CHECK(cctx_thread_cleanup() == CCTX_OK);
    cctx_reclaim();
    T_CHECK(tv_live() == values_before);
    T_CHECK(cctx__live_allocations() == allocations_before);
    if (tv_live() != values_before || cctx__live_allocations() != allocations_before)
        fprintf(stderr, "values alive: %ld (before: %ld), runtime allocations: %ld (before: %ld)\n",
                tv_live(), values_before, cctx__live_allocations(), allocations_before);
}

/* ------------------------------------------------- reads during teardown */

/* A release callback reads variables while its thread exits: it must see
 * the thread's value or the default, and nothing it reads may be freed. */
static void hook_reads(tv_value *v, void *arg)
{
    (void)v;
    void *out = NULL;
    cctx_status st = cctx_var_get(reader, &out);
    T_CHECK(st == CCTX_OK);
    T_CHECK(out == DEFAULT_VALUE || out == arg);
    st = cctx_var_get(holder, &out);
    T_CHECK(st == CCTX_OK || st == CCTX_NOT_FOUND);
    T_CHECK(cctx_var_get_default(sink, DEFAULT_VALUE, &out) == CCTX_OK);
    T_CHECK(out == DEFAULT_VALUE);
    /* A release callback during teardown may ask for cleanup: nothing
     * more to do, and no second teardown. */
    T_CHECK(cctx_thread_cleanup() == CCTX_OK);
}

static void *reads_thread(void *p)
{
    long i = (long)(intptr_t)p;
    tv_value *r = tv_new(i);
    T_CHECK(cctx_var_set(reader, r, NULL) == CCTX_OK);
    tv_drop(r);
    for (int k = 0; k < 4; k++) {
        tv_value *v = tv_new_hooked(i, hook_reads, r);
        cctx_var *var;
        T_CHECK(cctx_var_new("per-thread", &tv_ops, &var) == CCTX_OK);
        T_CHECK(cctx_var_set(var, v, NULL) == CCTX_OK);
        cctx_var_release(var); /* the context keeps the variable */
        tv_drop(v);
    }
    tv_value *v = tv_new_hooked(i, hook_reads, r);
    T_CHECK(cctx_var_set(holder, v, NULL) == CCTX_OK);
    tv_drop(v);
    return NULL; /* thread exit releases all five hooked values */
}

static void scenario_reads_at_exit(void *arg)
{
    (void)arg;
    long before = take_baseline();
    run_threads((int)scaled(NTHREADS_EXIT), reads_thread);
    expect_everything_released(before);
}

static void test_release_callback_reads_variables_while_its_thread_exits(void **state)
{
    (void)state;
    assert_child_ok(scenario_reads_at_exit, NULL);
}

/* -------------------------------------------------- sets during teardown */

/* A release callback sets variables (and uses locals, also ones its thread
 * never touched) while its thread exits: the writes work, and what they
 * store is released too. */
static void hook_sets(tv_value *v, void *arg)
{
    (void)arg;
    tv_value *s = tv_new(v->id + 1000);
    cctx_token *tok = NULL;
    T_CHECK(cctx_var_set(sink, s, &tok) == CCTX_OK);
    void *out = NULL;
    T_CHECK(cctx_var_get(sink, &out) == CCTX_OK && out == s); /* reads its own write */
    cctx_token_release(tok);
    T_CHECK(cctx_local_set(local_b, s) == CCTX_OK);
    /* Runs the initialiser, unless this thread's teardown already released
     * its value (then the slot stays empty: no initialiser during teardown). */
    cctx_status st = cctx_local_get(local_init, &out);
    T_CHECK(st == CCTX_OK || st == CCTX_NOT_FOUND);
    tv_drop(s);
}

static void *sets_thread(void *p)
{
    long i = (long)(intptr_t)p;
    tv_value *v = tv_new_hooked(i, hook_sets, NULL);
    T_CHECK(cctx_var_set(holder, v, NULL) == CCTX_OK);
    tv_drop(v);
    return NULL;
}

static void scenario_sets_at_exit(void *arg)
{
    (void)arg;
    long before = take_baseline();
    run_threads((int)scaled(NTHREADS_EXIT), sets_thread);
    expect_everything_released(before);
}

static void test_release_callback_sets_variables_while_its_thread_exits(void **state)
{
    (void)state;
    assert_child_ok(scenario_sets_at_exit, NULL);
}

/* The same on a thread that calls cctx_thread_cleanup and goes on. */
static void scenario_sets_at_cleanup(void *arg)
{
    (void)arg;
    long before = take_baseline();
    for (int i = 0; i < 10; i++) {
        sets_thread((void *)(intptr_t)i);
        T_CHECK(cctx_thread_cleanup() == CCTX_OK);
        T_CHECK(tv_live() == values_before);
    }
    void *out;
    T_CHECK(cctx_var_get(sink, &out) == CCTX_NOT_FOUND); /* a fresh state */
    expect_everything_released(before);
}

static void test_release_callback_sets_variables_during_cleanup(void **state)
{
    (void)state;
    assert_child_ok(scenario_sets_at_cleanup, NULL);
}

/* ------------------------------------- contexts entered during teardown */

/* A local's value whose release enters a context and leaves it entered (a
 * handle's close callback that switches to its request's context and
 * returns without switching back). The teardown's next round must leave
 * it: the context must be free once the thread is gone, and releasing it
 * must not touch the freed thread state. */
static cctx_context *entered_at_exit;

static void hook_enters_and_stays(tv_value *v, void *arg)
{
    (void)v, (void)arg;
    T_CHECK(cctx_context_enter(entered_at_exit) == CCTX_OK);
}

static void *enters_at_exit_thread(void *p)
{
    (void)p;
    tv_value *a = tv_new_hooked(1, hook_enters_and_stays, NULL);
    T_CHECK(cctx_local_set(local_a, a) == CCTX_OK);
    tv_drop(a);
    /* A value in the base context: the round that releases the local's
     * value also swaps the base for an empty one. */
    tv_value *h = tv_new(2);
    T_CHECK(cctx_var_set(holder, h, NULL) == CCTX_OK);
    tv_drop(h);
    return NULL;
}

static void scenario_context_entered_by_a_release_at_exit(void *arg)
{
    bool at_cleanup = arg != NULL;
    long before = take_baseline();
    T_CHECK(cctx_context_new(&entered_at_exit) == CCTX_OK);
    if (at_cleanup) {
        enters_at_exit_thread(NULL);
        T_CHECK(cctx_thread_cleanup() == CCTX_OK);
        T_CHECK(cctx_context_current() != entered_at_exit);
        T_CHECK(cctx_thread_contexts(NULL, 0) == 1); /* the base alone */
    } else {
        run_threads(1, enters_at_exit_thread);
    }
    T_CHECK(!cctx_context_is_entered(entered_at_exit));
    T_CHECK(cctx_context_enter(entered_at_exit) == CCTX_OK);
    T_CHECK(cctx_context_exit(entered_at_exit) == CCTX_OK);
    cctx_context_release(entered_at_exit);
    expect_everything_released(before);
}

/* Before the fix the round swapped the base in under the entered context
 * (the thread's current pointer went straight to the new base): the
 * context stayed entered by the dead thread for good — every enter failed
 * with CCTX_ALREADY_ENTERED — and its last release wrote into the freed
 * thread state (valgrind: invalid read and write in handover_to_exit). */
static void test_context_entered_by_a_release_callback_at_exit_is_left(void **state)
{
    (void)state;
    assert_child_ok(scenario_context_entered_by_a_release_at_exit, NULL);
}

static void test_context_entered_by_a_release_callback_during_cleanup_is_left(void **state)
{
    (void)state;
    assert_child_ok(scenario_context_entered_by_a_release_at_exit, (void *)1);
}

/* --------------------------------------------- locals during teardown */

/* A local's value whose release stores into another local the thread never
 * touched (a ThreadLocal deinit using another ThreadLocal): the store lands
 * in the live slot table and is released by the next round. */
static void hook_uses_untouched_local(tv_value *v, void *arg)
{
    (void)arg;
    tv_value *b = tv_new(v->id + 2000);
    T_CHECK(cctx_local_set(local_b, b) == CCTX_OK);
    tv_drop(b);
    void *out;
    cctx_status st = cctx_local_get(local_init, &out);
    T_CHECK(st == CCTX_OK || st == CCTX_NOT_FOUND); /* as in hook_sets */
}

static void *local_thread(void *p)
{
    long i = (long)(intptr_t)p;
    tv_value *a = tv_new_hooked(i, hook_uses_untouched_local, NULL);
    T_CHECK(cctx_local_set(local_a, a) == CCTX_OK);
    tv_drop(a);
    return NULL;
}

static void scenario_local_at_exit(void *arg)
{
    (void)arg;
    long before = take_baseline();
    run_threads((int)scaled(NTHREADS_EXIT), local_thread);
    expect_everything_released(before);
}

static void test_local_release_using_an_untouched_local_at_exit_leaks_nothing(void **state)
{
    (void)state;
    assert_child_ok(scenario_local_at_exit, NULL);
}

/* ------------------------------------------------- bounded teardown */

/* Every release stores a new value whose release stores another: teardown
 * must still end. Writes work for the first rounds, then fail (the state
 * is detached), and the last value is released with nothing new stored. */
static long chain_ok, chain_failed, chain_other;

static void hook_chain(tv_value *v, void *arg)
{
    (void)arg;
    tv_value *next = tv_new_hooked(v->id + 1, hook_chain, NULL);
    cctx_status st = cctx_var_set(holder, next, NULL);
    if (st == CCTX_OK)
        __atomic_add_fetch(&chain_ok, 1, __ATOMIC_SEQ_CST);
    else if (st == CCTX_ENOMEM)
        __atomic_add_fetch(&chain_failed, 1, __ATOMIC_SEQ_CST);
    else
        __atomic_add_fetch(&chain_other, 1, __ATOMIC_SEQ_CST);
    if (st != CCTX_OK)
        next->hook = NULL; /* not stored: the chain ends with our drop */
    void *out;
    T_CHECK(cctx_var_get(reader, &out) == CCTX_OK && out == DEFAULT_VALUE);
    tv_drop(next);
}

static void *chain_thread(void *p)
{
    (void)p;
    tv_value *v = tv_new_hooked(0, hook_chain, NULL);
    T_CHECK(cctx_var_set(holder, v, NULL) == CCTX_OK);
    tv_drop(v);
    return NULL;
}

static void scenario_chain(void *arg)
{
    (void)arg;
    long before = take_baseline();
    run_threads(1, chain_thread);
    T_CHECK(chain_ok >= 1);
    T_CHECK(chain_failed == 1);
    T_CHECK(chain_other == 0);
    expect_everything_released(before);
}

static void test_teardown_of_a_release_chain_is_bounded(void **state)
{
    (void)state;
    assert_child_ok(scenario_chain, NULL);
}

/* Teardown cannot fail: when the fresh base of a round cannot be
 * allocated, it goes straight to the final round (writes refused) and
 * still releases everything. */
static cctx_status oom_hook_status;

static void hook_sets_once(tv_value *v, void *arg)
{
    (void)arg;
    tv_value *s = tv_new(v->id + 1);
    oom_hook_status = cctx_var_set(sink, s, NULL);
    tv_drop(s);
}

static void test_teardown_out_of_memory_still_releases_everything(void **state)
{
    (void)state;
    assert_ok(cctx_thread_cleanup());
    const long allocs = cctx__live_allocations(), live = tv_live();
    tv_value *v = tv_new_hooked(1, hook_sets_once, NULL);
    assert_ok(cctx_var_set(holder, v, NULL));
    tv_drop(v);
    const long injected = cctx__allocation_failures();
    cctx__fail_allocation(1); /* the round's fresh base */
    assert_ok(cctx_thread_cleanup());
    cctx__fail_allocation(0);
    assert_int_equal(cctx__allocation_failures(), injected + 1);
    assert_int_equal(oom_hook_status, CCTX_ENOMEM); /* the state was detached */
    assert_int_equal(tv_live(), live);
    cctx_reclaim();
    assert_int_equal(cctx__live_allocations(), allocs);

    /* Without the failure the same hook's write works and is released. */
    v = tv_new_hooked(1, hook_sets_once, NULL);
    assert_ok(cctx_var_set(holder, v, NULL));
    tv_drop(v);
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(oom_hook_status, CCTX_OK);
    assert_int_equal(tv_live(), live);
    assert_int_equal(cctx__live_allocations(), allocs);
}

/* ------------------------------------- cctx_thread_create, early exits */

static int cancel_pipe[2];

static void *exits_early(void *arg)
{
    void *out = NULL;
    T_CHECK(cctx_var_get(holder, &out) == CCTX_OK && out == arg);
    pthread_exit(arg);
}

static void *waits_to_be_cancelled(void *arg)
{
    void *out = NULL;
    T_CHECK(cctx_var_get(holder, &out) == CCTX_OK && out == arg);
    char c;
    for (;;) /* read() is a cancellation point; nothing is ever written */
        (void)!read(cancel_pipe[0], &c, 1);
    return NULL;
}

/* Starts `fn` through cctx_thread_create in a copy of a context holding a
 * counted value, ends the thread the way `fn` does (or cancels it), and
 * checks that the copy and the value were released. */
static void run_early_exit(void *(*fn)(void *), bool cancel)
{
    assert_ok(cctx_thread_cleanup());
    const long before = cctx__live_allocations();
    const long live = tv_live(), failures = thread_failures();
    tv_value *v = tv_new(77);
    cctx_token *tok;
    assert_ok(cctx_var_set(holder, v, &tok));
    pthread_t th;
    assert_ok(cctx_thread_create(&th, NULL, fn, v));
    if (cancel)
        assert_int_equal(pthread_cancel(th), 0);
    void *result;
    assert_int_equal(pthread_join(th, &result), 0);
    assert_ptr_equal(result, cancel ? PTHREAD_CANCELED : (void *)v);
    assert_ok(cctx_var_reset(holder, tok));
    cctx_token_release(tok);
    tv_drop(v);
    assert_ok(cctx_thread_cleanup());
    cctx_reclaim();
    assert_int_equal(thread_failures(), failures);
    assert_int_equal(tv_live(), live);
    assert_int_equal(cctx__live_allocations(), before);
}

static void test_thread_create_releases_its_copy_on_pthread_exit(void **state)
{
    (void)state;
    run_early_exit(exits_early, false);
}

static void test_thread_create_releases_its_copy_when_cancelled(void **state)
{
    (void)state;
    assert_int_equal(pipe(cancel_pipe), 0);
    run_early_exit(waits_to_be_cancelled, true);
    close(cancel_pipe[0]);
    close(cancel_pipe[1]);
}

/* ------------------------------------- release callbacks that block */

/* A release callback that blocks until the test opens `go` must hold up
 * nothing but its own thread: no lock or grace period that readers,
 * writers, exiting threads or other locals' releases need may be held
 * around it. */
static test_gate inside = TEST_GATE_INIT, go = TEST_GATE_INIT;

static void hook_blocks(tv_value *v, void *arg)
{
    (void)v;
    (void)arg;
    gate_open(&inside);
    T_CHECK(gate_wait(&go));
}

static void *exit_with_local_value(void *p)
{
    (void)p;
    tv_value *b = tv_new(3);
    T_CHECK(cctx_local_set(local_b, b) == CCTX_OK);
    tv_drop(b);
    return NULL;
}

/* What must complete while a callback is blocked. Each is announced first,
 * so that a hang (the child's alarm) names its probe. */
static void run_probes(void)
{
    fprintf(stderr, "probe: cctx_reclaim\n");
    cctx_reclaim();

    fprintf(stderr, "probe: cctx_context_lookup\n");
    cctx_context *c;
    T_CHECK(cctx_context_new(&c) == CCTX_OK);
    tv_value *x = tv_new(9);
    T_CHECK(cctx_context_set(c, sink, x, NULL) == CCTX_OK);
    tv_drop(x);
    void *out;
    T_CHECK(cctx_context_lookup(c, sink, &out) == CCTX_OK && out == x);
    cctx_var_release_value(sink, out);
    cctx_context_release(c);

    fprintf(stderr, "probe: another thread's exit\n");
    run_threads(1, exit_with_local_value);

    fprintf(stderr, "probe: another local's final release\n");
    cctx_local *other;
    T_CHECK(cctx_local_new(&tv_ops, NULL, NULL, &other) == CCTX_OK);
    tv_value *o = tv_new(4);
    T_CHECK(cctx_local_set(other, o) == CCTX_OK);
    tv_drop(o);
    cctx_local_release(other);
    fprintf(stderr, "probes done\n");
}

static void *release_local(void *p)
{
    cctx_local_release(p);
    return NULL;
}

static void scenario_blocking_final_release(void *arg)
{
    (void)arg;
    long before = take_baseline();
    cctx_local *l;
    T_CHECK(cctx_local_new(&tv_ops, NULL, NULL, &l) == CCTX_OK);
    tv_value *v = tv_new_hooked(1, hook_blocks, NULL);
    T_CHECK(cctx_local_set(l, v) == CCTX_OK); /* main's value */
    tv_drop(v);
    pthread_t th; /* the final release, on another thread */
    T_CHECK(pthread_create(&th, NULL, release_local, l) == 0);
    T_CHECK(gate_wait(&inside));
    run_probes();
    gate_open(&go);
    pthread_join(th, NULL);
    expect_everything_released(before);
}

static void test_blocking_release_in_a_final_release_blocks_no_one_else(void **state)
{
    (void)state;
    assert_child_ok(scenario_blocking_final_release, NULL);
}

static void *exit_with_blocking_value(void *p)
{
    (void)p;
    tv_value *v = tv_new_hooked(2, hook_blocks, NULL);
    T_CHECK(cctx_local_set(local_a, v) == CCTX_OK);
    T_CHECK(cctx_var_set(holder, v, NULL) == CCTX_OK);
    tv_drop(v);
    return NULL;
}

static void scenario_blocking_exit(void *arg)
{
    (void)arg;
    long before = take_baseline();
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, exit_with_blocking_value, NULL) == 0);
    T_CHECK(gate_wait(&inside));
    run_probes();
    gate_open(&go);
    pthread_join(th, NULL);
    expect_everything_released(before);
}

static void test_blocking_release_at_thread_exit_blocks_no_one_else(void **state)
{
    (void)state;
    assert_child_ok(scenario_blocking_exit, NULL);
}

/* A binding's release function takes its interpreter lock (GIL) while a
 * thread that holds the GIL releases another local: must not deadlock. */
static pthread_mutex_t gil = PTHREAD_MUTEX_INITIALIZER;

static void hook_takes_gil(tv_value *v, void *arg)
{
    (void)v;
    (void)arg;
    gate_open(&inside);
    pthread_mutex_lock(&gil);
    pthread_mutex_unlock(&gil);
}

static void scenario_gil(void *arg)
{
    (void)arg;
    long before = take_baseline();
    cctx_local *l1, *l2;
    T_CHECK(cctx_local_new(&tv_ops, NULL, NULL, &l1) == CCTX_OK);
    T_CHECK(cctx_local_new(&tv_ops, NULL, NULL, &l2) == CCTX_OK);
    tv_value *v1 = tv_new_hooked(1, hook_takes_gil, NULL);
    tv_value *v2 = tv_new(2);
    T_CHECK(cctx_local_set(l1, v1) == CCTX_OK);
    T_CHECK(cctx_local_set(l2, v2) == CCTX_OK);
    tv_drop(v1);
    tv_drop(v2);
    pthread_mutex_lock(&gil);
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, release_local, l1) == 0);
    T_CHECK(gate_wait(&inside)); /* its callback now waits for the GIL */
    cctx_local_release(l2);      /* with the GIL held */
    pthread_mutex_unlock(&gil);
    pthread_join(th, NULL);
    expect_everything_released(before);
}

static void test_release_callback_taking_a_lock_held_by_a_releasing_thread_does_not_deadlock(void **state)
{
    (void)state;
    assert_child_ok(scenario_gil, NULL);
}

/* A local's final release takes values out in batches (it may not
 * allocate, and releases each batch outside its lock): with more threads
 * than a batch holds, every value is still released exactly once, while
 * the threads are alive and while others exit. */
#define MANY_HOLDERS 100
static cctx_local *many_local;
static test_gate many_stored[MANY_HOLDERS], many_done = TEST_GATE_INIT;
static int many_released[MANY_HOLDERS];

static void mark_released(tv_value *v, void *arg)
{
    (void)arg;
    __atomic_add_fetch(&many_released[v->id], 1, __ATOMIC_SEQ_CST);
}

static void *many_holder(void *p)
{
    long i = (long)(intptr_t)p;
    tv_value *v = tv_new_hooked(i, mark_released, NULL);
    T_CHECK(cctx_local_set(many_local, v) == CCTX_OK);
    tv_drop(v);
    gate_open(&many_stored[i]);
    if (i % 2 == 0) /* half wait for the release; half exit meanwhile */
        T_CHECK(gate_wait(&many_done));
    return NULL;
}

static void test_final_release_of_a_local_held_by_many_threads_releases_each_once(void **state)
{
    (void)state;
    assert_ok(cctx_thread_cleanup());
    const long live = tv_live(), failures = thread_failures();
    const long allocs = cctx__live_allocations();
    assert_ok(cctx_local_new(&tv_ops, NULL, NULL, &many_local));
    pthread_t th[MANY_HOLDERS];
    for (int i = 0; i < MANY_HOLDERS; i++) {
        many_stored[i] = (test_gate)TEST_GATE_INIT;
        assert_int_equal(pthread_create(&th[i], NULL, many_holder, (void *)(intptr_t)i), 0);
    }
    for (int i = 0; i < MANY_HOLDERS; i++)
        assert_true(gate_wait(&many_stored[i]));
    cctx_local_release(many_local);
    /* The waiting half's values are gone now, their threads still alive
     * (only the walk could take them); the other half's went with their
     * thread or with the walk. */
    for (int i = 0; i < MANY_HOLDERS; i += 2)
        assert_int_equal(__atomic_load_n(&many_released[i], __ATOMIC_SEQ_CST), 1);
    gate_open(&many_done);
    for (int i = 0; i < MANY_HOLDERS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < MANY_HOLDERS; i++)
        assert_int_equal(many_released[i], 1);
    assert_int_equal(tv_live(), live);
    assert_int_equal(thread_failures(), failures);
    cctx_reclaim();
    assert_int_equal(cctx__live_allocations(), allocs);
}

/* Stress: threads exit (teardown rounds, with callbacks that use locals
 * and variables) while the last references of the locals they used are
 * dropped by other exiting threads (walks over the same slot tables).
 * Every value must be released exactly once (a second release aborts in
 * the toolbox) and nothing may be left. */
#define STRESS_LOCALS 6
#define STRESS_THREADS 48
static cctx_local *stress_locals[STRESS_LOCALS];

static void *stress_thread(void *p)
{
    long i = (long)(intptr_t)p;
    for (int k = 0; k < STRESS_LOCALS; k++) {
        tv_value *v = tv_new_hooked(i * 100 + k, (i + k) % 2 ? hook_sets : hook_uses_untouched_local,
                                    NULL);
        T_CHECK(cctx_local_set(stress_locals[k], v) == CCTX_OK);
        if (k == 0)
            T_CHECK(cctx_var_set(holder, v, NULL) == CCTX_OK);
        tv_drop(v);
    }
    /* This thread's references; whoever drops the last one walks every
     * thread's table while others are in their teardown. */
    for (int k = 0; k < STRESS_LOCALS; k++)
        cctx_local_release(stress_locals[k]);
    return NULL;
}

static void test_stress_exits_and_final_releases_together(void **state)
{
    (void)state;
    const long rounds = scaled(20), failures = thread_failures();
    for (long r = 0; r < rounds; r++) {
        assert_ok(cctx_thread_cleanup());
        const long allocs = cctx__live_allocations(), live = tv_live();
        for (int k = 0; k < STRESS_LOCALS; k++) {
            assert_ok(cctx_local_new(&tv_ops, NULL, NULL, &stress_locals[k]));
            for (int t = 0; t < STRESS_THREADS; t++)
                cctx_local_retain(stress_locals[k]);
            cctx_local_release(stress_locals[k]); /* the threads hold the rest */
        }
        run_threads(STRESS_THREADS, stress_thread);
        assert_ok(cctx_thread_cleanup());
        cctx_reclaim();
        assert_int_equal(tv_live(), live);
        assert_int_equal(cctx__live_allocations(), allocs);
    }
    assert_int_equal(thread_failures(), failures);
}

/* ------------------------------------------------------------ dlclose */

#ifndef CCTX_SO_PATH
#error "CCTX_SO_PATH: the Makefile passes the path of build/libcontextcore.so"
#endif

struct so_api {
    cctx_status (*var_new)(const char *, const cctx_value_ops *, cctx_var **);
    cctx_status (*var_set)(cctx_var *, void *, cctx_token **);
    cctx_status (*local_new)(const cctx_value_ops *, cctx_local_init_fn, void *, cctx_local **);
    cctx_status (*local_set)(cctx_local *, void *);
    void (*var_release)(cctx_var *);
    void (*local_release)(cctx_local *);
    cctx_var *var;
    cctx_local *local;
};

static test_gate so_ready = TEST_GATE_INIT, so_go = TEST_GATE_INIT;

static void *so_user(void *p)
{
    struct so_api *api = p;
    /* Creates this thread's state in the loaded copy: its pthread_key
     * destructor is code of that copy. */
    T_CHECK(api->var_set(api->var, (void *)"value", NULL) == CCTX_OK);
    T_CHECK(api->local_set(api->local, (void *)"value") == CCTX_OK);
    gate_open(&so_ready);
    T_CHECK(gate_wait(&so_go));
    return NULL; /* the key destructor runs now, after the dlclose */
}

static void scenario_dlclose(void *arg)
{
    (void)arg;
    void *h = dlopen(CCTX_SO_PATH, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "dlopen %s: %s\n", CCTX_SO_PATH, dlerror());
        T_CHECK(h != NULL);
        return;
    }
    struct so_api api;
    *(void **)&api.var_new = dlsym(h, "cctx_var_new");
    *(void **)&api.var_set = dlsym(h, "cctx_var_set");
    *(void **)&api.local_new = dlsym(h, "cctx_local_new");
    *(void **)&api.local_set = dlsym(h, "cctx_local_set");
    *(void **)&api.var_release = dlsym(h, "cctx_var_release");
    *(void **)&api.local_release = dlsym(h, "cctx_local_release");
    T_CHECK(api.var_new && api.var_set && api.local_new && api.local_set &&
            api.var_release && api.local_release);
    T_CHECK(api.var_new("in-the-so", NULL, &api.var) == CCTX_OK);
    T_CHECK(api.local_new(NULL, NULL, NULL, &api.local) == CCTX_OK);
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, so_user, &api) == 0);
    T_CHECK(gate_wait(&so_ready));
    /* Our handles go (the thread's state still holds the variable); then
     * the library's last handle. */
    api.var_release(api.var);
    api.local_release(api.local);
    T_CHECK(dlclose(h) == 0);
    gate_open(&so_go);
    pthread_join(th, NULL);
}

static void test_dlclose_while_a_thread_that_used_the_library_runs(void **state)
{
    (void)state;
    assert_child_ok(scenario_dlclose, NULL);
}

/* ------------------------------------------------------------------ main */

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_release_callback_reads_variables_while_its_thread_exits),
        T(test_release_callback_sets_variables_while_its_thread_exits),
        T(test_release_callback_sets_variables_during_cleanup),
        T(test_local_release_using_an_untouched_local_at_exit_leaks_nothing),
        T(test_context_entered_by_a_release_callback_at_exit_is_left),
        T(test_context_entered_by_a_release_callback_during_cleanup_is_left),
        T(test_teardown_of_a_release_chain_is_bounded),
        T(test_teardown_out_of_memory_still_releases_everything),
        T(test_thread_create_releases_its_copy_on_pthread_exit),
        T(test_thread_create_releases_its_copy_when_cancelled),
        T(test_blocking_release_in_a_final_release_blocks_no_one_else),
        T(test_blocking_release_at_thread_exit_blocks_no_one_else),
        T(test_release_callback_taking_a_lock_held_by_a_releasing_thread_does_not_deadlock),
        T(test_final_release_of_a_local_held_by_many_threads_releases_each_once),
        T(test_stress_exits_and_final_releases_together),
        T(test_dlclose_while_a_thread_that_used_the_library_runs),
    };
#undef T
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cctx_thread_cleanup();
    return failed;
}
