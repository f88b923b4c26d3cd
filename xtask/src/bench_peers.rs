//! `cargo xtask bench-peers`: the established tools on the same problems, on
//! this machine, so the bench report can set hessfree's figures beside
//! theirs. It makes (once) its own Python virtual environment with the
//! pinned packages of `peers/requirements.txt`, then runs
//! `peers/bench_peers.py`, which writes `docs/reports/bench/peers.json`.
//! Not part of the tests or CI: it needs PyPI and takes about 16 minutes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchPeersArgs {
    /// The virtual environment to create or reuse.
    #[arg(long, default_value = "target/peers-venv")]
    pub venv: PathBuf,
    /// Where the JSON goes (read by `cargo xtask bench-report`).
    #[arg(long, default_value = "docs/reports/bench/peers.json")]
    pub out: PathBuf,
    /// Anything else for the script (e.g. `-- --quick`, `-- --only jax/mlp`).
    #[arg(last = true)]
    pub script_args: Vec<String>,
}

const REQUIREMENTS: &str = "peers/requirements.txt";
const SCRIPT: &str = "peers/bench_peers.py";

fn status(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

/// Creates the venv and installs the pinned packages, unless the venv was
/// made from the same requirements already (a copy of them is kept inside).
fn ensure_venv(venv: &Path) -> Result<PathBuf> {
    let python = venv.join("bin").join("python");
    let wanted = std::fs::read_to_string(REQUIREMENTS)
        .with_context(|| format!("reading {REQUIREMENTS} (run from the repository root)"))?;
    let stamp = venv.join("hessfree-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(python);
    }
    if !python.exists() {
        tracing::info!(venv = %venv.display(), "creating the virtual environment");
        status(
            Command::new("python3").args(["-m", "venv"]).arg(venv),
            "python3 -m venv (needs Python 3.11 or later with venv)",
        )?;
    }
    tracing::info!("installing {REQUIREMENTS}");
    status(
        Command::new(&python).args(["-m", "pip", "install", "--quiet", "-r", REQUIREMENTS]),
        "pip install",
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

pub fn run(args: &BenchPeersArgs) -> Result<()> {
    if !Path::new(SCRIPT).exists() {
        bail!("{SCRIPT} not found: run from the repository root");
    }
    let python = ensure_venv(&args.venv)?;
    status(
        Command::new(python)
            .arg(SCRIPT)
            .arg("--out")
            .arg(&args.out)
            .args(&args.script_args),
        "the peer benchmark",
    )?;
    println!("peer figures written to {}", args.out.display());
    Ok(())
}
