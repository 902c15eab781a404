{{/*
Names and labels, as `helm create` makes them.
*/}}
{{- define "kvm-manager.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvm-manager.fullname" -}}
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

{{- define "kvm-manager.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvm-manager.labels" -}}
helm.sh/chart: {{ include "kvm-manager.chart" . }}
{{ include "kvm-manager.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kvm-manager.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvm-manager.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The headless Service that gives each VM pod its stable DNS name. */}}
{{- define "kvm-manager.headlessName" -}}
{{- printf "%s-headless" (include "kvm-manager.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ConfigMap holding userdata/metadata: the user's own, or the chart's. */}}
{{- define "kvm-manager.configMapName" -}}
{{- default (include "kvm-manager.fullname" .) .Values.existingConfigMap }}
{{- end }}

{{/* The Secret holding VNC_PASSWORD, or empty when there is no password. */}}
{{- define "kvm-manager.vncSecretName" -}}
{{- if .Values.vncPasswordSecret }}
{{- .Values.vncPasswordSecret }}
{{- else if or .Values.vncPassword (and .Values.vnc .Values.vncPasswordGenerate) }}
{{- printf "%s-vnc" (include "kvm-manager.fullname" .) }}
{{- end }}
{{- end }}

{{/* Combinations of values that the schema cannot express; fail early with the fix. */}}
{{- define "kvm-manager.validate" -}}
{{- if and .Values.probesEnabled (eq (int .Values.httpPort) 0) }}
{{- fail "probesEnabled needs kvm-manager's HTTP server: set httpPort to a port (e.g. 8080), or probesEnabled: false" }}
{{- end }}
{{- if and .Values.vmService.enabled (not .Values.vmService.ports) }}
{{- fail "vmService.enabled needs at least one port in vmService.ports (e.g. [{name: ssh, port: 22}])" }}
{{- end }}
{{- end }}

{{/* SHARES from .Values.shares: TAG=/shares/TAG:ro|rw[:transport], comma separated. */}}
{{- define "kvm-manager.shares" -}}
{{- $entries := list }}
{{- range .Values.shares }}
{{- $entry := printf "%s=/shares/%s:%s" .tag .tag (ternary "rw" "ro" (eq .readOnly false)) }}
{{- with .transport }}{{- $entry = printf "%s:%s" $entry . }}{{- end }}
{{- $entries = append $entries $entry }}
{{- end }}
{{- join "," $entries }}
{{- end }}
