/*
 * test_shared_credits.c — the shared root credits (hamt.c, "Shared
 * credits"): threads that copy a context they do not write keep a batch of
 * references to its root and lend them to their copies. Credits are
 * references nobody uses, so they must never be what keeps a value alive:
 *
 *   - a value the base replaces, or all of them when the base goes, is
 *     released at that moment although other threads (alive, idle) hold
 *     credits for the old root;
 *   - credits are never installed from a copy's loaned root (nothing
 *     counted would stand behind them): the values go with the last copy;
 *   - a thread's exit gives its credits back;
 *   - stress: threads copy one base and read it while another thread
 *     enters the base and writes it in place, replaces its root and deletes;
 *     each copy keeps what it copied; release callbacks use the library;
 *     every value is released exactly once.
 */
#include "test_support.h"

#include <string.h>

enum { NVARS = 20 };
static cctx_var *vars[NVARS + 2];
/* The variable the values' release hook reads and sets, and its run count. */
static tv_reentry reentry;

static int setup(void **state)
{
    int r = nothing_left_setup(state);
    for (int i = 0; i < NVARS + 2; i++)
        assert_ok(cctx_var_new("credit", &tv_ops, &vars[i]));
    assert_ok(cctx_var_new("probe", &tv_ops, &reentry.probe));
    reentry.runs = 0;
    return r;
}

static int teardown(void **state)
{
    for (int i = 0; i < NVARS + 2; i++)
        cctx_var_release(vars[i]);
    cctx_var_release(reentry.probe);
    assert_int_equal(thread_failures(), 0);
    return nothing_left_teardown(state);
}

/* A base binding vars[0..NVARS) to hooked values with ids 1..NVARS. */
static cctx_context *base_new(void)
{
    cctx_context *base = NULL;
    assert_ok(cctx_context_new(&base));
    for (int i = 0; i < NVARS; i++) {
        tv_value *v = tv_new_hooked(i + 1, tv_hook_uses_library, &reentry);
        assert_ok(cctx_context_set(base, vars[i], v, NULL));
        tv_drop(v);
    }
    return base;
}

/* The request pattern (test support), `n` times, on the calling thread. */
static void requests(cctx_context *base, int n)
{
    requests_run(base, vars, NVARS, n, tv_new);
}

/* A thread that runs requests on `base`, then waits (holding whatever
 * credits it took) until `done` opens, then exits. */
struct idle_holder {
    cctx_context *base;
    test_gate ready, done;
};

static void *idle_holder_main(void *p)
{
    struct idle_holder *h = p;
    requests(h->base, 100);
    gate_open(&h->ready);
    T_CHECK(gate_wait(&h->done));
    return NULL;
}

static void idle_holders_start(struct idle_holder *h, pthread_t *t, int n, cctx_context *base)
{
    for (int i = 0; i < n; i++)
        h[i] = (struct idle_holder){ .base = base, .ready = TEST_GATE_INIT,
                                     .done = TEST_GATE_INIT };
    threads_start(t, n, idle_holder_main, h, sizeof h[0]);
    for (int i = 0; i < n; i++)
        assert_true(gate_wait(&h[i].ready));
}

static void idle_holders_stop(struct idle_holder *h, pthread_t *t, int n)
{
    for (int i = 0; i < n; i++)
        gate_open(&h[i].done);
    threads_join(t, n);
}

enum { HOLDERS = 3 };

static void test_value_replaced_in_the_base_goes_while_others_hold_credits(void **state)
{
    (void)state;
    cctx_context *base = base_new();
    requests(base, 50); /* this thread's credits too */
    struct idle_holder h[HOLDERS];
    pthread_t t[HOLDERS];
    idle_holders_start(h, t, HOLDERS, base);
    const long live = tv_live();
    const long runs = reentry.runs;
    /* The base's root is shared (credits): a path copy; the old root's
     * only counted reference goes, so value 4 is released now. */
    tv_value *v = tv_new(104);
    assert_ok(cctx_context_set(base, vars[3], v, NULL));
    tv_drop(v);
    assert_int_equal(tv_live(), live); /* one in, one out */
    assert_int_equal(reentry.runs, runs + 1);
    /* Once more, now that the base's root may be written in place. */
    v = tv_new(204);
    assert_ok(cctx_context_set(base, vars[3], v, NULL));
    tv_drop(v);
    assert_int_equal(tv_live(), live);
    idle_holders_stop(h, t, HOLDERS);
    cctx_context_release(base);
    assert_int_equal(tv_live(), tv_live_at_setup());
    assert_int_equal(reentry.runs, runs + NVARS);
}

static void test_values_go_with_the_base_while_others_hold_credits(void **state)
{
    (void)state;
    cctx_context *base = base_new();
    struct idle_holder h[HOLDERS];
    pthread_t t[HOLDERS];
    idle_holders_start(h, t, HOLDERS, base);
    requests(base, 50);
    const long runs = reentry.runs;
    cctx_context_release(base);
    /* Every holder is alive and idle: its credits must not keep them. */
    assert_int_equal(tv_live(), tv_live_at_setup());
    assert_int_equal(reentry.runs, runs + NVARS);
    idle_holders_stop(h, t, HOLDERS);
}

/* Thread B copies a copy that thread A made (whose root is a loan from A's
 * credits) and keeps its copy; the base and A's copy go. */
struct copy_of_copy {
    cctx_context *src, *mine;
    test_gate copied, release;
};

static void *copy_of_copy_main(void *p)
{
    struct copy_of_copy *x = p;
    T_CHECK(cctx_context_copy(x->src, &x->mine) == CCTX_OK);
    /* More copies of the same: would use credits, were any installed. */
    for (int i = 0; i < 40; i++) {
        cctx_context *c = NULL;
        T_CHECK(cctx_context_copy(x->src, &c) == CCTX_OK);
        cctx_context_release(c);
    }
    gate_open(&x->copied);
    T_CHECK(gate_wait(&x->release));
    cctx_context_release(x->mine);
    return NULL;
}

static void test_no_credits_from_a_loaned_root(void **state)
{
    (void)state;
    cctx_context *base = base_new();
    requests(base, 50);
    cctx_context *a = NULL;
    assert_ok(cctx_context_copy(base, &a)); /* a loan from our credits */
    struct copy_of_copy x = { .src = a, .copied = TEST_GATE_INIT,
                              .release = TEST_GATE_INIT };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, copy_of_copy_main, &x), 0);
    assert_true(gate_wait(&x.copied));
    const long runs = reentry.runs;
    cctx_context_release(base);
    cctx_context_release(a);
    assert_int_equal(reentry.runs, runs); /* B's copy still binds them */
    gate_open(&x.release);
    pthread_join(t, NULL);
    /* B released its copy; B's thread has exited too, but the values must
     * have gone with the copy, not with B's credits. */
    assert_int_equal(reentry.runs, runs + NVARS);
    assert_int_equal(tv_live(), tv_live_at_setup());
}

/* The copy of a copy, waiting for its release without exiting: the check
 * above could pass through B's exit; this one cannot. */
struct keep_alive {
    cctx_context *src;
    test_gate copied, release, released, done;
};

static void *keep_alive_main(void *p)
{
    struct keep_alive *k = p;
    cctx_context *mine = NULL;
    T_CHECK(cctx_context_copy(k->src, &mine) == CCTX_OK);
    for (int i = 0; i < 40; i++) {
        cctx_context *c = NULL;
        T_CHECK(cctx_context_copy(k->src, &c) == CCTX_OK);
        cctx_context_release(c);
    }
    gate_open(&k->copied);
    T_CHECK(gate_wait(&k->release));
    cctx_context_release(mine);
    gate_open(&k->released);
    T_CHECK(gate_wait(&k->done));
    return NULL;
}

static void test_values_go_with_the_last_copy_of_a_loaned_root(void **state)
{
    (void)state;
    cctx_context *base = base_new();
    requests(base, 50);
    cctx_context *a = NULL;
    assert_ok(cctx_context_copy(base, &a));
    const long runs = reentry.runs;
    /* The base goes first: now only `a`'s loan holds the root, and no
     * counted reference is left whose release would take credits back. */
    cctx_context_release(base);
    assert_int_equal(reentry.runs, runs);
    struct keep_alive k = { .src = a, .copied = TEST_GATE_INIT, .release = TEST_GATE_INIT,
                            .released = TEST_GATE_INIT, .done = TEST_GATE_INIT };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, keep_alive_main, &k), 0);
    assert_true(gate_wait(&k.copied));
    cctx_context_release(a);
    assert_int_equal(reentry.runs, runs);
    gate_open(&k.release);
    assert_true(gate_wait(&k.released));
    assert_int_equal(reentry.runs, runs + NVARS); /* B is alive and idle */
    gate_open(&k.done);
    pthread_join(t, NULL);
}

static void *requests_then_exit(void *p)
{
    requests(p, 100);
    return NULL;
}

static void test_thread_exit_gives_credits_back(void **state)
{
    (void)state;
    cctx_context *base = base_new();
    for (int round = 0; round < 4; round++) {
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, requests_then_exit, base), 0);
        pthread_join(t, NULL);
    }
    const long runs = reentry.runs;
    cctx_context_release(base);
    assert_int_equal(tv_live(), tv_live_at_setup());
    assert_int_equal(reentry.runs, runs + NVARS);
    /* The teardown checks that every allocation went too. */
}

/* The install-vs-revoke race (hamt.c, "Shared credits"): thread A's copy
 * takes a batch of credits under its read guard and is held (testing.h's
 * hook) before it puts them into its slot; meanwhile the base replaces the
 * root, whose counted release revokes credits — A's slot is still empty.
 * A's install must notice the revoke and give the batch back: once A
 * releases its copy (A alive and idle), the replaced value is gone. An
 * install that kept the batch would keep that value until A's slot is
 * next emptied. */
struct racing_install {
    cctx_context *base;
    test_gate in_hook, go, copied, release, released, exit;
    long id_seen;
};

static struct racing_install *ri;
static __thread bool ri_armed;

static void ri_hook(void)
{
    if (!ri_armed)
        return;
    ri_armed = false;
    gate_open(&ri->in_hook);
    T_CHECK(gate_wait(&ri->go));
}

static void *racing_install_main(void *p)
{
    (void)p;
    cctx_context *c = NULL;
    ri_armed = true;
    T_CHECK(cctx_context_copy(ri->base, &c) == CCTX_OK);
    T_CHECK(!ri_armed); /* the hook ran: credits were taken */
    void *out = NULL;
    if (cctx_context_lookup(c, vars[0], &out) == CCTX_OK) {
        ri->id_seen = ((tv_value *)out)->id;
        cctx_var_release_value(vars[0], out);
    }
    gate_open(&ri->copied);
    T_CHECK(gate_wait(&ri->release));
    cctx_context_release(c);
    gate_open(&ri->released);
    T_CHECK(gate_wait(&ri->exit));
    return NULL;
}

static bool replaced_gone;

static void mark_gone(tv_value *v, void *arg)
{
    (void)v;
    (void)arg;
    __atomic_store_n(&replaced_gone, true, __ATOMIC_RELEASE);
}

static void test_an_install_that_lost_to_a_revoke_gives_the_credits_back(void **state)
{
    (void)state;
    cctx_context *base = base_new();
    tv_value *old = tv_new_hooked(500, mark_gone, NULL);
    assert_ok(cctx_context_set(base, vars[0], old, NULL));
    tv_drop(old);
    replaced_gone = false;
    struct racing_install r = { .base = base, .in_hook = TEST_GATE_INIT, .go = TEST_GATE_INIT,
                                .copied = TEST_GATE_INIT, .release = TEST_GATE_INIT,
                                .released = TEST_GATE_INIT, .exit = TEST_GATE_INIT };
    ri = &r;
    __atomic_store_n(&cctx__credit_install_hook, ri_hook, __ATOMIC_RELEASE);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, racing_install_main, NULL), 0);
    assert_true(gate_wait(&r.in_hook));
    tv_value *v = tv_new(501);
    assert_ok(cctx_context_set(base, vars[0], v, NULL)); /* revokes: A's slot empty */
    tv_drop(v);
    assert_false(__atomic_load_n(&replaced_gone, __ATOMIC_ACQUIRE)); /* A's copy has it */
    gate_open(&r.go);
    assert_true(gate_wait(&r.copied));
    __atomic_store_n(&cctx__credit_install_hook, NULL, __ATOMIC_RELEASE);
    assert_int_equal(r.id_seen, 500);
    gate_open(&r.release);
    assert_true(gate_wait(&r.released));
    /* A is alive and idle; its copy is gone, and so is every map that can
     * read value 500. */
    assert_true(__atomic_load_n(&replaced_gone, __ATOMIC_ACQUIRE));
    gate_open(&r.exit);
    pthread_join(t, NULL);
    cctx_context_release(base);
}

/* A loaned root (a copy made on a thread that holds credits) taken
 * everywhere a root can go, on that thread while the lender's slot is
 * alive: copies of it, copy_current inside it, equal, iteration, run,
 * claim, copy_with / new_with, a write and a token reset back to the loaned
 * root, an in-place overwrite once the base is gone; then the base and
 * every copy released: every value goes at once (the thread alive), and
 * each exactly once (the hooks use the library). */
static void *loan_everywhere_main(void *p)
{
    cctx_context *base = p;
    requests(base, 5); /* credits for the base's root on this thread */
    cctx_context *a = NULL, *b = NULL, *cur = NULL, *w = NULL, *n = NULL;
    T_CHECK(cctx_context_copy(base, &a) == CCTX_OK); /* a loan */
    T_CHECK(((uintptr_t)__atomic_load_n((void **)a, __ATOMIC_ACQUIRE) & 2) != 0);
    T_CHECK(cctx_context_copy(a, &b) == CCTX_OK); /* of a loan: counted */
    T_CHECK(cctx_context_equal(a, base) && cctx_context_equal(a, b));
    T_CHECK(cctx_context_count(a) == NVARS);
    cctx_iter *it = NULL;
    T_CHECK(cctx_iter_new(a, &it) == CCTX_OK);
    int seen = 0;
    while (cctx_iter_next(it, NULL, NULL))
        seen++;
    cctx_iter_free(it);
    T_CHECK(seen == NVARS);
    T_CHECK(cctx_context_enter(a) == CCTX_OK);
    T_CHECK(cctx_context_copy_current(&cur) == CCTX_OK);
    tv_value *x = tv_new(-7);
    T_CHECK(cctx_context_copy_with(NULL, vars[NVARS], x, &w) == CCTX_OK);
    cctx_token *tok = NULL;
    T_CHECK(cctx_var_set(vars[1], x, &tok) == CCTX_OK); /* path copy off the loan */
    T_CHECK(cctx_var_reset(vars[1], tok) == CCTX_OK);   /* back to the base's value */
    cctx_token_release(tok);
    void *out = NULL;
    T_CHECK(cctx_var_get(vars[1], &out) == CCTX_OK && ((tv_value *)out)->id == 2);
    T_CHECK(cctx_context_exit(a) == CCTX_OK);
    T_CHECK(cctx_context_copy_with(a, vars[NVARS + 1], x, &n) == CCTX_OK);
    cctx_context_release(n);
    T_CHECK(cctx_context_new_with(vars[NVARS], x, &n) == CCTX_OK);
    cctx_context_release(n);
    T_CHECK(cctx_context_claim(b) == CCTX_OK);
    T_CHECK(cctx_context_set(b, vars[2], x, NULL) == CCTX_OK);
    T_CHECK(cctx_context_unclaim(b) == CCTX_OK);
    tv_drop(x);
    cctx_context_release(w);
    cctx_context_release(cur);
    cctx_context_release(b);
    return a;
}

static void run_in_a(void *arg)
{
    (void)arg;
    void *out = NULL;
    T_CHECK(cctx_var_get(vars[3], &out) == CCTX_OK && ((tv_value *)out)->id == 4);
}

struct loan_thread {
    cctx_context *base, *a;
    test_gate have, base_gone, done, finished;
};

static void *loan_thread_main(void *p)
{
    struct loan_thread *l = p;
    l->a = loan_everywhere_main(l->base);
    gate_open(&l->have);
    T_CHECK(gate_wait(&l->base_gone));
    /* Only `a` (a loan) holds the root now: written in place, or path
     * copied; either way the replaced value goes now. */
    tv_value *y = tv_new(-8);
    T_CHECK(cctx_context_set(l->a, vars[4], y, NULL) == CCTX_OK);
    tv_drop(y);
    T_CHECK(cctx_context_run(l->a, run_in_a, NULL) == CCTX_OK);
    cctx_context_release(l->a);
    gate_open(&l->done);
    T_CHECK(gate_wait(&l->finished));
    return NULL;
}

static void test_a_loaned_root_everywhere_a_root_goes(void **state)
{
    (void)state;
    cctx_context *base = base_new();
    const long runs = reentry.runs;
    struct loan_thread l = { .base = base, .have = TEST_GATE_INIT, .base_gone = TEST_GATE_INIT,
                             .done = TEST_GATE_INIT, .finished = TEST_GATE_INIT };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, loan_thread_main, &l), 0);
    assert_true(gate_wait(&l.have));
    cctx_context_release(base);
    assert_int_equal(reentry.runs, runs); /* `a` still binds every value */
    gate_open(&l.base_gone);
    assert_true(gate_wait(&l.done));
    assert_int_equal(reentry.runs, runs + NVARS); /* the thread alive and idle */
    assert_int_equal(tv_live(), tv_live_at_setup());
    gate_open(&l.finished);
    pthread_join(t, NULL);
}

/* fork() while other threads (idle) hold credits for the base's root: in
 * the child those threads are gone, but their slots are still in the
 * registry, full. The child copies the base, releases it, then its copy:
 * the values must go then, the dead threads' credits taken back by the
 * revoke like anyone's. */
static cctx_context *fork_base;

static void fork_child_releases(void *arg)
{
    (void)arg;
    cctx_context *mine = NULL;
    T_CHECK(cctx_context_copy(fork_base, &mine) == CCTX_OK);
    const long runs = reentry.runs;
    cctx_context_release(fork_base);
    T_CHECK(reentry.runs == runs); /* `mine` still binds them */
    cctx_context_release(mine);
    T_CHECK(reentry.runs == runs + NVARS);
}

static void test_fork_while_threads_hold_credits(void **state)
{
    (void)state;
    fork_base = base_new();
    requests(fork_base, 50);
    struct idle_holder h[HOLDERS];
    pthread_t t[HOLDERS];
    idle_holders_start(h, t, HOLDERS, fork_base);
    assert_true(run_in_fork_child(fork_child_releases, NULL));
    idle_holders_stop(h, t, HOLDERS);
    cctx_context_release(fork_base);
}

/* ------------------------------------------------------------- stress */

enum { STRESS_COPIERS = 4 };
static cctx_context *stress_base;
static int stress_stop;
static test_gate stress_started = TEST_GATE_INIT;

/* Copies the base, reads every variable, lets the writer run, and reads
 * again: a copy never changes. Some copies are kept across iterations and
 * released later, some copied again from this thread's copies. */
static void *stress_copier(void *p)
{
    uint64_t rng = 0x2545F4914F6CDD1Dull * ((uint64_t)(uintptr_t)p + 1);
    long iters = scaled(4000);
    cctx_context *kept[4] = { 0 };
    for (long i = 0; i < iters; i++) {
        cctx_context *c = NULL;
        T_CHECK(cctx_context_copy(stress_base, &c) == CCTX_OK);
        long before[NVARS];
        for (int k = 0; k < NVARS; k++) {
            void *out = NULL;
            cctx_status st = cctx_context_get(c, vars[k], &out);
            T_CHECK(st == CCTX_OK || st == CCTX_NOT_FOUND);
            before[k] = st == CCTX_OK ? ((tv_value *)out)->id : -1;
        }
        if (i % 8 == 0)
            sched_yield();
        if (rng_next(&rng) % 2 == 0) {
            T_CHECK(cctx_context_enter(c) == CCTX_OK);
            tv_value *v = tv_new(-7);
            T_CHECK(cctx_var_set(vars[NVARS], v, NULL) == CCTX_OK);
            tv_drop(v);
            T_CHECK(cctx_context_exit(c) == CCTX_OK);
        }
        for (int k = 0; k < NVARS; k++) {
            void *out = NULL;
            cctx_status st = cctx_context_lookup(c, vars[k], &out);
            long id = st == CCTX_OK ? ((tv_value *)out)->id : -1;
            if (st == CCTX_OK)
                cctx_var_release_value(vars[k], out);
            T_CHECK(id == before[k]);
        }
        unsigned slot = (unsigned)(rng_next(&rng) % 4);
        if (rng_next(&rng) % 3 == 0) {
            /* A copy of the copy (its root may be a loan). */
            cctx_context *cc = NULL;
            if (kept[slot] != NULL) {
                T_CHECK(cctx_context_copy(kept[slot], &cc) == CCTX_OK);
                cctx_context_release(cc);
            }
            cctx_context_release(kept[slot]);
            kept[slot] = c;
        } else {
            cctx_context_release(c);
        }
    }
    for (int s = 0; s < 4; s++)
        cctx_context_release(kept[s]);
    return NULL;
}

/* Enters the base and writes it: in place when it can, replacing the root
 * when copies share it, deleting now and then; between bursts it leaves
 * the base, so the copiers see every state. */
static void *stress_writer(void *p)
{
    (void)p;
    uint64_t rng = 99;
    long id = 1000;
    gate_open(&stress_started);
    while (!__atomic_load_n(&stress_stop, __ATOMIC_ACQUIRE)) {
        T_CHECK(cctx_context_enter(stress_base) == CCTX_OK);
        for (int n = 0; n < 8; n++) {
            int k = (int)(rng_next(&rng) % NVARS);
            if (rng_next(&rng) % 8 == 0) {
                cctx_status st = cctx_context_delete(stress_base, vars[k]);
                T_CHECK(st == CCTX_OK || st == CCTX_NOT_FOUND);
            } else {
                tv_value *v = tv_new_hooked(id++, tv_hook_uses_library, &reentry);
                T_CHECK(cctx_var_set(vars[k], v, NULL) == CCTX_OK);
                tv_drop(v);
            }
        }
        T_CHECK(cctx_context_exit(stress_base) == CCTX_OK);
        sched_yield();
    }
    return NULL;
}

static void test_threads_copy_a_base_another_thread_writes(void **state)
{
    (void)state;
    stress_base = base_new();
    stress_stop = 0;
    const long retains0 = tv_retains(), releases0 = tv_releases();
    pthread_t w, t[STRESS_COPIERS];
    assert_int_equal(pthread_create(&w, NULL, stress_writer, NULL), 0);
    assert_true(gate_wait(&stress_started));
    threads_start(t, STRESS_COPIERS, stress_copier, NULL, 0);
    threads_join(t, STRESS_COPIERS);
    __atomic_store_n(&stress_stop, 1, __ATOMIC_RELEASE);
    pthread_join(w, NULL);
    assert_int_equal(thread_failures(), 0);
    assert_int_equal(cctx__context_check(stress_base), 0);
    /* Only the base's own values are left: NVARS at most. */
    assert_true(tv_live() - tv_live_at_setup() <= NVARS);
    cctx_context_release(stress_base);
    assert_int_equal(tv_live(), tv_live_at_setup());
    /* Every retain was matched by exactly one release (and the base's
     * first NVARS, retained before the count began, released once). */
    assert_int_equal(tv_retains() - retains0 + NVARS, tv_releases() - releases0);
}

/* Slot churn: 8 threads copy 12 bases at random (so each thread's one
 * slot keeps switching roots: every install first empties another root's
 * credits), keep some copies and copy those again, while a writer both
 * writes the bases (one-off writes) and replaces whole bases (the old one
 * released while copies of it live). Each copy keeps what it copied. At
 * the end the copiers stay alive and idle, slots full, while the bases go:
 * every value must be gone then, and each released exactly once. */
enum { CHURN_COPIERS = 8, CHURN_BASES = 12 };
static cctx_context *churn_bases[CHURN_BASES];
static pthread_mutex_t churn_lock = PTHREAD_MUTEX_INITIALIZER;
static int churn_stop;
static test_gate churn_idle[CHURN_COPIERS], churn_finish;

static cctx_context *churn_get(int k)
{
    pthread_mutex_lock(&churn_lock);
    cctx_context *b = cctx_context_retain(churn_bases[k]);
    pthread_mutex_unlock(&churn_lock);
    return b;
}

static void *churn_copier(void *p)
{
    int me = (int)(uintptr_t)p;
    uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)(me + 3);
    cctx_context *kept[6] = { 0 };
    for (long i = 0; i < scaled(3000); i++) {
        cctx_context *b = churn_get((int)(rng_next(&rng) % CHURN_BASES));
        cctx_context *c = NULL;
        T_CHECK(cctx_context_copy(b, &c) == CCTX_OK);
        cctx_context_release(b);
        long before[4];
        for (int k = 0; k < 4; k++) {
            void *out = NULL;
            cctx_status st = cctx_context_lookup(c, vars[k], &out);
            before[k] = st == CCTX_OK ? ((tv_value *)out)->id : -1;
            if (st == CCTX_OK)
                cctx_var_release_value(vars[k], out);
        }
        if (rng_next(&rng) % 2 == 0) {
            T_CHECK(cctx_context_enter(c) == CCTX_OK);
            tv_value *v = tv_new(-9);
            T_CHECK(cctx_var_set(vars[NVARS], v, NULL) == CCTX_OK);
            tv_drop(v);
            T_CHECK(cctx_context_exit(c) == CCTX_OK);
        }
        unsigned s = (unsigned)(rng_next(&rng) % 6);
        if (kept[s] != NULL && rng_next(&rng) % 2 == 0) {
            cctx_context *cc = NULL;
            T_CHECK(cctx_context_copy(kept[s], &cc) == CCTX_OK);
            T_CHECK(cctx_context_equal(cc, kept[s]));
            cctx_context_release(cc);
        }
        for (int k = 0; k < 4; k++) {
            void *out = NULL;
            cctx_status st = cctx_context_get(c, vars[k], &out);
            T_CHECK((st == CCTX_OK ? ((tv_value *)out)->id : -1) == before[k]);
        }
        cctx_context_release(kept[s]);
        kept[s] = c;
    }
    for (int s = 0; s < 6; s++)
        cctx_context_release(kept[s]);
    /* A root this thread replaced in a copy (a write to a copy that still
     * shared a base's root, which a reader named) waits in this thread's
     * retired list: settle it, so what is left is credits only. */
    cctx_reclaim();
    gate_open(&churn_idle[me]);
    T_CHECK(gate_wait(&churn_finish)); /* alive, credits in the slot */
    return NULL;
}

static void *churn_writer(void *p)
{
    (void)p;
    uint64_t rng = 7;
    long id = 5000;
    while (!__atomic_load_n(&churn_stop, __ATOMIC_ACQUIRE)) {
        int k = (int)(rng_next(&rng) % CHURN_BASES);
        if (rng_next(&rng) % 4 == 0) {
            cctx_context *fresh = NULL;
            T_CHECK(cctx_context_new(&fresh) == CCTX_OK);
            for (int j = 0; j < 4; j++) {
                tv_value *v = tv_new_hooked(id++, tv_hook_uses_library, &reentry);
                T_CHECK(cctx_context_set(fresh, vars[j], v, NULL) == CCTX_OK);
                tv_drop(v);
            }
            pthread_mutex_lock(&churn_lock);
            cctx_context *old = churn_bases[k];
            churn_bases[k] = fresh;
            pthread_mutex_unlock(&churn_lock);
            cctx_context_release(old);
        } else {
            cctx_context *b = churn_get(k);
            tv_value *v = tv_new_hooked(id++, tv_hook_uses_library, &reentry);
            cctx_status st = cctx_context_set(b, vars[(int)(rng_next(&rng) % 4)], v, NULL);
            T_CHECK(st == CCTX_OK);
            tv_drop(v);
            cctx_context_release(b);
        }
        sched_yield();
    }
    (void)cctx_thread_cleanup();
    return NULL;
}

static void test_many_threads_copy_many_bases_slot_churn(void **state)
{
    (void)state;
    for (int k = 0; k < CHURN_BASES; k++) {
        assert_ok(cctx_context_new(&churn_bases[k]));
        tv_value *v = tv_new_hooked(k, tv_hook_uses_library, &reentry);
        assert_ok(cctx_context_set(churn_bases[k], vars[0], v, NULL));
        tv_drop(v);
    }
    churn_stop = 0;
    test_gate closed = TEST_GATE_INIT;
    churn_finish = closed;
    const long retains0 = tv_retains(), releases0 = tv_releases();
    pthread_t w, t[CHURN_COPIERS];
    assert_int_equal(pthread_create(&w, NULL, churn_writer, NULL), 0);
    for (int i = 0; i < CHURN_COPIERS; i++)
        churn_idle[i] = closed;
    threads_start(t, CHURN_COPIERS, churn_copier, NULL, 0);
    for (int i = 0; i < CHURN_COPIERS; i++)
        assert_true(gate_wait(&churn_idle[i]));
    __atomic_store_n(&churn_stop, 1, __ATOMIC_RELEASE);
    pthread_join(w, NULL);
    assert_int_equal(thread_failures(), 0);
    for (int k = 0; k < CHURN_BASES; k++)
        cctx_context_release(churn_bases[k]);
    /* The writer's retired roots went with its cleanup. The copiers are
     * alive and idle with whatever credits they hold. */
    assert_int_equal(tv_live(), tv_live_at_setup());
    assert_int_equal(tv_retains() - retains0 + CHURN_BASES, tv_releases() - releases0);
    gate_open(&churn_finish);
    threads_join(t, CHURN_COPIERS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_value_replaced_in_the_base_goes_while_others_hold_credits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values_go_with_the_base_while_others_hold_credits,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_credits_from_a_loaned_root, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values_go_with_the_last_copy_of_a_loaned_root,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_thread_exit_gives_credits_back, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_an_install_that_lost_to_a_revoke_gives_the_credits_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_loaned_root_everywhere_a_root_goes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fork_while_threads_hold_credits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_copy_a_base_another_thread_writes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_many_threads_copy_many_bases_slot_churn, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
