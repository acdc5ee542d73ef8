//! The Policy view's API: `/api/policy` (a service's declared ports, the
//! AllowLists targeting it and who they let in, as `bulkheadctl explain
//! --to` lists them) and `/api/explain` ("can X call this?", answered by
//! [`crate::explain`] on the live configuration, exactly as `bulkheadctl
//! explain` answers it).

use bulkhead_proto::model::{AllowList, Protocol, Resource, Service};
use bulkhead_proto::policy::Call;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{Api, ApiError, check_name};
use crate::explain::{Question, allowed_callers, answer, declared_port, parse_caller, report};

/// Longest caller, method or path the form may send (a path longer than
/// the sidecar's limit is refused by the explain code itself).
const MAX_FIELD: usize = 8 * 1024;

/// What the page's "can X call this?" form posts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ExplainForm {
    pub(super) namespace: String,
    pub(super) name: String,
    /// `ns/sa` or a SPIFFE ID.
    pub(super) from: String,
    #[serde(default)]
    pub(super) port: Option<u16>,
    #[serde(default)]
    pub(super) method: Option<String>,
    #[serde(default)]
    pub(super) path: Option<String>,
}

impl Api {
    /// The Service and the AllowLists targeting it.
    async fn policy_of(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Service, Vec<AllowList>), ApiError> {
        let (services, lists) = tokio::try_join!(
            self.get("Service", namespace, name),
            self.get("AllowList", namespace, ""),
        )?;
        let service = services
            .into_iter()
            .find_map(|r| match r {
                Resource::Service(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no Service {namespace}/{name} is declared: without one, no call to it is authorized"
                ))
            })?;
        let lists = lists
            .into_iter()
            .filter_map(|r| match r {
                Resource::AllowList(l) => Some(l),
                _ => None,
            })
            .collect();
        Ok((service, crate::explain::targeting(lists, namespace, name)))
    }

    /// `{namespace, name, ports, allowLists: [{name, mode, rules}], callers}`.
    pub(super) async fn policy(&self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let (service, lists) = self.policy_of(namespace, name).await?;
        let ports: Vec<Value> = service
            .spec
            .ports
            .iter()
            .map(|p| json!({"port": p.port, "protocol": p.protocol.as_str()}))
            .collect();
        let summaries: Vec<Value> = lists
            .iter()
            .map(|l| json!({"name": l.metadata.name, "mode": l.mode().as_str(), "rules": l.spec.rules.len()}))
            .collect();
        Ok(json!({
            "namespace": namespace,
            "name": name,
            "ports": ports,
            "allowLists": summaries,
            "callers": allowed_callers(&lists, None),
        }))
    }

    /// "Can `form.from` call this?", as `bulkheadctl explain -o json`
    /// answers it.
    pub(super) async fn explain(&self, form: &ExplainForm) -> Result<Value, ApiError> {
        check_name("namespace", &form.namespace)?;
        check_name("name", &form.name)?;
        let too_long = [Some(&form.from), form.method.as_ref(), form.path.as_ref()]
            .into_iter()
            .flatten()
            .any(|f| f.len() > MAX_FIELD);
        if too_long {
            return Err(ApiError::BadRequest(format!(
                "a field is longer than {MAX_FIELD} bytes"
            )));
        }
        let from = parse_caller(form.from.trim(), &self.trust_domain).map_err(|why| {
            ApiError::BadRequest(format!(
                "caller {:?}: expected NAMESPACE/SERVICE-ACCOUNT (e.g. shop/web) or a SPIFFE ID: {why}",
                form.from
            ))
        })?;
        let (service, lists) = self.policy_of(&form.namespace, &form.name).await?;
        let (port, protocol) =
            declared_port(&service, form.port).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let path = form.path.as_deref().filter(|p| !p.is_empty());
        let method = form
            .method
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .unwrap_or("GET");
        let call = match (protocol, path) {
            (Protocol::Tcp, _) => Call::Tcp,
            (_, Some(path)) => Call::Http { method, path },
            (_, None) => Call::AnyHttp,
        };
        let to = format!("{}/{}", form.namespace, form.name);
        let question = Question {
            from: &from,
            to: &to,
            port,
            protocol,
            call,
            path,
            // The form asks as a mesh workload would, with no end user.
            claims: None,
        };
        let e = answer(&lists, &question, &self.trust_domain);
        Ok(report(&lists, &question, &e))
    }
}
