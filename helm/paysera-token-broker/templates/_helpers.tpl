{{/* Names and labels. */}}
{{- define "tokenBroker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokenBroker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tokenBroker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenBroker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tokenBroker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tokenBroker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: token-broker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tokenBroker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokenBroker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tokenBroker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Listeners. The ops port is forced on with TLS: kubelet and Prometheus have no client cert. */}}
{{- define "tokenBroker.opsEnabled" -}}
{{- if or .Values.tls.enabled .Values.opsPort.enabled }}true{{ end }}
{{- end }}

{{- define "tokenBroker.mainPortName" -}}
{{- ternary "https" "http" .Values.tls.enabled }}
{{- end }}

{{/* Port (name) that probes and Prometheus use. */}}
{{- define "tokenBroker.healthPortName" -}}
{{- if include "tokenBroker.opsEnabled" . }}ops{{ else }}http{{ end }}
{{- end }}

{{/* Paths inside the container. */}}
{{- define "tokenBroker.configDir" -}}/etc/token-broker{{- end }}
{{- define "tokenBroker.tlsDir" -}}/etc/token-broker/tls{{- end }}
{{- define "tokenBroker.secretsDir" -}}/run/secrets/token-broker{{- end }}

{{- define "tokenBroker.clientCaSecret" -}}
{{- default .Values.tls.existingSecret .Values.tls.clientCa.existingSecret }}
{{- end }}

{{/* Upper-cased name for an environment override: checkout -> CHECKOUT. */}}
{{- define "tokenBroker.envName" -}}
{{- upper . }}
{{- end }}

{{/* A TOML value: JSON strings, numbers, booleans and arrays of them are valid TOML. */}}
{{- define "tokenBroker.tomlValue" -}}
{{- toJson . }}
{{- end }}

{{/* `key = value` lines of a flat table, in key order; null values are left out. */}}
{{- define "tokenBroker.tomlTable" -}}
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ include "tokenBroker.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}

{{/* Redis URL with the password as a $(REDIS_PASSWORD) reference Kubernetes expands. */}}
{{- define "tokenBroker.redisUrlWithPassword" -}}
{{- $parts := splitn "://" 2 .Values.redis.url }}
{{- printf "%s://%s:$(REDIS_PASSWORD)@%s" $parts._0 .Values.redis.auth.username $parts._1 }}
{{- end }}

{{/* Every Secret the pods read, for Reloader. */}}
{{- define "tokenBroker.secretNames" -}}
{{- $names := list .Values.credentials.existingSecret }}
{{- if .Values.redis.urlSecret.name }}
{{- $names = append $names .Values.redis.urlSecret.name }}
{{- else if and .Values.redis.url .Values.redis.auth.existingSecret }}
{{- $names = append $names .Values.redis.auth.existingSecret }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $names = append $names .Values.tls.existingSecret }}
{{- if .Values.tls.clientCa.enabled }}
{{- $names = append $names (include "tokenBroker.clientCaSecret" .) }}
{{- end }}
{{- end }}
{{- $names | uniq | join "," }}
{{- end }}

{{/* Render-time checks for what the schema cannot express. */}}
{{- define "tokenBroker.validate" -}}
{{- if not .Values.clients }}
{{- fail "clients: at least one upstream client is required" }}
{{- end }}
{{- range $name, $caller := .Values.callers }}
{{- range $caller.clients }}
{{- if not (hasKey $.Values.clients .) }}
{{- fail (printf "callers.%s.clients: unknown client %q" $name .) }}
{{- end }}
{{- end }}
{{- end }}
{{- $inMemory := and (not .Values.redis.url) (not .Values.redis.urlSecret.name) }}
{{- if and $inMemory (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "redis.url: the in-memory store serves one instance only; set redis.url (or redis.urlSecret) for several replicas" }}
{{- end }}
{{- if and .Values.redis.url (contains "@" .Values.redis.url) }}
{{- fail "redis.url: must not carry credentials; use redis.auth.existingSecret or redis.urlSecret" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.existingSecret is required when tls.enabled" }}
{{- end }}
{{- if eq (int .Values.ports.http) (int .Values.ports.ops) }}
{{- fail "ports.ops must differ from ports.http" }}
{{- end }}
{{- /* The grace period covers the preStop pause, the broker's drain of in-flight requests (up
to 20 s, app/transport/server.py GRACEFUL_SHUTDOWN_SECONDS) and closing its connections. */}}
{{- $needed := add (int .Values.preStopSleepSeconds) 20 2 }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds must be at least preStopSleepSeconds + 22 (%d): the broker drains in-flight requests for up to 20 s after the pause" $needed) }}
{{- end }}
{{- end }}

{{/* PromQL matchers picking this release's series (alerts; see prometheusRule.selector). */}}
{{- define "tokenBroker.metricSelector" -}}
{{- default (printf "job=%q, namespace=%q" (include "tokenBroker.fullname" .) .Release.Namespace) .Values.prometheusRule.selector }}
{{- end }}

{{/* Where probes, Prometheus and `helm test` reach /health* over plain HTTP: the Service port. */}}
{{- define "tokenBroker.healthServicePort" -}}
{{- if include "tokenBroker.opsEnabled" . }}{{ .Values.service.opsPort }}{{ else }}{{ .Values.service.port }}{{ end }}
{{- end }}
