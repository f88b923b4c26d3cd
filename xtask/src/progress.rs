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
            let acc = r
                .test_accuracy
                .map(|a| format!(" acc {a:.4}"))
                .unwrap_or_default();
            b.set_message(format!(
                "f {:.6e} |g| {:.2e}{acc}",
                r.objective, r.grad_norm
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
                test_accuracy = ?r.test_accuracy,
                seconds = r.wall_seconds,
                "trace"
            );
        });
        (None, cb)
    }
}
