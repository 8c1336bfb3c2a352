# Python 3.11 from Debian: the BASE_IMAGE of docker/Dockerfile where python:3.11-slim-bookworm
# cannot be pulled. Debian's python3 is 3.11 on bookworm; `python` and the venv module are
# separate packages there (the psp build runs `python -m venv`).
ARG DEBIAN_IMAGE=psp-offline/debian:bookworm
FROM ${DEBIAN_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       python3 python3-venv python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python --version

CMD ["python3"]
