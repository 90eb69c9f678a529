/* Throwaway certificates for the TLS tests (test_tls.c, echo_tls_e2e.c),
 * made at run time with the openssl command, so that no private key is
 * ever committed: in a fresh directory under /tmp, a CA (ca.pem), a second,
 * unrelated CA (other.pem), and a server certificate for localhost and
 * 127.0.0.1 signed by the first (srv.pem, srv.key). */
#ifndef WEFT_TESTS_TLS_CERTS_H
#define WEFT_TESTS_TLS_CERTS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Makes the directory (its name into dir) and the certificates in it.
 * Returns 0, or -1 if the directory or the openssl command failed. */
static inline int wt_certs_make(char dir[64]) {
  strcpy(dir, "/tmp/weft-tls-XXXXXX");
  if (!mkdtemp(dir))
    return -1;
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
    "set -e; cd %s; "
    "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext; "
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key "
    "-out ca.pem -days 1 -subj /CN=weft-test-ca 2>/dev/null; "
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key "
    "-out other.pem -days 1 -subj /CN=weft-other-ca 2>/dev/null; "
    "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key "
    "-out srv.csr -subj /CN=localhost 2>/dev/null; "
    "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem "
    "-days 1 -extfile ext 2>/dev/null",
    dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* Removes the directory and everything in it. 0 or -1. */
static inline int wt_certs_remove(const char *dir) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  return system(cmd) == 0 ? 0 : -1;
}

#endif
