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
    pub train_accuracy: f64,
    pub test_accuracy: f64,
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
}

/// A summary with the traces of its runs.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareReport {
    pub summary: CompareSummary,
    /// `(run name, records)` in the order of `summary.runs`.
    pub traces: Vec<(String, Vec<TraceRecord>)>,
}

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
    pub fn trace_csv(&self) -> Result<String> {
        let mut csv = Csv::new(TRACE_HEADER);
        for (name, records) in &self.traces {
            for r in records {
                csv.push_row([
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
                ])?;
            }
        }
        Ok(csv.render())
    }

    /// Reads back what [`CompareReport::trace_csv`] wrote (floats round-trip exactly).
    pub fn parse_trace_csv(text: &str) -> Result<Vec<(String, Vec<TraceRecord>)>> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, header)) if split_csv_line(header) == TRACE_HEADER => {}
            _ => {
                return Err(bad_csv(
                    1,
                    format!("expected the header {}", TRACE_HEADER.join(",")),
                ));
            }
        }
        let mut runs: Vec<(String, Vec<TraceRecord>)> = Vec::new();
        for (i, line) in lines {
            let n = i + 1;
            let f = split_csv_line(line);
            if f.len() != TRACE_HEADER.len() {
                return Err(bad_csv(
                    n,
                    format!("{} fields, expected {}", f.len(), TRACE_HEADER.len()),
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
            };
            match runs.last_mut() {
                Some((name, records)) if *name == f[0] => records.push(record),
                _ => runs.push((f[0].clone(), vec![record])),
            }
        }
        Ok(runs)
    }

    /// The best objective reached by any run of `problem`.
    fn best_objective(&self, problem: &str) -> Option<f64> {
        self.traces
            .iter()
            .zip(&self.summary.runs)
            .filter(|(_, run)| run.problem == problem)
            .flat_map(|((_, records), _)| records.iter().map(|r| r.objective))
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
        let runs = || self.traces.iter().zip(&self.summary.runs);
        let gap = |x: fn(&TraceRecord) -> f64| -> Vec<Series> {
            runs()
                .map(|((_, records), run)| {
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
        let mut plot = LinePlot::new("Test accuracy", "solver time [s]", "test accuracy");
        plot.series = runs()
            .map(|((_, records), run)| {
                Series::new(
                    label(run),
                    records
                        .iter()
                        .filter_map(|r| r.test_accuracy.map(|a| (r.wall_seconds, a))),
                )
            })
            .collect();
        out.push(("test_accuracy_vs_time.svg".to_string(), plot));
        let mut plot = LinePlot::new("Gradient norm", "iteration", "‖∇f‖").log_y(true);
        plot.series = runs()
            .map(|((_, records), run)| {
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
        let runs = &self.summary.runs;
        if runs.is_empty() {
            return "No optimiser ran.".into();
        }
        let Some(first_problem) = runs.first().map(|r| r.problem.clone()) else {
            return String::new();
        };
        if let Some(best) = self.best_objective(&first_problem) {
            let tol = OBJECTIVE_TOLERANCE * best.abs().max(1.0);
            let mut reached: Vec<(&str, f64, f64, u64)> = Vec::new();
            for ((_, records), run) in self.traces.iter().zip(runs) {
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
        let best_acc = runs
            .iter()
            .map(|r| r.test_accuracy)
            .fold(f64::NEG_INFINITY, f64::max);
        let top: Vec<&str> = runs
            .iter()
            .filter(|r| r.test_accuracy == best_acc)
            .map(|r| r.name.as_str())
            .collect();
        let _ = write!(
            s,
            "The highest test accuracy is {} ({}).",
            fmt_sig(best_acc, 4),
            top.join(", ")
        );
        for r in runs.iter().filter(|r| r.reference_test_accuracy.is_some()) {
            let reference = r.reference_test_accuracy.unwrap_or(f64::NAN);
            let _ = write!(
                s,
                " {} reached {} against the reference {} ({:+.4}).",
                r.name,
                fmt_sig(r.test_accuracy, 4),
                fmt_sig(reference, 4),
                r.test_accuracy - reference
            );
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
        let _ = writeln!(md, "## Findings\n\n{}\n", self.findings());
        let has_reference = sum.runs.iter().any(|r| r.reference_test_accuracy.is_some());
        let mut headers = vec![
            "run",
            "problem",
            "stop",
            "iters",
            "solver time",
            "final objective",
            "‖∇f‖",
            "train acc.",
            "test acc.",
        ];
        if has_reference {
            headers.push("reference");
        }
        headers.extend(["gradients", "HVPs", "data passes", "peak memory"]);
        let rows: Vec<Vec<String>> = sum
            .runs
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
                    fmt_sig(r.train_accuracy, 4),
                    fmt_sig(r.test_accuracy, 4),
                ];
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
            if r.stop_reason == "failed" || r.stop_reason == "interrupted" {
                let _ = writeln!(md, "{} stopped: {}\n", r.name, escape_cell(&r.stop_detail));
            }
        }
        let _ = writeln!(md, "## Convergence\n");
        for (file, plot) in self.figures() {
            let _ = writeln!(md, "{}\n", markdown_image(&plot.title, &file));
        }
        let images: Vec<&RunSummary> = sum
            .runs
            .iter()
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
        let mut stale = Vec::new();
        for (name, bytes) in report.render()? {
            match std::fs::read(dir.join(&name)) {
                Ok(on_disk) if on_disk == bytes => {}
                Ok(_) => stale.push(format!(
                    "{} differs from what its data produce",
                    dir.join(&name).display()
                )),
                Err(_) => stale.push(format!("{} is missing", dir.join(&name).display())),
            }
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
