# Sourced by docker/Dockerfile before each `pip install` of the builder stage: turns the build's
# extras into pip settings. PIP_CA_BUNDLE (a build argument) names a PEM file in docker/extras/
# that pip must trust; wheels in docker/extras/wheels/ are offered to pip before any index.
extras=/opt/build/extras
if [ -n "${PIP_CA_BUNDLE:-}" ]; then
  if [ ! -f "$extras/$PIP_CA_BUNDLE" ]; then
    echo "PIP_CA_BUNDLE=$PIP_CA_BUNDLE: no such file in docker/extras/ (the build context)" >&2
    exit 1
  fi
  export PIP_CERT="$extras/$PIP_CA_BUNDLE"
fi
if ls "$extras"/wheels/*.whl >/dev/null 2>&1; then
  export PIP_FIND_LINKS="$extras/wheels"
fi
