# Stand-ins for prom/prometheus and prom/alertmanager where no image registry is reachable:
# Debian 12's packages (Prometheus 2.42, Alertmanager 0.25), run like the official images (as
# nobody, config under /etc, data in a volume) and with wget for the same health checks.
# Production (docker-compose.prod.yml) runs the official images.
#   --target prometheus | --target alertmanager
ARG BASE_IMAGE=localhost/visrec-standin/debian:bookworm

FROM ${BASE_IMAGE} AS prometheus
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus wget \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]

FROM ${BASE_IMAGE} AS alertmanager
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus-alertmanager wget \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /alertmanager && chown nobody:nogroup /alertmanager
USER nobody
VOLUME /alertmanager
EXPOSE 9093
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
