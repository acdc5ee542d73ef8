//! The latency-percentile plot: one panel per fixed rate, one line per
//! path, percentiles on a "nines" axis (50 %, 90 %, 99 %, 99.9 %, ...) and
//! latency on a log axis, from the histograms of all rounds merged.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::rounds::Test;
use crate::setup::PathId;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn color(path: PathId) -> RGBColor {
    match path {
        PathId::Direct => RGBColor(40, 40, 40),
        PathId::Bulkhead => RGBColor(0, 114, 178),
        PathId::BulkheadTcp => RGBColor(86, 180, 233),
        PathId::HaproxyHttp => RGBColor(213, 94, 0),
        PathId::HaproxyTcp => RGBColor(230, 159, 0),
    }
}

fn register_font() -> Result<(), String> {
    let bytes = std::fs::read(FONT)
        .map_err(|e| format!("{FONT}: {e} (Debian: apt-get install fonts-dejavu-core)"))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{FONT}: not a usable font"))
}

/// Writes the PNG; `hists` maps (test, path) to the merged histogram (ns).
pub fn latency_png(
    out: &Path,
    hists: &BTreeMap<(Test, PathId), Histogram<u64>>,
    title: &str,
) -> Result<(), String> {
    register_font()?;
    let root = BitMapBackend::new(out, (1400, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| e.to_string())?;
    let panels = root.split_evenly((1, 2));
    for (panel, (test, label)) in panels
        .iter()
        .zip([(Test::Rate1k, "1,000 req/s"), (Test::Rate5k, "5,000 req/s")])
    {
        let series: Vec<(PathId, Vec<(f64, f64)>)> = PathId::ALL
            .iter()
            .filter_map(|p| {
                let h = hists.get(&(test, *p))?;
                if h.is_empty() {
                    return None;
                }
                // Up to the nines the sample count supports, at most 99.99 %.
                let top = (h.len() as f64).log10().clamp(1.0, 4.0);
                let points = (0..=200)
                    .map(|i| {
                        let x = top * i as f64 / 200.0;
                        let q = 1.0 - 10f64.powf(-x);
                        (x, h.value_at_quantile(q).max(1) as f64 / 1e6)
                    })
                    .collect();
                Some((*p, points))
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        let ymin = series
            .iter()
            .flat_map(|(_, v)| v.iter().map(|p| p.1))
            .fold(f64::MAX, f64::min)
            * 0.8;
        let ymax = series
            .iter()
            .flat_map(|(_, v)| v.iter().map(|p| p.1))
            .fold(0.0, f64::max)
            * 1.25;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("HTTP/1.1 keep-alive, open loop at {label}"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..4f64, (ymin.max(0.001)..ymax.max(0.01)).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&|x| match x.round() as i64 {
                0 => "0 %".into(),
                1 => "90 %".into(),
                2 => "99 %".into(),
                3 => "99.9 %".into(),
                _ => "99.99 %".into(),
            })
            .x_desc("percentile")
            .y_desc("latency (ms, log)")
            .draw()
            .map_err(|e| e.to_string())?;
        for (path, points) in series {
            let c = color(path);
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(path.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
