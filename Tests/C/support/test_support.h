/*
 * test_support.h — shared helpers for ContextKit's C tests: reference-counted
 * test values whose live count tests can assert, and the scale factor that
 * sanitizer and valgrind runs use to shorten loops.
 */
#ifndef CCTX_TEST_SUPPORT_H
#define CCTX_TEST_SUPPORT_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "contextcore.h"
#include "testing.h"

/* A heap value with its own reference count; `id` identifies it. */
typedef struct tv_value {
    int refcnt;
    long id;
} tv_value;

/* Value ops that retain/release tv_value objects. */
extern const cctx_value_ops tv_ops;

/* A new value with one reference owned by the caller. */
tv_value *tv_new(long id);
/* Drop the caller's reference. */
void tv_drop(tv_value *v);
/* tv_value objects alive right now (all threads). */
long tv_live(void);
/* Total retain / release callback calls so far. */
long tv_retains(void);
long tv_releases(void);

/* CCTX_TEST_SCALE percent (default 100) applied to n, at least 1. */
long scaled(long n);

/* A small deterministic PRNG (xorshift64*), one state per caller. */
uint64_t rng_next(uint64_t *state);

/* Assert a cctx call returned CCTX_OK, printing cctx_strerror otherwise. */
#define assert_ok(expr) do { cctx_status st_ = (expr); \
    if (st_ != CCTX_OK) fail_msg("%s -> %s", #expr, cctx_strerror(st_)); } while (0)

#endif
