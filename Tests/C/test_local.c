/*
 * test_local.c — threading.local for C (cctx_local_*).
 *
 * Values are "tracked" objects whose retain/release callbacks count them, so
 * every lifetime test can say how many values are alive and notice a value
 * released twice. Every test starts and ends with the main thread's state
 * cleaned up, and the teardown checks that no tracked value and no runtime
 * allocation is left over.
 *
 * CCTX_TEST_SCALE (percent, default 100; the toolbox's scaled()) scales the
 * stress loops down for sanitizer and valgrind runs.
 */
#include <stdatomic.h>
#include <string.h>

#include "test_support.h" /* scaled(), T_CHECK, the C test toolbox */

/* -------------------------------------------------------- tracked values */

#define GROUPS 4
typedef struct tracked {
    atomic_int refs;
    int group;
    long tag;
} tracked;

static atomic_long tracked_live;
static atomic_long group_live[GROUPS];
static atomic_long tracked_overreleased;

static tracked *tracked_new(int group, long tag)
{
    tracked *t = malloc(sizeof *t);
    atomic_init(&t->refs, 1);
    t->group = group;
    t->tag = tag;
    atomic_fetch_add(&tracked_live, 1);
    atomic_fetch_add(&group_live[group], 1);
    return t;
}

static void tracked_retain(void *p)
{
    tracked *t = p;
    int old = atomic_fetch_add(&t->refs, 1);
    if (old <= 0)
        atomic_fetch_add(&tracked_overreleased, 1);
}

static void tracked_release(void *p)
{
    tracked *t = p;
    int left = atomic_fetch_sub(&t->refs, 1) - 1;
    if (left < 0) {
        atomic_fetch_add(&tracked_overreleased, 1);
        return;
    }
    if (left == 0) {
        atomic_fetch_sub(&group_live[t->group], 1);
        atomic_fetch_sub(&tracked_live, 1);
        free(t);
    }
}

static const cctx_value_ops tracked_ops = {tracked_retain, tracked_release};

/* Sets `local` to a new tracked value; the local holds the only reference. */
static cctx_status set_tracked(cctx_local *local, int group, long tag)
{
    tracked *t = tracked_new(group, tag);
    cctx_status st = cctx_local_set(local, t);
    tracked_release(t);
    return st;
}

/* The tag of this thread's value, -1 for CCTX_NOT_FOUND, -2 for NULL,
 * -100 - status for any other status. */
static long get_tag(cctx_local *local)
{
    void *v = (void *)0x1;
    cctx_status st = cctx_local_get(local, &v);
    if (st == CCTX_NOT_FOUND)
        return -1;
    if (st != CCTX_OK)
        return -100 - (long)st;
    if (v == NULL)
        return -2;
    return ((tracked *)v)->tag;
}

/* An initialiser that counts its calls (userdata: struct init_counter). */
struct init_counter {
    atomic_long calls;
    atomic_long fail_first; /* this many calls fail with CCTX_ENOMEM */
    int group;
};

static cctx_status counting_init(void *userdata, void **value_out)
{
    struct init_counter *c = userdata;
    long n = atomic_fetch_add(&c->calls, 1);
    if (n < atomic_load(&c->fail_first))
        return CCTX_ENOMEM;
    *value_out = tracked_new(c->group, 1000000 + n); /* a new reference */
    return CCTX_OK;
}

/* -------------------------------------------------------- setup/teardown */

static long allocations_at_start;
static long failures_at_start;

static int setup(void **state)
{
    (void)state;
    assert_int_equal(cctx_thread_cleanup(), CCTX_OK);
    cctx_reclaim();
    failures_at_start = thread_failures();
    atomic_store(&tracked_overreleased, 0);
    allocations_at_start = cctx__live_allocations();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cctx__fail_allocation(0);
    assert_int_equal(cctx_thread_cleanup(), CCTX_OK);
    cctx_reclaim();
    assert_int_equal(thread_failures(), failures_at_start);
    assert_int_equal(atomic_load(&tracked_overreleased), 0);
    assert_int_equal(atomic_load(&tracked_live), 0);
    for (int g = 0; g < GROUPS; g++)
        assert_int_equal(atomic_load(&group_live[g]), 0);
    assert_int_equal(cctx__live_allocations(), allocations_at_start);
    return 0;
}

/* Runs `fn(arg_i)` on `n` threads and joins them. */
static void run_threads(int n, void *(*fn)(void *), void *args, size_t arg_size)
{
    pthread_t *th = calloc((size_t)n, sizeof *th);
    for (int i = 0; i < n; i++)
        assert_int_equal(pthread_create(&th[i], NULL, fn, (char *)args + (size_t)i * arg_size), 0);
    for (int i = 0; i < n; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    free(th);
}

/* ===================================================== single thread */

static void test_local_rejects_null_and_foreign_handles(void **state)
{
    (void)state;
    cctx_local *l = NULL;
    void *v = (void *)0x5;
    assert_int_equal(cctx_local_new(NULL, NULL, NULL, NULL), CCTX_EINVAL);
    assert_int_equal(cctx_local_get(NULL, &v), CCTX_EINVAL);
    assert_ptr_equal(v, (void *)0x5);
    assert_int_equal(cctx_local_set(NULL, v), CCTX_EINVAL);
    assert_int_equal(cctx_local_delete(NULL), CCTX_EINVAL);
    assert_null(cctx_local_retain(NULL));
    cctx_local_release(NULL);

    /* Memory that is not a local (wrong magic). */
    uint64_t fake[16];
    memset(fake, 0x5a, sizeof fake);
    cctx_local *foreign = (cctx_local *)fake;
    assert_int_equal(cctx_local_get(foreign, &v), CCTX_EINVAL);
    assert_int_equal(cctx_local_set(foreign, v), CCTX_EINVAL);
    assert_int_equal(cctx_local_delete(foreign), CCTX_EINVAL);
    cctx_local_release(foreign);

    assert_int_equal(cctx_local_new(NULL, NULL, NULL, &l), CCTX_OK);
    assert_int_equal(cctx_local_get(l, NULL), CCTX_EINVAL);
    assert_ptr_equal(cctx_local_retain(l), l);
    cctx_local_release(l);
    assert_int_equal(cctx_local_get(l, &v), CCTX_NOT_FOUND); /* still alive */
    cctx_local_release(l);
}

static void test_local_get_set_delete_in_one_thread(void **state)
{
    (void)state;
    cctx_local *l;
    assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &l), CCTX_OK);

    assert_int_equal(get_tag(l), -1);
    assert_int_equal(cctx_local_delete(l), CCTX_NOT_FOUND);

    assert_int_equal(set_tracked(l, 0, 1), CCTX_OK);
    assert_int_equal(get_tag(l), 1);
    assert_int_equal(atomic_load(&tracked_live), 1);

    assert_int_equal(set_tracked(l, 0, 2), CCTX_OK); /* releases 1 */
    assert_int_equal(get_tag(l), 2);
    assert_int_equal(atomic_load(&tracked_live), 1);

    /* Setting the value it already holds keeps it alive. */
    void *cur;
    assert_int_equal(cctx_local_get(l, &cur), CCTX_OK);
    assert_int_equal(cctx_local_set(l, cur), CCTX_OK);
    assert_int_equal(get_tag(l), 2);
    assert_int_equal(atomic_load(&((tracked *)cur)->refs), 1);

    /* NULL is a value, stored as is (callbacks never see it). */
    assert_int_equal(cctx_local_set(l, NULL), CCTX_OK);
    assert_int_equal(atomic_load(&tracked_live), 0);
    assert_int_equal(get_tag(l), -2);
    assert_int_equal(cctx_local_delete(l), CCTX_OK);
    assert_int_equal(get_tag(l), -1);

    assert_int_equal(set_tracked(l, 0, 3), CCTX_OK);
    assert_int_equal(cctx_local_delete(l), CCTX_OK);
    assert_int_equal(atomic_load(&tracked_live), 0);
    assert_int_equal(get_tag(l), -1);
    assert_int_equal(cctx_local_delete(l), CCTX_NOT_FOUND);

    /* A set after a delete works again. */
    assert_int_equal(set_tracked(l, 0, 4), CCTX_OK);
    assert_int_equal(get_tag(l), 4);
    cctx_local_release(l); /* releases this thread's value */
    assert_int_equal(atomic_load(&tracked_live), 0);

    /* Without ops the runtime never touches values. */
    int a = 1, b = 2;
    void *out;
    assert_int_equal(cctx_local_new(NULL, NULL, NULL, &l), CCTX_OK);
    assert_int_equal(cctx_local_set(l, &a), CCTX_OK);
    assert_int_equal(cctx_local_get(l, &out), CCTX_OK);
    assert_ptr_equal(out, &a);
    assert_int_equal(cctx_local_set(l, &b), CCTX_OK);
    assert_int_equal(cctx_local_get(l, &out), CCTX_OK);
    assert_ptr_equal(out, &b);
    cctx_local_release(l);
}

static void test_local_initialiser_error_is_returned_and_retried(void **state)
{
    (void)state;
    struct init_counter c = {.group = 0};
    atomic_store(&c.fail_first, 2);
    cctx_local *l;
    assert_int_equal(cctx_local_new(&tracked_ops, counting_init, &c, &l), CCTX_OK);
    assert_int_equal(atomic_load(&c.calls), 0); /* lazy: not run by new */
    void *v = (void *)0x7;
    assert_int_equal(cctx_local_get(l, &v), CCTX_ENOMEM);
    assert_ptr_equal(v, (void *)0x7);
    assert_int_equal(cctx_local_get(l, &v), CCTX_ENOMEM);
    assert_int_equal(get_tag(l), 1000002);
    assert_int_equal(get_tag(l), 1000002);
    assert_int_equal(atomic_load(&c.calls), 3);
    cctx_local_release(l);
}

/* Python calls a local's __init__ again for a thread whose dict is gone:
 * after a delete the thread is as if it never touched the local. */
static void test_local_delete_runs_the_initialiser_again(void **state)
{
    (void)state;
    struct init_counter c = {.group = 0};
    cctx_local *l;
    assert_int_equal(cctx_local_new(&tracked_ops, counting_init, &c, &l), CCTX_OK);
    assert_int_equal(get_tag(l), 1000000);
    assert_int_equal(cctx_local_delete(l), CCTX_OK);
    assert_int_equal(atomic_load(&tracked_live), 0);
    assert_int_equal(cctx_local_delete(l), CCTX_NOT_FOUND); /* nothing left */
    void *peeked;
    assert_int_equal(cctx_local_peek(l, &peeked), CCTX_NOT_FOUND);
    assert_int_equal(atomic_load(&c.calls), 1); /* peek runs nothing */
    assert_int_equal(get_tag(l), 1000001);
    assert_int_equal(get_tag(l), 1000001);
    assert_int_equal(atomic_load(&c.calls), 2);
    assert_int_equal(set_tracked(l, 0, 5), CCTX_OK);
    assert_int_equal(get_tag(l), 5);
    assert_int_equal(cctx_local_delete(l), CCTX_OK);
    assert_int_equal(atomic_load(&tracked_live), 0);
    assert_int_equal(get_tag(l), 1000002);
    assert_int_equal(atomic_load(&c.calls), 3);

    /* A delete before any get finds nothing and settles nothing. */
    assert_int_equal(cctx_thread_cleanup(), CCTX_OK);
    assert_int_equal(cctx_local_delete(l), CCTX_NOT_FOUND);
    assert_int_equal(atomic_load(&c.calls), 3);
    assert_int_equal(get_tag(l), 1000003);
    cctx_local_release(l);
}

static void test_local_set_before_get_skips_the_initialiser_here(void **state)
{
    (void)state;
    struct init_counter c = {.group = 0};
    cctx_local *l;
    assert_int_equal(cctx_local_new(&tracked_ops, counting_init, &c, &l), CCTX_OK);
    assert_int_equal(set_tracked(l, 0, 9), CCTX_OK);
    assert_int_equal(get_tag(l), 9);
    assert_int_equal(atomic_load(&c.calls), 0);
    cctx_local_release(l);
}

/* A released local's index is reused by the next local; the new local must
 * look untouched in every thread, whatever the old one held there. */
static void test_local_reused_slot_never_shows_a_stale_value(void **state)
{
    (void)state;
    struct init_counter c = {.group = 0};
    for (int round = 0; round < 50; round++) {
        cctx_local *old, *fresh;
        assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &old), CCTX_OK);
        if (round % 2)
            assert_int_equal(set_tracked(old, 0, round), CCTX_OK);
        else
            assert_int_equal(cctx_local_delete(old), CCTX_NOT_FOUND);
        cctx_local_release(old);
        assert_int_equal(atomic_load(&tracked_live), 0);
        assert_int_equal(cctx_local_new(&tracked_ops, round % 3 ? counting_init : NULL, &c,
                                        &fresh), CCTX_OK);
        long calls = atomic_load(&c.calls);
        long tag = get_tag(fresh);
        if (round % 3) {
            assert_int_equal(tag, 1000000 + calls);
            assert_int_equal(atomic_load(&c.calls), calls + 1);
        } else {
            assert_int_equal(tag, -1);
            assert_int_equal(cctx_local_delete(fresh), CCTX_NOT_FOUND);
        }
        cctx_local_release(fresh);
    }
}

/* ===================================================== across threads */

#define NTHREADS 8

struct iso_arg {
    cctx_local *local;
    pthread_barrier_t *barrier;
    int id;
};

static void *isolation_thread(void *p)
{
    struct iso_arg *a = p;
    T_CHECK(get_tag(a->local) == -1); /* none of another thread's values */
    for (int round = 0; round < 20; round++) {
        long mine = a->id * 1000 + round;
        T_CHECK(set_tracked(a->local, 0, mine) == CCTX_OK);
        pthread_barrier_wait(a->barrier); /* everyone has set */
        T_CHECK(get_tag(a->local) == mine);
        pthread_barrier_wait(a->barrier); /* everyone has read */
    }
    return NULL;
}

static void test_local_values_are_isolated_per_thread(void **state)
{
    (void)state;
    cctx_local *l;
    assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &l), CCTX_OK);
    assert_int_equal(set_tracked(l, 0, 424242), CCTX_OK);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, NTHREADS);
    struct iso_arg args[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        args[i] = (struct iso_arg){l, &barrier, i + 1};
    run_threads(NTHREADS, isolation_thread, args, sizeof args[0]);
    pthread_barrier_destroy(&barrier);
    assert_int_equal(get_tag(l), 424242);
    assert_int_equal(atomic_load(&tracked_live), 1); /* exits released theirs */
    cctx_local_release(l);
}

struct init_arg {
    cctx_local *local;
    cctx_local *plain;
    struct init_counter *counter;
    long main_tag;
};

static void *init_once_thread(void *p)
{
    struct init_arg *a = p;
    long first = get_tag(a->local);
    T_CHECK(first >= 1000000 && first != a->main_tag);
    for (int i = 0; i < 100; i++)
        T_CHECK(get_tag(a->local) == first);
    /* A new thread sees none of main's values. */
    T_CHECK(get_tag(a->plain) == -1);
    return NULL;
}

static void test_local_initialiser_runs_once_per_thread(void **state)
{
    (void)state;
    struct init_counter c = {.group = 0};
    cctx_local *l, *plain;
    assert_int_equal(cctx_local_new(&tracked_ops, counting_init, &c, &l), CCTX_OK);
    assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &plain), CCTX_OK);
    assert_int_equal(set_tracked(plain, 0, 7), CCTX_OK);
    long main_tag = get_tag(l);
    assert_int_equal(get_tag(l), main_tag);
    assert_int_equal(atomic_load(&c.calls), 1);
    struct init_arg args[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        args[i] = (struct init_arg){l, plain, &c, main_tag};
    run_threads(NTHREADS, init_once_thread, args, sizeof args[0]);
    assert_int_equal(atomic_load(&c.calls), 1 + NTHREADS);
    assert_int_equal(get_tag(l), main_tag);
    assert_int_equal(get_tag(plain), 7);
    assert_int_equal(atomic_load(&tracked_live), 2); /* main's two */
    cctx_local_release(l);
    cctx_local_release(plain);
}

static void *set_first_thread(void *p)
{
    struct init_arg *a = p;
    T_CHECK(set_tracked(a->local, 0, 55) == CCTX_OK);
    T_CHECK(get_tag(a->local) == 55);
    T_CHECK(cctx_local_delete(a->local) == CCTX_OK);
    void *v;
    T_CHECK(cctx_local_peek(a->local, &v) == CCTX_NOT_FOUND);
    return NULL;
}

static void *delete_first_thread(void *p)
{
    struct init_arg *a = p;
    T_CHECK(cctx_local_delete(a->local) == CCTX_NOT_FOUND);
    T_CHECK(get_tag(a->local) >= 1000000); /* the delete settled nothing */
    return NULL;
}

/* A set before any get skips the initialiser in that thread; a delete
 * before any get does not (it finds nothing to delete). */
static void test_local_set_before_get_skips_the_initialiser_delete_does_not(void **state)
{
    (void)state;
    struct init_counter c = {.group = 0};
    cctx_local *l;
    assert_int_equal(cctx_local_new(&tracked_ops, counting_init, &c, &l), CCTX_OK);
    struct init_arg args[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        args[i] = (struct init_arg){l, NULL, &c, 0};
    run_threads(NTHREADS, set_first_thread, args, sizeof args[0]);
    assert_int_equal(atomic_load(&c.calls), 0);
    run_threads(NTHREADS, delete_first_thread, args, sizeof args[0]);
    assert_int_equal(atomic_load(&c.calls), NTHREADS);
    cctx_local_release(l);
}

#define EXIT_LOCALS 4

struct exit_arg {
    cctx_local **locals;
    struct init_counter *counter;
};

static void *exit_thread(void *p)
{
    struct exit_arg *a = p;
    for (int i = 0; i < EXIT_LOCALS - 1; i++)
        T_CHECK(set_tracked(a->locals[i], 1, i) == CCTX_OK);
    T_CHECK(get_tag(a->locals[EXIT_LOCALS - 1]) >= 1000000); /* init's value */
    return NULL; /* exit releases all four */
}

static void test_local_thread_exit_releases_its_values(void **state)
{
    (void)state;
    struct init_counter c = {.group = 1};
    cctx_local *locals[EXIT_LOCALS];
    for (int i = 0; i < EXIT_LOCALS - 1; i++)
        assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &locals[i]), CCTX_OK);
    assert_int_equal(cctx_local_new(&tracked_ops, counting_init, &c,
                                    &locals[EXIT_LOCALS - 1]), CCTX_OK);
    struct exit_arg args[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        args[i] = (struct exit_arg){locals, &c};
    run_threads(NTHREADS, exit_thread, args, sizeof args[0]);
    assert_int_equal(atomic_load(&group_live[1]), 0);
    assert_int_equal(atomic_load(&c.calls), NTHREADS);

    /* cctx_thread_cleanup does for the calling thread what exit does. */
    assert_int_equal(set_tracked(locals[0], 1, 1), CCTX_OK);
    assert_int_equal(get_tag(locals[EXIT_LOCALS - 1]), 1000000 + NTHREADS);
    assert_int_equal(atomic_load(&group_live[1]), 2);
    assert_int_equal(cctx_thread_cleanup(), CCTX_OK);
    assert_int_equal(atomic_load(&group_live[1]), 0);
    assert_int_equal(get_tag(locals[0]), -1);
    for (int i = 0; i < EXIT_LOCALS; i++)
        cctx_local_release(locals[i]);
}

/* ------------------------------------------------ release while busy */

/* The scenario: local X has a value in 8 busy threads that keep using
 * OTHER locals — creating and releasing their own (index churn and slot
 * directory growth), reading and writing shared ones — plus in 4 threads
 * that drop their own reference to X and exit at the moment X's last
 * reference goes, and 2 threads that keep registering and tearing down
 * their slot tables. Releasing X must release each of its values exactly
 * once, in all of them, before the release returns. */

#define BUSY 8
#define EXITERS 4
#define CYCLERS 2
#define SHARED 16

struct busy_shared {
    cctx_local *x;
    cctx_local *shared[SHARED];
    atomic_int ready;
    atomic_int go;
    atomic_int stop;
};

struct busy_arg {
    struct busy_shared *s;
    int id;
};

static void spin_until(atomic_int *flag)
{
    while (!atomic_load(flag))
        sched_yield();
}

static void *busy_thread(void *p)
{
    struct busy_arg *a = p;
    struct busy_shared *s = a->s;
    T_CHECK(set_tracked(s->x, 2, a->id) == CCTX_OK);
    atomic_fetch_add(&s->ready, 1);
    long n = 0;
    cctx_local *own[64];
    while (!atomic_load(&s->stop)) {
        int batch = 1 + (int)(n % 64);
        for (int i = 0; i < batch; i++) {
            T_CHECK(cctx_local_new(&tracked_ops, NULL, NULL, &own[i]) == CCTX_OK);
            T_CHECK(set_tracked(own[i], 3, i) == CCTX_OK);
        }
        for (int i = 0; i < SHARED; i++) {
            T_CHECK(set_tracked(s->shared[i], 3, a->id) == CCTX_OK);
            T_CHECK(get_tag(s->shared[i]) == a->id);
        }
        for (int i = 0; i < batch; i++) {
            T_CHECK(get_tag(own[i]) == i);
            if (i % 2)
                T_CHECK(cctx_local_delete(own[i]) == CCTX_OK);
            cctx_local_release(own[i]);
        }
        n++;
    }
    return NULL;
}

static void *exiter_thread(void *p)
{
    struct busy_arg *a = p;
    struct busy_shared *s = a->s;
    /* Holds the reference main gave it. */
    T_CHECK(set_tracked(s->x, 2, 100 + a->id) == CCTX_OK);
    for (int i = 0; i < SHARED; i++)
        T_CHECK(set_tracked(s->shared[i], 3, a->id) == CCTX_OK);
    atomic_fetch_add(&s->ready, 1);
    spin_until(&s->go);
    cctx_local_release(s->x); /* may be the last reference */
    return NULL;               /* exit races with the release walk */
}

static void *cycler_thread(void *p)
{
    struct busy_arg *a = p;
    struct busy_shared *s = a->s;
    atomic_fetch_add(&s->ready, 1);
    while (!atomic_load(&s->stop)) {
        for (int i = SHARED - 1; i >= 0; i--)
            T_CHECK(set_tracked(s->shared[i], 3, a->id) == CCTX_OK);
        T_CHECK(cctx_thread_cleanup() == CCTX_OK); /* unlink + free the table */
    }
    return NULL;
}

static void test_local_release_reaches_every_busy_thread_once(void **state)
{
    (void)state;
    long rounds = scaled(40);
    struct busy_shared s;
    for (int i = 0; i < SHARED; i++)
        assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &s.shared[i]), CCTX_OK);
    for (long round = 0; round < rounds; round++) {
        /* X takes an index above the shared locals; the busy threads'
         * own locals come after it, in chunks they may not have yet. */
        assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &s.x), CCTX_OK);
        atomic_store(&s.ready, 0);
        atomic_store(&s.go, 0);
        atomic_store(&s.stop, 0);
        struct busy_arg args[BUSY + EXITERS + CYCLERS];
        pthread_t th[BUSY + EXITERS + CYCLERS];
        for (int i = 0; i < BUSY + EXITERS + CYCLERS; i++) {
            args[i] = (struct busy_arg){&s, i};
            void *(*fn)(void *) = i < BUSY ? busy_thread
                                : i < BUSY + EXITERS ? exiter_thread : cycler_thread;
            if (fn == exiter_thread)
                cctx_local_retain(s.x);
            assert_int_equal(pthread_create(&th[i], NULL, fn, &args[i]), 0);
        }
        while (atomic_load(&s.ready) < BUSY + EXITERS + CYCLERS)
            sched_yield();
        assert_int_equal(atomic_load(&group_live[2]), BUSY + EXITERS);
        atomic_store(&s.go, 1);
        cctx_local_release(s.x);
        for (int i = BUSY; i < BUSY + EXITERS; i++)
            assert_int_equal(pthread_join(th[i], NULL), 0);
        /* Every reference is gone: all of X's values are released, while
         * the busy threads are still running. */
        assert_int_equal(atomic_load(&group_live[2]), 0);
        atomic_store(&s.stop, 1);
        for (int i = 0; i < BUSY; i++)
            assert_int_equal(pthread_join(th[i], NULL), 0);
        for (int i = BUSY + EXITERS; i < BUSY + EXITERS + CYCLERS; i++)
            assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(atomic_load(&group_live[2]), 0);
        assert_int_equal(atomic_load(&group_live[3]), 0); /* all exited */
    }
    for (int i = 0; i < SHARED; i++)
        cctx_local_release(s.shared[i]);
}

/* ----------------------------------------------------------------- churn */

#define CHURN_LOCALS 5
#define CHURN_WAVE 32

struct churn_arg {
    cctx_local **locals;
    int id;
};

static void *churn_thread(void *p)
{
    struct churn_arg *a = p;
    cctx_local **l = a->locals;
    T_CHECK(set_tracked(l[0], 1, a->id) == CCTX_OK);
    T_CHECK(set_tracked(l[1], 1, a->id) == CCTX_OK);
    T_CHECK(get_tag(l[2]) >= 1000000); /* initialiser */
    T_CHECK(set_tracked(l[3], 1, a->id) == CCTX_OK);
    T_CHECK(cctx_local_delete(l[3]) == CCTX_OK);
    T_CHECK(get_tag(l[4]) == -1);
    T_CHECK(get_tag(l[0]) == a->id && get_tag(l[1]) == a->id);
    return NULL;
}

static void test_local_churn_of_short_lived_threads_leaks_nothing(void **state)
{
    (void)state;
    long total = scaled(20000);
    struct init_counter c = {.group = 1};
    cctx_local *locals[CHURN_LOCALS];
    for (int i = 0; i < CHURN_LOCALS; i++)
        assert_int_equal(cctx_local_new(&tracked_ops, i == 2 ? counting_init : NULL, &c,
                                        &locals[i]), CCTX_OK);
    struct churn_arg args[CHURN_WAVE];
    pthread_t th[CHURN_WAVE];
    for (long done = 0; done < total;) {
        int wave = total - done < CHURN_WAVE ? (int)(total - done) : CHURN_WAVE;
        for (int i = 0; i < wave; i++) {
            args[i] = (struct churn_arg){locals, (int)(done + i)};
            assert_int_equal(pthread_create(&th[i], NULL, churn_thread, &args[i]), 0);
        }
        for (int i = 0; i < wave; i++)
            assert_int_equal(pthread_join(th[i], NULL), 0);
        done += wave;
    }
    assert_int_equal(atomic_load(&group_live[1]), 0);
    assert_int_equal(atomic_load(&c.calls), total);
    for (int i = 0; i < CHURN_LOCALS; i++)
        cctx_local_release(locals[i]);
    cctx_reclaim();
    assert_int_equal(cctx__live_allocations(), allocations_at_start);
}

/* ------------------------------------------------------- many locals */

#define MANY 10000 /* far above PTHREAD_KEYS_MAX (1024) */

static void test_local_ten_thousand_in_one_thread(void **state)
{
    (void)state;
    cctx_local **l = calloc(MANY, sizeof *l);
    for (long i = 0; i < MANY; i++) {
        assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &l[i]), CCTX_OK);
        assert_int_equal(set_tracked(l[i], 0, i), CCTX_OK);
    }
    for (long i = 0; i < MANY; i++)
        assert_int_equal(get_tag(l[i]), i);
    assert_int_equal(atomic_load(&tracked_live), MANY);
    /* Release every other one; their indices get reused by new locals,
     * which must look untouched. */
    for (long i = 0; i < MANY; i += 2)
        cctx_local_release(l[i]);
    assert_int_equal(atomic_load(&tracked_live), MANY / 2);
    for (long i = 0; i < MANY; i += 2) {
        assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &l[i]), CCTX_OK);
        assert_int_equal(get_tag(l[i]), -1);
    }
    for (long i = 1; i < MANY; i += 2)
        assert_int_equal(get_tag(l[i]), i);
    for (long i = 0; i < MANY; i++)
        cctx_local_release(l[i]);
    assert_int_equal(atomic_load(&tracked_live), 0);
    free(l);
}

#define MANY_THREADS 4

struct many_arg {
    cctx_local **locals;
    pthread_barrier_t *barrier;
    int id;
};

static void *many_thread(void *p)
{
    struct many_arg *a = p;
    long base = (long)a->id * 100000;
    for (long i = 0; i < MANY; i++)
        T_CHECK(get_tag(a->locals[i]) == -1);
    for (long i = 0; i < MANY; i++)
        T_CHECK(set_tracked(a->locals[i], 1, base + i) == CCTX_OK);
    pthread_barrier_wait(a->barrier); /* all 4 x 10,000 values alive */
    for (long i = 0; i < MANY; i++)
        T_CHECK(get_tag(a->locals[i]) == base + i);
    pthread_barrier_wait(a->barrier);
    return NULL;
}

static void test_local_ten_thousand_across_four_threads(void **state)
{
    (void)state;
    cctx_local **l = calloc(MANY, sizeof *l);
    for (long i = 0; i < MANY; i++)
        assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &l[i]), CCTX_OK);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, MANY_THREADS);
    struct many_arg args[MANY_THREADS];
    for (int i = 0; i < MANY_THREADS; i++)
        args[i] = (struct many_arg){l, &barrier, i + 1};
    run_threads(MANY_THREADS, many_thread, args, sizeof args[0]);
    pthread_barrier_destroy(&barrier);
    assert_int_equal(atomic_load(&group_live[1]), 0);
    for (long i = 0; i < MANY; i++)
        cctx_local_release(l[i]);
    free(l);
}

/* A long-lived second thread holds values of locals that come and go; the
 * next local at the same index must look untouched to both threads. */
struct reuse_shared {
    cctx_local *current;
    struct init_counter *counter;
    pthread_barrier_t barrier;
    long rounds;
};

static void reuse_check_fresh(struct reuse_shared *s, long round)
{
    if (round % 2) {
        T_CHECK(get_tag(s->current) >= 1000000); /* the initialiser's */
    } else {
        T_CHECK(get_tag(s->current) == -1);
    }
    T_CHECK(set_tracked(s->current, 2, round) == CCTX_OK);
    T_CHECK(get_tag(s->current) == round);
}

static void *reuse_thread(void *p)
{
    struct reuse_shared *s = p;
    for (long round = 0; round < s->rounds; round++) {
        pthread_barrier_wait(&s->barrier); /* main made s->current */
        reuse_check_fresh(s, round);
        pthread_barrier_wait(&s->barrier); /* main may release it now */
        pthread_barrier_wait(&s->barrier); /* released */
        T_CHECK(atomic_load(&group_live[2]) == 0);
    }
    return NULL;
}

static void test_local_reused_slot_across_threads_never_shows_a_stale_value(void **state)
{
    (void)state;
    struct init_counter c = {.group = 2};
    struct reuse_shared s = {.counter = &c, .rounds = scaled(2000)};
    pthread_barrier_init(&s.barrier, NULL, 2);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, reuse_thread, &s), 0);
    for (long round = 0; round < s.rounds; round++) {
        assert_int_equal(cctx_local_new(&tracked_ops, round % 2 ? counting_init : NULL, &c,
                                        &s.current), CCTX_OK);
        pthread_barrier_wait(&s.barrier);
        reuse_check_fresh(&s, round);
        pthread_barrier_wait(&s.barrier);
        cctx_local_release(s.current);
        assert_int_equal(atomic_load(&group_live[2]), 0);
        pthread_barrier_wait(&s.barrier);
    }
    assert_int_equal(pthread_join(th, NULL), 0);
    pthread_barrier_destroy(&s.barrier);
}

/* ------------------------------------------- releases from callbacks */

/* A value that owns a reference to another local (as a Swift box holding a
 * ThreadLocal does): dropping the value may drop that local's last
 * reference from inside a release callback, during another local's
 * release walk or during thread exit. */
typedef struct holder {
    atomic_int refs;
    cctx_local *owned;
} holder;

static atomic_long holders_live;

static void holder_retain(void *p)
{
    atomic_fetch_add(&((holder *)p)->refs, 1);
}

static void holder_release(void *p)
{
    holder *h = p;
    if (atomic_fetch_sub(&h->refs, 1) == 1) {
        cctx_local_release(h->owned);
        free(h);
        atomic_fetch_sub(&holders_live, 1);
    }
}

static const cctx_value_ops holder_ops = {holder_retain, holder_release};

struct nest_arg {
    cctx_local *a;
    cctx_local *b;
    atomic_int ready;
    atomic_int go;
};

static void *nest_thread(void *p)
{
    struct nest_arg *n = p;
    T_CHECK(set_tracked(n->b, 1, 2) == CCTX_OK);
    holder *h = malloc(sizeof *h);
    atomic_init(&h->refs, 1);
    h->owned = cctx_local_retain(n->b);
    atomic_fetch_add(&holders_live, 1);
    T_CHECK(cctx_local_set(n->a, h) == CCTX_OK);
    holder_release(h); /* a's slot holds the only reference */
    atomic_store(&n->ready, 1);
    spin_until(&n->go);
    return NULL;
}

static void test_local_release_callback_may_release_another_local(void **state)
{
    (void)state;
    for (int via_exit = 0; via_exit < 2; via_exit++) {
        struct nest_arg n = {0};
        assert_int_equal(cctx_local_new(&holder_ops, NULL, NULL, &n.a), CCTX_OK);
        assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &n.b), CCTX_OK);
        assert_int_equal(set_tracked(n.b, 1, 1), CCTX_OK);
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, nest_thread, &n), 0);
        spin_until(&n.ready);
        cctx_local_release(n.b); /* the holder keeps b alive */
        assert_int_equal(atomic_load(&group_live[1]), 2);
        if (via_exit) {
            /* The thread's exit drops the holder, whose release drops b's
             * last reference: b's walk runs on the exiting thread. */
            atomic_store(&n.go, 1);
            assert_int_equal(pthread_join(th, NULL), 0);
            assert_int_equal(atomic_load(&group_live[1]), 0);
            cctx_local_release(n.a);
        } else {
            /* a's walk releases the holder, which releases b: a nested
             * walk on this thread, inside the first one. */
            cctx_local_release(n.a);
            assert_int_equal(atomic_load(&group_live[1]), 0);
            atomic_store(&n.go, 1);
            assert_int_equal(pthread_join(th, NULL), 0);
        }
        assert_int_equal(atomic_load(&holders_live), 0);
    }
}

/* ---------------------------------------------------- fault injection */

/* Calls `op` with the n-th allocation failing, n = 1, 2, ... until it
 * succeeds; after every CCTX_ENOMEM `unchanged` must hold and no runtime
 * allocation may be left behind. Returns how many failures were seen.
 *
 * With `stateless`, the calling thread starts each attempt without a
 * thread state; a failed attempt may leave the (empty) state it created,
 * which is not an observable change, so it is cleaned up before counting. */
static int with_each_allocation_failing(cctx_status (*op)(void *), void *arg,
                                        void (*unchanged)(void *), bool stateless)
{
    for (long n = 1;; n++) {
        if (stateless)
            assert_int_equal(cctx_thread_cleanup(), CCTX_OK);
        long live = cctx__live_allocations();
        long injected = cctx__allocation_failures();
        cctx__fail_allocation(n);
        cctx_status st = op(arg);
        cctx__fail_allocation(0);
        if (st == CCTX_OK || cctx__allocation_failures() == injected)
            return (int)(n - 1);
        assert_int_equal(st, CCTX_ENOMEM);
        unchanged(arg);
        if (stateless)
            assert_int_equal(cctx_thread_cleanup(), CCTX_OK);
        assert_int_equal(cctx__live_allocations(), live);
    }
}

struct fault_ctx {
    cctx_local *a;      /* holds value 1 in this thread throughout */
    cctx_local *target; /* the local under test */
    cctx_local *made;
    tracked *value;
    struct init_counter *counter;
};

static cctx_status op_new(void *p)
{
    struct fault_ctx *f = p;
    return cctx_local_new(&tracked_ops, NULL, NULL, &f->made);
}

static void unchanged_new(void *p)
{
    struct fault_ctx *f = p;
    assert_null(f->made);
}

static cctx_status op_set(void *p)
{
    struct fault_ctx *f = p;
    return cctx_local_set(f->target, f->value);
}

static void unchanged_set(void *p)
{
    struct fault_ctx *f = p;
    assert_int_equal(get_tag(f->target), -1);
    assert_int_equal(atomic_load(&f->value->refs), 1); /* not retained */
    if (f->a != NULL)
        assert_int_equal(get_tag(f->a), 1);
}

static cctx_status op_get_init(void *p)
{
    struct fault_ctx *f = p;
    void *v;
    return cctx_local_get(f->target, &v);
}

static void unchanged_get_init(void *p)
{
    struct fault_ctx *f = p;
    assert_int_equal(atomic_load(&f->counter->calls), 0);
    assert_int_equal(atomic_load(&tracked_live), f->a != NULL ? 1 : 0);
}

static cctx_status op_delete_first(void *p)
{
    struct fault_ctx *f = p;
    cctx_status st = cctx_local_delete(f->target);
    return st == CCTX_NOT_FOUND ? CCTX_OK : st;
}

static void test_local_out_of_memory_changes_nothing(void **state)
{
    (void)state;
    struct init_counter c = {.group = 0};
    struct fault_ctx f = {.counter = &c};

    /* new: the local and the first index table. */
    assert_true(with_each_allocation_failing(op_new, &f, unchanged_new, false) >= 2);
    cctx_local_release(f.made);

    /* set in a thread without state: state, table, directory, chunk. */
    assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &f.target), CCTX_OK);
    f.value = tracked_new(0, 2);
    assert_true(with_each_allocation_failing(op_set, &f, unchanged_set, true) >= 4);
    assert_int_equal(get_tag(f.target), 2);
    cctx_local_release(f.target);

    /* set that needs a new chunk and a bigger directory, next to a value
     * that must stay. */
    assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &f.a), CCTX_OK);
    assert_int_equal(set_tracked(f.a, 0, 1), CCTX_OK);
    cctx_local *filler[64 * 5];
    for (int i = 0; i < 64 * 5; i++)
        assert_int_equal(cctx_local_new(NULL, NULL, NULL, &filler[i]), CCTX_OK);
    assert_int_equal(cctx_local_new(&tracked_ops, NULL, NULL, &f.target), CCTX_OK);
    assert_int_equal(atomic_load(&f.value->refs), 1);
    assert_true(with_each_allocation_failing(op_set, &f, unchanged_set, false) >= 2);
    assert_int_equal(get_tag(f.target), 2);
    assert_int_equal(get_tag(f.a), 1);
    /* A set into an existing slot allocates nothing. */
    assert_int_equal(with_each_allocation_failing(op_set, &f, unchanged_set, false), 0);
    cctx_local_release(f.target);
    tracked_release(f.value);
    for (int i = 0; i < 64 * 5; i++)
        cctx_local_release(filler[i]);

    /* get that runs the initialiser, in a thread without state: out of
     * memory comes before the initialiser, which never runs then. */
    cctx_local_release(f.a);
    f.a = NULL;
    assert_int_equal(cctx_thread_cleanup(), CCTX_OK);
    assert_int_equal(cctx_local_new(&tracked_ops, counting_init, &c, &f.target), CCTX_OK);
    assert_true(with_each_allocation_failing(op_get_init, &f, unchanged_get_init, true) >= 4);
    assert_int_equal(atomic_load(&c.calls), 1);
    assert_int_equal(get_tag(f.target), 1000000);
    cctx_local_release(f.target);

    /* delete before any get settles nothing, so it needs no memory. */
    atomic_store(&c.calls, 0);
    assert_int_equal(cctx_thread_cleanup(), CCTX_OK);
    assert_int_equal(cctx_local_new(&tracked_ops, counting_init, &c, &f.target), CCTX_OK);
    assert_int_equal(with_each_allocation_failing(op_delete_first, &f, unchanged_get_init, true), 0);
    assert_int_equal(atomic_load(&c.calls), 0);
    assert_int_equal(get_tag(f.target), 1000000);
    cctx_local_release(f.target);
}

/* ------------------------------------------- final release inside a read */

/* A read on a thread without state goes through reclaim.c's shared
 * fallback record; here the variable's retain callback, which runs inside
 * that read, drops the last reference to a local, whose final release
 * walks the registry in a section on the same fallback record — nested on
 * one thread. Run in a child: a lock taken twice hangs it. */
static cctx_local *nested_local;
static long nested_releases;

static void nested_retain(void *v)
{
    (void)v;
    cctx_local *l = nested_local;
    nested_local = NULL;
    if (l != NULL)
        cctx_local_release(l); /* the last reference */
}
static void nested_release(void *v) { (void)v; } /* also a no-op retain */
static void nested_value_release(void *v)
{
    (void)v;
    __atomic_add_fetch(&nested_releases, 1, __ATOMIC_SEQ_CST);
}

struct nested_read {
    cctx_context *ctx;
    cctx_var *var;
};

static void *stateless_read(void *p)
{
    struct nested_read *r = p;
    void *v = NULL;
    /* The first allocation on this thread is its state: it fails, so the
     * read uses the fallback record. */
    cctx__fail_allocation(1);
    cctx_status st = cctx_context_lookup(r->ctx, r->var, &v);
    cctx__fail_allocation(0);
    T_CHECK(st == CCTX_OK && v == (void *)(intptr_t)8);
    T_CHECK(nested_local == NULL);
    return NULL;
}

static void scenario_final_release_inside_a_fallback_read(void *arg)
{
    (void)arg;
    static const cctx_value_ops var_ops = { nested_retain, nested_release };
    static const cctx_value_ops local_ops = { nested_release, nested_value_release };
    struct nested_read r;
    T_CHECK(cctx_var_new("nested", &var_ops, &r.var) == CCTX_OK);
    T_CHECK(cctx_context_new(&r.ctx) == CCTX_OK);
    T_CHECK(cctx_context_set(r.ctx, r.var, (void *)(intptr_t)8, NULL) == CCTX_OK);
    T_CHECK(cctx_local_new(&local_ops, NULL, NULL, &nested_local) == CCTX_OK);
    T_CHECK(cctx_local_set(nested_local, (void *)(intptr_t)9) == CCTX_OK);
    pthread_t t;
    T_CHECK(pthread_create(&t, NULL, stateless_read, &r) == 0);
    pthread_join(t, NULL);
    /* The walk inside the read took this thread's value out; its release
     * ran after the walk. */
    T_CHECK(__atomic_load_n(&nested_releases, __ATOMIC_SEQ_CST) == 1);
    cctx_context_release(r.ctx);
    cctx_var_release(r.var);
}

static void test_local_final_release_inside_a_read_on_the_fallback_record(void **state)
{
    (void)state;
    assert_child_ok(scenario_final_release_inside_a_fallback_read, NULL);
}

/* ------------------------------------------- initialiser that cleans up */

static int cleanup_init_calls;

/* A local's initialiser that first drops what the thread held (an event
 * loop's per-thread init resetting the thread to a clean slate), then
 * makes its value. */
static cctx_status init_after_cleanup(void *userdata, void **out)
{
    (void)userdata;
    cleanup_init_calls++;
    T_CHECK(cctx_thread_cleanup() == CCTX_OK);
    *out = tv_new(77);
    return CCTX_OK;
}

static void scenario_initialiser_calls_cleanup(void *arg)
{
    (void)arg;
    cctx_local *other, *l;
    T_CHECK(cctx_local_new(&tv_ops, NULL, NULL, &other) == CCTX_OK);
    T_CHECK(cctx_local_new(&tv_ops, init_after_cleanup, NULL, &l) == CCTX_OK);
    long live = tv_live();
    tv_value *o = tv_new(1);
    T_CHECK(cctx_local_set(other, o) == CCTX_OK); /* the thread has a table */
    tv_drop(o);
    void *v = NULL, *again = NULL;
    T_CHECK(cctx_local_get(l, &v) == CCTX_OK);
    T_CHECK(v != NULL && ((tv_value *)v)->id == 77);
    /* Stored in the thread's state as it is after the cleanup. */
    T_CHECK(cctx_local_peek(l, &again) == CCTX_OK);
    T_CHECK(again == v);
    T_CHECK(cctx_local_get(l, &again) == CCTX_OK);
    T_CHECK(again == v);
    T_CHECK(cleanup_init_calls == 1);
    T_CHECK(cctx_local_peek(other, &again) == CCTX_NOT_FOUND); /* cleaned up */
    T_CHECK(tv_live() == live + 1);
    T_CHECK(cctx_thread_cleanup() == CCTX_OK);
    T_CHECK(tv_live() == live);
    cctx_local_release(l);
    cctx_local_release(other);
}

/* Before the fix the get stored the value into the slot table the cleanup
 * had freed (valgrind: invalid reads and writes in local_slot_store): the
 * value was lost — the next get ran the initialiser again — and never
 * released. In a child: a write into freed memory may crash. */
static void test_local_initialiser_may_clean_up_its_thread(void **state)
{
    (void)state;
    assert_child_ok(scenario_initialiser_calls_cleanup, NULL);
}

/* ------------------------------------------------------------------ main */

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_local_rejects_null_and_foreign_handles),
        T(test_local_get_set_delete_in_one_thread),
        T(test_local_initialiser_error_is_returned_and_retried),
        T(test_local_delete_runs_the_initialiser_again),
        T(test_local_set_before_get_skips_the_initialiser_here),
        T(test_local_reused_slot_never_shows_a_stale_value),
        T(test_local_values_are_isolated_per_thread),
        T(test_local_initialiser_runs_once_per_thread),
        T(test_local_set_before_get_skips_the_initialiser_delete_does_not),
        T(test_local_thread_exit_releases_its_values),
        T(test_local_release_reaches_every_busy_thread_once),
        T(test_local_churn_of_short_lived_threads_leaks_nothing),
        T(test_local_ten_thousand_in_one_thread),
        T(test_local_ten_thousand_across_four_threads),
        T(test_local_reused_slot_across_threads_never_shows_a_stale_value),
        T(test_local_release_callback_may_release_another_local),
        T(test_local_out_of_memory_changes_nothing),
        T(test_local_final_release_inside_a_read_on_the_fallback_record),
        T(test_local_initialiser_may_clean_up_its_thread),
#undef T
    };
    return cmocka_run_group_tests_name("threading.local", tests, NULL, NULL);
}
