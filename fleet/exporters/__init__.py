"""The processes of the exporter image, built from this repository and run beside Ollama and nginx.

- meter: the metering pass-through in front of each Ollama (meter_proxy: HTTP; meter_stream: parsing the
  streamed answers; meter_metrics: the Prometheus metrics), `python -m fleet.exporters.meter`;
- gateway_log: counts the gateway's own answers from its access log (log_follower follows the file);
- budget: the token budget controller that writes the gateway's refusal map from Prometheus' counts.

They import only the standard library, their pinned requirements and the few core modules the image copies
(see .dockerignore), never the Pulumi SDK.
"""
