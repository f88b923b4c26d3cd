//! The comparison report: its on-disk schema (`summary.json`, `trace.csv`),
//! the figures and Markdown derived from it, and the check that committed
//! reports are exactly what their data produce.
//!
//! Everything a reader sees is a function of `summary.json` and
//! `trace.csv` alone, so `cargo xtask report --check` can regenerate a
//! committed report without rerunning an optimizer. The weight images are
//! drawn by the harness from the final parameters and only referenced here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hessfree_report::{
    Csv, LinePlot, ReportError, Result, Series, ensure_dir, escape_cell, fmt_bytes, fmt_duration_s,
    fmt_sig, markdown_image, markdown_table, to_json_pretty, write_atomic,
};
use hessfree_solvers::TraceRecord;
use serde::{Deserialize, Serialize};

use crate::experiment::ProblemSpec;

pub const SUMMARY_FILE: &str = "summary.json";
pub const TRACE_FILE: &str = "trace.csv";
pub const REPORT_FILE: &str = "report.md";

/// Relative objective tolerance the generated paragraph measures "fastest" at.
pub const OBJECTIVE_TOLERANCE: f64 = 1e-6;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub cpu_model: String,
    pub cores: usize,
    /// Threads the numeric kernels used.
    pub threads: usize,
}

impl Host {
    /// The machine this process runs on, as every report records it.
    pub fn this_machine() -> Self {
        Self {
            cpu_model: crate::provenance::cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads: candle_core::utils::get_num_threads(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub name: String,
    pub train_samples: usize,
    pub test_samples: usize,
}

/// One optimiser's run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The label on the command line, e.g. `newton-cg` or `sgd@init=normal:0.1`.
    pub name: String,
    pub method: String,
    /// The objective this run minimised, e.g. `softmax, l2=0.0001`; runs are
    /// only compared on objective values within the same problem.
    pub problem: String,
    pub settings: serde_json::Value,
    pub stop_reason: String,
    pub stop_detail: String,
    pub iterations: u64,
    pub wall_seconds: f64,
    pub final_objective: f64,
    pub final_grad_norm: f64,
    /// A classifier's accuracies (absent for an autoencoder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    /// An autoencoder's reconstruction errors (squared error per case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_error: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_error: Option<f64>,
    pub grad_evals: u64,
    pub loss_evals: u64,
    pub hvp_evals: u64,
    pub data_passes: f64,
    pub peak_memory_bytes: Option<u64>,
    /// For dense Newton: the bytes of the matrix it formed.
    pub hessian_bytes: Option<u64>,
    /// A published figure to compare against (e.g. the notebook's accuracy).
    pub reference_test_accuracy: Option<f64>,
    pub extras: BTreeMap<String, f64>,
    /// The PNG of the ten class weight images, relative to the report.
    pub weights_image: Option<String>,
    /// The final parameters, relative to the report.
    pub weights_file: Option<String>,
    /// The code that computed the run's products (kernel, storage,
    /// instruction set, dtype), as the objective reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// For a point of a learning-rate grid: the grid's token (e.g.
    /// `adam@lr=1e-4|1e-3`). Grid points run on the grid's short budget
    /// and are shown in the grid's table, not in the figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<String>,
    /// For the run that continued a grid's best point to the full budget:
    /// that grid's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<String>,
    /// A data-parallel (MPI) run's communication; absent in one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communication: Option<CommSummary>,
}

/// What one run's sums across MPI ranks cost, as rank 0 saw them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommSummary {
    pub ranks: usize,
    /// Sums across ranks (each a gather to rank 0 and a broadcast): one
    /// per gradient, loss, curvature product and diagonal.
    pub allreduces: u64,
    /// Payload bytes those sums moved between ranks, in all.
    pub bytes: u64,
    /// `bytes` over the run's outer iterations.
    pub bytes_per_iteration: f64,
    /// Rank 0's solver time inside the sums, waiting for slower ranks
    /// included, and the rest of its solver time.
    pub comm_seconds: f64,
    pub compute_seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareSummary {
    pub kind: String,
    pub title: String,
    pub host: Host,
    pub git_revision: String,
    pub date: String,
    pub command_line: String,
    pub seed: u64,
    pub dataset: DatasetInfo,
    pub device: String,
    pub dtype: String,
    pub problem: ProblemSpec,
    pub runs: Vec<RunSummary>,
    /// An autoencoder report's picture of test digits and each run's
    /// reconstructions, relative to the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstructions_image: Option<String>,
    /// Why the report's problem was chosen, in the report's own words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
}

/// A summary with the traces of its runs.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareReport {
    pub summary: CompareSummary,
    /// `(run name, records)` in the order of `summary.runs`.
    pub traces: Vec<(String, Vec<TraceRecord>)>,
}

/// Appended to [`TRACE_HEADER`] when a run records reconstruction errors
/// (autoencoders), so that classifier traces keep their 14 columns.
const ERROR_COLUMNS: [&str; 2] = ["train_error", "test_error"];

const TRACE_HEADER: [&str; 14] = [
    "run",
    "iter",
    "wall_seconds",
    "objective",
    "grad_norm",
    "test_accuracy",
    "grad_evals",
    "loss_evals",
    "hvp_evals",
    "data_passes",
    "damping",
    "radius",
    "cg_iters",
    "step_size",
];

fn opt<T: ToString>(x: Option<T>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

/// Splits one CSV line, honouring RFC 4180 quotes.
fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

fn bad_csv(line: usize, reason: impl Into<String>) -> ReportError {
    ReportError::invalid(format!("{TRACE_FILE} line {line}"), reason.into())
}

impl CompareReport {
    /// Whether any record holds reconstruction errors.
    fn has_errors(&self) -> bool {
        self.traces
            .iter()
            .flat_map(|(_, records)| records)
            .any(|r| r.train_error.is_some() || r.test_error.is_some())
    }

    pub fn trace_csv(&self) -> Result<String> {
        let errors = self.has_errors();
        let mut header: Vec<&str> = TRACE_HEADER.to_vec();
        if errors {
            header.extend(ERROR_COLUMNS);
        }
        let mut csv = Csv::new(header);
        for (name, records) in &self.traces {
            for r in records {
                let mut row = vec![
                    name.clone(),
                    r.iter.to_string(),
                    r.wall_seconds.to_string(),
                    r.objective.to_string(),
                    r.grad_norm.to_string(),
                    opt(r.test_accuracy),
                    r.grad_evals.to_string(),
                    r.loss_evals.to_string(),
                    r.hvp_evals.to_string(),
                    r.data_passes.to_string(),
                    opt(r.damping),
                    opt(r.radius),
                    opt(r.cg_iters),
                    opt(r.step_size),
                ];
                if errors {
                    row.extend([opt(r.train_error), opt(r.test_error)]);
                }
                csv.push_row(row)?;
            }
        }
        Ok(csv.render())
    }

    /// Reads back what [`CompareReport::trace_csv`] wrote (floats round-trip exactly).
    pub fn parse_trace_csv(text: &str) -> Result<Vec<(String, Vec<TraceRecord>)>> {
        let mut lines = text.lines().enumerate();
        let mut with_errors: Vec<&str> = TRACE_HEADER.to_vec();
        with_errors.extend(ERROR_COLUMNS);
        let columns = match lines.next().map(|(_, h)| split_csv_line(h)) {
            Some(h) if h == TRACE_HEADER => TRACE_HEADER.len(),
            Some(h) if h == with_errors => with_errors.len(),
            _ => {
                return Err(bad_csv(
                    1,
                    format!(
                        "expected the header {} (with {} for an autoencoder)",
                        TRACE_HEADER.join(","),
                        ERROR_COLUMNS.join(",")
                    ),
                ));
            }
        };
        let mut runs: Vec<(String, Vec<TraceRecord>)> = Vec::new();
        for (i, line) in lines {
            let n = i + 1;
            let f = split_csv_line(line);
            if f.len() != columns {
                return Err(bad_csv(
                    n,
                    format!("{} fields, expected {columns}", f.len()),
                ));
            }
            fn num<T: std::str::FromStr>(s: &str, n: usize, col: &str) -> Result<T> {
                s.parse()
                    .map_err(|_| bad_csv(n, format!("column {col}: `{s}` is not a number")))
            }
            fn optnum<T: std::str::FromStr>(s: &str, n: usize, col: &str) -> Result<Option<T>> {
                if s.is_empty() {
                    Ok(None)
                } else {
                    num(s, n, col).map(Some)
                }
            }
            let record = TraceRecord {
                iter: num(&f[1], n, "iter")?,
                wall_seconds: num(&f[2], n, "wall_seconds")?,
                objective: num(&f[3], n, "objective")?,
                grad_norm: num(&f[4], n, "grad_norm")?,
                test_accuracy: optnum(&f[5], n, "test_accuracy")?,
                grad_evals: num(&f[6], n, "grad_evals")?,
                loss_evals: num(&f[7], n, "loss_evals")?,
                hvp_evals: num(&f[8], n, "hvp_evals")?,
                data_passes: num(&f[9], n, "data_passes")?,
                damping: optnum(&f[10], n, "damping")?,
                radius: optnum(&f[11], n, "radius")?,
                cg_iters: optnum(&f[12], n, "cg_iters")?,
                step_size: optnum(&f[13], n, "step_size")?,
                train_error: match f.get(14) {
                    Some(v) => optnum(v, n, "train_error")?,
                    None => None,
                },
                test_error: match f.get(15) {
                    Some(v) => optnum(v, n, "test_error")?,
                    None => None,
                },
            };
            match runs.last_mut() {
                Some((name, records)) if *name == f[0] => records.push(record),
                _ => runs.push((f[0].clone(), vec![record])),
            }
        }
        Ok(runs)
    }

    /// The runs the figures and findings show, with their traces: every
    /// run but the points of a learning-rate grid (those have their table).
    fn shown(&self) -> impl Iterator<Item = (&Vec<TraceRecord>, &RunSummary)> {
        self.traces
            .iter()
            .map(|(_, records)| records)
            .zip(&self.summary.runs)
            .filter(|(_, run)| run.grid.is_none())
    }

    /// The best objective reached by any shown run of `problem`.
    fn best_objective(&self, problem: &str) -> Option<f64> {
        self.shown()
            .filter(|(_, run)| run.problem == problem)
            .flat_map(|(records, _)| records.iter().map(|r| r.objective))
            .filter(|f| f.is_finite())
            .reduce(f64::min)
    }

    fn problems(&self) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for run in &self.summary.runs {
            if !seen.contains(&run.problem) {
                seen.push(run.problem.clone());
            }
        }
        seen
    }

    /// The figures, with their file names.
    pub fn figures(&self) -> Vec<(String, LinePlot)> {
        let several = self.problems().len() > 1;
        let label = |run: &RunSummary| {
            if several {
                format!("{} [{}]", run.name, run.problem)
            } else {
                run.name.clone()
            }
        };
        let runs = || self.shown();
        let gap = |x: fn(&TraceRecord) -> f64| -> Vec<Series> {
            runs()
                .map(|(records, run)| {
                    let best = self.best_objective(&run.problem).unwrap_or(0.0);
                    Series::new(
                        label(run),
                        records.iter().map(|r| (x(r), r.objective - best)),
                    )
                })
                .collect()
        };
        let mut out = Vec::new();
        let mut plot =
            LinePlot::new("Objective − best objective", "solver time [s]", "f − f*").log_y(true);
        plot.series = gap(|r| r.wall_seconds);
        out.push(("objective_vs_time.svg".to_string(), plot));
        let mut plot =
            LinePlot::new("Objective − best objective", "data passes", "f − f*").log_y(true);
        plot.series = gap(|r| r.data_passes);
        out.push(("objective_vs_passes.svg".to_string(), plot));
        let scored = |y: fn(&TraceRecord) -> Option<f64>, x: fn(&TraceRecord) -> f64| {
            runs()
                .map(|(records, run)| {
                    Series::new(
                        label(run),
                        records.iter().filter_map(|r| y(r).map(|v| (x(r), v))),
                    )
                })
                .collect::<Vec<Series>>()
        };
        let any = |y: fn(&TraceRecord) -> Option<f64>| {
            runs().any(|(records, _)| records.iter().any(|r| y(r).is_some()))
        };
        if any(|r| r.test_accuracy) {
            let mut plot = LinePlot::new("Test accuracy", "solver time [s]", "test accuracy");
            plot.series = scored(|r| r.test_accuracy, |r| r.wall_seconds);
            out.push(("test_accuracy_vs_time.svg".to_string(), plot));
        }
        type Axis = (&'static str, &'static str, fn(&TraceRecord) -> f64);
        let axes: [Axis; 2] = [
            ("time", "solver time [s]", |r| r.wall_seconds),
            ("passes", "data passes", |r| r.data_passes),
        ];
        type Error = (&'static str, &'static str, fn(&TraceRecord) -> Option<f64>);
        let errors: [Error; 2] = [
            ("train", "Training", |r| r.train_error),
            ("test", "Test", |r| r.test_error),
        ];
        for (set, title, y) in errors {
            if !any(y) {
                continue;
            }
            for (name, x_label, x) in axes {
                let mut plot = LinePlot::new(
                    format!("{title} reconstruction error"),
                    x_label,
                    "squared error per case",
                )
                .log_y(true);
                plot.series = scored(y, x);
                out.push((format!("{set}_error_vs_{name}.svg"), plot));
            }
        }
        let mut plot = LinePlot::new("Gradient norm", "iteration", "‖∇f‖").log_y(true);
        plot.series = runs()
            .map(|(records, run)| {
                Series::new(
                    label(run),
                    records.iter().map(|r| (r.iter as f64, r.grad_norm)),
                )
            })
            .collect();
        out.push(("grad_norm_vs_iter.svg".to_string(), plot));
        out
    }

    /// The paragraph generated from the numbers.
    pub fn findings(&self) -> String {
        let mut s = String::new();
        let runs: Vec<&RunSummary> = self.shown().map(|(_, run)| run).collect();
        if runs.is_empty() {
            return "No optimiser ran.".into();
        }
        let Some(first_problem) = runs.first().map(|r| r.problem.clone()) else {
            return String::new();
        };
        if let Some(best) = self.best_objective(&first_problem) {
            let tol = OBJECTIVE_TOLERANCE * best.abs().max(1.0);
            let mut reached: Vec<(&str, f64, f64, u64)> = Vec::new();
            for (records, run) in self.shown() {
                if run.problem != first_problem {
                    continue;
                }
                if let Some(r) = records.iter().find(|r| r.objective - best <= tol) {
                    reached.push((&run.name, r.wall_seconds, r.data_passes, r.iter));
                }
            }
            let _ = write!(
                s,
                "On `{first_problem}` the best objective reached is f* = {}. ",
                fmt_sig(best, 10)
            );
            if reached.is_empty() {
                let _ = write!(
                    s,
                    "No run came within {OBJECTIVE_TOLERANCE:e} (relative) of it. "
                );
            } else {
                let fastest = reached
                    .iter()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("non-empty");
                let cheapest = reached
                    .iter()
                    .min_by(|a, b| a.2.total_cmp(&b.2))
                    .expect("non-empty");
                let _ = write!(
                    s,
                    "Within {OBJECTIVE_TOLERANCE:e} of it (relative), **{}** was fastest ({} of solver time, iteration {})",
                    fastest.0,
                    fmt_duration_s(fastest.1),
                    fastest.3
                );
                let _ = write!(
                    s,
                    " and **{}** was cheapest in data passes ({}). ",
                    cheapest.0,
                    fmt_sig(cheapest.2, 3)
                );
                let missed: Vec<&str> = runs
                    .iter()
                    .filter(|r| {
                        r.problem == first_problem && !reached.iter().any(|x| x.0 == r.name)
                    })
                    .map(|r| r.name.as_str())
                    .collect();
                if !missed.is_empty() {
                    let _ = write!(s, "Not within that tolerance: {}. ", missed.join(", "));
                }
            }
        }
        // The best of a score over the shown runs, and who reached it.
        let best_of = |score: fn(&RunSummary) -> Option<f64>, higher: bool| {
            let values: Vec<(f64, &str)> = runs
                .iter()
                .filter_map(|r| score(r).map(|v| (v, r.name.as_str())))
                .filter(|(v, _)| v.is_finite())
                .collect();
            let best =
                values
                    .iter()
                    .map(|v| v.0)
                    .reduce(if higher { f64::max } else { f64::min })?;
            let who: Vec<&str> = values.iter().filter(|v| v.0 == best).map(|v| v.1).collect();
            Some((best, who.join(", ")))
        };
        if let Some((best, who)) = best_of(|r| r.test_accuracy, true) {
            let _ = write!(
                s,
                "The highest test accuracy is {} ({who}).",
                fmt_sig(best, 4)
            );
        }
        for (what, score) in [
            (
                "training",
                (|r| r.train_error) as fn(&RunSummary) -> Option<f64>,
            ),
            ("test", |r| r.test_error),
        ] {
            if let Some((best, who)) = best_of(score, false) {
                let space = if s.is_empty() || s.ends_with(' ') {
                    ""
                } else {
                    " "
                };
                let _ = write!(
                    s,
                    "{space}The lowest {what} reconstruction error is {} ({who}).",
                    fmt_sig(best, 4)
                );
            }
        }
        s += &self.second_order_against_baselines();
        for r in runs.iter().filter(|r| r.reference_test_accuracy.is_some()) {
            let reference = r.reference_test_accuracy.unwrap_or(f64::NAN);
            let reached = r.test_accuracy.unwrap_or(f64::NAN);
            let _ = write!(
                s,
                " {} reached {} against the reference {} ({:+.4}).",
                r.name,
                fmt_sig(reached, 4),
                fmt_sig(reference, 4),
                reached - reference
            );
        }
        for r in runs.iter() {
            if let Some(grid) = &r.best_of {
                let _ = write!(
                    s,
                    " {} is the best point of the grid `{grid}` (lowest objective on the grid's budget), continued to the full budget.",
                    r.name
                );
            }
        }
        let failed: Vec<String> = runs
            .iter()
            .filter(|r| r.stop_reason == "failed" || r.stop_reason == "interrupted")
            .map(|r| format!("{} ({})", r.name, r.stop_detail))
            .collect();
        if !failed.is_empty() {
            let _ = write!(
                s,
                " Runs that did not finish normally: {}.",
                failed.join("; ")
            );
        }
        s
    }

    pub fn markdown(&self) -> String {
        let sum = &self.summary;
        let mut md = String::new();
        let _ = writeln!(md, "# {}\n", sum.title);
        let _ = writeln!(
            md,
            "Generated by `{}` on {} (git `{}`), seed {}. Host: {} ({} cores, {} threads). Data: {} \
             ({} train / {} test samples). Device: {}, dtype: {}.\n",
            sum.command_line,
            sum.date,
            sum.git_revision,
            sum.seed,
            sum.host.cpu_model,
            sum.host.cores,
            sum.host.threads,
            sum.dataset.name,
            sum.dataset.train_samples,
            sum.dataset.test_samples,
            sum.device,
            sum.dtype
        );
        if let Some(why) = &sum.rationale {
            let _ = writeln!(md, "## Why this problem\n\n{why}\n");
        }
        let _ = writeln!(md, "## Findings\n\n{}\n", self.findings());
        let shown: Vec<&RunSummary> = self.shown().map(|(_, run)| run).collect();
        let has_reference = shown.iter().any(|r| r.reference_test_accuracy.is_some());
        let has_accuracy = shown.iter().any(|r| r.test_accuracy.is_some());
        let has_errors = shown.iter().any(|r| r.test_error.is_some());
        let mut headers = vec![
            "run",
            "problem",
            "stop",
            "iters",
            "solver time",
            "final objective",
            "‖∇f‖",
        ];
        if has_accuracy {
            headers.extend(["train acc.", "test acc."]);
        }
        if has_errors {
            headers.extend(["train error", "test error"]);
        }
        if has_reference {
            headers.push("reference");
        }
        headers.extend(["gradients", "HVPs", "data passes", "peak memory"]);
        let score = |x: Option<f64>| x.map(|v| fmt_sig(v, 4)).unwrap_or_default();
        let rows: Vec<Vec<String>> = shown
            .iter()
            .map(|r| {
                let mut row = vec![
                    r.name.clone(),
                    r.problem.clone(),
                    r.stop_reason.clone(),
                    r.iterations.to_string(),
                    fmt_duration_s(r.wall_seconds),
                    fmt_sig(r.final_objective, 12),
                    fmt_sig(r.final_grad_norm, 3),
                ];
                if has_accuracy {
                    row.extend([score(r.train_accuracy), score(r.test_accuracy)]);
                }
                if has_errors {
                    row.extend([score(r.train_error), score(r.test_error)]);
                }
                if has_reference {
                    row.push(
                        r.reference_test_accuracy
                            .map(|a| fmt_sig(a, 4))
                            .unwrap_or_default(),
                    );
                }
                row.extend([
                    r.grad_evals.to_string(),
                    r.hvp_evals.to_string(),
                    fmt_sig(r.data_passes, 4),
                    r.peak_memory_bytes
                        .map(fmt_bytes)
                        .unwrap_or_else(|| "n/a".into()),
                ]);
                row
            })
            .collect();
        let _ = writeln!(md, "## Results\n\n{}", markdown_table(&headers, &rows));
        md += &self.grid_tables();
        let kernels: Vec<String> = sum
            .runs
            .iter()
            .filter_map(|r| r.kernel.as_ref().map(|k| format!("{}: {k}", r.name)))
            .collect();
        if !kernels.is_empty() {
            let _ = writeln!(md, "Kernels: {}.\n", kernels.join("; "));
        }
        for r in &sum.runs {
            if let Some(bytes) = r.hessian_bytes {
                let _ = writeln!(
                    md,
                    "{} formed a dense Hessian of {} (assembly {}, solves {}).\n",
                    r.name,
                    fmt_bytes(bytes),
                    fmt_duration_s(
                        r.extras
                            .get("assembly_seconds")
                            .copied()
                            .unwrap_or(f64::NAN)
                    ),
                    fmt_duration_s(r.extras.get("solve_seconds").copied().unwrap_or(f64::NAN)),
                );
            }
            if let Some(line) = kfac_phases(&r.name, &r.extras) {
                let _ = writeln!(md, "{line}\n");
            }
            if r.stop_reason == "failed" || r.stop_reason == "interrupted" {
                let _ = writeln!(md, "{} stopped: {}\n", r.name, escape_cell(&r.stop_detail));
            }
        }
        md += &self.communication_table();
        let _ = writeln!(md, "## Convergence\n");
        for (file, plot) in self.figures() {
            let _ = writeln!(md, "{}\n", markdown_image(&plot.title, &file));
        }
        if let Some(file) = &sum.reconstructions_image {
            let names: Vec<&str> = shown.iter().map(|r| r.name.as_str()).collect();
            let _ = writeln!(
                md,
                "## Reconstructions\n\nThe first row holds test digits; each row below is one \
                 run's reconstruction of them, in the order {}.\n\n{}\n",
                names.join(", "),
                markdown_image("test digits and their reconstructions", file)
            );
        }
        let images: Vec<&RunSummary> = shown
            .iter()
            .copied()
            .filter(|r| r.weights_image.is_some())
            .collect();
        if !images.is_empty() {
            let _ = writeln!(
                md,
                "## Weights\n\nThe first layer's weights of each class (or hidden unit) as 28x28 images, \
                 red positive, blue negative, white zero, each image on its own symmetric scale.\n"
            );
            for r in images {
                let _ = writeln!(
                    md,
                    "**{}**\n\n{}\n",
                    r.name,
                    markdown_image(
                        &format!("weights of {}", r.name),
                        r.weights_image.as_deref().unwrap_or("")
                    )
                );
            }
        }
        let _ = writeln!(
            md,
            "## How to read this report\n\n\
             - *Solver time* excludes the time spent evaluating the trace (test accuracy, SGD's \
             full-batch objective). *Data passes* count samples touched divided by the training-set \
             size: a gradient is one pass, an HVP on a sub-sample counts by its size.\n\
             - *f − f\\** is measured against the best objective any run of the same problem reached, \
             so the best run's last point is not drawn on the log scale.\n\
             - SGD's trace is evaluated on the full training set every few steps; its objective is \
             the full-batch objective, not the mini-batch loss.\n\
             - `summary.json` holds every number in the table and each run's settings; `trace.csv` \
             holds every trace record. This page and its figures are generated from those two files \
             (`cargo xtask report --check` verifies it)."
        );
        md
    }

    /// One table per learning-rate grid: each point's result on the
    /// grid's budget, and which one was continued (empty without grids).
    /// For a reconstruction report: whether each HF and K-FAC run beat the
    /// best first-order run (Adam, SGD) at equal solver time, and when
    /// K-FAC first reached Adam's final training error, said plainly
    /// either way (issues 14 and 15 ask the report to).
    fn second_order_against_baselines(&self) -> String {
        let mut s = String::new();
        let shown: Vec<(&Vec<TraceRecord>, &RunSummary)> = self.shown().collect();
        let best_of = |method: &str| {
            shown
                .iter()
                .filter(|(_, r)| r.method == method)
                .filter_map(|(t, r)| r.train_error.map(|e| (e, *t, *r)))
                .min_by(|a, b| a.0.total_cmp(&b.0))
        };
        let baselines: Vec<(f64, &RunSummary)> = ["adam", "sgd"]
            .iter()
            .filter_map(|m| best_of(m).map(|(e, _, r)| (e, r)))
            .collect();
        if baselines.is_empty() {
            return s;
        }
        let floor = baselines.iter().map(|b| b.0).fold(f64::INFINITY, f64::min);
        let names: Vec<String> = baselines
            .iter()
            .map(|(e, r)| format!("{} {}", r.name, fmt_sig(*e, 4)))
            .collect();
        for (_, run) in shown
            .iter()
            .filter(|(_, r)| r.method == "hf" || r.method == "kfac")
        {
            let Some(err) = run.train_error else { continue };
            let verdict = if err < floor {
                "lower than"
            } else {
                "**not lower** than"
            };
            let _ = write!(
                s,
                " {}'s final training reconstruction error, {}, is {verdict} the best \
                 first-order runs' ({}).",
                run.name,
                fmt_sig(err, 4),
                names.join(", ")
            );
        }
        if let Some((adam_err, _, adam)) = best_of("adam") {
            for (trace, run) in shown.iter().filter(|(_, r)| r.method == "kfac") {
                match trace
                    .iter()
                    .find(|r| r.train_error.is_some_and(|e| e <= adam_err))
                {
                    Some(at) => {
                        let _ = write!(
                            s,
                            " {} first reached {}'s final training error {} after {} of \
                             solver time, {:.2} of {}'s {}.",
                            run.name,
                            adam.name,
                            fmt_sig(adam_err, 4),
                            fmt_duration_s(at.wall_seconds),
                            at.wall_seconds / adam.wall_seconds,
                            adam.name,
                            fmt_duration_s(adam.wall_seconds)
                        );
                    }
                    None => {
                        let _ = write!(
                            s,
                            " {} **never reached** {}'s final training error {} in its {}.",
                            run.name,
                            adam.name,
                            fmt_sig(adam_err, 4),
                            fmt_duration_s(run.wall_seconds)
                        );
                    }
                }
            }
        }
        s
    }

    /// The MPI runs' sums and their share of the solver time.
    fn communication_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .summary
            .runs
            .iter()
            .filter_map(|r| {
                let c = r.communication.as_ref()?;
                let total = c.comm_seconds + c.compute_seconds;
                Some(vec![
                    escape_cell(&r.name),
                    c.ranks.to_string(),
                    c.allreduces.to_string(),
                    fmt_bytes(c.bytes),
                    fmt_bytes(c.bytes_per_iteration.round() as u64),
                    fmt_duration_s(c.comm_seconds),
                    fmt_duration_s(c.compute_seconds),
                    format!("{:.1}%", 100.0 * c.comm_seconds / total.max(1e-300)),
                ])
            })
            .collect();
        if rows.is_empty() {
            return String::new();
        }
        let headers = [
            "run",
            "ranks",
            "sums",
            "bytes moved",
            "per iteration",
            "in communication",
            "in compute",
            "communication share",
        ];
        format!(
            "## Communication\n\nEach rank held a contiguous shard of the training rows. Every \
             loss, gradient, curvature product and diagonal is one sum across ranks: the parts \
             are gathered to rank 0, added in rank order and broadcast, so all ranks get the \
             same bits. Times are rank 0's; its waits for slower ranks count as communication.\n\n{}\n",
            markdown_table(&headers, &rows)
        )
    }

    fn grid_tables(&self) -> String {
        let mut md = String::new();
        let mut grids: Vec<&str> = Vec::new();
        for run in &self.summary.runs {
            if let Some(g) = &run.grid
                && !grids.contains(&g.as_str())
            {
                grids.push(g);
            }
        }
        if grids.is_empty() {
            return md;
        }
        let _ = writeln!(
            md,
            "## Learning-rate grids\n\nEach grid point ran on the grid's short budget from the \
             same start; the point with the lowest final objective was continued to the full \
             budget (a resume of its checkpoint, which gives what an uninterrupted run would).\n"
        );
        for grid in grids {
            let points: Vec<(&Vec<TraceRecord>, &RunSummary)> = self
                .traces
                .iter()
                .map(|(_, records)| records)
                .zip(&self.summary.runs)
                .filter(|(_, r)| r.grid.as_deref() == Some(grid))
                .collect();
            let chosen = self
                .summary
                .runs
                .iter()
                .find(|r| r.best_of.as_deref() == Some(grid));
            let errors = points.iter().any(|(_, r)| r.train_error.is_some());
            let mut headers = vec!["point", "stop", "solver time", "final objective"];
            headers.push(if errors { "train error" } else { "train acc." });
            headers.push("continued");
            let rows: Vec<Vec<String>> = points
                .iter()
                .map(|(_, r)| {
                    let score = if errors {
                        r.train_error
                    } else {
                        r.train_accuracy
                    };
                    let continued = chosen.is_some_and(|c| c.settings == r.settings);
                    vec![
                        r.name.clone(),
                        r.stop_reason.clone(),
                        fmt_duration_s(r.wall_seconds),
                        fmt_sig(r.final_objective, 8),
                        score.map(|v| fmt_sig(v, 4)).unwrap_or_default(),
                        if continued {
                            "yes".into()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect();
            let _ = writeln!(md, "`{grid}`:\n\n{}", markdown_table(&headers, &rows));
            let chosen_at =
                chosen.and_then(|c| points.iter().position(|(_, r)| r.settings == c.settings));
            match chosen_at {
                None => {
                    let _ = writeln!(
                        md,
                        "No point of `{grid}` finished with a finite objective, so none was continued.\n"
                    );
                }
                // A best point on the grid's edge says the grid may not
                // bracket the best value: the reader should know.
                Some(i) if points.len() > 1 && (i == 0 || i + 1 == points.len()) => {
                    let _ = writeln!(
                        md,
                        "The best point, `{}`, is at an edge of the grid: a wider grid might find a \
                         better value.\n",
                        points[i].1.name
                    );
                }
                Some(_) => {}
            }
        }
        md
    }

    /// Every derived file and its bytes, in a fixed order.
    pub fn render(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut files = Vec::new();
        let json = to_json_pretty(&self.summary).map_err(|e| ReportError::Json {
            path: SUMMARY_FILE.into(),
            source: e,
        })?;
        files.push((SUMMARY_FILE.to_string(), (json + "\n").into_bytes()));
        files.push((TRACE_FILE.to_string(), self.trace_csv()?.into_bytes()));
        for (name, plot) in self.figures() {
            files.push((name, plot.render_svg()?.into_bytes()));
        }
        files.push((REPORT_FILE.to_string(), self.markdown().into_bytes()));
        Ok(files)
    }

    /// Writes every derived file into `dir`, each atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        ensure_dir(dir)?;
        for (name, bytes) in self.render()? {
            write_atomic(dir.join(name), bytes)?;
        }
        Ok(())
    }

    /// Reads a report's data back from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|source| ReportError::Io {
                action: "read",
                path: dir.join(name),
                source,
            })
        };
        let summary: CompareSummary =
            serde_json::from_str(&read(SUMMARY_FILE)?).map_err(|source| ReportError::Json {
                path: dir.join(SUMMARY_FILE),
                source,
            })?;
        let traces = Self::parse_trace_csv(&read(TRACE_FILE)?)?;
        let names: Vec<&str> = summary.runs.iter().map(|r| r.name.as_str()).collect();
        let traced: Vec<&str> = traces.iter().map(|t| t.0.as_str()).collect();
        if names != traced {
            return Err(ReportError::invalid(
                dir.join(TRACE_FILE).display().to_string(),
                format!("runs {traced:?} do not match the summary's {names:?}"),
            ));
        }
        Ok(Self { summary, traces })
    }

    /// Regenerates the report in `dir` from its own data and lists every
    /// file that differs from what is on disk (empty: the report is current).
    pub fn check(dir: &Path) -> Result<Vec<String>> {
        let report = Self::load(dir)?;
        let mut stale = hessfree_report::stale_files(dir, &report.render()?);
        if let Some(file) = &report.summary.reconstructions_image
            && !dir.join(file).is_file()
        {
            stale.push(format!("{} is missing", dir.join(file).display()));
        }
        for run in &report.summary.runs {
            for file in [&run.weights_image, &run.weights_file]
                .into_iter()
                .flatten()
            {
                if !dir.join(file).is_file() {
                    stale.push(format!(
                        "{} (referenced by run {}) is missing",
                        dir.join(file).display(),
                        run.name
                    ));
                }
            }
        }
        Ok(stale)
    }
}

/// Where a K-FAC run's steps spent their time, and what a step cost in
/// gradients timed within the same steps (the solver's phase extras); `None`
/// for other runs.
fn kfac_phases(name: &str, extras: &BTreeMap<String, f64>) -> Option<String> {
    let steps = *extras.get("timed_steps")?;
    let phases = [
        ("gradient_seconds", "gradients"),
        ("factor_seconds", "factors"),
        ("inverse_seconds", "inverses"),
        ("direction_seconds", "directions"),
        ("model_seconds", "quadratic model"),
        ("damping_seconds", "damping test"),
    ];
    let seconds: Vec<f64> = phases
        .iter()
        .map(|(key, _)| extras.get(*key).copied().unwrap_or(0.0))
        .collect();
    let total: f64 = seconds.iter().sum();
    if steps < 1.0 || total <= 0.0 || seconds[0] <= 0.0 {
        return None;
    }
    let shares: Vec<String> = phases
        .iter()
        .zip(&seconds)
        .filter(|(_, s)| **s > 0.0)
        .map(|((_, name), s)| format!("{name} {:.0}%", 100.0 * s / total))
        .collect();
    Some(format!(
        "{}: {} steps timed in this process, {} a step: {}; a step cost {:.2} of its own \
         mini-batch gradients.",
        name,
        steps,
        fmt_duration_s(total / steps),
        shares.join(", "),
        total / seconds[0]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step's cost in gradients is the phases' total over the
    /// gradient's share; runs without the extras get no line.
    #[test]
    fn kfac_phase_line_gives_the_step_in_gradients() {
        let extras: BTreeMap<String, f64> = [
            ("timed_steps", 10.0),
            ("gradient_seconds", 2.0),
            ("factor_seconds", 1.0),
            ("direction_seconds", 1.0),
            ("final_damping", 3.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let line = kfac_phases("kfac", &extras).expect("a K-FAC run");
        assert!(line.contains("a step cost 2.00 of its own"), "{line}");
        assert!(
            line.contains("gradients 50%, factors 25%, directions 25%"),
            "{line}"
        );
        assert!(!line.contains("inverses"), "{line}");
        let other: BTreeMap<String, f64> = [("final_damping".to_string(), 1.0)].into();
        assert_eq!(kfac_phases("hf", &other), None);
    }
}
