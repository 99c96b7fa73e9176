{{/* ---------------------------------------------------------------- names */}}
{{- define "celery-stack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "celery-stack.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component>, cut so that pod names stay valid. */}}
{{- define "celery-stack.componentName" -}}
{{- printf "%s-%s" (include "celery-stack.fullname" .root) .component | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "celery-stack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* ---------------------------------------------------------------- labels
Call with (dict "root" $ "component" "api"). */}}
{{- define "celery-stack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celery-stack.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "celery-stack.labels" -}}
{{ include "celery-stack.selectorLabels" . }}
app.kubernetes.io/part-of: celery-stack
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "celery-stack.chart" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------- image */}}
{{- define "celery-stack.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- queues
The effective settings of one queue: queueDefaults overridden key by key by the entry (one level
deep for the nested blocks we own). Sprig's merge functions skip false/0/"" in the source, so a
queue could not turn `enabled` off with them: hasKey keeps explicit falsy values.
Call with (dict "root" $ "name" "counters"); returns YAML. */}}
{{- define "celery-stack.queue" -}}
{{- $d := .root.Values.queueDefaults -}}
{{- $q := index .root.Values.queues .name | default dict -}}
{{- $out := dict "name" .name -}}
{{- range $k, $v := $d -}}
{{- if and (kindIs "map" $v) (has $k (list "autoscaling" "pdb")) -}}
{{- $sub := dict -}}
{{- $qs := index $q $k | default dict -}}
{{- range $k2, $v2 := $v -}}
{{- $_ := set $sub $k2 (ternary (index $qs $k2) $v2 (hasKey $qs $k2)) -}}
{{- end -}}
{{- $_ := set $out $k $sub -}}
{{- else -}}
{{- $_ := set $out $k (ternary (index $q $k) $v (hasKey $q $k)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $out "command" ($q.command | default "") -}}
{{- if not $out.queues -}}{{- $_ := set $out "queues" (list .name) -}}{{- end -}}
{{- $_ := set $out "grace" (add $out.timeLimit $out.shutdownMargin) -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Names of the enabled queues, sorted (YAML list). */}}
{{- define "celery-stack.enabledQueues" -}}
{{- $names := list -}}
{{- range $name := keys .Values.queues | sortAlpha -}}
{{- $q := include "celery-stack.queue" (dict "root" $ "name" $name) | fromYaml -}}
{{- if $q.enabled -}}{{- $names = append $names $name -}}{{- end -}}
{{- end -}}
{{- toYaml $names -}}
{{- end -}}

{{/* ---------------------------------------------------------------- config
Non-secret settings shared by every service (libs/core config.py variable names). The per-queue
variables are the only source of a worker's -Q, prefetch and time limits (queue registry,
libs/core queues.py). */}}
{{- define "celery-stack.configData" -}}
ENVIRONMENT: {{ .Values.environment | quote }}
LOG_LEVEL: {{ .Values.logLevel | quote }}
DATABASE_POOL_SIZE: {{ .Values.database.poolSize | quote }}
CELERY_VISIBILITY_TIMEOUT: {{ .Values.celery.visibilityTimeout | quote }}
CELERY_RESULT_EXPIRES: {{ .Values.celery.resultExpires | quote }}
CELERY_SOFT_SHUTDOWN_TIMEOUT: {{ .Values.celery.softShutdownTimeout | quote }}
CELERY_TASK_EVENTS: {{ .Values.flower.enabled | quote }}
METRICS_PORT: {{ .Values.metrics.port | quote }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .Values.otel.endpoint | quote }}
WORKER_HEARTBEAT_FILE: "/tmp/celery-stack-worker-alive"
WORKER_HEARTBEAT_INTERVAL: {{ .Values.workerProbes.heartbeatInterval | quote }}
BEAT_TICK: {{ .Values.beat.tick | quote }}
MAINTENANCE_DEFAULT_RULES: {{ .Values.maintenance.rules.defaults | quote }}
MAINTENANCE_RULE_OVERRIDES: {{ .Values.maintenance.rules.overrides | toJson | quote }}
MAINTENANCE_RULES: {{ .Values.maintenance.rules.custom | toJson | quote }}
{{- range $name := keys .Values.queues | sortAlpha }}
{{- $q := include "celery-stack.queue" (dict "root" $ "name" $name) | fromYaml }}
{{- $p := $name | upper | replace "-" "_" }}
{{ $p }}_SOFT_TIME_LIMIT: {{ $q.softTimeLimit | quote }}
{{ $p }}_TIME_LIMIT: {{ $q.timeLimit | quote }}
{{ $p }}_PREFETCH: {{ $q.prefetchMultiplier | quote }}
{{ $p }}_QUEUES: {{ join "," $q.queues | quote }}
{{- end }}
{{- end -}}

{{/* The Secret holding connection URLs and tokens: the chart's own, unless every value comes
from an existingSecret. */}}
{{- define "celery-stack.secretName" -}}
{{- printf "%s-env" (include "celery-stack.fullname" .) -}}
{{- end -}}

{{- define "celery-stack.ownsSecret" -}}
{{- if or (not .Values.redis.existingSecret) (not .Values.database.existingSecret) (not .Values.auth.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/* The generated admin token: read back from the release's Secret so upgrades keep it, made
once per render otherwise (memoised so the hook Secret and the release Secret agree). */}}
{{- define "celery-stack.generatedAdminToken" -}}
{{- if not (hasKey .Values.auth "_generated") -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "celery-stack.secretName" .) -}}
{{- $token := "" -}}
{{- if and $existing $existing.data (hasKey $existing.data "ADMIN_TOKEN") -}}
{{- $token = index $existing.data "ADMIN_TOKEN" | b64dec -}}
{{- else -}}
{{- $token = randAlphaNum 40 -}}
{{- end -}}
{{- $_ := set .Values.auth "_generated" $token -}}
{{- end -}}
{{- .Values.auth._generated -}}
{{- end -}}

{{- define "celery-stack.secretData" -}}
{{- if not .Values.redis.existingSecret }}
REDIS_URL: {{ .Values.redis.url | b64enc | quote }}
{{- /* KEDA's Redis scaler takes host:port and a password, not a URL. */}}
{{- $u := urlParse .Values.redis.url }}
REDIS_ADDRESS: {{ $u.host | b64enc | quote }}
{{- $userinfo := $u.userinfo | default "" }}
{{- if contains ":" $userinfo }}
REDIS_PASSWORD: {{ regexReplaceAll "^[^:]*:" $userinfo "" | b64enc | quote }}
{{- end }}
{{- end }}
{{- if not .Values.database.existingSecret }}
DATABASE_URL: {{ .Values.database.url | b64enc | quote }}
{{- end }}
{{- if not .Values.auth.existingSecret }}
{{- if .Values.auth.tokens }}
API_TOKENS: {{ .Values.auth.tokens | toJson | b64enc | quote }}
{{- else if .Values.auth.generateAdminToken }}
{{- $token := include "celery-stack.generatedAdminToken" . }}
{{- $spec := list (dict "name" "admin" "sha256" (sha256sum $token) "scopes" (list "user" "admin")) }}
API_TOKENS: {{ $spec | toJson | b64enc | quote }}
ADMIN_TOKEN: {{ $token | b64enc | quote }}
{{- else }}
{{- /* empty: outside production the services fall back to the development tokens */}}
API_TOKENS: ""
{{- end }}
{{- end }}
{{- end -}}

{{/* Env of every celery-stack container: secrets by key (never envFrom a Secret: only the keys
we name reach the process), settings from the ConfigMap, identity from the Downward API.
Call with (dict "root" $ "service" "api" "secretName" name). */}}
{{- define "celery-stack.env" -}}
{{- $root := .root -}}
{{- $own := .secretName | default (include "celery-stack.secretName" $root) -}}
- name: SERVICE_NAME
  value: {{ printf "celery-stack-%s" .service | quote }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.redis.existingSecret | default $own }}
      key: {{ ternary $root.Values.redis.existingSecretKey "REDIS_URL" (ne $root.Values.redis.existingSecret "") }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.database.existingSecret | default $own }}
      key: {{ ternary $root.Values.database.existingSecretKey "DATABASE_URL" (ne $root.Values.database.existingSecret "") }}
- name: API_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.auth.existingSecret | default $own }}
      key: {{ ternary $root.Values.auth.existingSecretKey "API_TOKENS" (ne $root.Values.auth.existingSecret "") }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_UID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "celery-stack.envFrom" -}}
- configMapRef:
    name: {{ include "celery-stack.fullname" . }}-config
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------- security */}}
{{- define "celery-stack.podSecurityContext" -}}
runAsNonRoot: {{ .Values.podSecurityContext.runAsNonRoot }}
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: {{ .Values.podSecurityContext.seccompProfileType }}
{{- end -}}

{{- define "celery-stack.securityContext" -}}
allowPrivilegeEscalation: {{ .Values.securityContext.allowPrivilegeEscalation }}
readOnlyRootFilesystem: {{ .Values.securityContext.readOnlyRootFilesystem }}
runAsNonRoot: {{ .Values.podSecurityContext.runAsNonRoot }}
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
privileged: false
{{- if .Values.securityContext.dropAllCapabilities }}
capabilities:
  drop: ["ALL"]
{{- end }}
seccompProfile:
  type: {{ .Values.podSecurityContext.seccompProfileType }}
{{- end -}}

{{/* /tmp is the only writable path: heartbeat file, Prometheus multiprocess files, Python's. */}}
{{- define "celery-stack.tmpVolume" -}}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{- define "celery-stack.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* ---------------------------------------------------------------- scheduling
Call with (dict "root" $ "c" <component values>). */}}
{{- define "celery-stack.scheduling" -}}
{{- $root := .root -}}
{{- with (.c.nodeSelector | default $root.Values.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.c.tolerations | default $root.Values.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.c.affinity | default $root.Values.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.c.priorityClassName | default $root.Values.priorityClassName) }}
priorityClassName: {{ . }}
{{- end }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Spread replicas over nodes unless the values give their own constraints.
Call with (dict "root" $ "c" <component values> "component" name). */}}
{{- define "celery-stack.topologySpread" -}}
topologySpreadConstraints:
{{- if .c.topologySpreadConstraints }}
  {{- toYaml .c.topologySpreadConstraints | nindent 2 }}
{{- else }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "celery-stack.selectorLabels" (dict "root" .root "component" .component) | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "celery-stack.selectorLabels" (dict "root" .root "component" .component) | nindent 8 }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------- pods */}}
{{- define "celery-stack.podAnnotations" -}}
checksum/config: {{ include "celery-stack.configData" .root | sha256sum }}
checksum/secret: {{ include "celery-stack.secretData" .root | sha256sum }}
{{- if and .metricsPort .root.Values.metrics.annotations (not (include "celery-stack.monitorsEnabled" .root)) }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .metricsPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "celery-stack.monitorsEnabled" -}}
{{- if and .Values.metrics.serviceMonitor.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}true{{- end -}}
{{- end -}}

{{- define "celery-stack.kedaEnabled" -}}
{{- if and .Values.keda.enabled (.Capabilities.APIVersions.Has "keda.sh/v1alpha1") -}}true{{- end -}}
{{- end -}}

{{/* Wait until the schema is at head: `celery-stack-migrate --check` in a loop (exec form:
the image's Python, no shell). */}}
{{- define "celery-stack.waitForMigrations" -}}
{{- if and .Values.migrations.enabled .Values.migrations.waitForMigrations }}
- name: wait-for-migrations
  image: {{ include "celery-stack.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - python
    - /opt/celery-stack/scripts/wait_for_migrations.py
    - {{ .Values.migrations.checkInterval | quote }}
  env:
    {{- include "celery-stack.env" (dict "root" . "service" "wait-for-migrations") | nindent 4 }}
  envFrom:
    {{- include "celery-stack.envFrom" . | nindent 4 }}
  resources:
    {{- toYaml .Values.migrations.resources | nindent 4 }}
  securityContext:
    {{- include "celery-stack.securityContext" . | nindent 4 }}
  volumeMounts:
    {{- include "celery-stack.tmpMount" . | nindent 4 }}
    - name: scripts
      mountPath: /opt/celery-stack/scripts
      readOnly: true
{{- end }}
{{- end -}}

{{- define "celery-stack.scriptsVolume" -}}
- name: scripts
  configMap:
    name: {{ include "celery-stack.fullname" . }}-scripts
    defaultMode: 0444
{{- end -}}

{{- define "celery-stack.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create -}}
{{- include "celery-stack.componentName" (dict "root" .root "component" .component) -}}
{{- else -}}
default
{{- end -}}
{{- end -}}

{{- define "celery-stack.beatLeaseName" -}}
{{- .Values.beat.leaseName | default (printf "%s-beat" (include "celery-stack.fullname" .)) -}}
{{- end -}}
