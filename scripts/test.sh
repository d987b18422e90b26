#!/usr/bin/env bash
# The one gate: formatting, lints, and every test in the workspace.
# Installs the Debian packages the integration tests need when they are missing:
# etcd-client (etcdctl), etcd-server (a real etcd whose snapshot the migration
# test restores and whose JSON gateway the gateway tests compare with), curl,
# protobuf-compiler (protoc, for the etcd-client crate's build script; synod
# itself builds without it), chromium (the browser the status page's test
# renders /ui in), and Python's etcd3gw from PyPI.
# With CI=true a missing tool is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
command -v etcdctl >/dev/null 2>&1 || need_packages+=(etcd-client)
command -v etcd >/dev/null 2>&1 || need_packages+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need_packages+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || need_packages+=(curl)
command -v chromium >/dev/null 2>&1 || need_packages+=(chromium)
if [ ${#need_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need_packages[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >/dev/null
  fi
fi
# Python's etcd3gw, a client of the JSON gateway, for the gateway tests.
if ! python3 -c 'import etcd3gw' >/dev/null 2>&1; then
  python3 -m pip install --quiet etcd3gw >/dev/null 2>&1 || true
fi
if [ "${CI:-}" = true ]; then
  python3 -c 'import etcd3gw' || { echo "Python's etcd3gw is missing and CI=true" >&2; exit 1; }
  for tool in etcdctl etcd protoc curl chromium; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool is missing and CI=true" >&2; exit 1; }
  done
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release

# The fault harness against real members: a 3-member and a 5-member group
# under every fault kind, each run with a fresh seed that it prints (replay
# with `synod chaos --seed N --members M`).
./target/release/synod chaos --members 3 --duration-s 100
./target/release/synod chaos --members 5 --duration-s 60
