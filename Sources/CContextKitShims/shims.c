/*
 * shims.c — see CContextKitShims.h for why each function exists.
 *
 * The runtime declares
 *   bool swift_isUniquelyReferenced_nonNull_native(const HeapObject *);
 * with the C calling convention. The reference is weak so that a C-only
 * link of this target (none today) does not need the Swift runtime.
 */
#include "CContextKitShims.h"

extern bool swift_isUniquelyReferenced_nonNull_native(const void *object) __attribute__((weak));

bool cctx_shim_is_uniquely_referenced(const void *object)
{
    return swift_isUniquelyReferenced_nonNull_native(object);
}
