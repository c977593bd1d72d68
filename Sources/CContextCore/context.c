/*
 * context.c — context objects: creation, copies, the read-only mapping
 * seen from any thread, writes, and the owner state machine (context.h):
 * enter, exit, run, async claims and one-off explicit writes.
 *
 * Reads come in two speeds. The writer of a context (the thread that has
 * entered it) reads `root` with a plain acquire load: nobody else can
 * replace it. Every other reader goes through reclaim.c (a hazard
 * pointer on the root, after marking the context `shared_reads` once) and
 * keeps only what it took a reference to. See context.h for the ownership rules.
 */
#include "internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__linux__)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#endif
#include "context.h"
#include "reclaim.h"
#include "thread_state.h"
#include "token.h"
#include "watch.h"

extern unsigned cctx_not_inherited_vars;

/* ------------------------------------------------------------ lifecycle */

/* Context objects this thread freed, kept for its next copies: a copy and
 * its release then touch no allocator and no line another thread writes.
 * Used only while the thread has a state (thread_state.h), whose teardown
 * drains it (context_cache_drain) once nothing can refill it: after the
 * state is detached, frees go straight to the allocator. */
static __thread cctx_block_cache context_cache __attribute__((tls_model("initial-exec")));

void context_cache_drain(void)
{
    cctx_block_cache_drain(&context_cache);
}

/*
 * Root credits: references to one root taken in a batch and handed out to
 * this thread's copies of the context holding it, so that copy_current and
 * the release of the copy on this thread touch no shared line (the root's
 * count is written once per batch, not once per copy).
 *
 * The credits are counted references like any other, so the root cannot
 * be freed while this thread holds them. They are tied to `ctx`, a context
 * this thread owns (entered, or its base) whose root is `root`, and are
 * given back (credit_forget) before anything could make them the last
 * references of a root nobody uses: before this thread writes `ctx` (a new
 * root is published, or an in-place write tests the root for uniqueness,
 * which credits would defeat) and when it stops owning `ctx` (exit, the
 * base's teardown). While `ctx` is owned by this thread only this thread
 * replaces its root, and `ctx` itself holds the root, so giving credits
 * back never frees anything on the copy path and never runs a callback
 * there. Only this thread reads or writes its credits; copy_current is not
 * async-signal-safe (it may allocate), so no handler races them.
 */
#define ROOT_CREDIT_BATCH 64u
struct root_credit {
    cctx_context *ctx;
    hamt_node *root;
    unsigned n;
};
static __thread struct root_credit root_credit __attribute__((tls_model("initial-exec")));

static void credit_flush(void)
{
    hamt_node *root = root_credit.root;
    unsigned n = root_credit.n;
    root_credit.ctx = NULL;
    root_credit.root = NULL;
    root_credit.n = 0;
    hamt_release_n(root, n);
}

/* Gives back the credits tied to `ctx` (see above). */
static inline void credit_forget(const cctx_context *ctx)
{
    if (CCTX_UNLIKELY(root_credit.ctx == ctx) && ctx != NULL)
        credit_flush();
}

/* The refill of credit_take: another context's credits (or none). */
static __attribute__((noinline)) void credit_refill(cctx_context *ctx, hamt_node *root)
{
    if (root == NULL)
        return;
    /* The old credits go back; their root is still held by its context,
     * so nothing is freed here. */
    credit_flush();
    /* Named in the state for a fork child (context_fork_orphan_credits).
     * The address escapes with it, so the compiler keeps every store to
     * the credits where the program puts it relative to the calls around
     * it: credit_flush's zeroing before its release, the refill's stores
     * after its retain; the retain and the release are full barriers, so
     * the processor keeps that order too. A thread stopped anywhere by a
     * fork thus leaves credits that are at most the references it holds,
     * never more. */
    cctx_thread_state *ts = thread_state_peek();
    if (ts != NULL)
        ts->credits = &root_credit;
    hamt_retain_n(root, ROOT_CREDIT_BATCH);
    root_credit.ctx = ctx;
    root_credit.root = root;
    root_credit.n = ROOT_CREDIT_BATCH - 1;
}

/* One reference to `root`, the current root of `ctx`, owned by this
 * thread. (Credits exist only for a non-NULL root, so a NULL root never
 * takes the first branch.) */
static inline void credit_take(cctx_context *ctx, hamt_node *root)
{
    if (CCTX_LIKELY(root_credit.ctx == ctx && root_credit.root == root && root_credit.n != 0)) {
        root_credit.n--;
        return;
    }
    credit_refill(ctx, root);
}

/* Drops one reference to `root`: back into the credits when they are for
 * this root (only while this thread has a state, `ts`: its teardown
 * flushes). */
static inline void credit_give(cctx_thread_state *ts, hamt_node *root)
{
    if (CCTX_LIKELY(root != NULL && root_credit.root == root &&
                    root_credit.n < 2 * ROOT_CREDIT_BATCH && ts != NULL)) {
        root_credit.n++;
        return;
    }
    hamt_release(root);
}

/* A context object with every field as a new context has it but `root`
 * and `owner`, which the caller sets. `ts`: the calling thread's state or
 * NULL; with one, the object may come from the thread's cache, whose
 * objects keep magic 0, refcnt 1 and shared_reads 0 from their release
 * (cctx_context_release) and need only magic. */
static inline cctx_context *context_object(cctx_thread_state *ts)
{
    cctx_context *ctx;
    if (CCTX_LIKELY(ts != NULL && context_cache.head != NULL)) {
        ctx = cctx_alloc_cached(&context_cache, sizeof *ctx);
        if (CCTX_LIKELY(ctx != NULL)) {
            CCTX_ASSERT(ctx->refcnt == 1 && ctx->shared_reads == 0);
            ctx->magic = CCTX_CONTEXT_MAGIC;
        }
        return ctx;
    }
    /* Field stores, not calloc: glibc's calloc skips the per-thread cache
     * on non-main threads. */
    ctx = cctx_alloc(sizeof *ctx);
    if (ctx != NULL) {
        ctx->magic = CCTX_CONTEXT_MAGIC;
        ctx->refcnt = 1;
        ctx->prev = NULL;
        ctx->shared_reads = 0;
        ctx->handover_next = NULL;
        ctx->handover_ts = NULL;
        ctx->bias_entering = 0; /* 0 again whenever an object is freed */
        ctx->bias_last = NULL;
        ctx->serial = 0; /* 0 again whenever an object is freed */
    }
    return ctx;
}

cctx_status context_new_with_root(hamt_node *root, cctx_context **out)
{
    cctx_context *ctx = context_object(thread_state_peek());
    if (ctx == NULL)
        return CCTX_ENOMEM;
    ctx->root = root;
    ctx->owner = CCTX_OWNER_NONE;
    *out = ctx;
    return CCTX_OK;
}

cctx_status cctx_context_new(cctx_context **out)
{
    if (out == NULL)
        return CCTX_EINVAL;
    return context_new_with_root(NULL, out);
}

cctx_context *cctx_context_retain(cctx_context *ctx)
{
    if (context_is_valid(ctx))
        cctx_inc_uint(&ctx->refcnt);
    return ctx;
}

/*
 * The handover. Entering does not retain: while a context is entered, the
 * thread that entered it (ts) relies on its caller's reference. When the
 * last reference is released while the context is entered, the count must
 * not reach zero (a borrowed current context may still be retained), so
 * the releaser hands that reference to the entered state, which drops it
 * at exit. Two cases (context.h's table):
 *
 * - The releaser is ts itself: it sets HELD in `owner` with a plain store
 *   (nobody else writes an ENTERED(ts) word), and ts's exit, reading its
 *   own word, drops the reference.
 *
 * - The releaser is another thread R. It must not write `owner` — then the
 *   exit would need a locked instruction to notice — so, holding the
 *   handover lock, it puts the context on the handover list (rare),
 *   bumps the entering thread's `handover_pending` (thread_state.h) and
 *   looks at `owner` again; every exit stores FREE and then reads its own
 *   thread's `handover_pending`. This is Dekker's pattern:
 *
 *       exit (ts)                     release (R)
 *       store owner = FREE            store ts->handover_pending += 1
 *       light barrier                 heavy barrier
 *       load ts->handover_pending     load owner
 *
 *   With a full barrier on both sides, at least one of the loads sees the
 *   other side's store. The exit is the hot path, so its barrier is a
 *   compiler barrier only, and R's barrier is membarrier(PRIVATE_EXPEDITED):
 *   it runs a full barrier on every CPU running a thread of this process,
 *   which makes the exit's program order (store, then load) hold as if it
 *   had fenced (the asymmetric barrier of RCU implementations). Without
 *   membarrier (old kernels, valgrind, a failed registration) the exit
 *   fences for real and R's barrier is a plain fence.
 *
 *   So: if R still sees ENTERED(ts), ts's exit will see its count and
 *   collect (handover_collect: under the lock, each listed context counted
 *   for ts is unlinked; its reference is released after the lock). If R
 *   sees anything else (the exit came first), R unlinks the context
 *   itself and releases again. Everything that touches a listed context does so under the
 *   lock, and the exit touches nothing of the context after its store; so
 *   whichever side unlinks it is the only one that still uses it, and no
 *   context is freed while another thread looks at it.
 *
 *   R writes another thread's state: it does so only under the lock and
 *   after reading, under the lock, that this thread has the context
 *   entered; a thread's teardown takes the lock once after its last exit
 *   and before freeing its state (context_handover_quiesce), so the state
 *   is alive. Per-thread counts keep the cost where the handover is: a
 *   context that stays entered on one thread with a pending handover
 *   sends only that thread's exits to the lock.
 *
 *   fork(): the child keeps only the forking thread, so a context counted
 *   for any other thread would wait for ever; the child's handler
 *   (context_atfork_child) takes those off the list and releases them at
 *   the child's next grace period. And a context such a thread had
 *   entered, whose last reference the child releases later, is not handed
 *   over but freed (handover_to_exit asks reclaim_thread_is_gone).
 */
static pthread_mutex_t handover_lock = PTHREAD_MUTEX_INITIALIZER;
static cctx_context *handover_head; /* under handover_lock */
/* Non-zero: exits fence for real (no membarrier). Set once before any
 * thread state exists (context_barrier_init), then only read. */
static int exit_fence = 1;

static bool membarrier_register(void)
{
#if defined(__linux__) && defined(SYS_membarrier)
    long cmds = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    return cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 &&
           syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
#else
    return false;
#endif
}

void context_barrier_init(void)
{
    if (membarrier_register())
        exit_fence = 0;
}

int cctx__context_exit_barrier(int mode)
{
    if (mode == 1)
        exit_fence = 1;
    else if (mode == 2)
        context_barrier_init();
    return exit_fence ? 1 : 2;
}

/* The releasing side's barrier (see above). */
static void handover_heavy_barrier(void)
{
    if (exit_fence) {
        cctx_fence_memory();
        return;
    }
#if defined(__linux__) && defined(SYS_membarrier)
    /* Registered, so this cannot fail short of a kernel bug; the exits no
     * longer fence, so there is no correct way on. */
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) {
        fprintf(stderr, "contextcore: membarrier failed\n");
        abort();
    }
#endif
}

void context_atfork_prepare(void)
{
    pthread_mutex_lock(&handover_lock);
}

void context_atfork_release(void)
{
    pthread_mutex_unlock(&handover_lock);
}

static void handover_release_orphan(void *ctx)
{
    cctx_context_release(ctx);
}

void context_atfork_child(void)
{
    pthread_mutex_unlock(&handover_lock);
    /* Registration belongs to the address space; should the child's not
     * carry it, fall back to fencing exits: safe to switch now, the child
     * has one thread and it is not exiting a context. */
    if (!exit_fence && !membarrier_register())
        exit_fence = 1;
    /* The list came through the fork whole (the prepare handler held its
     * lock). A context counted for any thread but this one waits for the
     * exit of a thread that is gone: nobody would ever drop its reference,
     * and with it the context, its root and its values. The dead thread's
     * entered state ends here (owner FREE: no exit of it will come, and
     * its orphaned state, which still names the context as current, is
     * never read again), and the reference is released at the child's next
     * grace period with the other objects the dead threads left
     * (reclaim_fork_orphan): not here, since a release runs user callbacks
     * and other fork handlers may not have run yet. One thread, so plain
     * stores. Contexts counted for this thread stay: its own exit collects
     * them, as in the parent. */
    cctx_thread_state *me = thread_state_peek();
    for (cctx_context **p = &handover_head; *p != NULL;) {
        cctx_context *c = *p;
        if (c->handover_ts == me) {
            p = &c->handover_next;
            continue;
        }
        *p = c->handover_next;
        c->handover_ts->handover_pending--;
        c->handover_next = NULL;
        c->handover_ts = NULL;
        c->owner = CCTX_OWNER_NONE;
        reclaim_fork_orphan(c, handover_release_orphan);
    }
}

/*
 * Root credits of a thread that did not survive a fork: references to the
 * root of a context it had entered (or its base), which only its own exit
 * would have given back. Without this, that root and every value in it
 * outlive the last context that holds it in the child (the context itself
 * is freed: context_atfork_child, handover_to_exit). The credits live in
 * the dead thread's thread-local storage, which the C library may hand to
 * the child's next thread, so they are read now, in the handler, and
 * released later, at the child's next grace period with the rest the dead
 * threads left (a release may run user callbacks; other fork handlers may
 * not have run yet). The dead thread's credits are at most the references
 * it holds (credit_refill), so this never releases one too many; a thread
 * stopped between taking a batch and recording it leaves that batch, as it
 * leaves whatever else it held in its registers.
 */
struct orphan_credits {
    hamt_node *root;
    unsigned n;
};

static void orphan_credits_release(void *p)
{
    struct orphan_credits *o = p;
    hamt_release_n(o->root, o->n);
    cctx_dealloc(o);
}

void context_fork_orphan_credits(cctx_thread_state *dead)
{
    struct root_credit *c = dead->credits;
    if (c == NULL || c->root == NULL || c->n == 0)
        return;
    struct orphan_credits *o = cctx_alloc(sizeof *o);
    if (o == NULL)
        return; /* kept, as the dead thread's other references are */
    o->root = c->root;
    o->n = c->n;
    c->ctx = NULL; /* one thread: plain stores */
    c->root = NULL;
    c->n = 0;
    reclaim_fork_orphan(o, orphan_credits_release);
}

static void handover_unlink(cctx_context *ctx)
{
    cctx_context **p = &handover_head;
    while (*p != ctx)
        p = &(*p)->handover_next;
    *p = ctx->handover_next;
}

/* Counts listed `ctx` for the thread that has it entered as `owner`
 * (ENTERED(x), read under the lock), then looks again (Dekker's order:
 * count, heavy barrier, load). Returns true when x's exit will see the
 * count; false (count undone) when `owner` changed meanwhile. Under the
 * lock: x's state is alive (see the essay above). `owner` is never HELD
 * here: HELD means x itself released the last reference, and the caller
 * holds it. */
static bool handover_count_for(cctx_context *ctx, uintptr_t owner)
{
    cctx_thread_state *x = (cctx_thread_state *)(owner & ~CCTX_OWNER_HELD);
    ctx->handover_ts = x;
    cctx_store_uint(&x->handover_pending, x->handover_pending + 1);
    handover_heavy_barrier();
    if (cctx_load_uintptr(&ctx->owner) == owner)
        return true;
    cctx_store_uint(&x->handover_pending, x->handover_pending - 1);
    return false;
}

/* R's side: `ctx`'s last reference, released while another thread has it
 * entered. Returns true when that thread's exit now owns the reference,
 * false when the context was left meanwhile (the caller owns it again). */
static __attribute__((noinline, cold)) bool handover_to_exit(cctx_context *ctx)
{
    pthread_mutex_lock(&handover_lock);
    uintptr_t owner = cctx_load_uintptr(&ctx->owner);
    bool handed = false;
    if (owner_is_entered(owner) &&
        reclaim_thread_is_gone((cctx_thread_state *)(owner & ~CCTX_OWNER_HELD))) {
        /* A fork child releasing a context that a thread which did not
         * survive the fork had entered: no exit will come. End that entered
         * state; the caller holds the last reference and frees it. */
        cctx_store_uintptr(&ctx->owner, CCTX_OWNER_NONE);
    } else if (owner_is_entered(owner)) {
        ctx->handover_next = handover_head;
        handover_head = ctx;
        handed = handover_count_for(ctx, owner);
        if (!handed)
            handover_unlink(ctx);
    }
    pthread_mutex_unlock(&handover_lock);
    return handed;
}

/* The exit's side, when contexts are counted for `ts`: each listed
 * context counted for ts is unlinked and its reference released, after the
 * unlock (releases may run callbacks that release more contexts). The
 * release decides what that reference means now, as for any release: the
 * context left (ts's exit just stored FREE) is freed unless others hold
 * references; one ts has entered again is handed to ts's entered state
 * (HELD); one another thread has entered since, with a reference of its
 * own, is just one reference fewer — or, were the listed reference the
 * last, handed over again, counted for that thread (handover_to_exit). */
static __attribute__((noinline, cold)) void handover_collect(cctx_thread_state *ts)
{
    cctx_context *drop = NULL;
    pthread_mutex_lock(&handover_lock);
    for (cctx_context **p = &handover_head; *p != NULL;) {
        cctx_context *c = *p;
        if (c->handover_ts != ts) {
            p = &c->handover_next;
            continue;
        }
        *p = c->handover_next;
        c->handover_next = drop;
        drop = c;
        cctx_store_uint(&ts->handover_pending, ts->handover_pending - 1);
    }
    pthread_mutex_unlock(&handover_lock);
    while (drop != NULL) {
        cctx_context *next = drop->handover_next;
        /* The lock's release/acquire orders the entering thread's writes
         * (before its FREE store, which R or this thread saw) before this
         * release. */
        cctx_context_release(drop);
        drop = next;
    }
}

void context_handover_quiesce(cctx_thread_state *ts)
{
    /* Anyone who read, under the lock, that ts had a context entered is
     * done writing ts once this returns. */
    pthread_mutex_lock(&handover_lock);
    CCTX_ASSERT(ts->handover_pending == 0);
    pthread_mutex_unlock(&handover_lock);
}

/* Frees `ctx`, whose last reference the caller dropped while nobody has it
 * entered. */
static inline __attribute__((always_inline)) void context_free(cctx_context *ctx)
{
    /* Nobody reads it now (readers hold a reference), and the count is 1:
     * the state a cached object keeps (context_object), with no mark of
     * past readers. */
    CCTX_ASSERT(ctx->refcnt == 1);
    ctx->magic = 0;
    ctx->shared_reads = 0;
    ctx->bias_last = NULL; /* a reuse starts unbiased ("The bias") */
    ctx->serial = 0;       /* a reuse is another context to every token */
    /* In a parent process nobody is inside a biased enter's window here
     * (an enter needs a reference). In a fork child, a thread that did not
     * survive may have stopped inside it, the enter borrowing a reference
     * the child has since released: its `1` stays (the revoke stops
     * waiting for it: owner_take_slow), and a reuse would carry it to a
     * new bias, whose first revoke would then wait for ever. A plain
     * store: the object is ours alone now. */
    ctx->bias_entering = 0;
    /* A load that acquires under ThreadSanitizer (a plain load with ck_pr):
     * the context's last writer may be a claimer on another thread whose
     * last publish (a full-barrier exchange) is ordered before this free
     * only through something the sanitizer cannot see — a Swift task's
     * reference count, which tells ContextKit's reaper that the task has
     * ended. Reading the root it published gives the sanitizer that edge
     * before the object goes back to a cache (whose drain reads it). */
    uintptr_t raw = (uintptr_t)cctx_load_ptr(&ctx->root);
    hamt_node *root = (hamt_node *)(raw & ~CCTX_ROOT_TAGS);
    cctx_thread_state *ts = thread_state_peek();
    cctx_dealloc_cached(ts != NULL ? &context_cache : NULL, ctx);
    /* After the object is back in the cache: a callback run by the root's
     * release may copy again and take it. */
    if (raw & CCTX_ROOT_LOAN)
        hamt_credit_give(root);
    else
        credit_give(ts, root);
}

/*
 * Which reference is the last? The count alone cannot say: a thread that
 * has the context entered may retain it (its borrowed current context)
 * and then exit. So `owner` is read first (acquire) and the count after:
 * if the owner was seen FREE, any retain made while it was entered is
 * seen in the count too (it precedes the exit's release store); if it was
 * seen entered, the reference goes to the handover, which keeps working
 * whatever the count becomes.
 */
static __attribute__((noinline)) void context_release_slow(cctx_context *ctx)
{
    for (;;) {
        uintptr_t owner = cctx_load_uintptr(&ctx->owner);
        /* Not the last reference: one locked CAS, as a decrement would be
         * (a count of 1 is the caller's own reference: see hamt_release). */
        unsigned n = cctx_load_uint(&ctx->refcnt);
        if (n != 1) {
            if (cctx_cas_uint(&ctx->refcnt, n, n - 1))
                return;
            continue;
        }
        if (!owner_is_entered(owner) || (owner & CCTX_OWNER_HELD) != 0)
            break; /* FREE or LEFT (or claimed, or a one-off writer): free it */
        if (owner == (uintptr_t)thread_state_peek()) {
            /* Entered by this thread: only it writes the word (context.h). */
            cctx_store_uintptr(&ctx->owner, owner | CCTX_OWNER_HELD);
            return;
        }
        if (handover_to_exit(ctx))
            return;
        /* Its owner left meanwhile: the reference is ours again; look
         * again (the owner may have retained it before leaving). */
    }
    context_free(ctx);
}

void cctx_context_release(cctx_context *ctx)
{
    if (!context_is_valid(ctx))
        return;
    /* The common last release (a copy's): nobody has it entered, and
     * nobody else has a reference (owner first: see above). */
    if (CCTX_LIKELY(context_owner(ctx) == CCTX_OWNER_NONE &&
                    cctx_load_uint(&ctx->refcnt) == 1)) {
        context_free(ctx);
        return;
    }
    /* Not the last reference (a token's or a scope's, dropped while the
     * context's own holder keeps it): the slow path's first step, inline.
     * The count alone decides here: `owner` matters only for the last
     * reference, and a count above 1 seen now cannot become the last
     * reference's count without the CAS failing. */
    unsigned n = cctx_load_uint(&ctx->refcnt);
    if (CCTX_LIKELY(n != 1) && cctx_cas_uint(&ctx->refcnt, n, n - 1))
        return;
    context_release_slow(ctx);
}

static void context_release_fn(void *ctx)
{
    cctx_context_release(ctx);
}

void cctx_context_release_deferred(cctx_context *ctx)
{
    if (ctx == NULL)
        return;
    /* Full fence: the caller's publication of what replaces `ctx` (a
     * release store) is ordered before the deferral reads the epoch. A
     * reader whose section the grace period does not wait for began after
     * this point, so its fence (reclaim_section_begin) orders its load of
     * that publication after it: it sees the replacement and never loads
     * `ctx` (reclaim.h: unpublish, then defer). */
    cctx_fence_memory();
    cctx_thread_state *ts = thread_state_get();
    reclaim_record *record = ts != NULL ? ts->record : NULL;
    reclaim_defer(record, ctx, context_release_fn);
    /* At once when no thread is inside a read section: one scan of the
     * records frees what this record deferred. */
    reclaim_poll(record);
    /* Still pending (a reader was inside a section): wait for the grace
     * period here rather than leave the release to this record's next
     * poll, which an idle thread may never make — the values would stay
     * alive for good. Sections are short (a lookup, a copy) and never wait
     * for anything, so neither does this for long. Inside a section of
     * this thread's own, reclaim_barrier returns at once (it would wait
     * for itself) and the release waits for that next poll. */
    if (record != NULL && reclaim_pending(record) != 0)
        reclaim_barrier(record);
}

/* ------------------------------------------------------------ reading */

/*
 * A read of `ctx`'s root by the calling thread: direct when the thread is
 * the context's writer, guarded otherwise. Never fails: a thread whose
 * state cannot be created (out of memory) reads through the fallback
 * record, so that reads which cannot report an error (count, contains,
 * equal) still answer correctly.
 *
 * A guarded read marks the context `shared_reads` (once: later readers
 * only load the mark, so a base context that many threads copy stays a
 * line they all read and none writes) and reads the root under a hazard
 * pointer. The writer, after replacing the root (or tagging it for an
 * in-place write) with an exchange, loads the mark: unmarked, no guarded
 * reader can hold the old root; marked, it asks reclaim_is_protected
 * whether a hazard names it. Both sides are Dekker's pattern, a store,
 * a full barrier, then a load:
 *
 *   reader                                writer
 *   store shared_reads = 1                fas(root, new)       (fence)
 *   fas(hazard, r)            (fence)     load shared_reads
 *   load root == r ?                      1: scan hazards for the old root
 *
 * If the writer loads 0, the reader's barrier comes after the writer's
 * exchange, so its re-load of the root sees the new root and it never
 * reads the old one. If it loads 1 and its scan misses the hazard, the
 * reader's re-load comes after the exchange for the same reason, differs
 * from r, and the reader starts over with the new root. So whenever the
 * writer frees the old root at once, no guarded reader holds it. (The
 * mark was a counter once, written twice by every read: the one line a
 * base context's copiers all wrote.)
 */
typedef struct read_guard {
    bool guarded;
    bool loan; /* the context's reference to the root is a loan */
    reclaim_guard hazard;
} read_guard;

static inline __attribute__((always_inline)) hamt_node *read_begin(cctx_context *ctx, read_guard *g)
{
    cctx_thread_state *ts = thread_state_get();
    g->guarded = ts == NULL || context_owner(ctx) != (uintptr_t)ts;
    if (!g->guarded) {
        g->loan = ((uintptr_t)cctx_load_ptr(&ctx->root) & CCTX_ROOT_LOAN) != 0;
        return context_own_root(ctx);
    }
    /* Ordered before the root load by reclaim_protect's exchange (see
     * above). A plain store: every writer of it stores the same 1. */
    if (CCTX_UNLIKELY(cctx_load_uint_relaxed(&ctx->shared_reads) == 0))
        cctx_store_uint(&ctx->shared_reads, 1);
    for (;;) {
        hamt_node *root = reclaim_protect(ts != NULL ? ts->record : NULL,
                                          (void *const *)&ctx->root, &g->hazard);
        if (CCTX_LIKELY(((uintptr_t)root & CCTX_ROOT_IN_PLACE) == 0)) {
            g->loan = ((uintptr_t)root & CCTX_ROOT_LOAN) != 0;
            return (hamt_node *)((uintptr_t)root & ~CCTX_ROOT_TAGS);
        }
        /* The writer is overwriting a value in place; having seen our
         * hazard it will back out, or it started before and finishes in a
         * few instructions. Wait for the plain root (acquire: its store
         * of the value happens before). */
        reclaim_unprotect(&g->hazard);
        while ((uintptr_t)cctx_load_ptr(&ctx->root) & CCTX_ROOT_IN_PLACE)
            sched_yield();
    }
}

static void read_end(cctx_context *ctx, read_guard *g)
{
    if (!g->guarded)
        return;
    reclaim_unprotect(&g->hazard);
}

/* Can a guarded reader hold `root`, which the caller (the writer) just
 * unpublished or tagged with an exchange? See read_begin. */
static inline bool root_may_be_read(cctx_context *ctx, hamt_node *root)
{
    return cctx_load_uint(&ctx->shared_reads) != 0 && reclaim_is_protected(root);
}

cctx_status context_snapshot(cctx_context *ctx, hamt_node **out)
{
    read_guard g;
    hamt_node *root = read_begin(ctx, &g);
    hamt_retain(root);
    read_end(ctx, &g);
    *out = root;
    return CCTX_OK;
}

size_t cctx_context_count(cctx_context *ctx)
{
    if (!context_is_valid(ctx))
        return 0;
    read_guard g;
    hamt_node *root = read_begin(ctx, &g);
    size_t n = hamt_count(root);
    read_end(ctx, &g);
    return n;
}

cctx_status cctx_context_lookup(cctx_context *ctx, cctx_var *var, void **out)
{
    if (!context_is_valid(ctx) || !var_is_valid(var) || out == NULL)
        return CCTX_EINVAL;
    read_guard g;
    hamt_node *root = read_begin(ctx, &g);
    void *value;
    bool found = hamt_find(root, var, &value);
    if (found)
        var_value_retain(var, value); /* inside the guard: still alive */
    read_end(ctx, &g);
    if (!found)
        return CCTX_NOT_FOUND;
    *out = value;
    return CCTX_OK;
}

cctx_status cctx_context_get(cctx_context *ctx, cctx_var *var, void **out)
{
    if (!context_is_valid(ctx) || !var_is_valid(var) || out == NULL)
        return CCTX_EINVAL;
    return hamt_find(context_own_root(ctx), var, out) ? CCTX_OK : CCTX_NOT_FOUND;
}

/*
 * A lookup whose guard the caller holds while it copies the value out (a
 * binding's box contents), instead of a retain inside the guard and a
 * release after it: the value's line is then only read, and no callback
 * runs. The key's hash comes from the caller (cctx_var_hash, read once per
 * variable): hamt_find would load it from the variable, a dependent cache
 * miss before the walk can start when a map has many variables. Keys
 * compare by address, so the variable itself is never read. The guard
 * travels in the caller's cctx_read_guard, copied in and out with memcpy
 * (no aliasing of the caller's bytes as a read_guard).
 */
_Static_assert(sizeof(read_guard) <= sizeof(cctx_read_guard), "cctx_read_guard too small");

cctx_status cctx_context_peek(cctx_context *ctx, cctx_var *var, uint32_t hash,
                              cctx_read_guard *guard, void **out)
{
    if (!context_is_valid(ctx) || guard == NULL || out == NULL)
        return CCTX_EINVAL;
    read_guard g;
    hamt_node *root = read_begin(ctx, &g);
    if (hamt_find_hashed(root, hash, var, out)) {
        memcpy(guard, &g, sizeof g);
        return CCTX_OK;
    }
    read_end(ctx, &g);
    return CCTX_NOT_FOUND;
}

void cctx_context_peek_end(cctx_read_guard *guard)
{
    if (guard == NULL)
        return;
    read_guard g;
    memcpy(&g, guard, sizeof g);
    read_end(NULL, &g); /* read_end does not look at the context */
}

bool cctx_context_contains(cctx_context *ctx, cctx_var *var)
{
    if (!context_is_valid(ctx) || !var_is_valid(var))
        return false;
    read_guard g;
    hamt_node *root = read_begin(ctx, &g);
    void *value;
    bool found = hamt_find(root, var, &value);
    read_end(ctx, &g);
    return found;
}

bool cctx_context_equal(cctx_context *a, cctx_context *b)
{
    if (!context_is_valid(a) || !context_is_valid(b))
        return false;
    if (a == b)
        return true;
    hamt_node *ra, *rb;
    if (context_snapshot(a, &ra) != CCTX_OK)
        return false;
    if (context_snapshot(b, &rb) != CCTX_OK) {
        hamt_release(ra);
        return false;
    }
    bool eq = hamt_equal(ra, rb);
    hamt_release(ra);
    hamt_release(rb);
    return eq;
}

/* ------------------------------------------------------------ copies */

/*
 * A reference to `ctx`'s root for a copy, from any thread. From a context
 * this thread does not write, it is a loan from this thread's shared
 * credits when they are for that root (hamt.c, "Shared credits"): the
 * copy then writes no line of the root, which every thread copying the
 * same base would write too. The credits' own references keep the root
 * alive, so comparing the pointer loaded here with theirs and taking one
 * by a CAS on this thread's slot needs no read guard; the root read may
 * be older than a concurrent write of the context, as a guarded read may.
 * With the root tagged for an in-place write the credits make the root
 * look shared to that writer, which backs out, so the copy sees no
 * change either. Otherwise a guarded read, which installs a batch of
 * credits when the context's reference is counted (never from a loan:
 * credits need a counted reference behind them). Returns whether the
 * reference is a loan (give it back with root_put).
 */
#ifdef CCTX_INTERNAL_CHECKS
void (*cctx__credit_install_hook)(void);
#endif
#define CREDIT_INSTALL_HOOK() CCTX_TEST_HOOK(cctx__credit_install_hook)

static bool root_take(cctx_thread_state *ts, cctx_context *ctx, hamt_node **out)
{
    if (ts != NULL && context_owner(ctx) != (uintptr_t)ts) {
        uintptr_t raw = (uintptr_t)cctx_load_ptr(&ctx->root);
        hamt_node *root = (hamt_node *)(raw & ~CCTX_ROOT_TAGS);
        if (!(raw & CCTX_ROOT_LOAN) && hamt_credit_take(root)) {
            *out = root;
            return true;
        }
    }
    read_guard g;
    hamt_node *root = read_begin(ctx, &g);
    bool loan = g.guarded && !g.loan && ts != NULL && hamt_credit_retain(root);
    if (!loan)
        hamt_retain(root);
    read_end(ctx, &g);
    if (loan) {
        CREDIT_INSTALL_HOOK();
        hamt_credit_install(root); /* may release another root's values */
    }
    *out = root;
    return loan;
}

static void root_put(hamt_node *root, bool loan)
{
    if (loan)
        hamt_credit_give(root);
    else
        hamt_release(root);
}

cctx_status cctx_context_copy(cctx_context *ctx, cctx_context **out)
{
    if (!context_is_valid(ctx) || out == NULL)
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_get();
    hamt_node *root;
    bool loan = root_take(ts, ctx, &root);
    cctx_status st = context_new_with_root(root, out);
    if (st != CCTX_OK)
        root_put(root, loan);
    else if (loan)
        (*out)->root = (hamt_node *)((uintptr_t)root | CCTX_ROOT_LOAN);
    return st;
}

/* `root` without the variables marked CCTX_VAR_NOT_INHERITED. Consumes the
 * reference to `root`; on ENOMEM it is released and nothing is returned. */
static cctx_status strip_not_inherited(hamt_node *root, hamt_node **out)
{
    if (cctx_load_uint(&cctx_not_inherited_vars) == 0) {
        *out = root;
        return CCTX_OK;
    }
    /* Collect first (iterating a tree while replacing it is not allowed),
     * then remove one by one. Non-inherited variables are rare. */
    size_t n = 0, cap = 0;
    cctx_var **drop = NULL;
    hamt_iter it;
    cctx_var *key;
    void *value;
    hamt_iter_init(&it, root);
    while (hamt_iter_next(&it, &key, &value)) {
        if (!(key->flags & CCTX_VAR_NOT_INHERITED))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            cctx_var **grown = cctx_realloc(drop, ncap * sizeof *drop);
            if (grown == NULL) {
                cctx_dealloc(drop);
                hamt_release(root);
                return CCTX_ENOMEM;
            }
            drop = grown;
            cap = ncap;
        }
        drop[n++] = key;
    }
    hamt_node *cur = root;
    for (size_t i = 0; i < n; i++) {
        hamt_node *next;
        cctx_status st = hamt_without(cur, drop[i], &next);
        if (st == CCTX_ENOMEM) {
            hamt_release(cur);
            cctx_dealloc(drop);
            return CCTX_ENOMEM;
        }
        hamt_release(cur);
        cur = next;
    }
    cctx_dealloc(drop);
    *out = cur;
    return CCTX_OK;
}

cctx_status cctx_context_copy_inherit(cctx_context *ctx, cctx_context **out)
{
    if (!context_is_valid(ctx) || out == NULL)
        return CCTX_EINVAL;
    hamt_node *root;
    cctx_status st = context_snapshot(ctx, &root);
    if (st != CCTX_OK)
        return st;
    st = strip_not_inherited(root, &root);
    if (st != CCTX_OK)
        return st;
    st = context_new_with_root(root, out);
    if (st != CCTX_OK)
        hamt_release(root);
    return st;
}

/* ------------------------------------------------------------ writing */

static void root_release(void *root)
{
    hamt_release(root);
}

void context_publish(cctx_thread_state *ts, cctx_context *ctx, hamt_node *new_root)
{
    credit_forget(ctx); /* the old root must not outlive `ctx`'s use of it */
    /* Full barrier: readers that arrive later see new_root; and the loads
     * of root_may_be_read below cannot pass it (read_begin's argument). */
    uintptr_t raw = (uintptr_t)cctx_fas_ptr(&ctx->root, new_root);
    hamt_node *old = (hamt_node *)(raw & ~CCTX_ROOT_TAGS);
    /* The writer may be this thread writing its current context: its
     * lookup cache must not outlive the old root. Bumped after the
     * exchange and before the old root can be freed, so that a signal
     * handler running on this thread in between sees either a cache entry
     * of the old root (still alive) or caches a new-root value under the
     * old version, which this bump then invalidates (var_access.c). */
    thread_state_invalidate(ts);
    if (old == NULL)
        return;
    if (root_may_be_read(ctx, old))
        reclaim_retire(ts->record, old, root_release); /* a loan too: counted */
    else if (raw & CCTX_ROOT_LOAN)
        hamt_credit_give(old); /* no reader can hold it (read_begin) */
    else
        hamt_release(old);
}

/* This thread's shared credits for `ctx`'s root go back before a write:
 * they would make the root look shared to write_in_place. A loaned root is
 * shared anyway (its lender's context holds it), and giving the credits
 * back there would undo every copy's saving. Only the writer calls this. */
static inline void shared_credits_forget(cctx_context *ctx)
{
    uintptr_t raw = (uintptr_t)cctx_load_ptr(&ctx->root);
    if (!(raw & CCTX_ROOT_LOAN))
        hamt_credits_forget((hamt_node *)(raw & ~CCTX_ROOT_TAGS));
}

/*
 * Overwrites `var`'s value in place when nothing else can see the change:
 * every node on its path is uniquely owned (no other root, snapshot or
 * copy shares it) and no other thread is reading the context. The
 * handshake with readers on other threads (read_begin) is one exchange:
 *
 *   writer                              reader
 *   fas(root, root|IN_PLACE)  (fence)   fas(hazard, root)       (fence)
 *   no hazard && root unique?           load root: tagged -> wait
 *     no: store root (untag), give up
 *     yes: store value, store root (release)
 *
 * Either the writer sees the reader's hazard (and backs out, leaving the
 * map as it was), or the reader sees the tag and waits until the value is
 * stored (read_begin's argument, with the tag for the new root; a context
 * no other thread ever read has no such reader). A reader that retained
 * the root earlier (a snapshot) raised its count before clearing its
 * hazard, so the writer sees a count of 2 and
 * backs out: a snapshot never changes. The replaced value (unless
 * `keep_old`: its reference then goes to the caller) is released at
 * once: no reader can hold it. A signal handler on this thread reads the
 * slot old or new (one aligned store) and the version bump comes between
 * the store and the release (var_access.c). One locked instruction, no
 * allocation, no reference-count traffic.
 */
static bool write_in_place(cctx_thread_state *ts, cctx_context *ctx, hamt_node *root,
                           cctx_var *var, void *value, bool keep_old)
{
    void **slot = hamt_value_slot_if_unique(root, var);
    if (slot == NULL)
        return false;
    var_value_retain(var, value); /* before anything is visible */
    /* fork() may copy the process while the root is tagged; this thread
     * does not exist in the child, so the child's fork handler (reclaim.c)
     * clears the tag of the context named here. The exchange orders this
     * store before the tag: a child that sees the tag sees the name. */
    ts->in_place = ctx;
    /* The loan mark stays as it is (only this thread writes the word). */
    hamt_node *plain = cctx_load_ptr(&ctx->root);
    (void)cctx_fas_ptr(&ctx->root, (hamt_node *)((uintptr_t)plain | CCTX_ROOT_IN_PLACE));
    if (root_may_be_read(ctx, root) || !hamt_is_unique(root)) {
        cctx_store_ptr(&ctx->root, plain);
        cctx_store_ptr(&ts->in_place, NULL); /* release: after the untag */
        var_value_release(var, value);
        return false;
    }
    void *old = *slot;
    /* One aligned store: a signal handler on this thread reads the slot
     * whole, old or new. */
    cctx_store_ptr(slot, value);
    thread_state_invalidate(ts);
    cctx_store_ptr(&ctx->root, plain); /* release: readers see the value */
    cctx_store_ptr(&ts->in_place, NULL); /* release: after the untag */
    if (!keep_old)
        var_value_release(var, old);
    return true;
}

/* The old binding goes into `token` (which has none yet): `retain` takes
 * a new reference for it; without, the caller moves one in. */
static inline void token_take_old(cctx_token *token, cctx_var *var, void *old, bool retain)
{
    if (retain)
        var_value_retain(var, old);
    token->old_value = old;
    token->has_old = true;
}

/*
 * Context serials (context.h's `serial`): each thread hands them out from
 * a block it takes from one global counter, so a set that makes a
 * context's first token pays a locked instruction once per block, not per
 * context. 64 bits never wrap, so no serial is ever given twice, and 0
 * (the counter's first value) is skipped: it means "none yet". A fork
 * child goes on with the forking thread's block and takes new blocks from
 * its copy of the counter, past every block handed out before the fork:
 * within one process no serial repeats.
 */
#define CONTEXT_SERIAL_BLOCK 4096u
static uint64_t context_serial_counter;
static __thread uint64_t context_serial_next __attribute__((tls_model("initial-exec")));
static __thread uint64_t context_serial_end __attribute__((tls_model("initial-exec")));

static __attribute__((noinline)) uint64_t context_serial_block(void)
{
    uint64_t first = cctx_faa_u64(&context_serial_counter, CONTEXT_SERIAL_BLOCK);
    context_serial_end = first + CONTEXT_SERIAL_BLOCK;
    return first == 0 ? 1 : first;
}

/* `ctx`'s serial, given now if it has none. Only its writer calls this
 * (context_write_set), and only the writer reads it (context_write_reset):
 * write ownership passes from one thread to the next with release/acquire
 * on `owner`, so plain accesses suffice. */
static inline uint64_t context_serial(cctx_context *ctx)
{
    uint64_t s = ctx->serial;
    if (CCTX_LIKELY(s != 0))
        return s;
    s = context_serial_next;
    if (CCTX_UNLIKELY(s == context_serial_end))
        s = context_serial_block();
    context_serial_next = s + 1;
    ctx->serial = s;
    return s;
}

cctx_status context_write_set(cctx_thread_state *ts, cctx_context *ctx, cctx_var *var,
                              void *value, bool light, cctx_token **token_out)
{
    /* Credits would make the root look shared to write_in_place. */
    credit_forget(ctx);
    shared_credits_forget(ctx);
    /* The writer's own root: no other thread replaces it. */
    hamt_node *root = context_own_root(ctx);
    void *old = NULL;
    bool has_old = hamt_find(root, var, &old);
    cctx_token *token = NULL;
    if (token_out != NULL) {
        cctx_status st = token_new(ts, var, ctx, context_serial(ctx), light, &token);
        if (st != CCTX_OK)
            return st;
    }
    if (has_old && old == value) {
        /* Same binding: no reference taken, nothing published, so the
         * shared root's count line is not written. */
        if (token != NULL) {
            token_take_old(token, var, old, true);
            *token_out = token;
        }
        return CCTX_OK;
    }
    /* In place, the map's reference to the old value moves to the token
     * (no retain by the token, no release by the write). */
    if (has_old && write_in_place(ts, ctx, root, var, value, token != NULL)) {
        if (token != NULL) {
            token_take_old(token, var, old, false);
            *token_out = token;
        }
        return CCTX_OK;
    }
    hamt_node *next;
    cctx_status st = hamt_assoc(root, var, value, &next);
    if (st != CCTX_OK) {
        cctx_token_release(token); /* still MISSING: it releases no value */
        return st;
    }
    /* Before the publish: until then the old root keeps `old` alive. */
    if (token != NULL) {
        if (has_old)
            token_take_old(token, var, old, true);
        *token_out = token;
    }
    context_publish(ts, ctx, next);
    return CCTX_OK;
}

/*
 * Marks `token` used. A plain (release) store, not a compare-and-swap:
 * only the writer of the token's context consumes the token (the reset
 * checked the serials match, and the caller holds write ownership of ctx, which
 * context.h's state machine gives to one thread at a time: an entered
 * context's thread, the one-off writer, or the claiming task, which runs
 * on one thread at a time). So no other reset can test `used` and
 * commit between this reset's test at the top and this store; other
 * threads only read it (cctx_token_is_used, or a reset that then fails
 * with CCTX_TOKEN_USED or CCTX_TOKEN_WRONG_CONTEXT).
 */
static inline void token_consume(cctx_token *token)
{
    CCTX_ASSERT(cctx_load_uint(&token->used) == 0);
    cctx_store_uint(&token->used, 1);
}

cctx_status context_write_reset(cctx_thread_state *ts, cctx_context *ctx, cctx_var *var,
                                cctx_token *token)
{
    /* Python's order of checks. */
    if (cctx_load_uint(&token->used))
        return CCTX_TOKEN_USED;
    if (token->var != var)
        return CCTX_TOKEN_WRONG_VAR;
    /* By serial, not address: see token.h. A context no token was made
     * in has serial 0, which no token holds. */
    if (token->ctx_serial != ctx->serial)
        return CCTX_TOKEN_WRONG_CONTEXT;

    credit_forget(ctx); /* as in context_write_set */
    shared_credits_forget(ctx);
    hamt_node *root = context_own_root(ctx);
    hamt_node *next = root;
    cctx_status st;
    void *cur;
    bool has_cur = hamt_find(root, var, &cur);
    if (token->has_old && has_cur && cur != token->old_value &&
        hamt_value_slot_if_unique(root, var) != NULL) {
        /* In place (see write_in_place). The token is consumed first:
         * the write cannot fail. A plain store (see token_consume). */
        token_consume(token);
        if (write_in_place(ts, ctx, root, var, token->old_value, false))
            return CCTX_OK;
        /* Backed out (a reader arrived): path copy; no failure allowed
         * now that the token is used, so on ENOMEM give the token back. */
        st = hamt_assoc(root, var, token->old_value, &next);
        if (st != CCTX_OK) {
            cctx_store_uint(&token->used, 0);
            return st;
        }
        context_publish(ts, ctx, next);
        return CCTX_OK;
    }
    if (token->has_old) {
        st = has_cur && cur == token->old_value
                 ? CCTX_NOT_FOUND /* already bound so: nothing to build */
                 : hamt_assoc(root, var, token->old_value, &next);
    } else {
        st = has_cur ? hamt_without(root, var, &next) : CCTX_NOT_FOUND;
    }
    if (st == CCTX_NOT_FOUND)
        next = root; /* no change: no reference taken */
    else if (st != CCTX_OK)
        return st;
    /* Commit point: the token is consumed exactly once. */
    token_consume(token);
    if (next != root)
        context_publish(ts, ctx, next);
    return CCTX_OK;
}

/* ------------------------------------------------------------ owner */

/*
 * The bias. Most contexts are entered again and again by one thread (a
 * loop of `run`, a worker's own contexts), and the CAS of an enter is most
 * of its cost. So an exit by the thread that also made the previous exit
 * (`bias_last`) leaves the context LEFT(ts) instead of FREE, and ts's next
 * enter takes it back with plain stores. Any other taker (an enter by
 * another thread, a claim, a one-off write) first revokes the bias:
 *
 *       biased enter (ts)                 revoke (r)
 *       load owner == LEFT(ts)?           CAS owner LEFT(ts) -> REVOKING
 *       store bias_entering = 1           heavy barrier (membarrier)
 *       light barrier                     wait while bias_entering != 0
 *       load owner == LEFT(ts)?           load owner:
 *         store owner = ENTERED(ts)         REVOKING: bias_last = NEVER,
 *       store bias_entering = 0               store owner = the taken state
 *                                           else: ts entered first; look
 *                                             again (it is entered: refused)
 *
 * Dekker's pattern again, with the asymmetric barrier of "The handover"
 * (the same exit_fence mode decides both): either ts's second load sees
 * REVOKING (it stores nothing and takes the CAS path, which refuses), or
 * r's wait sees ts's window open and waits for it to close, after which
 * ts's store of ENTERED(ts), ordered before its store of 0, is what r
 * reads. So r writes the word only when no biased enter can still
 * overwrite it, and exactly one side takes the context.
 *
 * One writer of `bias_entering`: a thread opens the window only when it
 * saw LEFT(itself), and a LEFT(ts) word changes only by ts (enter, exit to
 * LEFT(ts) again) or by a revoke, which sets bias_last = NEVER so that no
 * exit biases the object again. So between an object's creation and its
 * free at most one thread ever holds its bias; a thread that stopped
 * holding it never opens the window again (its second load fails first),
 * and nobody can be inside the window at free (an enter needs a
 * reference). The window's `0` therefore never hides another thread's `1`.
 *
 * Costs: the biased enter has no locked instruction; a revoke costs one
 * membarrier (≈ 0.3 µs), at most once per context object, and only for an
 * object one thread left twice in a row. A context that moves between
 * threads (a Swift task's claims never bias: only exits of entered
 * contexts do) pays the plain CAS it always paid. A thread that exits
 * leaves its LEFT words behind: they read as FREE to everyone (readers,
 * releasers), a revoke never dereferences the state, and a new thread
 * given the same address may take the bias over, which is as safe as its
 * old holder taking it (no window of the dead thread is open). In a fork
 * child, a window left open by a thread that did not survive is closed by
 * fiat (reclaim_thread_is_gone), as the handover does: the revoke stops
 * waiting for it, and the free of the object stores its 0 (context_free),
 * so a reuse does not inherit it.
 */

/* The revoke side and every other non-biased take: FREE or LEFT -> `to`
 * for thread `ts` (NULL: no state; never the bias holder). False when the
 * context is taken (entered, claimed, written, being revoked). */
static __attribute__((noinline)) bool owner_take_slow(cctx_context *ctx, cctx_thread_state *ts,
                                                      uintptr_t to)
{
    for (;;) {
        uintptr_t owner = cctx_load_uintptr(&ctx->owner);
        if (owner == CCTX_OWNER_NONE ||
            (ts != NULL && owner == ((uintptr_t)ts | CCTX_OWNER_LEFT))) {
            /* Free, or our own bias: only we would take it with plain
             * stores, and we are here. Acquire (full barrier): the
             * previous owner's writes happen before. */
            if (cctx_cas_uintptr(&ctx->owner, owner, to))
                return true;
            continue;
        }
        if (!owner_is_left(owner))
            return false;
        if (!cctx_cas_uintptr(&ctx->owner, owner, CCTX_OWNER_REVOKING))
            continue;
        handover_heavy_barrier();
        cctx_thread_state *holder = (cctx_thread_state *)(owner & ~CCTX_OWNER_LEFT);
        while (cctx_load_uint(&ctx->bias_entering) != 0) {
            if (reclaim_thread_is_gone(holder))
                break; /* a fork child: its window stays open for ever */
            sched_yield();
        }
        if (cctx_load_uintptr(&ctx->owner) == CCTX_OWNER_REVOKING) {
            ctx->bias_last = CCTX_BIAS_NEVER;
            cctx_store_uintptr(&ctx->owner, to);
            return true;
        }
        /* The holder's biased enter came first and overwrote REVOKING:
         * look again (it is entered now, or has left once more). */
    }
}

/* The exits' and the biased enter's side of a Dekker barrier ("The
 * handover", "The bias"): a compiler barrier when membarrier does the
 * other side's work, else a fence. */
static inline __attribute__((always_inline)) void light_barrier(int fence)
{
    if (CCTX_UNLIKELY(fence))
        cctx_fence_memory();
    else
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

#ifdef CCTX_INTERNAL_CHECKS
void (*cctx__bias_window_hook)(int where);
#endif
#define BIAS_WINDOW(where) CCTX_TEST_HOOK(cctx__bias_window_hook, where)

/* owner_enter's two common takes, the biased one and the CAS of a free
 * context, without its fallback: false when neither took the context, with
 * nothing changed (the biased window is closed again), so that the caller
 * may try again from the start (owner_enter). */
static inline __attribute__((always_inline)) bool owner_enter_common(cctx_context *ctx,
                                                                     cctx_thread_state *ts)
{
    uintptr_t owner = cctx_load_uintptr(&ctx->owner);
    uintptr_t left = (uintptr_t)ts | CCTX_OWNER_LEFT;
    if (CCTX_LIKELY(owner == left)) {
        cctx_store_uint(&ctx->bias_entering, 1);
        light_barrier(cctx_load_int(&exit_fence));
        BIAS_WINDOW(1);
        bool biased = cctx_load_uintptr(&ctx->owner) == left;
        if (CCTX_LIKELY(biased)) {
            BIAS_WINDOW(2);
            cctx_store_uintptr(&ctx->owner, (uintptr_t)ts);
        }
        /* Release: after the owner store (a revoker that sees 0 sees it). */
        cctx_store_uint(&ctx->bias_entering, 0);
        if (CCTX_LIKELY(biased))
            return true;
    } else if (CCTX_LIKELY(owner == CCTX_OWNER_NONE) &&
               cctx_cas_uintptr(&ctx->owner, CCTX_OWNER_NONE, (uintptr_t)ts)) {
        /* Acquire (full barrier): the previous owner's writes happen
         * before. */
        return true;
    }
    return false;
}

static inline __attribute__((always_inline)) bool owner_enter(cctx_context *ctx,
                                                              cctx_thread_state *ts)
{
    return owner_enter_common(ctx, ts) || owner_take_slow(ctx, ts, (uintptr_t)ts);
}

bool context_owner_enter(cctx_context *ctx, cctx_thread_state *ts)
{
    return owner_enter(ctx, ts);
}

void context_owner_adopt(cctx_context *ctx, cctx_thread_state *ts)
{
    CCTX_ASSERT(ctx->owner == CCTX_OWNER_NONE);
    ctx->owner = (uintptr_t)ts; /* a new context nobody else has seen */
}

/* The rare work of a leave, out of line so that the common leave keeps
 * no registers across calls: drop a handed reference (`held`), then look
 * at the handover list (`collect`). */
static __attribute__((noinline, cold)) cctx_status owner_leave_slow(cctx_thread_state *ts,
                                                                    cctx_context *ctx, bool held,
                                                                    bool collect)
{
    if (held)
        cctx_context_release(ctx); /* the handed reference; may free */
    if (collect && cctx_load_uint_relaxed(&ts->handover_pending) != 0)
        handover_collect(ts);
    return CCTX_OK;
}

/* ENTERED(ts)[|HELD] -> FREE by ts. `collect`: look at the handover list
 * afterwards (every exit of an entered context must; see "The
 * handover"). `credits`: give back this thread's root credits for `ctx`
 * first, if it has any (false only for a caller that has just seen it has
 * none: cctx_context_exit). Returns CCTX_OK, through the slow path's
 * return when it runs: a caller that returns it ends in a tail call, with
 * no register kept across a call (cctx_context_exit). */
static inline __attribute__((always_inline)) cctx_status
owner_leave_as(cctx_context *ctx, cctx_thread_state *ts, bool collect, bool credits)
{
    /* Plain read of our own word: only this thread writes an ENTERED(ts)
     * owner (context.h). HELD: the last reference was handed to us. */
    uintptr_t owner = cctx_load_uintptr(&ctx->owner);
    CCTX_ASSERT((owner & ~CCTX_OWNER_HELD) == (uintptr_t)ts);
    /* Only an owner's credits are safe (see "Root credits"). */
    if (credits && CCTX_UNLIKELY(root_credit.ctx == ctx))
        credit_flush();
    int fence = cctx_load_int(&exit_fence);
    /* Biased when this thread also made the previous exit ("The bias");
     * a base never is (its teardown frees it). */
    uintptr_t next = CCTX_OWNER_NONE;
    if (collect) {
        cctx_thread_state *last = ctx->bias_last;
        if (CCTX_LIKELY(last == ts))
            next = (uintptr_t)ts | CCTX_OWNER_LEFT;
        else if (last != CCTX_BIAS_NEVER)
            ctx->bias_last = ts;
    }
    /* Release: our writes to the context happen before the next owner's
     * (its CAS acquires) and before a collector's release (its load
     * acquires). After this store another thread may free the context
     * (unless HELD): it is not touched again. */
    cctx_store_uintptr(&ctx->owner, next);
    /* The exit's side of the handover barrier ("The handover"): the load
     * of ts->handover_pending must not come before the store above. */
    light_barrier(fence);
    bool held = owner != (uintptr_t)ts;
    if (CCTX_UNLIKELY(held | (collect && cctx_load_uint_relaxed(&ts->handover_pending) != 0)))
        return owner_leave_slow(ts, ctx, held, collect);
    return CCTX_OK;
}

static inline __attribute__((always_inline)) cctx_status owner_leave(cctx_context *ctx,
                                                                     cctx_thread_state *ts,
                                                                     bool collect)
{
    return owner_leave_as(ctx, ts, collect, true);
}

void context_owner_leave(cctx_context *ctx, cctx_thread_state *ts)
{
    owner_leave(ctx, ts, true);
}

void context_owner_leave_base(cctx_context *ctx, cctx_thread_state *ts)
{
    /* A thread's base is never on the handover list: the thread holds its
     * own reference until after this leave, so no other thread's release
     * is the last while the base is entered. And the collect could run
     * other threads' callbacks in this thread's closed teardown. */
    owner_leave(ctx, ts, false);
}

/* Write ownership for the explicit-context functions: the thread that has
 * `ctx` entered, a claimer, or — for a context nobody has entered — a
 * one-off WRITING claim held for the duration of the write. Writes need the
 * thread's state (its reclamation record): ENOMEM when it cannot be made,
 * before anything changed. */
static cctx_status context_owner_write_begin(cctx_context *ctx, cctx_thread_state *ts,
                                             bool *transient)
{
    uintptr_t owner = context_owner(ctx);
    *transient = false;
    if (owner == CCTX_OWNER_CLAIMED || owner == (uintptr_t)ts)
        return CCTX_OK;
    if (owner == CCTX_OWNER_NONE && owner_take_slow(ctx, ts, CCTX_OWNER_WRITING)) {
        *transient = true;
        return CCTX_OK;
    }
    return CCTX_ALREADY_ENTERED;
}

static void context_owner_write_end(cctx_context *ctx, bool transient)
{
    if (transient)
        cctx_store_uintptr(&ctx->owner, CCTX_OWNER_NONE);
}

static cctx_status context_owner_claim(cctx_context *ctx)
{
    /* The common case, a context nobody holds: the CAS owner_take_slow
     * would make first (acquire, full barrier: the previous owner's writes
     * happen before), without its call, its thread-state lookup (needed
     * only to take back this thread's own bias) and its loop. */
    if (CCTX_LIKELY(cctx_load_uintptr(&ctx->owner) == CCTX_OWNER_NONE) &&
        cctx_cas_uintptr(&ctx->owner, CCTX_OWNER_NONE, CCTX_OWNER_CLAIMED))
        return CCTX_OK;
    if (!owner_take_slow(ctx, thread_state_peek(), CCTX_OWNER_CLAIMED))
        return CCTX_ALREADY_ENTERED;
    return CCTX_OK;
}

static cctx_status context_owner_unclaim(cctx_context *ctx)
{
    if (!cctx_cas_uintptr(&ctx->owner, CCTX_OWNER_CLAIMED, CCTX_OWNER_NONE))
        return CCTX_NOT_ENTERED;
    return CCTX_OK;
}

/* ------------------------------------------------------------ explicit writes */

static inline __attribute__((always_inline)) cctx_status
context_set(cctx_context *ctx, cctx_var *var, void *value, bool light, cctx_token **token_out)
{
    if (!context_is_valid(ctx) || !var_is_valid(var))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_get();
    if (ts == NULL)
        return CCTX_ENOMEM;
    bool transient;
    cctx_status st = context_owner_write_begin(ctx, ts, &transient);
    if (st != CCTX_OK)
        return st;
    st = context_write_set(ts, ctx, var, value, light, token_out);
    context_owner_write_end(ctx, transient);
    return st;
}

cctx_status cctx_context_set(cctx_context *ctx, cctx_var *var, void *value,
                             cctx_token **token_out)
{
    return context_set(ctx, var, value, false, token_out);
}

cctx_status cctx_context_set_light(cctx_context *ctx, cctx_var *var, void *value,
                                   cctx_token **token_out)
{
    return context_set(ctx, var, value, true, token_out);
}

cctx_status cctx_context_reset(cctx_context *ctx, cctx_var *var, cctx_token *token)
{
    if (!context_is_valid(ctx) || !var_is_valid(var) || !token_is_valid(token))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_get();
    if (ts == NULL)
        return CCTX_ENOMEM;
    bool transient;
    cctx_status st = context_owner_write_begin(ctx, ts, &transient);
    if (st != CCTX_OK)
        return st;
    st = context_write_reset(ts, ctx, var, token);
    context_owner_write_end(ctx, transient);
    return st;
}

cctx_status cctx_context_delete(cctx_context *ctx, cctx_var *var)
{
    if (!context_is_valid(ctx) || !var_is_valid(var))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_get();
    if (ts == NULL)
        return CCTX_ENOMEM;
    bool transient;
    cctx_status st = context_owner_write_begin(ctx, ts, &transient);
    if (st != CCTX_OK)
        return st;
    hamt_node *next;
    st = hamt_without(context_own_root(ctx), var, &next);
    if (st == CCTX_OK)
        context_publish(ts, ctx, next);
    context_owner_write_end(ctx, transient);
    return st;
}

/* ------------------------------------------------------------ claims */

cctx_status cctx_context_claim(cctx_context *ctx)
{
    if (!context_is_valid(ctx))
        return CCTX_EINVAL;
    return context_owner_claim(ctx);
}

cctx_status cctx_context_unclaim(cctx_context *ctx)
{
    if (!context_is_valid(ctx))
        return CCTX_EINVAL;
    return context_owner_unclaim(ctx);
}

bool cctx_context_is_entered(const cctx_context *ctx)
{
    if (!context_is_valid(ctx))
        return false;
    uintptr_t owner = context_owner(ctx);
    return owner != CCTX_OWNER_NONE && owner != CCTX_OWNER_WRITING;
}

/* ------------------------------------------------------------ enter/exit */

void context_switched(cctx_thread_state *ts, cctx_event event, cctx_context *ctx)
{
    thread_state_invalidate(ts);
    watch_notify(ts, event, ctx);
}

static inline __attribute__((always_inline)) cctx_status enter(cctx_thread_state *ts,
                                                                cctx_context *ctx)
{
    if (!owner_enter(ctx, ts))
        return CCTX_ALREADY_ENTERED;
    /* No retain: the caller's reference keeps it, or is handed to this
     * entered state when released early ("The handover"). */
    ctx->prev = ts->current;
    /* The new current is published to a signal handler on this thread
     * before the version bump (context_switched): see var_access.c. */
    ts->current = ctx;
    context_switched(ts, CCTX_EVENT_ENTERED, ctx);
    return CCTX_OK;
}

/* Leaves ts's innermost entered context `c` (not its base). */
static inline __attribute__((always_inline)) void exit_innermost(cctx_thread_state *ts,
                                                                 cctx_context *c)
{
    CCTX_ASSERT(c == ts->current && c != ts->base);
    /* `prev` is left as is: it means nothing once the context is left. */
    ts->current = c->prev;
    context_switched(ts, CCTX_EVENT_EXITED, ts->current);
    owner_leave(c, ts, true); /* may free it: not touched after */
}

cctx_status context_enter(cctx_thread_state *ts, cctx_context *ctx)
{
    return enter(ts, ctx);
}

void context_exit_innermost(cctx_thread_state *ts)
{
    exit_innermost(ts, ts->current);
}

void context_exit_above(cctx_thread_state *ts, cctx_context *ctx)
{
    while (ts->current != ctx && ts->current != ts->base)
        context_exit_innermost(ts);
}

/* cctx_context_enter's general case, out of line: a thread with no state
 * yet, a context the common takes did not get, or watchers to notify. */
static __attribute__((noinline)) cctx_status enter_general(cctx_context *ctx)
{
    cctx_thread_state *ts = thread_state_get();
    if (ts == NULL)
        return CCTX_ENOMEM;
    return enter(ts, ctx);
}

cctx_status cctx_context_enter(cctx_context *ctx)
{
    if (!context_is_valid(ctx))
        return CCTX_EINVAL;
    /* The enter of every scope, with no call that returns to it (≈ 5
     * instructions of register saves fewer): everything rarer goes to
     * enter_general, which starts again — a thread's first enter (its
     * state is made), a take that failed (owner_enter_common changed
     * nothing then), and the entered watchers. Their flag is read before
     * the take rather than after it, as cctx_context_exit does: no
     * protocol orders it with the owner word or this thread's current
     * pointer, so a watcher installed meanwhile by another thread may see
     * this enter or not, either way. */
    cctx_thread_state *ts = thread_state_peek();
    if (CCTX_UNLIKELY(ts == NULL || cctx_load_uint(&cctx_watchers_active) != 0) ||
        !owner_enter_common(ctx, ts))
        return enter_general(ctx);
    /* enter()'s steps after the take, the notification left out. */
    ctx->prev = ts->current;
    ts->current = ctx;
    thread_state_invalidate(ts);
    return CCTX_OK;
}

/* cctx_context_exit's general case, out of line: a watcher to notify, or
 * this thread's root credits tied to `ctx` to give back (owner_leave). */
static __attribute__((noinline)) cctx_status exit_innermost_general(cctx_thread_state *ts,
                                                                    cctx_context *ctx)
{
    exit_innermost(ts, ctx);
    return CCTX_OK;
}

cctx_status cctx_context_exit(cctx_context *ctx)
{
    if (!context_is_valid(ctx))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_peek();
    if (ts == NULL || ts->current != ctx || ctx == ts->base)
        return CCTX_NOT_CURRENT;
    /* The exit of every scope. Its two rare calls that return to it — the
     * exited watchers and the flush of this thread's root credits for
     * `ctx` — go to exit_innermost_general, asked here rather than where
     * exit_innermost meets them, so that the common exit ends in a tail
     * call at most and keeps no register across a call (≈ 10 instructions
     * of saves and restores). The same two tests: what lies between here
     * and there (the current pointer and the lookup version, this
     * thread's own words) runs no code and changes neither the credits
     * nor the watchers; a watcher installed by another thread meanwhile
     * may see this exit or not, as it may at the later load (the same
     * load as watch.h's; no order with this thread's words is needed).
     * The rest is exit_innermost's without the notification. */
    if (CCTX_UNLIKELY(cctx_load_uint(&cctx_watchers_active) != 0 || root_credit.ctx == ctx))
        return exit_innermost_general(ts, ctx);
    ts->current = ctx->prev;
    thread_state_invalidate(ts);
    return owner_leave_as(ctx, ts, true, false); /* may free it: not touched after */
}

cctx_status cctx_context_run(cctx_context *ctx, void (*fn)(void *), void *arg)
{
    if (fn == NULL || !context_is_valid(ctx))
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_get();
    if (ts == NULL)
        return CCTX_ENOMEM;
    /* Our own reference for the run (Python's Context.run holds `self`
     * too): fn — or an entered watcher, before fn — may exit `ctx` and drop
     * the caller's last reference to it, and the checks below must not read
     * a freed context, nor one that fn then made at the same address and
     * entered, which they would take for `ctx` and exit. Taken before the
     * enter; on an enter error it is given back (the caller's reference
     * keeps the count above zero: nothing changed). */
    cctx_inc_uint(&ctx->refcnt);
    cctx_status st = enter(ts, ctx);
    if (st != CCTX_OK) {
        (void)cctx_dec_uint_is_zero(&ctx->refcnt);
        return st;
    }
    fn(arg);
    /* fn may have entered contexts it did not leave; leave them too so the
     * thread's chain stays balanced. */
    if (context_owner(ctx) != (uintptr_t)ts) {
        st = CCTX_NOT_CURRENT; /* fn left it itself */
    } else {
        context_exit_above(ts, ctx);
        if (ts->current != ctx)
            st = CCTX_NOT_CURRENT;
        else
            exit_innermost(ts, ctx);
    }
    cctx_context_release(ctx);
    return st;
}

/* copy_current when the credits or the cache run out (or allocations are
 * being failed on purpose): out of line, so the common path saves no
 * registers. */
static __attribute__((noinline)) cctx_status copy_current_slow(cctx_thread_state *ts,
                                                               cctx_context *cur,
                                                               hamt_node *root,
                                                               cctx_context **out)
{
    credit_take(cur, root);
    cctx_context *ctx = context_object(ts);
    if (ctx == NULL) {
        credit_give(ts, root);
        return CCTX_ENOMEM;
    }
    ctx->root = root;
    ctx->owner = CCTX_OWNER_NONE;
    *out = ctx;
    return CCTX_OK;
}

cctx_status cctx_context_copy_current(cctx_context **out)
{
    if (out == NULL)
        return CCTX_EINVAL;
    cctx_thread_state *ts = thread_state_peek();
    if (ts == NULL)
        return cctx_context_new(out);
    /* This thread owns its current context: it reads the root without a
     * read guard (nobody else replaces it). */
    cctx_context *cur = ts->current;
    hamt_node *root = context_own_root(cur);
    /* The common case: a credit for this root and a cached object (taking
     * it cannot fail while the failure countdown is disarmed). */
    if (CCTX_UNLIKELY(root_credit.ctx != cur || root_credit.root != root ||
                      root_credit.n == 0 || context_cache.head == NULL ||
                      __atomic_load_n(&cctx_alloc_fail_countdown, __ATOMIC_RELAXED) != 0))
        return copy_current_slow(ts, cur, root, out);
    root_credit.n--;
    cctx_context *ctx = cctx_alloc_cached_checked(&context_cache);
    CCTX_ASSERT(ctx->refcnt == 1 && ctx->shared_reads == 0); /* see context_object */
    ctx->magic = CCTX_CONTEXT_MAGIC;
    ctx->root = root;
    ctx->owner = CCTX_OWNER_NONE;
    *out = ctx;
    return CCTX_OK;
}

/*
 * copy + set in one pass. The copy is a new context nobody else can see
 * yet, so what cctx_context_copy_current + cctx_context_set would do
 * around the insert is not needed: the copy holds no reference to the
 * source root (the insert's path copy is the new root, with its own
 * references to what it shares), no one-off write claim, no publish
 * exchange and no old root to release, no token.
 */
enum { SOURCE_EMPTY, SOURCE_CURRENT, SOURCE_CONTEXT };

static cctx_status copy_with(int source, cctx_context *ctx, cctx_var *var, void *value,
                             bool adopt, cctx_context **out)
{
    cctx_thread_state *ts = thread_state_peek();
    /* Before the insert: a failure then leaves nothing to undo. */
    cctx_context *copy = context_object(ts);
    if (copy == NULL)
        return CCTX_ENOMEM;
    /* A reference to the source root for the insert: the insert retains
     * the values it shares, and a retain callback may write the source
     * context (replacing and releasing its root) before the insert is
     * done. The current context's root is read without a guard (only this
     * thread replaces it) and the reference is a root credit, as in
     * copy_current: no locked instruction in the common case. */
    hamt_node *src = NULL;
    bool credit = false, loan = false;
    if (source == SOURCE_CURRENT && ts != NULL) {
        src = context_own_root(ts->current);
        credit_take(ts->current, src);
        credit = true;
    } else if (source == SOURCE_CONTEXT) {
        loan = root_take(ts, ctx, &src); /* as a copy takes it */
    }
    hamt_node *root;
    /* Adopting: on failure the caller's value reference is untouched
     * (hamt_assoc_adopt takes it only on success), as nothing is made. */
    cctx_status st = adopt ? hamt_assoc_adopt(src, var, value, &root)
                           : hamt_assoc(src, var, value, &root);
    if (credit)
        credit_give(ts, src);
    else
        root_put(src, loan);
    if (st != CCTX_OK) {
        copy->root = NULL;
        copy->owner = CCTX_OWNER_NONE;
        context_free(copy);
        return st;
    }
    copy->root = root;
    copy->owner = CCTX_OWNER_NONE;
    *out = copy;
    return CCTX_OK;
}

/* The public copy_with entry points: their arguments checked once here
 * (CCTX_EINVAL takes nothing, also from an adopting caller). */
static cctx_status copy_with_checked(cctx_context *ctx, cctx_var *var, void *value, bool adopt,
                                     cctx_context **out)
{
    if (out == NULL || !var_is_valid(var) || (ctx != NULL && !context_is_valid(ctx)))
        return CCTX_EINVAL;
    return copy_with(ctx == NULL ? SOURCE_CURRENT : SOURCE_CONTEXT, ctx, var, value, adopt, out);
}

static cctx_status new_with_checked(cctx_var *var, void *value, bool adopt, cctx_context **out)
{
    if (out == NULL || !var_is_valid(var))
        return CCTX_EINVAL;
    return copy_with(SOURCE_EMPTY, NULL, var, value, adopt, out);
}

cctx_status cctx_context_copy_with(cctx_context *ctx, cctx_var *var, void *value,
                                   cctx_context **out)
{
    return copy_with_checked(ctx, var, value, false, out);
}

cctx_status cctx_context_new_with(cctx_var *var, void *value, cctx_context **out)
{
    return new_with_checked(var, value, false, out);
}

cctx_status cctx_context_copy_with_adopting(cctx_context *ctx, cctx_var *var, void *value,
                                            cctx_context **out)
{
    return copy_with_checked(ctx, var, value, true, out);
}

cctx_status cctx_context_new_with_adopting(cctx_var *var, void *value, cctx_context **out)
{
    return new_with_checked(var, value, true, out);
}

cctx_context *cctx_context_current(void)
{
    cctx_thread_state *ts = thread_state_get();
    return ts == NULL ? NULL : ts->current; /* borrowed: the thread holds it */
}

cctx_context *cctx_context_current_peek(void)
{
    cctx_thread_state *ts = thread_state_peek(); /* creates nothing */
    return ts == NULL ? NULL : ts->current;
}

size_t cctx_thread_contexts(cctx_context **out, size_t max)
{
    cctx_thread_state *ts = thread_state_peek();
    if (ts == NULL)
        return 0; /* no state yet: nothing entered, no base created */
    /* Only this thread touches its chain (`prev`), so a plain walk is safe. */
    size_t n = 0;
    for (cctx_context *c = ts->current; c != NULL; c = c == ts->base ? NULL : c->prev) {
        if (out != NULL && n < max)
            out[n] = c;
        n++;
    }
    return n;
}

/* ------------------------------------------------------------ iteration */

struct cctx_iter {
    hamt_node *root; /* the snapshot: one reference */
    hamt_iter it;
};

cctx_status cctx_iter_new(cctx_context *ctx, cctx_iter **out)
{
    if (!context_is_valid(ctx) || out == NULL)
        return CCTX_EINVAL;
    cctx_iter *iter = cctx_alloc(sizeof *iter);
    if (iter == NULL)
        return CCTX_ENOMEM;
    cctx_status st = context_snapshot(ctx, &iter->root);
    if (st != CCTX_OK) {
        cctx_dealloc(iter);
        return st;
    }
    hamt_iter_init(&iter->it, iter->root);
    *out = iter;
    return CCTX_OK;
}

bool cctx_iter_next(cctx_iter *iter, cctx_var **var_out, void **value_out)
{
    if (iter == NULL)
        return false;
    cctx_var *key;
    void *value;
    if (!hamt_iter_next(&iter->it, &key, &value))
        return false;
    if (var_out != NULL)
        *var_out = key;
    if (value_out != NULL)
        *value_out = value;
    return true;
}

void cctx_iter_free(cctx_iter *iter)
{
    if (iter == NULL)
        return;
    hamt_release(iter->root);
    cctx_dealloc(iter);
}

int cctx__context_check(cctx_context *ctx)
{
    hamt_node *root;
    if (!context_is_valid(ctx) || context_snapshot(ctx, &root) != CCTX_OK)
        return -1;
    int line = hamt_check(root);
    hamt_release(root);
    return line;
}
