{{/*
Names, labels, images and the replayer's TOML: defined once here, used by every template.
*/}}

{{- define "tapwire.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-tapwire", or the release name alone when it already contains the chart name. */}}
{{- define "tapwire.fullname" -}}
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

{{/* Component names, kept short enough for the suffixes Kubernetes adds. */}}
{{- define "tapwire.listener.fullname" -}}
{{- printf "%s-listener" (include "tapwire.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- define "tapwire.replayer.fullname" -}}
{{- printf "%s-replayer" (include "tapwire.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}
{{/* The headless Service listeners resolve: one address per ready replayer pod. */}}
{{- define "tapwire.replayer.headless" -}}
{{- printf "%s-replayer-pods" (include "tapwire.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "tapwire.replayer.headlessFQDN" -}}
{{- printf "%s.%s.svc.%s" (include "tapwire.replayer.headless" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "tapwire.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "tapwire.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tapwire
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include with (dict "root" $ "component" "listener"). */}}
{{- define "tapwire.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tapwire.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tapwire.componentLabels" -}}
{{ include "tapwire.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* repository@digest, or repository:tag (the tag defaults to the appVersion). */}}
{{- define "tapwire.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "tapwire.grpcScheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* Secret names of the TLS material: cert-manager's, or the existing ones. */}}
{{- define "tapwire.tls.replayerSecret" -}}
{{- if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "tapwire.replayer.fullname" .) }}
{{- else }}
{{- required "tls.existingSecrets.replayer is required when tls.enabled and certManager is off" .Values.tls.existingSecrets.replayer }}
{{- end }}
{{- end }}
{{- define "tapwire.tls.listenerSecret" -}}
{{- if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "tapwire.listener.fullname" .) }}
{{- else }}
{{- required "tls.existingSecrets.listener is required when tls.enabled and certManager is off" .Values.tls.existingSecrets.listener }}
{{- end }}
{{- end }}
{{- define "tapwire.tokenSecret" -}}
{{- required "token.existingSecret is required when token.enabled" .Values.token.existingSecret }}
{{- end }}

{{/*
The replayer's config file. Helm's toToml writes every YAML number as a float (`rate = 100.0`),
which the replayer rightly refuses for integer keys, so the TOML is written here: top-level
scalars and arrays, then each table as [name] and each array of tables ([[target]]) as
sections, deeper tables inline.
*/}}
{{- define "tapwire.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "tapwire.toml.value" -}}
{{- if kindIs "map" . }}
{{- $fields := list }}
{{- range $key, $value := . }}
{{- $fields = append $fields (printf "%s = %s" (include "tapwire.toml.key" $key) (include "tapwire.toml.value" $value)) }}
{{- end }}
{{- printf "{ %s }" (join ", " $fields) }}
{{- else if kindIs "slice" . }}
{{- $items := list }}
{{- range . }}
{{- $items = append $items (include "tapwire.toml.value" .) }}
{{- end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if kindIs "string" . }}
{{- toJson . }}
{{- else if kindIs "bool" . }}
{{- printf "%t" . }}
{{- else if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) }}
{{- if eq (float64 .) (floor .) }}{{ printf "%d" (int64 .) }}{{ else }}{{ printf "%v" . }}{{ end }}
{{- else }}
{{- fail (printf "replayer.engine: cannot write %v (%s) as TOML" . (kindOf .)) }}
{{- end }}
{{- end }}

{{/* A table's own keys: scalars, arrays and inline tables, one per line. */}}
{{- define "tapwire.toml.body" -}}
{{- range $key, $value := . }}
{{ include "tapwire.toml.key" $key }} = {{ include "tapwire.toml.value" $value }}
{{- end }}
{{- end }}

{{- define "tapwire.toml.document" -}}
{{- $scalars := dict }}
{{- $tables := dict }}
{{- $tableArrays := dict }}
{{- range $key, $value := . }}
{{- if kindIs "map" $value }}
{{- $_ := set $tables $key $value }}
{{- else if and (kindIs "slice" $value) $value (kindIs "map" (first $value)) }}
{{- $_ := set $tableArrays $key $value }}
{{- else }}
{{- $_ := set $scalars $key $value }}
{{- end }}
{{- end }}
{{- include "tapwire.toml.body" $scalars }}
{{- range $key, $value := $tables }}

[{{ include "tapwire.toml.key" $key }}]
{{- include "tapwire.toml.body" $value }}
{{- end }}
{{- range $key, $items := $tableArrays }}
{{- range $items }}

[[{{ include "tapwire.toml.key" $key }}]]
{{- include "tapwire.toml.body" . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The whole replayer config: the user's engine settings plus what the chart decides. */}}
{{- define "tapwire.replayer.config" -}}
{{- $config := deepCopy .Values.replayer.engine }}
{{- $_ := set $config "grpc_listen" (printf "0.0.0.0:%d" (int .Values.replayer.grpcPort)) }}
{{- $_ := set $config "metrics_listen" (printf "0.0.0.0:%d" (int .Values.replayer.metricsPort)) }}
{{- if .Values.token.enabled }}
{{- $_ := set $config "token_file" "/etc/tapwire/token/token" }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $_ := set $config "tls" (dict "cert" "/etc/tapwire/tls/tls.crt" "key" "/etc/tapwire/tls/tls.key" "client_ca" "/etc/tapwire/tls/ca.crt") }}
{{- end }}
# tapwire-replayer configuration, written by the tapwire chart from replayer.engine.
{{ include "tapwire.toml.document" $config }}
{{- end }}
