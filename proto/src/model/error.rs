//! Validation errors: what the user sees when a document is rejected (file,
//! document, resource, field path, expectation), and the collector the
//! per-kind checks push into.

use std::fmt;

/// One problem in one document: `shop.yaml: document 2 (AllowList
/// shop/inventory): spec.rules[0].ports[0]: expected a port 1-65535, got 70000`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// File name (`-` for stdin); empty when the input had no name.
    pub source: String,
    /// 1-based index of the document in its file; `None` for whole-file
    /// problems and single-document inputs (JSON).
    pub document: Option<usize>,
    /// `Kind namespace/name`, when the document got far enough to say.
    pub resource: Option<String>,
    /// Field path such as `spec.rules[0].http.paths[1]`; empty for the document itself.
    pub path: String,
    /// What was expected (and what was found).
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if !self.source.is_empty() {
            write_clean(f, &self.source)?;
            sep = ": ";
        }
        match (self.document, &self.resource) {
            (Some(doc), resource) => {
                write!(f, "{sep}document {doc}")?;
                if let Some(resource) = resource {
                    f.write_str(" (")?;
                    write_clean(f, resource)?;
                    f.write_str(")")?;
                }
                sep = ": ";
            }
            (None, Some(resource)) => {
                f.write_str(sep)?;
                write_clean(f, resource)?;
                sep = ": ";
            }
            (None, None) => {}
        }
        if !self.path.is_empty() {
            f.write_str(sep)?;
            write_clean(f, &self.path)?;
            sep = ": ";
        }
        f.write_str(sep)?;
        write_clean(f, &self.message)
    }
}

/// Writes text that may echo user input with control characters escaped, so an
/// error message cannot rewrite the operator's terminal.
fn write_clean(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for c in text.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            fmt::Write::write_char(f, c)?;
        }
    }
    Ok(())
}

impl std::error::Error for ValidationError {}

/// Every problem found in an input; never empty when returned as an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationErrors(Vec<ValidationError>);

impl ValidationErrors {
    /// For checks made outside this module (for example across files); callers
    /// return it only when `errors` is not empty.
    pub fn new(errors: Vec<ValidationError>) -> Self {
        Self(errors)
    }

    /// A single problem that concerns the whole input.
    pub(crate) fn whole(source: &str, message: impl Into<String>) -> Self {
        Self(vec![ValidationError {
            source: source.to_owned(),
            document: None,
            resource: None,
            path: String::new(),
            message: message.into(),
        }])
    }

    pub fn errors(&self) -> &[ValidationError] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<ValidationError> {
        self.0
    }
}

/// One error per line.
impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl<'a> IntoIterator for &'a ValidationErrors {
    type Item = &'a ValidationError;
    type IntoIter = std::slice::Iter<'a, ValidationError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A problem at a field path, before it is placed in a file and document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) path: String,
    pub(crate) message: String,
}

/// Collects every field problem of one document, in the order found.
#[derive(Debug, Default)]
pub(crate) struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn push_error(&mut self, error: FieldError) {
        self.0.push(error);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Places the problems in their file and document.
    pub(crate) fn locate(
        self,
        source: &str,
        document: Option<usize>,
        resource: Option<&str>,
    ) -> impl Iterator<Item = ValidationError> {
        let source = source.to_owned();
        let resource = resource.map(str::to_owned);
        self.0.into_iter().map(move |e| ValidationError {
            source: source.clone(),
            document,
            resource: resource.clone(),
            path: e.path,
            message: e.message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(source: &str, document: Option<usize>, resource: Option<&str>) -> ValidationError {
        ValidationError {
            source: source.into(),
            document,
            resource: resource.map(Into::into),
            path: "spec.rules[0].ports[0]".into(),
            message: "expected a port 1-65535, got 70000".into(),
        }
    }

    #[test]
    fn display_names_file_document_resource_and_field() {
        assert_eq!(
            error("shop.yaml", Some(2), Some("AllowList shop/inventory")).to_string(),
            "shop.yaml: document 2 (AllowList shop/inventory): spec.rules[0].ports[0]: \
             expected a port 1-65535, got 70000"
        );
        assert_eq!(
            error("shop.yaml", Some(2), None).to_string(),
            "shop.yaml: document 2: spec.rules[0].ports[0]: expected a port 1-65535, got 70000"
        );
        assert_eq!(
            error("", None, Some("AllowList shop/inventory")).to_string(),
            "AllowList shop/inventory: spec.rules[0].ports[0]: expected a port 1-65535, got 70000"
        );
    }

    #[test]
    fn display_escapes_control_characters() {
        let mut e = error("a.yaml", Some(1), None);
        e.message = "unknown field `\u{1b}[2J`".into();
        assert_eq!(
            e.to_string(),
            "a.yaml: document 1: spec.rules[0].ports[0]: unknown field `\\u{1b}[2J`"
        );
    }

    #[test]
    fn errors_display_one_per_line() {
        let errors = ValidationErrors::new(vec![
            error("a.yaml", Some(1), None),
            error("a.yaml", Some(3), None),
        ]);
        assert_eq!(errors.to_string().lines().count(), 2);
        assert_eq!(errors.len(), 2);
    }
}
