#pragma once
#include <sys/types.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <microhttpd.h>

/* MHD_start_daemon is variadic, which Swift cannot call. This starts a daemon with the fixed option set Fleetkeep
   uses; cert/key are PEM text (both NULL for plain HTTP), thread_pool_size 0/1 means just the polling thread. */
static inline struct MHD_Daemon *fk_mhd_start_daemon(
    unsigned int flags, const struct sockaddr *bind_address,
    MHD_AcceptPolicyCallback accept_policy, void *accept_policy_cls,
    MHD_AccessHandlerCallback handler, void *handler_cls,
    MHD_RequestCompletedCallback completed, void *completed_cls,
    MHD_LogCallback logger, void *logger_cls,
    unsigned int thread_pool_size, unsigned int connection_limit, unsigned int connection_timeout,
    size_t connection_memory_limit, const char *cert_pem, const char *key_pem)
{
    if (cert_pem != NULL && key_pem != NULL) {
        return MHD_start_daemon(flags, 0, accept_policy, accept_policy_cls, handler, handler_cls,
            MHD_OPTION_SOCK_ADDR, bind_address,
            MHD_OPTION_NOTIFY_COMPLETED, completed, completed_cls,
            MHD_OPTION_EXTERNAL_LOGGER, logger, logger_cls,
            MHD_OPTION_THREAD_POOL_SIZE, thread_pool_size,
            MHD_OPTION_CONNECTION_LIMIT, connection_limit,
            MHD_OPTION_CONNECTION_TIMEOUT, connection_timeout,
            MHD_OPTION_CONNECTION_MEMORY_LIMIT, connection_memory_limit,
            MHD_OPTION_HTTPS_MEM_CERT, cert_pem,
            MHD_OPTION_HTTPS_MEM_KEY, key_pem,
            MHD_OPTION_END);
    }
    return MHD_start_daemon(flags, 0, accept_policy, accept_policy_cls, handler, handler_cls,
        MHD_OPTION_SOCK_ADDR, bind_address,
        MHD_OPTION_NOTIFY_COMPLETED, completed, completed_cls,
        MHD_OPTION_EXTERNAL_LOGGER, logger, logger_cls,
        MHD_OPTION_THREAD_POOL_SIZE, thread_pool_size,
        MHD_OPTION_CONNECTION_LIMIT, connection_limit,
        MHD_OPTION_CONNECTION_TIMEOUT, connection_timeout,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, connection_memory_limit,
        MHD_OPTION_END);
}

/* MHD_get_daemon_info is variadic. Returns 0 when the port is unknown. */
static inline uint16_t fk_mhd_bound_port(struct MHD_Daemon *daemon)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info == NULL ? 0 : info->port;
}

/* MHD_get_connection_info is variadic. NULL when unknown. */
static inline const struct sockaddr *fk_mhd_client_address(struct MHD_Connection *connection)
{
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    return info == NULL ? NULL : info->client_addr;
}

/* Formats a libmicrohttpd log message (printf format + va_list) into buf. */
static inline void fk_mhd_format_log(char *buf, size_t size, const char *fmt, va_list ap)
{
    vsnprintf(buf, size, fmt, ap);
}
