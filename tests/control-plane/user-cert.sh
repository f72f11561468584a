#!/usr/bin/env bash
# Issues a client certificate signed by the control plane's CA, which the API server trusts
# for authentication: CN is the user name, each O a group. Tests use it for a second,
# non-admin identity that RBAC can deny.
#
#   user-cert.sh PKI_DIR NAME SUBJECT [EXTENSIONS]
#   user-cert.sh "$AGENT_OPERATOR_TEST_PKI" alice "/CN=alice/O=test-users"
#
# Writes PKI_DIR/NAME.crt and PKI_DIR/NAME.key. EXTENSIONS (printf %b text) defaults to a
# client-auth certificate.
set -euo pipefail
[[ $# -ge 3 ]] || { echo "usage: $0 PKI_DIR NAME SUBJECT [EXTENSIONS]" >&2; exit 2; }
pki=$1 name=$2 subj=$3 ext=${4:-"extendedKeyUsage=clientAuth\n"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$subj" \
  -keyout "$tmp/key" -out "$tmp/csr" 2>/dev/null
printf '%b' "$ext" >"$tmp/ext"
openssl x509 -req -in "$tmp/csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
  -set_serial "0x$(openssl rand -hex 16)" \
  -days 365 -extfile "$tmp/ext" -out "$tmp/crt" 2>/dev/null
# Move into place last, so a reader never sees a key without its certificate.
mv "$tmp/key" "$pki/$name.key"
mv "$tmp/crt" "$pki/$name.crt"
