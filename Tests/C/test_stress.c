/*
 * test_stress.c — many threads at once: each running its own contexts
 * against a model, and readers that read and copy a context while a writer
 * thread mutates it inside enter. Runs clean under TSan, ASan and valgrind
 * (with CCTX_TEST_SCALE lowering the counts).
 */
#include "test_support.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <time.h>

enum { NVARS = 16, MAX_DEPTH = 6, MAX_TOKENS = 24, WORKERS = 8 };

static cctx_var *vars[NVARS];

struct level {
    long model[NVARS]; /* -1: missing */
    cctx_context *ctx; /* NULL for the thread's base context */
    cctx_token *tokens[MAX_TOKENS];
    int ntokens;
};

struct worker {
    int index;
    long ops;
    uint64_t rng;
    long checks;
};

static long current_id(cctx_var *v)
{
    void *out;
    cctx_status st = cctx_var_get(v, &out);
    if (st == CCTX_NOT_FOUND)
        return -1;
    assert_int_equal(st, CCTX_OK);
    return ((tv_value *)out)->id;
}

static void *worker_main(void *p)
{
    struct worker *w = p;
    struct level levels[MAX_DEPTH];
    int depth = 0;
    memset(levels, 0, sizeof levels);
    for (int i = 0; i < NVARS; i++)
        levels[0].model[i] = -1;
    long next_id = (long)w->index * 100000000L;

    for (long op = 0; op < w->ops; op++) {
        struct level *L = &levels[depth];
        int vi = (int)(rng_next(&w->rng) % NVARS);
        switch (rng_next(&w->rng) % 8) {
        case 0:
        case 1: { /* set, keeping the token */
            tv_value *v = tv_new(++next_id);
            cctx_token *t = NULL;
            assert_ok(cctx_var_set(vars[vi], v, L->ntokens < MAX_TOKENS ? &t : NULL));
            tv_drop(v);
            if (t != NULL)
                L->tokens[L->ntokens++] = t;
            L->model[vi] = next_id;
            break;
        }
        case 2: { /* reset the newest token: restores its old value */
            if (L->ntokens == 0)
                break;
            cctx_token *t = L->tokens[--L->ntokens];
            cctx_var *tv = cctx_token_var(t);
            int ti = 0;
            while (vars[ti] != tv)
                ti++;
            void *old;
            long expect = cctx_token_old_value(t, &old) == CCTX_OK ? ((tv_value *)old)->id : -1;
            assert_ok(cctx_var_reset(tv, t));
            assert_int_equal(cctx_var_reset(tv, t), CCTX_TOKEN_USED);
            cctx_token_release(t);
            L->model[ti] = expect;
            break;
        }
        case 3:
        case 4: /* get */
            assert_int_equal(current_id(vars[vi]), L->model[vi]);
            w->checks++;
            break;
        case 5: { /* copy_current and compare */
            cctx_context *c = NULL;
            assert_ok(cctx_context_copy_current(&c));
            size_t n = 0;
            for (int i = 0; i < NVARS; i++)
                n += L->model[i] != -1;
            assert_int_equal(cctx_context_count(c), n);
            void *out;
            cctx_status st = cctx_context_lookup(c, vars[vi], &out);
            if (L->model[vi] == -1) {
                assert_int_equal(st, CCTX_NOT_FOUND);
            } else {
                assert_int_equal(st, CCTX_OK);
                assert_int_equal(((tv_value *)out)->id, L->model[vi]);
                cctx_var_release_value(vars[vi], out);
            }
            cctx_context_release(c);
            w->checks++;
            break;
        }
        case 6: { /* enter a copy */
            if (depth + 1 >= MAX_DEPTH)
                break;
            cctx_context *c = NULL;
            assert_ok(cctx_context_copy_current(&c));
            assert_ok(cctx_context_enter(c));
            depth++;
            memcpy(levels[depth].model, L->model, sizeof L->model);
            levels[depth].ctx = c;
            levels[depth].ntokens = 0;
            break;
        }
        case 7: { /* exit */
            if (depth == 0)
                break;
            while (L->ntokens > 0)
                cctx_token_release(L->tokens[--L->ntokens]);
            assert_ok(cctx_context_exit(L->ctx));
            cctx_context_release(L->ctx);
            depth--;
            for (int i = 0; i < NVARS; i++) /* outer level unchanged */
                assert_int_equal(current_id(vars[i]), levels[depth].model[i]);
            break;
        }
        }
    }
    while (depth > 0) {
        struct level *L = &levels[depth];
        while (L->ntokens > 0)
            cctx_token_release(L->tokens[--L->ntokens]);
        assert_ok(cctx_context_exit(L->ctx));
        cctx_context_release(L->ctx);
        depth--;
    }
    while (levels[0].ntokens > 0)
        cctx_token_release(levels[0].tokens[--levels[0].ntokens]);
    return NULL; /* thread exit releases the base context and its values */
}

static void test_workers_each_with_own_contexts(void **state)
{
    (void)state;
    long allocs = cctx__live_allocations();
    for (int i = 0; i < NVARS; i++)
        assert_ok(cctx_var_new("v", &tv_ops, &vars[i]));
    struct worker ws[WORKERS];
    pthread_t t[WORKERS];
    long total = scaled(200000);
    for (int i = 0; i < WORKERS; i++) {
        ws[i] = (struct worker){ .index = i + 1, .ops = total / WORKERS,
                                 .rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) };
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &ws[i]), 0);
    }
    long checks = 0;
    for (int i = 0; i < WORKERS; i++) {
        pthread_join(t[i], NULL);
        checks += ws[i].checks;
    }
    assert_true(checks > total / 8);
    for (int i = 0; i < NVARS; i++)
        cctx_var_release(vars[i]);
    cctx_reclaim();
    assert_int_equal(tv_live(), 0);
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(cctx__live_allocations(), allocs);
}

/* ------------------------------------------------------------ creation */

/* Threads creating variables at once: every variable gets its own hash
 * (var.c's counter is one atomic fetch-add), and the contexts each thread
 * builds from them, and one holding all of them, keep every HAMT
 * invariant. Each thread sets its variables both in a context of its own
 * and in its base context (cctx_var_set), then copies the base out. */
enum { CREATORS = 8 };

struct creator {
    long n;
    cctx_var **vars;
    cctx_context *own;
    cctx_context *base_copy;
};

static void *creator_main(void *p)
{
    struct creator *c = p;
    T_CHECK(cctx_context_new(&c->own) == CCTX_OK);
    for (long i = 0; i < c->n; i++) {
        T_CHECK(cctx_var_new("c", &tv_ops, &c->vars[i]) == CCTX_OK);
        tv_value *v = tv_new(i);
        T_CHECK(cctx_context_set(c->own, c->vars[i], v, NULL) == CCTX_OK);
        T_CHECK(cctx_var_set(c->vars[i], v, NULL) == CCTX_OK);
        tv_drop(v);
    }
    T_CHECK(cctx_context_copy_current(&c->base_copy) == CCTX_OK);
    return NULL; /* thread exit releases the base context */
}

static int compare_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static void test_variables_created_by_many_threads(void **state)
{
    (void)state;
    long allocs = cctx__live_allocations();
    const long per = scaled(20000);
    const long total = per * CREATORS;
    struct creator cs[CREATORS];
    pthread_t t[CREATORS];
    for (int i = 0; i < CREATORS; i++) {
        cs[i] = (struct creator){ .n = per, .vars = calloc((size_t)per, sizeof(cctx_var *)) };
        assert_non_null(cs[i].vars);
        assert_int_equal(pthread_create(&t[i], NULL, creator_main, &cs[i]), 0);
    }
    for (int i = 0; i < CREATORS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(thread_failures(), 0);

    uint32_t *hashes = malloc((size_t)total * sizeof *hashes);
    assert_non_null(hashes);
    cctx_context *all;
    assert_ok(cctx_context_new(&all));
    long k = 0;
    for (int i = 0; i < CREATORS; i++) {
        assert_int_equal(cctx_context_count(cs[i].own), (size_t)per);
        assert_int_equal(cctx__context_check(cs[i].own), 0);
        assert_int_equal(cctx_context_count(cs[i].base_copy), (size_t)per);
        assert_int_equal(cctx__context_check(cs[i].base_copy), 0);
        for (long j = 0; j < per; j++) {
            cctx_var *v = cs[i].vars[j];
            hashes[k++] = cctx__var_hash(v);
            void *got;
            assert_ok(cctx_context_lookup(cs[i].base_copy, v, &got));
            assert_int_equal(((tv_value *)got)->id, j);
            cctx_var_release_value(v, got);
            assert_ok(cctx_context_set(all, v, got, NULL));
        }
    }
    assert_int_equal(cctx_context_count(all), (size_t)total);
    assert_int_equal(cctx__context_check(all), 0);
    qsort(hashes, (size_t)total, sizeof *hashes, compare_u32);
    for (long i = 1; i < total; i++)
        assert_true(hashes[i] != hashes[i - 1]);
    free(hashes);

    cctx_context_release(all);
    for (int i = 0; i < CREATORS; i++) {
        cctx_context_release(cs[i].own);
        cctx_context_release(cs[i].base_copy);
        for (long j = 0; j < per; j++)
            cctx_var_release(cs[i].vars[j]);
        free(cs[i].vars);
    }
    cctx_reclaim();
    assert_int_equal(tv_live(), 0);
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(cctx__live_allocations(), allocs);
}

/* ------------------------------------------------------------ readers */

enum { K = 8, READERS = 4 };

struct shared {
    cctx_context *ctx;
    cctx_var *v[K];
    long generations;
    int done;
    long reads[READERS];
};

static void *writer_main(void *p)
{
    struct shared *s = p;
    assert_ok(cctx_context_enter(s->ctx));
    for (long g = 1; g <= s->generations; g++) {
        for (int i = 0; i < K; i++) {
            tv_value *v = tv_new(g);
            assert_ok(cctx_var_set(s->v[i], v, NULL));
            tv_drop(v);
        }
    }
    assert_ok(cctx_context_exit(s->ctx));
    __atomic_store_n(&s->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

struct reader_arg {
    struct shared *s;
    int index;
};

/* The writer sets v0..v7 to g in order, so any consistent snapshot is a
 * run of g followed by a run of g-1: a torn or stale-node read breaks it. */
static void check_snapshot(long ids[K])
{
    int i = 0;
    while (i + 1 < K && ids[i + 1] == ids[0])
        i++;
    for (int j = i + 1; j < K; j++)
        assert_int_equal(ids[j], ids[0] - 1);
}

static void *reader_main(void *p)
{
    struct reader_arg *a = p;
    struct shared *s = a->s;
    long last_seen = 0;
    while (!__atomic_load_n(&s->done, __ATOMIC_ACQUIRE)) {
        cctx_context *copy = NULL;
        assert_ok(cctx_context_copy(s->ctx, &copy));
        long ids[K];
        for (int i = 0; i < K; i++)
            ids[i] = 0;
        cctx_iter *it = NULL;
        assert_ok(cctx_iter_new(copy, &it));
        cctx_var *k;
        void *v;
        int n = 0;
        while (cctx_iter_next(it, &k, &v)) {
            for (int i = 0; i < K; i++)
                if (s->v[i] == k)
                    ids[i] = ((tv_value *)v)->id;
            n++;
        }
        cctx_iter_free(it);
        assert_int_equal(n, K);
        check_snapshot(ids);
        assert_true(ids[0] >= last_seen); /* time never runs backwards */
        last_seen = ids[0];
        cctx_context_release(copy);

        /* Direct reads of the live context, without a copy. */
        void *out;
        assert_ok(cctx_context_lookup(s->ctx, s->v[K - 1], &out));
        assert_true(((tv_value *)out)->id >= last_seen - 1);
        cctx_var_release_value(s->v[K - 1], out);
        assert_int_equal(cctx_context_count(s->ctx), K);
        a->s->reads[a->index]++;
    }
    return NULL;
}

static void test_readers_while_writer_mutates(void **state)
{
    (void)state;
    long allocs = cctx__live_allocations();
    struct shared s = { 0 };
    s.generations = scaled(20000);
    assert_ok(cctx_context_new(&s.ctx));
    for (int i = 0; i < K; i++) {
        assert_ok(cctx_var_new("k", &tv_ops, &s.v[i]));
        tv_value *v = tv_new(0);
        assert_ok(cctx_context_set(s.ctx, s.v[i], v, NULL));
        tv_drop(v);
    }
    pthread_t w, r[READERS];
    struct reader_arg args[READERS];
    for (int i = 0; i < READERS; i++) {
        args[i] = (struct reader_arg){ &s, i };
        assert_int_equal(pthread_create(&r[i], NULL, reader_main, &args[i]), 0);
    }
    assert_int_equal(pthread_create(&w, NULL, writer_main, &s), 0);
    pthread_join(w, NULL);
    long reads = 0;
    for (int i = 0; i < READERS; i++) {
        pthread_join(r[i], NULL);
        reads += s.reads[i];
    }
    print_message("reader passes: %ld over %ld generations\n", reads, s.generations);
    void *out;
    assert_ok(cctx_context_get(s.ctx, s.v[0], &out));
    assert_int_equal(((tv_value *)out)->id, s.generations);
    cctx_context_release(s.ctx);
    for (int i = 0; i < K; i++)
        cctx_var_release(s.v[i]);
    cctx_reclaim();
    /* Every value of every generation was released, none twice. */
    assert_int_equal(tv_live(), 0);
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(cctx__live_allocations(), allocs);
}

/* In-place writes (context.c's write_in_place): the owner overwrites one
 * value over and over — in place whenever no other thread is reading —
 * while readers copy the context and read the copy twice with a yield in
 * between. A copy never changes, a read never sees a released value (the
 * counted values abort on a release too many), and every value is
 * released exactly once in the end. */
struct inplace {
    cctx_context *ctx;
    cctx_var *var;
    int done;
    long torn;
};

static void *inplace_reader(void *p)
{
    struct inplace *s = p;
    while (!__atomic_load_n(&s->done, __ATOMIC_ACQUIRE)) {
        cctx_context *copy = NULL;
        assert_ok(cctx_context_copy(s->ctx, &copy));
        void *a, *b;
        assert_ok(cctx_context_lookup(copy, s->var, &a));
        sched_yield();
        assert_ok(cctx_context_lookup(copy, s->var, &b));
        if (a != b || ((tv_value *)a)->id != ((tv_value *)b)->id)
            __atomic_add_fetch(&s->torn, 1, __ATOMIC_RELAXED);
        cctx_var_release_value(s->var, a);
        cctx_var_release_value(s->var, b);
        cctx_context_release(copy);
        /* And a direct read of the live context. */
        assert_ok(cctx_context_lookup(s->ctx, s->var, &a));
        assert_true(((tv_value *)a)->id >= 0);
        cctx_var_release_value(s->var, a);
    }
    return NULL;
}

static void test_snapshots_never_change_under_in_place_writes(void **state)
{
    (void)state;
    struct inplace s = { 0 };
    assert_ok(cctx_var_new("inplace", &tv_ops, &s.var));
    assert_ok(cctx_context_new(&s.ctx));
    assert_ok(cctx_context_enter(s.ctx));
    tv_value *v0 = tv_new(0);
    assert_ok(cctx_var_set(s.var, v0, NULL));
    tv_drop(v0);
    pthread_t r[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&r[i], NULL, inplace_reader, &s), 0);
    const long writes = scaled(300000);
    for (long i = 1; i <= writes; i++) {
        tv_value *v = tv_new(i);
        cctx_token *t = NULL;
        assert_ok(cctx_var_set(s.var, v, (i & 1) ? &t : NULL));
        if (t != NULL) { /* and back, through reset */
            assert_ok(cctx_var_reset(s.var, t));
            cctx_token_release(t);
            assert_ok(cctx_var_set(s.var, v, NULL));
        }
        void *out;
        assert_ok(cctx_var_get(s.var, &out));
        assert_ptr_equal(out, v);
        tv_drop(v);
    }
    __atomic_store_n(&s.done, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 4; i++)
        pthread_join(r[i], NULL);
    assert_int_equal(s.torn, 0);
    assert_ok(cctx_context_exit(s.ctx));
    cctx_context_release(s.ctx);
    cctx_var_release(s.var);
    cctx_reclaim();
    assert_int_equal(tv_live(), 0);
    assert_ok(cctx_thread_cleanup());
}

/* Guarded borrowed reads (cctx_context_peek) of a live context while its
 * owner overwrites values (in place when no reader names the root, by
 * path copy otherwise), sets with tokens and resets. Every value's last
 * release poisons its id (and reads a variable: a callback that uses the
 * library), so a peek that saw a value released while it held it reads a
 * negative id; ASan would report the freed memory too. A peek yields
 * sometimes before its end, to hold the hazard across the writer's steps. */
struct peek_stress {
    cctx_context *ctx;
    cctx_var *v[K];
    uint32_t hash[K];
    int done;
    long poisoned, peeks;
};

static void poison_on_release(tv_value *value, void *arg)
{
    struct peek_stress *s = arg;
    value->id = -1;
    (void)cctx_var_value(s->v[0]);
}

static void *peek_reader(void *p)
{
    struct peek_stress *s = p;
    unsigned n = 0;
    long peeks = 0;
    while (!__atomic_load_n(&s->done, __ATOMIC_ACQUIRE)) {
        for (int i = 0; i < K; i++) {
            cctx_read_guard g;
            void *out;
            cctx_status st = cctx_context_peek(s->ctx, s->v[i], s->hash[i], &g, &out);
            T_CHECK(st == CCTX_OK || st == CCTX_NOT_FOUND);
            if (st != CCTX_OK)
                continue;
            tv_value *value = out;
            long before = __atomic_load_n(&value->id, __ATOMIC_RELAXED);
            if ((++n & 15) == 0)
                sched_yield();
            long after = __atomic_load_n(&value->id, __ATOMIC_RELAXED);
            if (before < 0 || after != before)
                __atomic_add_fetch(&s->poisoned, 1, __ATOMIC_RELAXED);
            cctx_context_peek_end(&g);
            peeks++;
        }
    }
    __atomic_add_fetch(&s->peeks, peeks, __ATOMIC_RELAXED);
    return NULL;
}

static void test_peeks_while_writer_mutates(void **state)
{
    (void)state;
    long live = tv_live();
    struct peek_stress s = { 0 };
    assert_ok(cctx_context_new(&s.ctx));
    for (int i = 0; i < K; i++) {
        assert_ok(cctx_var_new("peeked", &tv_ops, &s.v[i]));
        s.hash[i] = cctx_var_hash(s.v[i]);
    }
    pthread_t r[READERS];
    for (int i = 0; i < READERS; i++)
        assert_int_equal(pthread_create(&r[i], NULL, peek_reader, &s), 0);
    assert_ok(cctx_context_enter(s.ctx));
    const long rounds = scaled(100000);
    for (long g = 1; g <= rounds; g++) {
        int i = (int)(g % K);
        tv_value *v = tv_new_hooked(g, poison_on_release, &s);
        cctx_token *t = NULL;
        assert_ok(cctx_var_set(s.v[i], v, (g % 3) == 0 ? &t : NULL));
        tv_drop(v);
        if (t != NULL) { /* back to the old value (or none) */
            assert_ok(cctx_var_reset(s.v[i], t));
            cctx_token_release(t);
        }
    }
    __atomic_store_n(&s.done, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < READERS; i++)
        pthread_join(r[i], NULL);
    print_message("peeks: %ld over %ld writes\n", s.peeks, rounds);
    assert_int_equal(thread_failures(), 0);
    assert_int_equal(s.poisoned, 0);
    assert_ok(cctx_context_exit(s.ctx));
    cctx_context_release(s.ctx);
    cctx_reclaim();
    assert_int_equal(tv_live(), live); /* every value released, none twice */
    for (int i = 0; i < K; i++)
        cctx_var_release(s.v[i]);
    assert_ok(cctx_thread_cleanup());
}

/* The handover under contention. Per lane and round, a context C holding
 * one hooked value:
 * - the owner enters C with a borrowed pointer (no reference of its own),
 *   reads the value, sometimes retains and later drops the borrowed
 *   current context, and exits;
 * - the releaser drops the creator's reference once the owner is in: the
 *   last reference, often, racing the owner's exit;
 * - an intruder holding its own reference tries to enter C (refused while
 *   the owner has it, allowed before or after), and drops its reference,
 *   sometimes while the owner has C entered (another cross-thread
 *   handover).
 * The value's release callback uses the library (copy, enter, get, exit,
 * release), from whichever thread ends up dropping C. Lanes run at once, so
 * exits also collect other lanes' contexts. Each value is released exactly
 * once, nothing leaks; run with exits fencing and with membarrier. */
enum { HO_LANES = 3 };

static cctx_var *ho_var;
static long ho_hook_calls;

static bool ho_wait(unsigned *flag)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) == 0) {
        sched_yield();
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > TEST_WAIT_SECONDS)
            return false;
    }
    return true;
}

static void ho_hook(tv_value *v, void *arg)
{
    (void)v;
    (void)arg;
    cctx_context *c = NULL;
    T_CHECK(cctx_context_copy_current(&c) == CCTX_OK);
    T_CHECK(cctx_context_enter(c) == CCTX_OK);
    void *out;
    (void)cctx_var_get(ho_var, &out);
    T_CHECK(cctx_context_exit(c) == CCTX_OK);
    cctx_context_release(c);
    __atomic_add_fetch(&ho_hook_calls, 1, __ATOMIC_RELAXED);
}

struct ho_lane {
    cctx_context *ctx;
    tv_value *value;
    unsigned owner_in;
    unsigned released; /* the releaser is done */
    uint64_t rng;
};

static void *ho_owner(void *p)
{
    struct ho_lane *l = p;
    bool retain = rng_next(&l->rng) % 3 == 0;
    /* Only this thread draws from l->rng while the lane runs. */
    cctx_status st;
    /* Half the lanes leave it twice first, so that the enter below is a
     * biased one (context.c, "The bias") unless the intruder revoked it. */
    for (int i = rng_next(&l->rng) % 2 == 0 ? 2 : 0; i > 0; i--) {
        while ((st = cctx_context_enter(l->ctx)) == CCTX_ALREADY_ENTERED)
            sched_yield();
        T_CHECK(st == CCTX_OK);
        T_CHECK(cctx_context_exit(l->ctx) == CCTX_OK);
    }
    /* The intruder may have it; the releaser waits for us, so it lives. */
    while ((st = cctx_context_enter(l->ctx)) == CCTX_ALREADY_ENTERED)
        sched_yield();
    T_CHECK(st == CCTX_OK);
    __atomic_store_n(&l->owner_in, 1, __ATOMIC_RELEASE);
    void *out = NULL;
    T_CHECK(cctx_var_get(ho_var, &out) == CCTX_OK && out == l->value);
    cctx_context *again = retain ? cctx_context_retain(cctx_context_current()) : NULL;
    switch (rng_next(&l->rng) % 3) {
    case 0: /* exit after the release: a handover for certain */
        T_CHECK(ho_wait(&l->released));
        break;
    case 1: /* race it */
        for (int i = (int)(rng_next(&l->rng) % 4); i > 0; i--)
            sched_yield();
        break;
    default:
        break;
    }
    T_CHECK(cctx_context_exit(l->ctx) == CCTX_OK);
    if (again != NULL) {
        T_CHECK(cctx_context_get(again, ho_var, &out) == CCTX_OK && out == l->value);
        cctx_context_release(again);
    }
    return NULL;
}

static void *ho_releaser(void *p)
{
    struct ho_lane *l = p;
    T_CHECK(ho_wait(&l->owner_in));
    cctx_context_release(l->ctx); /* the creator's reference */
    __atomic_store_n(&l->released, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void *ho_intruder(void *p)
{
    struct ho_lane *l = p; /* holds a reference taken for it */
    for (int i = 0; i < 3; i++) {
        cctx_status st = cctx_context_enter(l->ctx);
        T_CHECK(st == CCTX_OK || st == CCTX_ALREADY_ENTERED);
        if (st == CCTX_OK) {
            void *out = NULL;
            T_CHECK(cctx_var_get(ho_var, &out) == CCTX_OK && out == l->value);
            T_CHECK(cctx_context_exit(l->ctx) == CCTX_OK);
        }
        sched_yield();
    }
    cctx_context_release(l->ctx);
    return NULL;
}

static void ho_rounds(long rounds)
{
    struct ho_lane lanes[HO_LANES];
    for (int k = 0; k < HO_LANES; k++)
        lanes[k].rng = 0x9e3779b97f4a7c15ull * (uint64_t)(k + 1);
    for (long r = 0; r < rounds; r++) {
        pthread_t t[HO_LANES][3];
        for (int k = 0; k < HO_LANES; k++) {
            struct ho_lane *l = &lanes[k];
            l->owner_in = 0;
            l->released = 0;
            assert_ok(cctx_context_new(&l->ctx));
            l->value = tv_new_hooked(r, ho_hook, NULL);
            assert_ok(cctx_context_set(l->ctx, ho_var, l->value, NULL));
            tv_drop(l->value); /* C holds it now */
            cctx_context_retain(l->ctx); /* the intruder's */
        }
        for (int k = 0; k < HO_LANES; k++) {
            assert_int_equal(pthread_create(&t[k][0], NULL, ho_owner, &lanes[k]), 0);
            assert_int_equal(pthread_create(&t[k][1], NULL, ho_releaser, &lanes[k]), 0);
            assert_int_equal(pthread_create(&t[k][2], NULL, ho_intruder, &lanes[k]), 0);
        }
        for (int k = 0; k < HO_LANES; k++)
            for (int j = 0; j < 3; j++)
                pthread_join(t[k][j], NULL);
    }
}

static void test_handover_while_entered_under_contention(void **state)
{
    (void)state;
    long start_allocs = cctx__live_allocations();
    long live = tv_live();
    assert_ok(cctx_var_new("handover", &tv_ops, &ho_var));
    long rounds = scaled(400);
    for (int mode = 1; mode <= 2; mode++) {
        __atomic_store_n(&ho_hook_calls, 0, __ATOMIC_RELAXED);
        int in_effect = cctx__context_exit_barrier(mode);
        assert_true(mode == 1 ? in_effect == 1 : in_effect >= 1);
        ho_rounds(rounds);
        assert_int_equal(thread_failures(), 0);
        assert_int_equal(tv_live(), live); /* each value released once */
        assert_int_equal(__atomic_load_n(&ho_hook_calls, __ATOMIC_RELAXED),
                         rounds * HO_LANES);
    }
    (void)cctx__context_exit_barrier(2);
    cctx_var_release(ho_var);
    cctx_reclaim();
    assert_ok(cctx_thread_cleanup()); /* this thread's state, made here */
    assert_int_equal(cctx__live_allocations(), start_allocs);
}

/* ---------------------------------------------------------------- the bias
 * A context one thread left twice in a row is re-entered by that thread
 * with plain stores (context.c, "The bias"); every other taker revokes the
 * bias first. Threads share a few contexts per round: each has a home
 * context it enters in runs (so that it gains the bias), and now and then
 * enters or claims another's (so that it revokes one). (No one-off
 * explicit writes here: one on a context another thread has claimed is
 * taken for the claimer's own, as the API says, and would race it.) Whoever
 * holds a context counts itself in `inside`, which must go 0 -> 1: two
 * holders at once would be a broken revoke. Each thread holds a reference
 * to every context and releases them at its end, in random order, while
 * the others may still enter them. Fresh contexts each round, because a
 * revoke leaves an object unbiased for good. */
enum { BIAS_THREADS = 6, BIAS_CTXS = 3 };

struct bias_round {
    cctx_context *ctx[BIAS_CTXS];
    unsigned inside[BIAS_CTXS];
    long ops;
};

struct bias_worker {
    struct bias_round *round;
    int index;
    uint64_t rng;
};

static cctx_var *bias_var;

static void bias_hold(struct bias_round *r, int k)
{
    T_CHECK(__atomic_fetch_add(&r->inside[k], 1, __ATOMIC_ACQ_REL) == 0);
}

static void bias_unhold(struct bias_round *r, int k)
{
    T_CHECK(__atomic_fetch_sub(&r->inside[k], 1, __ATOMIC_ACQ_REL) == 1);
}

static void *bias_worker_main(void *p)
{
    struct bias_worker *w = p;
    struct bias_round *r = w->round;
    int home = w->index % BIAS_CTXS;
    for (long op = 0; op < r->ops; op++) {
        int k = rng_next(&w->rng) % 4 == 0 ? (int)(rng_next(&w->rng) % BIAS_CTXS) : home;
        cctx_context *c = r->ctx[k];
        switch (rng_next(&w->rng) % 8) {
        default: { /* a run of enters: the second exit biases, the rest ride it */
            int n = 1 + (int)(rng_next(&w->rng) % 4);
            for (int i = 0; i < n; i++) {
                cctx_status st = cctx_context_enter(c);
                T_CHECK(st == CCTX_OK || st == CCTX_ALREADY_ENTERED);
                if (st != CCTX_OK)
                    break;
                bias_hold(r, k);
                tv_value *v = tv_new(op);
                T_CHECK(cctx_var_set(bias_var, v, NULL) == CCTX_OK);
                void *out = NULL;
                T_CHECK(cctx_var_get(bias_var, &out) == CCTX_OK && out == v);
                tv_drop(v);
                bias_unhold(r, k);
                T_CHECK(cctx_context_exit(c) == CCTX_OK);
            }
            break;
        }
        case 5: { /* a claim, as a Swift task's scope takes a context */
            cctx_status st = cctx_context_claim(c);
            T_CHECK(st == CCTX_OK || st == CCTX_ALREADY_ENTERED);
            if (st != CCTX_OK)
                break;
            bias_hold(r, k);
            tv_value *v = tv_new(op);
            T_CHECK(cctx_context_set(c, bias_var, v, NULL) == CCTX_OK);
            tv_drop(v);
            bias_unhold(r, k);
            T_CHECK(cctx_context_unclaim(c) == CCTX_OK);
            break;
        }
        case 7: { /* nested: home, then another context inside it */
            int j = (int)(rng_next(&w->rng) % BIAS_CTXS);
            if (j == k || cctx_context_enter(c) != CCTX_OK)
                break;
            bias_hold(r, k);
            cctx_status st = cctx_context_enter(r->ctx[j]);
            T_CHECK(st == CCTX_OK || st == CCTX_ALREADY_ENTERED);
            if (st == CCTX_OK) {
                bias_hold(r, j);
                bias_unhold(r, j);
                T_CHECK(cctx_context_exit(r->ctx[j]) == CCTX_OK);
            }
            bias_unhold(r, k);
            T_CHECK(cctx_context_exit(c) == CCTX_OK);
            break;
        }
        }
    }
    /* Our references, in random order; the last one frees a context that
     * another thread may have left biased a moment ago. */
    int order[BIAS_CTXS];
    for (int i = 0; i < BIAS_CTXS; i++)
        order[i] = i;
    for (int i = BIAS_CTXS - 1; i > 0; i--) {
        int j = (int)(rng_next(&w->rng) % (uint64_t)(i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int i = 0; i < BIAS_CTXS; i++)
        cctx_context_release(r->ctx[order[i]]);
    (void)cctx_thread_cleanup();
    return NULL;
}

static void test_biased_enters_against_takers_on_other_threads(void **state)
{
    (void)state;
    long start_allocs = cctx__live_allocations();
    long live = tv_live();
    assert_ok(cctx_var_new("bias", &tv_ops, &bias_var));
    long rounds = scaled(60);
    for (int mode = 1; mode <= 2; mode++) {
        int in_effect = cctx__context_exit_barrier(mode);
        assert_true(mode == 1 ? in_effect == 1 : in_effect >= 1);
        for (long rd = 0; rd < rounds; rd++) {
            struct bias_round r;
            memset(&r, 0, sizeof r);
            r.ops = 200;
            for (int k = 0; k < BIAS_CTXS; k++) {
                assert_ok(cctx_context_new(&r.ctx[k]));
                for (int i = 1; i < BIAS_THREADS; i++)
                    cctx_context_retain(r.ctx[k]); /* one per worker */
            }
            pthread_t t[BIAS_THREADS];
            struct bias_worker w[BIAS_THREADS];
            for (int i = 0; i < BIAS_THREADS; i++) {
                w[i].round = &r;
                w[i].index = i;
                w[i].rng = 0x9e3779b97f4a7c15ull * (uint64_t)(rd * BIAS_THREADS + i + 1);
                assert_int_equal(pthread_create(&t[i], NULL, bias_worker_main, &w[i]), 0);
            }
            for (int i = 0; i < BIAS_THREADS; i++)
                pthread_join(t[i], NULL);
            assert_int_equal(thread_failures(), 0);
        }
    }
    (void)cctx__context_exit_barrier(2);
    assert_int_equal(tv_live(), live); /* every value released once */
    cctx_var_release(bias_var);
    cctx_reclaim();
    assert_int_equal(cctx__live_allocations(), start_allocs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_workers_each_with_own_contexts),
        cmocka_unit_test(test_variables_created_by_many_threads),
        cmocka_unit_test(test_snapshots_never_change_under_in_place_writes),
        cmocka_unit_test(test_readers_while_writer_mutates),
        cmocka_unit_test(test_peeks_while_writer_mutates),
        cmocka_unit_test(test_handover_while_entered_under_contention),
        cmocka_unit_test(test_biased_enters_against_takers_on_other_threads),
    };
    return cmocka_run_group_tests_name("stress", tests, NULL, NULL);
}
