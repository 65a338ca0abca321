/* ssaproxy.h: the C library of ssaproxy (libssaproxy.so).
 *
 * Link with `cc prog.c $(ssaproxy c-flags)` (or `pkg-config --cflags --libs ssaproxy` with
 * PKG_CONFIG_PATH naming the installed package's c/ directory), or preload it into an
 * unmodified program with `ssaproxy run -- PROGRAM ARGS...`.  Either way the ordinary socket
 * calls (socket, setsockopt, getsockopt, connect, bind, listen, accept, accept4, shutdown,
 * close, getpeername, getsockname) give TLS from the ssaproxy daemon to sockets made with
 * IPPROTO_TLS, and leave every other socket alone.  docs/c-library.md describes it.
 */
#ifndef SSAPROXY_H
#define SSAPROXY_H

#include "in_tls.h"

#define SSAPROXY_DEFAULT_SOCKET "/run/ssaproxy/api.sock"
#define SSAPROXY_ENV_SOCKET     "SSAPROXY_SOCKET"
#define SSAPROXY_PROTOCOL       2

#ifdef __cplusplus
extern "C" {
#endif

/* The library's version string ("ssaproxy-c 2"); linking against it makes sure the library
 * is loaded even by a program that calls nothing else of it by name. */
const char *ssaproxy_version(void);

#ifdef __cplusplus
}
#endif

#endif
