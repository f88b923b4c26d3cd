//! `cargo xtask report [--check] [DIR...]`: regenerate committed reports
//! (comparisons and projections) from their own `summary.json` and
//! `trace.csv`, or check that they are exactly what that data produces.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use hessfree_harness::compare::report::{CompareReport, SUMMARY_FILE};
use hessfree_harness::{projection, scaling};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Fail if a regenerated file differs from the committed one (writes nothing).
    #[arg(long)]
    pub check: bool,
    /// Report directories; default: every directory under docs/reports with a summary.json.
    pub dirs: Vec<PathBuf>,
}

/// Comparison and projection reports under `root` (one level deep), in name order.
fn discover(root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    let entries = std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.join(SUMMARY_FILE).is_file() && kind(&path)?.is_some() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// The reports this command renders.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Compare,
    Projection,
    Scaling,
}

/// Which of [`Kind`] `dir`'s summary is, if any (the Hessian study has its
/// own `hessian --check`).
fn kind(dir: &Path) -> Result<Option<Kind>> {
    let text = std::fs::read_to_string(dir.join(SUMMARY_FILE))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", dir.join(SUMMARY_FILE).display()))?;
    Ok(match value.get("kind").and_then(|k| k.as_str()) {
        Some("compare") => Some(Kind::Compare),
        Some("projection") => Some(Kind::Projection),
        Some("mpi") => Some(Kind::Scaling),
        _ => None,
    })
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let dirs = if args.dirs.is_empty() {
        discover(Path::new("docs/reports"))?
    } else {
        args.dirs.clone()
    };
    let mut stale = Vec::new();
    for dir in &dirs {
        let kind = kind(dir)?.with_context(|| {
            format!(
                "{} is not a comparison, projection or MPI scaling report",
                dir.display()
            )
        })?;
        if args.check {
            let problems = match kind {
                Kind::Compare => CompareReport::check(dir).map_err(anyhow::Error::from),
                Kind::Projection => projection::check(dir),
                Kind::Scaling => scaling::check(dir),
            }
            .with_context(|| format!("checking {}", dir.display()))?;
            if problems.is_empty() {
                println!("ok     {}", dir.display());
            } else {
                println!("STALE  {}", dir.display());
                for p in &problems {
                    println!("       {p}");
                }
            }
            stale.extend(problems);
        } else if kind == Kind::Compare {
            let report =
                CompareReport::load(dir).with_context(|| format!("loading {}", dir.display()))?;
            report.write(dir)?;
            println!("regenerated {}", dir.display());
        } else if kind == Kind::Projection {
            let summary =
                projection::load(dir).with_context(|| format!("loading {}", dir.display()))?;
            projection::write(dir, &summary)?;
            println!("regenerated {}", dir.display());
        } else {
            let summary =
                scaling::load(dir).with_context(|| format!("loading {}", dir.display()))?;
            scaling::write(dir, &summary)?;
            println!("regenerated {}", dir.display());
        }
    }
    if !stale.is_empty() {
        bail!(
            "{} file(s) differ from what their data produce; run `cargo xtask report` to regenerate",
            stale.len()
        );
    }
    Ok(())
}
