/*
 * test_tokens.c — what a token owns and how it names its context: light
 * tokens (cctx_var_set_light, cctx_context_set_light) reset exactly as
 * full ones; a token's context is told from every other, also from a
 * context that reuses a freed one's address; an in-place set moves the
 * map's reference to the old value into its token instead of a retain
 * and a release.
 */
#include "test_support.h"

#include <pthread.h>
#include <sched.h>

/* A sentinel for out-parameters that a failed set must leave alone. */
static cctx_token *const untouched = (cctx_token *)(uintptr_t)0x5eed;

/* ------------------------------------------------ light tokens */

/* PEP 567 on a light token: reset restores the old value (or MISSING),
 * a second reset is CCTX_TOKEN_USED, another variable's reset
 * CCTX_TOKEN_WRONG_VAR, and nothing changes on an error. The token holds
 * no context (cctx_token_context is NULL) and names its variable. */
static void test_light_token_resets_as_a_full_one(void **state)
{
    (void)state;
    cctx_var *v, *w;
    assert_ok(cctx_var_new("light", &tv_ops, &v));
    assert_ok(cctx_var_new("other", &tv_ops, &w));
    tv_value *x = tv_new(1), *y = tv_new(2);
    cctx_context *c;
    assert_ok(cctx_context_new(&c));
    assert_ok(cctx_context_enter(c));

    /* Bad handles: CCTX_EINVAL, no token. */
    cctx_token *bad = untouched;
    assert_int_equal(cctx_var_set_light(NULL, x, &bad), CCTX_EINVAL);
    assert_int_equal(cctx_context_set_light(NULL, v, x, &bad), CCTX_EINVAL);
    assert_int_equal(cctx_context_set_light(c, NULL, x, &bad), CCTX_EINVAL);
    assert_ptr_equal(bad, untouched);

    /* MISSING first. */
    cctx_token *t0;
    assert_ok(cctx_var_set_light(v, x, &t0));
    void *out;
    assert_int_equal(cctx_token_old_value(t0, &out), CCTX_NOT_FOUND);
    assert_null(cctx_token_context(t0));
    assert_ptr_equal(cctx_token_var(t0), v);

    /* Then an old value. */
    cctx_token *t1;
    assert_ok(cctx_var_set_light(v, y, &t1));
    assert_ok(cctx_token_old_value(t1, &out));
    assert_ptr_equal(out, x);
    assert_int_equal(cctx_var_reset(w, t1), CCTX_TOKEN_WRONG_VAR);
    assert_ok(cctx_var_get(v, &out));
    assert_ptr_equal(out, y); /* unchanged */
    assert_false(cctx_token_is_used(t1));
    assert_ok(cctx_var_reset(v, t1));
    assert_true(cctx_token_is_used(t1));
    assert_ok(cctx_var_get(v, &out));
    assert_ptr_equal(out, x);
    assert_int_equal(cctx_var_reset(v, t1), CCTX_TOKEN_USED);
    assert_ok(cctx_var_get(v, &out));
    assert_ptr_equal(out, x);

    /* Through the explicit context, too. */
    cctx_token *t2;
    assert_ok(cctx_context_set_light(c, v, y, &t2));
    assert_ok(cctx_context_reset(c, v, t2));
    assert_ok(cctx_context_get(c, v, &out));
    assert_ptr_equal(out, x);

    assert_ok(cctx_var_reset(v, t0)); /* back to MISSING */
    assert_int_equal(cctx_var_get(v, &out), CCTX_NOT_FOUND);
    cctx_token_release(t0);
    cctx_token_release(t1);
    cctx_token_release(t2);
    assert_ok(cctx_context_exit(c));
    cctx_context_release(c);
    /* The tokens took back their references: only the caller's remain. */
    assert_int_equal(x->refcnt, 1);
    assert_int_equal(y->refcnt, 1);
    tv_drop(x);
    tv_drop(y);
    cctx_var_release(v);
    cctx_var_release(w);
}

/* A light token does not keep its context alive. When that context is
 * freed and a new one takes the same object (the thread's context cache
 * hands it out again), the new context is still another context: its
 * reset is CCTX_TOKEN_WRONG_CONTEXT and leaves its binding alone. A copy
 * of the token's context is another context too. */
static void test_token_of_a_freed_context_is_foreign_to_one_at_its_address(void **state)
{
    (void)state;
    cctx_var *v;
    assert_ok(cctx_var_new("reuse", &tv_ops, &v));
    tv_value *x = tv_new(1), *y = tv_new(2);
    int reused = 0;
    for (int i = 0; i < 16; i++) {
        cctx_context *a, *b, *copy;
        assert_ok(cctx_context_new(&a));
        cctx_token *t;
        assert_ok(cctx_context_set_light(a, v, x, &t));
        assert_ok(cctx_context_copy(a, &copy));
        assert_int_equal(cctx_context_reset(copy, v, t), CCTX_TOKEN_WRONG_CONTEXT);
        cctx_context_release(copy);
        cctx_context_release(a); /* the token holds no reference */
        assert_ok(cctx_context_new(&b));
        reused += b == a;
        assert_ok(cctx_context_set(b, v, y, NULL));
        assert_int_equal(cctx_context_reset(b, v, t), CCTX_TOKEN_WRONG_CONTEXT);
        assert_false(cctx_token_is_used(t));
        void *out;
        assert_ok(cctx_context_get(b, v, &out));
        assert_ptr_equal(out, y); /* unchanged */
        /* A token made in b is b's, though it has a's address. */
        cctx_token *tb;
        assert_ok(cctx_context_set_light(b, v, x, &tb));
        assert_ok(cctx_context_reset(b, v, tb));
        assert_ok(cctx_context_get(b, v, &out));
        assert_ptr_equal(out, y);
        cctx_token_release(tb);
        cctx_token_release(t);
        cctx_context_release(b);
    }
    /* The context cache hands the freed object out again: the case this
     * test is about happened. */
    assert_true(reused > 0);
    tv_drop(x);
    tv_drop(y);
    cctx_var_release(v);
}

/* A failed light set (out of memory) changes nothing: the binding stays,
 * no token is handed out, and no value keeps an extra reference. */
static void test_light_set_out_of_memory_changes_nothing(void **state)
{
    (void)state;
    cctx_var *v, *w;
    assert_ok(cctx_var_new("oom", &tv_ops, &v));
    assert_ok(cctx_var_new("oom2", &tv_ops, &w));
    tv_value *x = tv_new(1), *y = tv_new(2);
    int points = 0;
    for (long n = 1; n <= 8; n++) {
        cctx_context *c;
        assert_ok(cctx_context_new(&c));
        assert_ok(cctx_context_set(c, w, x, NULL));
        cctx_token *t = untouched;
        const long f0 = cctx__allocation_failures();
        cctx__fail_allocation(n);
        cctx_status st = cctx_context_set_light(c, v, y, &t);
        cctx__fail_allocation(0);
        void *out;
        if (st == CCTX_ENOMEM) {
            assert_true(cctx__allocation_failures() != f0);
            assert_ptr_equal(t, untouched);
            assert_int_equal(cctx_context_get(c, v, &out), CCTX_NOT_FOUND);
            assert_int_equal(y->refcnt, 1);
            points++;
        } else {
            assert_ok(st);
            assert_ok(cctx_context_reset(c, v, t));
            cctx_token_release(t);
        }
        assert_int_equal(cctx_context_get(c, v, &out), CCTX_NOT_FOUND);
        cctx_context_release(c);
    }
    assert_true(points > 0);
    tv_drop(x);
    tv_drop(y);
    cctx_var_release(v);
    cctx_var_release(w);
}

/* ------------------------------------------------ the old value's reference */

/* A set that overwrites the value in place hands the map's reference to
 * the old value to its token: one retain (the new value's) and no
 * release, where a retain for the token and a release by the write went
 * before. The old value stays alive and right through later in-place
 * writes, resets restore it, and the token's release drops the last
 * reference — whose release callback may use the library again. */
static void test_in_place_set_moves_the_old_value_into_its_token(void **state)
{
    (void)state;
    cctx_var *v, *probe;
    assert_ok(cctx_var_new("moved", &tv_ops, &v));
    assert_ok(cctx_var_new("probe", NULL, &probe));
    tv_reentry re = { probe, 0 };
    tv_value *x = tv_new_hooked(1, tv_hook_uses_library, &re);
    tv_value *y = tv_new(2), *z = tv_new(3);
    cctx_context *c;
    assert_ok(cctx_context_new(&c));
    assert_ok(cctx_context_enter(c));
    assert_ok(cctx_var_set(v, x, NULL));
    tv_drop(x); /* the map's reference is x's only one now */

    for (int light = 0; light < 2; light++) {
        long r0 = tv_retains(), d0 = tv_releases();
        cctx_token *t1;
        assert_ok(light ? cctx_var_set_light(v, y, &t1) : cctx_var_set(v, y, &t1));
        assert_int_equal(tv_retains() - r0, 1);  /* y, into the map */
        assert_int_equal(tv_releases() - d0, 0); /* x moved, not released */
        assert_int_equal(x->refcnt, 1);          /* the token's, was the map's */
        void *out;
        assert_ok(cctx_token_old_value(t1, &out));
        assert_ptr_equal(out, x);

        cctx_token *t2;
        assert_ok(light ? cctx_var_set_light(v, z, &t2) : cctx_var_set(v, z, &t2));
        assert_ok(cctx_token_old_value(t2, &out));
        assert_ptr_equal(out, y);
        assert_ok(cctx_token_old_value(t1, &out));
        assert_ptr_equal(out, x);

        assert_ok(cctx_var_reset(v, t2)); /* back to y */
        assert_ok(cctx_var_reset(v, t1)); /* back to x */
        assert_ok(cctx_var_get(v, &out));
        assert_ptr_equal(out, x);
        cctx_token_release(t2);
        cctx_token_release(t1);
        assert_int_equal(x->refcnt, 1); /* the map's again */
        assert_int_equal(y->refcnt, 1);
        assert_int_equal(z->refcnt, 1);
    }

    /* A discarded token is the last holder of the replaced value: its
     * release runs the value's hook, which uses the library. */
    cctx_token *t;
    assert_ok(cctx_var_set_light(v, y, &t));
    assert_int_equal(re.runs, 0);
    cctx_token_release(t);
    assert_int_equal(re.runs, 1);

    assert_ok(cctx_context_exit(c));
    cctx_context_release(c);
    tv_drop(y);
    tv_drop(z);
    cctx_var_release(v);
    cctx_var_release(probe);
}

/* ------------------------------------------------ in place, backed out */

/* A reader on another thread holding a peek of the context's current root
 * makes an in-place write back out (context.c's handshake) and take the
 * path-copy route, which can run out of memory. Then a reset (which had
 * already consumed its token for the in-place write) gives the token back
 * and a light set releases the token it made: CCTX_ENOMEM, and nothing
 * changed — the value, the tokens, every reference count. */
enum { PEEK_IDLE, PEEK_BEGIN, PEEK_HELD, PEEK_END, PEEK_QUIT };

struct peeker {
    cctx_context *ctx;
    cctx_var *var;
    int command; /* PEEK_*: what the main thread asks, or PEEK_HELD */
};

static void *peek_and_hold(void *p)
{
    struct peeker *pk = p;
    cctx_read_guard guard;
    for (;;) {
        int command = __atomic_load_n(&pk->command, __ATOMIC_ACQUIRE);
        if (command == PEEK_BEGIN) {
            void *out = NULL;
            T_CHECK(cctx_context_peek(pk->ctx, pk->var, cctx_var_hash(pk->var), &guard, &out) == CCTX_OK);
            __atomic_store_n(&pk->command, PEEK_HELD, __ATOMIC_RELEASE);
        } else if (command == PEEK_END) {
            cctx_context_peek_end(&guard);
            __atomic_store_n(&pk->command, PEEK_IDLE, __ATOMIC_RELEASE);
        } else if (command == PEEK_QUIT) {
            break;
        } else {
            sched_yield();
        }
    }
    cctx_thread_cleanup();
    return NULL;
}

/* Asks the peeker for `command` and waits until it has done it. */
static void peeker_do(struct peeker *pk, int command, int done)
{
    __atomic_store_n(&pk->command, command, __ATOMIC_RELEASE);
    while (__atomic_load_n(&pk->command, __ATOMIC_ACQUIRE) != done)
        sched_yield();
}

static void test_in_place_writes_backed_out_by_a_reader_change_nothing_out_of_memory(void **state)
{
    (void)state;
    cctx_var *v;
    assert_ok(cctx_var_new("backout", &tv_ops, &v));
    tv_value *x = tv_new(1), *y = tv_new(2), *z = tv_new(3);
    cctx_context *c;
    assert_ok(cctx_context_new(&c));
    cctx_token *t0, *t1;
    assert_ok(cctx_context_set_light(c, v, x, &t0)); /* MISSING */
    assert_ok(cctx_context_set_light(c, v, y, &t1)); /* old x (moved in place) */
    void *out;

    struct peeker pk = { c, v, PEEK_IDLE };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, peek_and_hold, &pk), 0);
    peeker_do(&pk, PEEK_BEGIN, PEEK_HELD);

    /* reset(t1) would overwrite y with x in place; the reader backs it
     * out. Only the first allocation fails: a write that succeeds retires
     * the old root, which waits for the reader's peek to end. An in-place
     * reset allocates nothing, so a failure proves the back-out. */
    long r0 = tv_retains(), d0 = tv_releases();
    long f0 = cctx__allocation_failures();
    cctx__fail_allocation(1);
    cctx_status st = cctx_context_reset(c, v, t1);
    cctx__fail_allocation(0);
    assert_int_equal(st, CCTX_ENOMEM);
    assert_true(cctx__allocation_failures() != f0);
    assert_false(cctx_token_is_used(t1));
    assert_ok(cctx_context_get(c, v, &out));
    assert_ptr_equal(out, y);
    assert_int_equal(tv_retains() - r0, tv_releases() - d0);
    assert_int_equal(x->refcnt, 2); /* caller's + t1's */
    assert_int_equal(y->refcnt, 2); /* caller's + the map's */
    /* A light set of the same slot, backed out the same way. */
    cctx_token *t = untouched;
    f0 = cctx__allocation_failures();
    cctx__fail_allocation(1);
    st = cctx_context_set_light(c, v, z, &t);
    cctx__fail_allocation(0);
    assert_int_equal(st, CCTX_ENOMEM);
    assert_true(cctx__allocation_failures() != f0);
    assert_ptr_equal(t, untouched);
    assert_ok(cctx_context_get(c, v, &out));
    assert_ptr_equal(out, y);
    assert_int_equal(y->refcnt, 2);
    assert_int_equal(z->refcnt, 1);
    assert_int_equal(tv_retains() - r0, tv_releases() - d0);

    /* With the reader gone the reset works; the token is used once. */
    peeker_do(&pk, PEEK_END, PEEK_IDLE);
    assert_ok(cctx_context_reset(c, v, t1));
    assert_true(cctx_token_is_used(t1));
    assert_int_equal(cctx_context_reset(c, v, t1), CCTX_TOKEN_USED);
    assert_ok(cctx_context_get(c, v, &out));
    assert_ptr_equal(out, x);
    __atomic_store_n(&pk.command, PEEK_QUIT, __ATOMIC_RELEASE);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(thread_failures(), 0);

    assert_ok(cctx_context_get(c, v, &out));
    assert_ptr_equal(out, x);
    cctx_token_release(t0);
    cctx_token_release(t1);
    cctx_context_release(c);
    assert_int_equal(x->refcnt, 1);
    assert_int_equal(y->refcnt, 1);
    assert_int_equal(z->refcnt, 1);
    tv_drop(x);
    tv_drop(y);
    tv_drop(z);
    cctx_var_release(v);
}

/* ------------------------------------------------ stress */

/* Many threads make contexts and light tokens at once, each through more
 * than one block of context serials: tokens reset in their own context,
 * and the (unused) token of the context freed just before, whose object
 * the next context usually reuses, is foreign to the next one. */
#define TOK_THREADS 8

struct serial_job {
    cctx_var *var;
    long rounds;
};

static void *serial_rounds(void *p)
{
    struct serial_job *job = p;
    cctx_token *prev = NULL;
    for (long i = 0; i < job->rounds; i++) {
        cctx_context *c;
        if (cctx_context_new(&c) != CCTX_OK) {
            T_CHECK(!"context_new");
            break;
        }
        T_CHECK(cctx_context_enter(c) == CCTX_OK);
        cctx_token *t = NULL;
        T_CHECK(cctx_var_set_light(job->var, (void *)(uintptr_t)(i + 1), &t) == CCTX_OK);
        if (prev != NULL) {
            T_CHECK(cctx_var_reset(job->var, prev) == CCTX_TOKEN_WRONG_CONTEXT);
            cctx_token_release(prev);
        }
        /* A second token of this context resets in it; the first stays
         * unused for the next round's check. */
        cctx_token *t2 = NULL;
        T_CHECK(cctx_var_set_light(job->var, (void *)(uintptr_t)(i + 2), &t2) == CCTX_OK);
        T_CHECK(cctx_var_reset(job->var, t2) == CCTX_OK);
        cctx_token_release(t2);
        void *out = NULL;
        T_CHECK(cctx_var_get(job->var, &out) == CCTX_OK && out == (void *)(uintptr_t)(i + 1));
        prev = t;
        T_CHECK(cctx_context_exit(c) == CCTX_OK);
        cctx_context_release(c);
    }
    cctx_token_release(prev);
    cctx_thread_cleanup();
    return NULL;
}

static void test_light_tokens_on_many_threads_keep_their_contexts_apart(void **state)
{
    (void)state;
    cctx_var *v;
    assert_ok(cctx_var_new("stress", NULL, &v));
    struct serial_job jobs[TOK_THREADS];
    for (int i = 0; i < TOK_THREADS; i++)
        jobs[i] = (struct serial_job){ v, scaled(5000) };
    pthread_t th[TOK_THREADS];
    threads_start(th, TOK_THREADS, serial_rounds, jobs, sizeof jobs[0]);
    threads_join(th, TOK_THREADS);
    assert_int_equal(thread_failures(), 0);
    cctx_var_release(v);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, nothing_left_setup, nothing_left_teardown)
    const struct CMUnitTest tests[] = {
        T(test_light_token_resets_as_a_full_one),
        T(test_token_of_a_freed_context_is_foreign_to_one_at_its_address),
        T(test_light_set_out_of_memory_changes_nothing),
        T(test_in_place_set_moves_the_old_value_into_its_token),
        T(test_in_place_writes_backed_out_by_a_reader_change_nothing_out_of_memory),
        T(test_light_tokens_on_many_threads_keep_their_contexts_apart),
    };
#undef T
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cctx_thread_cleanup();
    return failed;
}
