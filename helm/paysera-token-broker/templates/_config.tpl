{{/*
The broker's config.toml, flush left. Rendered from values; holds no secret: client secrets are
files under the secrets dir, API-key hashes and the Redis password arrive as environment
overrides (see deployment.yaml).
*/}}
{{- define "tokenBroker.configToml" -}}
{{- $secretsDir := include "tokenBroker.secretsDir" . -}}
{{- $tlsDir := include "tokenBroker.tlsDir" . -}}
[server]
host = "0.0.0.0"
port = {{ int .Values.ports.http }}
{{- if include "tokenBroker.opsEnabled" . }}
ops_port = {{ int .Values.ports.ops }}
{{- end }}
{{- if .Values.tls.enabled }}
tls_cert_file = "{{ $tlsDir }}/tls.crt"
tls_key_file = "{{ $tlsDir }}/tls.key"
{{- if .Values.tls.clientCa.enabled }}
tls_client_ca_file = "{{ $tlsDir }}/ca.crt"
tls_client_cert_required = {{ .Values.tls.clientCertRequired }}
{{- end }}
{{- end }}
{{- include "tokenBroker.tomlTable" .Values.config.server }}

[store]
{{- if and .Values.redis.url (not .Values.redis.urlSecret.name) }}
redis_url = {{ include "tokenBroker.tomlValue" .Values.redis.url }}
{{- end }}
cluster = {{ .Values.redis.cluster }}
{{- include "tokenBroker.tomlTable" .Values.config.store }}

[budget]
{{- include "tokenBroker.tomlTable" .Values.config.budget }}

[proxy]
{{- include "tokenBroker.tomlTable" .Values.config.proxy }}
{{- with .Values.config.tracing }}

[tracing]
{{- include "tokenBroker.tomlTable" . }}
{{- end }}
{{- range $name, $client := .Values.clients }}

[clients.{{ $name }}]
client_secret_file = "{{ $secretsDir }}/clients/{{ $name }}/client_secret"
{{- include "tokenBroker.tomlTable" $client }}
{{- end }}
{{- range $name, $caller := .Values.callers }}

[callers.{{ $name }}]
{{- include "tokenBroker.tomlTable" $caller }}
{{- end }}
{{- end }}
