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

{{/* The issuer Secret the control plane mounts: the chart's own when the issuer is
given inline (issuer.cert/key/bundle), else issuer.existingSecret. */}}
{{- define "bulkhead.issuerSecret" -}}
{{- if .Values.issuer.cert -}}
{{- printf "%s-issuer" (include "bulkhead.fullname" .) -}}
{{- else -}}
{{- .Values.issuer.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The keys of the issuer Secret: fixed for the chart's own, configurable otherwise. */}}
{{- define "bulkhead.issuerKeys" -}}
{{- if .Values.issuer.cert -}}
{{- dict "cert" "issuer.crt" "key" "issuer.key" "bundle" "bundle.crt" | toJson -}}
{{- else -}}
{{- dict "cert" .Values.issuer.certKey "key" .Values.issuer.keyKey "bundle" .Values.issuer.bundleKey | toJson -}}
{{- end -}}
{{- end -}}

{{/* "true" when the control plane makes and renews the webhook's certificate itself and
keeps the webhook configuration's caBundle (the default: no webhook.tlsSecret). */}}
{{- define "bulkhead.webhookSelfManaged" -}}
{{- if and .Values.webhook.enabled (not .Values.webhook.tlsSecret) -}}true{{- end -}}
{{- end -}}

{{/* The MutatingWebhookConfiguration's name: cluster-scoped, so the namespace is in it. */}}
{{- define "bulkhead.webhookName" -}}
{{- printf "%s-%s-injector" (include "bulkhead.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* "true" when the control plane talks to the API server (Nodes, or the webhook's caBundle). */}}
{{- define "bulkhead.usesApiServer" -}}
{{- if or .Values.nodeTopology.enabled (include "bulkhead.webhookSelfManaged" .) -}}true{{- end -}}
{{- end -}}

{{/* Whether the control plane gets its service-account token at all. */}}
{{- define "bulkhead.mountsToken" -}}
{{- if or .Values.serviceAccountTokens.enabled (include "bulkhead.usesApiServer" .) -}}true{{- else -}}false{{- end -}}
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
{{- $issuer := .Values.issuer -}}
{{- $inline := dict "cert" "ca/issuer.crt" "key" "ca/issuer.key" "bundle" "ca/bundle.crt" -}}
{{- if or $issuer.cert $issuer.key $issuer.bundle -}}
{{- range $value := list "cert" "key" "bundle" -}}
{{- if not (get $issuer $value) -}}
{{- fail (printf "issuer.%s is required when the issuer is given inline: --set-file issuer.%s=%s (from `bulkheadctl ca init`)" $value $value (get $inline $value)) -}}
{{- end -}}
{{- end -}}
{{- range $value := list "cert" "bundle" -}}
{{- if not (contains "-----BEGIN CERTIFICATE-----" (get $issuer $value)) -}}
{{- fail (printf "issuer.%s must be PEM certificates (--set-file issuer.%s=%s)" $value $value (get $inline $value)) -}}
{{- end -}}
{{- end -}}
{{- if not (contains "PRIVATE KEY-----" $issuer.key) -}}
{{- fail "issuer.key must be a PEM private key (--set-file issuer.key=ca/issuer.key)" -}}
{{- end -}}
{{- else if not $issuer.existingSecret -}}
{{- fail "the issuer is required: --set-file issuer.cert=ca/issuer.crt --set-file issuer.key=ca/issuer.key --set-file issuer.bundle=ca/bundle.crt (from `bulkheadctl ca init`), or issuer.existingSecret naming a Secret with issuer.crt, issuer.key and bundle.crt" -}}
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
{{- $certManager := hasKey .Values.webhook.annotations "cert-manager.io/inject-ca-from" -}}
{{- if and .Values.webhook.enabled .Values.webhook.tlsSecret -}}
{{- if and (not .Values.webhook.caBundle) (not $certManager) -}}
{{- fail "webhook.caBundle is required with webhook.tlsSecret: the CA (PEM or base64) that signed that certificate, e.g. --set-file webhook.caBundle=webhook-ca.crt (or let cert-manager inject it: webhook.annotations cert-manager.io/inject-ca-from)" -}}
{{- end -}}
{{- else if .Values.webhook.enabled -}}
{{- if .Values.webhook.caBundle -}}
{{- fail "webhook.caBundle is set but webhook.tlsSecret is not: without webhook.tlsSecret the control plane makes the webhook's certificate and keeps the caBundle itself; remove webhook.caBundle or bring the certificate too" -}}
{{- end -}}
{{- if $certManager -}}
{{- fail "webhook.annotations cert-manager.io/inject-ca-from needs webhook.tlsSecret (the certificate cert-manager issues); without it the control plane keeps the caBundle and the two would overwrite each other" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The gateway's workload name, and the mesh identity (service account) it runs as. */}}
{{- define "bulkhead.gatewayName" -}}
{{- printf "%s-gateway-%s" (include "bulkhead.fullname" .) .Values.gateway.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bulkhead.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "bulkhead.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}
