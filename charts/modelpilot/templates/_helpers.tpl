{{/* The chart's name, or nameOverride. */}}
{{- define "modelpilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects: fullnameOverride, else release-name (once if they overlap). */}}
{{- define "modelpilot.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "modelpilot.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The app.kubernetes.io label set of every object. */}}
{{- define "modelpilot.labels" -}}
app.kubernetes.io/name: {{ include "modelpilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelpilot
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "modelpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelpilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The operator's ServiceAccount. With serviceAccount.create false, a name is required: falling back to
the namespace's `default` account would grant the operator's permissions to every pod that uses it. */}}
{{- define "modelpilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelpilot.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.create is false: set serviceAccount.name to the existing ServiceAccount the operator runs as" .Values.serviceAccount.name -}}
{{- end -}}
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
# Children are read from watches selected by the label app.kubernetes.io/managed-by=modelpilot
# (list, watch); get only before creating one, to see an object of someone else under its name.
# Serving Deployments (stable and canary tracks); a finished canary's Deployment is deleted.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The Service applications call, and per-track Services behind an HTTPRoute.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Canary traffic splits and shadow traffic through the Gateway API (only used when it is installed).
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# spec.networkPolicy.allowFrom: one NetworkPolicy per ModelDeployment that sets it.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# spec.disruptionBudget (default with replicas >= 2): one PodDisruptionBudget per ModelDeployment.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# spec.autoscaling: one HorizontalPodAutoscaler per ModelDeployment that sets it.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# spec.monitoring.latency: one PrometheusRule per ModelDeployment that sets it (only where the Prometheus
# Operator's CRDs are installed).
- apiGroups: ["monitoring.coreos.com"]
  resources: ["prometheusrules"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# spec.autoscaling.engine keda: one ScaledObject per ModelDeployment (only where KEDA's CRDs are installed).
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* A resource map as `cpu=100m,memory=256Mi` (the operator's MODELPILOT_SERVER_DEFAULT_* form); "none" if empty. */}}
{{- define "modelpilot.amounts" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}
{{- $pairs = append $pairs (printf "%s=%v" $k $v) -}}
{{- end -}}
{{- if $pairs }}{{ join "," $pairs }}{{ else }}none{{ end -}}
{{- end -}}

{{/* A string map as `key=value,...` (MODELPILOT_SERVER_NODE_SELECTOR); empty if empty. */}}
{{- define "modelpilot.pairs" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
