"""Pure renderers of the files a fleet deploys (no Pulumi resources): nginx gateway, Prometheus scrape
config, alert rules, Grafana provisioning and dashboard, cloud-init. Templates live in templates/.

Public API:
  nginx:      GatewayPlan, GatewayPaths, build_gateway_plan, render_nginx, render_api_keys, render_log_rotation,
              placeholder_upstreams
  prometheus: NodeTarget, PrometheusPlan, node_targets, build_prometheus_plan, render_prometheus, prometheus_args
  rules:      alerts, render_rules, rule_queries
  grafana:    build_dashboard, render_dashboard, render_datasource, render_dashboard_provider, dashboard_queries
  bundle:     program_files (the files of the program run under mocks), write_bundle
"""
