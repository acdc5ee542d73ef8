//! Helpers for the model's unit tests: parse one document, expect an error.

use super::{Resource, parse_documents};

/// Parses a file that must hold exactly one valid resource.
pub(crate) fn parse_one(yaml: &str) -> Resource {
    match parse_documents("test.yaml", yaml) {
        Ok(mut resources) if resources.len() == 1 => resources.remove(0),
        Ok(resources) => panic!("expected one resource, got {}", resources.len()),
        Err(errors) => panic!("expected a valid document, got:\n{errors}"),
    }
}

/// Asserts the file is rejected with an error at `path` whose message
/// contains `message`.
pub(crate) fn expect_error(yaml: &str, path: &str, message: &str) {
    let errors = match parse_documents("test.yaml", yaml) {
        Ok(_) => panic!("expected an error at {path}, but the document was accepted:\n{yaml}"),
        Err(errors) => errors,
    };
    assert!(
        errors
            .errors()
            .iter()
            .any(|e| e.path == path && e.message.contains(message)),
        "expected an error at {path} containing {message:?}, got:\n{errors}"
    );
}
