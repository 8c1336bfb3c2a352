# Redis 7 from Debian. Like the upstream redis image, a `redis-server` command without a config
# file listens on every interface without protected mode (compose's network is private; the
# port is never published) and keeps its files (the AOF) in /data.
ARG DEBIAN_IMAGE=psp-offline/debian:bookworm
FROM ${DEBIAN_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data \
    && chown redis:redis /data

COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint.sh

USER redis
WORKDIR /data
VOLUME /data
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]
CMD ["redis-server"]
