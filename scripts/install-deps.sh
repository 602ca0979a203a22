#!/usr/bin/env bash
# Installs everything idemproxy needs to build, test and run on Debian 12 (as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build pkg-config git ca-certificates curl python3 \
  libevent-dev libcurl4-openssl-dev liblmdb-dev lmdb-utils libcjson-dev libyaml-cpp-dev \
  libgtest-dev libhttp-parser-dev libssl-dev libsystemd-dev libcli11-dev systemd dpkg-dev file \
  openssl clang-format debootstrap systemd-container strace clang-14 libclang-rt-14-dev llvm-14 \
  postgresql libpq-dev redis-server libhiredis-dev util-linux >/dev/null
