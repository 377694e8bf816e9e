//! The benchmark's charts, drawn with plotters from the run's own figures as SVG files (in
//! `BENCH_CHART_DIR`, by default `docs/`, where docs/performance.md shows them).

use std::path::Path;

use plotters::prelude::*;

use crate::Result;

/// The palette, one color per series in order.
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Throughput against C (log axis), one line per case.
pub(crate) fn throughput(
    path: &Path,
    title: &str,
    clients: &[usize],
    series: &[(String, Vec<f64>)],
) -> Result<()> {
    let top = series
        .iter()
        .flat_map(|(_, values)| values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.15;
    let last = clients.iter().copied().max().unwrap_or(1).max(2) as f64;
    let root = SVGBackend::new(path, (820, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..last * 1.1).log_scale(), 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("C, client threads (log scale)")
        .y_desc("operations per second")
        .x_label_formatter(&|c| format!("{c:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let lines = series.iter().map(|(name, values)| {
        let points = clients
            .iter()
            .zip(values)
            .filter(|(_, v)| v.is_finite())
            .map(|(c, v)| (*c as f64, *v))
            .collect();
        (name.as_str(), points)
    });
    draw_lines(&mut chart, lines, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// Overload latencies: for each case and C, its p50, p99, p99.9 and max (ms, log axis).
pub(crate) fn latencies(path: &Path, title: &str, series: &[(String, [f64; 4])]) -> Result<()> {
    let all = series.iter().flat_map(|(_, v)| v.iter().copied());
    let (low, high) = all.fold((f64::MAX, 0.001f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let root = SVGBackend::new(path, (820, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.2f64..3.2, (low.max(0.001) / 1.5..high * 1.5).log_scale())?;
    let names = ["p50", "p99", "p99.9", "max"];
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && (0.0..4.0).contains(&i) {
                names[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_desc("latency, ms (log scale)")
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    let lines = series.iter().map(|(name, values)| {
        let points = values
            .iter()
            .enumerate()
            .map(|(x, v)| (x as f64, v.max(0.001)))
            .collect();
        (name.as_str(), points)
    });
    draw_lines(&mut chart, lines, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

/// One line with dots per series, in the palette's colors, and the legend at `legend`.
fn draw_lines<'a, 'n, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: impl Iterator<Item = (&'n str, Vec<(f64, f64)>)>,
    legend: SeriesLabelPosition,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, (name, points)) in series.enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(legend)
        .draw()?;
    Ok(())
}
