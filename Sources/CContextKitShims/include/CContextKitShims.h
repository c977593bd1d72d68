/*
 * CContextKitShims — the Swift runtime entry points the ContextKit facade
 * calls, each behind a one-line C function (as swift-nio keeps CNIOLinux).
 *
 * Why C: Swift code may not name a runtime symbol (`@_silgen_name` of a
 * runtime function warns that it will become an error); a C declaration is
 * the supported way to reach one. Each entry point here is one the
 * standard library's own inlinable code calls, so its name and signature
 * are part of the Swift ABI; TaskBindingTests fail if that ever changes.
 * Not part of ContextKit's public API.
 */
#ifndef CCONTEXTKIT_SHIMS_H
#define CCONTEXTKIT_SHIMS_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Whether the native Swift object `object` (non-NULL, borrowed) has exactly
 * one strong reference: the runtime's
 * `swift_isUniquelyReferenced_nonNull_native`, which the standard
 * library's inlinable `isKnownUniquelyReferenced` calls. ContextKit asks it
 * of a task object it retains: a running task holds a reference to itself,
 * so "unique" means the task has completed and nothing else refers to it.
 */
bool cctx_shim_is_uniquely_referenced(const void *object);

#ifdef __cplusplus
}
#endif

#endif
