/*
 * count_ops.c — one benchmark operation, repeated N times, for counting
 * (not timing) under callgrind: scripts/bench/count_ops.py runs it once
 * per operation and divides the executed locked instructions, calls into
 * malloc/free and instructions by N. Counting is repeatable where times
 * on a shared VM are not.
 *
 *   count_ops OP N      OP: set_reset_1 set_reset_100 copy enter_exit
 *                           local_set request request_2000 get
 *                           set_discard set_light_discard
 *
 * set_discard is a set whose token is released unused at once (what most
 * `var.set(x)` calls do); set_light_discard the same with the binding's
 * light token (cctx_var_set_light, Swift's `ContextVar.set`).
 *
 * request_2000 is the request with a base of 2,000 variables instead of
 * 20. A path copy borrows the shared node's variables (hamt.c, "Borrowed
 * keys") but still retains each child it shares, so this row grows with
 * the children of the array nodes on the copied path (about 32 each).
 */
#include <contextcore.h>
#include <contextcore_binding.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Counters: cctx__locked_ops from the counting build of the library
 * (atomic.h), cctx__var_count_writes (var.h: locked writes to variables'
 * own counts, lines every thread using the variable writes), allocations
 * through the linker's --wrap. */
extern __thread unsigned long cctx__locked_ops;
extern __thread unsigned long cctx__var_count_writes;
static unsigned long allocs;
void *__real_malloc(size_t);
void *__real_realloc(void *, size_t);
void *__real_calloc(size_t, size_t);
void *__wrap_malloc(size_t n) { allocs++; return __real_malloc(n); }
void *__wrap_realloc(void *p, size_t n) { allocs++; return __real_realloc(p, n); }
void *__wrap_calloc(size_t a, size_t b) { allocs++; return __real_calloc(a, b); }

static int values[4];
#define VAL(i) ((void *)&values[(i) & 3])

enum { NVARS_MAX = 2048 };
static cctx_var *vars[NVARS_MAX + 1];
static int request_vars; /* the request's base size */

static void check(cctx_status st, const char *what)
{
    if (st != CCTX_OK) {
        fprintf(stderr, "count_ops: %s: %s\n", what, cctx_strerror(st));
        exit(1);
    }
}

/* The measured loop; a separate, never-inlined function so that the
 * script can attribute counts to it (callgrind's inclusive cost). */
__attribute__((noinline)) static void measured(const char *op, long n, cctx_context *base,
                                               cctx_local *local)
{
    if (strcmp(op, "set_reset_1") == 0 || strcmp(op, "set_reset_100") == 0) {
        for (long i = 0; i < n; i++) {
            cctx_token *t;
            check(cctx_var_set(vars[0], VAL(i + 1), &t), "set");
            check(cctx_var_reset(vars[0], t), "reset");
            cctx_token_release(t);
        }
    } else if (strcmp(op, "set_discard") == 0 || strcmp(op, "set_light_discard") == 0) {
        const bool light = op[4] == 'l';
        for (long i = 0; i < n; i++) {
            cctx_token *t;
            check(light ? cctx_var_set_light(vars[0], VAL(i + 1), &t)
                        : cctx_var_set(vars[0], VAL(i + 1), &t),
                  "set");
            cctx_token_release(t);
        }
    } else if (strcmp(op, "copy") == 0) {
        for (long i = 0; i < n; i++) {
            cctx_context *c;
            check(cctx_context_copy_current(&c), "copy");
            cctx_context_release(c);
        }
    } else if (strcmp(op, "enter_exit") == 0) {
        for (long i = 0; i < n; i++) {
            check(cctx_context_enter(base), "enter");
            check(cctx_context_exit(base), "exit");
        }
    } else if (strcmp(op, "local_set") == 0) {
        for (long i = 0; i < n; i++)
            check(cctx_local_set(local, VAL(i)), "local_set");
    } else if (strcmp(op, "get") == 0) {
        for (long i = 0; i < n; i++) {
            void *out;
            check(cctx_var_get(vars[0], &out), "get");
        }
    } else if (strncmp(op, "request", 7) == 0) {
        const int nb = request_vars;
        for (long i = 0; i < n; i++) {
            cctx_context *c;
            check(cctx_context_copy(base, &c), "copy");
            check(cctx_context_enter(c), "enter");
            check(cctx_var_set(vars[nb], VAL(i), NULL), "set");
            check(cctx_var_set(vars[i % nb], VAL(i + 1), NULL), "set");
            for (int k = 0; k < 4; k++) {
                void *out;
                check(cctx_var_get(vars[(i + 5 * k) % (nb + 1)], &out), "get");
            }
            check(cctx_context_exit(c), "exit");
            cctx_context_release(c);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: count_ops OP N\n");
        return 2;
    }
    const char *op = argv[1];
    long n = atol(argv[2]);
    for (int i = 0; i <= NVARS_MAX; i++) {
        char name[16];
        snprintf(name, sizeof name, "v%d", i);
        check(cctx_var_new(name, NULL, &vars[i]), "var_new");
    }
    int nvars = strcmp(op, "set_reset_100") == 0  ? 100
                : strcmp(op, "request") == 0      ? 20
                : strcmp(op, "request_2000") == 0 ? 2000
                                                  : 1;
    request_vars = nvars;
    cctx_context *base;
    check(cctx_context_new(&base), "context_new");
    for (int i = 0; i < nvars; i++)
        check(cctx_context_set(base, vars[i], VAL(i), NULL), "context_set");
    cctx_local *local;
    check(cctx_local_new(NULL, NULL, NULL, &local), "local_new");
    check(cctx_local_set(local, VAL(0)), "local_set");
    /* The thread's own current context holds the same variables. */
    for (int i = 0; i < nvars; i++)
        check(cctx_var_set(vars[i], VAL(i), NULL), "set");
    measured(op, n / 10 + 1, base, local); /* warm-up, outside the counted window */
    unsigned long l0 = cctx__locked_ops, a0 = allocs, v0 = cctx__var_count_writes;
    measured(op, n, base, local);
    printf("%s\t%.2f\t%.2f\t%.2f\n", op, (double)(cctx__locked_ops - l0) / (double)n,
           (double)(allocs - a0) / (double)n, (double)(cctx__var_count_writes - v0) / (double)n);
    cctx_local_release(local);
    cctx_context_release(base);
    for (int i = 0; i <= NVARS_MAX; i++)
        cctx_var_release(vars[i]);
    (void)cctx_thread_cleanup();
    return 0;
}
