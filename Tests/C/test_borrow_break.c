/*
 * test_borrow_break.c — attempts to break borrowed keys (hamt.c,
 * "Borrowed keys") from the corners test_borrowed_keys.c does not walk:
 *
 *   - an in-place value write on a node that is the key source of others
 *     (allowed: owners are 1; borrowers read keys only), then every
 *     release order;
 *   - delete and re-insert of one key in the source and in the borrower;
 *   - collision nodes and array nodes (promotion, demotion) next to a
 *     borrowing bitmap node, and iteration and equality over them;
 *   - value release callbacks that read and set variables (in a map that
 *     borrows from the node being released) and drop their variable, on
 *     the owners' last release and on the borrowers' last release;
 *   - threads copying borrowers (flattened: each copy takes a borrow
 *     reference on the first source) while the source loses its owners
 *     and the 8-bit borrow field runs full;
 *   - thread exit and cctx_thread_cleanup while borrowing maps are alive;
 *   - the owner count at its 24-bit limit beside a borrow reference, and
 *     one owner more (the process stops; run in a child).
 *
 * Each test ends with every variable back at the user's one reference, no
 * value alive and no allocation left (so a key counted twice or not at all
 * fails here, and ASan/valgrind see a use after free).
 */
#include "test_support.h"

#include "internal.h"

#include "hamt.h"
#include "hamt_maps.h"

#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------- helpers */

enum { MAXKEYS = 64 };

static cctx_var *keys[MAXKEYS];
static int nkeys;
static long allocs_at_start;

static cctx_var *key(uint32_t hash)
{
    assert_true(nkeys < MAXKEYS);
    cctx_var *v = NULL;
    assert_ok(cctx__var_new_with_hash("k", &tv_ops, hash, &v));
    keys[nkeys++] = v;
    return v;
}

/* The variable's references other than the calling thread's variable
 * credits (var.c): what its count was before credits existed. */
static unsigned var_count(const cctx_var *v)
{
    return cctx_load_uint_relaxed(&((cctx_var *)v)->refcnt) - cctx__var_credits(v);
}

/* `root` with k bound, the caller's reference to `root` moved in. */
static hamt_node *set(hamt_node *root, cctx_var *k, long id)
{
    hamt_node *out = with(root, k, id);
    hamt_release(root);
    return out;
}

static int setup(void **state)
{
    (void)state;
    nkeys = 0;
    /* This thread's state and caches are not the test's allocations. */
    assert_ok(cctx_thread_cleanup());
    cctx_reclaim();
    allocs_at_start = cctx__live_allocations();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cctx_reclaim(); /* deferred frees first */
    for (int i = 0; i < nkeys; i++) {
        if (var_count(keys[i]) != 1)
            fail_msg("key %d (hash %u): count %u", i, cctx__var_hash(keys[i]), var_count(keys[i]));
        cctx_var_release(keys[i]);
        keys[i] = NULL;
    }
    nkeys = 0;
    assert_ok(cctx_thread_cleanup());
    cctx_reclaim();
    assert_int_equal(tv_live(), 0);
    assert_int_equal(cctx__live_allocations(), allocs_at_start);
    return 0;
}

/* Every key of `root` found by iteration is found by lookup with the same
 * value, and the iteration yields hamt_count entries, each once. */
static void assert_iteration_matches(const hamt_node *root)
{
    hamt_iter it;
    cctx_var *k;
    void *v;
    size_t n = 0;
    hamt_iter_init(&it, root);
    while (hamt_iter_next(&it, &k, &v)) {
        void *found = NULL;
        assert_true(hamt_find(root, k, &found));
        assert_ptr_equal(found, v);
        n++;
    }
    assert_int_equal(n, hamt_count(root));
}

/* -------------------------------------------------- in-place on a source */

/* The base is the key source of a copy, and its only owner then writes a
 * value in place (the path hamt_value_slot_if_unique allows: owners 1,
 * borrowers do not count). The copy keeps its own values and its borrowed
 * keys; the base's replaced value goes at once; both release orders free
 * everything once. */
static void test_in_place_write_on_a_key_source(void **state)
{
    (void)state;
    for (int order = 0; order < 2; order++) {
        hamt_node *base = NULL;
        for (uint32_t i = 0; i < 20; i++)
            base = set(base, key(i), (long)i + 1);
        hamt_retain(base);
        hamt_node *c = with(base, keys[nkeys - 20 + 3], 103);
        hamt_release(base); /* the copy's writer let go: base unique again */
        assert_ptr_equal(hamt_shape_at(c, "").source, base);
        assert_int_equal(hamt_shape_at(base, "").refcnt, 1);
        assert_int_equal(hamt_shape_at(base, "").borrowers, 1);

        cctx_var *k7 = keys[nkeys - 20 + 7];
        void **slot = hamt_value_slot_if_unique(base, k7);
        assert_non_null(slot);
        tv_value *nv = tv_new(700);
        cctx_var_release_value(k7, *slot); /* as write_in_place: old goes */
        *slot = nv;                         /* the map's reference */
        assert_int_equal(id_in(base, k7), 700);
        assert_int_equal(id_in(c, k7), 8); /* the copy's own value */
        assert_int_equal(id_in(c, keys[nkeys - 20 + 3]), 103);
        for (int i = 0; i < 20; i++)
            assert_int_equal(var_count(keys[nkeys - 20 + i]), 2); /* borrowed */
        assert_int_equal(hamt_check(base), 0);
        assert_int_equal(hamt_check(c), 0);
        if (order == 0) {
            hamt_release(base);
            assert_int_equal(id_in(c, k7), 8);
            hamt_release(c);
        } else {
            hamt_release(c);
            assert_int_equal(id_in(base, k7), 700);
            hamt_release(base);
        }
        assert_int_equal(tv_live(), 0);
    }
}

/* The same at the context level: copy, write the copy (it borrows the
 * base's root), then the base's owner writes in place, deletes and puts
 * back; the copy reads its values throughout. */
static void test_context_in_place_writes_beside_a_borrowing_copy(void **state)
{
    (void)state;
    enum { N = 24 };
    cctx_var *v[N];
    cctx_context *base, *copy;
    assert_ok(cctx_context_new(&base));
    for (int i = 0; i < N; i++) {
        v[i] = key((uint32_t)i);
        tv_value *x = tv_new(i + 1);
        assert_ok(cctx_context_set(base, v[i], x, NULL));
        tv_drop(x);
    }
    assert_ok(cctx_context_copy(base, &copy));
    tv_value *x = tv_new(-1);
    assert_ok(cctx_context_set(copy, v[0], x, NULL));
    tv_drop(x);
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < N; i++) {
            tv_value *y = tv_new(1000 * (round + 1) + i);
            assert_ok(cctx_context_set(base, v[i], y, NULL)); /* in place */
            tv_drop(y);
        }
        assert_ok(cctx_context_delete(base, v[round + 1]));
        tv_value *z = tv_new(5000 + round);
        assert_ok(cctx_context_set(base, v[round + 1], z, NULL));
        assert_ok(cctx_context_delete(copy, v[round + 5]));
        assert_ok(cctx_context_set(copy, v[round + 5], z, NULL));
        tv_drop(z);
        for (int i = 0; i < N; i++) {
            void *out = NULL;
            assert_ok(cctx_context_get(copy, v[i], &out));
            long want = i == 0 ? -1 : (i >= 5 && i <= round + 5) ? 5000 + (i - 5) : i + 1;
            assert_int_equal(((tv_value *)out)->id, want);
        }
        assert_int_equal(cctx__context_check(base), 0);
        assert_int_equal(cctx__context_check(copy), 0);
    }
    cctx_context_release(base);
    for (int i = 0; i < N; i++)
        assert_true(var_count(v[i]) >= 2);
    cctx_context_release(copy);
}

/* ------------------------------------------- delete and re-insert, both */

/* One key deleted and put back in the source's later version and in the
 * borrower; each version reads its own state, and every count comes back. */
static void test_delete_and_reinsert_in_source_and_borrower(void **state)
{
    (void)state;
    hamt_node *base = NULL;
    for (uint32_t i = 0; i < 20; i++)
        base = set(base, key(i), (long)i + 1);
    cctx_var *k5 = keys[5];
    hamt_retain(base);
    hamt_node *b1 = without(base, k5);   /* borrows from base */
    hamt_node *b2 = with(b1, k5, 500);   /* k5 borrowed again */
    hamt_node *s1 = without(base, k5);   /* another borrower */
    hamt_release(base);                  /* base: one owner (the test) */
    hamt_node *s2 = with(s1, k5, 501);
    assert_ptr_equal(hamt_shape_at(b2, "").source, base);
    assert_ptr_equal(hamt_shape_at(s2, "").source, base);
    assert_int_equal(var_count(k5), 2); /* the user's and base's only */
    assert_int_equal(hamt_shape_at(base, "").borrowers, 4);
    /* A key of another hash in k5's fragment: owned, not borrowed. */
    cctx_var *other = key(5 + 32 * 7);
    hamt_node *b3 = with(b1, other, 900); /* b1 lacks k5: entry at 5 */
    assert_int_equal(var_count(other), 2);
    assert_int_equal(id_in(b3, k5), -1);
    assert_int_equal(id_in(b3, other), 900);
    hamt_node *b4 = with(b3, k5, 502); /* 5 and 5 + 224 go one level down */
    assert_int_equal(hamt_shape_at(b4, "0").kind, 'b');
    assert_int_equal(var_count(k5), 3); /* owned by b4's child */
    hamt_release(base); /* the source's owners go first */
    assert_int_equal(id_in(b2, k5), 500);
    assert_int_equal(id_in(s2, k5), 501);
    assert_int_equal(id_in(b4, k5), 502);
    assert_int_equal(id_in(b4, other), 900);
    hamt_node *all[] = { b1, b2, s1, s2, b3, b4 };
    for (int i = 0; i < 6; i++) {
        assert_iteration_matches(all[i]);
        hamt_release(all[i]);
    }
}

/* ------------------------------------------------- collisions and arrays */

/* A collision node in a borrowing node's subtree: deleting one of its keys
 * pulls the survivor up as an owned entry in the borrower; adding it back
 * makes a collision node again; the source keeps its collision node. */
static void test_collision_node_under_a_borrowing_node(void **state)
{
    (void)state;
    hamt_node *base = NULL;
    for (uint32_t i = 0; i < 20; i++)
        base = set(base, key(i), (long)i + 1);
    cctx_var *twin = key(5); /* same full hash as keys[5] */
    cctx_var *k5 = keys[5];
    base = set(base, twin, 55);
    assert_int_equal(hamt_shape_at(base, "0").kind, 'c');
    hamt_retain(base);
    hamt_node *c = with(base, keys[0], 100); /* borrows the root */
    assert_ptr_equal(hamt_shape_at(c, "").source, base);
    hamt_node *d = without(c, twin); /* k5 inline again, owned */
    assert_ptr_equal(hamt_shape_at(d, "").source, base);
    assert_int_equal(hamt_shape_at(d, "").children, 0);
    assert_int_equal(var_count(k5), 3); /* user, base's collision, d */
    hamt_node *e = with(d, twin, 56); /* a collision node again */
    assert_int_equal(hamt_shape_at(e, "0").kind, 'c');
    assert_int_equal(var_count(k5), 4);
    assert_int_equal(var_count(twin), 3); /* user, base's collision, e's */
    hamt_node *f = without(e, k5); /* the twin comes up, owned */
    assert_int_equal(id_in(f, twin), 56);
    assert_int_equal(id_in(f, k5), -1);
    hamt_node *g = without(f, twin); /* fragment 5 empty */
    assert_int_equal(hamt_count(g), 19);
    hamt_release(base);
    hamt_release(base);
    hamt_node *all[] = { c, d, e, f, g };
    for (int i = 0; i < 5; i++) {
        assert_iteration_matches(all[i]);
        assert_int_equal(hamt_check(all[i]), 0);
    }
    assert_true(hamt_equal(c, c));
    assert_false(hamt_equal(c, e));
    for (int i = 4; i >= 0; i--)
        hamt_release(all[i]);
}

/* A borrowing root with 16 children promoted to an array node by a 17th,
 * then demoted back by deletes, in a copy that borrows again; and
 * equality between a borrowing map and an owning one with equal content. */
static void test_promotion_and_demotion_of_a_borrowing_node(void **state)
{
    (void)state;
    hamt_node *base = NULL;
    for (uint32_t f = 0; f < 16; f++) { /* children at fragments 0..15 */
        base = set(base, key(f), (long)f);
        base = set(base, key(f + 32), (long)f + 32);
    }
    base = set(base, key(16), 16);  /* entries at 16 and 20 */
    base = set(base, key(20), 20);
    cctx_var *k16b = key(16 + 32); /* not yet bound */
    assert_int_equal(hamt_shape_at(base, "").children, 16);
    hamt_retain(base);
    hamt_node *c = with(base, keys[nkeys - 2], 2000); /* replace key 20 */
    assert_ptr_equal(hamt_shape_at(c, "").source, base);
    hamt_node *a = with(c, k16b, 48); /* 17th child: array node */
    assert_int_equal(hamt_shape_at(a, "").kind, 'a');
    assert_int_equal(id_in(a, keys[nkeys - 2]), 2000);
    assert_iteration_matches(a);
    /* Demotion: drop children until 8 remain (each child holds f, f+32;
     * deleting one key inlines the other, so delete both). */
    hamt_node *d = a;
    hamt_retain(d);
    for (uint32_t f = 0; f < 10; f++) { /* 18 children -> 8 */
        hamt_node *n1 = without(d, keys[2 * f]);
        hamt_release(d);
        d = without(n1, keys[2 * f + 1]);
        hamt_release(n1);
    }
    assert_int_equal(hamt_shape_at(d, "").kind, 'b');
    assert_iteration_matches(d);
    hamt_node *e2 = with(base, keys[nkeys - 2], 2000); /* another borrower */
    assert_false(hamt_equal(c, e2)); /* values differ by pointer */
    hamt_release(base);
    hamt_release(base);
    assert_iteration_matches(c);
    hamt_release(e2);
    hamt_release(a);
    hamt_release(c);
    hamt_release(d);
}

/* ------------------------------------------------ callbacks on releases */

/* A value whose last release reads its variable, writes a value of it into
 * `scratch` (a context that borrows from the map being released), and drops
 * the reference to the variable the value held. */
struct hook_arg {
    cctx_var *var;
    cctx_context *scratch;
    long *fired;
    cctx_context *drop; /* released by the hook when not NULL */
};

static void uses_library(tv_value *value, void *p)
{
    struct hook_arg *a = p;
    void *out = NULL;
    (void)cctx_var_get(a->var, &out); /* any answer; must not crash */
    tv_value *x = tv_new(value->id + 10000);
    if (cctx_context_set(a->scratch, a->var, x, NULL) != CCTX_OK)
        (*a->fired) -= 1000;
    tv_drop(x);
    (void)cctx__context_check(a->scratch);
    cctx_var_release(a->var);
    if (a->drop != NULL)
        cctx_context_release(a->drop); /* a map borrowing from this one */
    (*a->fired)++;
    free(a);
}

static tv_value *hooked(cctx_var *var, cctx_context *scratch, long id, long *fired)
{
    struct hook_arg *a = malloc(sizeof *a);
    assert_non_null(a);
    a->var = cctx_var_retain(var);
    a->scratch = scratch;
    a->fired = fired;
    a->drop = NULL;
    return tv_new_hooked(id, uses_library, a);
}

/* order 0: the base (source) goes first, then the copy (borrower);
 * order 1: the other way round. The variables are the user's only until
 * the values are bound; the user drops them before any release. */
static void callbacks_on_each_release_path(int order)
{
    enum { N = 20 };
    long fired = 0;
    cctx_var *v[N];
    cctx_context *base, *copy, *scratch;
    assert_ok(cctx_context_new(&base));
    for (int i = 0; i < N; i++)
        assert_ok(cctx__var_new_with_hash("h", &tv_ops, (uint32_t)i, &v[i]));
    for (int i = 0; i < N; i++) {
        tv_value *x = tv_new(i + 1);
        assert_ok(cctx_context_set(base, v[i], x, NULL));
        tv_drop(x);
    }
    /* scratch borrows the base's root; the hooks write it while that root
     * loses its owners (its later copies must then own their keys). */
    assert_ok(cctx_context_copy(base, &scratch));
    tv_value *s0 = tv_new(-5);
    assert_ok(cctx_context_set(scratch, v[N - 1], s0, NULL));
    tv_drop(s0);
    /* victim: another map borrowing from the base's root, released by
     * the hook of the base's value of v[3] (from inside that root's
     * owners' last release, in both orders). */
    cctx_context *victim;
    assert_ok(cctx_context_copy(base, &victim));
    tv_value *s1 = tv_new(-6);
    assert_ok(cctx_context_set(victim, v[2], s1, NULL));
    tv_drop(s1);
    for (int i = 0; i < N; i++) {
        tv_value *h = hooked(v[i], scratch, 100 + i, &fired);
        if (i == 3) /* a value the copy replaces: released with this root */
            ((struct hook_arg *)h->hook_arg)->drop = victim;
        assert_ok(cctx_context_set(base, v[i], h, NULL)); /* in place */
        tv_drop(h);
    }
    assert_ok(cctx_context_copy(base, &copy));
    for (int i = 0; i < N; i += 3) {
        tv_value *h = hooked(v[i], scratch, 200 + i, &fired);
        assert_ok(cctx_context_set(copy, v[i], h, NULL)); /* borrows */
        tv_drop(h);
    }
    for (int i = 0; i < N; i++)
        cctx_var_release(v[i]);
    long live = tv_live();
    if (order == 0) {
        cctx_context_release(base);
        /* Only the values the copy replaced: the copy counts the rest. */
        assert_int_equal(fired, (N + 2) / 3);
        cctx_context_release(copy);
    } else {
        cctx_context_release(copy);
        assert_int_equal(fired, (N + 2) / 3); /* the copy's own values */
        cctx_context_release(base);
    }
    assert_int_equal(fired, N + (N + 2) / 3);
    assert_int_equal(cctx__context_check(scratch), 0);
    for (int i = 0; i < N; i++) {
        void *out = NULL;
        assert_ok(cctx_context_get(scratch, v[i], &out)); /* still valid */
        assert_true(((tv_value *)out)->id >= 10100);
    }
    assert_true(tv_live() < live);
    cctx_context_release(scratch);
}

static void test_release_callbacks_use_the_library_source_first(void **state)
{
    (void)state;
    callbacks_on_each_release_path(0);
}

static void test_release_callbacks_use_the_library_borrower_first(void **state)
{
    (void)state;
    callbacks_on_each_release_path(1);
}

/* ---------------------------------------------------------------- stress */

/* Threads copy one shared borrowing node (each copy borrows from its first
 * source, a compare-and-swap on the source's count word) and copy their
 * copies, while the main thread drops the source's owners and releases a
 * crowd of other borrowers that keep the 8-bit borrow field near full. */
enum { BB_WORKERS = 4, BB_KEYS = 20, BB_CROWD = 250 };

struct bb_shared {
    hamt_node *m0;   /* borrows from the source; one reference per worker */
    cctx_var **k;
    pthread_barrier_t go;
    long rounds;
};

struct bb_worker {
    struct bb_shared *s;
    uint64_t rng;
    hamt_node *m0;
};

static void *bb_worker_run(void *p)
{
    struct bb_worker *w = p;
    struct bb_shared *s = w->s;
    pthread_barrier_wait(&s->go);
    for (long r = 0; r < s->rounds; r++) {
        int i = (int)(rng_next(&w->rng) % BB_KEYS);
        int j = (int)(rng_next(&w->rng) % BB_KEYS);
        tv_value *x = tv_new(-1 - i);
        hamt_node *c = NULL, *d = NULL;
        T_CHECK(hamt_assoc(w->m0, s->k[i], x, &c) == CCTX_OK);
        tv_drop(x);
        T_CHECK(hamt_without(c, s->k[j], &d) == CCTX_OK && d != NULL);
        T_CHECK(hamt_check(c) == 0);
        T_CHECK(hamt_check(d) == 0);
        for (int k = 0; k < BB_KEYS; k++) {
            long want = k == i ? -1 - i : k + 1;
            T_CHECK(id_in(c, s->k[k]) == want);
            if (k != j)
                T_CHECK(id_in(d, s->k[k]) == want);
        }
        if (r & 1) {
            hamt_release(c);
            hamt_release(d);
        } else {
            hamt_release(d);
            hamt_release(c);
        }
    }
    hamt_release(w->m0);
    return NULL;
}

static void test_threads_copy_borrowers_while_the_source_goes(void **state)
{
    (void)state;
    const long rounds = scaled(40);
    uint64_t rng = 0xB0770Bu;
    for (long n = 0; n < rounds; n++) {
        hamt_node *base = NULL;
        cctx_var **k = &keys[nkeys];
        for (uint32_t i = 0; i < BB_KEYS; i++)
            base = set(base, key(i + (uint32_t)n * 32), (long)i + 1);
        hamt_retain(base);
        hamt_node **crowd = calloc(BB_CROWD, sizeof(*crowd));
        assert_non_null(crowd);
        for (int i = 0; i < BB_CROWD; i++)
            crowd[i] = with(base, k[i % BB_KEYS], 7000 + i);
        tv_value *x = tv_new(1); /* m0: same value ids as the base */
        hamt_node *m0 = NULL;
        assert_ok(hamt_assoc(base, k[0], x, &m0));
        tv_drop(x);
        struct bb_shared s = { .m0 = m0, .k = k, .rounds = scaled(200) };
        assert_int_equal(pthread_barrier_init(&s.go, NULL, BB_WORKERS + 1), 0);
        pthread_t t[BB_WORKERS];
        struct bb_worker ws[BB_WORKERS];
        for (int i = 0; i < BB_WORKERS; i++) {
            hamt_retain(m0);
            ws[i] = (struct bb_worker){ &s, rng_next(&rng) | 1, m0 };
            assert_int_equal(pthread_create(&t[i], NULL, bb_worker_run, &ws[i]), 0);
        }
        hamt_release(m0);
        pthread_barrier_wait(&s.go);
        /* Half the crowd, the source's owners, then the rest. */
        for (int i = 0; i < BB_CROWD; i += 2)
            hamt_release(crowd[i]);
        hamt_release(base);
        hamt_release(base);
        for (int i = 1; i < BB_CROWD; i += 2)
            hamt_release(crowd[i]);
        free(crowd);
        for (int i = 0; i < BB_WORKERS; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_destroy(&s.go);
        assert_int_equal(thread_failures(), 0);
        assert_int_equal(tv_live(), 0);
        for (int i = 0; i < BB_KEYS; i++) {
            assert_int_equal(var_count(k[i]), 1);
            cctx_var_release(k[i]);
        }
        nkeys -= BB_KEYS;
    }
}

/* ------------------------------------------------------------ thread exit */

/* A thread works in a copy of a shared base (its writes borrow the base's
 * root), takes root credits by copying the current context, and leaves
 * copies behind for the main thread; then it ends — by cctx_thread_cleanup
 * or by plain thread exit — while the base and the copies are alive. */
struct exit_probe {
    cctx_context *base;
    cctx_var **v;
    int n;
    cctx_context *left[4];
    bool cleanup;
};

static void *exit_probe_run(void *p)
{
    struct exit_probe *e = p;
    cctx_context *c = NULL;
    T_CHECK(cctx_context_copy(e->base, &c) == CCTX_OK);
    T_CHECK(cctx_context_enter(c) == CCTX_OK);
    for (int i = 0; i < e->n; i += 4) {
        tv_value *x = tv_new(-1 - i);
        T_CHECK(cctx_var_set(e->v[i], x, NULL) == CCTX_OK);
        tv_drop(x);
    }
    for (int i = 0; i < 4; i++)
        T_CHECK(cctx_context_copy_current(&e->left[i]) == CCTX_OK);
    tv_value *y = tv_new(-999);
    T_CHECK(cctx_context_set(e->left[3], e->v[1], y, NULL) == CCTX_OK);
    tv_drop(y);
    T_CHECK(cctx_context_exit(c) == CCTX_OK);
    cctx_context_release(c);
    if (e->cleanup)
        T_CHECK(cctx_thread_cleanup() == CCTX_OK);
    return NULL;
}

static void test_thread_exit_with_borrowing_maps_alive(void **state)
{
    (void)state;
    enum { N = 40 };
    cctx_var *v[N];
    for (int mode = 0; mode < 2; mode++) {
        cctx_context *base;
        assert_ok(cctx_context_new(&base));
        for (int i = 0; i < N; i++) {
            if (mode == 0)
                v[i] = key((uint32_t)i);
            tv_value *x = tv_new(i + 1);
            assert_ok(cctx_context_set(base, v[i], x, NULL));
            tv_drop(x);
        }
        struct exit_probe e = { .base = base, .v = v, .n = N, .cleanup = mode == 1 };
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, exit_probe_run, &e), 0);
        pthread_join(t, NULL);
        assert_int_equal(thread_failures(), 0);
        cctx_context_release(base); /* the source's owners go */
        for (int k = 0; k < 4; k++) {
            assert_int_equal(cctx__context_check(e.left[k]), 0);
            for (int i = 0; i < N; i++) {
                void *out = NULL;
                assert_ok(cctx_context_get(e.left[k], v[i], &out));
                long want = (k == 3 && i == 1) ? -999 : i % 4 == 0 ? -1 - i : i + 1;
                assert_int_equal(((tv_value *)out)->id, want);
            }
        }
        for (int k = 0; k < 4; k++)
            cctx_context_release(e.left[k]);
        cctx_reclaim();
        assert_int_equal(tv_live(), 0);
    }
}

/* ------------------------------------------------------- owner overflow */

/* Owners fill 23 bits of the count word (bit 23 marks shared credits,
 * hamt.c), borrow references the 8 above: the largest owner count a node
 * may reach leaves the mark and the borrow field of a source untouched,
 * and giving those owners back frees nothing early. */
static void test_owner_count_up_to_its_limit_keeps_the_borrow_field(void **state)
{
    (void)state;
    hamt_node *base = NULL;
    for (uint32_t i = 0; i < 4; i++)
        base = set(base, key(i), (long)i + 1);
    hamt_retain(base);
    hamt_node *c = with(base, keys[0], 100); /* one borrower */
    hamt_release(base);
    const unsigned more = (1u << 23) - 3; /* owners: 1 -> 2^23 - 2 */
    hamt_retain_n(base, more);
    hamt_shape sh = hamt_shape_at(base, "");
    assert_int_equal(sh.refcnt, (1u << 23) - 2);
    assert_int_equal(sh.borrowers, 1);
    assert_int_equal(hamt_check(base), 0);
    assert_int_equal(hamt_check(c), 0);
    hamt_release_n(base, more);
    sh = hamt_shape_at(base, "");
    assert_int_equal(sh.refcnt, 1);
    assert_int_equal(sh.borrowers, 1);
    assert_int_equal(tv_live(), 5);
    hamt_release(base);
    assert_int_equal(id_in(c, keys[1]), 2);
    hamt_release(c);
}

static void owner_overflow_child(void *arg)
{
    (void)arg;
    cctx_var *k = NULL;
    if (cctx__var_new_with_hash("k", &tv_ops, 1, &k) != CCTX_OK)
        return;
    hamt_node *root = NULL;
    tv_value *v = tv_new(1);
    if (hamt_assoc(NULL, k, v, &root) != CCTX_OK)
        return;
    hamt_retain_n(root, (1u << 23) - 3); /* the limit: still fine */
    hamt_retain(root);                   /* one more: must stop */
    _exit(3); /* reached only if the carry went unnoticed */
}

/* One owner past the limit stops the process (abort) instead of carrying
 * into the borrow field. */
static void test_owner_count_past_its_limit_stops_the_process(void **state)
{
    (void)state;
    int status = run_in_child(owner_overflow_child, NULL, 0);
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT)
        fail_msg("child: %s %d, want SIGABRT", WIFSIGNALED(status) ? "signal" : "exit status",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_in_place_write_on_a_key_source, setup, teardown),
        cmocka_unit_test_setup_teardown(test_context_in_place_writes_beside_a_borrowing_copy,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_and_reinsert_in_source_and_borrower, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_collision_node_under_a_borrowing_node, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_promotion_and_demotion_of_a_borrowing_node, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_release_callbacks_use_the_library_source_first,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_callbacks_use_the_library_borrower_first,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_copy_borrowers_while_the_source_goes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_thread_exit_with_borrowing_maps_alive, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_owner_count_up_to_its_limit_keeps_the_borrow_field,
                                        setup, teardown),
        cmocka_unit_test(test_owner_count_past_its_limit_stops_the_process),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cctx_thread_cleanup();
    return failed;
}
