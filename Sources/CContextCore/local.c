/*
 * local.c — threading.local for C: one value per OS thread, any number of
 * locals, no pthread_key per local.
 *
 * Storage layout
 * --------------
 * A local is a slot index plus a generation. Indices come from a global
 * allocator and are reused once a local is gone; generations come from one
 * 64-bit counter and are never reused, so (index, generation) names exactly
 * one local for the life of the process.
 *
 * Each thread that uses locals owns a table (struct local_slots, hung off
 * its cctx_thread_state as `ts->locals`). The table points at a directory,
 * a growable array of pointers to fixed-size chunks of LOCAL_CHUNK_SLOTS
 * slots; slot i lives at chunks[i / LOCAL_CHUNK_SLOTS][i % LOCAL_CHUNK_SLOTS].
 * A slot is {generation, value, release}:
 *
 *   slot.gen != local.gen          this thread never touched the local, or
 *                                  deleted its value: the initialiser runs
 *                                  on the next get (a delete sets gen to 0,
 *                                  which no local has).
 *   slot.gen == local.gen, value   the thread's value (NULL is a value).
 *   slot.gen == local.gen, EMPTY   released by the thread's teardown or with
 *                                  the local: get says CCTX_NOT_FOUND and
 *                                  runs no initialiser.
 *
 * `release` is the local's release callback (and its user pointer), copied
 * when the value is stored, so a thread that exits can release its values
 * without looking at locals that may be dying on another thread at that
 * very moment.
 *
 *   cctx_thread_state          local_slots             local_dir
 *   +-----------+           +-------------+        +-------------+
 *   | locals  --+---------->| dir       --+------->| cap = 4     |   chunk 0
 *   +-----------+           | next, prev  |        | chunks[0] --+--> [slot 0..63]
 *                           +-------------+        | chunks[1]   |--> NULL (untouched)
 *                             registry list        | chunks[2] --+--> [slot 128..191]
 *                             (all threads)        | chunks[3]   |--> NULL
 *                                                  +-------------+
 *
 * Invariants
 * ----------
 * I1. Chunks never move and are never freed while their table lives: a
 *     slot's address is stable from the chunk's publication until the
 *     owning thread's table is destroyed. Growth replaces only the
 *     directory; the new one holds the same chunk pointers.
 * I2. Only the owning thread writes its table, directory, chunks and the
 *     `gen` and `release` fields of its slots. Other threads write nothing
 *     but a slot's `value`, and only with an atomic exchange.
 * I3. A value is owned by exactly one slot; whoever takes it out of the
 *     slot with the atomic exchange (the owner's delete/exit, or the
 *     local's final release on any thread) releases it, once. The owner's
 *     set on a slot already its local's needs no exchange: no final
 *     release of that local can run while the caller holds a reference
 *     (see cctx_local_set), so it loads and stores.
 * I4. A thread's table is on the registry list from before its first value
 *     is stored until its thread state is destroyed.
 * I5. An index goes back to the allocator only after the local's final
 *     release has visited every table on the registry; so while a thread
 *     can still hold a value of local (i, g), no other local uses index i.
 *
 * Reclamation argument
 * --------------------
 * The final release of a local L = (i, g) (`local_release_everywhere`)
 * walks the registry inside a read section (reclaim.h) and, in each table whose
 * slot i carries generation g, exchanges the value with EMPTY and releases
 * what it took out. Why that is enough and safe:
 *
 * - Every value of L is found. A thread T that stored one registered its
 *   table (under registry_lock, published with a release store) and
 *   published the chunk before storing; T's store happens-before L's final
 *   release (T used L under a reference of its own, whose drop is ordered
 *   before the last one by the reference count's full-barrier decrement).
 *   So the walk, which loads every link with acquire, sees T's table, the
 *   chunk and the value. Tables registered after the walk began never hold
 *   a value of L: nobody may use L once its last reference is gone.
 * - Nothing is released twice. T's exit, set and delete also take values
 *   out with an atomic exchange (I3); the exchange is a single total order
 *   on the slot, so exactly one party gets the pointer, the other EMPTY.
 * - Nothing is read after free. The walk reads tables, directories and
 *   chunks of threads that may be exiting or growing concurrently:
 *     * a replaced directory is deferred (reclaim_defer) on the owner's
 *       record and freed only after a grace period, i.e. after every
 *       section that might still hold it;
 *     * an exiting thread first releases its values with the table still
 *       registered (release callbacks may use locals, which store into that
 *       same table; thread_state.c repeats this until nothing new appears),
 *       then unlinks its table (walks already on it keep following its
 *       `next`, as in an RCU list) and waits for a grace period
 *       (reclaim_barrier) before freeing table, directory and chunks. Any
 *       walk that could have reached the table began before the unlink and
 *       so ends before the barrier returns.
 * - A stale value is never shown. Slot i of a table keeps the generation
 *   of the last local that used it there; a new local at index i has a
 *   fresh generation, so it compares unequal and the slot counts as
 *   untouched. The adopting store takes out (and releases) whatever the
 *   slot still held, so even a value I5 says cannot be there is not leaked.
 *
 * Locks, none on get/set/delete:
 * - registry_lock: a thread's first use of any local (register its table)
 *   and thread exit/cleanup (unlink it). Once per thread, not per access.
 * - index_lock: cctx_local_new and a local's final release (index
 *   allocation). Once per local.
 *
 * A final release walks in a section on the calling thread's own record;
 * a thread without a state (it never used ContextKit, or its teardown gave
 * the record back) uses reclaim.c's fallback record. It never creates a
 * state or a record: a final release cannot fail. Final releases on
 * different threads walk at the same time; the exchanges arbitrate (I3).
 *
 * No release callback runs under any of these locks or inside a read
 * section. A final release takes values out of the slots in batches of
 * RELEASE_BATCH (a stack array: it must not allocate), leaves its section,
 * releases the batch, and walks again from the head
 * for the rest (slots already taken hold EMPTY and are passed over). So a
 * slow or blocking callback holds up no reader, writer, exiting thread or
 * other local's release — and a callback that takes a lock of its own (a
 * language binding's interpreter lock) cannot deadlock against a thread
 * that holds that lock and releases another local. A callback may release
 * the last reference to another local: that is simply another walk.
 *
 * fork(): both locks are taken by the runtime's fork handlers (see
 * local_atfork_prepare), so a child never starts with one held.
 */
#include "internal.h"
#include "atomic.h"
#include "reclaim.h"
#include "thread_state.h"
#include "var.h"

#include <pthread.h>
#include <string.h>

#define CCTX_LOCAL_MAGIC 0x4c4f434cu /* "LOCL" */

#define LOCAL_CHUNK_SHIFT 6u
#define LOCAL_CHUNK_SLOTS (1u << LOCAL_CHUNK_SHIFT)
#define LOCAL_CHUNK_MASK (LOCAL_CHUNK_SLOTS - 1u)
#define LOCAL_DIR_MIN 4u

struct cctx_local {
    uint32_t magic;
    unsigned refcnt;
    uint32_t index;
    uintptr_t gen;
    cctx_value_ops ops;           /* at most one of ops / ops_ex is set */
    cctx_value_ops_ex ops_ex;
    cctx_local_init_fn init;
    void *userdata;
};

/* How to drop a value, for either callback shape, without the local. */
struct local_release {
    void (*ex)(void *ctx, void *value); /* set: call ex(u.ctx, value) */
    union {
        void *ctx;
        void (*plain)(void *value);     /* ex == NULL: call plain(value) */
    } u;
};

struct local_slot {
    uintptr_t gen;                /* owner writes; anyone reads (atomic) */
    void *value;                  /* a value, or LOCAL_EMPTY; exchanged */
    struct local_release release; /* owner only: how to drop `value` */
};

struct local_dir {
    size_t cap;                   /* immutable once published */
    struct local_slot *chunks[];  /* NULL: no slot of that chunk used yet */
};

struct local_slots {
    struct local_dir *dir;        /* replaced by the owner, read by walks */
    struct local_slots *next;     /* registry links; next is read by walks */
    struct local_slots *prev;     /* under registry_lock only */
};

/* The "no value" marker. NULL cannot serve: NULL is a value users store. */
static char local_empty_marker;
#define LOCAL_EMPTY ((void *)&local_empty_marker)

/* ---------------------------------------------------------------- indices */

/* Index allocator, under index_lock (off the hot path: new and final
 * release only). Invariant: free_cap >= next_index, so returning an index
 * never allocates (a final release cannot fail). When no local is alive
 * the array is freed and numbering restarts at 0; generations keep
 * counting, so restarting cannot make an old slot look current. */
static pthread_mutex_t index_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t *free_indices;
static uint32_t free_count;
static uint32_t free_cap;
static uint32_t next_index;
static uintptr_t last_gen;

static cctx_status local_index_acquire(uint32_t *index, uintptr_t *gen)
{
    cctx_status st = CCTX_OK;
    pthread_mutex_lock(&index_lock);
    if (free_count > 0) {
        *index = free_indices[--free_count];
    } else if (next_index == UINT32_MAX) {
        st = CCTX_ENOMEM;
    } else {
        if (free_cap < next_index + 1) {
            uint32_t cap = free_cap < 16 ? 16 : free_cap;
            while (cap < next_index + 1)
                cap = cap > UINT32_MAX / 2 ? UINT32_MAX : cap * 2;
            uint32_t *grown = cctx_realloc(free_indices, (size_t)cap * sizeof *grown);
            if (grown == NULL) {
                st = CCTX_ENOMEM;
                goto out;
            }
            free_indices = grown;
            free_cap = cap;
        }
        *index = next_index++;
    }
    *gen = ++last_gen;
out:
    pthread_mutex_unlock(&index_lock);
    return st;
}

static void local_index_return(uint32_t index)
{
    pthread_mutex_lock(&index_lock);
    free_indices[free_count++] = index; /* free_cap >= next_index > free_count */
    if (free_count == next_index) {
        /* No local is alive: give the array back (leak tests see a count
         * that returns to its start). */
        cctx_dealloc(free_indices);
        free_indices = NULL;
        free_count = free_cap = next_index = 0;
    }
    pthread_mutex_unlock(&index_lock);
}

/* --------------------------------------------------------------- registry */

/* All live threads' tables. Insert and unlink under registry_lock (once per
 * thread); walked without the lock inside a read section. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct local_slots *registry_head;

static void registry_insert(struct local_slots *t)
{
    pthread_mutex_lock(&registry_lock);
    t->prev = NULL;
    t->next = registry_head;
    if (registry_head != NULL)
        registry_head->prev = t;
    /* Release: a walk that loads the head sees the table fully built. */
    cctx_store_ptr(&registry_head, t);
    pthread_mutex_unlock(&registry_lock);
}

static void registry_unlink(struct local_slots *t)
{
    pthread_mutex_lock(&registry_lock);
    struct local_slots *next = t->next;
    if (next != NULL)
        next->prev = t->prev;
    if (t->prev != NULL)
        cctx_store_ptr(&t->prev->next, next);
    else
        cctx_store_ptr(&registry_head, next);
    /* t->next stays: a walk standing on t continues through it. */
    pthread_mutex_unlock(&registry_lock);
}

/* ------------------------------------------------------------------- fork */

/* fork() copies this file's locks as they are: one another thread held at
 * that moment would stay held in the child for ever. reclaim.c's fork
 * handlers (one registration, so one lock order for the whole runtime)
 * call these: prepare takes every lock of this file, in a fixed order,
 * so that no other thread is inside one at the fork and the registry and
 * the index allocator are consistent in the child; parent and child give
 * them back (in the child the forking thread owns them, so unlocking is
 * valid). Neither lock is held while taking any other lock, and no code
 * takes reclaim.c's fallback lock while holding one of these (reclaim.c
 * takes the fallback lock before calling prepare), so the order cannot
 * deadlock. */
void local_atfork_prepare(void)
{
    pthread_mutex_lock(&index_lock);
    pthread_mutex_lock(&registry_lock);
}

void local_atfork_parent(void)
{
    pthread_mutex_unlock(&registry_lock);
    pthread_mutex_unlock(&index_lock);
}

/* The registry still lists the tables of threads that did not survive the
 * fork. They stay: their values belong to nobody now, and a local's final
 * release in the child takes them out and releases them, as CPython
 * clears other threads' locals after a fork. */
void local_atfork_child(void)
{
    pthread_mutex_unlock(&registry_lock);
    pthread_mutex_unlock(&index_lock);
}

/* ------------------------------------------------------------------ slots */

static inline bool local_is_valid(const cctx_local *local)
{
    return local != NULL && local->magic == CCTX_LOCAL_MAGIC;
}

static inline bool local_is_value(const void *v)
{
    return v != LOCAL_EMPTY && v != NULL;
}

static inline struct local_release local_release_of(const cctx_local *local)
{
    struct local_release r;
    if (local->ops_ex.release != NULL) {
        r.ex = local->ops_ex.release;
        r.u.ctx = local->ops_ex.ctx;
    } else {
        r.ex = NULL;
        r.u.plain = local->ops.release;
    }
    return r;
}

static inline void local_release_call(struct local_release r, void *value)
{
    if (!local_is_value(value))
        return;
    if (r.ex != NULL)
        r.ex(r.u.ctx, value);
    else if (r.u.plain != NULL)
        r.u.plain(value);
}

static inline void local_value_retain(const cctx_local *local, void *value)
{
    if (value == NULL)
        return;
    if (local->ops.retain != NULL)
        local->ops.retain(value);
    else if (local->ops_ex.retain != NULL)
        local->ops_ex.retain(local->ops_ex.ctx, value);
}

static inline void local_value_release(const cctx_local *local, void *value)
{
    local_release_call(local_release_of(local), value);
}

/* The slot for `index` in a table, or NULL if its chunk does not exist.
 * Any thread, any time the table is reachable (owner, or a walk inside its
 * read section). */
static inline struct local_slot *local_slot_find(struct local_slots *t, uint32_t index)
{
    if (t == NULL)
        return NULL;
    struct local_dir *dir = cctx_load_ptr(&t->dir);
    size_t k = index >> LOCAL_CHUNK_SHIFT;
    if (dir == NULL || k >= dir->cap)
        return NULL;
    struct local_slot *chunk = cctx_load_ptr(&dir->chunks[k]);
    if (chunk == NULL)
        return NULL;
    return &chunk[index & LOCAL_CHUNK_MASK];
}

/* The calling thread's slot for `index` (owner only): through the state's
 * shortcut to chunk 0 when the index is there, else through the table. */
static inline struct local_slot *local_own_slot(const cctx_thread_state *ts, uint32_t index)
{
    if (CCTX_LIKELY(index < LOCAL_CHUNK_SLOTS && ts->local_chunk0 != NULL))
        return &ts->local_chunk0[index];
    return local_slot_find(ts->locals, index);
}

/* Runs after a grace period (reclaim_defer): no walk holds the directory. */
static void local_dir_free(void *dir)
{
    cctx_dealloc(dir);
}

/* Makes sure this thread has a slot for `index`, allocating its table,
 * directory and chunk as needed. All allocations happen before anything is
 * linked, so CCTX_ENOMEM changes nothing. Owner thread only. */
static cctx_status local_slot_ensure(cctx_thread_state *ts, uint32_t index,
                                     struct local_slot **out)
{
    struct local_slots *t = ts->locals;
    struct local_slot *slot = local_own_slot(ts, index);
    if (CCTX_LIKELY(slot != NULL)) {
        *out = slot;
        return CCTX_OK;
    }

    size_t k = index >> LOCAL_CHUNK_SHIFT;
    struct local_dir *old = t != NULL ? t->dir : NULL;
    struct local_slots *new_table = NULL;
    struct local_dir *new_dir = NULL;
    reclaim_deferral *retire_old = NULL;
    struct local_slot *chunk = cctx_alloc_zeroed(LOCAL_CHUNK_SLOTS * sizeof *chunk);
    if (chunk == NULL)
        goto fail;
    if (old == NULL || k >= old->cap) {
        size_t cap = old != NULL ? old->cap * 2 : LOCAL_DIR_MIN;
        while (cap <= k)
            cap *= 2;
        new_dir = cctx_alloc_zeroed(sizeof *new_dir + cap * sizeof new_dir->chunks[0]);
        if (new_dir == NULL)
            goto fail;
        new_dir->cap = cap;
        /* Replacing a directory defers the old one: allocated now, so
         * that nothing can fail once the new one is visible. */
        if (old != NULL && (retire_old = reclaim_deferral_new()) == NULL)
            goto fail;
        if (old != NULL)
            memcpy(new_dir->chunks, old->chunks, old->cap * sizeof old->chunks[0]);
    }
    if (t == NULL) {
        new_table = cctx_alloc_zeroed(sizeof *new_table);
        if (new_table == NULL)
            goto fail;
    }

    /* Nothing can fail from here on. */
    if (new_dir != NULL) {
        new_dir->chunks[k] = chunk;
        if (new_table != NULL) {
            new_table->dir = new_dir;
            t = new_table;
            ts->locals = t;
            registry_insert(t); /* I4: before any value is stored */
        } else {
            /* Release: a walk that loads the new directory sees its
             * entries. The old one may still be read by a walk in progress,
             * so it waits for a grace period (I1: the chunks it points at
             * are shared with the new one and stay). */
            cctx_store_ptr(&t->dir, new_dir);
            reclaim_defer_prepared(ts->record, retire_old, old, local_dir_free);
        }
    } else {
        /* Release: a walk that loads the pointer sees a zeroed chunk. */
        cctx_store_ptr(&old->chunks[k], chunk);
    }
    if (k == 0)
        ts->local_chunk0 = chunk; /* the owner's shortcut (thread_state.h) */
    *out = &chunk[index & LOCAL_CHUNK_MASK];
    return CCTX_OK;

fail:
    reclaim_deferral_discard(retire_old);
    cctx_dealloc(new_table);
    cctx_dealloc(new_dir);
    cctx_dealloc(chunk);
    return CCTX_ENOMEM;
}

/* Stores a value the runtime already owns a reference to into `slot` for
 * `local`, and releases whatever the slot held before. Owner thread only. */
static void local_slot_store(struct local_slot *slot, cctx_local *local, void *value)
{
    if (cctx_load_uintptr(&slot->gen) == local->gen) {
        void *old = cctx_fas_ptr(&slot->value, value);
        local_value_release(local, old);
        return;
    }
    /* Adopting a slot last used by another (dead) local, or one this local
     * left by a delete: take out what it held (nothing: I5, or the delete
     * emptied it; released anyway rather than leaked), then mark the slot
     * as this local's. A walk for `local` cannot run yet: nobody else holds
     * the slot's generation until the store below. */
    struct local_release old_release = slot->release;
    void *old = cctx_fas_ptr(&slot->value, value);
    slot->release = local_release_of(local);
    cctx_store_uintptr(&slot->gen, local->gen);
    local_release_call(old_release, old);
}

/* ------------------------------------------------------------ public API */

static cctx_status local_create(const cctx_value_ops *ops, const cctx_value_ops_ex *ops_ex,
                                cctx_local_init_fn init, void *userdata, cctx_local **out)
{
    if (out == NULL || !value_ops_are_valid(ops, ops_ex))
        return CCTX_EINVAL;
    cctx_local *local = cctx_alloc_zeroed(sizeof *local);
    if (local == NULL)
        return CCTX_ENOMEM;
    if (local_index_acquire(&local->index, &local->gen) != CCTX_OK) {
        cctx_dealloc(local);
        return CCTX_ENOMEM;
    }
    if (ops != NULL)
        local->ops = *ops;
    if (ops_ex != NULL)
        local->ops_ex = *ops_ex;
    local->init = init;
    local->userdata = userdata;
    local->refcnt = 1;
    local->magic = CCTX_LOCAL_MAGIC;
    *out = local;
    return CCTX_OK;
}

cctx_status cctx_local_new(const cctx_value_ops *ops, cctx_local_init_fn init,
                           void *userdata, cctx_local **out)
{
    return local_create(ops, NULL, init, userdata, out);
}

cctx_status cctx_local_new_ex(const cctx_value_ops_ex *ops, cctx_local_init_fn init,
                              void *userdata, cctx_local **out)
{
    return local_create(NULL, ops, init, userdata, out);
}

cctx_local *cctx_local_retain(cctx_local *local)
{
    if (local_is_valid(local))
        cctx_inc_uint(&local->refcnt);
    return local;
}

/* Values taken out per walk before the walk stops to release them. */
#define RELEASE_BATCH 32

/* Takes up to RELEASE_BATCH values of `local` out of the registry's tables
 * into `batch`, inside a read section (see the essay). Returns how many;
 * sets *more when it stopped with tables left. */
static size_t local_take_batch(cctx_local *local, void **batch, bool *more)
{
    size_t n = 0;
    *more = false;
    /* The calling thread's own record when it has a state; otherwise the
     * shared fallback record (reclaim.h). Never a new state: a final
     * release cannot fail, and it may run on a thread that never used
     * ContextKit — or on one whose teardown already gave its record back
     * (then ts->record is NULL and the fallback serves). */
    cctx_thread_state *ts = thread_state_peek();
    reclaim_section section;
    reclaim_section_begin(ts != NULL ? ts->record : NULL, &section);
    for (struct local_slots *t = cctx_load_ptr(&registry_head); t != NULL;
         t = cctx_load_ptr(&t->next)) {
        struct local_slot *slot = local_slot_find(t, local->index);
        if (slot == NULL || cctx_load_uintptr(&slot->gen) != local->gen)
            continue;
        if (n == RELEASE_BATCH) {
            *more = true;
            break;
        }
        /* I3: the exchange decides between us and the owner's exit. */
        void *v = cctx_fas_ptr(&slot->value, LOCAL_EMPTY);
        if (local_is_value(v))
            batch[n++] = v;
    }
    reclaim_section_end(&section);
    return n;
}

/* Releases the values of `local` in every live thread (see the essay): the
 * callbacks run with no lock held and outside every read section. Each
 * pass but the last takes RELEASE_BATCH values, and no thread can store a
 * new value of a local whose last reference is gone, so this ends. */
static void local_release_everywhere(cctx_local *local)
{
    void *batch[RELEASE_BATCH];
    bool more;
    do {
        size_t n = local_take_batch(local, batch, &more);
        for (size_t i = 0; i < n; i++)
            local_value_release(local, batch[i]);
    } while (more);
}

void cctx_local_release(cctx_local *local)
{
    if (!local_is_valid(local))
        return;
    if (!cctx_dec_uint_is_zero(&local->refcnt))
        return;
    local_release_everywhere(local);
    local_index_return(local->index); /* I5: only after the walk */
    local->magic = 0;
    cctx_dealloc(local);
}

/* Runs the initialiser for this thread and stores its value. */
static cctx_status local_get_init(cctx_local *local, void **out)
{
    cctx_thread_state *ts = thread_state_get();
    if (ts == NULL)
        return CCTX_ENOMEM;
    struct local_slot *slot;
    /* Room first, so that CCTX_ENOMEM leaves the initialiser unrun. */
    cctx_status st = local_slot_ensure(ts, local->index, &slot);
    if (st != CCTX_OK)
        return st;
    void *value = NULL;
    st = local->init(local->userdata, &value);
    if (st != CCTX_OK)
        return st; /* slot untouched: the initialiser runs again next time */
    /* The initialiser may have used other locals (chunks never move, so
     * `slot` is still good) — or called cctx_thread_cleanup, which freed
     * this thread's state and slot table: look the slot up again in the
     * thread's state as it is now. Without a cleanup this finds the same
     * slot and allocates nothing; after one it needs a new state and
     * table, and if those cannot be made the value is dropped (the
     * initialiser runs again on the next get). The new reference the
     * initialiser returned is stored as is. */
    ts = thread_state_get();
    if (ts == NULL || local_slot_ensure(ts, local->index, &slot) != CCTX_OK) {
        if (value != NULL)
            local_value_release(local, value);
        return CCTX_ENOMEM;
    }
    local_slot_store(slot, local, value);
    *out = value;
    return CCTX_OK;
}

cctx_status cctx_local_get(cctx_local *local, void **out)
{
    if (CCTX_UNLIKELY(!local_is_valid(local) || out == NULL))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_peek();
    struct local_slot *slot = ts != NULL ? local_own_slot(ts, local->index) : NULL;
    if (CCTX_LIKELY(slot != NULL && cctx_load_uintptr(&slot->gen) == local->gen)) {
        void *v = cctx_load_ptr(&slot->value);
        if (v == LOCAL_EMPTY)
            return CCTX_NOT_FOUND;
        *out = v;
        return CCTX_OK;
    }
    if (local->init == NULL)
        return CCTX_NOT_FOUND;
    return local_get_init(local, out);
}

void *cctx_local_value(cctx_local *local)
{
    if (CCTX_UNLIKELY(!local_is_valid(local)))
        return NULL;
    cctx_thread_state *ts = thread_state_peek();
    if (CCTX_UNLIKELY(ts == NULL))
        return NULL;
    /* local_own_slot spelled out, so that the chunk-0 path tests no slot
     * pointer for NULL. */
    uint32_t index = local->index;
    struct local_slot *slot;
    if (CCTX_LIKELY(index < LOCAL_CHUNK_SLOTS && ts->local_chunk0 != NULL)) {
        slot = &ts->local_chunk0[index];
    } else {
        slot = local_slot_find(ts->locals, index);
        if (slot == NULL)
            return NULL;
    }
    if (CCTX_UNLIKELY(cctx_load_uintptr(&slot->gen) != local->gen))
        return NULL;
    void *v = cctx_load_ptr(&slot->value);
    return v == LOCAL_EMPTY ? NULL : v;
}

cctx_status cctx_local_peek(cctx_local *local, void **out)
{
    if (!local_is_valid(local) || out == NULL)
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_peek();
    struct local_slot *slot = ts != NULL ? local_own_slot(ts, local->index) : NULL;
    if (slot == NULL || cctx_load_uintptr(&slot->gen) != local->gen)
        return CCTX_NOT_FOUND;
    void *v = cctx_load_ptr(&slot->value);
    if (v == LOCAL_EMPTY)
        return CCTX_NOT_FOUND;
    *out = v;
    return CCTX_OK;
}

/* A set that needs a thread state, a slot, or to adopt the slot from
 * another local (see local_slot_store). */
static __attribute__((noinline)) cctx_status local_set_slow(cctx_local *local, void *value)
{
    cctx_thread_state *ts = thread_state_get();
    if (CCTX_UNLIKELY(ts == NULL))
        return CCTX_ENOMEM;
    struct local_slot *slot;
    cctx_status st = local_slot_ensure(ts, local->index, &slot);
    if (CCTX_UNLIKELY(st != CCTX_OK))
        return st;
    /* Retain before releasing the old value: they may be the same. */
    local_value_retain(local, value);
    local_slot_store(slot, local, value);
    return CCTX_OK;
}

cctx_status cctx_local_set(cctx_local *local, void *value)
{
    if (CCTX_UNLIKELY(!local_is_valid(local)))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_peek();
    struct local_slot *slot = ts != NULL ? local_own_slot(ts, local->index) : NULL;
    if (CCTX_UNLIKELY(slot == NULL || cctx_load_uintptr(&slot->gen) != local->gen))
        return local_set_slow(local, value);
    /* The slot is this local's already: replace the value with a load and
     * a store, no exchange (I3). No other thread can take a value of a
     * local out of this slot while the caller holds a reference to it:
     * the final-release walk for `local` runs only after its last
     * reference is gone, and a walk for an earlier local at this index
     * ended before the index was reused (I5). The release store orders
     * the value's construction before a later walk's exchange reads it. */
    local_value_retain(local, value); /* first: old may be the same value */
    void *old = cctx_load_ptr(&slot->value);
    cctx_store_ptr(&slot->value, value);
    local_value_release(local, old);
    return CCTX_OK;
}

cctx_status cctx_local_delete(cctx_local *local)
{
    if (CCTX_UNLIKELY(!local_is_valid(local)))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_peek();
    struct local_slot *slot = ts != NULL ? local_own_slot(ts, local->index) : NULL;
    if (slot == NULL || cctx_load_uintptr(&slot->gen) != local->gen)
        return CCTX_NOT_FOUND; /* never touched here (or deleted): nothing */
    /* Back to "never touched" (gen 0 belongs to no local), so the next get
     * runs the initialiser again. The generation goes first: from then on
     * a final-release walk passes the slot over, and the exchange below
     * takes out whatever value it held, which only we can now release (a
     * walk that read the old generation before our store and exchanges
     * after us gets EMPTY: I3 still holds). */
    cctx_store_uintptr(&slot->gen, 0);
    void *old = cctx_fas_ptr(&slot->value, LOCAL_EMPTY);
    if (old == LOCAL_EMPTY)
        return CCTX_NOT_FOUND;
    local_value_release(local, old);
    return CCTX_OK;
}

/* ------------------------------------------------------------ thread exit */

/* Takes every value out of the table and releases it (the owner's
 * teardown; the table stays registered). Returns whether it found any. */
static bool local_table_release_values(struct local_slots *t)
{
    bool released = false;
    /* Reloaded after every callback: one that used a local may have grown
     * the directory (chunks never move, I1, so a chunk pointer stays good;
     * the old directory waits for this thread's own barrier, later). */
    for (size_t k = 0; k < t->dir->cap; k++) {
        struct local_slot *chunk = t->dir->chunks[k];
        if (chunk == NULL)
            continue;
        for (size_t i = 0; i < LOCAL_CHUNK_SLOTS; i++) {
            void *v = cctx_fas_ptr(&chunk[i].value, LOCAL_EMPTY);
            if (!local_is_value(v))
                continue;
            local_release_call(chunk[i].release, v);
            released = true;
        }
    }
    return released;
}

bool local_thread_release_values(cctx_thread_state *ts)
{
    return ts->locals != NULL && local_table_release_values(ts->locals);
}

void local_thread_release(cctx_thread_state *ts)
{
    struct local_slots *t = ts->locals;
    if (t == NULL)
        return;
    /* thread_state.c has detached the state: no callback of this thread
     * can store into the table any more. Release what is left (nothing,
     * normally), then unlink: new walks no longer find the table; walks
     * already on it may still take values out of it, which the exchanges
     * arbitrate (I3). */
    (void)local_table_release_values(t);
    ts->locals = NULL;
    ts->local_chunk0 = NULL;
    registry_unlink(t);
    struct local_dir *dir = t->dir;
    /* Grace period: every walk that could have reached `t` began before the
     * unlink and has ended when this returns. It also runs the frees of
     * directories this thread deferred (reclaim_defer on its record),
     * which must not outlive the record. Teardown runs outside every read
     * section, so the barrier does wait. */
    reclaim_barrier(ts->record);
    for (size_t k = 0; k < dir->cap; k++)
        cctx_dealloc(dir->chunks[k]);
    cctx_dealloc(dir);
    cctx_dealloc(t);
}
