#!/bin/sh
# Creates the compose demo's TLS material in $CERTS_DIR (a shared volume), once: a private
# CA, a certificate for Keycloak (the identity provider must be https) and one for pgwarden.
# Everything is readable by the services' non-root users; it is a demo, not a PKI.
set -eu

dir=${CERTS_DIR:-/certs}
if [ -f "$dir/ca.pem" ]; then
  echo "certificates already in $dir"
  exit 0
fi
mkdir -p "$dir"
cd "$dir"

openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=pgwarden compose demo CA" \
  -keyout ca.key -out ca.pem 2>/dev/null

issue() { # name, then the DNS names it is valid for
  name=$1
  shift
  sans=""
  for host in "$@"; do
    sans="${sans:+$sans,}DNS:$host"
  done
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

issue keycloak keycloak localhost
issue pgwarden pgwarden localhost
rm -f ca.key ca.srl
chmod 0644 ./*.pem ./*.key
echo "certificates written to $dir"
