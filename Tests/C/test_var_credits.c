/*
 * test_var_credits.c — variable credits (var.c, "Variable credits"):
 * a thread keeps a batch of references to a variable on its own cache
 * line and takes map entries' and tokens' references from it, so that the
 * request pattern (copy a shared base, set a variable it does not bind,
 * let go) writes nothing of that variable. Credits are references nobody
 * uses, so they must never be what keeps a variable alive:
 *
 *   - a second request on a thread takes no counted reference (the count
 *     shows it: the mechanism exists);
 *   - the last user reference's release frees the variable (its default
 *     released, by a callback that uses the library) at that moment while
 *     other threads, alive and idle, hold credits for it;
 *   - a context that still binds it keeps it, and no credits are taken
 *     for it any more: the context's release frees it; a user reference
 *     taken again from an iterator makes credits possible again, and its
 *     release takes them back;
 *   - an install that loses to that release gives its batch back;
 *   - a thread's exit gives its credits back;
 *   - a fork child's last release takes back the credits of threads that
 *     did not survive the fork;
 *   - stress: threads that live across rounds run requests with a new
 *     variable each round and release their user references in random
 *     order; every default is released exactly once, at its round's end.
 */
#include "test_support.h"

#include "internal.h"

#include "var.h"

#include <string.h>

enum { NVARS = 20 };
static cctx_var *vars[NVARS];
/* The variable the values' release hook reads and sets, and its run count. */
static tv_reentry reentry;

static long runs(void)
{
    return __atomic_load_n(&reentry.runs, __ATOMIC_SEQ_CST);
}

static cctx_context *base;

static int setup(void **state)
{
    int r = nothing_left_setup(state);
    for (int i = 0; i < NVARS; i++)
        assert_ok(cctx_var_new("base", &tv_ops, &vars[i]));
    assert_ok(cctx_var_new("probe", &tv_ops, &reentry.probe));
    assert_ok(cctx_context_new(&base));
    for (int i = 0; i < NVARS; i++) {
        tv_value *v = tv_new(i + 1);
        assert_ok(cctx_context_set(base, vars[i], v, NULL));
        tv_drop(v);
    }
    reentry.runs = 0;
    return r;
}

static int teardown(void **state)
{
    cctx_context_release(base);
    for (int i = 0; i < NVARS; i++)
        cctx_var_release(vars[i]);
    cctx_var_release(reentry.probe);
    assert_int_equal(thread_failures(), 0);
    return nothing_left_teardown(state);
}

/* A variable whose default is a value with the library-using hook: its
 * release (when the variable is freed) counts in reentry.runs. */
static cctx_var *var_with_hooked_default(long id)
{
    tv_value *d = tv_new_hooked(id, tv_hook_uses_library, &reentry);
    cctx_var *v = NULL;
    assert_ok(cctx_var_new_with_default("credited", &tv_ops, d, &v));
    tv_drop(d);
    return v;
}

static unsigned count_of(const cctx_var *v)
{
    return __atomic_load_n(&((const cctx_var *)v)->refcnt, __ATOMIC_SEQ_CST);
}

/* The request pattern, `n` times, on the calling thread, with `v` as the
 * variable the base does not bind. */
static void requests(cctx_var *v, int n)
{
    for (int i = 0; i < n; i++) {
        cctx_context *c = NULL;
        T_CHECK(cctx_context_copy(base, &c) == CCTX_OK);
        T_CHECK(cctx_context_enter(c) == CCTX_OK);
        tv_value *a = tv_new(-1), *b = tv_new(-2);
        T_CHECK(cctx_var_set(v, a, NULL) == CCTX_OK);
        T_CHECK(cctx_var_set(vars[i % NVARS], b, NULL) == CCTX_OK);
        tv_drop(a);
        tv_drop(b);
        void *out = NULL;
        T_CHECK(cctx_var_get(v, &out) == CCTX_OK && ((tv_value *)out)->id == -1);
        T_CHECK(cctx_context_exit(c) == CCTX_OK);
        cctx_context_release(c);
    }
}

/* ----------------------------------------------------------- the count */

static void test_a_second_request_takes_no_counted_reference(void **state)
{
    (void)state;
    cctx_var *v = var_with_hooked_default(900);
    requests(v, 3);
    const unsigned count = count_of(v), credits = cctx__var_credits(v);
    assert_true(credits > 0);
    cctx_context *c = NULL;
    assert_ok(cctx_context_copy(base, &c));
    assert_ok(cctx_context_enter(c));
    tv_value *a = tv_new(-1);
    assert_ok(cctx_var_set(v, a, NULL)); /* a new entry naming v */
    tv_drop(a);
    assert_int_equal(count_of(v), count);           /* nothing of v written */
    assert_int_equal(cctx__var_credits(v), credits - 1); /* a credit taken */
    assert_ok(cctx_context_exit(c));
    cctx_context_release(c);
    assert_int_equal(count_of(v), count);
    assert_int_equal(cctx__var_credits(v), credits); /* given back */
    /* Tokens take theirs from the credits too. */
    cctx_token *t = NULL;
    a = tv_new(-3);
    assert_ok(cctx_var_set(v, a, &t)); /* an entry and the token */
    tv_drop(a);
    assert_int_equal(count_of(v), count);
    assert_int_equal(cctx__var_credits(v), credits - 2);
    assert_ok(cctx_var_reset(v, t));
    cctx_token_release(t);
    assert_int_equal(count_of(v), count);
    assert_int_equal(cctx__var_credits(v), credits);
    const long before = runs();
    cctx_var_release(v);
    assert_int_equal(runs(), before + 1);
}

/* ------------------------------------------------------ idle holders */

/* A thread that runs requests with `v`, then waits (holding whatever
 * credits it took) until `done` opens, then exits. */
struct idle_holder {
    cctx_var *v;
    test_gate ready, done;
};

static void *idle_holder_main(void *p)
{
    struct idle_holder *h = p;
    requests(h->v, 50);
    gate_open(&h->ready);
    T_CHECK(gate_wait(&h->done));
    return NULL;
}

enum { HOLDERS = 3 };

static void holders_start(struct idle_holder *h, pthread_t *t, cctx_var *v)
{
    for (int i = 0; i < HOLDERS; i++)
        h[i] = (struct idle_holder){ .v = v, .ready = TEST_GATE_INIT, .done = TEST_GATE_INIT };
    threads_start(t, HOLDERS, idle_holder_main, h, sizeof h[0]);
    for (int i = 0; i < HOLDERS; i++)
        assert_true(gate_wait(&h[i].ready));
}

static void holders_stop(struct idle_holder *h, pthread_t *t)
{
    for (int i = 0; i < HOLDERS; i++)
        gate_open(&h[i].done);
    threads_join(t, HOLDERS);
}

static void test_the_last_user_release_frees_while_others_hold_credits(void **state)
{
    (void)state;
    cctx_var *v = var_with_hooked_default(901);
    requests(v, 10);
    struct idle_holder h[HOLDERS];
    pthread_t t[HOLDERS];
    holders_start(h, t, v);
    /* This thread's credits and each holder's. */
    assert_true(cctx__var_credits(v) >= 4 * 2);
    const long before = runs(), live = tv_live();
    cctx_var_release(v); /* the only user reference */
    assert_int_equal(runs(), before + 1); /* freed now: the default went */
    assert_int_equal(tv_live(), live - 1);
    holders_stop(h, t);
    assert_int_equal(runs(), before + 1);
}

static void test_a_context_binding_the_variable_keeps_it_without_credits(void **state)
{
    (void)state;
    cctx_var *v = var_with_hooked_default(902);
    requests(v, 10);
    struct idle_holder h[HOLDERS];
    pthread_t t[HOLDERS];
    holders_start(h, t, v);
    cctx_context *keep = NULL;
    assert_ok(cctx_context_copy(base, &keep));
    tv_value *a = tv_new(-5);
    assert_ok(cctx_context_set(keep, v, a, NULL));
    tv_drop(a);
    const long before = runs();
    cctx_var_release(v);
    assert_int_equal(runs(), before); /* `keep` binds it */
    assert_int_equal(cctx__var_credits(v), 0); /* every line's taken back */
    assert_int_equal(count_of(v), 1);          /* the entry alone */
    /* Requests on copies of `keep` (which name v) take no credits now. */
    for (int i = 0; i < 40; i++) {
        cctx_context *c = NULL;
        assert_ok(cctx_context_copy(keep, &c));
        tv_value *b = tv_new(-6);
        assert_ok(cctx_context_set(c, vars[i % NVARS], b, NULL));
        assert_ok(cctx_context_set(c, v, b, NULL));
        tv_drop(b);
        cctx_context_release(c);
    }
    assert_int_equal(cctx__var_credits(v), 0);
    assert_int_equal(count_of(v), 1);
    holders_stop(h, t);
    assert_int_equal(runs(), before);
    cctx_context_release(keep); /* this thread alive: freed now */
    assert_int_equal(runs(), before + 1);
}

/* A user reference taken again from an iterator's borrowed variable after
 * the last one went (the Swift facade's context iteration does this):
 * credits are possible again, and the next last release takes them back. */
static void test_a_user_reference_taken_again_from_an_iterator(void **state)
{
    (void)state;
    cctx_var *v = var_with_hooked_default(907);
    cctx_context *keep = NULL;
    assert_ok(cctx_context_new(&keep));
    tv_value *a = tv_new(-7);
    assert_ok(cctx_context_set(keep, v, a, NULL));
    tv_drop(a);
    const long before = runs();
    cctx_var_release(v);
    assert_int_equal(runs(), before);
    cctx_iter *it = NULL;
    assert_ok(cctx_iter_new(keep, &it));
    cctx_var *again = NULL;
    void *value = NULL;
    assert_true(cctx_iter_next(it, &again, &value));
    assert_ptr_equal(again, v);
    assert_ptr_equal(cctx_var_retain(again), v);
    cctx_iter_free(it);
    requests(v, 10);
    assert_true(cctx__var_credits(v) > 0);
    cctx_var_release(v);
    assert_int_equal(cctx__var_credits(v), 0);
    assert_int_equal(count_of(v), 1); /* keep's entry */
    assert_int_equal(runs(), before);
    cctx_context_release(keep);
    assert_int_equal(runs(), before + 1);
}

static void *requests_then_exit(void *p)
{
    requests(p, 50);
    return NULL;
}

static void test_thread_exit_gives_variable_credits_back(void **state)
{
    (void)state;
    cctx_var *v = var_with_hooked_default(903);
    for (int round = 0; round < 3; round++) {
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, requests_then_exit, v), 0);
        pthread_join(t, NULL);
        assert_int_equal(cctx__var_credits(v), 0);
        assert_int_equal(count_of(v), 1); /* our user reference alone */
    }
    const long before = runs();
    cctx_var_release(v);
    assert_int_equal(runs(), before + 1);
}

/* --------------------------------------------- install against release */

/* Thread A installs credits for v (its second counted reference to v in a
 * row) and is held by testing.h's hook after it counted the batch on v,
 * before it puts the batch into its line; meanwhile the last user
 * reference goes, whose scan finds A's way empty. A must see the users
 * gone and give the batch back, so that releasing A's contexts (A alive
 * and idle) frees v. */
struct racing_install {
    cctx_var *v;
    test_gate in_hook, go, installed, release, released, exit;
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
    cctx_context *c1 = NULL, *c2 = NULL;
    T_CHECK(cctx_context_copy(base, &c1) == CCTX_OK);
    T_CHECK(cctx_context_copy(base, &c2) == CCTX_OK);
    tv_value *a = tv_new(-1);
    T_CHECK(cctx_context_set(c1, ri->v, a, NULL) == CCTX_OK); /* counted */
    ri_armed = true;
    T_CHECK(cctx_context_set(c2, ri->v, a, NULL) == CCTX_OK); /* installs */
    tv_drop(a);
    T_CHECK(!ri_armed); /* the hook ran */
    gate_open(&ri->installed);
    T_CHECK(gate_wait(&ri->release));
    cctx_context_release(c1);
    cctx_context_release(c2);
    gate_open(&ri->released);
    T_CHECK(gate_wait(&ri->exit));
    return NULL;
}

static void test_an_install_that_lost_to_the_last_release_gives_the_batch_back(void **state)
{
    (void)state;
    struct racing_install r = { .v = var_with_hooked_default(904), .in_hook = TEST_GATE_INIT,
                                .go = TEST_GATE_INIT, .installed = TEST_GATE_INIT,
                                .release = TEST_GATE_INIT, .released = TEST_GATE_INIT,
                                .exit = TEST_GATE_INIT };
    ri = &r;
    __atomic_store_n(&cctx__var_credit_install_hook, ri_hook, __ATOMIC_RELEASE);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, racing_install_main, NULL), 0);
    assert_true(gate_wait(&r.in_hook));
    const long before = runs();
    cctx_var_release(r.v); /* users gone; A's way still empty */
    assert_int_equal(runs(), before); /* A's contexts bind it */
    gate_open(&r.go);
    assert_true(gate_wait(&r.installed));
    __atomic_store_n(&cctx__var_credit_install_hook, NULL, __ATOMIC_RELEASE);
    assert_int_equal(cctx__var_credits(r.v), 0); /* A took its batch back */
    gate_open(&r.release);
    assert_true(gate_wait(&r.released));
    assert_int_equal(runs(), before + 1); /* A alive and idle: freed */
    gate_open(&r.exit);
    pthread_join(t, NULL);
}

/* ------------------------------------------------------------- fork */

static cctx_var *fork_var;

static void fork_child_releases(void *arg)
{
    (void)arg;
    T_CHECK(cctx__var_credits(fork_var) >= 2 * HOLDERS);
    const long before = runs();
    /* The holders did not survive the fork; their lines still hold
     * credits. The last user release takes them back: freed now. */
    cctx_var_release(fork_var);
    T_CHECK(runs() == before + 1);
    /* The child goes on using the library: a new variable, requests. */
    cctx_var *w = var_with_hooked_default(906);
    requests(w, 5);
    cctx_var_release(w);
    T_CHECK(runs() == before + 2);
}

static void test_fork_child_takes_back_credits_of_threads_that_did_not_survive(void **state)
{
    (void)state;
    fork_var = var_with_hooked_default(905);
    struct idle_holder h[HOLDERS];
    pthread_t t[HOLDERS];
    holders_start(h, t, fork_var);
    assert_true(run_in_fork_child(fork_child_releases, NULL));
    holders_stop(h, t);
    assert_int_equal(cctx__var_credits(fork_var), 0); /* exits gave them back */
    const long before = runs();
    cctx_var_release(fork_var);
    assert_int_equal(runs(), before + 1);
}

/* ------------------------------------------------------------- stress */

enum { STRESS_THREADS = 4 };

struct stress {
    pthread_barrier_t round_start, round_end;
    cctx_var *v;        /* this round's variable */
    long rounds;
    uint64_t seed;
};

static struct stress st;

/* One round on a worker: the user reference it was given for the round,
 * requests with the variable, some contexts kept and released later in
 * the round, its user reference released at a random point (after which
 * it only uses contexts that bind the variable). */
static void *stress_worker(void *p)
{
    uint64_t rng = 0x9E3779B97F4A7C15ull * ((uint64_t)(uintptr_t)p + 1);
    for (long r = 0; r < st.rounds; r++) {
        pthread_barrier_wait(&st.round_start);
        cctx_var *v = st.v; /* a user reference of ours (retained for us) */
        cctx_context *kept[3] = { 0 };
        int n = 20 + (int)(rng_next(&rng) % 60);
        int release_at = (int)(rng_next(&rng) % (uint64_t)n);
        bool mine = true;
        for (int i = 0; i < n; i++) {
            if (i == release_at) {
                cctx_var_release(v);
                mine = false;
            }
            if (mine) {
                requests(v, 1);
                unsigned k = (unsigned)(rng_next(&rng) % 3);
                if (kept[k] == NULL && rng_next(&rng) % 4 == 0) {
                    T_CHECK(cctx_context_copy(base, &kept[k]) == CCTX_OK);
                    tv_value *a = tv_new(-9);
                    T_CHECK(cctx_context_set(kept[k], v, a, NULL) == CCTX_OK);
                    tv_drop(a);
                }
            } else {
                /* Copies of a kept context: path copies retain v. */
                for (unsigned k = 0; k < 3; k++) {
                    if (kept[k] == NULL)
                        continue;
                    cctx_context *c = NULL;
                    T_CHECK(cctx_context_copy(kept[k], &c) == CCTX_OK);
                    tv_value *a = tv_new(-10);
                    T_CHECK(cctx_context_set(c, vars[i % NVARS], a, NULL) == CCTX_OK);
                    tv_drop(a);
                    cctx_context_release(c);
                    if (rng_next(&rng) % 4 == 0) {
                        cctx_context_release(kept[k]);
                        kept[k] = NULL;
                    }
                }
            }
            if (i % 16 == 0)
                sched_yield();
        }
        if (mine)
            cctx_var_release(v);
        for (unsigned k = 0; k < 3; k++)
            cctx_context_release(kept[k]);
        pthread_barrier_wait(&st.round_end);
    }
    return NULL;
}

static void test_threads_release_a_credited_variable_in_random_order(void **state)
{
    (void)state;
    st.rounds = scaled(500);
    pthread_barrier_init(&st.round_start, NULL, STRESS_THREADS + 1);
    pthread_barrier_init(&st.round_end, NULL, STRESS_THREADS + 1);
    pthread_t t[STRESS_THREADS];
    threads_start(t, STRESS_THREADS, stress_worker, NULL, 0);
    const long live = tv_live();
    for (long r = 0; r < st.rounds; r++) {
        const long before = runs();
        st.v = var_with_hooked_default(1000 + r);
        for (int i = 1; i < STRESS_THREADS; i++)
            (void)cctx_var_retain(st.v); /* one user reference per worker */
        pthread_barrier_wait(&st.round_start);
        pthread_barrier_wait(&st.round_end);
        /* Every worker released its reference and its contexts, and is
         * idle with whatever credits it holds: the variable is gone. */
        if (runs() != before + 1)
            fail_msg("round %ld: default released %ld times", r, runs() - before);
        assert_int_equal(tv_live(), live);
    }
    threads_join(t, STRESS_THREADS);
    pthread_barrier_destroy(&st.round_start);
    pthread_barrier_destroy(&st.round_end);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_second_request_takes_no_counted_reference, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_the_last_user_release_frees_while_others_hold_credits, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_context_binding_the_variable_keeps_it_without_credits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thread_exit_gives_variable_credits_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_user_reference_taken_again_from_an_iterator,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_an_install_that_lost_to_the_last_release_gives_the_batch_back, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_fork_child_takes_back_credits_of_threads_that_did_not_survive, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_threads_release_a_credited_variable_in_random_order, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
