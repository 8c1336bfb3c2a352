# Prometheus from Debian (2.42 on bookworm), laid out like the prom/prometheus image: the
# entrypoint is the server, compose's `command` passes its flags, the TSDB lives in /prometheus
# and the server runs as an unprivileged user. The web UI reads moment-timezone's bundled
# scripts only; the package's raw time-zone sources (212 MB) are dropped.
ARG DEBIAN_IMAGE=psp-offline/debian:bookworm
FROM ${DEBIAN_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && rm -rf /usr/share/javascript/moment-timezone/data \
    && mkdir -p /prometheus \
    && chown prometheus:prometheus /prometheus

USER prometheus
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
