# PostgreSQL 15 from Debian, with the environment contract of the postgres:15 image that
# compose.yaml relies on: POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB create the role and
# the database on first start, PGDATA (default /var/lib/postgresql/data) holds the cluster, and
# `pg_isready` is on the PATH for the healthcheck.
ARG DEBIAN_IMAGE=psp-offline/debian:bookworm
FROM ${DEBIAN_IMAGE}

# No cluster at install time: the entrypoint creates one in the volume on first start.
RUN mkdir -p /etc/postgresql-common \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data

COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
# A fresh named volume takes the owner of this directory, so the server never needs root.
USER postgres
VOLUME /var/lib/postgresql/data
EXPOSE 5432
# SIGINT: PostgreSQL's "fast" shutdown (as in the upstream image).
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
