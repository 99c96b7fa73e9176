{{/* Shared by the bundled stores. The official redis and postgres images run as their own
unprivileged user, uid/gid 999; the chart's podSecurityContext is for its own image (10001). */}}
{{- define "celery-stack.evaluationPodSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 999
  runAsGroup: 999
  fsGroup: 999
  seccompProfile:
    type: RuntimeDefault
{{- include "celery-stack.scheduling" (dict "root" . "c" dict) }}
{{- end -}}

{{- define "celery-stack.evaluationSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
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
