//! What a running comparison shows: a progress bar per run on a terminal,
//! plain log lines otherwise.

use std::io::IsTerminal;
use std::sync::Arc;

use hessfree_harness::compare::RunProgress;
use hessfree_solvers::{OnRecord, TraceRecord};
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on a terminal, plain log lines otherwise.
pub fn progress(label: &str, max_iters: u64) -> RunProgress {
    let (bar, on_record) = bar_or_log(label, max_iters);
    RunProgress {
        on_record,
        finish: Box::new(move |stop| {
            if let Some(bar) = bar {
                bar.finish_with_message(stop.to_string());
            }
        }),
    }
}

/// No display: for MPI ranks other than 0, which run the same iterations.
pub fn quiet(_label: &str, _max_iters: u64) -> RunProgress {
    RunProgress {
        on_record: Arc::new(|_: &TraceRecord| {}),
        finish: Box::new(|_| {}),
    }
}

fn bar_or_log(label: &str, max_iters: u64) -> (Option<ProgressBar>, OnRecord) {
    let label = label.to_string();
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(max_iters);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(label);
        let b = bar.clone();
        let cb: OnRecord = Arc::new(move |r: &TraceRecord| {
            b.set_position(r.iter);
            b.set_message(format!(
                "f {:.6e} |g| {:.2e}{}",
                r.objective,
                r.grad_norm,
                scores(r)
            ));
        });
        (Some(bar), cb)
    } else {
        let cb: OnRecord = Arc::new(move |r: &TraceRecord| {
            tracing::info!(
                run = %label,
                iter = r.iter,
                objective = r.objective,
                grad_norm = r.grad_norm,
                scores = %scores(r).trim_start(),
                seconds = r.wall_seconds,
                "trace"
            );
        });
        (None, cb)
    }
}

/// A classifier's test accuracy, or an autoencoder's reconstruction errors
/// (squared error per case), whichever the record carries.
fn scores(r: &TraceRecord) -> String {
    let mut out = String::new();
    if let Some(a) = r.test_accuracy {
        out += &format!(" acc {a:.4}");
    }
    if let Some(e) = r.train_error {
        out += &format!(" train err {e:.3}");
    }
    if let Some(e) = r.test_error {
        out += &format!(" test err {e:.3}");
    }
    out
}
