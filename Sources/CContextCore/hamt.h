/*
 * hamt.h — a persistent hash array mapped trie from cctx_var* to void*.
 *
 * The map behind every context. A map is a root node pointer; NULL is the
 * empty map. Maps never change: assoc/without return a new root that shares
 * every untouched node with the old one (path copying), so any number of
 * contexts, copies, snapshots and iterators can hold roots at once.
 *
 * Reference rules (every function states which applies):
 * - Nodes are reference counted with ck_pr atomics; a root handed out as a
 *   "new reference" is released with hamt_release.
 * - An entry retains its key (var_ref) and its value (the key's retain
 *   callback). Freeing a node releases what its entries retained.
 * - hamt_* never frees memory another thread could be reading: callers
 *   that publish roots to other threads (context.c) defer releases through
 *   reclaim.c.
 * - Allocation failure returns CCTX_ENOMEM and leaves every map unchanged.
 */
#ifndef CCTX_HAMT_H
#define CCTX_HAMT_H

#ifndef CCTX_BUILDING_CORE
#error "hamt.h is internal to CContextCore"
#endif

#include "var.h"

#include <stdio.h>

typedef struct hamt_node hamt_node;

/* Maximum depth of a path: 7 levels of 5 hash bits (32-bit hash) plus one
 * collision node. */
#define HAMT_MAX_DEPTH 8

/* Adds a reference to `root` (NULL is ignored). */
void hamt_retain(hamt_node *root) CCTX_HIDDEN;

/* Drops a reference; frees nodes that reach zero, releasing the keys and
 * values of their entries. NULL is ignored. */
void hamt_release(hamt_node *root) CCTX_HIDDEN;
/* hamt_retain/hamt_release of `n` references at once (one locked
 * instruction; none for n == 0 or a NULL root). */
void hamt_retain_n(hamt_node *root, unsigned n) CCTX_HIDDEN;
void hamt_release_n(hamt_node *root, unsigned n) CCTX_HIDDEN;

/*
 * Shared credits (hamt.c): references to one root that this thread took in
 * a batch and lends to its copies of a context that holds the root, so
 * that copying a shared base and releasing the copy write no line another
 * thread writes. A reference lent from the credits is a *loan*; everything
 * else is a counted reference, released with hamt_release (which takes
 * every thread's credits for the node back first).
 *
 * hamt_credit_take     a loan from this thread's credits if they are for
 *                      `root` (true), else nothing (false)
 * hamt_credit_retain   one reference to `root`, which the caller reads
 *                      under a hazard pointer from a context holding a
 *                      counted reference to it: true when it is a loan and
 *                      a batch of credits came with it — then call
 *                      hamt_credit_install(root) once outside the read;
 *                      false: a counted reference
 * hamt_credit_give     gives a loan back (to the credits, or dropped)
 * hamt_credits_forget  gives this thread's credits for `root` back (before
 *                      an in-place write, which they would make look
 *                      shared)
 * hamt_credits_flush   gives all of this thread's credits back (true if
 *                      it held any); `last`: the thread's teardown, the
 *                      slot is reused by a later thread
 * hamt_credits_atfork_child  in a fork child's handler: the slots of the
 *                      threads that did not survive become reusable once
 *                      revocation in the child has emptied them
 *                      (thread_line.h, ORPHANED)
 * Giving back may release values (their callbacks run): never call these
 * but take, retain and install inside a read.
 */
bool hamt_credit_take(hamt_node *root) CCTX_HIDDEN;
bool hamt_credit_retain(hamt_node *root) CCTX_HIDDEN;
void hamt_credit_install(hamt_node *root) CCTX_HIDDEN;
void hamt_credit_give(hamt_node *root) CCTX_HIDDEN;
void hamt_credits_forget(const hamt_node *root) CCTX_HIDDEN;
bool hamt_credits_flush(bool last) CCTX_HIDDEN;
void hamt_credits_atfork_child(void) CCTX_HIDDEN;

/* Frees the calling thread's cache of small nodes (its teardown, after its
 * state is detached). */
void hamt_node_cache_drain(void) CCTX_HIDDEN;

/* Number of entries, O(1). Borrows `root`. */
size_t hamt_count(const hamt_node *root) CCTX_HIDDEN;

/* Finds `key`: true with `*value` borrowed (valid while `root` lives), or
 * false. Borrows `root`. */
bool hamt_find(const hamt_node *root, const cctx_var *key, void **value) CCTX_HIDDEN;
/* hamt_find with `key`'s hash given by the caller, so that `key` is only
 * compared, never read (cctx_context_peek). A hash that is not `key`'s
 * finds nothing. */
bool hamt_find_hashed(const hamt_node *root, uint32_t hash, const cctx_var *key,
                      void **value) CCTX_HIDDEN;

/* True when `root` has exactly one reference (acquire load). */
bool hamt_is_unique(const hamt_node *root) CCTX_HIDDEN;

/* The value slot of `key` in `root` when every node on its path is
 * uniquely owned (reference count 1), else NULL: the one place a map is
 * changed in place. Only context.c calls it, under its in-place handshake;
 * the caller stores the new value (retained) and releases the old one. */
void **hamt_value_slot_if_unique(hamt_node *root, const cctx_var *key) CCTX_HIDDEN;

/* Returns in `*out` a new reference to a map equal to `root` with `key`
 * bound to `value`. If `key` is already bound to the same pointer, `*out` is
 * `root` itself (retained). Borrows `root`, `key` and `value` (the new entry
 * retains `key` and `value`). CCTX_OK or CCTX_ENOMEM. */
cctx_status hamt_assoc(hamt_node *root, cctx_var *key, void *value,
                       hamt_node **out) CCTX_HIDDEN;

/* hamt_assoc that takes over the caller's reference to `value` instead of
 * retaining it: on CCTX_OK that reference is the map's (or, when the map
 * did not need it — `key` already bound to `value`, or a path that
 * retains — released through `key`'s callback, never the last reference);
 * on CCTX_ENOMEM nothing was taken and it is still the caller's. */
cctx_status hamt_assoc_adopt(hamt_node *root, cctx_var *key, void *value,
                             hamt_node **out) CCTX_HIDDEN;

/* Returns in `*out` a new reference to a map equal to `root` without `key`
 * (NULL when it becomes empty). CCTX_NOT_FOUND when `key` is not bound
 * (`*out` untouched), CCTX_ENOMEM on allocation failure. Borrows `root`. */
cctx_status hamt_without(hamt_node *root, const cctx_var *key,
                         hamt_node **out) CCTX_HIDDEN;

/* Same keys bound to pointer-equal values. Borrows both. */
bool hamt_equal(const hamt_node *a, const hamt_node *b) CCTX_HIDDEN;

/* Iteration over a root that the caller keeps alive for the iterator's
 * whole use. No allocation. */
typedef struct hamt_iter {
    const hamt_node *nodes[HAMT_MAX_DEPTH + 1];
    uint32_t positions[HAMT_MAX_DEPTH + 1];
    int depth; /* -1: finished */
} hamt_iter;

void hamt_iter_init(hamt_iter *it, const hamt_node *root) CCTX_HIDDEN;
/* Next entry: true with key and value borrowed; false at the end. */
bool hamt_iter_next(hamt_iter *it, cctx_var **key, void **value) CCTX_HIDDEN;

/* Returns 0 if every structural invariant holds for the tree under `root`
 * (bitmaps match slot counts, sizes add up, keys sit on their hash path,
 * no bitmap node with a single collision child, array-node counts, …),
 * else the __LINE__ of the failed check. */
int hamt_check(const hamt_node *root) CCTX_HIDDEN;

/* A node's shape, for tests that assert the tree's form (instead of
 * matching dump text). */
typedef struct hamt_shape {
    char kind; /* 'b' bitmap, 'a' array, 'c' collision; 0: no node there */
    unsigned size, refcnt, entries, children; /* refcnt: owners, credits not counted */
    uint32_t datamap, nodemap; /* as stored (an array node's datamap is a mark) */
    unsigned borrowers;        /* nodes borrowing this one's keys (credits not counted) */
    const hamt_node *source;   /* the node whose keys this one borrows, or NULL */
} hamt_shape;

/* The shape of the node reached from `root` by `path`: child ranks (the
 * j-th child in fragment order, from 0) separated by '.', "" for the root
 * itself. Borrows `root`. */
hamt_shape hamt_shape_at(const hamt_node *root, const char *path) CCTX_HIDDEN;

/* Writes a readable tree to `out` (debugging and test failure reports). */
void hamt_dump(FILE *out, const hamt_node *root) CCTX_HIDDEN;

#endif
