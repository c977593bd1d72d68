/*
 * contextvar_token.c — a ContextVar in C: set, read, set again with a Token,
 * reset to the old value; then Context.run on a copy.
 *
 *     cc contextvar_token.c $(pkg-config --cflags --libs contextcore)
 */
#include <contextcore.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The runtime owns values through these callbacks: here, malloc'd strings
 * with a reference count in front. */
typedef struct { int refs; char text[]; } rc_string;

/* Callbacks may run on any thread, so the count is atomic. */
static void rc_retain(void *p) { __atomic_add_fetch(&((rc_string *)p)->refs, 1, __ATOMIC_RELAXED); }
static void rc_release(void *p)
{
    if (__atomic_sub_fetch(&((rc_string *)p)->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(p);
}
static const cctx_value_ops rc_ops = { rc_retain, rc_release };

static rc_string *rc_new(const char *s)
{
    rc_string *r = malloc(sizeof *r + strlen(s) + 1);
    if (r == NULL)
        exit(EXIT_FAILURE);
    r->refs = 1;
    strcpy(r->text, s);
    return r;
}

static cctx_var *request_id;

static const char *current(void)
{
    void *v;
    cctx_status st = cctx_var_get(request_id, &v);
    return st == CCTX_OK ? ((rc_string *)v)->text : cctx_strerror(st);
}

#define CHECK(call) do { cctx_status st_ = (call); if (st_ != CCTX_OK) { \
    fprintf(stderr, "%s: %s\n", #call, cctx_strerror(st_)); return EXIT_FAILURE; } } while (0)

static void in_copy(void *arg)
{
    (void)arg;
    rc_string *v = rc_new("req-inside-run");
    if (cctx_var_set(request_id, v, NULL) == CCTX_OK)
        printf("  inside run:          request_id = %s\n", current());
    rc_release(v);
}

int main(void)
{
    puts("ContextVar (C): set, get, set again with a Token, reset");
    rc_string *fallback = rc_new("none");
    CHECK(cctx_var_new_with_default("request_id", &rc_ops, fallback, &request_id));
    rc_release(fallback); /* the variable holds its own reference */
    printf("  default:             request_id = %s\n", current());

    rc_string *first = rc_new("req-1"), *second = rc_new("req-2");
    CHECK(cctx_var_set(request_id, first, NULL));
    printf("  after set:           request_id = %s\n", current());

    cctx_token *token;
    CHECK(cctx_var_set(request_id, second, &token));
    void *old;
    printf("  set again:           request_id = %s (token remembers %s)\n", current(),
           cctx_token_old_value(token, &old) == CCTX_OK ? ((rc_string *)old)->text : "MISSING");
    CHECK(cctx_var_reset(request_id, token));
    printf("  after reset(token):  request_id = %s\n", current());
    printf("  reset again:         %s\n", cctx_strerror(cctx_var_reset(request_id, token)));
    cctx_token_release(token);
    rc_release(first);
    rc_release(second);

    puts("Context.run (C): a copy is changed, the original is not");
    cctx_context *copy;
    CHECK(cctx_context_copy_current(&copy));
    CHECK(cctx_context_run(copy, in_copy, NULL));
    void *in_copy_value;
    CHECK(cctx_context_lookup(copy, request_id, &in_copy_value));
    printf("  the copy holds:      request_id = %s\n", ((rc_string *)in_copy_value)->text);
    cctx_var_release_value(request_id, in_copy_value);
    printf("  the original holds:  request_id = %s\n", current());

    cctx_context_release(copy);
    cctx_var_release(request_id);
    cctx_thread_cleanup(); /* main: exit() runs no key destructors */
    return EXIT_SUCCESS;
}
