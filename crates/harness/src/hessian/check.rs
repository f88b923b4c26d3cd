//! `--check`: the committed Hessian report is exactly what its data render to.

use std::path::Path;

use anyhow::{Context, Result, bail};

use hessfree_report::stale_files;

use super::render::{figures, rendered};
use super::schema::Summary;

// --check.

/// Checks that the report in `out` is complete and that `report.md` and
/// the SVG figures are what its `summary.json` renders to.
pub fn check(out: &Path) -> Result<()> {
    let summary_path = out.join("summary.json");
    let text = std::fs::read_to_string(&summary_path).with_context(|| {
        format!(
            "reading {}; run `cargo xtask hessian` first",
            summary_path.display()
        )
    })?;
    let summary: Summary = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} does not parse as a hessian summary",
            summary_path.display()
        )
    })?;
    let mut problems = stale_files(out, &rendered(&summary)?);
    let pngs = summary
        .digits
        .iter()
        .map(|d| &d.file)
        .chain(summary.spy.iter().map(|f| &f.file));
    for file in pngs {
        let path = out.join(file);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.starts_with(b"\x89PNG\r\n\x1a\n") => {}
            Ok(_) => problems.push(format!("{} is not a PNG file", path.display())),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    for r in &summary.rank.rows {
        if !r.rank.identity_holds {
            problems.push(format!(
                "rank identity fails for n = {} at {}: rank {} vs 9·rank(X) = {}",
                r.rank.batch, r.init, r.rank.hessian.rank, r.rank.bound
            ));
        }
    }
    if let Some(f) = &summary.rank.full_check
        && f.rank != f.restricted_rank
    {
        problems.push(format!(
            "full and restricted decompositions disagree for n = {}: {} vs {}",
            f.batch, f.rank, f.restricted_rank
        ));
    }
    if !problems.is_empty() {
        bail!(
            "the hessian report in {} is stale or incomplete (regenerate it with `cargo xtask hessian`):\n  {}",
            out.display(),
            problems.join("\n  ")
        );
    }
    println!(
        "{}: report.md, {} figures and summary.json are consistent",
        out.display(),
        figures(&summary).len() + summary.digits.len() + summary.spy.len()
    );
    Ok(())
}
