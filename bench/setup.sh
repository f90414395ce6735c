#!/bin/sh
# Benchmark prerequisites: nginx, h2load and nghttpd from Debian, and the h2load client-cert shim.
# Idempotent; `bench/run.py` calls it. Needs root (or sudo) only when a package is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/.build"}

missing=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
command -v h2load >/dev/null 2>&1 || missing="$missing nghttp2-client"
command -v nghttpd >/dev/null 2>&1 || missing="$missing nghttp2-server"
command -v gcc >/dev/null 2>&1 || missing="$missing gcc"
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "bench/setup.sh: installing$missing" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi

mkdir -p "$out"
if [ ! -f "$out/h2load_client_cert.so" ] || [ "$here/h2load_client_cert.c" -nt "$out/h2load_client_cert.so" ]; then
    gcc -O2 -Wall -Wextra -shared -fPIC -o "$out/h2load_client_cert.so" \
        "$here/h2load_client_cert.c" -ldl
fi
