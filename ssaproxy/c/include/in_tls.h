/* in_tls.h: the Secure Socket API's names and numbers, as ssaproxy's C library serves them.
 *
 * Both SSA generations compile against this header.  Where they disagree, 85 is TLS_HOSTNAME
 * (the 2020 header; the name the server's certificate must prove) unless the program defines
 * SSA_PAPER_NUMBERING before including this file, which gives the paper-era numbering
 * (TLS_REMOTE_HOSTNAME 85, TLS_HOSTNAME 86).  docs/api.md, "Compatibility with the two SSA
 * generations", says what each option does here.
 */
#ifndef SSAPROXY_IN_TLS_H
#define SSAPROXY_IN_TLS_H

#include <sys/socket.h>

/* Protocol and address family */
#define IPPROTO_TLS                        (715 % 255)  /* 205 */
#define AF_HOSTNAME                        43
#define PF_HOSTNAME                        AF_HOSTNAME

/* Options at level IPPROTO_TLS */
#define TLS_REMOTE_HOSTNAME                85
#ifdef SSA_PAPER_NUMBERING
#define TLS_HOSTNAME                       86
#else
#define TLS_HOSTNAME                       85
#endif
#define TLS_SERVER_NAME                    86  /* read only: the SNI name (ssaproxy) */
#define TLS_TRUSTED_PEER_CERTIFICATES      87
#define TLS_CERTIFICATE_CHAIN              88
#define TLS_PRIVATE_KEY                    89
#define TLS_ALPN                           90
#define TLS_SESSION_TTL                    91
#define TLS_DISABLE_CIPHER                 92
#define TLS_PEER_IDENTITY                  93
#define TLS_REQUEST_PEER_AUTH              94
#define TLS_PEER_CERTIFICATE_CHAIN         95
#define TLS_ID                             96
#define TLS_TRUSTED_CIPHERS                97
#define TLS_CHOSEN_CIPHER                  98
#define TLS_ERROR                          100
#define TLS_COMPRESSION                    101  /* not supported: ENOPROTOOPT */
#define TLS_REVOCATION_CHECKS              102
#define TLS_OCSP_STAPLED_CHECKS            103
#define TLS_OCSP_CHECKS                    104
#define TLS_CRL_CHECKS                     105
#define TLS_CACHED_REV_CHECKS              106
#define TLS_CACHE_REVOCATION               TLS_CACHED_REV_CHECKS
#define TLS_CONTEXT                        107
#define TLS_SESSION_REUSE                  108
#define TLS_RESUMED_SESSION                109
#define TLS_ENABLE_CIPHER                  110
#define TLS_VERSION_MIN                    111
#define TLS_VERSION_MAX                    112
#define TLS_VERSION_CONN                   113
#define TLS_CHOSEN_VERSION                 TLS_VERSION_CONN
#define TLS_SERVER_OCSP_STAPLING           122  /* not supported: ENOPROTOOPT */

/* ssaproxy's own options */
#define TLS_TRUSTED_PEER_CERTIFICATES_ONLY 120  /* replaces the trust store (admin may forbid) */
#define TLS_ALLOW_RAGGED_EOF               121  /* 1: a FIN without close_notify reads as EOF */

/* Values of the version options: TLS wire versions (not the 2020 header's 0..3).  1.0 and 1.1
 * are known names, and below any policy the daemon allows (EPERM). */
#define TLS_1_0                            0x0301
#define TLS_1_1                            0x0302
#define TLS_1_2                            0x0303
#define TLS_1_3                            0x0304
#ifndef TLS1_2_VERSION  /* OpenSSL's names for the same numbers, unless its headers gave them */
#define TLS1_2_VERSION                     TLS_1_2
#endif
#ifndef TLS1_3_VERSION
#define TLS1_3_VERSION                     TLS_1_3
#endif

/* STARTTLS on an ordinary connected TCP socket: setsockopt(fd, SOL_TCP, TCP_UPGRADE_TLS, &role) */
#define TCP_UPGRADE_TLS                    33
#ifndef SOL_TCP
#define SOL_TCP                            6  /* = IPPROTO_TCP */
#endif
#define TLS_UPGRADE_CLIENT                 1
#define TLS_UPGRADE_SERVER                 2

/* AF_HOSTNAME addresses: the daemon resolves the name and verifies it */
struct host_addr {
    unsigned char name[255];
};

struct sockaddr_host {
    sa_family_t sin_family;     /* AF_HOSTNAME */
    unsigned short sin_port;    /* network byte order, as in sockaddr_in */
    struct host_addr sin_addr;  /* NUL-terminated host name */
};

#endif
