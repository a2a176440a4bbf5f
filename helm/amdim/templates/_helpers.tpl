{{/*
Names, labels, images and the shared pod pieces of the amdim chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "amdim.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource name prefix: fullnameOverride, else <release>-<chart> (just the
release name when it already contains the chart name). Truncated so that the
longest suffix ("-worker-headless") still fits a 63-character DNS label.
*/}}
{{- define "amdim.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "amdim.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "amdim.coordinator.fullname" -}}
{{- printf "%s-coordinator" (include "amdim.fullname" .) }}
{{- end }}

{{- define "amdim.worker.fullname" -}}
{{- printf "%s-worker" (include "amdim.fullname" .) }}
{{- end }}

{{- define "amdim.worker.headless" -}}
{{- printf "%s-worker-headless" (include "amdim.fullname" .) }}
{{- end }}

{{/* Selector labels; call with (dict "ctx" $ "component" "coordinator"). */}}
{{- define "amdim.selectorLabels" -}}
app.kubernetes.io/name: {{ include "amdim.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Standard labels plus commonLabels; same argument as amdim.selectorLabels. */}}
{{- define "amdim.labels" -}}
helm.sh/chart: {{ include "amdim.chart" .ctx }}
{{ include "amdim.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: amdim
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
A metadata `annotations:` block (commonAnnotations plus .extra) starting on a
new line, or nothing; (dict "ctx" $ "extra" map "indent" 2).
*/}}
{{- define "amdim.annotations" -}}
{{- $all := merge (deepCopy (default dict .extra)) (deepCopy (default dict .ctx.Values.commonAnnotations)) }}
{{- if $all }}
{{ dict "annotations" $all | toYaml | indent (int (default 2 .indent)) }}
{{- end }}
{{- end }}

{{/* An image reference from {registry, repository, tag, digest}; (dict "ctx" $ "image" map). */}}
{{- define "amdim.image" -}}
{{- $repo := .image.repository }}
{{- if .image.registry }}
{{- $repo = printf "%s/%s" .image.registry .image.repository }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag | toString) }}
{{- end }}
{{- end }}

{{/* The worker image: the CUDA one when worker.gpu.enabled. */}}
{{- define "amdim.worker.imageValues" -}}
{{- if .Values.worker.gpu.enabled }}
{{- toYaml .Values.worker.gpu.image }}
{{- else }}
{{- toYaml .Values.worker.image }}
{{- end }}
{{- end }}

{{- define "amdim.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "amdim.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret with the tokens and S3 credentials. */}}
{{- define "amdim.secretName" -}}
{{- default (printf "%s-secret" (include "amdim.fullname" .)) .Values.existingSecret }}
{{- end }}

{{/* The coordinator's gRPC address as the workers dial it (https:// with tls.enabled). */}}
{{- define "amdim.coordinator.url" -}}
{{- printf "%s://%s:%d" (ternary "https" "http" .Values.tls.enabled) (include "amdim.coordinator.fullname" .) (int .Values.coordinator.service.grpcPort) }}
{{- end }}

{{/*
The Secret with the coordinator's TLS certificate (tls.crt, tls.key and the
CA under tls.caKey): tls.existingSecret, or the one cert-manager fills for
the Certificate of tls-certificate.yaml. Used only with tls.enabled, and
fails there when neither source, or both, are set.
*/}}
{{- define "amdim.tls.secretName" -}}
{{- $t := .Values.tls }}
{{- $cm := $t.certManager }}
{{- if and $cm.enabled $t.existingSecret }}
{{- fail (printf "tls.existingSecret (%q) and tls.certManager.enabled=true are exclusive: use your own kubernetes.io/tls Secret or let cert-manager issue one, not both." $t.existingSecret) }}
{{- else if $cm.enabled }}
{{- if not $cm.issuerRef.name }}
{{- fail "tls.certManager.enabled=true needs tls.certManager.issuerRef.name: the cert-manager Issuer or ClusterIssuer (issuerRef.kind) that signs the coordinator's certificate." }}
{{- end }}
{{- default (printf "%s-tls" (include "amdim.coordinator.fullname" .)) $cm.secretName }}
{{- else if $t.existingSecret }}
{{- $t.existingSecret }}
{{- else }}
{{- fail "tls.enabled=true needs a certificate for the coordinator: set tls.existingSecret to a kubernetes.io/tls Secret (tls.crt, tls.key and ca.crt), or tls.certManager.enabled=true with tls.certManager.issuerRef to have cert-manager issue one." }}
{{- end }}
{{- end }}

{{/*
The DNS names the coordinator's certificate must hold: the Service as the
workers dial it (<svc>) and its namespaced forms.
*/}}
{{- define "amdim.tls.dnsNames" -}}
{{- $svc := include "amdim.coordinator.fullname" . }}
{{- $ns := .Release.Namespace }}
- {{ $svc }}
- {{ printf "%s.%s" $svc $ns }}
- {{ printf "%s.%s.svc" $svc $ns }}
- {{ printf "%s.%s.svc.%s" $svc $ns (default "cluster.local" .Values.tls.certManager.clusterDomain) }}
{{- end }}

{{/*
The AWS_* variables of the object store, each from the Secret and optional,
so that a Secret without S3 keys (a local or file:// checkpoint) is fine.
*/}}
{{- define "amdim.s3Env" -}}
{{- $secret := include "amdim.secretName" . }}
{{- range $env, $key := dict "AWS_ACCESS_KEY_ID" "aws-access-key-id" "AWS_SECRET_ACCESS_KEY" "aws-secret-access-key" "AWS_ENDPOINT_URL" "aws-endpoint-url" "AWS_REGION" "aws-region" "AWS_ALLOW_HTTP" "aws-allow-http" }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}

{{/* Pod-level fields shared by both components. */}}
{{- define "amdim.podCommon" -}}
serviceAccountName: {{ include "amdim.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* An httpGet probe; (dict "probe" values "path" "/healthz" "port" "http"). */}}
{{- define "amdim.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* Checksum of the Secret, so pods restart when tokens or credentials change. */}}
{{- define "amdim.secretChecksum" -}}
{{- if .Values.existingSecret }}
{{- printf "existing:%s" .Values.existingSecret | sha256sum }}
{{- else }}
{{- include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}
