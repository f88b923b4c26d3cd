//! Line plots rendered to SVG with plotters.
//!
//! Convergence plots are where optimizer comparisons are read, and their data
//! is awkward: objective gaps span ten decades and reach exactly zero at the
//! best point, a diverging run produces NaN, and a run interrupted before its
//! first iteration has no points at all. So the plot cleans its input (drops
//! points a log axis cannot show, never panics), chooses its own ranges and
//! tick positions (decades on log axes, 1-2-5 steps on linear ones), and
//! still renders an axis box with a "no data" note when nothing is left.
//!
//! Text is emitted as SVG `<text>` elements and laid out with plotters'
//! built-in size estimate: no font files are read, so the output is the same
//! on every machine (reports are regenerated and diffed in CI) and the
//! viewer's font renders the labels.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use crate::error::{ReportError, Result};
use crate::format::{fmt_sci, fmt_sig};
use crate::fs::write_atomic;

/// Default output size in pixels (SVG user units).
pub const DEFAULT_PLOT_SIZE: (u32, u32) = (800, 500);

/// Values beyond this magnitude are dropped from linear axes: the range
/// arithmetic (max - min, plus a margin) must stay finite.
const MAX_LINEAR_ABS: f64 = 1e300;

/// Series with at most this many points also get a marker per point, so a
/// short run (dense Newton's handful of iterations) is visible as steps, and
/// a single-point series is visible at all.
const MARKER_MAX_POINTS: usize = 40;

const FONT: &str = "sans-serif";
const TITLE_PX: u32 = 22;
const LABEL_PX: u32 = 14;
const DESC_PX: u32 = 16;

/// One named curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` in data units; points a log axis cannot show are dropped when drawn.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series named `name` through `points`, in the order given.
    pub fn new(name: impl Into<String>, points: impl IntoIterator<Item = (f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points: points.into_iter().collect(),
        }
    }
}

/// A 2-D line plot with optional log axes and a legend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinePlot {
    /// Caption above the chart; empty for none.
    pub title: String,
    /// Description under the x axis.
    pub x_label: String,
    /// Description beside the y axis.
    pub y_label: String,
    /// Whether the x axis is log10; non-positive x values are then dropped.
    pub log_x: bool,
    /// Whether the y axis is log10; non-positive y values are then dropped.
    pub log_y: bool,
    /// The curves, drawn in order; position `i` is coloured [`series_color`]`(i)`.
    pub series: Vec<Series>,
    /// Width and height in pixels.
    pub size: (u32, u32),
}

impl Default for LinePlot {
    fn default() -> Self {
        Self {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            log_x: false,
            log_y: false,
            series: Vec::new(),
            size: DEFAULT_PLOT_SIZE,
        }
    }
}

/// Colour of series `index`: Tableau 10 (distinct, colour-blind aware, fine
/// on white) for the first ten, then hues spaced by the golden angle. Indexed
/// by position in [`LinePlot::series`], not by drawn order, so an optimizer
/// keeps its colour across plots even when it has no points in one of them.
pub fn series_color(index: usize) -> (u8, u8, u8) {
    const TABLEAU10: [(u8, u8, u8); 10] = [
        (0x4e, 0x79, 0xa7),
        (0xf2, 0x8e, 0x2b),
        (0xe1, 0x57, 0x59),
        (0x76, 0xb7, 0xb2),
        (0x59, 0xa1, 0x4f),
        (0xed, 0xc9, 0x48),
        (0xb0, 0x7a, 0xa1),
        (0xff, 0x9d, 0xa7),
        (0x9c, 0x75, 0x5f),
        (0xba, 0xb0, 0xac),
    ];
    if let Some(&c) = TABLEAU10.get(index) {
        return c;
    }
    let hue = ((index - TABLEAU10.len()) as f64 * 137.507_764) % 360.0;
    let rgb = HSLColor(hue / 360.0, 0.65, 0.45).to_rgba();
    (rgb.0, rgb.1, rgb.2)
}

impl LinePlot {
    /// An empty plot with labels; add series with [`LinePlot::with_series`].
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            ..Self::default()
        }
    }

    /// Sets whether the x axis is log10.
    pub fn log_x(mut self, on: bool) -> Self {
        self.log_x = on;
        self
    }

    /// Sets whether the y axis is log10.
    pub fn log_y(mut self, on: bool) -> Self {
        self.log_y = on;
        self
    }

    /// Sets the output size in pixels; [`LinePlot::render_svg`] refuses less than 100x100.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    /// Appends a series; its colour follows from its position.
    pub fn with_series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// The points that will be drawn: one entry per input series, in order,
    /// keeping only points that are finite and, on a log axis, positive (on a
    /// linear axis, within ±1e300, so range arithmetic cannot overflow). A
    /// series left empty is not drawn (and has no legend entry).
    pub fn cleaned_series(&self) -> Vec<Series> {
        let keep = |v: f64, log: bool| {
            v.is_finite()
                && if log {
                    v > 0.0
                } else {
                    v.abs() <= MAX_LINEAR_ABS
                }
        };
        self.series
            .iter()
            .map(|s| Series {
                name: s.name.clone(),
                points: s
                    .points
                    .iter()
                    .copied()
                    .filter(|&(x, y)| keep(x, self.log_x) && keep(y, self.log_y))
                    .collect(),
            })
            .collect()
    }

    /// Renders the plot as an SVG document.
    pub fn render_svg(&self) -> Result<String> {
        let (width, height) = self.size;
        if width < 100 || height < 100 {
            return Err(ReportError::invalid(
                self.what(),
                format!("size {width}x{height} is too small (at least 100x100)"),
            ));
        }
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
            self.draw(&root).map_err(|message| ReportError::Plot {
                what: self.what(),
                message,
            })?;
            root.present().map_err(|e| ReportError::Plot {
                what: self.what(),
                message: e.to_string(),
            })?;
        }
        Ok(svg)
    }

    /// Renders the plot and writes it to `path` atomically.
    pub fn write_svg(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path, self.render_svg()?)
    }

    fn what(&self) -> String {
        if self.title.is_empty() {
            "untitled plot".to_string()
        } else {
            format!("plot {:?}", self.title)
        }
    }

    /// Maps a data point to plot space, where log axes are linear in log10.
    fn to_plot_space(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let t = |v: f64, log: bool| if log { v.log10() } else { v };
        (t(x, self.log_x), t(y, self.log_y))
    }

    fn draw(&self, root: &DrawingArea<SVGBackend<'_>, Shift>) -> std::result::Result<(), String> {
        let err = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
        root.fill(&WHITE).map_err(err)?;

        let series: Vec<Drawn> = self
            .cleaned_series()
            .into_iter()
            .enumerate()
            .filter(|(_, s)| !s.points.is_empty())
            .map(|(index, s)| Drawn {
                index,
                points: s.points.iter().map(|&p| self.to_plot_space(p)).collect(),
                name: s.name,
            })
            .collect();
        let all = || series.iter().flat_map(|s| s.points.iter().copied());

        let x_axis = Axis::fit(all().map(|p| p.0), self.log_x, self.size.0 as f64 / 110.0);
        let y_axis = Axis::fit(all().map(|p| p.1), self.log_y, self.size.1 as f64 / 70.0);

        let x_fmt = |v: &f64| x_axis.label(*v);
        let y_fmt = |v: &f64| y_axis.label(*v);
        let widest_y_label = y_axis
            .bold
            .iter()
            .map(|&v| y_axis.label(v).chars().count())
            .max()
            .unwrap_or(1);
        // plotters' built-in estimate is about 0.6 px per font pixel per
        // character; leave room for the tick marks and the rotated y label.
        let y_area = (widest_y_label as u32 * LABEL_PX * 6 / 10) + DESC_PX + 24;

        let mut builder = ChartBuilder::on(root);
        builder
            .margin(12)
            .margin_right(24)
            .x_label_area_size(DESC_PX + LABEL_PX + 24)
            .y_label_area_size(y_area);
        if !self.title.is_empty() {
            builder.caption(&self.title, (FONT, TITLE_PX));
        }
        let mut chart = builder
            .build_cartesian_2d(x_axis.clone(), y_axis.clone())
            .map_err(err)?;

        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, LABEL_PX))
            .axis_desc_style((FONT, DESC_PX))
            .bold_line_style(BLACK.mix(0.15))
            .light_line_style(BLACK.mix(0.06))
            .draw()
            .map_err(err)?;

        // A closed box, also for the empty plot, so the figure is recognisably
        // a (blank) chart rather than a rendering failure.
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x_axis.lo, y_axis.lo), (x_axis.hi, y_axis.hi)],
                BLACK.stroke_width(1),
            )))
            .map_err(err)?;

        if series.is_empty() {
            let centre = ((x_axis.lo + x_axis.hi) / 2.0, (y_axis.lo + y_axis.hi) / 2.0);
            let grey = BLACK.mix(0.6);
            let style = TextStyle::from((FONT, DESC_PX).into_font())
                .color(&grey)
                .pos(Pos::new(HPos::Center, VPos::Center));
            chart
                .draw_series(std::iter::once(Text::new("no data", centre, style)))
                .map_err(err)?;
            return Ok(());
        }

        for Drawn {
            index,
            points,
            name,
        } in &series
        {
            let (r, g, b) = series_color(*index);
            let color = RGBColor(r, g, b);
            let line = color.stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), line))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line));
            if points.len() <= MARKER_MAX_POINTS {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
            }
        }

        let longest_name = series
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(0);
        let plot_px = chart.plotting_area().dim_in_pixel();
        let legend_frac = (
            (longest_name as f64 * LABEL_PX as f64 * 0.6 + 50.0) / plot_px.0.max(1) as f64,
            (series.len() as f64 * (LABEL_PX as f64 + 6.0) + 16.0) / plot_px.1.max(1) as f64,
        );
        let position = quietest_corner(&x_axis, &y_axis, all(), legend_frac);
        chart
            .configure_series_labels()
            .position(position)
            .margin(10)
            .label_font((FONT, LABEL_PX))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

/// A series that has points left to draw, in plot space.
struct Drawn {
    /// Position in [`LinePlot::series`], which fixes the colour.
    index: usize,
    points: Vec<(f64, f64)>,
    name: String,
}

/// One axis in plot space (log10 of the data for a log axis): its range, tick
/// positions and how to label them.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    /// Labelled ticks with grid lines.
    bold: Vec<f64>,
    /// Unlabelled fainter grid lines (minor decades on log axes).
    light: Vec<f64>,
    /// Significant digits that tell neighbouring tick labels apart.
    digits: usize,
}

impl Axis {
    /// Fits an axis to plot-space `values` with about `target_ticks` labels.
    fn fit(values: impl Iterator<Item = f64>, log: bool, target_ticks: f64) -> Self {
        let (min, max) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let (lo, hi) = if min > max {
            // No data: one decade on a log axis, the unit interval otherwise.
            (0.0, 1.0)
        } else if min == max {
            let pad = if log {
                0.5
            } else if min == 0.0 {
                1.0
            } else {
                min.abs() * 0.1
            };
            (min - pad, max + pad)
        } else {
            let pad = (max - min) * 0.05;
            (min - pad, max + pad)
        };
        let target = target_ticks.clamp(3.0, 12.0);
        let ticks = if log {
            log_ticks(lo, hi, target)
        } else {
            linear_ticks(lo, hi, target)
        };
        Self {
            lo,
            hi,
            log,
            bold: ticks.bold,
            light: ticks.light,
            digits: ticks.digits,
        }
    }

    fn label(&self, v: f64) -> String {
        if self.log {
            fmt_sci(10f64.powf(v), self.digits)
        } else {
            fmt_sig(v, self.digits)
        }
    }
}

/// The axis is its own plotters coordinate: a linear map of [lo, hi] with
/// exactly our tick positions (plotters' own log-axis ticks vanish on ranges
/// shorter than a decade).
impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.lo..self.hi).map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

struct Ticks {
    bold: Vec<f64>,
    light: Vec<f64>,
    digits: usize,
}

/// Ticks at multiples of a 1-2-5 step, so labels are short round numbers.
fn linear_ticks(lo: f64, hi: f64, target: f64) -> Ticks {
    let (step, step_exp) = nice_step((hi - lo) / target);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let bold: Vec<f64> = (first..=last).map(|k| k as f64 * step).collect();
    // Enough digits to show the step: 1000.002 vs 1000.004 needs 7.
    let magnitude = lo.abs().max(hi.abs());
    let lead_exp = if magnitude > 0.0 {
        magnitude.log10().floor() as i32
    } else {
        0
    };
    let digits = (lead_exp - step_exp + 1).clamp(1, 17) as usize;
    Ticks {
        bold,
        light: Vec::new(),
        digits,
    }
}

/// The smallest step of the form {1, 2, 5} x 10^k that is at least `raw`,
/// with its exponent k.
fn nice_step(raw: f64) -> (f64, i32) {
    let raw = if raw.is_finite() && raw > 0.0 {
        raw
    } else {
        1.0
    };
    let mut exp = raw.log10().floor() as i32;
    let mantissa = raw / 10f64.powi(exp);
    let m = if mantissa <= 1.0 + 1e-9 {
        1.0
    } else if mantissa <= 2.0 + 1e-9 {
        2.0
    } else if mantissa <= 5.0 + 1e-9 {
        5.0
    } else {
        exp += 1;
        1.0
    };
    (m * 10f64.powi(exp), exp)
}

/// Ticks for a log axis spanning [lo, hi] in log10 units: whole decades
/// when at least two fit (every k-th decade if there are many), otherwise
/// 1-2-5 or 1..9 multiples of a decade, otherwise linear ticks mapped to log
/// space (a range narrower than a factor of two).
fn log_ticks(lo: f64, hi: f64, target: f64) -> Ticks {
    let first = lo.ceil() as i64;
    let last = hi.floor() as i64;
    let decades = last - first + 1;
    if decades >= 2 {
        let stride = [1i64, 2, 3, 5, 10, 20, 50, 100]
            .into_iter()
            .find(|&s| (decades as f64 / s as f64) <= target)
            .unwrap_or(100);
        let bold: Vec<f64> = (first..=last)
            .filter(|e| e.rem_euclid(stride) == 0)
            .map(|e| e as f64)
            .collect();
        let light: Vec<f64> = if stride == 1 && decades <= 8 {
            let from = lo.floor() as i64;
            let to = hi.ceil() as i64;
            (from..=to)
                .flat_map(|e| (2..=9).map(move |m| e as f64 + (m as f64).log10()))
                .filter(|&t| t >= lo && t <= hi)
                .collect()
        } else {
            (first..=last)
                .filter(|e| e.rem_euclid(stride) != 0)
                .map(|e| e as f64)
                .collect()
        };
        // A stride that skips every decade would leave a single tick.
        if bold.len() >= 2 {
            return Ticks {
                bold,
                light,
                digits: 1,
            };
        }
    }
    for mantissas in [
        &[1.0, 2.0, 5.0][..],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    ] {
        let from = lo.floor() as i64;
        let to = hi.ceil() as i64;
        let bold: Vec<f64> = (from..=to)
            .flat_map(|e| mantissas.iter().map(move |&m: &f64| e as f64 + m.log10()))
            .filter(|&t| t >= lo && t <= hi)
            .collect();
        if bold.len() >= 3 {
            return Ticks {
                bold,
                light: Vec::new(),
                digits: 1,
            };
        }
    }
    let (vlo, vhi) = (10f64.powf(lo), 10f64.powf(hi));
    let linear = linear_ticks(vlo, vhi, target.min(6.0));
    Ticks {
        bold: linear
            .bold
            .into_iter()
            .filter(|&v| v > 0.0)
            .map(f64::log10)
            .collect(),
        light: Vec::new(),
        digits: linear.digits,
    }
}

/// Of the four plot corners, the one where a legend of `size` (fractions of
/// the plotting area) covers the fewest data points, preferring the top
/// right, as is customary, on ties.
fn quietest_corner(
    x: &Axis,
    y: &Axis,
    points: impl Iterator<Item = (f64, f64)>,
    (w, h): (f64, f64),
) -> SeriesLabelPosition {
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let mut counts = [0usize; 4];
    for (px, py) in points {
        let u = (px - x.lo) / (x.hi - x.lo);
        let v = (py - y.lo) / (y.hi - y.lo);
        for (count, &(_, right, top)) in counts.iter_mut().zip(&corners) {
            let in_x = if right { u >= 1.0 - w } else { u <= w };
            let in_y = if top { v >= 1.0 - h } else { v <= h };
            if in_x && in_y {
                *count += 1;
            }
        }
    }
    let best = (0..4).min_by_key(|&i| (counts[i], i)).unwrap_or(0);
    corners[best].0.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).expect("SVG must be well-formed XML")
    }

    fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or("").trim().to_string())
            .collect()
    }

    fn hex((r, g, b): (u8, u8, u8)) -> String {
        format!("#{r:02X}{g:02X}{b:02X}")
    }

    /// Number of points in the longest polyline drawn in `color`: the data
    /// line (the legend sample is a two-point polyline).
    fn data_line_points(doc: &roxmltree::Document<'_>, color: &str) -> usize {
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some(color))
            .map(|n| {
                n.attribute("points")
                    .unwrap_or("")
                    .split_whitespace()
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    fn sample_plot() -> LinePlot {
        LinePlot::new("Objective gap", "wall time (s)", "f - f*")
            .log_y(true)
            .with_series(Series::new(
                "sgd",
                (0..100).map(|i| (i as f64 * 0.1, 0.5 * 0.97f64.powi(i))),
            ))
            .with_series(Series::new(
                "newton-cg <damped> & \"friends\"",
                (0..8).map(|i| (i as f64 * 1.3, 10f64.powi(-(i * i) / 3))),
            ))
    }

    #[test]
    fn svg_is_well_formed_and_names_every_series() {
        let svg = sample_plot().render_svg().unwrap();
        let doc = parse(&svg);
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts = texts(&doc);
        assert!(texts.iter().any(|t| t == "sgd"), "{texts:?}");
        assert!(
            texts
                .iter()
                .any(|t| t == "newton-cg <damped> & \"friends\""),
            "{texts:?}"
        );
        assert!(texts.iter().any(|t| t == "Objective gap"));
        assert!(texts.iter().any(|t| t == "wall time (s)"));
        // Log-axis ticks are in scientific notation.
        assert!(texts.iter().any(|t| t == "1e-6"), "{texts:?}");
        // Distinct colours, each drawing its full curve.
        assert_eq!(data_line_points(&doc, &hex(series_color(0))), 100);
        assert_eq!(data_line_points(&doc, &hex(series_color(1))), 8);
    }

    #[test]
    fn rendering_is_deterministic() {
        assert_eq!(
            sample_plot().render_svg().unwrap(),
            sample_plot().render_svg().unwrap()
        );
    }

    #[test]
    fn log_axes_drop_zeros_negatives_and_nan() {
        let plot = LinePlot::new("gaps", "iteration", "gap")
            .log_x(true)
            .log_y(true)
            .with_series(Series::new(
                "mixed",
                vec![
                    (1.0, 1.0),
                    (2.0, 0.0),
                    (3.0, f64::NAN),
                    (4.0, -1.0),
                    (0.0, 1.0),
                    (f64::INFINITY, 1.0),
                    (5.0, 1e-3),
                    (6.0, 1e-9),
                ],
            ))
            .with_series(Series::new("all zero", vec![(1.0, 0.0), (2.0, 0.0)]));
        let cleaned = plot.cleaned_series();
        assert_eq!(
            cleaned[0].points,
            vec![(1.0, 1.0), (5.0, 1e-3), (6.0, 1e-9)]
        );
        assert!(cleaned[1].points.is_empty());

        let svg = plot.render_svg().unwrap();
        let doc = parse(&svg);
        assert_eq!(data_line_points(&doc, &hex(series_color(0))), 3);
        // The emptied series is skipped entirely: no line, no legend entry.
        assert_eq!(data_line_points(&doc, &hex(series_color(1))), 0);
        let texts = texts(&doc);
        assert!(!texts.iter().any(|t| t == "all zero"), "{texts:?}");
        assert!(texts.iter().any(|t| t == "mixed"));
    }

    #[test]
    fn linear_axes_drop_only_non_finite() {
        let plot = LinePlot::new("t", "x", "y").with_series(Series::new(
            "s",
            vec![
                (0.0, -1.0),
                (1.0, f64::NAN),
                (2.0, 0.0),
                (f64::NEG_INFINITY, 3.0),
            ],
        ));
        assert_eq!(
            plot.cleaned_series()[0].points,
            vec![(0.0, -1.0), (2.0, 0.0)]
        );
        parse(&plot.render_svg().unwrap());
    }

    #[test]
    fn empty_plot_renders_axis_box_and_note() {
        for plot in [
            LinePlot::new("nothing yet", "x", "y"),
            LinePlot::new("", "x", "y").log_y(true),
            LinePlot::new("only NaN", "x", "y")
                .log_x(true)
                .with_series(Series::new("a", vec![(f64::NAN, 1.0)]))
                .with_series(Series::new("b", vec![])),
        ] {
            let svg = plot.render_svg().unwrap();
            let doc = parse(&svg);
            let texts = texts(&doc);
            assert!(texts.iter().any(|t| t == "no data"), "{texts:?}");
            assert!(doc.descendants().any(|n| n.has_tag_name("rect")));
        }
    }

    #[test]
    fn odd_ranges_never_panic() {
        let cases: Vec<(bool, Vec<(f64, f64)>)> = vec![
            (false, vec![(1.0, 1.0)]),
            (true, vec![(1.0, 1.0)]),
            (false, vec![(0.0, 0.0), (0.0, 0.0)]),
            (false, vec![(-1e300, 1e300), (1e300, -1e300)]),
            (false, vec![(1e301, 1.0), (0.0, 1.0)]),
            (true, vec![(1.0, f64::MIN_POSITIVE), (2.0, f64::MAX)]),
            (true, vec![(1.0, 5e-324), (2.0, 1.0)]),
            (true, vec![(1.0, 0.42), (2.0, 0.44)]),
            (true, vec![(1.0, 1000.0), (2.0, 1000.001)]),
            (false, vec![(1.0, 1000.0), (2.0, 1000.000001)]),
            (false, vec![(0.0, 0.9123), (1.0, 0.9146)]),
        ];
        for (log_y, points) in cases {
            let plot = LinePlot::new("odd", "x", "y")
                .log_y(log_y)
                .with_series(Series::new("s", points.clone()));
            let svg = plot
                .render_svg()
                .unwrap_or_else(|e| panic!("{points:?}: {e}"));
            parse(&svg);
            // The y axis has at least two ticks, with distinct labels (enough
            // digits) and inside the range.
            let ys = plot.cleaned_series()[0]
                .points
                .iter()
                .map(|&p| plot.to_plot_space(p).1)
                .collect::<Vec<_>>();
            let axis = Axis::fit(ys.into_iter(), log_y, 7.0);
            let labels: Vec<String> = axis.bold.iter().map(|&v| axis.label(v)).collect();
            let mut distinct = labels.clone();
            distinct.sort();
            distinct.dedup();
            assert!(labels.len() >= 2, "{points:?}: {labels:?}");
            assert_eq!(distinct.len(), labels.len(), "{points:?}: {labels:?}");
            assert!(
                axis.bold.iter().all(|&t| t >= axis.lo && t <= axis.hi),
                "{points:?}: {axis:?}"
            );
        }
    }

    #[test]
    fn tick_choices() {
        let t = linear_ticks(-0.05, 1.05, 6.0);
        assert_eq!(t.bold.len(), 6);
        let labels: Vec<String> = t.bold.iter().map(|&v| fmt_sig(v, t.digits)).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);

        let t = linear_ticks(0.0, 1000.0, 6.0);
        let labels: Vec<String> = t.bold.iter().map(|&v| fmt_sig(v, t.digits)).collect();
        assert_eq!(labels, ["0", "200", "400", "600", "800", "1000"]);

        let t = log_ticks(-9.3, 0.2, 8.0);
        assert_eq!(t.bold.first(), Some(&-8.0));
        assert!(t.bold.contains(&0.0));
        let labels: Vec<String> = t.bold.iter().map(|&v| fmt_sci(10f64.powf(v), 1)).collect();
        assert!(labels.contains(&"1e-6".to_string()), "{labels:?}");

        // Less than a decade: 1-2-5 ticks.
        let t = log_ticks(0.1f64.log10(), 0.8f64.log10(), 6.0);
        let labels: Vec<String> = t
            .bold
            .iter()
            .map(|&v| fmt_sci(10f64.powf(v), t.digits))
            .collect();
        assert_eq!(labels, ["1e-1", "2e-1", "5e-1"]);
    }

    #[test]
    fn many_series_get_distinct_colours() {
        let colours: std::collections::HashSet<_> = (0..30).map(series_color).collect();
        assert_eq!(colours.len(), 30);
    }

    #[test]
    fn too_small_is_an_error_and_write_svg_writes() {
        let err = LinePlot::new("tiny", "x", "y")
            .size(0, 0)
            .render_svg()
            .unwrap_err();
        assert!(err.to_string().contains("tiny"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.svg");
        sample_plot().write_svg(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        parse(&text);
    }
}
