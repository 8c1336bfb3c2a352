#!/usr/bin/env bash
# Builds every image that deploy/compose.yaml runs from Debian packages and PyPI, for hosts that
# cannot pull from an image registry (air-gapped clusters, mirrors of Debian and PyPI only):
#
#   psp-offline/debian:bookworm       debootstrap --variant=minbase, imported with `docker import`
#   psp-offline/python:bookworm       Python 3.11 (the BASE_IMAGE of docker/Dockerfile)
#   psp-offline/postgres:bookworm     PostgreSQL 15
#   psp-offline/redis:bookworm        Redis 7
#   psp-offline/prometheus:bookworm   Prometheus 2.42
#   psp-offline/nginx:bookworm        nginx 1.22
#   psp-service:cpu                   docker/Dockerfile on psp-offline/python, CPU torch
#
# Debian has no Grafana package: the offline stack runs without the `grafana` profile.
#
# Images that exist are kept (pass --rebuild to build them all again); the psp image is rebuilt
# from the layer cache, so that it holds the current code. At the end the script
# writes deploy/offline/images.env, the compose variables that select these images; append it
# to deploy/.env (see deploy/README.md, "Without an image registry").
#
# Environment:
#   PIP_CA_BUNDLE_FILE  a PEM bundle pip must trust inside the build (a TLS-inspecting proxy's
#                       CA); default: the host's pip `cert` setting, if any
#   TORCH_VERSION       the torch release of the psp image (default 2.13.0); its CPU wheel is
#                       taken from docker/extras/wheels, else fetched there with the host's pip
#   TORCH_INDEX_URL     where pip inside the build finds torch; empty (the default here): only
#                       docker/extras/wheels
#   DEBIAN_MIRROR       default http://deb.debian.org/debian
#   DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security
#   HOST_PIP            the host's pip command (default: python3 -m pip)
set -euo pipefail

OFFLINE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$OFFLINE/../.." && pwd)
EXTRAS=$ROOT/docker/extras
SUITE=bookworm
PREFIX=psp-offline
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
read -r -a HOST_PIP <<< "${HOST_PIP:-python3 -m pip}"
REBUILD=0
[ "${1:-}" = "--rebuild" ] && REBUILD=1

step() { printf '[%s] %s\n' "$(date +%T)" "$*"; }

have_image() { [ "$REBUILD" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; }

build_debian() {
  local image=$PREFIX/debian:$SUITE root
  if have_image "$image"; then step "$image: present"; return; fi
  command -v debootstrap >/dev/null || { echo "debootstrap is needed: apt-get install -y debootstrap" >&2; exit 1; }
  step "$image: debootstrap --variant=minbase $SUITE"
  root=$(mktemp -d /var/tmp/psp-debootstrap.XXXXXX)
  trap 'rm -rf "$root"' RETURN
  debootstrap --variant=minbase "$SUITE" "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  cat > "$root/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $SUITE main
deb $DEBIAN_MIRROR $SUITE-updates main
deb $DEBIAN_SECURITY_MIRROR $SUITE-security main
EOF
  # Small images: no recommended packages, no documentation, no translations.
  cat > "$root/etc/apt/apt.conf.d/90psp-offline" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
  cat > "$root/etc/dpkg/dpkg.cfg.d/90psp-offline" <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/*
  tar -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' - "$image" >/dev/null
}

build_service() {
  local name=$1 image=$PREFIX/$1:$SUITE
  if have_image "$image"; then step "$image: present"; return; fi
  step "$image: docker build -f deploy/offline/$name.Dockerfile"
  docker build --quiet -f "$OFFLINE/$name.Dockerfile" \
    --build-arg "DEBIAN_IMAGE=$PREFIX/debian:$SUITE" -t "$image" "$OFFLINE" >/dev/null
}

# The host's pip setting `cert` (pip config list prints `global.cert='/path'`).
host_pip_cert() {
  "${HOST_PIP[@]}" config list 2>/dev/null | sed -n "s/^[a-z:.]*cert='\(.*\)'$/\1/p" | head -1
}

prepare_extras() {
  mkdir -p "$EXTRAS/wheels"
  local bundle=${PIP_CA_BUNDLE_FILE:-$(host_pip_cert)}
  CA_ARG=
  if [ -n "$bundle" ]; then
    cp "$bundle" "$EXTRAS/ca-bundle.crt"
    CA_ARG=ca-bundle.crt
  fi
  if [ -z "$TORCH_INDEX_URL" ] && ! ls "$EXTRAS/wheels/torch-$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1; then
    step "docker/extras/wheels: fetching torch==$TORCH_VERSION+cpu with the host's pip"
    "${HOST_PIP[@]}" download --quiet --no-deps --only-binary=:all: \
      --python-version 3.11 --platform manylinux_2_28_x86_64 \
      -d "$EXTRAS/wheels" "torch==$TORCH_VERSION+cpu"
  fi
}

# Always built: the layer cache makes a build without changes take seconds, and the image then
# holds the working tree's code. The builder stage is tagged too, so that its layers stay
# cached; the images each build replaces are removed, not left dangling (1.3 GB each).
build_psp() {
  local image=psp-service:cpu builder=psp-service:cpu-builder
  local before_image before_builder
  before_image=$(image_id "$image")
  before_builder=$(image_id "$builder")
  prepare_extras
  step "$image: docker build -f docker/Dockerfile (torch $TORCH_VERSION, cpu)"
  local args=(
    -f "$ROOT/docker/Dockerfile"
    --build-arg "BASE_IMAGE=$PREFIX/python:$SUITE"
    --build-arg "TORCH_VERSION=$TORCH_VERSION"
    --build-arg TORCH_VARIANT=cpu
    --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"
    --build-arg "PIP_CA_BUNDLE=$CA_ARG"
  )
  docker build --quiet "${args[@]}" --target builder -t "$builder" "$ROOT" >/dev/null
  docker build --quiet "${args[@]}" -t "$image" "$ROOT" >/dev/null
  remove_if_replaced "$before_image" "$image"
  remove_if_replaced "$before_builder" "$builder"
}

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

# The image `tag` named before a build, once the build has moved the tag to a new one.
remove_if_replaced() {
  local before=$1 tag=$2
  if [ -n "$before" ] && [ "$before" != "$(image_id "$tag")" ]; then
    docker image rm "$before" >/dev/null 2>&1 || true
  fi
}

write_env() {
  cat > "$OFFLINE/images.env" <<EOF
# Written by deploy/offline/build-images.sh: the images it built from Debian packages.
# Append to deploy/.env. No Grafana: Debian has no package for it, so no \`grafana\` profile.
COMPOSE_PROFILES=cpu
PSP_POSTGRES_IMAGE=$PREFIX/postgres:$SUITE
PSP_REDIS_IMAGE=$PREFIX/redis:$SUITE
PSP_PROMETHEUS_IMAGE=$PREFIX/prometheus:$SUITE
PSP_NGINX_IMAGE=$PREFIX/nginx:$SUITE
PSP_BASE_IMAGE=$PREFIX/python:$SUITE
TORCH_VERSION=$TORCH_VERSION
TORCH_INDEX_URL=$TORCH_INDEX_URL
PIP_CA_BUNDLE=$CA_ARG
EOF
}

docker info >/dev/null 2>&1 || { echo "docker does not answer: start dockerd first" >&2; exit 1; }
# One build at a time on this machine: a second run waits, then finds the images built.
exec 9>"${TMPDIR:-/tmp}/psp-offline-build.lock"
flock 9
build_debian
for service in python postgres redis prometheus nginx; do
  build_service "$service"
done
build_psp
write_env
step "done; sizes:"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
  | grep -E "^($PREFIX/|psp-service:cpu )" | sort | sed 's/^/  /'
