/*
 * test_thread_lines.c — the per-thread lines of the two credit registries
 * (thread_line.h): shared root credit slots (hamt.c) and variable credit
 * lines (var.c). A thread claims one of each on first use and gives them
 * back at exit; lines are never freed, so without reuse every short-lived
 * thread would leave two behind for good:
 *
 *   - a fork child reuses a line of a thread that did not survive the
 *     fork once it took that thread's credits back, and not before (first
 *     in this
 *     file: it needs a process in which no thread has exited yet and the
 *     test's own thread holds no line, so that every line at the fork is
 *     a holder's);
 *   - an exiting thread gives both its lines back and the next thread
 *     takes them, making none;
 *   - stress: 8 threads each start short threads, round after round, that
 *     copy a shared base and set variables (taking root and variable
 *     credits) with values whose release uses the library, then exit: the
 *     registries never hold more lines than threads held them at once, and
 *     every value is released exactly once.
 */
#include "test_support.h"

#include <string.h>

enum { NVARS = 20 };
static cctx_var *vars[NVARS + 1];
/* The variable the values' release hook reads and sets, and its run count. */
static tv_reentry reentry;
/* Values made with the hook (each must run it exactly once). */
static long hooked_made;

static long runs(void)
{
    return __atomic_load_n(&reentry.runs, __ATOMIC_SEQ_CST);
}

static void vars_new(void)
{
    for (int i = 0; i < NVARS + 1; i++)
        T_CHECK(cctx_var_new("line", &tv_ops, &vars[i]) == CCTX_OK);
}

static void vars_release(void)
{
    for (int i = 0; i < NVARS + 1; i++)
        cctx_var_release(vars[i]);
}

static int setup(void **state)
{
    int r = nothing_left_setup(state);
    vars_new();
    assert_ok(cctx_var_new("probe", &tv_ops, &reentry.probe));
    reentry.runs = 0;
    hooked_made = 0;
    return r;
}

static int teardown(void **state)
{
    vars_release();
    cctx_var_release(reentry.probe);
    assert_int_equal(thread_failures(), 0);
    return nothing_left_teardown(state);
}

static tv_value *hooked(long id)
{
    __atomic_add_fetch(&hooked_made, 1, __ATOMIC_SEQ_CST);
    return tv_new_hooked(id, tv_hook_uses_library, &reentry);
}

/* A base binding vars[0..NVARS) to hooked values with ids 1..NVARS (any
 * thread: checks with T_CHECK). */
static cctx_context *base_new(void)
{
    cctx_context *base = NULL;
    T_CHECK(cctx_context_new(&base) == CCTX_OK);
    for (int i = 0; i < NVARS; i++) {
        tv_value *v = hooked(i + 1);
        T_CHECK(cctx_context_set(base, vars[i], v, NULL) == CCTX_OK);
        tv_drop(v);
    }
    return base;
}

/* The request pattern (test support), `n` times, on the calling thread;
 * the set values' releases use the library on this thread. */
static void requests(cctx_context *base, int n)
{
    requests_run(base, vars, NVARS, n, hooked);
}

/* Both registries: lines made, held by live threads, orphaned by a fork. */
struct line_counts {
    size_t slots, slots_held, slots_orphaned, lines, lines_held, lines_orphaned;
};

static struct line_counts counts_now(void)
{
    struct line_counts c;
    c.slots = cctx__root_credit_slots(&c.slots_held, &c.slots_orphaned);
    c.lines = cctx__var_credit_lines(&c.lines_held, &c.lines_orphaned);
    return c;
}

/* A thread that runs requests, notes the counts while it holds its
 * lines, and exits. */
struct short_thread {
    cctx_context *base;
    int requests;
    struct line_counts inside;
};

static void *short_thread_main(void *p)
{
    struct short_thread *s = p;
    requests(s->base, s->requests);
    s->inside = counts_now();
    return NULL;
}

static struct short_thread run_short_thread(cctx_context *base)
{
    struct short_thread s = { .base = base, .requests = 10 };
    pthread_t t;
    T_CHECK(pthread_create(&t, NULL, short_thread_main, &s) == 0);
    pthread_join(t, NULL);
    return s;
}

/* ------------------------------------------------------------- fork */

/* Threads that run requests, then wait (holding their lines and credits)
 * until `done` opens. The first makes the base (so that the test's own
 * thread holds no line at the fork). */
enum { HOLDERS = 3 };

struct idle_holder {
    bool makes_base;
    test_gate ready, done;
};

static cctx_context *fork_base;

static void *idle_holder_main(void *p)
{
    struct idle_holder *h = p;
    if (h->makes_base)
        fork_base = base_new();
    requests(fork_base, 50);
    gate_open(&h->ready);
    T_CHECK(gate_wait(&h->done));
    return NULL;
}

/* In each child: every line is a dead holder's (none free, none held), so
 * a line this thread takes without making one can only be a dead one.
 * The children take lines on their own thread rather than a new one:
 * ThreadSanitizer stops the child of a multi-threaded fork that starts a
 * thread, and a new thread may be given a dead one's thread-local storage,
 * after which valgrind counts what the dead one held there as lost. */
static struct line_counts fork_child_start(void)
{
    const struct line_counts c0 = counts_now();
    T_CHECK(c0.slots >= HOLDERS && c0.slots_orphaned == c0.slots && c0.slots_held == 0);
    T_CHECK(c0.lines >= HOLDERS && c0.lines_orphaned == c0.lines && c0.lines_held == 0);
    return c0;
}

/* The base's release takes the dead threads' root credits back: then a
 * slot of theirs is reused. Their variable lines still hold credits (for
 * the variables and the probe): this thread's first variable credits,
 * taken by the base's values' hooks, need a new line. */
static void fork_child_reuses_emptied_slots(void *arg)
{
    (void)arg;
    const struct line_counts c0 = fork_child_start();
    cctx_context_release(fork_base);
    const struct line_counts c1 = counts_now();
    T_CHECK(c1.lines_held == 1 && c1.lines == c0.lines + 1 &&
            c1.lines_orphaned == c0.lines_orphaned);
    cctx_context *base = base_new();
    requests(base, 10); /* copies: root credits */
    const struct line_counts c2 = counts_now();
    T_CHECK(c2.slots_held == 1 && c2.slots == c0.slots &&
            c2.slots_orphaned == c0.slots_orphaned - 1);
    cctx_context_release(base);
}

/* The variables' last user releases take the dead threads' variable
 * credits back: then a line of theirs is reused. Their slots still hold
 * credits for the base's root: this thread's first copy of the base needs
 * a new slot. */
static void fork_child_reuses_emptied_lines(void *arg)
{
    (void)arg;
    const struct line_counts c0 = fork_child_start();
    vars_release();
    cctx_var_release(reentry.probe); /* the hooks set it on the holders */
    vars_new();
    T_CHECK(cctx_var_new("probe", &tv_ops, &reentry.probe) == CCTX_OK);
    for (int i = 0; i < 10; i++) {
        cctx_context *c = NULL;
        T_CHECK(cctx_context_copy(fork_base, &c) == CCTX_OK);
        tv_value *a = hooked(-1);
        T_CHECK(cctx_context_set(c, vars[NVARS], a, NULL) == CCTX_OK);
        tv_drop(a);
        cctx_context_release(c);
    }
    const struct line_counts c1 = counts_now();
    T_CHECK(c1.lines_held == 1 && c1.lines == c0.lines &&
            c1.lines_orphaned == c0.lines_orphaned - 1);
    T_CHECK(c1.slots_held == 1 && c1.slots == c0.slots + 1 &&
            c1.slots_orphaned == c0.slots_orphaned);
}

static void test_a_fork_child_reuses_the_lines_of_threads_that_did_not_survive(void **state)
{
    (void)state;
    struct idle_holder h[HOLDERS];
    for (int i = 0; i < HOLDERS; i++)
        h[i] = (struct idle_holder){ .makes_base = i == 0, .ready = TEST_GATE_INIT,
                                     .done = TEST_GATE_INIT };
    pthread_t t[HOLDERS];
    threads_start(t, 1, idle_holder_main, h, sizeof h[0]);
    assert_true(gate_wait(&h[0].ready));
    threads_start(t + 1, HOLDERS - 1, idle_holder_main, h + 1, sizeof h[0]);
    for (int i = 1; i < HOLDERS; i++)
        assert_true(gate_wait(&h[i].ready));
    assert_true(run_in_fork_child(fork_child_reuses_emptied_slots, NULL));
    assert_true(run_in_fork_child(fork_child_reuses_emptied_lines, NULL));
    for (int i = 0; i < HOLDERS; i++)
        gate_open(&h[i].done);
    threads_join(t, HOLDERS);
    cctx_context_release(fork_base);
}

/* ------------------------------------------------------- thread exit */

static void test_an_exiting_thread_gives_both_lines_to_the_next_thread(void **state)
{
    (void)state;
    cctx_context *base = base_new();
    const struct line_counts c0 = counts_now();
    const struct short_thread a = run_short_thread(base);
    /* While it ran it held one of each (so it took credits of both kinds). */
    assert_int_equal(a.inside.slots_held, c0.slots_held + 1);
    assert_int_equal(a.inside.lines_held, c0.lines_held + 1);
    const struct line_counts c1 = counts_now();
    assert_int_equal(c1.slots_held, c0.slots_held); /* its exit gave both back */
    assert_int_equal(c1.lines_held, c0.lines_held);
    const struct short_thread b = run_short_thread(base);
    assert_int_equal(b.inside.slots_held, c0.slots_held + 1);
    assert_int_equal(b.inside.lines_held, c0.lines_held + 1);
    assert_int_equal(b.inside.slots, c1.slots); /* the next one made none */
    assert_int_equal(b.inside.lines, c1.lines);
    cctx_context_release(base);
    assert_int_equal(runs(), hooked_made);
}

/* ------------------------------------------------------------- stress */

enum { SPAWNERS = 8 };
static cctx_context *stress_base;
static long stress_rounds;

/* Starts and joins short threads, one at a time; uses no library call
 * itself, so it never holds a line. */
static void *spawner_main(void *p)
{
    (void)p;
    for (long r = 0; r < stress_rounds; r++) {
        struct short_thread s = { .base = stress_base, .requests = 20 };
        pthread_t t;
        T_CHECK(pthread_create(&t, NULL, short_thread_main, &s) == 0);
        pthread_join(t, NULL);
        /* The short thread held one of each. */
        T_CHECK(s.inside.slots_held >= 1 && s.inside.lines_held >= 1);
    }
    return NULL;
}

static size_t max_size(size_t a, size_t b)
{
    return a > b ? a : b;
}

static void test_short_threads_keep_the_line_count_bounded(void **state)
{
    (void)state;
    stress_base = base_new();
    stress_rounds = scaled(100);
    const long retains0 = tv_retains(), releases0 = tv_releases();
    const struct line_counts c0 = counts_now();
    pthread_t t[SPAWNERS];
    threads_start(t, SPAWNERS, spawner_main, NULL, 0);
    threads_join(t, SPAWNERS);
    assert_int_equal(thread_failures(), 0);
    /* A line is made only when every line is held (thread_line.h): at most
     * SPAWNERS short threads at once, plus what was held before (ours). */
    const struct line_counts c1 = counts_now();
    assert_true(c1.slots <= max_size(c0.slots, c0.slots_held + SPAWNERS));
    assert_true(c1.lines <= max_size(c0.lines, c0.lines_held + SPAWNERS));
    assert_int_equal(c1.slots_held, c0.slots_held); /* all given back */
    assert_int_equal(c1.lines_held, c0.lines_held);
    /* Every value the short threads set went with their copies, once. */
    assert_int_equal(runs() + NVARS, hooked_made);
    cctx_context_release(stress_base);
    assert_int_equal(runs(), hooked_made);
    assert_int_equal(tv_live(), tv_live_at_setup());
    /* Every retain matched by exactly one release (and the base's first
     * NVARS references, taken before the count began, released once). */
    assert_int_equal(tv_retains() - retains0 + NVARS, tv_releases() - releases0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* First: no thread of this process has exited before it. */
        cmocka_unit_test_setup_teardown(
            test_a_fork_child_reuses_the_lines_of_threads_that_did_not_survive, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_an_exiting_thread_gives_both_lines_to_the_next_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_threads_keep_the_line_count_bounded, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
