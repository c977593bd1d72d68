#include "internal.h"

#include <stdlib.h>

#include "hamt.h"
#include "thread_line.h"
#include "thread_state.h"

#include <string.h>

/*
 * hamt.c — the persistent hash array mapped trie behind every context.
 *
 * What it is
 * ----------
 * A map from cctx_var* (compared by address, hashed by var->hash, a 32-bit
 * value fixed at creation) to void*. Maps are never modified after they are
 * built: hamt_assoc and hamt_without build a new root that shares every
 * untouched node with the old one. A context copy is therefore one retain,
 * and a snapshot held by a token, an iterator or another thread stays valid
 * for as long as it holds its reference.
 *
 * The hash is consumed 5 bits per level, least significant bits first:
 *
 *     level   0     1      2       3       4       5       6
 *     bits   0-4   5-9   10-14   15-19   20-24   25-29   30-31
 *
 * so a path has at most 7 indexed levels. Keys whose whole 32-bit hashes are
 * equal cannot be told apart by any level; they share a collision node,
 * which is searched by comparing addresses. Longest path: 7 nodes + 1
 * collision node = HAMT_MAX_DEPTH.
 *
 * A worked example
 * ----------------
 * Four keys, hashes written as their level-0 and level-1 fragments:
 *
 *     A: level0 = 3, level1 = 9      C: level0 = 3, level1 = 20
 *     B: level0 = 7                  D: hash equal to C's, all 32 bits
 *
 * Insert A then B: they differ at level 0, so both sit as entries in the
 * root. Insert C: its level-0 slot (3) is taken by A, so A and C move into
 * a new level-1 node where they differ (9 vs 20). Insert D: it walks to C's
 * slot in that node, finds the same full hash, and C and D form a collision
 * node in slot 20:
 *
 *     root  bitmap  datamap {7}  nodemap {3}     size 4
 *       [7] B
 *       [3] ──► bitmap  datamap {9}  nodemap {20}      size 3
 *                 [9]  A
 *                 [20] ──► collision  {C, D}           size 2
 *
 * Every insert copied only the nodes on its path (root, then root + level-1
 * node, ...). The old roots still describe the old maps; the new roots hold
 * references to the old nodes they share.
 *
 * Deleting A afterwards leaves the level-1 node with a single slot holding
 * a collision node. A bitmap node whose only occupant is a collision node
 * adds nothing (collision nodes do not index by hash), so the collision
 * node takes its place in the root's slot 3. Deleting D then leaves a
 * one-entry collision node, which becomes a one-entry bitmap node, which the
 * root pulls in as a plain entry: the map {B, C} has the same shape however
 * it was reached.
 *
 * Node layouts (one struct for all three kinds)
 * ---------------------------------------------
 *     struct hamt_node { unsigned counts; uint32_t size : 31, borrows : 1;
 *                        uint32_t datamap; uint32_t nodemap; void *slot[]; }
 *
 * 16 bytes of header, then pointer slots (plus one trailing slot, the key
 * source, in a bitmap node that borrows keys: "Borrowed keys" below). `size` is the number of entries in
 * the whole subtree, which makes hamt_count O(1). The kind is encoded in the
 * two maps so that it costs no header space:
 *
 *   bitmap     datamap & nodemap == 0, not both zero. Bit i of datamap: the
 *              fragment i holds an entry; bit i of nodemap: it holds a child.
 *              slot[] = key0, value0, key1, value1, ..., child0, child1, ...
 *              Entries (two slots) come first, then children (one slot),
 *              each group in fragment order: an entry costs 16 bytes and a
 *              child 8 (the layout of Steindorfer's CHAMP; CPython's bitmap
 *              nodes spend two slots on every child as well).
 *              Index of fragment f: popcount(map & ((1 << f) - 1)).
 *   collision  datamap == nodemap == 0. `size` entries in slot[] as
 *              key, value pairs, in no particular order; all their keys have
 *              the same hash (read from the first key when needed).
 *   array      datamap == ~0, nodemap = the occupied fragments (never 0).
 *              slot[0..31] = children indexed by fragment, NULL when empty.
 *              Only nodes: an entry under an array node lives in a one-entry
 *              bitmap node one level down.
 *
 * Thresholds
 * ----------
 * A bitmap node holds at most HAMT_BITMAP_MAX_CHILDREN (16) children; the
 * insert that would need a 17th promotes it to an array node. An array node
 * holds more than HAMT_ARRAY_MIN_CHILDREN (8) children; the delete that
 * leaves 8 demotes it to a bitmap node. The gap is the hysteresis: a key set
 * that grows and shrinks around one size does not convert back and forth
 * (conversions wrap or unwrap entries and so allocate more than a copy).
 * Counting children rather than slots keeps entry-rich nodes in the
 * compact bitmap form: in a random 1e6-entry map the level-3 nodes hold
 * about 12 entries and 8 children each and stay bitmap nodes, while the
 * three levels above them, all children, become array nodes. Measured on
 * 1e6 random hashes: 23.4 bytes per entry requested from the allocator
 * (308k nodes), 28.3 with glibc's per-block overhead (Tests/C/test_hamt.c,
 * test_memory_per_entry_and_find_time, prints the latter). Variables'
 * own hashes are not random but creation numbers (var.c): 1e6 variables
 * created in a row fill 32,768 leaves of 30-31 entries: 17.4 bytes per
 * entry with glibc's overhead.
 *
 * Shape rules (checked by hamt_check)
 * -----------------------------------
 * 1. A bitmap node that is the child of a bitmap node holds at least two
 *    entries: a lone entry is stored inline in the parent instead.
 *    (Children of array nodes may hold one entry: array slots hold nodes.)
 * 2. No bitmap node has a collision node as its only occupant; the
 *    collision node stands in its place, at any level.
 * 3. Collision nodes hold at least two entries, all with one full hash.
 * 4. Every key sits on the path its hash selects; keys are distinct.
 * 5. Bitmap nodes: at most 16 children, only at levels 0-6 (a transient
 *    one-entry node returned by a collision delete may be built below level
 *    6, but its parent always inlines it). Array nodes: 9-32 children,
 *    levels 0-5.
 * 6. size == entries + sum of children's sizes; owners >= 1.
 * 7. A node that borrows keys is a bitmap node; its key source is a bitmap
 *    node that borrows nothing and counts this node's borrow reference.
 * Deletion restores these shapes on the way back up, so the shape is the
 * same whatever order a key set was built in, except for the array/bitmap
 * choice inside the hysteresis band and the order of collision entries.
 * hamt_equal therefore compares matching shapes slot by slot (skipping
 * shared subtrees by pointer) and falls back to lookups where shapes differ.
 *
 * Reference rules
 * ---------------
 * - A node is born with one owner, whoever built it. It is shared by
 *   retaining it (an owner more); the holder that drops the owners to zero
 *   releases its values and children (the decrement is a full barrier, so
 *   every write to the node happens before its release).
 * - A node holds one reference to each child and one to each value (the
 *   key's retain callback), and one reference to each key (var_ref) that it
 *   does not borrow. So a copied node retains every value and child it
 *   shares with the original, and a freed node releases all of it, value
 *   before key (the key's callbacks release the value).
 *
 * Borrowed keys
 * -------------
 * The request pattern — copy a shared base context, set a variable or two,
 * read, let go — path-copies the base's root on the first set. Counting a
 * reference on every variable the copy shares would write ~20 cache lines
 * that every thread doing the same request writes too. Variables are
 * identity objects: keeping one alive a little longer is not observable
 * the way a value's release is. So a path copy of a node that stays
 * reachable from another map (the node or a node above it has a second
 * owner) takes one *borrow reference* to that node, its *key source*, and
 * no reference to the keys it shares with it:
 *
 * - The rule: the key at fragment f of a borrowing node is borrowed when
 *   its source holds the same key at fragment f; every other key is owned
 *   (counted). Nodes never change after they are built (an in-place write
 *   replaces a value, never a key), so applying the rule when the node is
 *   built and again when it is freed counts each key exactly once. A key
 *   deleted and inserted again at its place is borrowed again.
 * - Flattened: a copy of a borrowing node borrows from the same source, so
 *   a node keeps at most one other node's keys alive and a source never
 *   borrows. A source whose owners are all gone is not passed on (the copy
 *   owns its keys), so an old version does not live as long as the map's
 *   later ones.
 * - Only keys: values and children are still counted per entry, so a value
 *   is released when the last map that binds it goes, as without
 *   borrowing (a source that kept the values the copy replaced alive would
 *   keep what no map can read).
 * - Two lifetimes in one count word: owners (maps and parents; when they
 *   reach zero the node releases its values and children) and borrow
 *   references (one held by the owners together while any is left, one
 *   per borrowing node; when they reach zero the node drops its owned keys
 *   and its own source, and frees its memory). A borrowing node compares
 *   its keys with the source's, so the source's memory as well as its keys
 *   outlive every borrower. Both counts include threads' shared credits
 *   ("Shared credits" below), which take no part in either lifetime: a
 *   counted release takes them all back first.
 * - Readers (hamt_find under the read guard) compare keys by address only;
 *   a borrowed key is the source's, alive while the borrower is.
 * - Builders take their references only after their allocation succeeded,
 *   and a node under construction is always consistent, so a failure
 *   anywhere is undone by releasing what was built: the input maps and
 *   every count are exactly as before.
 * - Internal operations return "unchanged" as the input node itself without
 *   a reference; the public functions turn that into a retained root.
 * - Nodes are immutable once returned, so readers need no atomics; freeing
 *   is made safe for concurrent readers by the callers (reclaim.c).
 */

#define HAMT_BITS 5
#define HAMT_FRAG_MASK 31u
/* Shift of the last level that indexes by hash bits (bits 30-31). */
#define HAMT_LAST_SHIFT 30u
#define HAMT_BITMAP_MAX_CHILDREN 16u
#define HAMT_ARRAY_MIN_CHILDREN 9u
#define HAMT_ARRAY_SLOTS 32u
/* datamap of an array node; a bitmap node never has datamap & nodemap. */
#define HAMT_ARRAY_MARK 0xFFFFFFFFu

struct hamt_node {
    unsigned counts;       /* owners | borrow references << HAMT_OWNER_BITS */
    uint32_t size : 31;    /* entries in the subtree (a map cannot reach 2^31:
                            * 16 bytes of slots per entry alone is 32 GiB) */
    uint32_t borrows : 1;  /* bitmap node with a key source in its last slot */
    uint32_t datamap;
    uint32_t nodemap;
    void *slot[];
};

/*
 * The two counts in `counts` (see "Borrowed keys" above). Owners get 23
 * bits (8.3 million maps, parents and root credits holding one node; a
 * retain that would carry into the next bit stops the process), bit 23 is
 * CREDITED ("Shared credits" below), and borrow references 8: one held by
 * the owners together while any is left,
 * plus at most 254 borrowing nodes. A path copy that finds the field full
 * owns its keys as before, so the cap costs speed, never correctness. One
 * word rather than two keeps the header at 16 bytes (memory per entry is
 * measured), and it lets the last owner with no borrower free the node
 * after one plain load, as before.
 */
#define HAMT_OWNER_BITS 24u
#define HAMT_OWNER_MASK ((1u << 23) - 1)
#define HAMT_CREDITED (1u << 23)
#define HAMT_BORROW_UNIT (1u << HAMT_OWNER_BITS)
#define HAMT_BORROW_MAX 255u
/* A new node: one owner, and the owners' shared borrow reference. */
#define HAMT_COUNTS_NEW (1u + HAMT_BORROW_UNIT)

/* ------------------------------------------------------------------ bits */

/*
 * Baseline x86-64 has no POPCNT: GCC turns __builtin_popcount into a call
 * into libgcc and clang into an inline bit count (about 11 instructions),
 * and a path copy or a node's release counts bits a dozen times. Every
 * x86-64 CPU of the last 15 years has the instruction, so it is used when
 * CPUID says so (one predictable branch on a flag set once at load time)
 * and the bit count otherwise (and before the flag is set: a constructor
 * of another library that runs first). Elsewhere the builtin is one
 * instruction or an inline sequence.
 */
static inline unsigned hamt_popcount_soft(uint32_t x)
{
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    return (x * 0x01010101u) >> 24;
}

#if defined(__x86_64__) && !defined(__POPCNT__)
#include <cpuid.h>
/* Written once, by the constructor below, before any thread of the
 * process can have been started by this library; read plainly. */
static bool hamt_have_popcnt;

__attribute__((constructor)) static void hamt_detect_popcnt(void)
{
    unsigned a, b, c, d;
    hamt_have_popcnt = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_POPCNT) != 0;
}

static inline unsigned hamt_popcount(uint32_t x)
{
    if (CCTX_LIKELY(hamt_have_popcnt)) {
        uint32_t n;
        __asm__("popcnt %1, %0" : "=r"(n) : "rm"(x) : "cc");
        return n;
    }
    return hamt_popcount_soft(x);
}
#elif defined(__POPCNT__) || defined(__clang__) || !defined(__x86_64__)
static inline unsigned hamt_popcount(uint32_t x)
{
    return (unsigned)__builtin_popcount(x);
}
#else
#define hamt_popcount hamt_popcount_soft
#endif

/* Fragment of `hash` at `shift`. Below the last level (shift >= 32, only
 * collision nodes and transient leaves live there) every key is in
 * fragment 0. */
static inline unsigned hamt_frag(uint32_t hash, unsigned shift)
{
    return shift < 32 ? (hash >> shift) & HAMT_FRAG_MASK : 0;
}

static inline unsigned below(uint32_t map, uint32_t bit)
{
    return hamt_popcount(map & (bit - 1));
}

static inline bool is_array(const hamt_node *n)
{
    return (n->datamap & n->nodemap) != 0;
}

static inline bool is_collision(const hamt_node *n)
{
    return (n->datamap | n->nodemap) == 0;
}

static inline bool is_bitmap(const hamt_node *n)
{
    return !is_array(n) && !is_collision(n);
}

/* Entries stored in a bitmap or collision node. */
static inline unsigned entry_count(const hamt_node *n)
{
    return is_collision(n) ? n->size : hamt_popcount(n->datamap);
}

static inline cctx_var *entry_key(const hamt_node *n, unsigned i)
{
    return (cctx_var *)n->slot[2 * i];
}

static inline void *entry_value(const hamt_node *n, unsigned i)
{
    return n->slot[2 * i + 1];
}

/* Child j (in fragment order) of a bitmap node. */
static inline hamt_node *bitmap_child(const hamt_node *n, unsigned j)
{
    return (hamt_node *)n->slot[2 * hamt_popcount(n->datamap) + j];
}

static inline unsigned owners_of(unsigned counts)
{
    return counts & HAMT_OWNER_MASK;
}

/* Owners of `n` as last seen: only a hint (it orders nothing). A test
 * that lets the caller write into the node uses owners_acquire. */
static inline unsigned owners_relaxed(const hamt_node *n)
{
    return owners_of(cctx_load_uint_relaxed(&((hamt_node *)n)->counts));
}

/* Owners of `n`, with acquire: when it reads 1 and the caller is that
 * owner, every other holder's use of the node happens before what the
 * caller does next (hamt_value_slot_if_unique argues why). The same
 * instruction as the relaxed load outside ThreadSanitizer (atomic.h). */
static inline unsigned owners_acquire(const hamt_node *n)
{
    return owners_of(cctx_load_uint(&((hamt_node *)n)->counts));
}

/* Slots of a bitmap node before the key-source slot of a borrowing one. */
static inline unsigned bitmap_slots(const hamt_node *n)
{
    return 2 * hamt_popcount(n->datamap) + hamt_popcount(n->nodemap);
}

/* The node whose keys a borrowing bitmap node shares; NULL when it owns
 * all of its keys. */
static inline hamt_node *key_source(const hamt_node *n)
{
    return n->borrows ? (hamt_node *)n->slot[bitmap_slots(n)] : NULL;
}

/*
 * The borrowing rule, the one every write and the free apply, so that an
 * entry is counted on its variable exactly when it is not borrowed: the
 * key at fragment `bit` of a node whose key source is `src` is borrowed
 * when the source holds the same key at the same fragment.
 *
 * Nodes are built and freed by walking their entries in fragment order,
 * so the rule is applied through a cursor that walks the source's entries
 * alongside (each source entry is passed once; no bit count per entry).
 * Calls must come with increasing `bit`.
 */
typedef struct key_cursor {
    const hamt_node *src; /* NULL: nothing is borrowed */
    uint32_t rest;        /* the source's fragments not yet passed */
    unsigned i;           /* entry index of rest's lowest fragment */
} key_cursor;

static inline key_cursor key_cursor_at(const hamt_node *src)
{
    return (key_cursor){ src, src != NULL ? src->datamap : 0, 0 };
}

static inline bool key_is_borrowed(key_cursor *c, uint32_t bit, const cctx_var *key)
{
    while (c->rest & (bit - 1)) {
        c->rest &= c->rest - 1;
        c->i++;
    }
    return (c->rest & bit) != 0 && entry_key(c->src, c->i) == key;
}

/* ------------------------------------------------------ node lifetime */

/*
 * Small nodes (up to HAMT_SMALL_SLOTS slots: two entries and a key-source
 * slot, or one entry and a child...) are made and dropped at the rate of
 * scopes: a withValue copy path-copies the root of a small context and
 * drops it at the scope's end, a set replaces the root. They come from a
 * per-thread cache of blocks of one size (as context objects and tokens
 * do): every small node is allocated at that size, also when no cache is
 * used, so that any small node freed on any thread fits any later take.
 * Whether a node is small is decided again when it is freed, from its
 * maps: a bitmap node with at most HAMT_SMALL_SLOTS slots in use (a node
 * built with a key-source slot it could not fill has one unused slot
 * more, so it may have been allocated larger — never smaller). Only a
 * thread with a state uses its cache; its teardown detaches the state
 * before draining (thread_state.c), so later frees bypass it.
 */
#define HAMT_SMALL_SLOTS 6
#define HAMT_SMALL_BYTES (sizeof(hamt_node) + HAMT_SMALL_SLOTS * sizeof(void *))
static __thread cctx_block_cache node_cache __attribute__((tls_model("initial-exec")));

void hamt_node_cache_drain(void)
{
    cctx_block_cache_drain(&node_cache);
}

static inline hamt_node *node_alloc(unsigned nslots)
{
    if (CCTX_LIKELY(nslots <= HAMT_SMALL_SLOTS)) {
        if (CCTX_LIKELY(thread_state_peek() != NULL))
            return cctx_alloc_cached(&node_cache, HAMT_SMALL_BYTES);
        return cctx_alloc(HAMT_SMALL_BYTES);
    }
    return cctx_alloc(sizeof(hamt_node) + nslots * sizeof(void *));
}

/* Frees a node whose header (maps, borrows) is as built; a node under
 * construction whose maps do not say its size goes to cctx_dealloc. */
static inline void node_dealloc(hamt_node *n)
{
    if (is_bitmap(n) && bitmap_slots(n) + (n->borrows != 0) <= HAMT_SMALL_SLOTS &&
        thread_state_peek() != NULL)
        cctx_dealloc_cached(&node_cache, n);
    else
        cctx_dealloc(n);
}

/* A new node with its header set and `nslots` slots for the caller to fill;
 * the one place nodes are allocated. NULL on allocation failure. */
static hamt_node *node_new(uint32_t size, uint32_t datamap, uint32_t nodemap, unsigned nslots)
{
    hamt_node *n = node_alloc(nslots);
    if (n == NULL)
        return NULL;
    n->counts = HAMT_COUNTS_NEW; /* not yet shared: a plain store is enough */
    n->size = size;
    n->borrows = 0;
    n->datamap = datamap;
    n->nodemap = nodemap;
    return n;
}

/* A bitmap node: its slot count follows from the maps (two per entry, one
 * per child). */
static hamt_node *bitmap_node_new(uint32_t size, uint32_t datamap, uint32_t nodemap)
{
    return node_new(size, datamap, nodemap, 2 * hamt_popcount(datamap) + hamt_popcount(nodemap));
}

static inline void entry_retain(cctx_var *key, void *value)
{
    var_ref(key);
    var_value_retain(key, value);
}

/* Frees the first half of a node, when its last owner lets go: values
 * (through their keys' callbacks; every key is still alive, owned or kept
 * by the key source this node holds) and children. What a borrower can
 * still read — the keys and the maps that place them — stays. */
static void node_release_contents(hamt_node *n)
{
    if (is_array(n)) {
        for (uint32_t rest = n->nodemap; rest != 0; rest &= rest - 1)
            hamt_release(n->slot[__builtin_ctz(rest)]);
        return;
    }
    unsigned nd = entry_count(n);
    unsigned nc = hamt_popcount(n->nodemap);
    for (unsigned i = 0; i < nd; i++)
        var_value_release(entry_key(n, i), entry_value(n, i));
    for (unsigned j = 0; j < nc; j++)
        hamt_release(n->slot[2 * nd + j]);
}

static void borrow_release(hamt_node *src);

/* The second half, when the last borrow reference goes: the keys this
 * node owns, its own key source, and its memory. Borrowed keys are
 * compared with the source before the source may go. */
static void node_free_keys(hamt_node *n)
{
    if (!is_array(n)) {
        hamt_node *src = key_source(n);
        unsigned i = 0;
        if (is_collision(n)) {
            for (; i < n->size; i++)
                var_unref(entry_key(n, i));
        } else {
            key_cursor cur = key_cursor_at(src);
            for (uint32_t rest = n->datamap; rest != 0; rest &= rest - 1, i++) {
                if (!key_is_borrowed(&cur, rest & (~rest + 1), entry_key(n, i)))
                    var_unref(entry_key(n, i));
            }
        }
        if (src != NULL)
            borrow_release(src); /* a source never borrows: depth 1 */
    }
    node_dealloc(n);
}

/* Both halves at once, for the last owner of a node nobody borrows from:
 * one walk over the entries instead of two (node_free's general case). */
static __attribute__((noinline)) void node_free_walk(hamt_node *n)
{
    if (!is_bitmap(n)) {
        node_release_contents(n);
        node_free_keys(n);
        return;
    }
    hamt_node *src = key_source(n);
    key_cursor cur = key_cursor_at(src);
    unsigned i = 0;
    for (uint32_t rest = n->datamap; rest != 0; rest &= rest - 1, i++) {
        cctx_var *key = entry_key(n, i);
        var_value_release(key, entry_value(n, i)); /* value first: key callbacks */
        if (!key_is_borrowed(&cur, rest & (~rest + 1), key))
            var_unref(key);
    }
    for (unsigned j = 0, nc = hamt_popcount(n->nodemap); j < nc; j++)
        hamt_release(n->slot[2 * i + j]);
    if (src != NULL)
        borrow_release(src);
    node_dealloc(n);
}

/* node_free_walk for a leaf of one entry that borrows from a key source
 * (`n->borrows`; no children): what a withValue scope's copy makes when it
 * replaces the value of a one-entry root another map holds
 * (bitmap_replace_lent), freed at the scope's end. The walk's steps in its
 * order with none of its loops: the value, the key unless borrowed (the
 * borrowing rule, key_is_borrowed, for the one fragment), the source's
 * borrow reference, the block. */
static __attribute__((noinline)) void leaf_free_borrowing(hamt_node *n)
{
    const uint32_t bit = n->datamap;
    cctx_var *key = entry_key(n, 0);
    hamt_node *src = (hamt_node *)n->slot[2];
    var_value_release(key, entry_value(n, 0)); /* value first: key callbacks */
    if (!((src->datamap & bit) != 0 && entry_key(src, below(src->datamap, bit)) == key))
        var_unref(key);
    borrow_release(src);
    /* Small (three slots): where node_dealloc would put it, without its
     * size test. */
    if (CCTX_LIKELY(thread_state_peek() != NULL))
        cctx_dealloc_cached(&node_cache, n);
    else
        cctx_dealloc(n);
}

/* Frees a node its last owner let go of and nobody borrows from. The
 * node freed most often is a leaf of one entry that owns its key (a set
 * into an empty context makes one, and that context's release frees it):
 * known small (two slots), with no children and no key source, it takes
 * none of node_free_walk's walks, and this function stays small enough
 * to need no saved registers on that path. The same order as the walk:
 * the value first (its release callback may use the variable), then the
 * key; the block goes where node_dealloc would put a two-slot node. A
 * leaf of one entry that borrows its key (a withValue scope's copy of a
 * one-entry root) takes leaf_free_borrowing, out of line for the same
 * reason. */
static void node_free(hamt_node *n)
{
    uint32_t d = n->datamap;
    if (CCTX_LIKELY(n->nodemap == 0 && d != 0 && (d & (d - 1)) == 0)) {
        if (CCTX_UNLIKELY(n->borrows)) {
            leaf_free_borrowing(n);
            return;
        }
        cctx_var *key = entry_key(n, 0);
        var_value_release(key, entry_value(n, 0));
        var_unref(key);
        if (CCTX_LIKELY(thread_state_peek() != NULL))
            cctx_dealloc_cached(&node_cache, n);
        else
            cctx_dealloc(n);
        return;
    }
    node_free_walk(n);
}

/*
 * Drops one borrow reference of `src`. The last one frees its keys and
 * memory. A count of exactly one borrow reference and no owner is ours
 * alone: a new borrow reference is only ever taken by copying a node that
 * an owner reaches, or one that borrows from `src` (whose reference would
 * be counted), so nobody can add one and the plain acquire load decides,
 * as in hamt_release. Otherwise the decrement is a full barrier (locked
 * add): every thread's last reads of the keys happen before the one that
 * sees the count reach zero frees them.
 */
static void borrow_release_counted(hamt_node *src)
{
    /* A source with no owner left has no credits (they are owners, or
     * were taken back with them) and no CREDITED mark: every bit is
     * compared. */
    if ((cctx_load_uint(&src->counts) & ~HAMT_CREDITED) == HAMT_BORROW_UNIT ||
        (cctx_faa_uint(&src->counts, -HAMT_BORROW_UNIT) & ~HAMT_CREDITED) == HAMT_BORROW_UNIT)
        node_free_keys(src);
}

static bool credit_give_borrow(hamt_node *src);

/* A borrowing node's reference to its source: back into this thread's
 * credits when they are for `src`, else counted down. */
static void borrow_release(hamt_node *src)
{
    if (!credit_give_borrow(src))
        borrow_release_counted(src);
}

/* One more borrow reference to `src` for a node being built; false when
 * the field is full (the caller then owns its keys). The caller reaches
 * `src` through a reference it holds, so the node is alive and needs no
 * acquire; the compare-and-swap is a full barrier anyway. */
static bool credit_take_borrow(hamt_node *src);

static bool borrow_acquire(hamt_node *src)
{
    if (credit_take_borrow(src))
        return true;
    unsigned c = cctx_load_uint_relaxed(&src->counts);
    for (;;) {
        if ((c >> HAMT_OWNER_BITS) >= HAMT_BORROW_MAX)
            return false;
        if (cctx_cas_uint(&src->counts, c, c + HAMT_BORROW_UNIT))
            return true;
        c = cctx_load_uint_relaxed(&src->counts);
    }
}

/* The last owner let go (its decrement, a full barrier, ordered every
 * owner's use before this). Values and children go now, so a shadowed
 * value is released exactly when it was before keys were borrowed; then
 * the owners' shared borrow reference, which frees the rest unless a
 * borrowing node still needs the keys. */
static void owners_gone(hamt_node *n)
{
    node_release_contents(n);
    borrow_release_counted(n); /* the owners' share: never a credit */
}

static void owner_overflow(void)
{
    fprintf(stderr, "contextcore: more than %u references to one map node\n",
            HAMT_OWNER_MASK - 1);
    abort();
}

static void credits_revoke(hamt_node *n);

void hamt_retain(hamt_node *root)
{
    if (root != NULL &&
        CCTX_UNLIKELY(owners_of(cctx_faa_uint(&root->counts, 1)) >= HAMT_OWNER_MASK - 1))
        owner_overflow();
}

void hamt_release(hamt_node *root)
{
    /* Recursion follows the tree's depth only (at most HAMT_MAX_DEPTH).
     * One owner and no borrower is our own reference and nobody else's:
     * every holder is counted, and a reader that could still retain it
     * without holding a reference (a hazard-protected snapshot, reclaim.h)
     * has either done so already — its increment is visible to this
     * acquire load, because the node was released only after that
     * reader's hazard cleared — or can no longer find the node; a borrower
     * is made only by copying a node some owner reaches. So the last
     * holder frees without a locked instruction; shared nodes pay the
     * atomic decrement, a full barrier, and the one that takes the owners
     * to zero releases the contents. */
    if (root == NULL)
        return;
    unsigned c = cctx_load_uint(&root->counts);
    if (c == HAMT_COUNTS_NEW) {
        node_free(root);
        return;
    }
    /* A counted reference while credits may exist: take them all back
     * first ("Shared credits"), while ours keeps the node alive. */
    if (CCTX_UNLIKELY(c & HAMT_CREDITED))
        credits_revoke(root);
    if (owners_of(cctx_faa_uint(&root->counts, -1u)) == 1)
        owners_gone(root);
}

void hamt_retain_n(hamt_node *root, unsigned n)
{
    if (root != NULL && n != 0 &&
        CCTX_UNLIKELY(owners_of(cctx_faa_uint(&root->counts, n)) + n >= HAMT_OWNER_MASK))
        owner_overflow();
}

void hamt_release_n(hamt_node *root, unsigned n)
{
    if (root == NULL || n == 0)
        return;
    /* As hamt_release: holding every counted reference means nobody else
     * can take one, so no locked instruction for the last ones. */
    unsigned c = cctx_load_uint(&root->counts);
    if (c == n + HAMT_BORROW_UNIT) {
        node_free(root);
        return;
    }
    if (CCTX_UNLIKELY(c & HAMT_CREDITED))
        credits_revoke(root);
    if (owners_of(cctx_faa_uint(&root->counts, -n)) == n)
        owners_gone(root);
}

/*
 * Shared credits
 * --------------
 * The request pattern copies one base context on many threads: each copy
 * takes a reference to the base's root, its first write path-copies that
 * root (a borrow reference, and the copy's reference given back) and its
 * release gives the borrow reference back. Counted, that is four locked
 * writes per request to the one line every thread shares. Instead each
 * thread keeps a *credit slot*: one word naming one node and holding
 * references to it taken in a batch — owner credits and borrow credits —
 * which it lends to its copies and takes back from them without touching
 * the node. A reference lent from a slot is a *loan*; the context that
 * holds one marks its root pointer (CCTX_ROOT_LOAN in context.h).
 *
 * Credits are counted references, so they keep the node alive; they must
 * never be what keeps it alive after the last map that can read it is
 * gone (values would be released late). The rule: every reference that is
 * not a credit or a loan ("counted") is released through hamt_release,
 * which, when the node is marked CREDITED, first takes every slot's
 * credits back (credits_revoke): clears the mark, then empties each slot
 * that names the node and drops what it held. Loans are given back to a
 * slot that names the node, or dropped; neither runs the revocation.
 *
 * Why that is enough: credits are installed (credits_install) only by a
 * thread that read the node from a context holding a counted reference to
 * it, under that read's hazard pointer — so while credits exist, some
 * counted reference exists too (the context's, or the retired list's when
 * the context replaced it during the read: reclaim.h), and its release
 * revokes. Loans are references too: the values stay until the last loan
 * is dropped as well.
 *
 * The races, each Dekker's pattern (a locked write, then a load):
 *   install: CAS counts |= CREDITED (+ batch), CAS the slot, load counts;
 *            the mark gone: revoked meanwhile, take the slot back.
 *   revoke:  CAS counts &= ~CREDITED, load every slot.
 * Either the revoker's scan sees the installed slot, or the installer sees
 * the mark cleared. A later install may set the mark again; then a counted
 * reference exists again (see above), and its release revokes again. A
 * give or a borrow take adds to a slot that already names the node: a
 * revoker that cleared the mark after that slot appeared empties it with
 * a CAS, so the give either lands before (and is taken with the rest) or
 * its CAS fails. Only the owning thread puts a node into its slot, so the
 * slot word has no ABA. A slot is emptied (by anyone) with a CAS from the
 * value seen; whoever empties it drops what it held.
 *
 * Cost per request, steady state: every slot operation is a CAS on the
 * thread's own line; nothing on the base's root is written.
 *
 * fork: a thread that did not survive keeps its slot, orphaned
 * (thread_line.h); the child's revocations take its credits back like
 * anyone's, and once it is empty a thread of the child reuses it.
 */
#define CREDIT_OWNER_BATCH 32u
#define CREDIT_BORROW_BATCH 8u
#define CREDIT_NODE_MASK (((uintptr_t)1 << 48) - 1)
#define CREDIT_OWNER ((uintptr_t)1 << 48)
#define CREDIT_BORROW ((uintptr_t)1 << 56)

/* A thread's slot is a line of thread_line.h (claimed on first use, given
 * back at exit, never freed: revokers scan every slot without a guard). */
typedef struct credit_slot {
    thread_line line; /* first: the registry's header */
    /* node | owner credits << 48 | borrow credits << 56; 0: empty. Written
     * by its thread and (to empty it) by revokers. */
    uintptr_t word;
} __attribute__((aligned(64))) credit_slot;

static thread_line_registry credit_slots;
static __thread credit_slot *my_slot __attribute__((tls_model("initial-exec")));

/* The registry's lines, as slots. */
#define SLOTS_FOREACH(s)                                                        \
    for (credit_slot *s = (credit_slot *)thread_line_first(&credit_slots); s != NULL; \
         s = (credit_slot *)s->line.next)

static inline hamt_node *slot_node(uintptr_t w)
{
    return (hamt_node *)(w & CREDIT_NODE_MASK);
}
static inline unsigned slot_owners(uintptr_t w)
{
    return (unsigned)(w >> 48) & 0xffu;
}
static inline unsigned slot_borrows(uintptr_t w)
{
    return (unsigned)(w >> 56);
}

/* This thread's slot, claimed (or made) on first use; NULL without
 * memory or without a thread state (its teardown gives the slot back). */
static credit_slot *slot_get(void)
{
    if (CCTX_LIKELY(my_slot != NULL))
        return my_slot;
    if (thread_state_peek() == NULL)
        return NULL;
    my_slot = (credit_slot *)thread_line_claim(&credit_slots, sizeof(credit_slot));
    return my_slot;
}

/* Drops `owners` owner and `borrows` borrow references that were credits
 * or loans: no revocation (they are not counted references; see above). */
static void credits_drop(hamt_node *n, unsigned owners, unsigned borrows)
{
    if (owners != 0 && owners_of(cctx_faa_uint(&n->counts, -owners)) == owners)
        owners_gone(n);
    /* Borrow references outlast the owners' share: the node is alive. */
    while (borrows-- != 0)
        borrow_release_counted(n);
}

/* Empties slot `s` if it holds `w`, dropping its credits. */
static bool slot_empty(credit_slot *s, uintptr_t w)
{
    if (!cctx_cas_uintptr(&s->word, w, 0))
        return false;
    credits_drop(slot_node(w), slot_owners(w), slot_borrows(w));
    return true;
}

static void credits_revoke(hamt_node *n)
{
    unsigned c = cctx_load_uint(&n->counts);
    for (;;) {
        if (!(c & HAMT_CREDITED))
            return; /* another revoker cleared it and scans */
        /* Locked: the slot loads below come after it (see above). */
        if (cctx_cas_uint(&n->counts, c, c & ~HAMT_CREDITED))
            break;
        c = cctx_load_uint(&n->counts);
    }
    /* The caller holds a counted reference: `n` outlives the scan. */
    SLOTS_FOREACH(s) {
        uintptr_t w = cctx_load_uintptr(&s->word);
        while (slot_node(w) == n && !slot_empty(s, w))
            w = cctx_load_uintptr(&s->word);
    }
}

bool hamt_credit_take(hamt_node *root)
{
    credit_slot *s = my_slot;
    if (s == NULL || root == NULL)
        return false;
    uintptr_t w = cctx_load_uintptr(&s->word);
    /* The slot's credits keep `root` alive up to the CAS; a revoker that
     * emptied the slot meanwhile makes it fail. */
    return slot_node(w) == root && slot_owners(w) != 0 &&
           cctx_cas_uintptr(&s->word, w, w - CREDIT_OWNER);
}

void hamt_credit_give(hamt_node *root)
{
    credit_slot *s = my_slot;
    if (root == NULL)
        return;
    if (s != NULL) {
        uintptr_t w = cctx_load_uintptr(&s->word);
        if (slot_node(w) == root && slot_owners(w) < 0xffu &&
            cctx_cas_uintptr(&s->word, w, w + CREDIT_OWNER))
            return;
    }
    credits_drop(root, 1, 0);
}

/* Puts `owners` owner credits for `n` (already counted on it) into this
 * thread's slot `s`, emptying whatever else it held first. The caller holds
 * one more reference to `n` (its loan), so `n` is alive throughout. */
static void credits_install(credit_slot *s, hamt_node *n, unsigned owners)
{
    uintptr_t add = (uintptr_t)owners * CREDIT_OWNER;
    for (;;) {
        uintptr_t w = cctx_load_uintptr(&s->word);
        if (slot_node(w) == n) {
            if (slot_owners(w) + owners > 0xffu)
                break; /* full: drop them */
            if (cctx_cas_uintptr(&s->word, w, w + add))
                return; /* the slot already names n: see above */
            continue;
        }
        if (w != 0) {
            (void)slot_empty(s, w); /* another node's credits go back */
            continue;
        }
        if (!cctx_cas_uintptr(&s->word, 0, (uintptr_t)n | add))
            continue;
        /* After the CAS (a full barrier): still marked, or revoked
         * meanwhile and the scan may have missed this slot. */
        if (!(cctx_load_uint(&n->counts) & HAMT_CREDITED))
            (void)slot_empty(s, (uintptr_t)n | add);
        return;
    }
    credits_drop(n, owners, 0);
}

bool hamt_credit_retain(hamt_node *root)
{
    if (root == NULL)
        return false;
    credit_slot *s = slot_get();
    unsigned c = cctx_load_uint(&root->counts);
    if (s != NULL && ((uintptr_t)root & ~CREDIT_NODE_MASK) == 0) {
        const unsigned batch = 1 + CREDIT_OWNER_BATCH;
        while (owners_of(c) + batch < HAMT_OWNER_MASK - 1) {
            if (cctx_cas_uint(&root->counts, c, (c + batch) | HAMT_CREDITED))
                return true;
            c = cctx_load_uint(&root->counts);
        }
    }
    hamt_retain(root);
    return false;
}

void hamt_credit_install(hamt_node *root)
{
    if (my_slot != NULL)
        credits_install(my_slot, root, CREDIT_OWNER_BATCH);
    else
        credits_drop(root, CREDIT_OWNER_BATCH, 0);
}

static bool credit_take_borrow(hamt_node *src)
{
    credit_slot *s = my_slot;
    if (s == NULL)
        return false;
    uintptr_t w = cctx_load_uintptr(&s->word);
    if (slot_node(w) != src)
        return false;
    if (slot_borrows(w) != 0)
        return cctx_cas_uintptr(&s->word, w, w - CREDIT_BORROW);
    /* Refill: a batch of borrow references, while the mark says the slot
     * may hold credits for `src` and the field has room. The caller reaches
     * `src` through a reference it holds. */
    unsigned c = cctx_load_uint(&src->counts);
    for (;;) {
        if (!(c & HAMT_CREDITED) ||
            (c >> HAMT_OWNER_BITS) + CREDIT_BORROW_BATCH >= HAMT_BORROW_MAX)
            return false;
        if (cctx_cas_uint(&src->counts, c, c + CREDIT_BORROW_BATCH * HAMT_BORROW_UNIT))
            break;
        c = cctx_load_uint(&src->counts);
    }
    /* One for the caller, the rest into the slot if it still names `src`
     * (no check after: see above). */
    const uintptr_t add = (uintptr_t)(CREDIT_BORROW_BATCH - 1) * CREDIT_BORROW;
    for (;;) {
        w = cctx_load_uintptr(&s->word);
        if (slot_node(w) != src || slot_borrows(w) + CREDIT_BORROW_BATCH - 1 > 0xffu)
            break;
        if (cctx_cas_uintptr(&s->word, w, w + add))
            return true;
    }
    credits_drop(src, 0, CREDIT_BORROW_BATCH - 1);
    return true;
}

static bool credit_give_borrow(hamt_node *src)
{
    credit_slot *s = my_slot;
    if (s == NULL)
        return false;
    uintptr_t w = cctx_load_uintptr(&s->word);
    return slot_node(w) == src && slot_borrows(w) < 0xffu &&
           cctx_cas_uintptr(&s->word, w, w + CREDIT_BORROW);
}

void hamt_credits_forget(const hamt_node *root)
{
    credit_slot *s = my_slot;
    if (s == NULL || root == NULL)
        return;
    uintptr_t w = cctx_load_uintptr(&s->word);
    while (slot_node(w) == root && !slot_empty(s, w))
        w = cctx_load_uintptr(&s->word);
}

bool hamt_credits_flush(bool last)
{
    credit_slot *s = my_slot;
    if (s == NULL)
        return false;
    bool any = false;
    uintptr_t w;
    while ((w = cctx_load_uintptr(&s->word)) != 0)
        any |= slot_empty(s, w);
    if (last) {
        my_slot = NULL;
        thread_line_give_back(&credit_slots, &s->line); /* empty: see thread_line.h */
    }
    return any;
}

void hamt_credits_atfork_child(void)
{
    /* The dead threads' credits stay in their slots, where the child's
     * revocations find them like anyone's (nothing is released here: a
     * release runs user callbacks); each slot is reused once emptied. */
    thread_line_orphan_others(&credit_slots, my_slot != NULL ? &my_slot->line : NULL);
}

size_t cctx__root_credit_slots(size_t *held, size_t *orphaned)
{
    return thread_line_count(&credit_slots, held, orphaned);
}

/* Credits every slot holds for `n` (test shapes only). */
static void credits_held(const hamt_node *n, unsigned *owners, unsigned *borrows)
{
    *owners = *borrows = 0;
    SLOTS_FOREACH(s) {
        uintptr_t w = cctx_load_uintptr(&s->word);
        if (slot_node(w) == n) {
            *owners += slot_owners(w);
            *borrows += slot_borrows(w);
        }
    }
}

size_t hamt_count(const hamt_node *root)
{
    return root != NULL ? root->size : 0;
}

/* ------------------------------------------------------------ builders */
/*
 * Each builder returns a new node (refcnt 1) or NULL when the allocation
 * failed, in which case it has retained nothing and any node handed to it
 * still belongs to the caller.
 */

/* The end of every builder: in checked builds (CCTX_INTERNAL_CHECKS) the
 * new node's own invariants — header, maps, slot counts, and its size
 * against its entries and its children's sizes — are verified before the
 * node is used (children were checked when they were built). Compiled out
 * in production. */
static hamt_node *node_built(hamt_node *n)
{
#ifdef CCTX_INTERNAL_CHECKS
    if (n == NULL)
        return NULL;
    CCTX_ASSERT(n->counts == HAMT_COUNTS_NEW);
    CCTX_ASSERT(n->size >= 1);
    uint64_t total = 0;
    if (is_array(n)) {
        CCTX_ASSERT(n->datamap == HAMT_ARRAY_MARK);
        CCTX_ASSERT(hamt_popcount(n->nodemap) >= HAMT_ARRAY_MIN_CHILDREN);
        for (unsigned k = 0; k <= HAMT_FRAG_MASK; k++) {
            const hamt_node *c = n->slot[k];
            CCTX_ASSERT((c != NULL) == ((n->nodemap >> k) & 1));
            if (c != NULL)
                total += c->size;
        }
    } else if (is_collision(n)) {
        CCTX_ASSERT(n->size >= 2);
        for (unsigned k = 0; k < n->size; k++)
            CCTX_ASSERT(entry_key(n, k)->hash == entry_key(n, 0)->hash);
        total = n->size;
    } else {
        CCTX_ASSERT(hamt_popcount(n->nodemap) <= HAMT_BITMAP_MAX_CHILDREN);
        unsigned nd = entry_count(n), nc = hamt_popcount(n->nodemap);
        for (unsigned k = 0; k < nd; k++)
            CCTX_ASSERT(var_is_valid(entry_key(n, k)));
        for (unsigned k = 0; k < nc; k++) {
            const hamt_node *c = n->slot[2 * nd + k];
            CCTX_ASSERT(c != NULL);
            total += c->size;
        }
        total += nd;
    }
    CCTX_ASSERT(total == n->size);
#endif
    return n;
}

/* A bitmap node at `shift` holding the one entry (key, value): the value
 * retained, or (`adopt`) the caller's reference to it taken over. */
static inline hamt_node *leaf_make(unsigned shift, cctx_var *key, void *value, bool adopt)
{
    hamt_node *n = node_new(1, 1u << hamt_frag(key->hash, shift), 0, 2);
    if (n == NULL)
        return NULL;
    n->slot[0] = key;
    n->slot[1] = value;
    var_ref(key);
    if (!adopt)
        var_value_retain(key, value);
    return node_built(n);
}

/* A bitmap node at `shift` holding the one entry (key, value). */
static hamt_node *leaf_new(unsigned shift, cctx_var *key, void *value)
{
    return leaf_make(shift, key, value, false);
}

enum slot_op { SLOT_EMPTY, SLOT_ENTRY, SLOT_CHILD };

/*
 * Copy of bitmap node `n` in which the fragment `bit` is emptied (SLOT_EMPTY),
 * holds the entry (key, value) (SLOT_ENTRY; retained by the copy) or holds
 * `child` (SLOT_CHILD; the caller's reference moves into the copy on
 * success). Everything else is shared and retained — values and children
 * one by one; keys through a key source when there is one (`lend`: `n`
 * stays reachable from another map after this write, so it can be the
 * source; a node that borrows passes on its own source). `size` is the
 * copy's entry count. The result must not be empty.
 */
static hamt_node *bitmap_rebuild_ex(hamt_node *n, bool lend, uint32_t bit, enum slot_op op,
                                    cctx_var *key, void *value, hamt_node *child,
                                    uint32_t size, bool adopt)
{
    uint32_t dm = n->datamap & ~bit;
    uint32_t nm = n->nodemap & ~bit;
    if (op == SLOT_ENTRY)
        dm |= bit;
    else if (op == SLOT_CHILD)
        nm |= bit;
    const unsigned nd = hamt_popcount(dm);
    const unsigned old_nd = hamt_popcount(n->datamap);
    const unsigned nslots = 2 * nd + hamt_popcount(nm);

    /* The key source, flattened: a borrowing node hands on its own source
     * (never a chain), unless that source has lost its owners — then the
     * copy owns its keys, so that an orphaned source is not kept alive by
     * every later version of the map. The relaxed load is a hint that
     * orders nothing and needs to: nothing is written into `src` on its
     * word (borrow_acquire's compare-and-swap is a full barrier), and `n`'s
     * borrow reference keeps its keys alive whatever the count says. */
    hamt_node *src = key_source(n);
    if (src == NULL && lend)
        src = n;
    else if (src != NULL && owners_relaxed(src) == 0)
        src = NULL;
    if (src != NULL && nd == 0)
        src = NULL; /* no key to borrow */

    hamt_node *m = node_new(size, dm, nm, nslots + (src != NULL));
    if (m == NULL)
        return NULL;
    if (src != NULL && borrow_acquire(src)) {
        m->borrows = 1;
        m->slot[nslots] = src;
    } else {
        src = NULL; /* the trailing slot, if any, stays unused */
    }

    /* When `n` is the source, every entry copied from it is borrowed by
     * the rule without looking (same key, same fragment), and so is a new
     * entry at `bit` whose key is the one `n` holds there; only a
     * flattened source is walked with the cursor. */
    const bool from_n = src == n;
    const bool bit_borrowed = from_n && op == SLOT_ENTRY && (n->datamap & bit) != 0 &&
                              entry_key(n, below(n->datamap, bit)) == key;
    key_cursor cur = key_cursor_at(from_n ? NULL : src);
    /* Entries of `n` are copied in order, skipping the one at `bit` if
     * any: the index in `n` of the entry at b is the number copied so far,
     * plus one once b is past a skipped entry at `bit` (no bit count). */
    const uint32_t skipped = n->datamap & bit;
    unsigned i = 0, copied = 0;
    for (uint32_t rest = dm; rest != 0; rest &= rest - 1, i++) {
        uint32_t b = rest & (~rest + 1);
        bool borrowed;
        if (b == bit) {
            m->slot[2 * i] = key;
            m->slot[2 * i + 1] = value;
            borrowed = from_n ? bit_borrowed : key_is_borrowed(&cur, b, key);
        } else {
            unsigned k = copied++ + (skipped != 0 && skipped < b);
            m->slot[2 * i] = n->slot[2 * k];
            m->slot[2 * i + 1] = n->slot[2 * k + 1];
            borrowed = from_n || key_is_borrowed(&cur, b, m->slot[2 * i]);
        }
        /* The new entry's value: the caller's reference when adopted. */
        if (!adopt || b != bit)
            var_value_retain(m->slot[2 * i], m->slot[2 * i + 1]);
        if (!borrowed)
            var_ref(m->slot[2 * i]);
    }
    void **children = &m->slot[2 * nd];
    const uint32_t replaced = n->nodemap & bit; /* as `skipped`, for children */
    unsigned j = 0, passed = 0;
    for (uint32_t rest = nm; rest != 0; rest &= rest - 1, j++) {
        uint32_t b = rest & (~rest + 1);
        if (b == bit) {
            children[j] = child; /* the caller's reference moves in */
        } else {
            unsigned k = passed++ + (replaced != 0 && replaced < b);
            children[j] = n->slot[2 * old_nd + k];
            hamt_retain(children[j]);
        }
    }
    return node_built(m);
}

/* bitmap_rebuild_ex retaining the new entry's value (SLOT_ENTRY). */
static hamt_node *bitmap_rebuild(hamt_node *n, bool lend, uint32_t bit, enum slot_op op,
                                 cctx_var *key, void *value, hamt_node *child,
                                 uint32_t size)
{
    return bitmap_rebuild_ex(n, lend, bit, op, key, value, child, size, false);
}

/*
 * Copy of bitmap node `n` with the value of its entry `i` replaced by
 * `value` (retained by the copy), when `n` owns all its keys and stays
 * reachable from another map (`lend`): exactly what bitmap_rebuild builds
 * for SLOT_ENTRY at the fragment of an entry whose key it keeps — the same
 * maps, size and keys, every key borrowed from `n` as the copy's key
 * source (or, when `n`'s borrow field is full, every key owned) — without
 * the general walk: no maps to merge, no cursor, no per-entry rule, the
 * slots copied in one go. The withValue scope and a `set` of a variable
 * already bound in a shared root take this path (docs/performance.md).
 * NULL on allocation failure, with nothing retained.
 */
static hamt_node *bitmap_replace_lent(hamt_node *n, unsigned i, void *value, bool adopt)
{
    const unsigned nd = hamt_popcount(n->datamap);
    const unsigned nslots = 2 * nd + hamt_popcount(n->nodemap);
    hamt_node *m = node_new(n->size, n->datamap, n->nodemap, nslots + 1);
    if (m == NULL)
        return NULL;
    if (nslots == 2) {
        /* A one-entry root (a withValue scope over a context of one
         * variable): the two slots, without the copy's call. */
        m->slot[0] = n->slot[0];
    } else {
        memcpy(m->slot, n->slot, nslots * sizeof(void *));
    }
    m->slot[2 * i + 1] = value;
    const bool lent = borrow_acquire(n);
    if (lent) {
        m->borrows = 1;
        m->slot[nslots] = n;
    }
    for (unsigned k = 0; k < nd; k++) {
        /* Entry i's new value: the caller's reference when adopted. */
        if (!adopt || k != i)
            var_value_retain(m->slot[2 * k], m->slot[2 * k + 1]);
        if (!lent)
            var_ref(m->slot[2 * k]);
    }
    for (unsigned j = 2 * nd; j < nslots; j++)
        hamt_retain(m->slot[j]);
    return node_built(m);
}

/* Copy of array node `n` with fragment `idx` set to `child` (the caller's
 * reference moves in on success; NULL empties the slot). */
static hamt_node *array_rebuild(const hamt_node *n, unsigned idx, hamt_node *child,
                                uint32_t size)
{
    hamt_node *m = node_new(size, HAMT_ARRAY_MARK,
                            (n->nodemap & ~(1u << idx)) | (child != NULL ? 1u << idx : 0),
                            HAMT_ARRAY_SLOTS);
    if (m == NULL)
        return NULL;
    for (unsigned i = 0; i < HAMT_ARRAY_SLOTS; i++) {
        if (i == idx) {
            m->slot[i] = child;
        } else {
            m->slot[i] = n->slot[i];
            hamt_retain(m->slot[i]);
        }
    }
    return node_built(m);
}

/* Frees an array node under construction (its nodemap names exactly the
 * slots filled so far, possibly none, so node_free cannot tell its kind). */
static void array_discard(hamt_node *m)
{
    for (uint32_t rest = m->nodemap; rest != 0; rest &= rest - 1)
        hamt_release(m->slot[__builtin_ctz(rest)]);
    cctx_dealloc(m);
}

/*
 * Promotion: the array node equal to bitmap node `n` (at `shift`) with the
 * entry at `bit` replaced by `child`. The other entries move into one-entry
 * bitmap nodes one level down, since array slots hold only nodes.
 */
static hamt_node *bitmap_promote(const hamt_node *n, unsigned shift, uint32_t bit,
                                 hamt_node *child, uint32_t size)
{
    hamt_node *m = node_new(size, HAMT_ARRAY_MARK, 0, HAMT_ARRAY_SLOTS);
    if (m == NULL)
        return NULL;
    memset(m->slot, 0, HAMT_ARRAY_SLOTS * sizeof(void *));

    unsigned i = 0;
    for (uint32_t rest = n->datamap; rest != 0; rest &= rest - 1, i++) {
        uint32_t b = rest & (~rest + 1);
        if (b == bit)
            continue;
        hamt_node *leaf = leaf_new(shift + HAMT_BITS, entry_key(n, i), entry_value(n, i));
        if (leaf == NULL) {
            array_discard(m);
            return NULL;
        }
        m->slot[__builtin_ctz(b)] = leaf;
        m->nodemap |= b;
    }
    unsigned j = 0;
    for (uint32_t rest = n->nodemap; rest != 0; rest &= rest - 1, j++) {
        uint32_t b = rest & (~rest + 1);
        hamt_node *c = bitmap_child(n, j);
        hamt_retain(c);
        m->slot[__builtin_ctz(b)] = c;
        m->nodemap |= b;
    }
    m->slot[__builtin_ctz(bit)] = child; /* nothing can fail any more */
    m->nodemap |= bit;
    return node_built(m);
}

/*
 * Demotion: the bitmap node equal to array node `n` without its child at
 * `idx`. One-entry children become inline entries again (shape rule 1).
 */
static hamt_node *array_demote(const hamt_node *n, unsigned idx, uint32_t size)
{
    uint32_t dm = 0, nm = 0;
    for (uint32_t rest = n->nodemap & ~(1u << idx); rest != 0; rest &= rest - 1) {
        uint32_t b = rest & (~rest + 1);
        const hamt_node *c = n->slot[__builtin_ctz(b)];
        if (is_bitmap(c) && c->size == 1)
            dm |= b;
        else
            nm |= b;
    }
    const unsigned nd = hamt_popcount(dm);
    hamt_node *m = bitmap_node_new(size, dm, nm);
    if (m == NULL)
        return NULL;
    unsigned i = 0;
    for (uint32_t rest = dm; rest != 0; rest &= rest - 1, i++) {
        const hamt_node *c = n->slot[__builtin_ctz(rest)];
        m->slot[2 * i] = c->slot[0];
        m->slot[2 * i + 1] = c->slot[1];
        entry_retain(m->slot[2 * i], m->slot[2 * i + 1]);
    }
    unsigned j = 0;
    for (uint32_t rest = nm; rest != 0; rest &= rest - 1, j++) {
        m->slot[2 * nd + j] = n->slot[__builtin_ctz(rest)];
        hamt_retain(m->slot[2 * nd + j]);
    }
    return node_built(m);
}

/* A collision node of two entries (same full hash, different keys). */
static hamt_node *collision_pair(cctx_var *ka, void *va, cctx_var *kb, void *vb)
{
    hamt_node *m = node_new(2, 0, 0, 4); /* collision: both maps 0 */
    if (m == NULL)
        return NULL;
    m->slot[0] = ka;
    m->slot[1] = va;
    m->slot[2] = kb;
    m->slot[3] = vb;
    entry_retain(ka, va);
    entry_retain(kb, vb);
    return node_built(m);
}

/* Copy of collision node `n` without entry `drop` (n->size: drop none),
 * plus the entry (key, value) appended when key != NULL. */
static hamt_node *collision_rebuild(const hamt_node *n, unsigned drop, cctx_var *key,
                                    void *value)
{
    unsigned count = n->size - (drop < n->size) + (key != NULL);
    hamt_node *m = node_new(count, 0, 0, 2 * count); /* collision */
    if (m == NULL)
        return NULL;
    unsigned o = 0;
    for (unsigned i = 0; i < n->size; i++) {
        if (i == drop)
            continue;
        m->slot[2 * o] = n->slot[2 * i];
        m->slot[2 * o + 1] = n->slot[2 * i + 1];
        entry_retain(entry_key(m, o), entry_value(m, o));
        o++;
    }
    if (key != NULL) {
        m->slot[2 * o] = key;
        m->slot[2 * o + 1] = value;
        entry_retain(key, value);
    }
    return node_built(m);
}

/*
 * The subtree at `shift` for two occupants that reached the same slot above
 * `shift` but whose full hashes differ: the existing node `a` (a collision
 * node being pushed down; retained by the result) or, when `a` is NULL, the
 * entry (ka, va); and the entry (kb, vb). Their fragments are equal down to
 * some level and differ there: one single-child bitmap node per equal level,
 * then a two-slot node. Built bottom-up so a failure releases the part built.
 */
static hamt_node *pair_new(unsigned shift, uint32_t ha, cctx_var *ka, void *va,
                           hamt_node *a, uint32_t hb, cctx_var *kb, void *vb)
{
    unsigned s = shift;
    while (s < HAMT_LAST_SHIFT && hamt_frag(ha, s) == hamt_frag(hb, s))
        s += HAMT_BITS;
    const uint32_t bita = 1u << hamt_frag(ha, s);
    const uint32_t bitb = 1u << hamt_frag(hb, s);
    hamt_node *n;
    if (a != NULL) {
        n = bitmap_node_new(a->size + 1, bitb, bita);
        if (n == NULL)
            return NULL;
        n->slot[0] = kb;
        n->slot[1] = vb;
        n->slot[2] = a;
        entry_retain(kb, vb);
        hamt_retain(a);
    } else {
        n = bitmap_node_new(2, bita | bitb, 0);
        if (n == NULL)
            return NULL;
        unsigned ia = bita < bitb ? 0 : 1;
        n->slot[2 * ia] = ka;
        n->slot[2 * ia + 1] = va;
        n->slot[2 * (1 - ia)] = kb;
        n->slot[2 * (1 - ia) + 1] = vb;
        entry_retain(ka, va);
        entry_retain(kb, vb);
    }
    while (s > shift) {
        s -= HAMT_BITS;
        hamt_node *up = bitmap_node_new(n->size, 0, 1u << hamt_frag(hb, s));
        if (up == NULL) {
            hamt_release(n);
            return NULL;
        }
        up->slot[0] = n;
        n = up;
    }
    return node_built(n);
}

/* -------------------------------------------------------------- lookup */

static bool collision_find(const hamt_node *n, const cctx_var *key, void **value)
{
    for (unsigned i = 0; i < n->size; i++) {
        if (n->slot[2 * i] == key) {
            *value = n->slot[2 * i + 1];
            return true;
        }
    }
    return false;
}

/* The lookup loop from `n`, with `hash` the key's hash shifted down to
 * n's level: one node per iteration, no allocation, no atomics (the
 * nodes are immutable and the caller keeps the root alive). A get that
 * misses the thread's lookup cache spends most of its time here, so the
 * loop is inlined into hamt_find, the hash is shifted down a level at a
 * time (no shift count to keep), and the POPCNT flag (hamt_popcount) is
 * loaded once into a register. Below the last level the shifted hash is
 * 0, hamt_frag's fragment there; only collision nodes live there for a
 * reader, and they ignore it. */
static inline __attribute__((always_inline)) bool node_find(const hamt_node *n, uint32_t hash,
                                                            const cctx_var *key, void **value)
{
    for (;;) {
        const uint32_t dm = n->datamap;
        const uint32_t nm = n->nodemap;
        if (CCTX_LIKELY((dm & nm) == 0)) {
            /* The maps shifted so that the fragment's bit is the top one:
             * its sign says whether it is set, and the popcount counts
             * the bits below it plus itself. */
            const unsigned up = ~hash & HAMT_FRAG_MASK; /* 31 - fragment */
            const uint32_t d = dm << up;
            if ((int32_t)d < 0) {
                void *const *e = &n->slot[2 * hamt_popcount(d) - 2];
                if (e[0] != key)
                    return false;
                *value = e[1];
                return true;
            }
            const uint32_t c = nm << up;
            if ((int32_t)c >= 0)
                return (dm | nm) == 0 && collision_find(n, key, value);
            n = n->slot[2 * hamt_popcount(dm) + hamt_popcount(c) - 1];
        } else {
            n = n->slot[hash & HAMT_FRAG_MASK];
            if (n == NULL)
                return false;
        }
        hash >>= HAMT_BITS;
    }
}

bool hamt_find(const hamt_node *root, const cctx_var *key, void **value)
{
    if (root == NULL)
        return false;
    return node_find(root, key->hash, key, value);
}

bool hamt_find_hashed(const hamt_node *root, uint32_t hash, const cctx_var *key, void **value)
{
    if (root == NULL)
        return false;
    return node_find(root, hash, key, value);
}

/* Whether `root` is held by exactly one reference. */
bool hamt_is_unique(const hamt_node *root)
{
    return root != NULL && owners_of(cctx_load_uint(&((hamt_node *)root)->counts)) == 1;
}

/*
 * The value slot of `key` when the caller may overwrite it in place: the
 * key is bound and every node on its path has a reference count of 1 (so
 * no other root shares any of them). NULL otherwise. The caller owns
 * `root` (one reference), knows that no other thread can take a new
 * reference to it meanwhile (context.c's in-place handshake) and is the
 * only writer.
 *
 * Which count we see: another thread can only change a count through a
 * root that shares the node, i.e. a count >= 2 we would see, so a 1 stays
 * 1 (nobody but us can reach the node to take a reference). That alone
 * would allow relaxed loads; the acquire is for ordering. A node we now
 * hold alone may have been shared a moment ago: another thread read a
 * value in it (hamt_find, through its own copy) and then let go. Its read
 * must happen before our store into the slot, and nothing else orders
 * them (it may tell us through nothing more than a relaxed flag). The
 * chain that does, node by node:
 *
 * - Every step that takes a count from 2 to 1 is a read-modify-write
 *   with release (seq_cst): hamt_release / hamt_release_n / credits_drop
 *   decrement with a locked add. (The plain-load fast path of a release
 *   frees a node only its caller held: not one we reach.) Our acquire
 *   load reads that decrement or a later read-modify-write of the same
 *   count, which continues its release sequence, so it synchronizes with
 *   it: everything the decrementing thread did before is ordered before
 *   our store.
 * - A child is let go when its parent's contents go (owners_gone, or
 *   node_free by the parent's only holder), run by the thread whose
 *   decrement took the parent's owners to 0, or whose acquire load saw
 *   it the only one. Either read every earlier holder's decrement of the
 *   parent (one release sequence of read-modify-writes), so each holder's
 *   reads through the parent happen before the child's decrement, and by
 *   induction up the path, before our load of the child's count.
 * - At a root: a context holding a loan (hamt.c, "Shared credits") gives
 *   it back to a slot with a compare-and-swap (seq_cst) instead of
 *   touching the count. The count then still holds the credits (> 1, we
 *   back out) until a revoker empties the slot — a CAS that reads the
 *   give or a later CAS of the slot, so acquires it — and drops them with
 *   a locked add that our load then reads: the chain holder -> slot ->
 *   revoker -> count carries the holder's reads. A loan dropped without a
 *   slot is a plain decrement (credits_drop), as above.
 * - A root a reader still named under its hazard or epoch is released by
 *   a reclaimer after that reader let go (reclaim.c: the hazard clear is
 *   a release the scan acquires; epoch ends are annotated for TSan), so
 *   the reclaimer's decrement carries the reader's reads as well.
 * Borrow references (the upper bits) do not matter: a borrowing node
 * compares only the keys, and we store only a value.
 *
 * The root's own count is loaded again, with acquire, after the in-place
 * tag is set (hamt_is_unique in write_in_place); the children's counts
 * cannot change meanwhile (see above), so loading them here, before the
 * tag, orders just as well: the store comes after in program order.
 */
void **hamt_value_slot_if_unique(hamt_node *root, const cctx_var *key)
{
    if (root == NULL)
        return NULL;
    hamt_node *n = root;
    const uint32_t hash = key->hash;
    unsigned shift = 0;
    for (;;) {
        if (owners_acquire(n) != 1)
            return NULL; /* borrowers do not matter: they read only keys */
        const uint32_t dm = n->datamap;
        const uint32_t nm = n->nodemap;
        const unsigned frag = (hash >> (shift & 31)) & HAMT_FRAG_MASK;
        const uint32_t bit = 1u << frag;
        if ((dm & nm) == 0) {
            if (dm & bit) {
                void **e = &n->slot[2 * below(dm, bit)];
                return e[0] == key ? &e[1] : NULL;
            }
            if ((nm & bit) == 0) {
                if ((dm | nm) != 0)
                    return NULL;
                for (unsigned i = 0; i < n->size; i++) /* collision node */
                    if (n->slot[2 * i] == key)
                        return &n->slot[2 * i + 1];
                return NULL;
            }
            n = n->slot[2 * hamt_popcount(dm) + below(nm, bit)];
        } else {
            n = n->slot[frag];
            if (n == NULL)
                return NULL;
        }
        shift += HAMT_BITS;
    }
}

/* --------------------------------------------------------------- assoc */

/* Whether node `n`, met on a write's path below a node for which this was
 * `above`, stays reachable from another map after the write: some node on
 * the path, `n` included, has another owner. Only a hint (a relaxed load;
 * another thread may let go meanwhile): a wrong "yes" makes the copy
 * borrow from a node that then lives on without its owners until the copy
 * goes, a wrong "no" makes it own its keys as before. */
static inline bool lend_to(bool above, const hamt_node *n)
{
    return above || owners_relaxed(n) > 1;
}

/*
 * Binds key -> value in the subtree `n` (not NULL) at `shift`. CCTX_OK with
 * `*out` a new reference, or `*out == n` with no reference taken when the
 * key is already bound to `value`; `*added` says whether the size grew.
 * CCTX_ENOMEM: nothing changed.
 */
static cctx_status node_assoc(hamt_node *n, bool lend, unsigned shift, uint32_t hash,
                              cctx_var *key, void *value, hamt_node **out, bool *added);

static cctx_status bitmap_assoc(hamt_node *n, bool lend, unsigned shift, uint32_t hash,
                                cctx_var *key, void *value, hamt_node **out, bool *added)
{
    const uint32_t bit = 1u << hamt_frag(hash, shift);
    hamt_node *m, *sub;

    if (n->datamap & bit) {
        const unsigned i = below(n->datamap, bit);
        cctx_var *k = entry_key(n, i);
        void *v = entry_value(n, i);
        *added = k != key;
        if (k == key) {
            if (v == value) {
                *out = n;
                return CCTX_OK;
            }
            m = lend && !n->borrows
                    ? bitmap_replace_lent(n, i, value, false)
                    : bitmap_rebuild(n, lend, bit, SLOT_ENTRY, key, value, NULL, n->size);
            if (m == NULL)
                return CCTX_ENOMEM;
            *out = m;
            return CCTX_OK;
        }
        /* Two keys for one slot: both move one level down. */
        if (k->hash == hash)
            sub = collision_pair(k, v, key, value);
        else
            sub = pair_new(shift + HAMT_BITS, k->hash, k, v, NULL, hash, key, value);
        if (sub == NULL)
            return CCTX_ENOMEM;
        if (n->datamap == bit && n->nodemap == 0 && is_collision(sub)) {
            /* Shape rule 2: the collision node replaces this node. */
            *out = sub;
            return CCTX_OK;
        }
        if (hamt_popcount(n->nodemap) >= HAMT_BITMAP_MAX_CHILDREN)
            m = bitmap_promote(n, shift, bit, sub, n->size + 1);
        else
            m = bitmap_rebuild(n, lend, bit, SLOT_CHILD, NULL, NULL, sub, n->size + 1);
        if (m == NULL) {
            hamt_release(sub);
            return CCTX_ENOMEM;
        }
        *out = m;
        return CCTX_OK;
    }

    if (n->nodemap & bit) {
        hamt_node *child = bitmap_child(n, below(n->nodemap, bit));
        cctx_status st = node_assoc(child, lend_to(lend, child), shift + HAMT_BITS, hash, key,
                                    value, &sub, added);
        if (st != CCTX_OK)
            return st;
        if (sub == child) {
            *out = n;
            return CCTX_OK;
        }
        m = bitmap_rebuild(n, lend, bit, SLOT_CHILD, NULL, NULL, sub, n->size + *added);
        if (m == NULL) {
            hamt_release(sub);
            return CCTX_ENOMEM;
        }
        *out = m;
        return CCTX_OK;
    }

    m = bitmap_rebuild(n, lend, bit, SLOT_ENTRY, key, value, NULL, n->size + 1);
    if (m == NULL)
        return CCTX_ENOMEM;
    *added = true;
    *out = m;
    return CCTX_OK;
}

static cctx_status array_assoc(hamt_node *n, bool lend, unsigned shift, uint32_t hash,
                               cctx_var *key, void *value, hamt_node **out, bool *added)
{
    const unsigned idx = hamt_frag(hash, shift);
    hamt_node *child = n->slot[idx];
    hamt_node *sub;
    if (child == NULL) {
        sub = leaf_new(shift + HAMT_BITS, key, value);
        if (sub == NULL)
            return CCTX_ENOMEM;
        *added = true;
    } else {
        cctx_status st = node_assoc(child, lend_to(lend, child), shift + HAMT_BITS, hash, key,
                                    value, &sub, added);
        if (st != CCTX_OK)
            return st;
        if (sub == child) {
            *out = n;
            return CCTX_OK;
        }
    }
    hamt_node *m = array_rebuild(n, idx, sub, n->size + *added);
    if (m == NULL) {
        hamt_release(sub);
        return CCTX_ENOMEM;
    }
    *out = m;
    return CCTX_OK;
}

static cctx_status collision_assoc(hamt_node *n, bool lend, unsigned shift, uint32_t hash,
                                   cctx_var *key, void *value, hamt_node **out, bool *added)
{
    const uint32_t chash = entry_key(n, 0)->hash;
    hamt_node *m;
    if (hash != chash) {
        /* A different hash reached this slot: the collision node moves down
         * next to the new entry. */
        m = pair_new(shift, chash, NULL, NULL, n, hash, key, value);
        *added = true;
    } else {
        unsigned i = 0;
        while (i < n->size && entry_key(n, i) != key)
            i++;
        *added = i == n->size;
        if (!*added && entry_value(n, i) == value) {
            *out = n;
            return CCTX_OK;
        }
        m = collision_rebuild(n, i, key, value); /* i == size: drops none */
    }
    if (m == NULL)
        return CCTX_ENOMEM;
    *out = m;
    return CCTX_OK;
}

static cctx_status node_assoc(hamt_node *n, bool lend, unsigned shift, uint32_t hash,
                              cctx_var *key, void *value, hamt_node **out, bool *added)
{
    if (is_array(n))
        return array_assoc(n, lend, shift, hash, key, value, out, added);
    if (is_collision(n))
        return collision_assoc(n, lend, shift, hash, key, value, out, added);
    return bitmap_assoc(n, lend, shift, hash, key, value, out, added);
}

cctx_status hamt_assoc(hamt_node *root, cctx_var *key, void *value, hamt_node **out)
{
    hamt_node *m;
    if (root == NULL) {
        m = leaf_new(0, key, value);
        if (m == NULL)
            return CCTX_ENOMEM;
        *out = m;
        return CCTX_OK;
    }
    bool added;
    cctx_status st = node_assoc(root, lend_to(false, root), 0, key->hash, key, value, &m, &added);
    if (st != CCTX_OK)
        return st;
    if (m == root)
        hamt_retain(root); /* unchanged: the caller gets its own reference */
    *out = m;
    return CCTX_OK;
}

/*
 * hamt_assoc taking over the caller's reference to `value` (hamt.h). The
 * writes a scope's copy makes most — into an empty map, replacing or
 * adding an entry of the root node — build the one node that holds the
 * new entry here, and that node keeps the reference instead of retaining
 * the value (no value callback, no atomic increment, and none for the
 * caller's release that would follow). The same nodes hamt_assoc builds:
 * the branches below are bitmap_assoc's at the root, with its `lend`.
 * Every other write is hamt_assoc's, which retains the value; the
 * caller's reference is then released, after the map holds its own (so
 * that release is never the last). On failure nothing is built or taken:
 * the reference stays the caller's.
 */
cctx_status hamt_assoc_adopt(hamt_node *root, cctx_var *key, void *value, hamt_node **out)
{
    hamt_node *m = NULL;
    if (root == NULL) {
        m = leaf_make(0, key, value, true);
        if (m == NULL)
            return CCTX_ENOMEM;
        *out = m;
        return CCTX_OK;
    }
    if (is_bitmap(root)) {
        const uint32_t bit = 1u << hamt_frag(key->hash, 0);
        const bool lend = lend_to(false, root);
        bool built = false;
        if (root->datamap & bit) {
            const unsigned i = below(root->datamap, bit);
            if (entry_key(root, i) == key && entry_value(root, i) != value) {
                m = lend && !root->borrows
                        ? bitmap_replace_lent(root, i, value, true)
                        : bitmap_rebuild_ex(root, lend, bit, SLOT_ENTRY, key, value, NULL,
                                            root->size, true);
                built = true;
            }
        } else if ((root->nodemap & bit) == 0) {
            m = bitmap_rebuild_ex(root, lend, bit, SLOT_ENTRY, key, value, NULL, root->size + 1,
                                  true);
            built = true;
        }
        if (built) {
            if (m == NULL)
                return CCTX_ENOMEM;
            *out = m;
            return CCTX_OK;
        }
    }
    cctx_status st = hamt_assoc(root, key, value, out);
    if (st == CCTX_OK)
        var_value_release(key, value); /* the map holds its own reference */
    return st;
}

/* ------------------------------------------------------------- without */

/*
 * Removes `key` from the subtree `n` (not NULL) at `shift`. CCTX_OK with
 * `*out` a new reference (NULL: the subtree is now empty), CCTX_NOT_FOUND or
 * CCTX_ENOMEM, both with nothing changed.
 */
static cctx_status node_without(hamt_node *n, bool lend, unsigned shift, uint32_t hash,
                                const cctx_var *key, hamt_node **out);

static cctx_status bitmap_without(hamt_node *n, bool lend, unsigned shift, uint32_t hash,
                                  const cctx_var *key, hamt_node **out)
{
    const uint32_t bit = 1u << hamt_frag(hash, shift);
    hamt_node *m;

    if (n->datamap & bit) {
        if (entry_key(n, below(n->datamap, bit)) != key)
            return CCTX_NOT_FOUND;
        if (n->datamap == bit && n->nodemap == 0) {
            *out = NULL;
            return CCTX_OK;
        }
        if (n->datamap == bit && hamt_popcount(n->nodemap) == 1 &&
            is_collision(bitmap_child(n, 0))) {
            /* Shape rule 2: what is left is a lone collision node. */
            m = bitmap_child(n, 0);
            hamt_retain(m);
            *out = m;
            return CCTX_OK;
        }
        m = bitmap_rebuild(n, lend, bit, SLOT_EMPTY, NULL, NULL, NULL, n->size - 1);
        if (m == NULL)
            return CCTX_ENOMEM;
        *out = m;
        return CCTX_OK;
    }

    if ((n->nodemap & bit) == 0)
        return CCTX_NOT_FOUND;

    hamt_node *sub;
    hamt_node *child = bitmap_child(n, below(n->nodemap, bit));
    cctx_status st = node_without(child, lend_to(lend, child), shift + HAMT_BITS, hash, key,
                                  &sub);
    if (st != CCTX_OK)
        return st;
    if (sub == NULL) {
        /* Unreachable while rule 1 holds (children hold two entries or
         * more); handled so that the code does not depend on it. */
        if ((n->datamap | n->nodemap) == bit) {
            *out = NULL;
            return CCTX_OK;
        }
        m = bitmap_rebuild(n, lend, bit, SLOT_EMPTY, NULL, NULL, NULL, n->size - 1);
    } else if (is_bitmap(sub) && sub->size == 1) {
        /* Shape rule 1: a lone entry moves up into this node. */
        m = bitmap_rebuild(n, lend, bit, SLOT_ENTRY, entry_key(sub, 0), entry_value(sub, 0),
                           NULL, n->size - 1);
        hamt_release(sub); /* after the copy has retained the entry */
    } else if (is_collision(sub) && n->datamap == 0 && n->nodemap == bit) {
        *out = sub; /* shape rule 2 */
        return CCTX_OK;
    } else {
        m = bitmap_rebuild(n, lend, bit, SLOT_CHILD, NULL, NULL, sub, n->size - 1);
        if (m == NULL)
            hamt_release(sub);
    }
    if (m == NULL)
        return CCTX_ENOMEM;
    *out = m;
    return CCTX_OK;
}

static cctx_status array_without(hamt_node *n, bool lend, unsigned shift, uint32_t hash,
                                 const cctx_var *key, hamt_node **out)
{
    const unsigned idx = hamt_frag(hash, shift);
    hamt_node *child = n->slot[idx];
    if (child == NULL)
        return CCTX_NOT_FOUND;
    hamt_node *sub, *m;
    cctx_status st = node_without(child, lend_to(lend, child), shift + HAMT_BITS, hash, key,
                                  &sub);
    if (st != CCTX_OK)
        return st;
    if (sub == NULL && hamt_popcount(n->nodemap) - 1 < HAMT_ARRAY_MIN_CHILDREN) {
        m = array_demote(n, idx, n->size - 1);
    } else {
        m = array_rebuild(n, idx, sub, n->size - 1);
        if (m == NULL)
            hamt_release(sub);
    }
    if (m == NULL)
        return CCTX_ENOMEM;
    *out = m;
    return CCTX_OK;
}

static cctx_status collision_without(hamt_node *n, bool lend, unsigned shift, const cctx_var *key,
                                     hamt_node **out)
{
    unsigned i = 0;
    while (i < n->size && entry_key(n, i) != key)
        i++;
    if (i == n->size)
        return CCTX_NOT_FOUND;
    hamt_node *m;
    if (n->size == 2) {
        /* Rule 3: the survivor becomes a one-entry node, which a bitmap
         * parent then inlines (rule 1). */
        m = leaf_new(shift, entry_key(n, 1 - i), entry_value(n, 1 - i));
    } else {
        m = collision_rebuild(n, i, NULL, NULL);
    }
    if (m == NULL)
        return CCTX_ENOMEM;
    *out = m;
    return CCTX_OK;
}

static cctx_status node_without(hamt_node *n, bool lend, unsigned shift, uint32_t hash,
                                const cctx_var *key, hamt_node **out)
{
    if (is_array(n))
        return array_without(n, lend, shift, hash, key, out);
    if (is_collision(n))
        return collision_without(n, lend, shift, key, out);
    return bitmap_without(n, lend, shift, hash, key, out);
}

cctx_status hamt_without(hamt_node *root, const cctx_var *key, hamt_node **out)
{
    if (root == NULL)
        return CCTX_NOT_FOUND;
    hamt_node *m;
    cctx_status st = node_without(root, lend_to(false, root), 0, key->hash, key, &m);
    if (st != CCTX_OK)
        return st;
    *out = m;
    return CCTX_OK;
}

/* ------------------------------------------------------------ equality */

/* Every entry of subtree `a` is in subtree `b` (both at `shift`) with the
 * same value. With equal sizes and distinct keys, that is equality. */
static bool subtree_contained(const hamt_node *a, const hamt_node *b, unsigned shift)
{
    hamt_iter it;
    cctx_var *key;
    void *va, *vb;
    hamt_iter_init(&it, a);
    while (hamt_iter_next(&it, &key, &va)) {
        if (!node_find(b, shift < 32 ? key->hash >> shift : 0, key, &vb) || va != vb)
            return false;
    }
    return true;
}

static bool node_equal(const hamt_node *a, const hamt_node *b, unsigned shift)
{
    if (a == b)
        return true; /* shared subtree */
    if (a->size != b->size)
        return false;
    if (a->datamap != b->datamap || a->nodemap != b->nodemap || is_collision(a))
        return subtree_contained(a, b, shift);
    if (is_array(a)) {
        for (uint32_t rest = a->nodemap; rest != 0; rest &= rest - 1) {
            unsigned i = __builtin_ctz(rest);
            if (!node_equal(a->slot[i], b->slot[i], shift + HAMT_BITS))
                return false;
        }
        return true;
    }
    /* Same bitmaps: entries and children line up slot for slot. */
    const unsigned nd = hamt_popcount(a->datamap);
    const unsigned nc = hamt_popcount(a->nodemap);
    for (unsigned i = 0; i < 2 * nd; i++) {
        if (a->slot[i] != b->slot[i])
            return false;
    }
    for (unsigned j = 0; j < nc; j++) {
        if (!node_equal(a->slot[2 * nd + j], b->slot[2 * nd + j], shift + HAMT_BITS))
            return false;
    }
    return true;
}

bool hamt_equal(const hamt_node *a, const hamt_node *b)
{
    if (a == b)
        return true;
    if (a == NULL || b == NULL)
        return false; /* the non-empty one has size >= 1 */
    return node_equal(a, b, 0);
}

/* ----------------------------------------------------------- iteration */

void hamt_iter_init(hamt_iter *it, const hamt_node *root)
{
    it->nodes[0] = root;
    it->positions[0] = 0;
    it->depth = root != NULL ? 0 : -1;
}

/*
 * positions[d] counts what node d has handed out: for bitmap and collision
 * nodes, entries then children in slot order; for array nodes, the next
 * fragment to look at.
 */
bool hamt_iter_next(hamt_iter *it, cctx_var **key, void **value)
{
    while (it->depth >= 0) {
        const hamt_node *n = it->nodes[it->depth];
        const uint32_t p = it->positions[it->depth];
        const hamt_node *child = NULL;
        if (is_array(n)) {
            uint32_t rest = p < HAMT_ARRAY_SLOTS ? n->nodemap & (~0u << p) : 0;
            if (rest != 0) {
                unsigned i = __builtin_ctz(rest);
                it->positions[it->depth] = i + 1;
                child = n->slot[i];
            }
        } else {
            const unsigned nd = entry_count(n);
            const unsigned nc = hamt_popcount(n->nodemap);
            if (p < nd) {
                it->positions[it->depth] = p + 1;
                *key = entry_key(n, p);
                *value = entry_value(n, p);
                return true;
            }
            if (p < nd + nc) {
                it->positions[it->depth] = p + 1;
                child = n->slot[nd + p]; /* 2 * nd + (p - nd) */
            }
        }
        if (child != NULL) {
            it->depth++;
            it->nodes[it->depth] = child;
            it->positions[it->depth] = 0;
        } else {
            it->depth--;
        }
    }
    return false;
}

/* -------------------------------------------------------------- checks */

enum parent_kind { PARENT_NONE, PARENT_BITMAP, PARENT_ARRAY };

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond))                                                           \
            return __LINE__;                                                   \
    } while (0)

/* Key of an entry found at `shift` whose hash must start with `prefix`. */
static int check_key(const cctx_var *key, unsigned shift, uint32_t prefix)
{
    CHECK(var_is_valid(key));
    CHECK(cctx_load_uint_relaxed(&key->refcnt) >= 1);
    uint32_t mask = shift >= 32 ? 0xFFFFFFFFu : (1u << shift) - 1;
    CHECK((key->hash & mask) == prefix);
    return 0;
}

static int check_node(const hamt_node *n, unsigned shift, uint32_t prefix,
                      enum parent_kind parent, unsigned depth)
{
    int line;
    uint64_t total = 0;
    CHECK(n != NULL);
    CHECK(depth < HAMT_MAX_DEPTH);
    CHECK(owners_relaxed(n) >= 1);
    CHECK(n->size >= 1);
    if (n->borrows) {
        /* A key source is a bitmap node that does not borrow itself and
         * counts this node's borrow reference besides its owners'. */
        const hamt_node *src = key_source(n);
        CHECK(is_bitmap(n) && src != NULL && is_bitmap(src) && !src->borrows);
        const unsigned c = cctx_load_uint_relaxed(&((hamt_node *)src)->counts);
        CHECK((c >> HAMT_OWNER_BITS) >= 1u + (owners_of(c) != 0));
    }

    if (is_array(n)) {
        CHECK(n->datamap == HAMT_ARRAY_MARK);
        CHECK(shift + HAMT_BITS <= HAMT_LAST_SHIFT);
        CHECK(hamt_popcount(n->nodemap) >= HAMT_ARRAY_MIN_CHILDREN);
        for (unsigned i = 0; i < HAMT_ARRAY_SLOTS; i++) {
            const hamt_node *c = n->slot[i];
            CHECK((c != NULL) == ((n->nodemap >> i) & 1));
            if (c == NULL)
                continue;
            line = check_node(c, shift + HAMT_BITS, prefix | ((uint32_t)i << shift),
                              PARENT_ARRAY, depth + 1);
            if (line != 0)
                return line;
            total += c->size;
        }
        CHECK(total == n->size);
        return 0;
    }

    if (is_collision(n)) {
        CHECK(n->size >= 2);
        const uint32_t hash = entry_key(n, 0)->hash;
        for (unsigned i = 0; i < n->size; i++) {
            line = check_key(entry_key(n, i), shift, prefix);
            if (line != 0)
                return line;
            CHECK(entry_key(n, i)->hash == hash);
            for (unsigned k = 0; k < i; k++)
                CHECK(entry_key(n, k) != entry_key(n, i));
        }
        return 0;
    }

    /* bitmap */
    const unsigned nd = hamt_popcount(n->datamap);
    const unsigned nc = hamt_popcount(n->nodemap);
    CHECK((n->datamap & n->nodemap) == 0);
    CHECK(shift <= HAMT_LAST_SHIFT);
    CHECK(shift < HAMT_LAST_SHIFT || ((n->datamap | n->nodemap) & ~0xFu) == 0);
    CHECK(nc <= HAMT_BITMAP_MAX_CHILDREN);
    if (parent == PARENT_BITMAP)
        CHECK(n->size >= 2); /* rule 1 */
    if (nd == 0 && nc == 1)
        CHECK(!is_collision(bitmap_child(n, 0))); /* rule 2 */
    unsigned i = 0;
    for (uint32_t rest = n->datamap; rest != 0; rest &= rest - 1, i++) {
        const cctx_var *key = entry_key(n, i);
        line = check_key(key, shift, prefix);
        if (line != 0)
            return line;
        CHECK(hamt_frag(key->hash, shift) == (unsigned)__builtin_ctz(rest));
    }
    unsigned j = 0;
    for (uint32_t rest = n->nodemap; rest != 0; rest &= rest - 1, j++) {
        const hamt_node *c = bitmap_child(n, j);
        CHECK(c != NULL);
        line = check_node(c, shift + HAMT_BITS,
                          prefix | ((uint32_t)__builtin_ctz(rest) << shift),
                          PARENT_BITMAP, depth + 1);
        if (line != 0)
            return line;
        total += c->size;
    }
    CHECK(total + nd == n->size);
    return 0;
}

/* The j-th child (fragment order) of any node kind; NULL when none. */
static const hamt_node *child_rank(const hamt_node *n, unsigned j)
{
    if (is_collision(n))
        return NULL;
    unsigned k = 0;
    for (uint32_t rest = n->nodemap; rest != 0; rest &= rest - 1, k++) {
        if (k != j)
            continue;
        return is_array(n) ? n->slot[__builtin_ctz(rest)] : bitmap_child(n, j);
    }
    return NULL;
}

hamt_shape hamt_shape_at(const hamt_node *root, const char *path)
{
    hamt_shape sh = { 0 };
    const hamt_node *n = root;
    while (n != NULL && *path != '\0') {
        char *end;
        unsigned long j = strtoul(path, &end, 10);
        if (end == path)
            return sh;
        n = child_rank(n, (unsigned)j);
        path = *end == '.' ? end + 1 : end;
    }
    if (n == NULL)
        return sh;
    sh.kind = is_array(n) ? 'a' : is_collision(n) ? 'c' : 'b';
    sh.size = n->size;
    const unsigned counts = cctx_load_uint_relaxed(&((hamt_node *)n)->counts);
    /* Credits are references nobody uses yet: not counted here. */
    unsigned credit_owners, credit_borrows;
    credits_held(n, &credit_owners, &credit_borrows);
    sh.refcnt = owners_of(counts) - credit_owners;
    sh.borrowers = (counts >> HAMT_OWNER_BITS) - (owners_of(counts) != 0) - credit_borrows;
    sh.source = key_source(n);
    sh.entries = is_array(n) ? 0 : entry_count(n);
    sh.children = hamt_popcount(n->nodemap);
    sh.datamap = n->datamap;
    sh.nodemap = n->nodemap;
    return sh;
}

int hamt_check(const hamt_node *root)
{
    if (root == NULL)
        return 0;
    return check_node(root, 0, 0, PARENT_NONE, 0);
}

/* ---------------------------------------------------------------- dump */

/* `index`: the fragment of a bitmap entry, or the position in a collision. */
static void dump_entry(FILE *out, int indent, bool in_collision, unsigned index,
                       const cctx_var *key, const void *value)
{
    fprintf(out, in_collision ? "%*s#%u" : "%*s[%u]", indent, "", index);
    fprintf(out, " %p hash %08x%s%s%s -> %p\n",
            (const void *)key, key->hash, key->name ? " (" : "",
            key->name ? key->name : "", key->name ? ")" : "", value);
}

static void dump_node(FILE *out, const hamt_node *n, unsigned shift, int indent)
{
    const unsigned refcnt = owners_relaxed(n);
    if (is_array(n)) {
        fprintf(out, "%*sarray level %u size %u refcnt %u children %u\n", indent, "",
                shift / HAMT_BITS, (unsigned)n->size, refcnt, hamt_popcount(n->nodemap));
        for (uint32_t rest = n->nodemap; rest != 0; rest &= rest - 1) {
            fprintf(out, "%*s[%u]\n", indent + 2, "", (unsigned)__builtin_ctz(rest));
            dump_node(out, n->slot[__builtin_ctz(rest)], shift + HAMT_BITS, indent + 4);
        }
        return;
    }
    if (is_collision(n)) {
        fprintf(out, "%*scollision level %u size %u refcnt %u hash %08x\n", indent, "",
                shift / HAMT_BITS, (unsigned)n->size, refcnt, entry_key(n, 0)->hash);
        for (unsigned i = 0; i < n->size; i++)
            dump_entry(out, indent + 2, true, i, entry_key(n, i), entry_value(n, i));
        return;
    }
    fprintf(out, "%*sbitmap level %u size %u refcnt %u datamap %08x nodemap %08x",
            indent, "", shift / HAMT_BITS, (unsigned)n->size, refcnt, n->datamap, n->nodemap);
    if (n->borrows)
        fprintf(out, " keys from %p", (void *)key_source(n));
    fputc('\n', out);
    unsigned i = 0;
    for (uint32_t rest = n->datamap; rest != 0; rest &= rest - 1, i++)
        dump_entry(out, indent + 2, false, (unsigned)__builtin_ctz(rest), entry_key(n, i),
                   entry_value(n, i));
    unsigned j = 0;
    for (uint32_t rest = n->nodemap; rest != 0; rest &= rest - 1, j++) {
        fprintf(out, "%*s[%u]\n", indent + 2, "", (unsigned)__builtin_ctz(rest));
        dump_node(out, bitmap_child(n, j), shift + HAMT_BITS, indent + 4);
    }
}

void hamt_dump(FILE *out, const hamt_node *root)
{
    if (root == NULL) {
        fprintf(out, "(empty map)\n");
        return;
    }
    dump_node(out, root, 0, 0);
}
