/*
 * test_binding.c — what a language binding needs from the C API: value
 * callbacks with a user pointer, a user pointer on variables, names as
 * pointer + length, reads without side effects, the binding header, and
 * the refusal of value ops that release without retaining.
 */
#include "test_support.h"

#include <string.h>

/* --------------------------------------------- release without retain */

static void plain_free(void *p) { free(p); }
static void plain_free_ex(void *ctx, void *p) { (void)ctx; free(p); }
static void count_retain(void *p) { (void)p; }
static void count_retain_ex(void *ctx, void *p) { (void)ctx; (void)p; }

/* `{ NULL, free }` for strdup'd strings freed a value once per store:
 * every constructor that takes ops refuses it, and nothing is created. */
static void test_ops_with_release_but_no_retain_are_refused(void **state)
{
    (void)state;
    const cctx_value_ops bad = { NULL, plain_free };
    const cctx_value_ops_ex bad_ex = { NULL, plain_free_ex, NULL };
    const long allocs = cctx__live_allocations();
    cctx_var *v = NULL;
    cctx_local *l = NULL;
    assert_int_equal(cctx_var_new("s", &bad, &v), CCTX_EINVAL);
    assert_int_equal(cctx_var_new_with_default("s", &bad, NULL, &v), CCTX_EINVAL);
    assert_int_equal(cctx_var_new_ex("s", &bad, false, NULL, 0, &v), CCTX_EINVAL);
    assert_int_equal(cctx_var_new_n("s", 1, &bad_ex, false, NULL, 0, NULL, &v), CCTX_EINVAL);
    assert_int_equal(cctx_local_new(&bad, NULL, NULL, &l), CCTX_EINVAL);
    assert_int_equal(cctx_local_new_ex(&bad_ex, NULL, NULL, &l), CCTX_EINVAL);
    assert_null(v);
    assert_null(l);
    assert_int_equal(cctx__live_allocations(), allocs);
    assert_non_null(strstr(cctx_strerror(CCTX_EINVAL), "release"));

    /* Retain alone (an observer) and both are fine. */
    const cctx_value_ops retain_only = { count_retain, NULL };
    const cctx_value_ops_ex retain_only_ex = { count_retain_ex, NULL, NULL };
    assert_ok(cctx_var_new("r", &retain_only, &v));
    cctx_var_release(v);
    assert_ok(cctx_var_new_n("r", 1, &retain_only_ex, false, NULL, 0, NULL, &v));
    cctx_var_release(v);
    assert_ok(cctx_local_new_ex(&retain_only_ex, NULL, NULL, &l));
    cctx_local_release(l);
}

/* --------------------------------------------- ops with a user pointer */

static void test_ops_ex_callbacks_receive_their_ctx(void **state)
{
    (void)state;
    const long calls = tv_ex_calls();
    tv_value *d = tv_new(1), *x = tv_new(2);
    cctx_var *v;
    assert_ok(cctx_var_new_n("ex", 2, &tv_ops_ex, true, d, 0, NULL, &v));
    assert_int_equal(d->refcnt, 2); /* the default, retained through ctx */
    cctx_token *tok;
    assert_ok(cctx_var_set(v, x, &tok));
    void *out;
    assert_ok(cctx_var_get(v, &out));
    assert_ptr_equal(out, x);
    cctx_context *cur = cctx_context_current();
    assert_ok(cctx_context_lookup(cur, v, &out)); /* a new reference */
    assert_int_equal(x->refcnt, 3);
    cctx_var_release_value(v, out);
    assert_ok(cctx_var_reset(v, tok));
    cctx_token_release(tok);
    assert_int_equal(x->refcnt, 1);

    cctx_local *l;
    assert_ok(cctx_local_new_ex(&tv_ops_ex, NULL, NULL, &l));
    assert_ok(cctx_local_set(l, x));
    assert_ok(cctx_local_set(l, d)); /* releases x through ctx */
    assert_int_equal(x->refcnt, 1);
    assert_ok(cctx_thread_cleanup()); /* the teardown releases d through ctx */
    assert_int_equal(d->refcnt, 2);
    cctx_local_release(l);
    cctx_var_release(v);
    assert_int_equal(d->refcnt, 1);
    tv_drop(d);
    tv_drop(x);
    assert_true(tv_ex_calls() - calls >= 10);
    assert_int_equal(tv_ex_wrong_ctx(), 0);
}

/* A local's final release reaches other threads' values through ctx. */
static cctx_local *ex_local;
static test_gate ex_stored = TEST_GATE_INIT, ex_released = TEST_GATE_INIT;

static void *ex_thread(void *p)
{
    T_CHECK(cctx_local_set(ex_local, p) == CCTX_OK);
    gate_open(&ex_stored);
    T_CHECK(gate_wait(&ex_released)); /* the local is gone: touch nothing */
    return NULL;
}

static void test_ops_ex_final_release_of_a_local_uses_ctx_on_other_threads(void **state)
{
    (void)state;
    tv_value *x = tv_new(3);
    const long failures = thread_failures();
    assert_ok(cctx_local_new_ex(&tv_ops_ex, NULL, NULL, &ex_local));
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, ex_thread, x), 0);
    assert_true(gate_wait(&ex_stored));
    assert_int_equal(x->refcnt, 2);
    cctx_local_release(ex_local); /* the last reference, with the thread alive */
    assert_int_equal(x->refcnt, 1);
    gate_open(&ex_released);
    pthread_join(th, NULL);
    assert_int_equal(tv_ex_wrong_ctx(), 0);
    assert_int_equal(thread_failures(), failures);
    tv_drop(x);
}

/* --------------------------------------------- user pointer on variables */

static cctx_var *ud_var;
static char owner_a, owner_b;

static void *ud_reader(void *p)
{
    (void)p;
    void *seen = cctx_var_userdata(ud_var);
    T_CHECK(seen == &owner_a || seen == &owner_b);
    return NULL;
}

static void test_variable_user_data_maps_a_var_back_to_its_owner(void **state)
{
    (void)state;
    assert_ok(cctx_var_new_n("ud", 2, NULL, false, NULL, 0, &owner_a, &ud_var));
    assert_ptr_equal(cctx_var_userdata(ud_var), &owner_a);

    /* As a binding finds it: iterating a context gives the cctx_var only. */
    assert_ok(cctx_var_set(ud_var, (void *)"x", NULL));
    cctx_iter *it;
    assert_ok(cctx_iter_new(cctx_context_current(), &it));
    cctx_var *found;
    assert_true(cctx_iter_next(it, &found, NULL));
    assert_ptr_equal(cctx_var_userdata(found), &owner_a);
    cctx_iter_free(it);

    const long failures = thread_failures();
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, ud_reader, NULL), 0);
    assert_ok(cctx_var_set_userdata(ud_var, &owner_b));
    pthread_join(th, NULL);
    assert_int_equal(thread_failures(), failures);
    assert_ptr_equal(cctx_var_userdata(ud_var), &owner_b);

    /* Variables made the old way start with none. */
    cctx_var *plain;
    assert_ok(cctx_var_new("plain", NULL, &plain));
    assert_null(cctx_var_userdata(plain));
    assert_int_equal(cctx_var_set_userdata(NULL, &owner_a), CCTX_EINVAL);
    assert_null(cctx_var_userdata(NULL));
    cctx_var_release(plain);
    cctx_var_release(ud_var);
}

/* --------------------------------------------- names with a length */

static void test_names_with_a_length_may_hold_nul_bytes(void **state)
{
    (void)state;
    static const char raw[] = { 'a', '\0', 'b', 'c' };
    cctx_var *v, *w, *e;
    assert_ok(cctx_var_new_n(raw, sizeof raw, NULL, false, NULL, 0, NULL, &v));
    size_t len = 0;
    const char *name = cctx_var_name_n(v, &len);
    assert_int_equal(len, 4);
    assert_memory_equal(name, raw, 4);
    assert_int_equal(name[4], '\0');
    assert_string_equal(cctx_var_name(v), "a"); /* the C string view */

    /* A prefix of a longer buffer; the bytes after it are not read. */
    assert_ok(cctx_var_new_n("request_id_and_more", 10, NULL, false, NULL, 0, NULL, &w));
    assert_string_equal(cctx_var_name_n(w, &len), "request_id");
    assert_int_equal(len, 10);

    /* Empty names, also with a NULL pointer. */
    assert_ok(cctx_var_new_n(NULL, 0, NULL, true, (void *)"d", 0, NULL, &e));
    assert_string_equal(cctx_var_name_n(e, &len), "");
    assert_int_equal(len, 0);
    void *out;
    assert_ok(cctx_var_get(e, &out));
    assert_string_equal(out, "d");

    cctx_var *bad = NULL;
    assert_int_equal(cctx_var_new_n(NULL, 3, NULL, false, NULL, 0, NULL, &bad), CCTX_EINVAL);
    assert_int_equal(cctx_var_new_n("x", 1, NULL, false, NULL, 7u << 4, NULL, &bad), CCTX_EINVAL);
    assert_int_equal(cctx_var_new_n("x", 1, NULL, false, NULL, 0, NULL, NULL), CCTX_EINVAL);
    assert_null(bad);
    assert_null(cctx_var_name_n(NULL, &len));
    assert_int_equal(len, 0);

    /* Old names read the same through both. */
    cctx_var *old;
    assert_ok(cctx_var_new("plain", NULL, &old));
    assert_string_equal(cctx_var_name_n(old, NULL), "plain");
    assert_string_equal(cctx_var_name_n(old, &len), "plain");
    assert_int_equal(len, 5);
    cctx_var_release(old);
    cctx_var_release(v);
    cctx_var_release(w);
    cctx_var_release(e);
}

/* --------------------------------------------- peeks */

static void *peek_thread(void *p)
{
    cctx_local *l = p;
    const long allocs = cctx__live_allocations();
    /* A thread with no state: peeks create nothing. */
    T_CHECK(cctx_context_current_peek() == NULL);
    void *out;
    T_CHECK(cctx_local_peek(l, &out) == CCTX_NOT_FOUND);
    T_CHECK(cctx_thread_contexts(NULL, 0) == 0);
    T_CHECK(cctx__live_allocations() == allocs);
    /* Once it has state, the peek sees the same current context. */
    cctx_context *cur = cctx_context_current();
    T_CHECK(cur != NULL && cctx_context_current_peek() == cur);
    T_CHECK(cctx_local_peek(l, &out) == CCTX_NOT_FOUND);
    return NULL;
}

static int init_runs;
static cctx_status counting_init(void *userdata, void **out)
{
    (void)userdata;
    init_runs++;
    *out = tv_new(100 + init_runs);
    return CCTX_OK;
}

static void test_peeks_have_no_side_effects(void **state)
{
    (void)state;
    cctx_local *l;
    init_runs = 0;
    assert_ok(cctx_local_new(&tv_ops, counting_init, NULL, &l));
    const long failures = thread_failures();
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, peek_thread, l), 0);
    pthread_join(th, NULL);
    assert_int_equal(thread_failures(), failures);
    assert_int_equal(init_runs, 0); /* the peeks never ran it */

    /* On this thread: the value once there is one, never the initialiser. */
    void *out = NULL, *peeked = NULL;
    assert_null(cctx_context_current_peek());
    assert_int_equal(cctx_local_peek(l, &peeked), CCTX_NOT_FOUND);
    assert_ok(cctx_local_get(l, &out));
    assert_int_equal(init_runs, 1);
    assert_ok(cctx_local_peek(l, &peeked));
    assert_ptr_equal(peeked, out);
    assert_non_null(cctx_context_current_peek());
    assert_ptr_equal(cctx_context_current_peek(), cctx_context_current());
    assert_ok(cctx_local_delete(l));
    assert_int_equal(cctx_local_peek(l, &peeked), CCTX_NOT_FOUND);
    assert_int_equal(init_runs, 1);
    assert_ok(cctx_local_set(l, NULL)); /* NULL is a value */
    peeked = &peeked;
    assert_ok(cctx_local_peek(l, &peeked));
    assert_null(peeked);
    assert_int_equal(cctx_local_peek(NULL, &peeked), CCTX_EINVAL);
    assert_int_equal(cctx_local_peek(l, NULL), CCTX_EINVAL);
    cctx_local_release(l);
}

/* --------------------------------------------- the binding header */

/* The hooks only a binding needs are declared in contextcore_binding.h
 * (this file includes it through the toolbox) and behave as before. */
static void test_binding_header_declares_the_binding_hooks(void **state)
{
    (void)state;
    cctx_context *c;
    cctx_var *v;
    assert_ok(cctx_context_new(&c));
    assert_ok(cctx_var_new("b", NULL, &v));
    assert_ok(cctx_context_claim(c));
    assert_int_equal(cctx_context_claim(c), CCTX_ALREADY_ENTERED);
    assert_ok(cctx_context_set(c, v, (void *)"claimed", NULL));
    void *out;
    assert_ok(cctx_context_get(c, v, &out)); /* borrowed, for the claimer */
    assert_string_equal(out, "claimed");
    cctx_notify_watchers(CCTX_EVENT_ENTERED, c);
    assert_ok(cctx_context_unclaim(c));
    assert_int_equal(cctx_context_unclaim(c), CCTX_NOT_ENTERED);
    cctx_context_release(c);
    cctx_var_release(v);
}

/* ------------------------------------------ guarded borrowed reads */

/* cctx_context_peek hands out the value borrowed, with no retain or
 * release callback, from the writer's thread and from others; the
 * variable is found through the hash given, never read, so a wrong hash,
 * NULL or a variable the context lacks are all "not found"; errors leave
 * nothing held (the thread's read depth is back to zero: a flush at the
 * end would stall otherwise). */
struct peek_other {
    cctx_context *ctx;
    cctx_var *var;
    void *seen;
    long retains;
};

static void *peek_from_other_thread(void *p)
{
    struct peek_other *o = p;
    cctx_read_guard g;
    long before = tv_retains();
    if (cctx_context_peek(o->ctx, o->var, cctx_var_hash(o->var), &g, &o->seen) == CCTX_OK)
        cctx_context_peek_end(&g);
    o->retains = tv_retains() - before;
    return NULL;
}

static void test_peek_reads_a_borrowed_value_without_callbacks(void **state)
{
    (void)state;
    cctx_context *c;
    cctx_var *v, *missing;
    assert_ok(cctx_context_new(&c));
    assert_ok(cctx_var_new("peeked", &tv_ops, &v));
    assert_ok(cctx_var_new("missing", &tv_ops, &missing));
    assert_int_equal(cctx_var_hash(v), cctx__var_hash(v));
    assert_int_equal(cctx_var_hash(NULL), 0);
    tv_value *val = tv_new(41);
    assert_ok(cctx_context_set(c, v, val, NULL));
    tv_drop(val);

    long retains = tv_retains(), releases = tv_releases();
    cctx_read_guard g;
    void *out = NULL;
    assert_ok(cctx_context_peek(c, v, cctx_var_hash(v), &g, &out));
    assert_ptr_equal(out, val);
    assert_int_equal(((tv_value *)out)->id, 41);
    cctx_context_peek_end(&g);
    assert_int_equal(tv_retains(), retains);
    assert_int_equal(tv_releases(), releases);

    /* Not found: no such binding, a wrong hash, no variable; nothing held. */
    out = (void *)0x1;
    assert_int_equal(cctx_context_peek(c, missing, cctx_var_hash(missing), &g, &out),
                     CCTX_NOT_FOUND);
    assert_int_equal(cctx_context_peek(c, v, cctx_var_hash(v) ^ 0x5a5a5a5au, &g, &out),
                     CCTX_NOT_FOUND);
    assert_int_equal(cctx_context_peek(c, NULL, 0, &g, &out), CCTX_NOT_FOUND);
    assert_ptr_equal(out, (void *)0x1);
    /* Errors. */
    assert_int_equal(cctx_context_peek(NULL, v, cctx_var_hash(v), &g, &out), CCTX_EINVAL);
    assert_int_equal(cctx_context_peek(c, v, cctx_var_hash(v), NULL, &out), CCTX_EINVAL);
    assert_int_equal(cctx_context_peek(c, v, cctx_var_hash(v), &g, NULL), CCTX_EINVAL);
    cctx_context_peek_end(NULL); /* ignored */

    /* From the thread that entered it (an unguarded read inside), and
     * nested inside another peek. */
    assert_ok(cctx_context_enter(c));
    cctx_read_guard outer, inner;
    void *a, *b;
    assert_ok(cctx_context_peek(c, v, cctx_var_hash(v), &outer, &a));
    assert_ok(cctx_context_peek(c, v, cctx_var_hash(v), &inner, &b));
    assert_ptr_equal(a, val);
    assert_ptr_equal(b, val);
    cctx_context_peek_end(&inner);
    cctx_context_peek_end(&outer);

    /* From another thread while this one has it entered. */
    struct peek_other o = { c, v, NULL, -1 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, peek_from_other_thread, &o), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_ptr_equal(o.seen, val);
    assert_int_equal(o.retains, 0);
    assert_ok(cctx_context_exit(c));

    assert_int_equal(tv_retains(), retains);
    assert_int_equal(tv_releases(), releases);
    cctx_context_release(c);
    cctx_var_release(v);
    cctx_var_release(missing);
}

/* A value that a peek on another thread holds is not released, even after
 * the writer has replaced it (in place if it could, so the writer must see
 * the peek's hazard and copy the path instead) and released the context:
 * only peek_end lets it go. */
struct peek_hold {
    cctx_context *ctx;
    cctx_var *var;
    test_gate held, replaced;
    long id_after;
};

static void *peek_and_hold(void *p)
{
    struct peek_hold *h = p;
    cctx_read_guard g;
    void *out;
    T_CHECK(cctx_context_peek(h->ctx, h->var, cctx_var_hash(h->var), &g, &out) == CCTX_OK);
    gate_open(&h->held);
    T_CHECK(gate_wait(&h->replaced));
    h->id_after = ((tv_value *)out)->id; /* still alive: ASan would say */
    cctx_context_peek_end(&g);
    return NULL;
}

static void test_peek_keeps_the_value_alive_until_its_end(void **state)
{
    (void)state;
    struct peek_hold h = { .held = TEST_GATE_INIT, .replaced = TEST_GATE_INIT, .id_after = -1 };
    assert_ok(cctx_context_new(&h.ctx));
    assert_ok(cctx_var_new("held", &tv_ops, &h.var));
    tv_value *first = tv_new(1);
    long live = tv_live();
    assert_ok(cctx_context_enter(h.ctx));
    assert_ok(cctx_var_set(h.var, first, NULL));
    tv_drop(first); /* the context's reference is the only one */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, peek_and_hold, &h), 0);
    assert_true(gate_wait(&h.held));
    for (long i = 2; i < 200; i++) { /* enough to make the writer scan */
        tv_value *next = tv_new(i);
        assert_ok(cctx_var_set(h.var, next, NULL));
        tv_drop(next);
    }
    assert_ok(cctx_context_exit(h.ctx));
    cctx_context_release(h.ctx);
    /* (No cctx_reclaim here: it would wait for the peek's hazard.) */
    assert_int_equal(tv_live(), live); /* `first` still alive: the peek holds it */
    gate_open(&h.replaced);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(thread_failures(), 0);
    assert_int_equal(h.id_after, 1);
    cctx_reclaim();
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(tv_live(), live - 1);
    cctx_var_release(h.var);
}

/* ------------------------------- deferred release and read sections */

/* cctx_context_release_deferred drops its reference only once the read
 * sections open at the call have closed, and before it returns: a reader
 * on another thread that opened a section before the deferral still finds
 * the context (and its value) alive after every other reference is gone,
 * while the deferring thread waits; once the reader closes its section the
 * release runs and the call returns. The value's release callback uses the
 * library (tv_hook_uses_library: a read, a copy and a set). */
struct section_hold {
    cctx_context *ctx;
    cctx_var *var;
    test_gate opened, checked, finish;
    long id_inside;
    long live_after_release; /* tv_live() as the deferred release returned */
};

static void *read_in_a_section(void *p)
{
    struct section_hold *h = p;
    cctx_read_section section;
    cctx_read_section_begin(&section);
    gate_open(&h->opened);
    T_CHECK(gate_wait(&h->checked));
    /* Every reference but the deferred one is gone: the section holds it. */
    void *out = NULL;
    T_CHECK(cctx_context_lookup(h->ctx, h->var, &out) == CCTX_OK);
    h->id_inside = out != NULL ? ((tv_value *)out)->id : -1;
    if (out != NULL)
        tv_drop(out);
    cctx_read_section_end(&section);
    return NULL;
}

static void *release_deferred_thread(void *p)
{
    struct section_hold *h = p;
    cctx_context_release_deferred(h->ctx); /* waits for the reader's section */
    h->live_after_release = tv_live();
    /* Still alive (its exit would flush its deferred frees): the release
     * must not have waited for that. */
    T_CHECK(gate_wait(&h->finish));
    return NULL;
}

static void test_release_deferred_waits_for_sections_open_at_the_call(void **state)
{
    (void)state;
    struct section_hold h = { .opened = TEST_GATE_INIT, .checked = TEST_GATE_INIT, .finish = TEST_GATE_INIT,
                              .id_inside = -1, .live_after_release = -1 };
    tv_reentry reentry = { 0 };
    assert_ok(cctx_var_new("deferred", &tv_ops, &h.var));
    assert_ok(cctx_var_new("probe", &tv_ops, &reentry.probe));
    assert_ok(cctx_context_new(&h.ctx));
    const long live = tv_live();
    tv_value *value = tv_new_hooked(7, tv_hook_uses_library, &reentry);
    assert_ok(cctx_context_set(h.ctx, h.var, value, NULL));
    tv_drop(value); /* the context's reference is the only one */

    pthread_t reader, releaser;
    assert_int_equal(pthread_create(&reader, NULL, read_in_a_section, &h), 0);
    assert_true(gate_wait(&h.opened));
    cctx_context_retain(h.ctx);
    assert_int_equal(pthread_create(&releaser, NULL, release_deferred_thread, &h), 0);
    cctx_context_release(h.ctx); /* the creator's: only the deferred one is left */
    /* Whether the releaser has deferred yet or waits: the section holds it. */
    assert_int_equal(tv_live(), live + 1);
    gate_open(&h.checked);
    assert_int_equal(pthread_join(reader, NULL), 0);
    /* Released before cctx_context_release_deferred returned, with its
     * thread still running. */
    gate_open(&h.finish);
    assert_int_equal(pthread_join(releaser, NULL), 0);
    assert_int_equal(thread_failures(), 0);
    assert_int_equal(h.id_inside, 7);
    assert_int_equal(h.live_after_release, live);
    assert_int_equal(tv_live(), live);
    assert_int_equal(reentry.runs, 1);
    cctx_context_release_deferred(NULL); /* ignored */
    cctx_var_release(h.var);
    cctx_var_release(reentry.probe);
}

/* With no read section open anywhere, the deferred release is not
 * deferred at all: the value goes before cctx_context_release_deferred
 * returns, its release callback using the library. */
static void test_release_deferred_with_no_section_open_releases_at_once(void **state)
{
    (void)state;
    tv_reentry reentry = { 0 };
    cctx_var *var;
    cctx_context *ctx;
    assert_ok(cctx_var_new("at_once", &tv_ops, &var));
    assert_ok(cctx_var_new("probe", &tv_ops, &reentry.probe));
    assert_ok(cctx_context_new(&ctx));
    const long live = tv_live();
    tv_value *value = tv_new_hooked(9, tv_hook_uses_library, &reentry);
    assert_ok(cctx_context_set(ctx, var, value, NULL));
    tv_drop(value);
    cctx_context_release_deferred(ctx); /* the only reference */
    assert_int_equal(tv_live(), live);
    assert_int_equal(reentry.runs, 1);
    cctx_var_release(var);
    cctx_var_release(reentry.probe);
}

/* Sections nest on one thread, also with peeks inside, and a deferral made
 * inside one is freed after it closes. */
static void test_read_sections_nest_and_defer_inside(void **state)
{
    (void)state;
    cctx_var *var;
    cctx_context *ctx;
    assert_ok(cctx_var_new("nested", &tv_ops, &var));
    assert_ok(cctx_context_new(&ctx));
    const long live = tv_live();
    tv_value *value = tv_new(3);
    assert_ok(cctx_context_set(ctx, var, value, NULL));
    tv_drop(value);
    cctx_read_section outer, inner;
    cctx_read_section_begin(&outer);
    cctx_read_section_begin(&inner);
    cctx_read_guard g;
    void *out;
    assert_ok(cctx_context_peek(ctx, var, cctx_var_hash(var), &g, &out));
    assert_int_equal(((tv_value *)out)->id, 3);
    cctx_context_peek_end(&g);
    cctx_read_section_end(&inner);
    cctx_context_release_deferred(ctx); /* the only reference */
    assert_int_equal(tv_live(), live + 1);
    cctx_read_section_end(&outer);
    cctx_reclaim();
    assert_int_equal(tv_live(), live);
    cctx_var_release(var);
}

/* ------------------------------------- reads with no status to check */

/* cctx_var_value is cctx_var_get without defaults, status or out-parameter:
 * NULL for "no value". Checked against get after every kind of change of
 * the thread's current mapping, with more variables than the lookup cache
 * has entries (so that they share entries and evict each other). */
enum { VV_VARS = 40 };

static void expect_var_value_matches_get(cctx_var *const *vars, int n)
{
    for (int i = 0; i < n; i++) {
        void *got = (void *)0x1;
        cctx_status st = cctx_var_get(vars[i], &got);
        void *value = cctx_var_value(vars[i]);
        if (st == CCTX_OK)
            assert_ptr_equal(value, got);
        else
            assert_null(value);
        /* The inlined hit path answers the same, hit or miss. */
        assert_ptr_equal(cctx_var_value_inline(vars[i], cctx_var_hash(vars[i])), value);
    }
}

/* cctx_var_value_inline (contextcore_inline.h) is cctx_var_value with its
 * hit path in the caller: the same answers with no thread state yet, on a
 * hit, on a miss (which fills the cache, so the next read hits), with a
 * wrong hash (only a miss), and after the thread's state is torn down. */
static void *inline_read_thread(void *p)
{
    cctx_var *var = p;
    /* A new thread has no state: NULL, nothing created. */
    if (cctx_var_value_inline(var, cctx_var_hash(var)) != NULL || cctx_context_current_peek() != NULL)
        return (void *)"no state";
    cctx_token *t;
    if (cctx_var_set(var, (void *)"v", &t) != CCTX_OK)
        return (void *)"set";
    /* The set changed the mapping: the first read misses, is answered by
     * the map and fills the entry (so the get count it took must be
     * back at zero); the second hits that entry. */
    cctx_thread_lookup *lookup = (cctx_thread_lookup *)(void *)cctx_tls_state;
    const cctx_lookup_entry *entry = &lookup->cache[cctx_var_hash(var) & (CCTX_LOOKUP_CACHE_SIZE - 1)];
    for (int i = 0; i < 2; i++) {
        if (cctx_var_value_inline(var, cctx_var_hash(var)) != (void *)"v")
            return (void *)"read";
        if (lookup->in_get != 0)
            return (void *)"get count left after a read";
        if (entry->var != var || entry->version != lookup->version)
            return (void *)"entry not filled";
    }
    /* A wrong hash looks in another entry: a miss, answered by the map. */
    if (cctx_var_value_inline(var, cctx_var_hash(var) + 1) != (void *)"v")
        return (void *)"wrong hash";
    if (lookup->in_get != 0)
        return (void *)"get count left after a miss";
    if (cctx_var_reset(var, t) != CCTX_OK)
        return (void *)"reset";
    cctx_token_release(t);
    if (cctx_var_value_inline(var, cctx_var_hash(var)) != NULL)
        return (void *)"after reset";
    if (cctx_thread_cleanup() != CCTX_OK)
        return (void *)"cleanup";
    /* Torn down: no state again. */
    if (cctx_var_value_inline(var, cctx_var_hash(var)) != NULL)
        return (void *)"after cleanup";
    return NULL;
}

static void test_var_value_inline_reads_as_var_value(void **state)
{
    (void)state;
    cctx_var *var;
    assert_ok(cctx_var_new("inline", NULL, &var));
    pthread_t t;
    void *failure = (void *)"not joined";
    assert_int_equal(pthread_create(&t, NULL, inline_read_thread, var), 0);
    assert_int_equal(pthread_join(t, &failure), 0);
    if (failure != NULL)
        fail_msg("cctx_var_value_inline: %s", (const char *)failure);
    cctx_var_release(var);
}

static void test_var_value_reads_as_get_without_the_default(void **state)
{
    (void)state;
    cctx_var *vars[VV_VARS];
    for (int i = 0; i < VV_VARS; i++)
        assert_ok(cctx_var_new("vv", NULL, &vars[i]));
    cctx_var *with_default;
    assert_ok(cctx_var_new_with_default("d", NULL, (void *)"default", &with_default));

    /* No state yet: NULL, and nothing created. */
    assert_null(cctx_context_current_peek());
    assert_null(cctx_var_value(vars[0]));
    assert_null(cctx_var_value(with_default)); /* the default is not used */
    assert_null(cctx_context_current_peek());

    /* Bad handles: NULL, nothing touched. */
    uint64_t fake[16];
    memset(fake, 0x5a, sizeof fake);
    assert_null(cctx_var_value(NULL));
    assert_null(cctx_var_value((cctx_var *)fake));

    cctx_token *tokens[VV_VARS];
    for (int i = 0; i < VV_VARS; i++) {
        assert_ok(cctx_var_set(vars[i], (void *)(intptr_t)(i + 1), &tokens[i]));
        /* Read everything after each set: a stale entry would show here. */
        expect_var_value_matches_get(vars, VV_VARS);
        assert_ptr_equal(cctx_var_value(vars[i]), (void *)(intptr_t)(i + 1));
    }
    /* A set of a variable read a moment ago replaces the cached value. */
    for (int i = 0; i < VV_VARS; i++) {
        assert_ptr_equal(cctx_var_value(vars[i]), (void *)(intptr_t)(i + 1));
        cctx_token *t;
        assert_ok(cctx_var_set(vars[i], (void *)(intptr_t)(1000 + i), &t));
        assert_ptr_equal(cctx_var_value(vars[i]), (void *)(intptr_t)(1000 + i));
        assert_ok(cctx_var_reset(vars[i], t));
        assert_ptr_equal(cctx_var_value(vars[i]), (void *)(intptr_t)(i + 1));
        cctx_token_release(t);
    }

    /* Entering and leaving a context switches what every read sees. */
    cctx_context *other;
    assert_ok(cctx_context_new(&other));
    assert_ok(cctx_context_set(other, vars[3], (void *)"other", NULL));
    expect_var_value_matches_get(vars, VV_VARS);
    assert_ok(cctx_context_enter(other));
    assert_ptr_equal(cctx_var_value(vars[3]), (void *)"other");
    assert_null(cctx_var_value(vars[4]));
    expect_var_value_matches_get(vars, VV_VARS);
    assert_ok(cctx_context_exit(other));
    assert_ptr_equal(cctx_var_value(vars[3]), (void *)(intptr_t)4);
    expect_var_value_matches_get(vars, VV_VARS);
    cctx_context_release(other);

    /* NULL is a value for get; cctx_var_value cannot tell it from none. */
    cctx_token *null_token;
    assert_ok(cctx_var_set(vars[0], NULL, &null_token));
    void *got = (void *)0x1;
    assert_ok(cctx_var_get(vars[0], &got));
    assert_null(got);
    assert_null(cctx_var_value(vars[0]));
    assert_ok(cctx_var_reset(vars[0], null_token));
    cctx_token_release(null_token);

    /* Resets back to "no value". */
    for (int i = VV_VARS - 1; i >= 0; i--) {
        assert_ok(cctx_var_reset(vars[i], tokens[i]));
        cctx_token_release(tokens[i]);
        assert_null(cctx_var_value(vars[i]));
        expect_var_value_matches_get(vars, VV_VARS);
    }
    for (int i = 0; i < VV_VARS; i++)
        cctx_var_release(vars[i]);
    cctx_var_release(with_default);
}

static cctx_status tv_init(void *userdata, void **out)
{
    (void)userdata;
    *out = tv_new(7);
    return CCTX_OK;
}

/* More locals than a chunk of slots holds (64), so that some live past the
 * thread state's shortcut to chunk 0. */
enum { LV_LOCALS = 150 };

static void test_local_value_reads_as_get_without_the_initialiser(void **state)
{
    (void)state;
    cctx_local *init_local;
    assert_ok(cctx_local_new(&tv_ops, tv_init, NULL, &init_local));

    /* No state yet: NULL, no initialiser, no state made. */
    assert_null(cctx_context_current_peek());
    assert_null(cctx_local_value(init_local));
    assert_null(cctx_context_current_peek());
    assert_int_equal(tv_live(), tv_live_at_setup());

    uint64_t fake[16];
    memset(fake, 0x5a, sizeof fake);
    assert_null(cctx_local_value(NULL));
    assert_null(cctx_local_value((cctx_local *)fake));

    /* After get ran the initialiser: the same borrowed value. */
    void *out;
    assert_ok(cctx_local_get(init_local, &out));
    assert_ptr_equal(cctx_local_value(init_local), out);
    assert_int_equal(((tv_value *)out)->id, 7);
    /* Deleted: NULL again, and the initialiser did not run. */
    assert_ok(cctx_local_delete(init_local));
    assert_null(cctx_local_value(init_local));
    assert_int_equal(tv_live(), tv_live_at_setup());
    /* NULL is a value for get; cctx_local_value cannot tell it from none. */
    assert_ok(cctx_local_set(init_local, NULL));
    out = (void *)0x1;
    assert_ok(cctx_local_get(init_local, &out));
    assert_null(out);
    assert_null(cctx_local_value(init_local));

    cctx_local *locals[LV_LOCALS];
    for (int i = 0; i < LV_LOCALS; i++)
        assert_ok(cctx_local_new(&tv_ops, NULL, NULL, &locals[i]));
    for (int i = 0; i < LV_LOCALS; i++) {
        assert_null(cctx_local_value(locals[i]));
        tv_value *v = tv_new(i);
        assert_ok(cctx_local_set(locals[i], v));
        tv_drop(v);
    }
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < LV_LOCALS; i++) {
            tv_value *v = cctx_local_value(locals[i]);
            assert_non_null(v);
            assert_int_equal(v->id, round * 1000 + i);
            assert_ok(cctx_local_get(locals[i], &out));
            assert_ptr_equal(out, v);
            tv_value *next = tv_new(1000 + i);
            assert_ok(cctx_local_set(locals[i], next)); /* releases v */
            tv_drop(next);
            assert_ptr_equal(cctx_local_value(locals[i]), next);
        }
    }

    /* A new thread state (after cleanup) starts with no values at all. */
    assert_ok(cctx_thread_cleanup());
    assert_int_equal(tv_live(), tv_live_at_setup());
    for (int i = 0; i < LV_LOCALS; i++)
        assert_null(cctx_local_value(locals[i]));
    tv_value *again = tv_new(42);
    assert_ok(cctx_local_set(locals[LV_LOCALS - 1], again));
    assert_ok(cctx_local_set(locals[0], again));
    tv_drop(again);
    assert_ptr_equal(cctx_local_value(locals[LV_LOCALS - 1]), again);
    assert_ptr_equal(cctx_local_value(locals[0]), again);

    for (int i = 0; i < LV_LOCALS; i++)
        cctx_local_release(locals[i]);
    cctx_local_release(init_local);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, nothing_left_setup, nothing_left_teardown)
    const struct CMUnitTest tests[] = {
        T(test_ops_with_release_but_no_retain_are_refused),
        T(test_ops_ex_callbacks_receive_their_ctx),
        T(test_ops_ex_final_release_of_a_local_uses_ctx_on_other_threads),
        T(test_variable_user_data_maps_a_var_back_to_its_owner),
        T(test_names_with_a_length_may_hold_nul_bytes),
        T(test_peeks_have_no_side_effects),
        T(test_binding_header_declares_the_binding_hooks),
        T(test_peek_reads_a_borrowed_value_without_callbacks),
        T(test_peek_keeps_the_value_alive_until_its_end),
        T(test_release_deferred_waits_for_sections_open_at_the_call),
        T(test_release_deferred_with_no_section_open_releases_at_once),
        T(test_read_sections_nest_and_defer_inside),
        T(test_var_value_reads_as_get_without_the_default),
        T(test_var_value_inline_reads_as_var_value),
        T(test_local_value_reads_as_get_without_the_initialiser),
    };
#undef T
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cctx_thread_cleanup();
    return failed;
}
