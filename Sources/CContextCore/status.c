/*
 * status.c — names of the status codes (cctx_strerror).
 */
#include "internal.h"

const char *cctx_strerror(cctx_status status)
{
    switch (status) {
    case CCTX_OK:
        return "success";
    case CCTX_ENOMEM:
        return "out of memory";
    case CCTX_EINVAL:
        return "invalid argument (NULL, not a live ContextKit object, or value ops "
               "with a release callback but no retain)";
    case CCTX_NOT_FOUND:
        return "no value (LookupError)";
    case CCTX_TOKEN_USED:
        return "token has already been used once";
    case CCTX_TOKEN_WRONG_VAR:
        return "token was created by a different ContextVar";
    case CCTX_TOKEN_WRONG_CONTEXT:
        return "token was created in a different Context";
    case CCTX_ALREADY_ENTERED:
        return "cannot enter context: it is already entered";
    case CCTX_NOT_CURRENT:
        return "cannot exit context: it is not the current context";
    case CCTX_NOT_ENTERED:
        return "context is not claimed";
    case CCTX_TOO_MANY_WATCHERS:
        return "too many context watchers";
    }
    return "unknown ContextKit status";
}
