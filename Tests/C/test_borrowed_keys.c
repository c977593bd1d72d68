/*
 * test_borrowed_keys.c — a path copy of a map node that another map still
 * reaches borrows the variables (keys) of that node instead of counting a
 * reference on each (hamt.c, "Borrowed keys"):
 *
 *   - cost: copying a shared node writes no variable's reference count,
 *     whatever the write (insert, replace, delete, re-insert of a borrowed
 *     key in place), at the root and below it; copies of copies borrow
 *     from the first source (one source per node, never a chain);
 *   - lifetime: a variable the user released lives exactly as long as a
 *     map that can read it, in every release order; values keep their
 *     lifetime (a value the copy replaced goes with the source's last
 *     owner); a source without owners is not passed on; a full borrow
 *     count falls back to owned keys;
 *   - stress: threads copying a shared base and writing their copies while
 *     the base's owner replaces its values, then releases the base and
 *     every variable while the copies still read them.
 *
 * Variables get fixed hashes (cctx__var_new_with_hash) so the trie's shape
 * is exact; the white-box parts drive hamt.c directly.
 */
#include "test_support.h"

#include "internal.h"

#include "context.h"

#include "hamt.h"
#include "hamt_maps.h"

#include <sched.h>
#include <string.h>

/* ------------------------------------------------------------- helpers */

enum { NKEYS = 20 };

static cctx_var *key_with_hash(uint32_t hash)
{
    cctx_var *v = NULL;
    assert_ok(cctx__var_new_with_hash("k", &tv_ops, hash, &v));
    return v;
}

/* The variable's references other than the calling thread's variable
 * credits (var.c): what its count was before credits existed. */
static unsigned var_count(const cctx_var *v)
{
    return cctx_load_uint_relaxed(&((cctx_var *)v)->refcnt) - cctx__var_credits(v);
}

/* A map binding keys[i] to a new value with id i + 1 (the map holds the
 * only reference to each value). */
static hamt_node *map_of(cctx_var **keys, int n)
{
    hamt_node *root = NULL;
    for (int i = 0; i < n; i++) {
        tv_value *v = tv_new(i + 1);
        hamt_node *next = NULL;
        assert_ok(hamt_assoc(root, keys[i], v, &next));
        hamt_release(root);
        tv_drop(v);
        root = next;
    }
    assert_int_equal(hamt_check(root), 0);
    return root;
}

/* keys[0..NKEYS) in fragments 0..19 of the root; two spare keys in
 * fragments 25 and 26, and one in fragment 3 one level down (hash 3 + 32). */
static cctx_var *keys[NKEYS + 3];
static long allocs_at_start;

static int setup(void **state)
{
    (void)state;
    allocs_at_start = cctx__live_allocations();
    for (int i = 0; i < NKEYS; i++)
        keys[i] = key_with_hash((uint32_t)i);
    keys[NKEYS] = key_with_hash(25);
    keys[NKEYS + 1] = key_with_hash(26);
    keys[NKEYS + 2] = key_with_hash(3 + 32);
    return 0;
}

/* Every variable is back to the user's one reference, no value is alive,
 * no allocation is left. */
static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < NKEYS + 3; i++) {
        if (keys[i] == NULL)
            continue;
        assert_int_equal(var_count(keys[i]), 1);
        cctx_var_release(keys[i]);
        keys[i] = NULL;
    }
    assert_int_equal(tv_live(), 0);
    assert_int_equal(cctx__live_allocations(), allocs_at_start);
    return 0;
}

static void assert_key_counts(int from, int to, unsigned expected)
{
    for (int i = from; i < to; i++)
        assert_int_equal(var_count(keys[i]), expected);
}

/* ---------------------------------------------------------------- cost */

static void test_copy_of_a_shared_root_counts_no_borrowed_key(void **state)
{
    (void)state;
    hamt_node *base = map_of(keys, NKEYS);
    hamt_retain(base); /* a second map holds it: shared */
    assert_key_counts(0, NKEYS, 2);

    hamt_node *c = with(base, keys[NKEYS], 100); /* insert */
    assert_key_counts(0, NKEYS, 2);              /* borrowed, not counted */
    assert_int_equal(var_count(keys[NKEYS]), 2); /* the new key is owned */
    assert_ptr_equal(hamt_shape_at(c, "").source, base);
    assert_int_equal(hamt_shape_at(base, "").borrowers, 1);
    assert_int_equal(hamt_shape_at(base, "").refcnt, 2); /* owners unchanged */

    hamt_node *d = with(base, keys[7], 107); /* replace: same key, same place */
    assert_key_counts(0, NKEYS, 2);
    assert_int_equal(hamt_shape_at(base, "").borrowers, 2);
    assert_int_equal(id_in(d, keys[7]), 107);
    assert_int_equal(id_in(base, keys[7]), 8);

    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(id_in(c, keys[i]), i + 1);
    hamt_release(c);
    hamt_release(d);
    assert_int_equal(hamt_shape_at(base, "").borrowers, 0);
    hamt_release(base);
    hamt_release(base);
}

/* The write goes one level down (fragment 3 holds a child after the
 * insert of hash 3 + 32); the child is reached from a shared root, so its
 * copy borrows from it although only one parent holds it. */
static void test_copy_below_a_shared_root_borrows_at_its_level(void **state)
{
    (void)state;
    hamt_node *base = map_of(keys, NKEYS);
    hamt_node *deep = with(base, keys[NKEYS + 2], 200); /* 3 and 35 in a child */
    hamt_release(base);
    hamt_retain(deep);
    hamt_shape child = hamt_shape_at(deep, "0");
    assert_int_equal(child.kind, 'b');
    assert_int_equal(child.entries, 2);
    assert_int_equal(child.refcnt, 1);
    unsigned k3 = var_count(keys[3]), k35 = var_count(keys[NKEYS + 2]);

    hamt_node *c = with(deep, keys[NKEYS + 2], 201); /* replace in the child */
    assert_int_equal(var_count(keys[3]), k3);
    assert_int_equal(var_count(keys[NKEYS + 2]), k35);
    assert_ptr_equal(hamt_shape_at(c, "").source, deep); /* its root */
    assert_non_null(hamt_shape_at(c, "0").source);
    assert_ptr_not_equal(hamt_shape_at(c, "0").source, deep);
    assert_int_equal(hamt_shape_at(deep, "0").borrowers, 1);
    assert_int_equal(id_in(c, keys[NKEYS + 2]), 201);
    assert_int_equal(id_in(deep, keys[NKEYS + 2]), 200);

    hamt_release(deep);
    hamt_release(deep); /* the source child's owners are gone first */
    assert_int_equal(id_in(c, keys[3]), 4);
    hamt_release(c);
}

/* A value replaced in a shared root that also holds a child (the copy
 * path that skips the general rebuild, bitmap_replace_lent): the copy
 * shares the child (one owner more on it), borrows every key of the root,
 * and each map keeps its own values and releases them with its last owner,
 * whatever the order. */
static void test_replace_in_a_shared_root_with_a_child(void **state)
{
    (void)state;
    hamt_node *base = map_of(keys, NKEYS);
    hamt_node *deep = with(base, keys[NKEYS + 2], 200); /* 3 and 35 in a child */
    hamt_release(base);
    hamt_retain(deep); /* a second map holds it: shared */
    assert_int_equal(hamt_shape_at(deep, "").children, 1);
    assert_int_equal(hamt_shape_at(deep, "0").refcnt, 1);
    unsigned k3 = var_count(keys[3]), k35 = var_count(keys[NKEYS + 2]);
    const long live = tv_live();

    hamt_node *c = with(deep, keys[7], 107); /* replace at the root */
    assert_int_equal(hamt_check(c), 0);
    assert_ptr_equal(hamt_shape_at(c, "").source, deep);
    assert_int_equal(hamt_shape_at(deep, "").borrowers, 1);
    assert_int_equal(hamt_shape_at(c, "").datamap, hamt_shape_at(deep, "").datamap);
    assert_int_equal(hamt_shape_at(c, "").nodemap, hamt_shape_at(deep, "").nodemap);
    assert_int_equal(hamt_shape_at(c, "").size, hamt_shape_at(deep, "").size);
    assert_int_equal(hamt_shape_at(deep, "0").refcnt, 2); /* shared child */
    assert_key_counts(0, 3, 2);                           /* borrowed */
    assert_key_counts(4, NKEYS, 2);
    assert_int_equal(var_count(keys[3]), k3);
    assert_int_equal(var_count(keys[NKEYS + 2]), k35);
    assert_int_equal(tv_live(), live + 1);
    assert_int_equal(id_in(c, keys[7]), 107);
    assert_int_equal(id_in(c, keys[NKEYS + 2]), 200);
    assert_int_equal(id_in(deep, keys[7]), 8);

    hamt_release(deep);
    hamt_release(deep); /* the source's owners go first */
    assert_int_equal(tv_live(), live);             /* its id 8 went with it */
    assert_int_equal(hamt_shape_at(c, "0").refcnt, 1);
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(id_in(c, keys[i]), i == 7 ? 107 : i + 1);
    assert_int_equal(id_in(c, keys[NKEYS + 2]), 200);
    hamt_release(c);

    /* The other order: the copy goes first, the source keeps its values. */
    base = map_of(keys, NKEYS);
    hamt_retain(base);
    c = with(base, keys[0], 101);
    hamt_release(c);
    assert_int_equal(hamt_shape_at(base, "").borrowers, 0);
    assert_int_equal(id_in(base, keys[0]), 1);
    hamt_release(base);
    hamt_release(base);
}

/* The copy a withValue scope makes of a one-entry context: a leaf of one
 * entry that borrows its key from the shared root it replaced the value
 * of (bitmap_replace_lent's two-slot copy), and its free at the scope's
 * end (leaf_free_borrowing: the walk's steps without its loops). In both
 * release orders each map keeps its own value, the key is never counted
 * (borrowed) and is released with its last map; and a one-entry leaf whose
 * key its source does not hold (a copy of a copy that deleted the
 * borrowed key) counts and releases that key itself. */
static void test_one_entry_copy_of_a_shared_root(void **state)
{
    (void)state;
    const long allocs = cctx__live_allocations();
    /* The copy goes first. */
    hamt_node *base = map_of(keys, 1);
    hamt_retain(base); /* a second map holds it: shared */
    hamt_node *c = with(base, keys[0], 101);
    assert_int_equal(hamt_check(c), 0);
    assert_int_equal(hamt_shape_at(c, "").entries, 1);
    assert_ptr_equal(hamt_shape_at(c, "").source, base);
    assert_int_equal(hamt_shape_at(base, "").borrowers, 1);
    assert_int_equal(var_count(keys[0]), 2); /* the base's and the user's */
    assert_int_equal(id_in(c, keys[0]), 101);
    assert_int_equal(id_in(base, keys[0]), 1);
    assert_int_equal(tv_live(), 2);
    hamt_release(c);
    assert_int_equal(tv_live(), 1);
    assert_int_equal(hamt_shape_at(base, "").borrowers, 0);
    assert_int_equal(var_count(keys[0]), 2);
    assert_int_equal(id_in(base, keys[0]), 1);
    hamt_release(base);
    hamt_release(base);
    assert_int_equal(tv_live(), 0);
    assert_int_equal(cctx__live_allocations(), allocs);

    /* The source's owners go first, then the user's variable: the copy's
     * borrow keeps the key; its free releases the source's memory and the
     * variable (itself and its name). */
    base = map_of(keys, 1);
    hamt_retain(base);
    c = with(base, keys[0], 101);
    hamt_release(base);
    hamt_release(base);
    assert_int_equal(tv_live(), 1); /* the base's value went with it */
    const long before = cctx__live_allocations();
    cctx_var_release(keys[0]);
    assert_true(var_is_valid(keys[0]));
    assert_int_equal(cctx__live_allocations(), before);
    assert_int_equal(id_in(c, keys[0]), 101);
    hamt_release(c);
    assert_int_equal(tv_live(), 0);
    assert_int_equal(cctx__live_allocations(), before - 2 - 2);
    keys[0] = key_with_hash(0); /* for the teardown */

    /* A one-entry leaf borrowing from a source that lacks its key. */
    base = map_of(keys, 1);
    hamt_retain(base);
    hamt_node *c1 = with(base, keys[1], 100);
    hamt_retain(c1); /* shared too: the delete copies it */
    hamt_node *d = without(c1, keys[0]);
    assert_int_equal(hamt_check(d), 0);
    assert_int_equal(hamt_shape_at(d, "").entries, 1);
    assert_ptr_equal(hamt_shape_at(d, "").source, base);
    assert_int_equal(var_count(keys[1]), 3); /* owned by c1 and d */
    hamt_release(c1);
    hamt_release(c1);
    assert_int_equal(var_count(keys[1]), 2);
    assert_int_equal(id_in(d, keys[1]), 100);
    hamt_release(d);
    assert_int_equal(var_count(keys[1]), 1);
    assert_int_equal(hamt_shape_at(base, "").borrowers, 0);
    hamt_release(base);
    hamt_release(base);
    assert_int_equal(tv_live(), 0);
}

/* The one-entry borrowing leaf's free (leaf_free_borrowing) when its
 * value's release callback lets go of everything else first: the source's
 * two owners and the user's variable, from inside the free. The source's
 * keys must outlive the borrowing rule's look at them (the leaf's borrow
 * keeps them), the variable must go exactly once — with the source's keys,
 * at the leaf's borrow release — and nothing may leak. (Review, session
 * 11: held.) */
static hamt_node *reentrant_base;

static void release_base_and_key(tv_value *value, void *arg)
{
    (void)value;
    cctx_var *key = arg;
    hamt_release(reentrant_base); /* the source's owners: its value goes */
    hamt_release(reentrant_base);
    assert_true(var_is_valid(key));
    cctx_var_release(key); /* the user's reference: the source's keeps it */
    assert_true(var_is_valid(key));
}

static void test_one_entry_copy_freed_by_a_callback_that_drops_the_rest(void **state)
{
    (void)state;
    const long allocs = cctx__live_allocations();
    reentrant_base = map_of(keys, 1);
    hamt_retain(reentrant_base);
    tv_value *x = tv_new_hooked(101, release_base_and_key, keys[0]);
    hamt_node *c = NULL;
    assert_ok(hamt_assoc(reentrant_base, keys[0], x, &c));
    tv_drop(x);
    assert_ptr_equal(hamt_shape_at(c, "").source, reentrant_base);
    hamt_release(c); /* the callback runs inside the leaf's free */
    assert_int_equal(tv_live(), 0);
    keys[0] = key_with_hash(0); /* for the teardown: the old one is gone */
    assert_int_equal(cctx__live_allocations(), allocs); /* the old variable went, a new one came */
}

/* Deleting a borrowed key and putting it back at its place: no reference
 * count moves, nothing leaks, nothing is dropped twice (valgrind, ASan). */
static void test_delete_and_reinsert_of_a_borrowed_key(void **state)
{
    (void)state;
    hamt_node *base = map_of(keys, NKEYS);
    hamt_retain(base);
    hamt_node *c1 = with(base, keys[NKEYS], 100);
    hamt_node *c2 = without(c1, keys[5]); /* c1 is not shared, but borrows */
    assert_ptr_equal(hamt_shape_at(c2, "").source, base);
    assert_key_counts(0, NKEYS, 2);
    hamt_node *c3 = with(c2, keys[5], 105); /* back at its fragment */
    assert_ptr_equal(hamt_shape_at(c3, "").source, base);
    assert_key_counts(0, NKEYS, 2);
    hamt_node *c4 = without(c3, keys[NKEYS]); /* the owned key goes */
    assert_int_equal(var_count(keys[NKEYS]), 1 + 3); /* c1, c2, c3 own it */
    assert_int_equal(id_in(c4, keys[5]), 105);
    assert_int_equal(id_in(c2, keys[5]), -1);

    hamt_release(c1);
    hamt_release(base);
    hamt_release(base); /* source first */
    assert_int_equal(id_in(c3, keys[0]), 1);
    hamt_release(c2);
    hamt_release(c4);
    hamt_release(c3);
}

/* A copy of a borrowing node borrows from the same source, in every
 * release order of the three maps. */
static void test_copies_of_copies_borrow_from_the_first_source(void **state)
{
    (void)state;
    static const int orders[6][3] = { { 0, 1, 2 }, { 0, 2, 1 }, { 1, 0, 2 },
                                      { 1, 2, 0 }, { 2, 0, 1 }, { 2, 1, 0 } };
    for (int o = 0; o < 6; o++) {
        hamt_node *base = map_of(keys, NKEYS);
        hamt_retain(base);
        hamt_node *c1 = with(base, keys[NKEYS], 100);
        hamt_retain(c1); /* c1 shared too */
        hamt_node *c2 = with(c1, keys[NKEYS + 1], 101);
        assert_ptr_equal(hamt_shape_at(c2, "").source, base); /* not c1 */
        assert_int_equal(hamt_shape_at(base, "").borrowers, 2);
        assert_int_equal(hamt_shape_at(c1, "").borrowers, 0);
        assert_key_counts(0, NKEYS, 2);
        assert_int_equal(var_count(keys[NKEYS]), 3); /* owned by c1 and c2 */
        hamt_release(base);
        hamt_release(c1);
        hamt_node *maps[3] = { base, c1, c2 };
        for (int k = 0; k < 3; k++) {
            hamt_release(maps[orders[o][k]]);
            for (int j = k + 1; j < 3; j++) { /* the others still read all */
                hamt_node *m = maps[orders[o][j]];
                for (int i = 0; i < NKEYS; i++)
                    assert_int_equal(id_in(m, keys[i]), i + 1);
                assert_int_equal(hamt_check(m), 0);
            }
        }
        assert_int_equal(tv_live(), 0);
        assert_key_counts(0, NKEYS + 2, 1);
    }
}

/* ------------------------------------------------------------ lifetime */

/* The user releases every variable while only a borrowing map reaches
 * them (the source has no owner left): they stay valid and readable, each
 * held once (by the source's keys), and are freed exactly when the last
 * map goes. */
static void test_released_variables_live_while_a_borrowing_map_reads_them(void **state)
{
    (void)state;
    hamt_node *base = map_of(keys, NKEYS);
    hamt_retain(base);
    hamt_node *c = with(base, keys[NKEYS], 100);
    hamt_release(base);
    hamt_release(base); /* owners gone: the values only c holds remain */
    assert_int_equal(tv_live(), NKEYS + 1);
    long before = cctx__live_allocations();
    for (int i = 0; i < NKEYS; i++) {
        cctx_var_release(keys[i]);
        assert_true(var_is_valid(keys[i]));
        assert_int_equal(var_count(keys[i]), 1); /* the source's, once */
    }
    assert_int_equal(cctx__live_allocations(), before); /* nothing freed */
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(id_in(c, keys[i]), i + 1);
    hamt_release(c);
    /* c, the source's memory, and each variable (itself and its name). */
    assert_int_equal(cctx__live_allocations(), before - 2 - 2 * NKEYS);
    for (int i = 0; i < NKEYS; i++)
        keys[i] = NULL; /* freed */
}

/* Values keep their lifetime: the value a copy replaced (or deleted) is
 * released with the source's last owner, although the copy still borrows
 * the source's keys. */
static void test_replaced_value_goes_with_the_last_map_that_binds_it(void **state)
{
    (void)state;
    hamt_node *base = map_of(keys, NKEYS);
    hamt_retain(base);
    hamt_node *c = with(base, keys[4], 104);
    hamt_node *d = without(c, keys[9]); /* borrows from base as well */
    hamt_release(c);
    assert_ptr_equal(hamt_shape_at(d, "").source, base);
    assert_int_equal(tv_live(), NKEYS + 1);
    hamt_release(base);
    assert_int_equal(tv_live(), NKEYS + 1);
    hamt_release(base);
    /* The base's values of keys 4 (id 5) and 9 (id 10) went with it. */
    assert_int_equal(tv_live(), NKEYS - 1);
    assert_int_equal(id_in(d, keys[4]), 104);
    assert_int_equal(id_in(d, keys[9]), -1);
    assert_int_equal(id_in(d, keys[10]), 11);
    hamt_release(d);
}

/* What borrowing does change: a variable lives until the last map that
 * borrows from a node holding it goes, even a map that deleted it — and
 * with it the variable's default value (released when the variable is
 * freed). Bounded by that map's life; a value bound in a map is never
 * kept so. */
static void test_deleted_variable_and_its_default_live_until_the_borrower_goes(void **state)
{
    (void)state;
    tv_value *dv = tv_new(77);
    /* A level-0 fragment the base's keys leave free. The hash comes from
     * the address, so rejected variables stay alive until one fits (each
     * try fits with probability 10/32). */
    cctx_var *d = NULL, *rejected[64];
    int nrejected = 0;
    for (;;) {
        assert_ok(cctx_var_new_with_default("d", &tv_ops, dv, &d));
        uint32_t f = cctx__var_hash(d) & 31;
        if (f >= NKEYS && f != 25 && f != 26)
            break;
        assert_true(nrejected < 64);
        rejected[nrejected++] = d;
    }
    for (int i = 0; i < nrejected; i++)
        cctx_var_release(rejected[i]);
    tv_drop(dv); /* the variable holds its default */
    hamt_node *base0 = map_of(keys, NKEYS);
    hamt_node *base = with(base0, d, 300);
    hamt_release(base0);
    hamt_retain(base);
    hamt_node *c = without(base, d);
    assert_ptr_equal(hamt_shape_at(c, "").source, base);
    hamt_release(base);
    hamt_release(base); /* the value 300 goes with the base... */
    assert_int_equal(tv_live(), NKEYS + 1);
    cctx_var_release(d); /* ...the variable and its default stay */
    assert_int_equal(var_count(d), 1);
    assert_int_equal(tv_live(), NKEYS + 1);
    hamt_release(c); /* the base's keys go with c: d, then its default */
    assert_int_equal(tv_live(), 0);
}

/* A source whose owners are gone is not passed on: the next copy owns
 * its keys, and the old source goes with the last node that borrows it. */
static void test_orphaned_source_is_not_passed_on(void **state)
{
    (void)state;
    hamt_node *base = map_of(keys, NKEYS);
    hamt_retain(base);
    hamt_node *c1 = with(base, keys[NKEYS], 100);
    hamt_release(base);
    hamt_release(base);
    hamt_node *c2 = with(c1, keys[NKEYS + 1], 101);
    assert_null(hamt_shape_at(c2, "").source);
    assert_key_counts(0, NKEYS, 3); /* the user's, the source's and c2's */
    long before = cctx__live_allocations();
    hamt_release(c1);
    assert_int_equal(cctx__live_allocations(), before - 2); /* c1 and the source */
    assert_key_counts(0, NKEYS, 2);
    hamt_release(c2);
}

/* At most 254 nodes borrow from one source; later copies own their keys
 * (the count field is 8 bits), and everything is released once. */
static void test_full_borrow_count_falls_back_to_owned_keys(void **state)
{
    (void)state;
    enum { COPIES = 300, BORROWERS_MAX = 254 };
    hamt_node *base = map_of(keys, NKEYS);
    hamt_retain(base);
    hamt_node **copies = calloc(COPIES, sizeof(*copies));
    assert_non_null(copies);
    for (int i = 0; i < COPIES; i++) {
        copies[i] = with(base, keys[i % NKEYS], 1000 + i);
        bool borrows = hamt_shape_at(copies[i], "").source == base;
        assert_int_equal(borrows, i < BORROWERS_MAX);
    }
    assert_int_equal(hamt_shape_at(base, "").borrowers, BORROWERS_MAX);
    /* Each copy that borrows holds its replaced key through the source as
     * well (same key, same place); each that does not owns all 20. */
    assert_key_counts(0, NKEYS, 2 + (COPIES - BORROWERS_MAX));
    hamt_release(base);
    for (int i = 0; i < COPIES; i += 2)
        hamt_release(copies[i]);
    hamt_release(base);
    for (int i = 1; i < COPIES; i += 2)
        hamt_release(copies[i]);
    free(copies);
}

/* -------------------------------------------------------------- stress */

enum { STRESS_VARS = 24, STRESS_WORKERS = 4 };

struct stress_round {
    cctx_var *vars[STRESS_VARS + STRESS_WORKERS];
    cctx_context *base;
    pthread_barrier_t copied;
};

struct stress_worker {
    struct stress_round *round;
    int index;
    uint64_t rng;
};

static void *stress_worker_run(void *p)
{
    struct stress_worker *w = p;
    struct stress_round *r = w->round;
    cctx_var *own = r->vars[STRESS_VARS + w->index];
    cctx_context *c = NULL;
    T_CHECK(cctx_context_copy(r->base, &c) == CCTX_OK);
    T_CHECK(cctx_context_enter(c) == CCTX_OK);
    tv_value *a = tv_new(-1 - w->index);
    T_CHECK(cctx_var_set(own, a, NULL) == CCTX_OK); /* the copy borrows */
    tv_drop(a);
    const int gone = (int)(rng_next(&w->rng) % STRESS_VARS);
    T_CHECK(cctx_context_delete(c, r->vars[gone]) == CCTX_OK);
    /* Copied: from here on the base's owner may release the base and
     * every variable; this copy reaches all but `gone`. */
    pthread_barrier_wait(&r->copied);
    long set_ids[STRESS_VARS] = { 0 }; /* 0: still the base's value */
    for (int round = 0; round < 8; round++) {
        for (int i = 0; i < STRESS_VARS; i++) {
            if (i == gone)
                continue;
            void *out = NULL;
            T_CHECK(cctx_var_get(r->vars[i], &out) == CCTX_OK && out != NULL);
            if (out == NULL)
                continue;
            long id = ((tv_value *)out)->id;
            T_CHECK(set_ids[i] != 0 ? id == set_ids[i] : id >= 1);
        }
        int k = (int)(rng_next(&w->rng) % STRESS_VARS);
        if (k != gone) {
            set_ids[k] = -100 - round;
            tv_value *b = tv_new(set_ids[k]);
            T_CHECK(cctx_var_set(r->vars[k], b, NULL) == CCTX_OK);
            tv_drop(b);
        }
        T_CHECK(cctx__context_check(c) == 0);
    }
    T_CHECK(cctx_context_exit(c) == CCTX_OK);
    cctx_context_release(c);
    return NULL;
}

static void test_threads_read_variables_the_owner_released(void **state)
{
    (void)state;
    long allocs = cctx__live_allocations();
    uint64_t rng = 0xB0220E5u;
    const long rounds = scaled(300);
    for (long n = 0; n < rounds; n++) {
        struct stress_round r;
        for (int i = 0; i < STRESS_VARS + STRESS_WORKERS; i++)
            assert_ok(cctx__var_new_with_hash("s", &tv_ops, (uint32_t)rng_next(&rng),
                                              &r.vars[i]));
        assert_ok(cctx_context_new(&r.base));
        for (int i = 0; i < STRESS_VARS; i++) {
            tv_value *v = tv_new(i + 1);
            assert_ok(cctx_context_set(r.base, r.vars[i], v, NULL));
            tv_drop(v);
        }
        assert_int_equal(pthread_barrier_init(&r.copied, NULL, STRESS_WORKERS + 1), 0);
        pthread_t t[STRESS_WORKERS];
        struct stress_worker ws[STRESS_WORKERS];
        for (int i = 0; i < STRESS_WORKERS; i++) {
            ws[i] = (struct stress_worker){ &r, i, rng_next(&rng) | 1 };
            assert_int_equal(pthread_create(&t[i], NULL, stress_worker_run, &ws[i]), 0);
        }
        /* The owner keeps replacing the base's values while the workers
         * copy it, then waits for their copies and lets go of everything. */
        for (int i = 0; i < 16; i++) {
            tv_value *v = tv_new(1000 + i);
            assert_ok(cctx_context_set(r.base, r.vars[i % STRESS_VARS], v, NULL));
            tv_drop(v);
        }
        pthread_barrier_wait(&r.copied);
        cctx_context_release(r.base);
        for (int i = 0; i < STRESS_VARS + STRESS_WORKERS; i++)
            cctx_var_release(r.vars[i]);
        for (int i = 0; i < STRESS_WORKERS; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_destroy(&r.copied);
        assert_int_equal(thread_failures(), 0);
        assert_ok(cctx_thread_cleanup());
        assert_int_equal(tv_live(), 0);
    }
    if (allocs >= 0)
        assert_int_equal(cctx__live_allocations(), allocs);
}


/*
 * The ordering of an in-place write after another thread's last read of
 * the node (hamt_value_slot_if_unique). A depth-1 node is shared by the
 * roots of two copies of a base; thread A reads a value in it through its
 * copy and drops the copy (the node's count falls to 1); thread B, told so
 * only through a relaxed flag (no lock, barrier or join: nothing that
 * would order A's read before B's write for ThreadSanitizer), overwrites
 * the same value in place in its copy. The write is correct only if B's
 * check of the node's count (an acquire load reading A's release
 * decrement) orders A's read before it; with a relaxed load of the count
 * `make c-tsan` reports the read and the store as a data race, every run.
 */
struct in_place_after_read {
    cctx_context *ctx;
    cctx_var *var;
    unsigned *released; /* relaxed flag: A let go */
};

static void *in_place_reader(void *p)
{
    struct in_place_after_read *a = p;
    T_CHECK(cctx_context_enter(a->ctx) == CCTX_OK);
    void *out = NULL;
    T_CHECK(cctx_var_get(a->var, &out) == CCTX_OK && out != NULL &&
            ((tv_value *)out)->id == 1); /* reads the shared node's slot */
    T_CHECK(cctx_context_exit(a->ctx) == CCTX_OK);
    cctx_context_release(a->ctx); /* the last reference to its root */
    __atomic_store_n(a->released, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void *in_place_writer(void *p)
{
    struct in_place_after_read *b = p;
    T_CHECK(cctx_context_enter(b->ctx) == CCTX_OK);
    tv_value *v = tv_new(4);
    const hamt_node *root = context_own_root(b->ctx);
    while (__atomic_load_n(b->released, __ATOMIC_RELAXED) == 0)
        sched_yield();
    T_CHECK(cctx_var_set(b->var, v, NULL) == CCTX_OK);
    tv_drop(v);
    /* In place: no path copy made a new root. */
    T_CHECK(context_own_root(b->ctx) == root);
    void *out = NULL;
    T_CHECK(cctx_var_get(b->var, &out) == CCTX_OK && out != NULL &&
            ((tv_value *)out)->id == 4);
    T_CHECK(cctx__context_check(b->ctx) == 0);
    T_CHECK(cctx_context_exit(b->ctx) == CCTX_OK);
    cctx_context_release(b->ctx);
    return NULL;
}

static void test_in_place_write_after_another_threads_last_read(void **state)
{
    (void)state;
    long allocs = cctx__live_allocations();
    for (long n = 0; n < scaled(20) + 1; n++) {
        /* a and b share the root's fragment 1 (a child node at depth 1);
         * c is at fragment 2. */
        cctx_var *a = key_with_hash(1), *b = key_with_hash(1 + 32), *c = key_with_hash(2);
        cctx_context *base = NULL, *ca = NULL, *cb = NULL;
        assert_ok(cctx_context_new(&base));
        for (int i = 0; i < 2; i++) {
            tv_value *v = tv_new(i + 1);
            assert_ok(cctx_context_set(base, i == 0 ? a : b, v, NULL));
            tv_drop(v);
        }
        assert_ok(cctx_context_copy(base, &ca));
        assert_ok(cctx_context_copy(base, &cb));
        tv_value *v = tv_new(3);
        assert_ok(cctx_context_set(cb, c, v, NULL)); /* a new root, same child */
        tv_drop(v);
        assert_ptr_not_equal(context_own_root(cb), context_own_root(ca));
        cctx_context_release(base); /* ca's root and cb's root share the child */
        unsigned released = 0;
        struct in_place_after_read ra = { ca, a, &released }, rb = { cb, a, &released };
        pthread_t ta, tb;
        assert_int_equal(pthread_create(&tb, NULL, in_place_writer, &rb), 0);
        assert_int_equal(pthread_create(&ta, NULL, in_place_reader, &ra), 0);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        assert_int_equal(thread_failures(), 0);
        cctx_var_release(a);
        cctx_var_release(b);
        cctx_var_release(c);
        assert_ok(cctx_thread_cleanup());
        assert_int_equal(tv_live(), 0);
    }
    if (allocs >= 0)
        assert_int_equal(cctx__live_allocations(), allocs);
}


/* ------------------------------------------------- random model check */

/*
 * Maps that share nodes are copied, written (insert, replace of a key the
 * shared node holds — the lent replace path — and delete) and released in
 * a random order, against a model of what each map binds. After every step
 * each map reads as its model, and the values alive are exactly those some
 * live map binds (a value replaced in a copy lives while a map still binds
 * it, and no longer).
 */
enum { RANDOM_MAPS = 6, RANDOM_KEYS = NKEYS + 3 };

struct random_map {
    hamt_node *root; /* NULL: empty map (also a valid root) */
    long ids[RANDOM_KEYS]; /* -1: unbound */
    bool live;
};

static long distinct_bound_values(const struct random_map *maps)
{
    long seen = 0;
    for (int m = 0; m < RANDOM_MAPS; m++) {
        if (!maps[m].live)
            continue;
        for (int k = 0; k < RANDOM_KEYS; k++) {
            long id = maps[m].ids[k];
            if (id < 0)
                continue;
            bool earlier = false;
            for (int m2 = 0; m2 < m && !earlier; m2++)
                for (int k2 = 0; k2 < RANDOM_KEYS && !earlier; k2++)
                    earlier = maps[m2].live && maps[m2].ids[k2] == id;
            for (int k2 = 0; k2 < k && !earlier; k2++)
                earlier = maps[m].ids[k2] == id;
            seen += !earlier;
        }
    }
    return seen;
}

static void random_map_drop(struct random_map *map)
{
    if (map->live)
        hamt_release(map->root);
    map->live = false;
    map->root = NULL;
}

static void test_random_copies_replaces_and_releases_match_a_model(void **state)
{
    (void)state;
    uint64_t rng = 0x5eed0c0ffee1234ull;
    struct random_map maps[RANDOM_MAPS] = {0};
    long next_id = 1000;
    const int steps = scaled(20000);
    for (int step = 0; step < steps; step++) {
        struct random_map *a = &maps[rng_next(&rng) % RANDOM_MAPS];
        struct random_map *b = &maps[rng_next(&rng) % RANDOM_MAPS];
        unsigned k = (unsigned)(rng_next(&rng) % RANDOM_KEYS);
        switch (rng_next(&rng) % 8) {
        case 0: /* a copy of b in a (shares every node) */
            if (a == b || !b->live)
                break;
            random_map_drop(a);
            hamt_retain(b->root);
            *a = *b;
            break;
        case 1: /* release */
            random_map_drop(a);
            break;
        case 2: /* delete a bound key */
            if (!a->live || a->ids[k] < 0)
                break;
            {
                hamt_node *next = without(a->root, keys[k]);
                hamt_release(a->root);
                a->root = next;
                a->ids[k] = -1;
            }
            break;
        default: /* insert or replace (mostly replace once maps fill) */
            if (!a->live) {
                a->live = true;
                a->root = NULL;
                for (int i = 0; i < RANDOM_KEYS; i++)
                    a->ids[i] = -1;
            }
            {
                hamt_node *next = with(a->root, keys[k], next_id);
                hamt_release(a->root);
                a->root = next;
                a->ids[k] = next_id++;
            }
            break;
        }
        for (int m = 0; m < RANDOM_MAPS; m++) {
            if (!maps[m].live)
                continue;
            assert_int_equal(hamt_check(maps[m].root), 0);
            for (int i = 0; i < RANDOM_KEYS; i++)
                assert_int_equal(id_in(maps[m].root, keys[i]), maps[m].ids[i]);
        }
        assert_int_equal(tv_live(), distinct_bound_values(maps));
    }
    for (int m = 0; m < RANDOM_MAPS; m++)
        random_map_drop(&maps[m]);
    assert_int_equal(tv_live(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_copy_of_a_shared_root_counts_no_borrowed_key,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_copy_below_a_shared_root_borrows_at_its_level,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_and_reinsert_of_a_borrowed_key, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_copies_of_copies_borrow_from_the_first_source,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_released_variables_live_while_a_borrowing_map_reads_them, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_replaced_value_goes_with_the_last_map_that_binds_it, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_deleted_variable_and_its_default_live_until_the_borrower_goes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_orphaned_source_is_not_passed_on, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replace_in_a_shared_root_with_a_child, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_entry_copy_of_a_shared_root, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_entry_copy_freed_by_a_callback_that_drops_the_rest,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_borrow_count_falls_back_to_owned_keys, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_random_copies_replaces_and_releases_match_a_model,
                                        setup, teardown),
        cmocka_unit_test(test_threads_read_variables_the_owner_released),
        cmocka_unit_test(test_in_place_write_after_another_threads_last_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
