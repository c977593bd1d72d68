/*
 * bench_cpython.c — the CPython peers of bench_core.c, measured through
 * CPython's C API in an embedded interpreter, with the same harness
 * (bench_common.h) and the same row names.
 *
 *   get_repeated_1     PyContextVar_Get, repeated (hits CPython's per-variable
 *                      cache) + Py_DECREF of the result
 *   get_cold_N         PyContext_Enter(copy); PyContextVar_Get; PyContext_Exit,
 *                      net of the same loop without the get (cache miss:
 *                      every enter bumps the thread's context version)
 *   set_reset_N        PyContextVar_Set + PyContextVar_Reset + token decref
 *   copy_N             PyContext_CopyCurrent + decref
 *   enter_exit         PyContext_Enter + PyContext_Exit
 *   run_noop           ctx.run(noop): the `run` method called by
 *                      PyObject_VectorcallMethod with a METH_NOARGS C no-op
 *   local_get/set      attribute get/set on a _thread._local instance
 *                      (PyObject_GetAttr / PyObject_SetAttr)
 *   map_lookup_N       immutables.Map[key] (PyObject_GetItem; the keys are
 *                      ContextVar objects, shuffled), and the same on a
 *                      contextvars.Context of N entries
 *   map_insert_N       immutables.Map.set(key, value) (a persistent insert),
 *                      and for Context: copy, enter, set, exit
 *   scaling @N         get/set/copy/run with N variables set, for the chart
 *
 * Built with `python3-config --cflags --embed` / `--ldflags --embed`. When
 * they are missing, make compiles this file with -DBENCH_NO_PYTHON and the
 * rows say "skipped: no python3-dev".
 */
#include "bench_common.h"

#define IMPL "CPython"

#ifdef BENCH_NO_PYTHON

static const char *peer_rows[][2] = {
    {"core", "get_repeated_1"}, {"core", "get_cold_1"}, {"core", "get_cold_10000"},
    {"core", "set_reset_1"},    {"core", "set_reset_100"}, {"core", "copy_1"},
    {"core", "copy_10000"},     {"core", "enter_exit"},    {"core", "run_noop"},
    {"core", "local_get"},      {"core", "local_set"},
};

int main(void)
{
    for (size_t i = 0; i < sizeof peer_rows / sizeof peer_rows[0]; i++)
        bench_skip(peer_rows[i][0], peer_rows[i][1], IMPL, "no python3-dev");
    return 0;
}

#else

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NMAX 1000000
#define POOL 64

static PyObject **vars; /* NMAX ContextVar objects */
static PyObject *val[4];
#define VAL(i) (val[(i) & 3])

static void die(const char *what)
{
    fprintf(stderr, "bench_cpython: %s failed\n", what);
    if (PyErr_Occurred())
        PyErr_Print();
    exit(1);
}

#define CHECK(expr, what) do { if (!(expr)) die(what); } while (0)

typedef struct args {
    PyObject *var;
    PyObject **keys;
    size_t nkeys;
    PyObject *ctx;
    PyObject *pool[POOL];
    PyObject *obj;      /* local / map */
    PyObject *name;     /* attribute or method name */
    PyObject *noop;
} args;

static BENCH_NOINLINE void l_get(void *p, uint64_t n)
{
    args *a = p;
    PyObject *v = a->var;
    for (uint64_t i = 0; i < n; i++) {
        PyObject *out;
        int rc = PyContextVar_Get(v, NULL, &out);
        BENCH_SINK(rc);
        BENCH_SINK(out);
        Py_XDECREF(out);
    }
}

static BENCH_NOINLINE void l_cold_get(void *p, uint64_t n)
{
    args *a = p;
    size_t k = 0;
    for (uint64_t i = 0; i < n; i++) {
        PyObject *c = a->pool[i & (POOL - 1)];
        PyObject *v = a->keys[k];
        k = k + 1 == a->nkeys ? 0 : k + 1;
        int rc = PyContext_Enter(c);
        PyObject *out;
        rc |= PyContextVar_Get(v, NULL, &out);
        BENCH_SINK(out);
        Py_XDECREF(out);
        rc |= PyContext_Exit(c);
        BENCH_SINK(rc);
    }
}

static BENCH_NOINLINE void l_cold_base(void *p, uint64_t n)
{
    args *a = p;
    size_t k = 0;
    for (uint64_t i = 0; i < n; i++) {
        PyObject *c = a->pool[i & (POOL - 1)];
        PyObject *v = a->keys[k];
        k = k + 1 == a->nkeys ? 0 : k + 1;
        BENCH_SINK(v);
        int rc = PyContext_Enter(c);
        rc |= PyContext_Exit(c);
        BENCH_SINK(rc);
    }
}

static BENCH_NOINLINE void l_set_reset(void *p, uint64_t n)
{
    args *a = p;
    PyObject *v = a->var;
    for (uint64_t i = 0; i < n; i++) {
        PyObject *t = PyContextVar_Set(v, VAL(i + 1));
        int rc = PyContextVar_Reset(v, t);
        BENCH_SINK(rc);
        Py_DECREF(t);
    }
}

static BENCH_NOINLINE void l_copy(void *p, uint64_t n)
{
    (void)p;
    for (uint64_t i = 0; i < n; i++) {
        PyObject *c = PyContext_CopyCurrent();
        BENCH_SINK(c);
        Py_DECREF(c);
    }
}

static BENCH_NOINLINE void l_enter_exit(void *p, uint64_t n)
{
    args *a = p;
    PyObject *c = a->ctx;
    for (uint64_t i = 0; i < n; i++) {
        int rc = PyContext_Enter(c);
        rc |= PyContext_Exit(c);
        BENCH_SINK(rc);
    }
}

static BENCH_NOINLINE void l_run(void *p, uint64_t n)
{
    args *a = p;
    PyObject *argv[2] = {a->ctx, a->noop};
    for (uint64_t i = 0; i < n; i++) {
        PyObject *r = PyObject_VectorcallMethod(a->name, argv,
                                                2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        BENCH_SINK(r);
        Py_DECREF(r);
    }
}

static BENCH_NOINLINE void l_local_get(void *p, uint64_t n)
{
    args *a = p;
    for (uint64_t i = 0; i < n; i++) {
        PyObject *r = PyObject_GetAttr(a->obj, a->name);
        BENCH_SINK(r);
        Py_DECREF(r);
    }
}

static BENCH_NOINLINE void l_local_set(void *p, uint64_t n)
{
    args *a = p;
    for (uint64_t i = 0; i < n; i++) {
        int rc = PyObject_SetAttr(a->obj, a->name, VAL(i));
        BENCH_SINK(rc);
    }
}

static BENCH_NOINLINE void l_map_lookup(void *p, uint64_t n)
{
    args *a = p;
    size_t k = 0;
    for (uint64_t i = 0; i < n; i++) {
        PyObject *r = PyObject_GetItem(a->obj, a->keys[k]);
        k = k + 1 == a->nkeys ? 0 : k + 1;
        BENCH_SINK(r);
        Py_DECREF(r);
    }
}

/* immutables.Map.set(fresh, value): a new map; the base is unchanged. */
static BENCH_NOINLINE void l_map_insert(void *p, uint64_t n)
{
    args *a = p;
    for (uint64_t i = 0; i < n; i++) {
        PyObject *argv[3] = {a->obj, a->var, VAL(i)};
        PyObject *m = PyObject_VectorcallMethod(a->name, argv,
                                                3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        BENCH_SINK(m);
        Py_DECREF(m);
    }
}

/* The closest public persistent insert on a Context: copy, enter, set, exit. */
static BENCH_NOINLINE void l_ctx_insert(void *p, uint64_t n)
{
    args *a = p;
    for (uint64_t i = 0; i < n; i++) {
        PyObject *c = PyContext_Copy(a->ctx);
        int rc = PyContext_Enter(c);
        PyObject *t = PyContextVar_Set(a->var, VAL(i));
        rc |= PyContext_Exit(c);
        BENCH_SINK(rc);
        Py_DECREF(t);
        Py_DECREF(c);
    }
}

static PyObject *noop_fn(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    Py_RETURN_NONE;
}

static PyMethodDef noop_def = {"noop", noop_fn, METH_NOARGS, NULL};

/* A new context holding vars[0..n-1], built by entering an empty one. */
static PyObject *build_context(size_t n)
{
    PyObject *ctx = PyContext_New();
    CHECK(ctx && PyContext_Enter(ctx) == 0, "enter");
    for (size_t i = 0; i < n; i++) {
        PyObject *t = PyContextVar_Set(vars[i], VAL(i));
        CHECK(t, "set");
        Py_DECREF(t);
    }
    CHECK(PyContext_Exit(ctx) == 0, "exit");
    return ctx;
}

static PyObject **shuffled_keys(size_t n, uint64_t seed, PyObject **buf)
{
    size_t *pn = bench_shuffled(n, seed);
    for (size_t i = 0; i < n; i++)
        buf[i] = vars[pn[i]];
    free(pn);
    return buf;
}

static void time_row(const char *group, const char *op, const char *impl,
                     bench_loop_fn fn, args *a, const char *note)
{
    bench_row(group, op, impl, bench_time(fn, a), "ns", note);
}

int main(void)
{
    Py_Initialize();
    for (int i = 0; i < 4; i++)
        val[i] = PyLong_FromLong(1000 + i); /* not the small-int cache */

    fprintf(stderr, "bench_cpython: Python %s, creating %d variables\n",
            Py_GetVersion(), NMAX);
    vars = malloc(NMAX * sizeof *vars);
    for (size_t i = 0; i < NMAX; i++) {
        char name[32];
        snprintf(name, sizeof name, "v%zu", i);
        vars[i] = PyContextVar_New(name, NULL);
        CHECK(vars[i], "ContextVar");
    }
    PyObject **shuffled = malloc(NMAX * sizeof *shuffled);

    static const size_t sizes[] = {1, 10, 100, 10000, 1000000};
    enum { S1, S10, S100, S1E4, S1E6 };
    PyObject *snap[5];
    for (int s = 0; s < 5; s++)
        snap[s] = build_context(sizes[s]);

    args a;
    memset(&a, 0, sizeof a);
    a.noop = PyCFunction_New(&noop_def, NULL);
    PyObject *run_name = PyUnicode_InternFromString("run");

    /* --- get, repeated (cached). */
    PyObject *t0 = PyContextVar_Set(vars[0], VAL(0));
    Py_DECREF(t0);
    a.var = vars[0];
    time_row("core", "get_repeated_1", IMPL, l_get, &a, "PyContextVar_Get (cached) + decref");

    /* --- cold get. */
    static const int cold[] = {S1, S1E4};
    static const char *cold_names[] = {"get_cold_1", "get_cold_10000"};
    for (int c = 0; c < 2; c++) {
        size_t n = sizes[cold[c]];
        a.keys = shuffled_keys(n, 0x2545f4914f6cdd1dull, shuffled);
        a.nkeys = n;
        for (int i = 0; i < POOL; i++)
            a.pool[i] = PyContext_Copy(snap[cold[c]]);
        bench_row("core", cold_names[c], IMPL, bench_time_net(l_cold_get, l_cold_base, &a),
                  "ns", "(enter copy; get; exit) minus (enter copy; exit)");
        for (int i = 0; i < POOL; i++)
            Py_DECREF(a.pool[i]);
    }

    /* --- per size: get, set+reset, copy, run. */
    static const char *scale_n[] = {"1", "10", "100", "10000", "1000000"};
    a.name = run_name;
    for (int s = 0; s < 5; s++) {
        PyObject *c = PyContext_Copy(snap[s]);
        CHECK(PyContext_Enter(c) == 0, "enter");
        char op[64];
        a.var = vars[0];
        bench_result r = bench_time(l_get, &a);
        snprintf(op, sizeof op, "get@%s", scale_n[s]);
        bench_row("scaling", op, IMPL, r, "ns", "PyContextVar_Get (cached)");
        r = bench_time(l_set_reset, &a);
        snprintf(op, sizeof op, "set@%s", scale_n[s]);
        bench_row("scaling", op, IMPL, r, "ns", "PyContextVar_Set + Reset");
        if (s == S1)
            bench_row("core", "set_reset_1", IMPL, r, "ns", "Set + Reset + token decref");
        if (s == S100)
            bench_row("core", "set_reset_100", IMPL, r, "ns", "Set + Reset + token decref");
        r = bench_time(l_copy, &a);
        snprintf(op, sizeof op, "copy@%s", scale_n[s]);
        bench_row("scaling", op, IMPL, r, "ns", "PyContext_CopyCurrent + decref");
        if (s == S1)
            bench_row("core", "copy_1", IMPL, r, "ns", "PyContext_CopyCurrent + decref");
        if (s == S1E4)
            bench_row("core", "copy_10000", IMPL, r, "ns", "PyContext_CopyCurrent + decref");
        CHECK(PyContext_Exit(c) == 0, "exit");
        a.ctx = c;
        r = bench_time(l_run, &a);
        snprintf(op, sizeof op, "run@%s", scale_n[s]);
        bench_row("scaling", op, IMPL, r, "ns", "ctx.run(C no-op)");
        Py_DECREF(c);
    }

    /* --- enter+exit, ctx.run (1 variable). */
    a.ctx = PyContext_Copy(snap[S1]);
    time_row("core", "enter_exit", IMPL, l_enter_exit, &a, "PyContext_Enter + Exit");
    time_row("core", "run_noop", IMPL, l_run, &a, "ctx.run(C no-op) via VectorcallMethod");
    Py_DECREF(a.ctx);

    /* --- threading.local. */
    PyObject *thread_mod = PyImport_ImportModule("_thread");
    CHECK(thread_mod, "import _thread");
    PyObject *local_type = PyObject_GetAttrString(thread_mod, "_local");
    CHECK(local_type, "_thread._local");
    a.obj = PyObject_CallNoArgs(local_type);
    CHECK(a.obj, "_thread._local()");
    a.name = PyUnicode_InternFromString("x");
    CHECK(PyObject_SetAttr(a.obj, a.name, VAL(1)) == 0, "setattr");
    time_row("core", "local_get", IMPL, l_local_get, &a, "_thread._local: PyObject_GetAttr");
    time_row("core", "local_set", IMPL, l_local_set, &a, "_thread._local: PyObject_SetAttr");
    Py_DECREF(a.obj);

    /* --- maps: contextvars.Context and immutables.Map at 1e3, 1e5, 1e6. */
    static const size_t map_sizes[] = {1000, 100000, 1000000};
    static const char *map_n[] = {"1e3", "1e5", "1e6"};
    PyObject *fresh = PyContextVar_New("fresh", NULL);
    PyObject *imm = PyImport_ImportModule("immutables");
    PyObject *map_type = NULL;
    if (imm == NULL)
        PyErr_Clear();
    else
        map_type = PyObject_GetAttrString(imm, "Map");
    PyObject *set_name = PyUnicode_InternFromString("set");
    for (int s = 0; s < 3; s++) {
        size_t n = map_sizes[s];
        a.keys = shuffled_keys(n, 0x243f6a8885a308d3ull, shuffled);
        a.nkeys = n;
        a.var = fresh;
        char op[64];
        PyObject *ctx = n == 1000000 ? (Py_INCREF(snap[S1E6]), snap[S1E6]) : build_context(n);
        a.obj = ctx;
        snprintf(op, sizeof op, "map_lookup_%s", map_n[s]);
        time_row("map", op, "CPython Context", l_map_lookup, &a, "ctx[var] (PyObject_GetItem), shuffled");
        a.ctx = ctx;
        snprintf(op, sizeof op, "map_insert_%s", map_n[s]);
        time_row("map", op, "CPython Context", l_ctx_insert, &a, "copy + enter + set + exit");
        Py_DECREF(ctx);
        if (map_type == NULL) {
            snprintf(op, sizeof op, "map_lookup_%s", map_n[s]);
            bench_skip("map", op, "immutables", "immutables not importable");
            snprintf(op, sizeof op, "map_insert_%s", map_n[s]);
            bench_skip("map", op, "immutables", "immutables not importable");
            continue;
        }
        /* Build with the mutation API (m.mutate(); mm[k] = v; mm.finish()). */
        PyObject *empty = PyObject_CallNoArgs(map_type);
        PyObject *mm = PyObject_CallMethod(empty, "mutate", NULL);
        CHECK(mm, "Map.mutate");
        for (size_t i = 0; i < n; i++)
            CHECK(PyObject_SetItem(mm, vars[i], VAL(i)) == 0, "MapMutation[k] = v");
        PyObject *map = PyObject_CallMethod(mm, "finish", NULL);
        CHECK(map, "finish");
        Py_DECREF(mm);
        Py_DECREF(empty);
        a.obj = map;
        a.name = set_name;
        snprintf(op, sizeof op, "map_lookup_%s", map_n[s]);
        time_row("map", op, "immutables", l_map_lookup, &a, "Map[key] (PyObject_GetItem), shuffled");
        snprintf(op, sizeof op, "map_insert_%s", map_n[s]);
        time_row("map", op, "immutables", l_map_insert, &a, "Map.set(new key, v): a new map");
        Py_DECREF(map);
    }
    return 0;
}

#endif
