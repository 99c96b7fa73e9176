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
{{- if and (kindIs "map" $v) (has $k (list "autoscaling" "pdb" "probes")) -}}
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

{{/* The admin token is generated in the cluster by a hook Job (templates/auth/), never at
render time: a render-time token changes on every `helm template` (Argo CD). */}}
{{- define "celery-stack.generatesAdminToken" -}}
{{- if and (not .Values.auth.existingSecret) (not .Values.auth.tokens) .Values.auth.generateAdminToken -}}true{{- end -}}
{{- end -}}

{{- define "celery-stack.adminTokenSecret" -}}
{{- printf "%s-admin-token" (include "celery-stack.fullname" .) -}}
{{- end -}}

{{/* Hook annotations of the admin-token objects; call with the weight. */}}
{{- define "celery-stack.adminTokenHook" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ . | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end -}}

{{/* Percent-decoding of a URL component (userinfo): Sprig has no decoder. Multi-byte (non-ASCII)
escapes are refused rather than mis-decoded. */}}
{{- define "celery-stack.urlDecode" -}}
{{- $hex := dict "0" 0 "1" 1 "2" 2 "3" 3 "4" 4 "5" 5 "6" 6 "7" 7 "8" 8 "9" 9 "a" 10 "b" 11 "c" 12 "d" 13 "e" 14 "f" 15 -}}
{{- $parts := splitList "%" . -}}
{{- $out := first $parts -}}
{{- range $chunk := rest $parts -}}
{{- $hi := substr 0 1 $chunk | lower -}}
{{- $lo := substr 1 2 $chunk | lower -}}
{{- if or (lt (len $chunk) 2) (not (hasKey $hex $hi)) (not (hasKey $hex $lo)) -}}
{{- fail (printf "redis.url: malformed percent-escape %%%s" (substr 0 2 $chunk)) -}}
{{- end -}}
{{- $code := add (mul (index $hex $hi) 16) (index $hex $lo) -}}
{{- if ge (int $code) 128 -}}
{{- fail "redis.url: a non-ASCII percent-escaped credential cannot be decoded at render time; use redis.existingSecret with the keda.redis keys" -}}
{{- end -}}
{{- $out = printf "%s%c%s" $out (int $code) (substr 2 (len $chunk) $chunk) -}}
{{- end -}}
{{- $out -}}
{{- end -}}

{{/* redis.url parsed once, for everything that needs its parts (the chart's Secret, KEDA's
TriggerAuthentication and triggers): address host:port (6379 by default), username and password
percent-decoded, database index from the path, TLS from the rediss scheme. Returns YAML. */}}
{{- define "celery-stack.redisTarget" -}}
{{- $u := urlParse (include "celery-stack.redisUrl" .) -}}
{{- $port := regexFind ":[0-9]+$" $u.host | trimPrefix ":" | default "6379" -}}
{{- $userinfo := $u.userinfo | default "" -}}
{{- $user := "" -}}{{- $password := "" -}}
{{- if contains ":" $userinfo -}}
{{- $user = regexReplaceAll ":.*$" $userinfo "" -}}
{{- $password = regexReplaceAll "^[^:]*:" $userinfo "" -}}
{{- else -}}
{{- $user = $userinfo -}}{{- /* redis://name@host: a username without password, as redis-py reads it */ -}}
{{- end -}}
{{- $db := trimPrefix "/" $u.path | default "0" -}}
{{- if not (regexMatch "^[0-9]+$" $db) -}}
{{- fail (printf "redis.url: the path must be a database index (/0, /2 ...), got %q" $u.path) -}}
{{- end -}}
address: {{ printf "%s:%s" $u.hostname $port | quote }}
username: {{ include "celery-stack.urlDecode" $user | quote }}
password: {{ include "celery-stack.urlDecode" $password | quote }}
databaseIndex: {{ $db | atoi }}
enableTLS: {{ eq $u.scheme "rediss" }}
{{- end -}}

{{/* What KEDA's Redis triggers need besides the Secret: database index and TLS. From redis.url
when the chart holds the URL (explicit keda.redis values must agree with it), else the explicit
values (default 0 / false). Returns YAML. */}}
{{- define "celery-stack.kedaRedis" -}}
{{- $k := .Values.keda.redis -}}
{{- if .Values.redis.existingSecret -}}
databaseIndex: {{ $k.databaseIndex | default 0 }}
enableTLS: {{ $k.enableTLS | default false }}
{{- else -}}
{{- $t := include "celery-stack.redisTarget" . | fromYaml -}}
{{- if and (not (kindIs "invalid" $k.databaseIndex)) (ne (int $k.databaseIndex) (int $t.databaseIndex)) -}}
{{- fail (printf "keda.redis.databaseIndex (%v) contradicts redis.url (database %v): leave it empty (null) to derive it from the URL" $k.databaseIndex $t.databaseIndex) -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $k.enableTLS)) (ne $k.enableTLS $t.enableTLS) -}}
{{- fail (printf "keda.redis.enableTLS (%v) contradicts the scheme of redis.url (TLS %v): leave it empty (null) to derive it from the URL" $k.enableTLS $t.enableTLS) -}}
{{- end -}}
databaseIndex: {{ $t.databaseIndex }}
enableTLS: {{ $t.enableTLS }}
{{- end -}}
{{- end -}}

{{/* The migrations Job is a pre-install/pre-upgrade hook (migrations.useHelmHooks), except with
the bundled PostgreSQL: hooks run before the release's other objects are created, so the hook would
wait for a database that only comes after it, until its deadline, and `helm install` would fail.
There it is the plain Job (named after its spec), which the wait-for-migrations init containers
wait for. "true" or "". */}}
{{- define "celery-stack.migrationsHook" -}}
{{- if and .Values.migrations.useHelmHooks (not .Values.evaluation.postgresql.enabled) -}}true{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- evaluation stores
The bundled Redis / PostgreSQL (evaluation.*.enabled, templates/evaluation/): the connection URLs
then point at their Services. A URL or existingSecret the user gave as well would be silently
ignored, so it fails instead; the URL equal to the chart's default counts as not given. */}}
{{- define "celery-stack.evaluationName" -}}
{{- include "celery-stack.componentName" (dict "root" .root "component" .store) -}}
{{- end -}}

{{- define "celery-stack.evaluationConflict" -}}
{{- $v := index .root.Values .group -}}
{{- if $v.existingSecret -}}
{{- fail (printf "evaluation.%s.enabled: %s.existingSecret (%s) would point the stack at another server than the bundled %s; unset %s.existingSecret, or set evaluation.%s.enabled=false to use that server" .store .group $v.existingSecret .store .group .store) -}}
{{- end -}}
{{- if and (ne $v.url .default) (ne $v.url .bundled) -}}
{{- fail (printf "evaluation.%s.enabled: %s.url (%s) points at another server than the bundled %s; leave %s.url at its default, or set evaluation.%s.enabled=false to use that server" .store .group $v.url .store .group .store) -}}
{{- end -}}
{{- end -}}

{{- define "celery-stack.redisUrl" -}}
{{- if .Values.evaluation.redis.enabled -}}
{{- $url := printf "redis://%s:%v/0" (include "celery-stack.evaluationName" (dict "root" . "store" "redis")) .Values.redis.port -}}
{{- include "celery-stack.evaluationConflict" (dict "root" . "store" "redis" "group" "redis" "default" "redis://redis-master:6379/0" "bundled" $url) -}}
{{- $url -}}
{{- else -}}
{{- .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{- define "celery-stack.databaseUrl" -}}
{{- $pg := .Values.evaluation.postgresql -}}
{{- if $pg.enabled -}}
{{- if not $pg.password -}}
{{- fail "evaluation.postgresql.password: the bundled PostgreSQL needs a password (the chart never generates one at render time, so GitOps renders stay stable): --set evaluation.postgresql.password=$(openssl rand -hex 16)" -}}
{{- end -}}
{{- $url := printf "postgresql+asyncpg://celery_stack:%s@%s:%v/celery_stack" (urlquery $pg.password) (include "celery-stack.evaluationName" (dict "root" . "store" "postgresql")) .Values.database.port -}}
{{- include "celery-stack.evaluationConflict" (dict "root" . "store" "postgresql" "group" "database" "default" "postgresql+asyncpg://celery_stack@postgresql:5432/celery_stack" "bundled" $url) -}}
{{- $url -}}
{{- else -}}
{{- .Values.database.url -}}
{{- end -}}
{{- end -}}

{{- define "celery-stack.secretData" -}}
{{- if not .Values.redis.existingSecret }}
REDIS_URL: {{ include "celery-stack.redisUrl" . | b64enc | quote }}
{{- /* KEDA's Redis scaler takes host:port, a username and a password, not a URL. */}}
{{- $t := include "celery-stack.redisTarget" . | fromYaml }}
REDIS_ADDRESS: {{ $t.address | b64enc | quote }}
{{- if $t.username }}
REDIS_USERNAME: {{ $t.username | b64enc | quote }}
{{- end }}
{{- if $t.password }}
REDIS_PASSWORD: {{ $t.password | b64enc | quote }}
{{- end }}
{{- end }}
{{- if not .Values.database.existingSecret }}
DATABASE_URL: {{ include "celery-stack.databaseUrl" . | b64enc | quote }}
{{- end }}
{{- if not .Values.auth.existingSecret }}
{{- if .Values.auth.tokens }}
API_TOKENS: {{ .Values.auth.tokens | toJson | b64enc | quote }}
{{- else if .Values.auth.generateAdminToken }}
{{- /* in <fullname>-admin-token, made in the cluster by the admin-token hook Job */}}
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
      {{- if include "celery-stack.generatesAdminToken" $root }}
      name: {{ include "celery-stack.adminTokenSecret" $root }}
      key: API_TOKENS
      {{- else }}
      name: {{ $root.Values.auth.existingSecret | default $own }}
      key: {{ ternary $root.Values.auth.existingSecretKey "API_TOKENS" (ne $root.Values.auth.existingSecret "") }}
      {{- end }}
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
{{- with .c }}{{- with .podAnnotations }}
{{ toYaml . }}
{{- end }}{{- end }}
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
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
{{- end -}}

{{- define "celery-stack.scriptsVolume" -}}
- name: scripts
  configMap:
    name: {{ include "celery-stack.fullname" . }}-scripts
    defaultMode: 0444
{{- end -}}

{{/* A component's ServiceAccount: serviceAccount.name.<component> when given (created when
serviceAccount.create, else it must exist), else <fullname>-<component> when created, else the
namespace's `default` - never for a component that holds RBAC (beat's Lease Role, the admin-token
hook): check-values refuses that. Call with (dict "root" $ "component" "beat"). */}}
{{- define "celery-stack.serviceAccountName" -}}
{{- $sa := .root.Values.serviceAccount -}}
{{- $given := index $sa.name (.component | replace "-" "_" | camelcase | untitle) | default "" -}}
{{- if $given -}}
{{- $given -}}
{{- else if $sa.create -}}
{{- include "celery-stack.componentName" (dict "root" .root "component" .component) -}}
{{- else -}}
default
{{- end -}}
{{- end -}}

{{/* Beat's leader election: a Kubernetes Lease when beat may reach the API server (no
NetworkPolicy, or networkPolicy.kubeAPIServerCIDRs set), else the Redis lease with its fencing
epoch - never an egress rule open to any address. */}}
{{- define "celery-stack.beatElection" -}}
{{- $np := .Values.networkPolicy -}}
{{- $reachable := or (not $np.enabled) $np.kubeAPIServerCIDRs -}}
{{- $e := .Values.beat.election | default (ternary "kubernetes" "redis" (not (empty $reachable))) -}}
{{- if and (eq $e "kubernetes") (not $reachable) -}}
{{- fail "beat.election=kubernetes with networkPolicy.enabled needs networkPolicy.kubeAPIServerCIDRs (the API server endpoints: kubectl get endpoints kubernetes); or leave beat.election empty to use the Redis lease" -}}
{{- end -}}
{{- $e -}}
{{- end -}}

{{- define "celery-stack.beatLeaseName" -}}
{{- .Values.beat.leaseName | default (printf "%s-beat" (include "celery-stack.fullname" .)) -}}
{{- end -}}


{{/* ---------------------------------------------------------------- extension points
Per component (api, beat, each queue): extraEnvFrom, extraVolumes, extraVolumeMounts, sidecars,
extraInitContainers, podAnnotations, probes; global extraVolumes/extraVolumeMounts reach every
celery-stack container (e.g. a CA bundle for TLS to Redis/PostgreSQL). Call with
(dict "root" $ "c" <component values>). */}}
{{- define "celery-stack.extraVolumeMounts" -}}
{{- with .root.Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- with .c.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "celery-stack.extraVolumes" -}}
{{- with .root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- with .c.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "celery-stack.initContainers" -}}
{{- $wait := include "celery-stack.waitForMigrations" .root | trim -}}
{{- if and .wait $wait }}
{{ $wait }}
{{- end }}
{{- with .c.extraInitContainers }}
{{ toYaml . }}
{{- end }}
{{- end -}}
