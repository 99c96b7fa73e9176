{{- /*
Monitoring as data. The sources are Python in monitoring/ (`make monitoring`); the generated
files live in files/monitoring/ and are checked for drift in `make test`:
  monitoring/dashboards-configmap.yaml   one ConfigMap per Grafana dashboard, labelled for the
                                         Grafana sidecar (dashboards.label), folder annotation
  monitoring/alerts-prometheusrule.yaml  PrometheusRule from files/monitoring/alerts.yaml, only
                                         where .Capabilities has monitoring.coreos.com/v1; with
                                         alerts.enabled and no such API the render fails
Scrape wiring: api ServiceMonitor, worker and beat PodMonitors, else prometheus.io/* annotations.
*/ -}}

{{/* The rule groups, with the namespace of kube-state-metrics selectors and the runbook base
URL made this release's. */}}
{{- define "celery-stack.alertRules" -}}
{{- $rules := .Files.Get "files/monitoring/alerts.yaml" -}}
{{- $rules = replace "namespace=\"celery-stack\"" (printf "namespace=%q" .Release.Namespace) $rules -}}
{{- with .Values.alerts.runbookBaseUrl -}}
{{- $rules = replace "https://github.com/celery-stack/celery-stack/blob/main/docs/runbooks.md" . $rules -}}
{{- end -}}
{{- $rules -}}
{{- end -}}
