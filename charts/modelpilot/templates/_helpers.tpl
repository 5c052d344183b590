{{/* Full name of the release's objects. */}}
{{- define "modelpilot.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The app.kubernetes.io label set of every object. */}}
{{- define "modelpilot.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelpilot
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "modelpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "modelpilot.serviceAccountName" -}}
{{- default (include "modelpilot.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The permissions the operator uses, and nothing else (tests/chart compares them with the code). */}}
{{- define "modelpilot.rules" -}}
# kopf discovers the resources it watches through the CRD list (read-only).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: ["modelpilot.dev"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["modelpilot.dev"]
  resources: ["modeldeployments/status"]
  verbs: ["patch"]
# Serving Deployments (stable and canary tracks); a finished canary's Deployment is deleted.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The Service applications call, and per-track Services behind an HTTPRoute.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch", "delete"]
# Canary traffic splits and shadow traffic through the Gateway API (only used when it is installed).
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
