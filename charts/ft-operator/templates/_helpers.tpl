{{/* The operator's name: its Deployment, Lease, Services and roles. */}}
{{- define "ft-operator.name" -}}
ft-operator
{{- end }}

{{/* The operator's namespace: operatorNamespace, else the release's. */}}
{{- define "ft-operator.namespace" -}}
{{ .Values.operatorNamespace | default .Release.Namespace }}
{{- end }}

{{- define "ft-operator.selectorLabels" -}}
app.kubernetes.io/name: ft-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ft-operator.labels" -}}
{{ include "ft-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ft-operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "ft-operator.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* Whether the webhook may be used: not when confinement is native only. */}}
{{- define "ft-operator.webhook" -}}
{{- if ne .Values.confinement "native" }}true{{ end }}
{{- end }}

{{- define "ft-operator.webhookService" -}}
ft-operator-webhook
{{- end }}

{{- define "ft-operator.certManager" -}}
{{- if and (include "ft-operator.webhook" .) (eq .Values.webhook.certificate.source "cert-manager") }}true{{ end }}
{{- end }}

{{/* Whether the Role in Velero's namespace is rendered. */}}
{{- define "ft-operator.veleroRbac" -}}
{{- if eq .Values.velero.rbac "always" }}true
{{- else if eq .Values.velero.rbac "auto" }}
{{- if lookup "v1" "Namespace" "" .Values.velero.namespace }}true{{ end }}
{{- end }}
{{- end }}

{{/* Annotations of what outlives the release. */}}
{{- define "ft-operator.keep" -}}
helm.sh/resource-policy: keep
{{- end }}

