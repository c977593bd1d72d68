/*
 * shims.c — see CContextKitShims.h for why each function exists.
 *
 * The runtime declares
 *   bool swift_isUniquelyReferenced_nonNull_native(const HeapObject *);
 * with the C calling convention. The reference is weak so that a C-only
 * link of this target (none today) does not need the Swift runtime.
 */
#include "CContextKitShims.h"

/* swift_isUniquelyReferenced_nonNull_native is declared in the header,
 * for the inline copy. */

#if defined(__clang__)
#define CCTX_SHIM_SWIFTCALL __attribute__((swiftcall))
#else
#define CCTX_SHIM_SWIFTCALL
#endif

/* Both take one pointer and return an integer (JobFlags is a 32-bit flag
 * set): the same registers under the Swift and the C conventions. */
extern uint64_t swift_task_getJobTaskId(const void *job) CCTX_SHIM_SWIFTCALL __attribute__((weak));
extern uint32_t swift_task_getJobFlags(const void *job) CCTX_SHIM_SWIFTCALL __attribute__((weak));

/* JobFlags: Task_IsAsyncLetTask = 28 (swift/ABI/MetadataValues.h). */
#define CCTX_SHIM_JOB_FLAG_ASYNC_LET (UINT32_C(1) << 28)

bool cctx_shim_is_uniquely_referenced(const void *object)
{
    return cctx_shim_is_uniquely_referenced_inline(object);
}

uint64_t cctx_shim_task_id(const void *task)
{
    return swift_task_getJobTaskId(task);
}

bool cctx_shim_task_is_async_let(const void *task)
{
    return (swift_task_getJobFlags(task) & CCTX_SHIM_JOB_FLAG_ASYNC_LET) != 0;
}
