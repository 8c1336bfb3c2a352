# nginx from Debian (1.22 on bookworm), laid out like the nginx image: the server in the
# foreground, site configurations read from /etc/nginx/conf.d/*.conf (compose mounts
# default.conf there), logs on the container's stdout and stderr.
ARG DEBIAN_IMAGE=psp-offline/debian:bookworm
FROM ${DEBIAN_IMAGE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* \
    && rm -f /etc/nginx/sites-enabled/default \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log

EXPOSE 8000
# SIGQUIT: finish the requests in flight, then stop (as in the upstream image).
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
