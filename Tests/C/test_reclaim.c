/*
 * test_reclaim.c — safe memory reclamation under the loads and process
 * events real programs have:
 * - readers that overlap without pause never stop old roots from being
 *   freed: memory held for reclamation stays under a constant however many
 *   writes there are (docs/reliability.md derives the constant);
 * - fork() while other threads are inside read sections: the child can
 *   wait for grace periods, exit threads with locals, set, copy and start
 *   threads (each child is a separate process, bounded by alarm()).
 */
#include "test_support.h"

#include "internal.h"
#include "reclaim.h"
#include "thread_state.h"

#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { READERS = 8 };

/* ------------------------------------------------------------ bounded memory */

/* What reclamation may hold on top of the live state, in allocations (see
 * docs/reliability.md, "Bounded memory"): a writer scans its retired roots
 * every 64 retirements (reclaim.h's RECLAIM_SCAN_EVERY) and keeps only
 * those a hazard names, at most 4 slots (RECLAIM_HAZARDS) per thread, 9
 * threads here: 64 + 36 = 100 retired roots, each one HAMT node (one
 * variable: the root is the whole path) and one retired record. Plus 64
 * for the root being built and counting slack: 2 * 100 + 64. */
#define RECLAIM_BOUND 264L

struct bounded {
    cctx_context *ctx;
    cctx_var *var;
    int stop;
    int started;
};

static void *bounded_reader(void *p)
{
    struct bounded *b = p;
    void *v;
    bool first = true;
    while (!__atomic_load_n(&b->stop, __ATOMIC_ACQUIRE)) {
        cctx_status st = cctx_context_lookup(b->ctx, b->var, &v);
        if (st != CCTX_OK && st != CCTX_NOT_FOUND)
            abort();
        if (first) {
            __atomic_add_fetch(&b->started, 1, __ATOMIC_SEQ_CST);
            first = false;
        }
    }
    cctx_thread_cleanup();
    return NULL;
}

static void test_memory_bounded_under_overlapping_readers(void **state)
{
    (void)state;
    struct bounded b = { 0 };
    assert_ok(cctx_var_new("bounded", NULL, &b.var));
    assert_ok(cctx_context_new(&b.ctx));
    assert_ok(cctx_context_enter(b.ctx));
    assert_ok(cctx_var_set(b.var, (void *)(intptr_t)1, NULL));

    pthread_t readers[READERS];
    for (int i = 0; i < READERS; i++)
        assert_int_equal(pthread_create(&readers[i], NULL, bounded_reader, &b), 0);
    /* The readers' own thread states are part of the baseline. */
    while (__atomic_load_n(&b.started, __ATOMIC_SEQ_CST) < READERS)
        sched_yield();

    const long writes = scaled(5000000);
    const long base = cctx__live_allocations();
    long peak = base;
    long i;
    for (i = 0; i < writes; i++) {
        assert_ok(cctx_var_set(b.var, (void *)(intptr_t)(i + 2), NULL));
        if ((i & 255) == 0) {
            long live = cctx__live_allocations();
            if (live > peak)
                peak = live;
            if (live - base > RECLAIM_BOUND)
                break; /* failed: stop before memory runs out */
        }
    }
    __atomic_store_n(&b.stop, 1, __ATOMIC_RELEASE);
    for (int r = 0; r < READERS; r++)
        pthread_join(readers[r], NULL);
    printf("writes %ld, peak above baseline %ld allocations (bound %ld)\n",
           i, peak - base, RECLAIM_BOUND);
    assert_true(peak - base <= RECLAIM_BOUND);
    assert_int_equal(i, writes);

    assert_ok(cctx_context_exit(b.ctx));
    cctx_context_release(b.ctx);
    cctx_var_release(b.var);
    cctx_reclaim();
}

/* ------------------------------------------------------------ defer */

/* The epoch half of the API (reclaim_defer/poll/barrier): readers that
 * overlap without pause in epoch sections, a writer that defers 200,000
 * objects; what one record holds never exceeds RECLAIM_PENDING_MAX (plus
 * the one being added), every object is freed exactly once, and a defer
 * from inside a section (which must not wait) still completes. */
static long deferred_freed;

static void counted_free(void *p)
{
    __atomic_add_fetch(&deferred_freed, 1, __ATOMIC_RELAXED);
    cctx_dealloc(p);
}

static int section_stop, section_started;

static void *section_reader(void *p)
{
    (void)p;
    cctx_thread_state *ts = thread_state_get();
    if (ts == NULL)
        abort();
    bool first = true;
    while (!__atomic_load_n(&section_stop, __ATOMIC_ACQUIRE)) {
        reclaim_section s;
        reclaim_section_begin(ts->record, &s);
        reclaim_section_end(&s);
        if (first) {
            __atomic_add_fetch(&section_started, 1, __ATOMIC_SEQ_CST);
            first = false;
        }
    }
    cctx_thread_cleanup();
    return NULL;
}

static void test_deferred_objects_bounded_per_thread(void **state)
{
    (void)state;
    cctx_thread_state *ts = thread_state_get();
    assert_non_null(ts);
    pthread_t r[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&r[i], NULL, section_reader, NULL), 0);
    while (__atomic_load_n(&section_started, __ATOMIC_SEQ_CST) < 4)
        sched_yield();
    const long n = scaled(200000);
    unsigned peak = 0;
    for (long i = 0; i < n; i++) {
        void *obj = cctx_alloc(16);
        assert_non_null(obj);
        reclaim_defer(ts->record, obj, counted_free);
        unsigned pending = reclaim_pending(ts->record);
        if (pending > peak)
            peak = pending;
    }
    /* Inside a section: deferring never waits (it would wait for itself). */
    reclaim_section s;
    reclaim_section_begin(ts->record, &s);
    for (unsigned i = 0; i < 2 * RECLAIM_PENDING_MAX; i++)
        reclaim_defer(ts->record, cctx_alloc(16), counted_free);
    reclaim_section_end(&s);
    __atomic_store_n(&section_stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 4; i++)
        pthread_join(r[i], NULL);
    printf("deferred %ld, peak pending %u (bound %u)\n", n, peak, RECLAIM_PENDING_MAX);
    assert_true(peak <= RECLAIM_PENDING_MAX);
    cctx_reclaim();
    assert_int_equal(reclaim_pending(ts->record), 0);
    assert_int_equal(deferred_freed, n + 2 * RECLAIM_PENDING_MAX);
    assert_ok(cctx_thread_cleanup());
}

/* ------------------------------------------------------------ fork */

struct forked {
    cctx_context *ctx;
    cctx_var *var;
    int stop;
    int started;
};

static void *fork_reader(void *p)
{
    struct forked *f = p;
    void *v;
    bool first = true;
    while (!__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE)) {
        if (cctx_context_lookup(f->ctx, f->var, &v) != CCTX_OK)
            abort();
        if (first) {
            __atomic_add_fetch(&f->started, 1, __ATOMIC_SEQ_CST);
            first = false;
        }
    }
    return NULL;
}

static cctx_local *child_local;

static void *child_thread_with_local(void *p)
{
    (void)p;
    if (cctx_local_set(child_local, (void *)(intptr_t)7) != CCTX_OK)
        _exit(10);
    return NULL; /* exits with a local value: a grace period at exit */
}

static void *child_thread_reads(void *p)
{
    cctx_var *var = p;
    void *v;
    /* Inherited from the child's main thread by cctx_thread_create. */
    if (cctx_var_get(var, &v) != CCTX_OK || v != (void *)(intptr_t)42)
        _exit(11);
    return NULL;
}

/* Everything the child does; any failure is its exit status. Under
 * ThreadSanitizer (CHILD_STARTS_THREADS 0) the child skips the two steps
 * that start threads and still waits for grace periods (cctx_reclaim),
 * writes, reads and copies — the waits are what hung before. */
static int child_main(struct forked *f)
{
    /* Generous bound: a child that hangs dies of SIGALRM. */
    alarm(60);
    if (cctx_local_new(NULL, NULL, NULL, &child_local) != CCTX_OK)
        return 2;
    pthread_t t;
    if (CHILD_STARTS_THREADS) {
        if (pthread_create(&t, NULL, child_thread_with_local, NULL) != 0)
            return 3;
        pthread_join(t, NULL);
    } else if (cctx_local_set(child_local, (void *)(intptr_t)7) != CCTX_OK) {
        return 3;
    }
    cctx_reclaim();
    void *v;
    if (cctx_context_lookup(f->ctx, f->var, &v) != CCTX_OK || v != (void *)(intptr_t)5)
        return 4;
    /* Writes to the context the dead readers were reading: the old roots
     * must be freed, not kept for readers that no longer exist. */
    for (int i = 0; i < 1000; i++)
        if (cctx_context_set(f->ctx, f->var, (void *)(intptr_t)(100 + i), NULL) != CCTX_OK)
            return 5;
    cctx_reclaim();
    if (cctx_var_set(f->var, (void *)(intptr_t)42, NULL) != CCTX_OK)
        return 6;
    cctx_context *copy;
    if (cctx_context_copy_current(&copy) != CCTX_OK)
        return 7;
    if (cctx_context_lookup(copy, f->var, &v) != CCTX_OK || v != (void *)(intptr_t)42)
        return 8;
    cctx_context_release(copy);
    if (CHILD_STARTS_THREADS) {
        if (cctx_thread_create(&t, NULL, child_thread_reads, f->var) != CCTX_OK)
            return 9;
        pthread_join(t, NULL);
    }
    cctx_local_release(child_local);
    cctx_reclaim();
    return 0;
}

static void test_fork_while_readers_in_sections(void **state)
{
    (void)state;
    struct forked f = { 0 };
    assert_ok(cctx_var_new("forked", NULL, &f.var));
    assert_ok(cctx_context_new(&f.ctx));
    assert_ok(cctx_context_set(f.ctx, f.var, (void *)(intptr_t)5, NULL));
    /* Make the parent's own state (and record) exist before forking. */
    void *v;
    (void)cctx_var_get(f.var, &v);
    assert_ok(cctx_var_set(f.var, (void *)(intptr_t)1, NULL));

    enum { FORK_READERS = 4, FORKS = 20 };
    pthread_t readers[FORK_READERS];
    for (int i = 0; i < FORK_READERS; i++)
        assert_int_equal(pthread_create(&readers[i], NULL, fork_reader, &f), 0);
    while (__atomic_load_n(&f.started, __ATOMIC_SEQ_CST) < FORK_READERS)
        sched_yield();

    int failures = 0;
    for (int i = 0; i < FORKS; i++) {
        fflush(stdout);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
            _exit(child_main(&f));
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            failures++;
            printf("fork %d: child %s %d\n", i, WIFEXITED(status) ? "exited" : "killed by signal",
                   WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        }
    }
    __atomic_store_n(&f.stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < FORK_READERS; i++)
        pthread_join(readers[i], NULL);
    assert_int_equal(failures, 0);
    cctx_context_release(f.ctx);
    cctx_var_release(f.var);
    cctx_reclaim();
}

/* ------------------------------------------------------------ shared reads */

/* Readers on other threads read one context through every guarded read
 * (lookup, contains, count, iteration, copy and equal on the copy) while
 * its writer overwrites values in place when it can and replaces the root
 * when a copy of its own shares it. The variable is a register written
 * with increasing ids, then its twin with the negated id: a reader never
 * sees the register go back (no stale read after a newer one), never a
 * released value (ASan; the counted values abort on a release too many),
 * and an iteration or a copy shows the pair of one map. */
struct sr {
    cctx_context *ctx;
    cctx_var *var, *twin;
    int stop;
    long backwards, torn, passes;
};

static void *sr_reader(void *p)
{
    struct sr *s = p;
    long last = -1;
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
        void *out = NULL;
        T_CHECK(cctx_context_lookup(s->ctx, s->var, &out) == CCTX_OK);
        long id = ((tv_value *)out)->id;
        cctx_var_release_value(s->var, out);
        if (id < last)
            __atomic_add_fetch(&s->backwards, 1, __ATOMIC_RELAXED);
        last = id;
        T_CHECK(cctx_context_contains(s->ctx, s->twin));
        T_CHECK(cctx_context_count(s->ctx) == 2);
        /* One map: the twin is -register or the one before it. */
        cctx_iter *it = NULL;
        T_CHECK(cctx_iter_new(s->ctx, &it) == CCTX_OK);
        long a = 0, b = 0;
        cctx_var *k;
        void *v;
        while (cctx_iter_next(it, &k, &v))
            (k == s->var ? &a : &b)[0] = ((tv_value *)v)->id;
        cctx_iter_free(it);
        if (b != -a && b != -(a - 1))
            __atomic_add_fetch(&s->torn, 1, __ATOMIC_RELAXED);
        if (a < last)
            __atomic_add_fetch(&s->backwards, 1, __ATOMIC_RELAXED);
        last = a;
        cctx_context *c = NULL, *cc = NULL;
        T_CHECK(cctx_context_copy(s->ctx, &c) == CCTX_OK);
        T_CHECK(cctx_context_copy(c, &cc) == CCTX_OK);
        T_CHECK(cctx_context_equal(c, cc));
        void *x = NULL, *y = NULL;
        T_CHECK(cctx_context_lookup(c, s->var, &x) == CCTX_OK);
        sched_yield();
        T_CHECK(cctx_context_lookup(c, s->twin, &y) == CCTX_OK);
        long xa = ((tv_value *)x)->id, yb = ((tv_value *)y)->id;
        if (yb != -xa && yb != -(xa - 1))
            __atomic_add_fetch(&s->torn, 1, __ATOMIC_RELAXED);
        cctx_var_release_value(s->var, x);
        cctx_var_release_value(s->twin, y);
        cctx_context_release(cc);
        cctx_context_release(c);
        __atomic_add_fetch(&s->passes, 1, __ATOMIC_RELAXED);
    }
    cctx_thread_cleanup();
    return NULL;
}

static void test_guarded_reads_under_in_place_writes_and_replacement(void **state)
{
    (void)state;
    long live = tv_live();
    struct sr s = { 0 };
    assert_ok(cctx_var_new("sr", &tv_ops, &s.var));
    assert_ok(cctx_var_new("sr-twin", &tv_ops, &s.twin));
    assert_ok(cctx_context_new(&s.ctx));
    assert_ok(cctx_context_enter(s.ctx));
    tv_value *v = tv_new(0);
    assert_ok(cctx_var_set(s.var, v, NULL));
    assert_ok(cctx_var_set(s.twin, v, NULL));
    tv_drop(v);
    pthread_t r[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&r[i], NULL, sr_reader, &s), 0);
    /* The register first, its twin second (twin = -register): a whole map
     * shows (i, -i) or (i, -(i - 1)). Every 7th round a copy of our own
     * shares the root, so the next write replaces it; else in place when
     * no reader is inside a read. */
    for (long i = 1; i <= scaled(200000) || __atomic_load_n(&s.passes, __ATOMIC_RELAXED) < 100;
         i++) {
        cctx_context *hold = NULL;
        if (i % 7 == 0)
            assert_ok(cctx_context_copy_current(&hold));
        tv_value *a = tv_new(i), *b = tv_new(-i);
        assert_ok(cctx_var_set(s.var, a, NULL));
        assert_ok(cctx_var_set(s.twin, b, NULL));
        tv_drop(a);
        tv_drop(b);
        cctx_context_release(hold);
    }
    __atomic_store_n(&s.stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 4; i++)
        pthread_join(r[i], NULL);
    assert_int_equal(thread_failures(), 0);
    assert_int_equal(s.backwards, 0);
    assert_int_equal(s.torn, 0);
    assert_ok(cctx_context_exit(s.ctx));
    cctx_context_release(s.ctx);
    cctx_var_release(s.var);
    cctx_var_release(s.twin);
    cctx_thread_cleanup();
    cctx_reclaim();
    assert_int_equal(tv_live(), live);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory_bounded_under_overlapping_readers),
        cmocka_unit_test(test_deferred_objects_bounded_per_thread),
        cmocka_unit_test(test_fork_while_readers_in_sections),
        cmocka_unit_test(test_guarded_reads_under_in_place_writes_and_replacement),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cctx_thread_cleanup();
    return failed;
}
