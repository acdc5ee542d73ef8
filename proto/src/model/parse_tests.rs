//! Tests of reading files: splitting, bounds, envelope checks, error placement.

use super::*;
use crate::model::test_support::{expect_error, parse_one};

const SVC: &str = "apiVersion: bulkhead.dev/v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
";

fn errors_of(text: &str) -> Vec<crate::model::ValidationError> {
    match parse_documents("shop.yaml", text) {
        Ok(resources) => panic!("expected errors, got {} resources", resources.len()),
        Err(errors) => errors.into_vec(),
    }
}

#[test]
fn splits_on_marker_lines_only() {
    let text =
        "# header comment\n---\na: 1\n--- # two\nb: |\n  ---\n  not a marker\n---\r\nc: 3\n----\n";
    let chunks = split_documents(text).unwrap_or_default();
    let starts: Vec<(usize, u64)> = chunks.iter().map(|c| (c.index, c.line_offset)).collect();
    assert_eq!(starts, vec![(1, 1), (2, 3), (3, 7)]);
    assert!(chunks[1].text.contains("not a marker"));
    assert!(chunks[2].text.ends_with("----\n"));
}

#[test]
fn text_before_first_marker_is_a_document_when_it_has_content() {
    let chunks = split_documents("a: 1\n---\nb: 2\n").unwrap_or_default();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0].text, "a: 1\n");
    let chunks = split_documents("%YAML 1.2\n---\nb: 2\n").unwrap_or_default();
    assert_eq!(chunks.len(), 1);
}

#[test]
fn empty_documents_are_skipped() {
    let text = format!("---\n---\n# nothing here\n---\n{SVC}---\n~\n---\n");
    let resources = parse_documents("shop.yaml", &text).unwrap_or_default();
    assert_eq!(resources.len(), 1);
    assert!(parse_documents("empty.yaml", "").is_ok_and(|r| r.is_empty()));
}

#[test]
fn document_numbers_count_empty_documents() {
    let text = format!("---\n---\n{}", SVC.replace("8080", "0"));
    let errors = errors_of(&text);
    assert_eq!(errors[0].document, Some(2));
}

#[test]
fn rejects_oversized_file() {
    let text = format!("{SVC}# {}\n", "x".repeat(MAX_FILE_BYTES));
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.contains("at most 1 MiB"), "{}", errors[0]);
    assert_eq!(errors[0].document, None);
}

#[test]
fn rejects_too_many_documents() {
    let text = "---\n".repeat(MAX_DOCUMENTS + 1);
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.contains("more than 1000 documents"));
    assert!(parse_documents("ok.yaml", &"---\n".repeat(MAX_DOCUMENTS)).is_ok());
}

#[test]
fn rejects_wrong_api_version() {
    expect_error(
        &SVC.replace("bulkhead.dev/v1", "v1"),
        "apiVersion",
        "expected bulkhead.dev/v1, got \"v1\"",
    );
    expect_error(
        &SVC.replace("apiVersion: bulkhead.dev/v1\n", ""),
        "apiVersion",
        "missing; expected bulkhead.dev/v1",
    );
}

#[test]
fn rejects_unknown_kind() {
    expect_error(
        &SVC.replace("kind: Service", "kind: Deployment"),
        "kind",
        "expected one of Service, AllowList, TrafficSplit, Rollout, Gateway, Egress, got \"Deployment\"",
    );
    expect_error(
        &SVC.replace("kind: Service", "kind: service"),
        "kind",
        "(did you mean Service?)",
    );
    expect_error(&SVC.replace("kind: Service\n", ""), "kind", "missing");
}

#[test]
fn rejects_bad_names() {
    expect_error(
        &SVC.replace("name: inventory", "name: Inventory"),
        "metadata.name",
        "DNS label",
    );
    expect_error(
        &SVC.replace("namespace: shop", "namespace: -shop"),
        "metadata.namespace",
        "DNS label",
    );
    expect_error(
        &SVC.replace("{name: inventory, namespace: shop}", "{namespace: shop}"),
        "metadata",
        "missing field `name`",
    );
}

#[test]
fn namespace_defaults_to_default() {
    let r = parse_one(&SVC.replace(", namespace: shop", ""));
    assert_eq!(r.namespace(), "default");
    assert_eq!(r.key(), "Service/default/inventory");
}

#[test]
fn rejects_unknown_fields_at_every_level() {
    expect_error(
        &format!("{SVC}status: {{}}\n"),
        "status",
        "unknown field `status`",
    );
    expect_error(
        &SVC.replace("namespace: shop", "namespace: shop, labels: {a: b}"),
        "metadata.labels",
        "unknown field `labels`",
    );
    expect_error(
        &format!("{SVC}  vips: []\n"),
        "spec.vips",
        "unknown field `vips`",
    );
}

#[test]
fn rejects_documents_that_are_not_mappings() {
    let errors = errors_of("just a string\n");
    assert!(
        errors[0]
            .message
            .contains("expected a mapping with apiVersion, kind, metadata and spec"),
        "{}",
        errors[0]
    );
}

#[test]
fn type_errors_name_the_field() {
    expect_error(
        &SVC.replace("port: 8080", "port: eighty"),
        "spec.ports[0].port",
        "",
    );
    expect_error(
        &SVC.replace("[{port: 8080, protocol: http}]", "8080"),
        "spec.ports",
        "",
    );
}

#[test]
fn syntax_errors_give_the_line_in_the_file() {
    let text = format!(
        "{SVC}---\n{}",
        SVC.replace("[{port: 8080, protocol: http}]", "[{port: 8080")
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].document, Some(2));
    assert!(
        errors[0].message.contains("(line 11, column"),
        "{}",
        errors[0]
    );
}

#[test]
fn duplicate_resources_in_one_file() {
    let text = format!("{SVC}---\n{SVC}---\n{}", SVC.replace("shop}", "other}"));
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].document, Some(2));
    assert_eq!(errors[0].path, "metadata.name");
    assert_eq!(
        errors[0].to_string(),
        "shop.yaml: document 2 (Service shop/inventory): metadata.name: \
         duplicate: this resource is already defined in document 1"
    );
}

#[test]
fn byte_order_mark_is_ignored() {
    assert!(parse_documents("bom.yaml", &format!("\u{feff}{SVC}")).is_ok());
}
