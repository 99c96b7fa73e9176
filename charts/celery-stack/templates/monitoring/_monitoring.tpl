{{- /*
Reserved for monitoring as data (later work; values sections `dashboards` and `alerts`):
  monitoring/dashboards-configmap.yaml  Grafana dashboards (label grafana_dashboard: "1") from
                                        the generated JSON in monitoring/
  monitoring/alerts-prometheusrule.yaml PrometheusRule, rendered only when
                                        .Capabilities.APIVersions.Has "monitoring.coreos.com/v1"
                                        (see celery-stack.monitorsEnabled)
Scrape wiring already exists: api ServiceMonitor, worker and beat PodMonitors, else
prometheus.io/* pod annotations.
*/ -}}
