#!/usr/bin/env bash
# Runs every check and test of the workspace against real servers.
#
# Installs what the tests need when it is missing (Debian packages, as root), then: the use-cycle
# check, rustfmt check, clippy with -D warnings, rustdoc with -D warnings, the whole test suite
# with every feature (unit, integration and doc tests), and the loom model checks. Under CI=true
# a missing server fails the tests instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Each entry: a file the build or the tests need, and the Debian package that provides it. Files,
# not commands: `protoc` alone is not enough (etcd-client's build also needs the well-known
# `.proto` includes, which are in libprotobuf-dev, a package `--no-install-recommends` leaves out).
need=(
  /usr/bin/cc:gcc  # bundled SQLite and ring compile C, lease-testkit's faketime shim too; rustc links with cc
  /usr/include/stdlib.h:libc6-dev  # C headers and crt files: gcc only recommends it
  /usr/bin/redis-server:redis-server
  /usr/bin/etcd:etcd-server
  /usr/bin/etcdctl:etcd-client
  /usr/bin/protoc:protobuf-compiler
  /usr/include/google/protobuf/descriptor.proto:libprotobuf-dev
  /usr/include/google/protobuf/timestamp.proto:libprotobuf-dev
  /usr/bin/faketime:faketime
  /usr/bin/openssl:openssl
  /usr/bin/unshare:util-linux
  /usr/bin/setpriv:util-linux
  /usr/sbin/ip:iproute2  # network namespaces and veth links: the partitionable etcd cluster (as root)
  /usr/bin/python3:python3
  /usr/lib/python3/dist-packages/redis/__init__.py:python3-redis
  # The PostgreSQL server (the metapackage pulls in the current postgresql-NN, whose programs
  # live in /usr/lib/postgresql/NN/bin with pg_isready from its client) and PgBouncer.
  /usr/share/doc/postgresql/copyright:postgresql
  /usr/sbin/pgbouncer:pgbouncer
)
packages=()
for entry in "${need[@]}"; do
  file=${entry%%:*} package=${entry#*:}
  [[ -e $file ]] || [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
done
if ((${#packages[@]})); then
  step "installing ${packages[*]}"
  if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${packages[@]}" >/dev/null
  for entry in "${need[@]}"; do
    [[ -e ${entry%%:*} ]] || { echo "still missing after install: ${entry%%:*} (package ${entry#*:})" >&2; exit 1; }
  done
fi

step "no use cycle between the files of lease-core or lease-etcd (scripts/use-cycles.py)"
python3 scripts/use-cycles.py lease-core/src backends/lease-etcd/src

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings (all features, then default features: the README's demo builds without any)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --locked --quiet

# cargo test rather than nextest: the backend suites share one server per test binary, which
# nextest's process-per-test model would start once per test.
# LEASE_SIM_SCHEDULES: the lock's seeded simulation (lease-core/tests/simulation.rs) runs 10,000
# schedules here, about 30 s; a failure prints the seed that replays it.
step "tests (unit, integration and doc; 10,000 simulated schedules)"
LEASE_SIM_SCHEDULES=10000 cargo test --workspace --all-features --locked --no-fail-fast

step "tests of feature choices: leasehold with no store built, lease-redis and lease-postgres TLS without tls-ring"
cargo test -p leasehold --no-default-features --lib --tests --locked
cargo test -p lease-redis --features tls --test tls --locked
cargo test -p lease-postgres --features tls --test tls --locked

step "loom model checks"
RUSTFLAGS="--cfg lease_loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p lease-core --lib --release --locked loom
