{{/* Probes: each component's defaults below, overridden key by key by <component>.probes.<kind>
(queues: queueDefaults.probes / queues.<name>.probes). An override that names a handler (exec,
httpGet, tcpSocket, grpc) replaces the default handler instead of adding a second one.
Call with (dict "root" $ "name" "livenessProbe" "tpl" <define> "override" <map>). */}}
{{- define "celery-stack.probe" -}}
{{- $base := include .tpl .root | fromYaml -}}
{{- $o := deepCopy (.override | default dict) -}}
{{- if or (hasKey $o "exec") (hasKey $o "httpGet") (hasKey $o "tcpSocket") (hasKey $o "grpc") -}}
{{- $base = omit $base "exec" "httpGet" "tcpSocket" "grpc" -}}
{{- end -}}
{{ .name }}:
  {{- toYaml (mergeOverwrite $base $o) | nindent 2 }}
{{- end -}}

{{/* api startup probe */}}
{{- define "celery-stack.probe.api.startup" -}}
httpGet:
  path: /healthz
  port: http
periodSeconds: 2
failureThreshold: 30
{{- end -}}

{{/* api readiness probe */}}
{{- define "celery-stack.probe.api.readiness" -}}
# Ready = can do work: PostgreSQL answers (Redis is reported, not gating: views fall back).
httpGet:
  path: /readyz
  port: http
periodSeconds: 5
timeoutSeconds: 3
failureThreshold: 2
{{- end -}}

{{/* api liveness probe */}}
{{- define "celery-stack.probe.api.liveness" -}}
# Alive = the event loop answers; never restart on a dependency outage.
httpGet:
  path: /healthz
  port: http
periodSeconds: 10
timeoutSeconds: 3
failureThreshold: 3
{{- end -}}

{{/* beat liveness probe: /healthz (beat's own HTTP server, no Redis read, no process spawned): 200 while the leader ticks or the standby campaigns, 503 after BEAT_ALIVE_MAX_AGE without progress. */}}
{{- define "celery-stack.probe.beat.liveness" -}}
httpGet:
  path: /healthz
  port: metrics
initialDelaySeconds: 10
periodSeconds: 15
timeoutSeconds: 5
failureThreshold: 3
{{- end -}}

{{/* beat readiness probe */}}
{{- define "celery-stack.probe.beat.readiness" -}}
httpGet:
  path: /healthz
  port: metrics
periodSeconds: 15
timeoutSeconds: 5
{{- end -}}

{{/* worker startup probe */}}
{{- define "celery-stack.probe.worker.startup" -}}
# Started = connected to the broker and consuming (the consuming file is fresh).
exec:
  command: ["python", "/opt/celery-stack/scripts/heartbeat_check.py", "--consuming", "{{ $.Values.workerProbes.maxHeartbeatAge }}"]
periodSeconds: 5
timeoutSeconds: 5
failureThreshold: {{ div (int $.Values.workerProbes.startupTimeout) 5 | max 1 }}
{{- end -}}

{{/* worker readiness probe */}}
{{- define "celery-stack.probe.worker.readiness" -}}
# Ready = consuming now; drops during a broker outage (nothing routes to a worker: this
# is for rollouts and kubectl; the PDB evicts NotReady pods, so drains never block).
exec:
  command: ["python", "/opt/celery-stack/scripts/heartbeat_check.py", "--consuming", "{{ mul 3 (int (ceil $.Values.workerProbes.heartbeatInterval)) | max 15 }}"]
periodSeconds: 15
timeoutSeconds: 5
{{- end -}}

{{/* worker liveness probe */}}
{{- define "celery-stack.probe.worker.liveness" -}}
# Alive = not wedged: stale only when the broker is reachable yet nothing is consumed,
# or the event loop is blocked; a broker outage keeps it fresh (no fleet restart).
exec:
  command: ["python", "/opt/celery-stack/scripts/heartbeat_check.py", "{{ $.Values.workerProbes.maxHeartbeatAge }}"]
periodSeconds: 15
timeoutSeconds: 5
failureThreshold: 3
{{- end -}}
