{{/* Names, labels and the addresses the templates share. */}}

{{- define "bulkhead.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Base name of every resource; kept short enough for the suffixes below. */}}
{{- define "bulkhead.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bulkhead.controlName" -}}
{{- printf "%s-control" (include "bulkhead.fullname" .) -}}
{{- end -}}

{{- define "bulkhead.etcdName" -}}
{{- printf "%s-etcd" (include "bulkhead.fullname" .) -}}
{{- end -}}

{{- define "bulkhead.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bulkhead.controlName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object: the pod-template labels plus name and instance. */}}
{{- define "bulkhead.labels" -}}
app.kubernetes.io/name: {{ include "bulkhead.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "bulkhead.podLabels" . }}
{{- end -}}

{{/* Labels pod templates add to their selector labels (which carry name and instance). */}}
{{- define "bulkhead.podLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bulkhead
{{- end -}}

{{/* Selector labels: stable across upgrades, so never the version. */}}
{{- define "bulkhead.controlSelectorLabels" -}}
app.kubernetes.io/name: {{ include "bulkhead.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "bulkhead.etcdSelectorLabels" -}}
app.kubernetes.io/name: {{ include "bulkhead.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: etcd
{{- end -}}

{{- define "bulkhead.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Cluster-internal DNS suffix of the release namespace. */}}
{{- define "bulkhead.svcSuffix" -}}
{{- printf "%s.svc.%s" .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* DNS name of bundled etcd member $i: pod.headless-service.namespace.svc.domain */}}
{{- define "bulkhead.etcdMemberHost" -}}
{{- printf "%s-%d.%s.%s" (include "bulkhead.etcdName" .root) (int .index) (include "bulkhead.etcdName" .root) (include "bulkhead.svcSuffix" .root) -}}
{{- end -}}

{{- define "bulkhead.etcdScheme" -}}
{{- ternary "https" "http" (and .Values.etcd.bundled.enabled .Values.etcd.bundled.tls.enabled) -}}
{{- end -}}

{{/* Client URLs the control plane dials: every bundled member, or the external list. */}}
{{- define "bulkhead.etcdEndpoints" -}}
{{- if .Values.etcd.bundled.enabled -}}
{{- $root := . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.bundled.replicas) -}}
{{- $host := include "bulkhead.etcdMemberHost" (dict "root" $root "index" $i) -}}
{{- $urls = append $urls (printf "%s://%s:2379" (include "bulkhead.etcdScheme" $root) $host) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- end -}}
{{- end -}}

{{/* etcd's --initial-cluster: name=peer-URL for every member. */}}
{{- define "bulkhead.etcdInitialCluster" -}}
{{- $root := . -}}
{{- $members := list -}}
{{- range $i := until (int .Values.etcd.bundled.replicas) -}}
{{- $host := include "bulkhead.etcdMemberHost" (dict "root" $root "index" $i) -}}
{{- $members = append $members (printf "%s-%d=%s://%s:2380" (include "bulkhead.etcdName" $root) $i (include "bulkhead.etcdScheme" $root) $host) -}}
{{- end -}}
{{- join "," $members -}}
{{- end -}}

{{/* Whether the control plane mounts an etcd client TLS Secret, and which. */}}
{{- define "bulkhead.etcdClientSecret" -}}
{{- if and .Values.etcd.bundled.enabled .Values.etcd.bundled.tls.enabled -}}
{{- .Values.etcd.bundled.tls.clientSecret -}}
{{- else if and (not .Values.etcd.bundled.enabled) .Values.etcd.external.tls.enabled -}}
{{- .Values.etcd.external.tls.secret -}}
{{- end -}}
{{- end -}}

{{- define "bulkhead.etcdClientCert" -}}
{{- if .Values.etcd.bundled.enabled -}}true{{- else if .Values.etcd.external.tls.clientCertificate -}}true{{- end -}}
{{- end -}}

{{/*
Checks the values that no schema can: combinations and required inputs. Included by
every template that depends on them, so `helm template` and `helm install` stop with
one clear message instead of rendering a control plane that cannot start.
*/}}
{{- define "bulkhead.validate" -}}
{{- if not (contains "-----BEGIN CERTIFICATE-----" .Values.trustBundle.pem) -}}
{{- fail "trustBundle.pem is required: the PEM root certificate(s) of the mesh, e.g. --set-file trustBundle.pem=ca/bundle.crt (from `bulkheadctl ca init`)" -}}
{{- end -}}
{{- if not .Values.issuer.existingSecret -}}
{{- fail "issuer.existingSecret is required: a Secret with the issuer certificate and key (the chart never generates CA keys)" -}}
{{- end -}}
{{- if and .Values.etcd.bundled.enabled .Values.etcd.external.endpoints -}}
{{- fail "choose one store: etcd.bundled.enabled=true or etcd.external.endpoints, not both" -}}
{{- end -}}
{{- if and (not .Values.etcd.bundled.enabled) (not .Values.etcd.external.endpoints) -}}
{{- fail "Bulkhead needs etcd: set etcd.external.endpoints, or etcd.bundled.enabled=true" -}}
{{- end -}}
{{- if and (not .Values.etcd.bundled.enabled) .Values.etcd.external.tls.enabled -}}
{{- if not .Values.etcd.external.tls.secret -}}
{{- fail "etcd.external.tls.secret is required when etcd.external.tls.enabled is true" -}}
{{- end -}}
{{- range .Values.etcd.external.endpoints -}}
{{- if not (hasPrefix "https://" .) -}}
{{- fail (printf "etcd.external.endpoints: %s is not https:// but etcd.external.tls.enabled is true" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.etcd.bundled.enabled .Values.etcd.bundled.tls.enabled -}}
{{- if or (not .Values.etcd.bundled.tls.serverSecret) (not .Values.etcd.bundled.tls.clientSecret) -}}
{{- fail "etcd.bundled.tls.serverSecret and etcd.bundled.tls.clientSecret are required when etcd.bundled.tls.enabled is true" -}}
{{- end -}}
{{- end -}}
{{- if .Values.webhook.enabled -}}
{{- if not .Values.webhook.tlsSecret -}}
{{- fail "webhook.tlsSecret is required when webhook.enabled is true: a kubernetes.io/tls Secret with the webhook's serving certificate" -}}
{{- end -}}
{{- if and (not .Values.webhook.caBundle) (not (hasKey .Values.webhook.annotations "cert-manager.io/inject-ca-from")) -}}
{{- fail "webhook.caBundle is required when webhook.enabled is true: the CA (PEM or base64) that signed webhook.tlsSecret, e.g. --set-file webhook.caBundle=webhook-ca.crt" -}}
{{- end -}}
{{- end -}}
{{- end -}}
