# The compose stack's MQTT broker: Debian's Mosquitto, as KubeEdge runs it on an edge node (127.0.0.1:1883 there;
# here a container the workers and the replayer reach as broker:1883, published to the host on 127.0.0.1 only).
#
#   docker build -f docker/broker.Dockerfile -t fedad-broker .                                 # context: any folder
#   docker build --build-arg BASE_IMAGE=local/python-base -f docker/broker.Dockerfile ...      # offline base
#
# Built from a plain Debian base and Debian's package (not a registry's mosquitto image), so the same build works
# where only Debian's archive is reachable. Legacy builder (Docker 20.10) and BuildKit alike.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /etc/mosquitto/conf.d/*
# Anonymous clients on the stack's own network: the port is published on the host's loopback only. A site that
# exposes the broker further gives it a password file or TLS (mosquitto.conf(5)) by mounting its own config.
# Queue limits, on purpose (docs/deploy.md, "Queue limits"), the edge nodes' (ansible role kubeedge_edge): per client,
# 20 unacknowledged QoS 1 messages in flight (Mosquitto's default), then up to 100,000 messages or 128 MiB queued,
# about two minutes of 100 devices' readings while a worker is busy or restarts (Mosquitto's default of 1,000 lasts
# about a second of that); what is dropped beyond is counted in $SYS every 10 s, which the workers read and report
# (fedad_worker_mqtt_broker_dropped_total, a warning in the log).
RUN printf '%s\n' \
      'listener 1883 0.0.0.0' \
      'allow_anonymous true' \
      'persistence true' \
      'persistence_location /var/lib/mosquitto/' \
      'log_dest stdout' \
      'log_type error' 'log_type warning' 'log_type notice' \
      'max_inflight_messages 20' 'max_queued_messages 100000' 'max_queued_bytes 134217728' \
      'sys_interval 10' \
      > /etc/mosquitto/mosquitto.conf
# Debian's package runs the broker as its own unprivileged user "mosquitto", which owns the persistence folder.
USER mosquitto
VOLUME ["/var/lib/mosquitto"]
EXPOSE 1883
HEALTHCHECK --interval=3s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/1883"]
ENTRYPOINT ["/usr/sbin/mosquitto", "-c", "/etc/mosquitto/mosquitto.conf"]
