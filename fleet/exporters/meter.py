"""Ollama metering exporter: a streaming pass-through beside each Ollama server, with Prometheus metrics.

Ollama serves no /metrics, so every request to a node goes through this proxy (port METER), which relays
it unchanged and meters inference per model: requests by outcome, duration, time to first token, prompt
and completion tokens, tokens/s, requests in flight; it also polls /api/ps for the loaded models and
their VRAM. Metrics are served on a separate port (METER_METRICS).

    python -m fleet.exporters.meter --upstream http://127.0.0.1:11434 --listen 0.0.0.0:11435 \\
        --metrics-listen 0.0.0.0:9778 --node gpu-a-0 [--ps-interval 5] [--model llama3.1:8b ...] \\
        [--alias chat=llama3.1:8b ...] [--client team-a ...]

Only aiohttp and prometheus_client are needed at run time (the exporter's container installs just those).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from fleet import ports
from fleet.gateway_routes import CLIENT_HEADER
from fleet.exporters.meter_proxy import ExporterConfig, ExporterServer, MeteringProxy, serve

__all__ = ["ExporterConfig", "ExporterServer", "MeteringProxy", "main", "parse_address", "serve"]


def parse_address(value: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) → (host, port), for argparse."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65_535:
        raise argparse.ArgumentTypeError(f"{value!r} is not host:port, e.g. 0.0.0.0:{ports.METER}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _positive(kind: type):
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if number < 0:
            raise argparse.ArgumentTypeError(f"{value!r} must not be negative")
        return number

    return parse


def _alias(value: str) -> tuple[str, str]:
    alias, sep, model = value.partition("=")
    if not sep or not alias.strip() or not model.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is not ALIAS=MODEL, e.g. chat=llama3.1:8b")
    return alias.strip(), model.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fleet.exporters.meter", description="Metering pass-through in front of one Ollama server."
    )
    parser.add_argument(
        "--upstream", default=f"http://127.0.0.1:{ports.OLLAMA}", help="Ollama's base URL (default: %(default)s)"
    )
    parser.add_argument(
        "--listen", type=parse_address, default=f"0.0.0.0:{ports.METER}", help="proxy address (default: %(default)s)"
    )
    parser.add_argument(
        "--metrics-listen",
        type=parse_address,
        default=f"0.0.0.0:{ports.METER_METRICS}",
        help="/metrics address (default: %(default)s)",
    )
    parser.add_argument("--node", required=True, help="value of the `node` label on every series")
    parser.add_argument(
        "--ps-interval", type=_positive(float), default=5.0, help="seconds between /api/ps polls; 0 polls once (default: 5)"
    )
    parser.add_argument(
        "--connect-timeout", type=_positive(float), default=5.0, help="seconds to connect to Ollama before answering 502"
    )
    parser.add_argument(
        "--max-models",
        type=_positive(int),
        default=32,
        help="distinct model label values; further names are counted as `other` (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="a model the node serves: labelled from the start (repeatable)",
    )
    parser.add_argument(
        "--alias",
        action="append",
        type=_alias,
        default=[],
        metavar="ALIAS=MODEL",
        help="another name of a served model (repeatable): its requests and runners are labelled with the model",
    )
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help=f"a configured client name (repeatable): the `client` label of tokens and requests, from the gateway's "
        f"{CLIENT_HEADER} header; other names are `unknown`",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_positive(int),
        default=64 << 20,
        help="largest inference request body read (the gateway enforces the client limit)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_models < 1:
        build_parser().error("--max-models must be at least 1")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ExporterConfig(
        upstream=args.upstream,
        node=args.node,
        ps_interval_s=args.ps_interval,
        connect_timeout_s=args.connect_timeout,
        max_body_bytes=args.max_body_bytes,
        max_models=args.max_models,
        models=tuple(args.model),
        clients=tuple(args.client),
        aliases=tuple(args.alias),
    )
    try:
        asyncio.run(serve(config, args.listen, args.metrics_listen))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # e.g. the port is taken
        print(f"fleet.exporters.meter: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
