//! Reading the mesh event stream the way scripts do: `bulkheadctl events
//! -o json`, one CloudEvent per line, and bounded waits for an event of a
//! type to appear.

use std::time::Duration;

use serde_json::Value;

use crate::control::{json_lines, wait_for_async};
use crate::mesh::{Mesh, blocking};

/// `bulkheadctl events -o json ARGS`: one CloudEvent per line, parsed.
pub fn events(mesh: &Mesh, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events", "-o", "json"];
    all.extend_from_slice(args);
    let out = blocking(|| mesh.cp.ctl(&mesh.ca, &all));
    json_lines("bulkheadctl events", &out)
}

/// Waits (bounded by `within`) for events of `kind` (the full type,
/// `dev.bulkhead.…`) in the last ten minutes for which `pick` holds; all
/// of them.
pub async fn until_events(
    mesh: &Mesh,
    kind: &str,
    within: Duration,
    pick: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    wait_for_async(kind, within, || async {
        let seen = events(mesh, &["--type", kind, "--since", "10m"]);
        let found: Vec<Value> = seen
            .into_iter()
            .filter(|e| e["type"] == kind && pick(e))
            .collect();
        (!found.is_empty()).then_some(found)
    })
    .await
}
