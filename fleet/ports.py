"""Well-known ports of the services a fleet runs (container side; host-side ports may be remapped in tests)."""

OLLAMA = 11434  # Ollama API, reached only through the metering proxy on the same host
METER = 11435  # metering pass-through in front of Ollama; the gateway's upstreams point here
METER_METRICS = 9778  # the metering exporter's /metrics
NODE_EXPORTER = 9100
DCGM_EXPORTER = 9400
NGINX_STATUS = 8081  # nginx stub_status, internal only
NGINX_EXPORTER = 9113
GATEWAY_LOG_EXPORTER = 9115  # the gateway log exporter's /metrics (fleet.exporters.gateway_log: the gateway's own answers)
PROMETHEUS = 9090
ALERTMANAGER = 9093
GRAFANA = 3000
SSH = 22  # only from aws.sshCidrs, never from the world

# Never open to 0.0.0.0/0 (policy `no-public-inference-ports`).
PRIVATE_PORTS = (
    OLLAMA,
    METER,
    METER_METRICS,
    NODE_EXPORTER,
    DCGM_EXPORTER,
    NGINX_STATUS,
    NGINX_EXPORTER,
    GATEWAY_LOG_EXPORTER,
    PROMETHEUS,
    ALERTMANAGER,
    GRAFANA,
)

# Ports the fleet's own services listen on beside nginx on the gateway host: the gateway's public ports must
# be others.
GATEWAY_HOST_PORTS = (NGINX_STATUS, NGINX_EXPORTER, GATEWAY_LOG_EXPORTER, PROMETHEUS, GRAFANA, NODE_EXPORTER, ALERTMANAGER)
