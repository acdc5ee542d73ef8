//! Reading resources from text: multi-document YAML files and single JSON
//! documents, with input bounds, field paths, and every error collected.
//!
//! Each document is decoded twice: first a lenient header (`apiVersion`,
//! `kind`, `metadata`) to learn the kind and name the resource in errors, then
//! strictly (`deny_unknown_fields`) as that kind's document.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::MessageFormatter;

use super::allowlist::AllowListSpec;
use super::check;
use super::egress::EgressSpec;
use super::error::{FieldError, FieldErrors, ValidationErrors};
use super::gateway::GatewaySpec;
use super::resource::{
    API_VERSION, DEFAULT_NAMESPACE, Kind, RawDocument, Resource, Spec, from_raw_document,
};
use super::rollout::RolloutSpec;
use super::service::ServiceSpec;
use super::traffic::TrafficSplitSpec;

/// Largest file (or JSON document) accepted: 1 MiB.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Most documents accepted in one file.
pub const MAX_DOCUMENTS: usize = 1000;

/// Parses and validates every document of a YAML file (`---` separated; empty
/// documents are skipped). Either every document is valid and all are
/// returned, or every problem found in any document is.
///
/// `source` names the file in errors (`-` for stdin).
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Resource>, ValidationErrors> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ValidationErrors::whole(
            source,
            format!(
                "file is {} bytes; expected at most 1 MiB ({MAX_FILE_BYTES} bytes): split it into several files",
                text.len()
            ),
        ));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let chunks = split_documents(text).ok_or_else(|| {
        ValidationErrors::whole(
            source,
            format!("file has more than {MAX_DOCUMENTS} documents; split it into several files"),
        )
    })?;

    let mut resources = Vec::new();
    let mut errors = Vec::new();
    let mut first_seen: HashMap<(Kind, String, String), usize> = HashMap::new();
    for chunk in chunks {
        let input = Input::Yaml {
            text: chunk.text,
            line_offset: chunk.line_offset,
        };
        let mut errs = FieldErrors::default();
        let Some(read) = read_document(&input, &mut errs) else {
            continue;
        };
        if let Some(id) = read.id {
            if let Some(first) = first_seen.get(&id) {
                errs.push(
                    "metadata.name",
                    format!("duplicate: this resource is already defined in document {first}"),
                );
            } else {
                first_seen.insert(id, chunk.index);
            }
        }
        match read.resource {
            Some(resource) if errs.is_empty() => resources.push(resource),
            _ => errors.extend(errs.locate(source, Some(chunk.index), read.label.as_deref())),
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(ValidationErrors::new(errors))
    }
}

/// Parses and validates one resource from JSON text.
pub(crate) fn from_json(text: &str) -> Result<Resource, ValidationErrors> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ValidationErrors::whole(
            "",
            format!(
                "JSON document is {} bytes; expected at most {MAX_FILE_BYTES}",
                text.len()
            ),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ValidationErrors::whole("", format!("expected a JSON document: {e}")))?;
    from_value(&value)
}

/// Validates one resource held as a JSON value.
pub(crate) fn from_value(value: &serde_json::Value) -> Result<Resource, ValidationErrors> {
    let mut errs = FieldErrors::default();
    match read_document(&Input::Json(value), &mut errs) {
        None => Err(ValidationErrors::whole(
            "",
            "expected a resource document, got null",
        )),
        Some(Read {
            resource: Some(resource),
            ..
        }) if errs.is_empty() => Ok(resource),
        Some(read) => Err(ValidationErrors::new(
            errs.locate("", None, read.label.as_deref()).collect(),
        )),
    }
}

/// What one document yielded.
struct Read {
    /// `Kind namespace/name` for error messages.
    label: Option<String>,
    /// Kind, namespace and name, when all are readable: for duplicate checks.
    id: Option<(Kind, String, String)>,
    /// The resource, when it decoded; valid only if no errors were pushed.
    resource: Option<Resource>,
}

/// The fields read before the kind is known; anything else is left for the
/// strict pass.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<HeaderMetadata>,
}

#[derive(Deserialize)]
struct HeaderMetadata {
    name: Option<String>,
    namespace: Option<String>,
}

/// A document's top level: a mapping (read as a header) or something else.
enum Shape {
    Mapping(Header),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;

        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = Shape;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping with apiVersion, kind, metadata and spec")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Shape, A::Error> {
                Header::deserialize(MapAccessDeserializer::new(map)).map(Shape::Mapping)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                // Drained so that formats checking the length stay quiet.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Shape::Other("a list"))
            }

            fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::Other("a string"))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Other("a boolean"))
            }

            fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Other("a number"))
            }

            fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Other("a number"))
            }

            fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Other("a number"))
            }
        }

        deserializer.deserialize_any(ShapeVisitor)
    }
}

/// Reads one document; `None` for an empty one.
fn read_document(input: &Input<'_>, errs: &mut FieldErrors) -> Option<Read> {
    let unread = Read {
        label: None,
        id: None,
        resource: None,
    };
    let header = match input.decode::<Option<Shape>>() {
        Ok(None) => return None,
        Ok(Some(Shape::Mapping(header))) => header,
        Ok(Some(Shape::Other(what))) => {
            errs.push(
                "",
                format!("expected a mapping with apiVersion, kind, metadata and spec, got {what}"),
            );
            return Some(unread);
        }
        Err(e) => {
            errs.push_error(e);
            return Some(unread);
        }
    };

    match header.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => errs.push(
            "apiVersion",
            format!("expected {API_VERSION}, got {}", check::got(other)),
        ),
        None => errs.push("apiVersion", format!("missing; expected {API_VERSION}")),
    }
    let kinds = "one of Service, AllowList, TrafficSplit, Rollout, Gateway, Egress";
    let kind = match header.kind.as_deref() {
        None => {
            errs.push("kind", format!("missing; expected {kinds}"));
            None
        }
        Some(written) => match Kind::ALL.into_iter().find(|k| k.as_str() == written) {
            Some(kind) => Some(kind),
            None => {
                let hint = match written.parse::<Kind>() {
                    Ok(kind) => format!(" (did you mean {kind}?)"),
                    Err(_) => String::new(),
                };
                errs.push(
                    "kind",
                    format!("expected {kinds}, got {}{hint}", check::got(written)),
                );
                None
            }
        },
    };

    let metadata = header.metadata.unwrap_or(HeaderMetadata {
        name: None,
        namespace: None,
    });
    let namespace = metadata
        .namespace
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let label = kind.map(|kind| match &metadata.name {
        Some(name) => format!("{kind} {namespace}/{name}"),
        None => kind.to_string(),
    });
    let id = kind
        .zip(metadata.name)
        .map(|(kind, name)| (kind, namespace, name));
    let resource = kind.and_then(|kind| read_kind(kind, input, errs));
    Some(Read {
        label,
        id,
        resource,
    })
}

fn read_kind(kind: Kind, input: &Input<'_>, errs: &mut FieldErrors) -> Option<Resource> {
    fn typed<S: Spec>(input: &Input<'_>, errs: &mut FieldErrors) -> Option<Resource> {
        match input.decode::<RawDocument<S::Raw>>() {
            Ok(doc) => from_raw_document::<S>(doc, errs),
            Err(e) => {
                errs.push_error(e);
                None
            }
        }
    }
    match kind {
        Kind::Service => typed::<ServiceSpec>(input, errs),
        Kind::AllowList => typed::<AllowListSpec>(input, errs),
        Kind::TrafficSplit => typed::<TrafficSplitSpec>(input, errs),
        Kind::Rollout => typed::<RolloutSpec>(input, errs),
        Kind::Gateway => typed::<GatewaySpec>(input, errs),
        Kind::Egress => typed::<EgressSpec>(input, errs),
    }
}

/// One document's text, in either format.
enum Input<'a> {
    /// One YAML document; `line_offset` lines of the file come before it.
    Yaml {
        text: &'a str,
        line_offset: u64,
    },
    Json(&'a serde_json::Value),
}

impl Input<'_> {
    /// Decodes into `T`, naming the field path of the first problem.
    fn decode<T: DeserializeOwned>(&self) -> Result<T, FieldError> {
        match self {
            Input::Json(value) => {
                serde_path_to_error::deserialize(*value).map_err(|e| FieldError {
                    path: clean_path(e.path()),
                    message: e.into_inner().to_string(),
                })
            }
            Input::Yaml { text, line_offset } => {
                let mut path = String::new();
                let mut options = serde_saphyr::Options::default();
                options.with_snippet = false;
                serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
                    serde_path_to_error::deserialize(de).map_err(|e| {
                        path = clean_path(e.path());
                        e.into_inner()
                    })
                })
                .map_err(|e| FieldError {
                    path,
                    message: yaml_message(&e, *line_offset),
                })
            }
        }
    }
}

/// The parser's message with the line and column in the whole file.
fn yaml_message(error: &serde_saphyr::Error, line_offset: u64) -> String {
    let error = error.without_snippet();
    let mut message = match serde_saphyr::DefaultMessageFormatter.format_message(error) {
        // The parser's terse words for a scalar of the wrong type.
        m if m == "invalid i64" => "expected an integer".to_owned(),
        m if m == "invalid f64" => "expected a number".to_owned(),
        m => m.into_owned(),
    };
    if let Some(location) = error.location().filter(|l| l.line() > 0) {
        message.push_str(&format!(
            " (line {}, column {})",
            location.line() + line_offset,
            location.column()
        ));
    }
    message
}

/// `serde_path_to_error` writes the root as `.` and segments it cannot name as
/// `?`; neither helps a reader.
fn clean_path(path: &serde_path_to_error::Path) -> String {
    let mut path = path.to_string();
    if path == "." {
        path.clear();
    }
    while path.ends_with('?') {
        path.pop();
        if path.ends_with('.') {
            path.pop();
        }
    }
    path
}

/// One document of a file.
#[derive(Debug)]
struct Chunk<'a> {
    /// 1-based, as YAML counts documents.
    index: usize,
    line_offset: u64,
    text: &'a str,
}

/// Splits a YAML stream at its `---` lines. YAML forbids such a line inside
/// any scalar (block or quoted) at column 0, so this cut is exact. Text before
/// the first marker is a document only if it holds more than comments and
/// directives. `None` when there are more than [`MAX_DOCUMENTS`].
fn split_documents<'a>(text: &'a str) -> Option<Vec<Chunk<'a>>> {
    let mut chunks = Vec::new();
    let mut push = |chunk_text: &'a str, line_offset: u64, preamble: bool| -> Option<()> {
        if preamble && !has_content(chunk_text) {
            return Some(());
        }
        if chunks.len() == MAX_DOCUMENTS {
            return None;
        }
        chunks.push(Chunk {
            index: chunks.len() + 1,
            line_offset,
            text: chunk_text,
        });
        Some(())
    };
    let (mut start, mut start_line, mut preamble) = (0, 0, true);
    let (mut pos, mut line) = (0, 0u64);
    for l in text.split_inclusive('\n') {
        if is_document_marker(l) {
            push(&text[start..pos], start_line, preamble)?;
            (start, start_line, preamble) = (pos, line, false);
        }
        pos += l.len();
        line += 1;
    }
    push(&text[start..], start_line, preamble)?;
    Some(chunks)
}

fn is_document_marker(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        !(l.is_empty() || l.starts_with('#') || l.starts_with('%'))
    })
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
