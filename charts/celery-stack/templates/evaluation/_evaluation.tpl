{{/* Shared by the bundled stores. They run as the chart's own unprivileged uid/gid
(podSecurityContext, 10001): the official redis image needs no user of its own when its command
is redis-server, and the postgres image's entrypoint supports an arbitrary uid (nss_wrapper). */}}
{{- define "celery-stack.evaluationPodSecurity" -}}
securityContext:
  {{- include "celery-stack.podSecurityContext" . | nindent 2 }}
{{- include "celery-stack.scheduling" (dict "root" . "c" dict) }}
{{- end -}}

{{/* The data volume claim; call with evaluation.<store>.storage. */}}
{{- define "celery-stack.evaluationClaim" -}}
- metadata:
    name: data
  spec:
    accessModes: ["ReadWriteOnce"]
    {{- with .storageClass }}
    storageClassName: {{ . | quote }}
    {{- end }}
    resources:
      requests:
        storage: {{ .size }}
{{- end -}}
