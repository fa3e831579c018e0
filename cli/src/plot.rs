//! `simulate --plot`: hit rate and modeled time against slots per layer, one line per policy and
//! pool sharing (a shared pool's runs labelled `policy/shared`, as the tables name them), as SVG.

use expertslab_std::trace::replay::Sharing;
use plotters::prelude::*;

use crate::replay_args::Run;

/// Line colours, one per series in order of first appearance.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// The series of a run: its policy, with `/shared` for a shared pool.
pub fn series(run: &Run) -> String {
    match run.sharing {
        Sharing::PerLayer => run.policy.name().to_owned(),
        Sharing::Shared => format!("{}/shared", run.policy.name()),
    }
}

/// Draws two panels, hit rate (top) and modeled time (bottom) against slots per layer, one line
/// per [`series`], as the text of an SVG file.
pub fn draw(runs: &[Run]) -> Result<String, String> {
    let mut policies: Vec<String> = Vec::new();
    for run in runs {
        let label = series(run);
        if !policies.contains(&label) {
            policies.push(label);
        }
    }
    let slots = runs.iter().map(|r| r.slots as f64);
    let (lo, hi) = slots.fold((f64::MAX, 0.0f64), |(lo, hi), b| (lo.min(b), hi.max(b)));
    let (lo, hi) = if lo >= hi { (lo - 1.0, hi + 1.0) } else { (lo, hi) };
    let max_time = runs.iter().map(|r| r.report.total.modeled_time_s).fold(0.0, f64::max).max(1e-9) * 1.05;

    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (800, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(450);
    let x = lo..hi;
    panel(&top, "hit rate by slots per layer", "hit rate", x.clone(), 1.0, runs, &policies, |r| {
        r.report.total.hit_rate()
    })?;
    let time = |r: &Run| r.report.total.modeled_time_s;
    panel(&bottom, "modeled time by slots per layer", "modeled time (s)", x, max_time, runs, &policies, time)?;
    root.present().map_err(|e| e.to_string())?;
    drop((top, bottom, root));
    Ok(svg)
}

/// One chart: `value` of each run against its slots per layer, one line per series.
#[allow(clippy::too_many_arguments)]
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_label: &str,
    x: std::ops::Range<f64>,
    y_max: f64,
    runs: &[Run],
    policies: &[String],
    value: impl Fn(&Run) -> f64,
) -> Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("slots per layer").y_desc(y_label).draw().map_err(|e| e.to_string())?;
    for (i, policy) in policies.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<(f64, f64)> =
            runs.iter().filter(|r| series(r) == *policy).map(|r| (r.slots as f64, value(r))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(policy.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, colour.filled()))).map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}
