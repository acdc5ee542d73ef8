//! The resource envelope: `Kind`, `Metadata`, the `Resource` enum, its
//! storage key, and its canonical JSON and YAML forms.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::pb;

use super::allowlist::AllowList;
use super::check;
use super::egress::Egress;
use super::error::{FieldErrors, ValidationError, ValidationErrors};
use super::gateway::Gateway;
use super::parse;
use super::rollout::Rollout;
use super::service::Service;
use super::traffic::TrafficSplit;

/// The only `apiVersion` this model reads and writes.
pub const API_VERSION: &str = "bulkhead.dev/v1";

/// Namespace of a resource whose document names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What a resource is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    AllowList,
    TrafficSplit,
    Rollout,
    Gateway,
    Egress,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Service,
        Kind::AllowList,
        Kind::TrafficSplit,
        Kind::Rollout,
        Kind::Gateway,
        Kind::Egress,
    ];

    /// The name written in documents' `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::AllowList => "AllowList",
            Kind::TrafficSplit => "TrafficSplit",
            Kind::Rollout => "Rollout",
            Kind::Gateway => "Gateway",
            Kind::Egress => "Egress",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a kind (nor a plural or short form of one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown kind {0:?}: expected one of Service (svc), AllowList (al), TrafficSplit (ts), Rollout (ro), Gateway (gw), Egress (eg)"
)]
pub struct UnknownKind(pub String);

/// Case-insensitive, with plurals and short forms, as a CLI argument is
/// written: `svc`, `allowlists`, `TS`, ...
impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "service" | "services" | "svc" => Ok(Kind::Service),
            "allowlist" | "allowlists" | "al" => Ok(Kind::AllowList),
            "trafficsplit" | "trafficsplits" | "ts" => Ok(Kind::TrafficSplit),
            "rollout" | "rollouts" | "ro" => Ok(Kind::Rollout),
            "gateway" | "gateways" | "gw" => Ok(Kind::Gateway),
            "egress" | "egresses" | "eg" => Ok(Kind::Egress),
            _ => Err(UnknownKind(s.chars().take(64).collect())),
        }
    }
}

/// Which resource this is: name and namespace, both DNS labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
}

impl Metadata {
    /// Namespace first, as in storage keys.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
        }
    }
}

/// Any resource an operator can apply.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Service(Service),
    AllowList(AllowList),
    TrafficSplit(TrafficSplit),
    Rollout(Rollout),
    Gateway(Gateway),
    Egress(Egress),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
            Resource::AllowList(_) => Kind::AllowList,
            Resource::TrafficSplit(_) => Kind::TrafficSplit,
            Resource::Rollout(_) => Kind::Rollout,
            Resource::Gateway(_) => Kind::Gateway,
            Resource::Egress(_) => Kind::Egress,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::Service(r) => &r.metadata,
            Resource::AllowList(r) => &r.metadata,
            Resource::TrafficSplit(r) => &r.metadata,
            Resource::Rollout(r) => &r.metadata,
            Resource::Gateway(r) => &r.metadata,
            Resource::Egress(r) => &r.metadata,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    pub fn namespace(&self) -> &str {
        &self.metadata().namespace
    }

    /// Storage key fragment `<Kind>/<namespace>/<name>`; stable across releases.
    pub fn key(&self) -> String {
        Self::key_for(self.kind(), self.namespace(), self.name())
    }

    /// The key of a resource known only by kind, namespace and name.
    pub fn key_for(kind: Kind, namespace: &str, name: &str) -> String {
        format!("{kind}/{namespace}/{name}")
    }

    /// Parses and validates one resource from its JSON form.
    pub fn from_json(text: &str) -> Result<Self, ValidationErrors> {
        parse::from_json(text)
    }

    /// Canonical JSON: compact, fields in a fixed order, defaults not filled in.
    /// This is what is stored and what travels in `pb::Resource.json`.
    pub fn to_json(&self) -> String {
        // Every field is a string, number or list of them, so serializing
        // cannot fail: there are no maps with non-string keys and no I/O.
        serde_json::to_string(self).expect("resources always serialize to JSON")
    }

    /// One YAML document (without a leading `---`).
    pub fn to_yaml(&self) -> String {
        // As for JSON: plain data with string keys cannot fail to serialize.
        serde_saphyr::to_string(self).expect("resources always serialize to YAML")
    }
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Resource::Service(r) => document(&r.metadata, &r.spec).serialize(serializer),
            Resource::AllowList(r) => document(&r.metadata, &r.spec).serialize(serializer),
            Resource::TrafficSplit(r) => document(&r.metadata, &r.spec).serialize(serializer),
            Resource::Rollout(r) => document(&r.metadata, &r.spec).serialize(serializer),
            Resource::Gateway(r) => document(&r.metadata, &r.spec).serialize(serializer),
            Resource::Egress(r) => document(&r.metadata, &r.spec).serialize(serializer),
        }
    }
}

/// Validates while deserializing, so a `Resource` always holds a valid resource.
impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        parse::from_value(&value).map_err(serde::de::Error::custom)
    }
}

/// Reads a stored or pushed resource, checking that its envelope agrees with
/// the document inside.
impl TryFrom<&pb::Resource> for Resource {
    type Error = ValidationErrors;

    fn try_from(pb: &pb::Resource) -> Result<Self, Self::Error> {
        let resource = Resource::from_json(&pb.json)?;
        let mismatch = |path: &str, field: &str, envelope: &str, document: &str| ValidationError {
            source: String::new(),
            document: None,
            resource: Some(resource.label()),
            path: path.to_owned(),
            message: format!(
                "envelope {field} {} does not match the document's {}",
                check::got(envelope),
                check::got(document)
            ),
        };
        let mut errors = Vec::new();
        if pb.kind.parse::<Kind>().ok() != Some(resource.kind()) {
            errors.push(mismatch("kind", "kind", &pb.kind, resource.kind().as_str()));
        }
        if pb.namespace != resource.namespace() {
            errors.push(mismatch(
                "metadata.namespace",
                "namespace",
                &pb.namespace,
                resource.namespace(),
            ));
        }
        if pb.name != resource.name() {
            errors.push(mismatch("metadata.name", "name", &pb.name, resource.name()));
        }
        if errors.is_empty() {
            Ok(resource)
        } else {
            Err(ValidationErrors::new(errors))
        }
    }
}

impl From<&Resource> for pb::Resource {
    fn from(resource: &Resource) -> Self {
        pb::Resource {
            kind: resource.kind().as_str().to_owned(),
            namespace: resource.namespace().to_owned(),
            name: resource.name().to_owned(),
            json: resource.to_json(),
        }
    }
}

impl Resource {
    /// `Kind namespace/name`, as error messages name a resource.
    pub(crate) fn label(&self) -> String {
        format!("{} {}/{}", self.kind(), self.namespace(), self.name())
    }
}

/// A kind's `spec`: how it is read from its serde form (collecting every
/// problem) and written back to it.
pub(crate) trait Spec: Sized {
    const KIND: Kind;
    /// The document form: strings and integers as written, checked by `from_raw`.
    type Raw: Serialize + DeserializeOwned;

    /// Validates a raw spec; problems go to `errs` with paths under `spec`.
    fn from_raw(raw: Self::Raw, errs: &mut FieldErrors) -> Option<Self>;
    fn to_raw(&self) -> Self::Raw;
    fn into_resource(metadata: Metadata, spec: Self) -> Resource;
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawDocument<S> {
    pub(crate) api_version: String,
    pub(crate) kind: String,
    pub(crate) metadata: RawMetadata,
    pub(crate) spec: S,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetadata {
    pub(crate) name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) namespace: Option<String>,
}

fn document<S: Spec>(metadata: &Metadata, spec: &S) -> RawDocument<S::Raw> {
    RawDocument {
        api_version: API_VERSION.to_owned(),
        kind: S::KIND.as_str().to_owned(),
        metadata: RawMetadata {
            name: metadata.name.clone(),
            namespace: Some(metadata.namespace.clone()),
        },
        spec: spec.to_raw(),
    }
}

/// Validates a decoded document of kind `S` (its `apiVersion` and `kind` were
/// checked before the kind was known).
pub(crate) fn from_raw_document<S: Spec>(
    doc: RawDocument<S::Raw>,
    errs: &mut FieldErrors,
) -> Option<Resource> {
    let name = check::dns_label(errs, "metadata.name", doc.metadata.name);
    let namespace = check::dns_label(
        errs,
        "metadata.namespace",
        doc.metadata
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
    );
    let spec = S::from_raw(doc.spec, errs);
    Some(S::into_resource(Metadata::new(namespace?, name?), spec?))
}
