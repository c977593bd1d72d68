/*
 * bench_core.c — ContextKit's C runtime, measured through its public API
 * (plus testing-free mallinfo2 for memory). Peer numbers come from
 * bench_cpython.c, which measures CPython's contextvars the same way, with
 * the same row names; scripts/bench/table.py pairs them.
 *
 * Rows (group core unless said):
 *   get_repeated_1       cctx_var_get of a variable set in the current
 *                        context, repeated (1 variable in the context)
 *   get_cold_N           first read after entering a context: enter one of
 *                        64 copies, get, exit — net of the same loop without
 *                        the get (N = 1 or 10,000 variables; the N=10,000
 *                        row reads the variables in a shuffled order)
 *   set_reset_N          cctx_var_set (with token) + cctx_var_reset + token
 *                        release, N = 1 or 100 variables in the context
 *   copy_N               cctx_context_copy_current + release, N = 1, 10,000
 *   enter_exit           cctx_context_enter + cctx_context_exit
 *   run_noop             cctx_context_run of a no-op function
 *   local_get/local_set  cctx_local_get / cctx_local_set
 *   pthread_getspecific / pthread_setspecific   raw, for reference
 *   throughput_2v1       get+set throughput of 2 threads over 1 (ratio;
 *                        each thread its own contexts, the same variables)
 *   request_2v1          request throughput of 2 threads over 1 (ratio): a
 *                        request copies a shared base context of 20
 *                        variables, enters the copy, sets 2, gets 4, exits
 *                        and releases it
 *   mem_per_entry_1e6    heap bytes (mallinfo2) per entry of a context
 *                        holding 1e6 variables
 *   map_lookup_N         cctx_context_get on a context of N entries,
 *                        shuffled keys (N = 1e3, 1e5, 1e6)
 *   map_insert_N         cctx_context_copy + cctx_context_set of a new
 *                        variable + release (a persistent insert)
 *   scaling get/set/copy/run @N   the same operations with N = 1, 10, 100,
 *                        1e4, 1e6 variables set, for docs/scaling.svg
 *
 * BENCH_ONLY=row[,row]  runs only the named 2-thread rows (throughput_2v1,
 * request_2v1, request_cpu_2v1), without building the 1e6-variable
 * contexts: a quick look at one scaling row, e.g.
 * `BENCH_ONLY=request_2v1 build/bench/bench_core`.
 *
 *   request_cpu_2v1      (only with BENCH_ONLY) CPU time per request of
 *                        each of 2 threads pinned to CPUs 0 and 1 over
 *                        that of 1 thread (ratio; 1.0 = no contention):
 *                        the cost of the lines both threads write, which
 *                        request_2v1's wall-clock ratio cannot show when
 *                        other processes keep the second core busy
 */
#include "bench_common.h"

#include <contextcore.h>
#include <contextcore_binding.h> /* claim, borrowed get, notify: the Swift layer's costs */

#include <malloc.h>
#include <pthread.h>
#include <sched.h>

#define IMPL "ContextKit"
#define NMAX 1000000
#define POOL 64

static cctx_var **vars;       /* NMAX variables, shared by every context */
static int values[4];         /* distinct non-NULL values */
#define VAL(i) ((void *)&values[(i) & 3])

static void check(cctx_status st, const char *what)
{
    if (st != CCTX_OK) {
        fprintf(stderr, "bench_core: %s: %s\n", what, cctx_strerror(st));
        exit(1);
    }
}

/* ------------------------------------------------------------ contexts */

/* A new context holding vars[0..n-1]. */
static cctx_context *build_context(size_t n)
{
    cctx_context *ctx;
    check(cctx_context_new(&ctx), "context_new");
    for (size_t i = 0; i < n; i++)
        check(cctx_context_set(ctx, vars[i], VAL(i), NULL), "context_set");
    return ctx;
}

static cctx_context *copy_of(cctx_context *ctx)
{
    cctx_context *c;
    check(cctx_context_copy(ctx, &c), "context_copy");
    return c;
}

/* ------------------------------------------------------------ loops */

typedef struct args {
    cctx_var *var;
    cctx_var **keys;      /* read order for multi-key loops */
    size_t nkeys;
    cctx_context *ctx;
    cctx_context *pool[POOL];
    cctx_local *local;
    pthread_key_t key;
} args;

static BENCH_NOINLINE void l_get(void *p, uint64_t n)
{
    args *a = p;
    cctx_var *v = a->var;
    for (uint64_t i = 0; i < n; i++) {
        void *out;
        cctx_status st = cctx_var_get(v, &out);
        BENCH_SINK(st);
        BENCH_SINK(out);
    }
}

static BENCH_NOINLINE void l_cold_get(void *p, uint64_t n)
{
    args *a = p;
    size_t k = 0;
    for (uint64_t i = 0; i < n; i++) {
        cctx_context *c = a->pool[i & (POOL - 1)];
        cctx_var *v = a->keys[k];
        k = k + 1 == a->nkeys ? 0 : k + 1;
        cctx_status st = cctx_context_enter(c);
        void *out;
        st |= cctx_var_get(v, &out);
        BENCH_SINK(out);
        st |= cctx_context_exit(c);
        BENCH_SINK(st);
    }
}

static BENCH_NOINLINE void l_cold_base(void *p, uint64_t n)
{
    args *a = p;
    size_t k = 0;
    for (uint64_t i = 0; i < n; i++) {
        cctx_context *c = a->pool[i & (POOL - 1)];
        cctx_var *v = a->keys[k];
        k = k + 1 == a->nkeys ? 0 : k + 1;
        BENCH_SINK(v);
        cctx_status st = cctx_context_enter(c);
        st |= cctx_context_exit(c);
        BENCH_SINK(st);
    }
}

static BENCH_NOINLINE void l_set_reset(void *p, uint64_t n)
{
    args *a = p;
    cctx_var *v = a->var;
    for (uint64_t i = 0; i < n; i++) {
        cctx_token *t;
        cctx_status st = cctx_var_set(v, VAL(i + 1), &t);
        st |= cctx_var_reset(v, t);
        cctx_token_release(t);
        BENCH_SINK(st);
    }
}

static BENCH_NOINLINE void l_copy(void *p, uint64_t n)
{
    (void)p;
    for (uint64_t i = 0; i < n; i++) {
        cctx_context *c;
        cctx_status st = cctx_context_copy_current(&c);
        BENCH_SINK(st);
        cctx_context_release(c);
    }
}

static void noop_watcher(cctx_event event, cctx_context *ctx, void *userdata)
{
    (void)event;
    (void)ctx;
    (void)userdata;
}

static BENCH_NOINLINE void l_notify_pair(void *p, uint64_t n)
{
    args *a = p;
    for (uint64_t i = 0; i < n; i++) {
        cctx_notify_watchers(CCTX_EVENT_ENTERED, a->ctx);
        cctx_notify_watchers(CCTX_EVENT_EXITED, NULL);
    }
}

static BENCH_NOINLINE void l_enter_exit(void *p, uint64_t n)
{
    args *a = p;
    cctx_context *c = a->ctx;
    for (uint64_t i = 0; i < n; i++) {
        cctx_status st = cctx_context_enter(c);
        st |= cctx_context_exit(c);
        BENCH_SINK(st);
    }
}

static void noop(void *arg) { BENCH_SINK(arg); }

static BENCH_NOINLINE void l_run(void *p, uint64_t n)
{
    args *a = p;
    cctx_context *c = a->ctx;
    for (uint64_t i = 0; i < n; i++) {
        cctx_status st = cctx_context_run(c, noop, NULL);
        BENCH_SINK(st);
    }
}

static BENCH_NOINLINE void l_local_get(void *p, uint64_t n)
{
    args *a = p;
    cctx_local *l = a->local;
    for (uint64_t i = 0; i < n; i++) {
        void *out;
        cctx_status st = cctx_local_get(l, &out);
        BENCH_SINK(st);
        BENCH_SINK(out);
    }
}

static BENCH_NOINLINE void l_local_set(void *p, uint64_t n)
{
    args *a = p;
    cctx_local *l = a->local;
    for (uint64_t i = 0; i < n; i++) {
        cctx_status st = cctx_local_set(l, VAL(i));
        BENCH_SINK(st);
    }
}

static BENCH_NOINLINE void l_getspecific(void *p, uint64_t n)
{
    args *a = p;
    pthread_key_t k = a->key;
    for (uint64_t i = 0; i < n; i++) {
        void *out = pthread_getspecific(k);
        BENCH_SINK(out);
    }
}

static BENCH_NOINLINE void l_setspecific(void *p, uint64_t n)
{
    args *a = p;
    pthread_key_t k = a->key;
    for (uint64_t i = 0; i < n; i++) {
        int rc = pthread_setspecific(k, VAL(i));
        BENCH_SINK(rc);
    }
}

static BENCH_NOINLINE void l_map_lookup(void *p, uint64_t n)
{
    args *a = p;
    cctx_context *c = a->ctx;
    size_t k = 0;
    for (uint64_t i = 0; i < n; i++) {
        void *out;
        cctx_status st = cctx_context_get(c, a->keys[k], &out);
        k = k + 1 == a->nkeys ? 0 : k + 1;
        BENCH_SINK(st);
        BENCH_SINK(out);
    }
}

static BENCH_NOINLINE void l_map_insert(void *p, uint64_t n)
{
    args *a = p;
    cctx_context *base = a->ctx;
    cctx_var *v = a->var; /* not in base */
    for (uint64_t i = 0; i < n; i++) {
        cctx_context *c;
        cctx_status st = cctx_context_copy(base, &c);
        st |= cctx_context_set(c, v, VAL(i), NULL);
        BENCH_SINK(st);
        cctx_context_release(c);
    }
}

/* ------------------------------------------------------------ throughput */

typedef struct worker {
    pthread_t thread;
    cctx_context *snapshot; /* 100 variables; each worker enters a copy */
    uint64_t iters;
    pthread_barrier_t *start;
    void (*loop)(cctx_context *snapshot, uint64_t n);
} worker;

static void mixed_loop(uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        void *out;
        cctx_status st = cctx_var_set(vars[i % 100], VAL(i), NULL);
        st |= cctx_var_get(vars[(i * 7) % 100], &out);
        BENCH_SINK(out);
        BENCH_SINK(st);
    }
}

static void mixed_in_copy(cctx_context *snapshot, uint64_t n)
{
    cctx_context *mine = copy_of(snapshot);
    check(cctx_context_enter(mine), "enter");
    mixed_loop(n);
    check(cctx_context_exit(mine), "exit");
    cctx_context_release(mine);
}

/* One request: copy the shared base (20 variables), enter the copy, set 2
 * variables, get 4, exit, release. */
static void request_loop(cctx_context *base, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        cctx_context *c;
        cctx_status st = cctx_context_copy(base, &c);
        st |= cctx_context_enter(c);
        st |= cctx_var_set(vars[20], VAL(i), NULL);
        st |= cctx_var_set(vars[(i % 20)], VAL(i + 1), NULL);
        for (int k = 0; k < 4; k++) {
            void *out;
            st |= cctx_var_get(vars[(i + 5 * (uint64_t)k) % 21], &out);
            BENCH_SINK(out);
        }
        st |= cctx_context_exit(c);
        cctx_context_release(c);
        BENCH_SINK(st);
    }
}

static void *worker_main(void *p)
{
    worker *w = p;
    w->loop(w->snapshot, w->iters / 16); /* warm-up: thread state, malloc arena */
    pthread_barrier_wait(w->start);
    w->loop(w->snapshot, w->iters);
    (void)cctx_thread_cleanup();
    return NULL;
}

static void (*thread_loop)(cctx_context *snapshot, uint64_t n) = mixed_in_copy;

/* Wall time for `nthreads` threads each doing `iters` loop iterations. */
static double run_threads(int nthreads, cctx_context *snapshot, uint64_t iters)
{
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)nthreads + 1);
    worker w[2];
    for (int t = 0; t < nthreads; t++) {
        w[t] = (worker){.snapshot = snapshot, .iters = iters, .start = &start,
                        .loop = thread_loop};
        pthread_create(&w[t].thread, NULL, worker_main, &w[t]);
    }
    pthread_barrier_wait(&start);
    uint64_t t0 = bench_now_ns();
    for (int t = 0; t < nthreads; t++)
        pthread_join(w[t].thread, NULL);
    double dt = (double)(bench_now_ns() - t0);
    pthread_barrier_destroy(&start);
    return dt;
}

static void bench_throughput(cctx_context *snapshot, const char *op, const char *note)
{
    /* Size the per-thread work to ~100 ms on one thread. */
    uint64_t iters = 1 << 16;
    for (;;) {
        double dt = run_threads(1, snapshot, iters);
        if (dt >= 100e6)
            break;
        iters = dt > 5e6 ? (uint64_t)((double)iters * 110e6 / dt) : iters * 4;
    }
    double ratio[5];
    for (int r = 0; r < 5; r++) {
        double t1 = run_threads(1, snapshot, iters);
        double t2 = run_threads(2, snapshot, iters);
        ratio[r] = 2.0 * t1 / t2; /* (2 iters / t2) / (iters / t1) */
    }
    bench_row("core", op, IMPL, bench_summarise(ratio, 5), "x", note);
}

/* ------------------------------------------------------------ main */

/* Is `op` named in BENCH_ONLY (comma-separated; unset: every row)? */
static bool row_wanted(const char *only, const char *op)
{
    if (only == NULL)
        return true;
    size_t n = strlen(op);
    for (const char *p = only; (p = strstr(p, op)) != NULL; p += n)
        if ((p == only || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
            return true;
    return false;
}

/* ------------------------------------------------------------ CPU time */

typedef struct cpu_worker {
    pthread_t thread;
    cctx_context *base;
    uint64_t iters;
    int cpu;
    pthread_barrier_t *start;
    double ns_per_request; /* thread CPU time */
} cpu_worker;

static double thread_cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static void *cpu_worker_main(void *p)
{
    cpu_worker *w = p;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    (void)pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    request_loop(w->base, w->iters / 16);
    pthread_barrier_wait(w->start);
    double t0 = thread_cpu_ns();
    request_loop(w->base, w->iters);
    w->ns_per_request = (thread_cpu_ns() - t0) / (double)w->iters;
    (void)cctx_thread_cleanup();
    return NULL;
}

/* Mean CPU ns per request of `n` threads pinned to CPUs 0..n-1. */
static double cpu_per_request(int n, cctx_context *base, uint64_t iters)
{
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)n);
    cpu_worker w[2];
    for (int t = 0; t < n; t++) {
        w[t] = (cpu_worker){.base = base, .iters = iters, .cpu = t, .start = &start};
        pthread_create(&w[t].thread, NULL, cpu_worker_main, &w[t]);
    }
    double sum = 0;
    for (int t = 0; t < n; t++) {
        pthread_join(w[t].thread, NULL);
        sum += w[t].ns_per_request;
    }
    pthread_barrier_destroy(&start);
    return sum / n;
}

static void bench_request_cpu(cctx_context *base)
{
    const uint64_t iters = 200000;
    double ratio[5];
    for (int r = 0; r < 5; r++)
        ratio[r] = cpu_per_request(2, base, iters) / cpu_per_request(1, base, iters);
    bench_row("core", "request_cpu_2v1", IMPL, bench_summarise(ratio, 5), "x",
              "CPU ns per request, 2 threads pinned to 2 CPUs over 1 thread");
}

/* The 2-thread rows (BENCH_ONLY may pick them). */
static void throughput_rows(const char *only, cctx_context *snap100)
{
    if (row_wanted(only, "throughput_2v1")) {
        thread_loop = mixed_in_copy;
        bench_throughput(snap100, "throughput_2v1",
                         "ops/s of 2 threads over 1; set+get on 100 shared variables");
    }
    if (row_wanted(only, "request_2v1")) {
        cctx_context *request_base = build_context(20);
        thread_loop = request_loop;
        bench_throughput(request_base, "request_2v1",
                         "requests/s of 2 threads over 1; copy base of 20, set 2, get 4");
        cctx_context_release(request_base);
    }
    if (only != NULL && row_wanted(only, "request_cpu_2v1")) {
        cctx_context *request_base = build_context(20);
        bench_request_cpu(request_base);
        cctx_context_release(request_base);
    }
}

static void time_row(const char *group, const char *op, bench_loop_fn fn,
                     args *a, const char *note)
{
    bench_row(group, op, IMPL, bench_time(fn, a), "ns", note);
}

int main(void)
{
    const char *only = getenv("BENCH_ONLY");
    const size_t nvars = only != NULL ? 128 : NMAX;
    fprintf(stderr, "bench_core: creating %zu variables\n", nvars);
    vars = malloc(NMAX * sizeof *vars);
    for (size_t i = 0; i < nvars; i++) {
        char name[32];
        snprintf(name, sizeof name, "v%zu", i);
        check(cctx_var_new(name, NULL, &vars[i]), "var_new");
    }
    if (only != NULL) {
        cctx_context *snap100 = build_context(100);
        throughput_rows(only, snap100);
        cctx_context_release(snap100);
        return 0;
    }
    /* Shuffled read orders are filled in per row. */
    cctx_var **shuffled = malloc(NMAX * sizeof *shuffled);

    /* Memory per entry: the heap a 1e6-entry context holds (nodes only;
     * the variables exist before and after). */
    fprintf(stderr, "bench_core: building a context of %d entries\n", NMAX);
    malloc_trim(0);
    struct mallinfo2 m0 = mallinfo2();
    cctx_context *big = build_context(NMAX);
    struct mallinfo2 m1 = mallinfo2();
    double per_entry = ((double)m1.uordblks - (double)m0.uordblks) / NMAX;
    bench_result mem = {per_entry, per_entry, per_entry};
    bench_row("core", "mem_per_entry_1e6", IMPL, mem, "B",
              "mallinfo2 in-use bytes after - before building, / 1e6");

    /* Contexts of 1, 10, 100, 1e3, 1e4, 1e5 entries (prefixes of vars). */
    static const size_t sizes[] = {1, 10, 100, 1000, 10000, 100000};
    cctx_context *snap[7];
    {
        cctx_context *b;
        check(cctx_context_new(&b), "context_new");
        size_t done = 0;
        for (int s = 0; s < 6; s++) {
            for (; done < sizes[s]; done++)
                check(cctx_context_set(b, vars[done], VAL(done), NULL), "set");
            snap[s] = copy_of(b);
        }
        cctx_context_release(b);
        snap[6] = big;
    }
    enum { S1, S10, S100, S1E3, S1E4, S1E5, S1E6 };

    args a;
    memset(&a, 0, sizeof a);

    /* --- get, repeated: the thread's base context holds 1 variable. */
    check(cctx_var_set(vars[0], VAL(0), NULL), "set");
    a.var = vars[0];
    time_row("core", "get_repeated_1", l_get, &a, "cctx_var_get, same variable");
    cctx_context *empty;
    check(cctx_context_new(&empty), "context_new");

    /* --- cold get: enter a copy, get, exit; net of enter+exit. */
    static const int cold_sizes[] = {S1, S1E4};
    static const char *cold_names[] = {"get_cold_1", "get_cold_10000"};
    for (int c = 0; c < 2; c++) {
        size_t n = sizes[cold_sizes[c]];
        size_t *pn = bench_shuffled(n, 0x2545f4914f6cdd1dull);
        for (size_t i = 0; i < n; i++)
            shuffled[i] = vars[pn[i]];
        free(pn);
        a.keys = shuffled;
        a.nkeys = n;
        for (int i = 0; i < POOL; i++)
            a.pool[i] = copy_of(snap[cold_sizes[c]]);
        bench_row("core", cold_names[c], IMPL, bench_time_net(l_cold_get, l_cold_base, &a),
                  "ns", "(enter copy; get; exit) minus (enter copy; exit)");
        for (int i = 0; i < POOL; i++)
            cctx_context_release(a.pool[i]);
    }

    /* --- set+reset, copy current, run: inside a copy with N variables. */
    static const int scale_idx[] = {S1, S10, S100, S1E4, S1E6};
    static const char *scale_n[] = {"1", "10", "100", "10000", "1000000"};
    for (int s = 0; s < 5; s++) {
        cctx_context *c = copy_of(snap[scale_idx[s]]);
        check(cctx_context_enter(c), "enter");
        char op[64];
        a.var = vars[0];
        bench_result r;
        r = bench_time(l_get, &a);
        snprintf(op, sizeof op, "get@%s", scale_n[s]);
        bench_row("scaling", op, IMPL, r, "ns", "cctx_var_get of one variable");
        r = bench_time(l_set_reset, &a);
        snprintf(op, sizeof op, "set@%s", scale_n[s]);
        bench_row("scaling", op, IMPL, r, "ns", "cctx_var_set + cctx_var_reset");
        if (s == 0)
            bench_row("core", "set_reset_1", IMPL, r, "ns", "set (token) + reset + token release");
        if (s == 2)
            bench_row("core", "set_reset_100", IMPL, r, "ns", "set (token) + reset + token release");
        r = bench_time(l_copy, &a);
        snprintf(op, sizeof op, "copy@%s", scale_n[s]);
        bench_row("scaling", op, IMPL, r, "ns", "cctx_context_copy_current + release");
        if (s == 0)
            bench_row("core", "copy_1", IMPL, r, "ns", "copy current + release");
        if (s == 3)
            bench_row("core", "copy_10000", IMPL, r, "ns", "copy current + release");
        check(cctx_context_exit(c), "exit");
        a.ctx = c;
        r = bench_time(l_run, &a);
        snprintf(op, sizeof op, "run@%s", scale_n[s]);
        bench_row("scaling", op, IMPL, r, "ns", "cctx_context_run of a no-op");
        cctx_context_release(c);
    }

    /* --- enter+exit, run of a no-op (1 variable). */
    a.ctx = copy_of(snap[S1]);
    time_row("core", "enter_exit", l_enter_exit, &a, "enter + exit");
    time_row("core", "run_noop", l_run, &a, "cctx_context_run(no-op)");
    /* --- the watcher fast path: the same enter+exit with one no-op watcher
     *     installed (the row above is the no-watcher case: one atomic load
     *     per event), and the two notify calls a Swift task scope makes. */
    {
        int wid;
        check(cctx_add_watcher(noop_watcher, NULL, &wid), "add_watcher");
        time_row("core", "enter_exit_watched", l_enter_exit, &a, "enter + exit, one no-op watcher");
        check(cctx_clear_watcher(wid), "clear_watcher");
        time_row("core", "notify_pair", l_notify_pair, &a,
                 "2x cctx_notify_watchers, no watcher (a Swift task scope's cost)");
    }
    cctx_context_release(a.ctx);

    /* --- threading.local and raw pthread keys. */
    check(cctx_local_new(NULL, NULL, NULL, &a.local), "local_new");
    check(cctx_local_set(a.local, VAL(1)), "local_set");
    time_row("core", "local_get", l_local_get, &a, "cctx_local_get");
    time_row("core", "local_set", l_local_set, &a, "cctx_local_set");
    cctx_local_release(a.local);
    pthread_key_create(&a.key, NULL);
    pthread_setspecific(a.key, VAL(1));
    bench_row("core", "local_get", "pthread", bench_time(l_getspecific, &a), "ns",
              "raw pthread_getspecific");
    bench_row("core", "local_set", "pthread", bench_time(l_setspecific, &a), "ns",
              "raw pthread_setspecific");

    /* --- map lookup / persistent insert at 1e3, 1e5, 1e6. */
    static const int map_idx[] = {S1E3, S1E5, S1E6};
    static const char *map_n[] = {"1e3", "1e5", "1e6"};
    cctx_var *fresh;
    check(cctx_var_new("fresh", NULL, &fresh), "var_new");
    for (int s = 0; s < 3; s++) {
        size_t n = map_idx[s] == S1E6 ? (size_t)NMAX : sizes[map_idx[s]];
        size_t *pn = bench_shuffled(n, 0x243f6a8885a308d3ull);
        for (size_t i = 0; i < n; i++)
            shuffled[i] = vars[pn[i]];
        free(pn);
        a.keys = shuffled;
        a.nkeys = n;
        a.ctx = snap[map_idx[s]];
        a.var = fresh;
        char op[64];
        snprintf(op, sizeof op, "map_lookup_%s", map_n[s]);
        time_row("map", op, l_map_lookup, &a, "cctx_context_get, shuffled keys");
        snprintf(op, sizeof op, "map_insert_%s", map_n[s]);
        time_row("map", op, l_map_insert, &a, "cctx_context_copy + cctx_context_set(new var) + release");
    }

    /* --- throughput, 2 threads vs 1. */
    throughput_rows(NULL, snap[S100]);

    for (int s = 0; s < 7; s++)
        cctx_context_release(snap[s]);
    cctx_context_release(empty);
    free(shuffled);
    return 0;
}
