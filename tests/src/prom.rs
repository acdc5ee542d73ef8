//! The one reader of Prometheus text the tests use, for sidecars, the
//! control plane and etcd alike: samples parsed properly (label values
//! with escaped quotes and commas, timestamps), then asked for by metric
//! name (exactly) and by labels that must all be present.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Every sample in `text`; comment lines and lines that do not parse are
/// skipped.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    let (_, quote) = chars.next()?;
                    if quote != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
        rest = &inner[end? + 1..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The first sample of `name` carrying every label in `labels`.
pub fn find(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<Sample> {
    samples(text)
        .into_iter()
        .find(|s| s.name == name && s.has(labels))
}

/// The sum of the samples of `name` carrying every label in `labels`;
/// `None` when there is none, for waits that must tell "not reported (yet)"
/// from "reported as 0" (a gauge like `bulkhead_control_plane_connected`).
pub fn metric_if_any(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples(text)
        .into_iter()
        .filter(|s| s.name == name && s.has(labels))
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// Like [`metric_if_any`], 0 when there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_if_any(text, name, labels).unwrap_or(0.0)
}

/// The buckets of histogram `name` (its `name_bucket` samples) for one
/// series: (upper bound, cumulative count), in order of the bound, `+Inf`
/// last. Empty when `name` is not exported as a histogram.
pub fn buckets(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut found: Vec<(f64, f64)> = samples(text)
        .into_iter()
        .filter(|s| s.name == bucket && s.has(labels))
        .filter_map(|s| {
            let le = match s.label("le")? {
                "+Inf" => f64::INFINITY,
                bound => bound.parse().ok()?,
            };
            Some((le, s.value))
        })
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP bulkhead_requests_total Requests.
# TYPE bulkhead_requests_total counter
bulkhead_requests_total{direction="inbound",peer="spiffe://cluster.local/ns/shop/sa/web",status_class="2xx"} 7
bulkhead_requests_total{direction="outbound",peer="a \"quoted\", name",status_class="5xx"} 2 1700000000000
bulkhead_requests_total_other{direction="inbound"} 100
bulkhead_control_plane_connected 0
etcd_debugging_mvcc_watcher_total 12
"#;

    #[test]
    fn samples_by_exact_name_and_labels() {
        assert_eq!(metric(TEXT, "bulkhead_requests_total", &[]), 9.0);
        assert_eq!(
            metric(TEXT, "bulkhead_requests_total", &[("direction", "inbound")]),
            7.0
        );
        let quoted = find(TEXT, "bulkhead_requests_total", &[("status_class", "5xx")]).unwrap();
        assert_eq!(quoted.label("peer"), Some("a \"quoted\", name"));
        assert_eq!(quoted.value, 2.0);
        assert_eq!(
            metric_if_any(TEXT, "bulkhead_control_plane_connected", &[]),
            Some(0.0)
        );
        assert_eq!(metric_if_any(TEXT, "bulkhead_missing", &[]), None);
        assert_eq!(metric(TEXT, "etcd_debugging_mvcc_watcher_total", &[]), 12.0);
    }
}
