"""Pure planning: what the components will wire, decided from the stack's settings before any resource exists.

No Pulumi here (tests/unit/test_layering.py holds it): each planner is a plain function of the settings (and,
where the cloud decides an address, of plain stand-ins for it), so `fleet validate` runs the same checks the
program does (`fleet.plans.checks`), and the tests need no mocks.

Modules:
  naming:     the names the program gives its components and containers (a container's name is its address)
  checks:     every planner below run on a stack file alone, its refusals as config errors (fleet validate)
  alerting:   the alert receivers' secrets: the secret config read back, what a stack without it lacks
  subnets:    one subnet CIDR per zone, carved from the VPC's
  network:    the security group rules (RuleSpec) and the network plan (VPC, subnets, rules, tags)
  gateway:    nginx's plan for the deployed gateway, its client ports and URL, where token budgets live
              and whether they are enforced, each gateway host's containers (GatewayHostPlan)
  dns:        the gateway's Route 53 name: the zone lookup, the records and TTL, the failover health checks
  tls:        the gateway's certificate by TLS mode: self-signed names, the ACME order, the provided PEM checks
  secrets:    the generated keys and passwords, the configured API keys merged in and checked
  monitoring: Prometheus, Alertmanager and Grafana as data (names, images, labels, commands, volumes, files,
              Grafana's environment), the receivers' secrets a stack lacks, the scrape plan once targets are known
  node_exporter: a host's node exporter (NodeExporterPlan): name, image, labels, flags and probe
  hosts:      each AWS host: size, zone, volumes, AMI, tags, first-boot and readiness inputs, SSH lines and files
  scrape:     what Prometheus scrapes (ScrapeTargets: the stack's nodes, the gateway hosts' exporters)
              and the scrape plan built from it
  placement:  what placing containers takes from the stack (PlacementPlan) and the local Docker host's plan
  node:       one Ollama node (NodePlan): container names, images, labels, its NodeRuntime, GGUF staging,
              the pull and warm-up steps
"""
