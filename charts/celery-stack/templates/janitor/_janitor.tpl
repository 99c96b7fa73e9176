{{- /* The janitor (DESIGN "Locks and the janitor"): a CronJob running `celery-stack-janitor
sweep` with its own ServiceAccount (pods get/list only: owners.judge asks whether a lock's or a
scan's pod still exists), and, with janitor.operator.enabled, the kopf operator that reconciles
one CronJob per JanitorPolicy and releases a deleted worker pod's locks at once. */ -}}

{{/* The sweep's argv, from a spec with `sweeps` (list) and `dryRun`. */}}
{{- define "celery-stack.janitorArgs" -}}
- celery-stack-janitor
- sweep
- --json
{{- with .sweeps }}
- --only
- {{ join "," . | quote }}
{{- end }}
{{- if .dryRun }}
- --dry-run
{{- end }}
{{- end -}}

{{/* The Job template of a janitor CronJob (the chart's, and the operator's template for every
JanitorPolicy). Call with (dict "root" $ "spec" <janitor values>). */}}
{{- define "celery-stack.janitorJobTemplate" -}}
{{- $root := .root -}}
{{- $c := .spec -}}
metadata:
  labels:
    {{- include "celery-stack.labels" (dict "root" $root "component" "janitor") | nindent 4 }}
spec:
  backoffLimit: {{ $c.backoffLimit }}
  activeDeadlineSeconds: {{ $c.activeDeadlineSeconds }}
  ttlSecondsAfterFinished: {{ $c.ttlSecondsAfterFinished }}
  template:
    metadata:
      labels:
        {{- include "celery-stack.selectorLabels" (dict "root" $root "component" "janitor") | nindent 8 }}
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with (merge (dict) ($c.podAnnotations | default dict) ($root.Values.podAnnotations | default dict)) }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      restartPolicy: Never
      serviceAccountName: {{ include "celery-stack.serviceAccountName" (dict "root" $root "component" "janitor") }}
      # Lists pods to judge pod owners (nothing else).
      automountServiceAccountToken: true
      securityContext:
        {{- include "celery-stack.podSecurityContext" $root | nindent 8 }}
      {{- with (include "celery-stack.initContainers" (dict "root" $root "c" $c "wait" true) | trim) }}
      initContainers:
        {{- . | nindent 8 }}
      {{- end }}
      containers:
        - name: janitor
          image: {{ include "celery-stack.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- include "celery-stack.janitorArgs" $c | nindent 12 }}
          env:
            {{- include "celery-stack.env" (dict "root" $root "service" "janitor") | nindent 12 }}
            - name: JANITOR_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            {{- with $c.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          envFrom:
            {{- include "celery-stack.envFrom" $root | nindent 12 }}
            {{- with $c.extraEnvFrom }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          securityContext:
            {{- include "celery-stack.securityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "celery-stack.tmpMount" $root | nindent 12 }}
            {{- with (include "celery-stack.extraVolumeMounts" (dict "root" $root "c" $c) | trim) }}{{ . | nindent 12 }}{{- end }}
      volumes:
        {{- include "celery-stack.tmpVolume" $root | nindent 8 }}
        {{- include "celery-stack.scriptsVolume" $root | nindent 8 }}
        {{- with (include "celery-stack.extraVolumes" (dict "root" $root "c" $c) | trim) }}{{ . | nindent 8 }}{{- end }}
{{- end -}}
