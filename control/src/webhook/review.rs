//! The `AdmissionReview` v1 envelope: reading a request, writing the
//! response. The patch goes out as base64 of its JSON text, as the API
//! server requires (kube-core's `AdmissionResponse` would write the bytes
//! as a number array, so the response is written here).

use base64::Engine as _;
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionReview, Operation};
use serde::Serialize;
use serde_json::Value;

use super::Injector;
use super::inject::{Action, Unchanged};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// Why a body is not an admission review we can answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MalformedReview {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error("apiVersion {0:?}: expected \"admission.k8s.io/v1\"")]
    ApiVersion(String),
    #[error("kind {0:?}: expected \"AdmissionReview\"")]
    Kind(String),
    #[error("request is missing")]
    MissingRequest,
    #[error("request.uid is missing or empty")]
    MissingUid,
    #[error("request is not an AdmissionRequest: {0}")]
    Request(String),
    #[error("request.object is missing")]
    MissingObject,
    #[error("request.object is not a Pod: {0}")]
    NotAPod(String),
}

/// A review we cannot answer with a decision, and the uid to answer with
/// when the request had one.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{error}")]
pub struct ReviewError {
    pub uid: Option<String>,
    pub error: MalformedReview,
}

impl ReviewError {
    /// The body of the HTTP 400: an `AdmissionReview` refusing the request
    /// when its uid is known (the API server shows our message), else the
    /// message as text. Returns (content type, body).
    pub fn body(&self) -> (&'static str, Vec<u8>) {
        match &self.uid {
            Some(uid) => (
                "application/json",
                encode(&ResponseOut {
                    uid,
                    allowed: false,
                    status: Some(StatusOut::failure(400, "BadRequest", self.to_string())),
                    patch_type: None,
                    patch: None,
                    warnings: &[],
                }),
            ),
            None => (
                "text/plain; charset=utf-8",
                format!("bad admission review: {self}\n").into_bytes(),
            ),
        }
    }
}

/// The decision for one review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed with a patch that adds the sidecar.
    Injected,
    /// Allowed as is: not a Pod creation.
    NotAPodCreation,
    /// Allowed as is: the pod says so.
    Unchanged(Unchanged),
    /// Refused: the pod asks for injection but cannot have it as written.
    Refused,
}

impl Verdict {
    /// A bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::NotAPodCreation => "not-a-pod-creation",
            Self::Unchanged(why) => why.as_str(),
            Self::Refused => "refused",
        }
    }
}

/// An answered review: the response document and what it decided.
#[derive(Debug, Clone)]
pub struct Reviewed {
    pub uid: String,
    pub verdict: Verdict,
    pub warnings: Vec<String>,
    /// The `AdmissionReview` response, JSON.
    pub json: Vec<u8>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: &'a ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

/// A `meta/v1.Status`, as much as a refusal needs.
#[derive(Serialize)]
struct StatusOut {
    status: &'static str,
    code: u16,
    reason: &'static str,
    message: String,
}

impl StatusOut {
    fn failure(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            status: "Failure",
            code,
            reason,
            message,
        }
    }
}

fn encode(response: &ResponseOut<'_>) -> Vec<u8> {
    let review = ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response,
    };
    // Strings, bools and numbers only: serializing cannot fail.
    serde_json::to_vec(&review).unwrap_or_default()
}

/// The API server truncates long warnings; keep ours readable whole.
fn clip(warning: &str) -> String {
    const MAX: usize = 256;
    if warning.chars().count() <= MAX {
        return warning.to_owned();
    }
    let mut s: String = warning.chars().take(MAX - 1).collect();
    s.push('…');
    s
}

impl Injector {
    /// Answers one `AdmissionReview` v1 request (the raw HTTP body): the
    /// whole decision, no I/O.
    pub fn review(&self, body: &[u8]) -> Result<Reviewed, ReviewError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| ReviewError {
            uid: None,
            error: MalformedReview::NotJson(e.to_string()),
        })?;
        let uid = value
            .pointer("/request/uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(str::to_owned);
        let fail = |error| ReviewError {
            uid: uid.clone(),
            error,
        };
        let Value::Object(top) = &value else {
            return Err(fail(MalformedReview::NotAnObject));
        };
        let field = |name| top.get(name).and_then(Value::as_str).unwrap_or_default();
        if field("apiVersion") != API_VERSION {
            return Err(fail(MalformedReview::ApiVersion(
                field("apiVersion").into(),
            )));
        }
        if field("kind") != KIND {
            return Err(fail(MalformedReview::Kind(field("kind").into())));
        }
        if top.get("request").is_none_or(Value::is_null) {
            return Err(fail(MalformedReview::MissingRequest));
        }
        let Some(uid) = uid.clone() else {
            return Err(fail(MalformedReview::MissingUid));
        };
        // kube-core checks the request's shape (kind, operation, userInfo…).
        let typed: AdmissionReview<DynamicObject> = serde_path_to_error::deserialize(&value)
            .map_err(|e| {
                fail(MalformedReview::Request(format!(
                    "{}: {}",
                    e.path(),
                    e.inner()
                )))
            })?;
        let Some(request) = typed.request else {
            return Err(fail(MalformedReview::MissingRequest));
        };

        let is_pod = request.kind.group.is_empty()
            && request.kind.version == "v1"
            && request.kind.kind == "Pod"
            && request
                .sub_resource
                .as_deref()
                .unwrap_or_default()
                .is_empty();
        if request.operation != Operation::Create || !is_pod {
            return Ok(self.answer(uid, Verdict::NotAPodCreation, None, Vec::new()));
        }
        let object = value
            .pointer("/request/object")
            .filter(|o| !o.is_null())
            .ok_or_else(|| fail(MalformedReview::MissingObject))?;
        for (key, want) in [("apiVersion", "v1"), ("kind", "Pod")] {
            if let Some(got) = object.get(key)
                && got.as_str() != Some(want)
            {
                return Err(fail(MalformedReview::NotAPod(format!(
                    "{key} is {got}, expected {want:?}"
                ))));
            }
        }
        let outcome = self
            .plan(object, &[], None)
            .map_err(|e| fail(MalformedReview::NotAPod(e.to_string())))?;
        let warnings = outcome.warnings.iter().map(|w| clip(w)).collect();
        Ok(match outcome.action {
            Action::Inject(patch) => self.answer(uid, Verdict::Injected, Some(&patch), warnings),
            Action::Unchanged(why) => self.answer(uid, Verdict::Unchanged(why), None, warnings),
            Action::Refuse(message) => {
                let json = encode(&ResponseOut {
                    uid: &uid,
                    allowed: false,
                    status: Some(StatusOut::failure(400, "BadRequest", message)),
                    patch_type: None,
                    patch: None,
                    warnings: &warnings,
                });
                Reviewed {
                    uid,
                    verdict: Verdict::Refused,
                    warnings,
                    json,
                }
            }
        })
    }

    fn answer(
        &self,
        uid: String,
        verdict: Verdict,
        patch: Option<&json_patch::Patch>,
        warnings: Vec<String>,
    ) -> Reviewed {
        let patch = patch.map(|p| {
            // A patch is JSON values and pointers: serializing cannot fail.
            let text = serde_json::to_vec(p).unwrap_or_default();
            base64::engine::general_purpose::STANDARD.encode(text)
        });
        let json = encode(&ResponseOut {
            uid: &uid,
            allowed: true,
            status: None,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: &warnings,
        });
        Reviewed {
            uid,
            verdict,
            warnings,
            json,
        }
    }
}
