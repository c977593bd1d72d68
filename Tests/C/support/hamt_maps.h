/*
 * hamt_maps.h — the persistent-map steps the HAMT tests share: a map with
 * one more binding, one binding fewer, and the id of a bound tv_value.
 * Each result passes the structural check (hamt_check) before it is
 * returned. Include after test_support.h and the core's hamt.h.
 */
#ifndef CCTX_TEST_HAMT_MAPS_H
#define CCTX_TEST_HAMT_MAPS_H

/* A new map: `root` (borrowed) with `key` bound to a new tv_value `id`. */
static inline hamt_node *with(hamt_node *root, cctx_var *key, long id)
{
    tv_value *v = tv_new(id);
    hamt_node *out = NULL;
    assert_ok(hamt_assoc(root, key, v, &out));
    tv_drop(v);
    assert_int_equal(hamt_check(out), 0);
    return out;
}

/* A new map: `root` (borrowed) without `key`. */
static inline hamt_node *without(hamt_node *root, cctx_var *key)
{
    hamt_node *out = NULL;
    assert_ok(hamt_without(root, key, &out));
    assert_int_equal(hamt_check(out), 0);
    return out;
}

/* The id of the tv_value bound to `key` in `root`, or -1 when unbound. */
static inline long id_in(const hamt_node *root, const cctx_var *key)
{
    void *out = NULL;
    if (!hamt_find(root, key, &out))
        return -1;
    return ((tv_value *)out)->id;
}

#endif
