//! `cargo xtask bench-report`: the criterion results of the last
//! `cargo bench` as docs/reports/bench ([`hessfree_harness::bench_report`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchReportArgs {
    /// Where criterion wrote its results.
    #[arg(long, default_value = "target/criterion")]
    pub criterion_dir: PathBuf,
    #[arg(long, default_value = "docs/reports/bench")]
    pub out: PathBuf,
}

pub fn run(args: &BenchReportArgs) -> Result<()> {
    hessfree_harness::bench_report::run(&args.criterion_dir, &args.out)
}
