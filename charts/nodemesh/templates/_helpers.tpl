{{/* Labels every object carries. */}}
{{- define "nodemesh.labels" -}}
app.kubernetes.io/part-of: nodemesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The nodemesh image. */}}
{{- define "nodemesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The CA's in-cluster address. */}}
{{- define "nodemesh.caAddress" -}}
https://nodemesh-ca.{{ .Release.Namespace }}.svc:{{ .Values.ca.grpcPort }}
{{- end -}}

{{/* ServiceAccounts allowed to call the CA, comma-separated. */}}
{{- define "nodemesh.allowedCallers" -}}
{{- $callers := list (printf "%s/nodemesh-proxy" .Release.Namespace) -}}
{{- if .Values.ca.allowIstioZtunnel -}}{{- $callers = append $callers "istio-system/ztunnel" -}}{{- end -}}
{{- range .Values.ca.extraAllowedCallers -}}{{- $callers = append $callers . -}}{{- end -}}
{{- join "," $callers -}}
{{- end -}}
