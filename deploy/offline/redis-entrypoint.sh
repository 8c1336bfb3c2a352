#!/bin/sh
# `redis-server ARGS`: protected mode off (it would refuse every other container without a
# password), then the caller's arguments. Any other command runs as it is.
set -eu
if [ "${1:-}" = "redis-server" ]; then
  shift
  exec redis-server --protected-mode no "$@"
fi
exec "$@"
