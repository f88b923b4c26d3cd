//! The MPI scaling study (`docs/reports/mpi`): what data parallelism costs
//! here, a model of it, and what the model projects for clusters.
//!
//! - **Measured**: [`probe`] runs inside one `mpirun` job (every rank calls
//!   it) and times, on MNIST softmax regression with an L2 penalty in f64,
//!   one Hessian-vector product over all ranks' rows, the same product on
//!   this rank's rows alone, one sum of a parameter-sized vector, a ping-pong
//!   between ranks 0 and 1 over a range of sizes, and one full Newton-CG
//!   solve to ‖∇f‖ ≤ 1e-6. [`run_study`] launches one job per configuration.
//! - **Model**: a product on `N` ranks costs `c·n/N` of compute (stretched
//!   by `N·threads/cores` when ranks outnumber this machine's cores) plus one
//!   sum, which is a gather to rank 0, `(N − 1)(α + β·8m)`, and a binomial
//!   broadcast, `⌈log₂ N⌉(α + β·8m)`, for `m` parameters. `c` comes from the
//!   single-rank product, `α` and `β` from a least-squares fit of the
//!   ping-pong, for each transport.
//! - **Projection**: the same model with a cluster's `α`, `β`, for MNIST and
//!   for a set 100 times larger.
//!
//! The report is rendered from `summary.json` alone, so `report --check`
//! regenerates it without MPI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use hessfree_data::{MNIST_CLASSES, load_dir, resolve_data_dir};
use hessfree_model::{Collective, CurvatureKind, shard_range};
use hessfree_report::{ensure_dir, markdown_table, stale_files, write_atomic, write_rendered};
use hessfree_solvers::{NewtonCgConfig, RunOptions, StopRules};
use serde::{Deserialize, Serialize};

use crate::compare::report::{Host, REPORT_FILE, SUMMARY_FILE};
use crate::experiment::{Experiment, ProblemSpec, Shard};
use crate::{Method, provenance};

/// Message sizes of the ping-pong, in bytes: 8 B to 4 MiB.
pub const PING_SIZES: [usize; 8] = [8, 64, 512, 4096, 32768, 262_144, 1_048_576, 4_194_304];

/// One `mpirun` job's measurements, as rank 0 saw them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// `shared memory`, `tcp` or `one process`.
    pub transport: String,
    pub ranks: usize,
    pub threads_per_rank: usize,
    /// Training rows and parameters of the problem.
    pub rows: usize,
    pub params: usize,
    /// Median seconds of one product over all ranks' rows (the sum included).
    pub hvp_seconds: f64,
    /// Median seconds of the same product on rank 0's rows alone.
    pub local_hvp_seconds: f64,
    /// Median seconds of one sum of `params` numbers across the ranks.
    pub sum_seconds: f64,
    /// `(bytes, one-way seconds)` between ranks 0 and 1 (empty for one rank).
    pub ping_pong: Vec<(usize, f64)>,
    /// A full Newton-CG solve: solver seconds, outer iterations, products
    /// and gradients.
    pub solve_seconds: f64,
    pub solve_iterations: u64,
    pub solve_hvps: u64,
    pub solve_grads: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_median(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// Measures one job's [`Probe`]; every rank calls it with the same
/// arguments, and `ping_pong` (the MPI build's) times one message size.
pub fn probe(
    ranks: Arc<dyn Collective>,
    transport: &str,
    data_dir: Option<&Path>,
    repeats: usize,
    ping_pong: &dyn Fn(usize) -> Option<f64>,
) -> Result<Probe> {
    let data_dir = resolve_data_dir(data_dir)?;
    let splits = load_dir(&data_dir.path, MNIST_CLASSES)?;
    let n = splits.train.len();
    let rows = shard_range(n, ranks.size(), ranks.rank());
    let train = splits.train.select(&rows.clone().collect::<Vec<_>>());
    let spec = ProblemSpec::default();
    let shard = Shard {
        ranks: ranks.clone(),
        offset: rows.start,
        rows: n,
        check_params: false,
    };
    let all = Arc::new(Experiment::prepare_shard(
        spec.clone(),
        &train,
        &splits.test,
        &Device::Cpu,
        Some(shard),
    )?);
    let mine = Experiment::prepare(spec, &train, &splits.test, &Device::Cpu)?;
    let w = all.initial_point()?;
    let dim = all.objective.dim();
    let v = Tensor::ones(dim, candle_core::DType::F64, &Device::Cpu)?;
    let op = all.objective.curvature(&w, CurvatureKind::Hessian)?;
    let local = mine.objective.curvature(&w, CurvatureKind::Hessian)?;
    let hvp_seconds = time_median(repeats, || Ok(op.apply(&v).map(|_| ())?))?;
    let local_hvp_seconds = time_median(repeats, || Ok(local.apply(&v).map(|_| ())?))?;
    let zeros = vec![0.0; dim];
    let sum_seconds = time_median(repeats * 5, || Ok(ranks.sum(&zeros).map(|_| ())?))?;
    let mut pings = Vec::new();
    for bytes in PING_SIZES {
        if let Some(t) = ping_pong(bytes) {
            pings.push((bytes, t));
        }
    }
    let method = Method::NewtonCg(NewtonCgConfig::convex());
    let out = all.run(
        &method,
        RunOptions {
            stop: StopRules {
                grad_tol: Some(1e-6),
                max_iters: Some(100),
                ..Default::default()
            },
            ..Default::default()
        },
    )?;
    Ok(Probe {
        transport: transport.to_string(),
        ranks: ranks.size(),
        threads_per_rank: candle_core::utils::get_num_threads(),
        rows: n,
        params: dim,
        hvp_seconds,
        local_hvp_seconds,
        sum_seconds,
        ping_pong: pings,
        solve_seconds: out.solver_seconds,
        solve_iterations: out.trace.last().map_or(0, |r| r.iter),
        solve_hvps: out.counts.hvp_evals,
        solve_grads: out.counts.grad_evals,
    })
}

/// Writes one job's measurements (rank 0 calls it), atomically.
pub fn write_probe(path: &Path, probe: &Probe) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(probe)? + "\n")?;
    Ok(())
}

/// A network's latency and bandwidth, and where the figures come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    /// Seconds per message.
    pub alpha: f64,
    /// Seconds per byte.
    pub beta: f64,
    pub source: String,
}

/// `α + β·bytes` fitted to a transport's ping-pong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkFit {
    pub transport: String,
    pub alpha: f64,
    pub beta: f64,
}

/// The model's prediction for one measured configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub transport: String,
    pub ranks: usize,
    pub measured_hvp_seconds: f64,
    pub predicted_hvp_seconds: f64,
}

/// One projected cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    pub network: String,
    pub rows: usize,
    pub nodes: usize,
    pub hvp_seconds: f64,
    pub speedup: f64,
    pub efficiency: f64,
}

/// Everything the report shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingSummary {
    pub kind: String,
    pub host: Host,
    pub git_revision: String,
    pub date: String,
    pub command_line: String,
    pub probes: Vec<Probe>,
    /// Compute seconds per training row of one product on one thread.
    pub seconds_per_row: f64,
    pub links: Vec<LinkFit>,
    pub checks: Vec<Check>,
    pub networks: Vec<Network>,
    pub projections: Vec<Projection>,
}

/// Seconds of one sum of `params` f64 across `ranks` on a link.
pub fn sum_seconds(ranks: usize, params: usize, alpha: f64, beta: f64) -> f64 {
    if ranks <= 1 {
        return 0.0;
    }
    let message = alpha + beta * 8.0 * params as f64;
    let gather = (ranks - 1) as f64 * message;
    let broadcast = (ranks as f64).log2().ceil() * message;
    gather + broadcast
}

/// `α`, `β` by least squares over the ping-pong points.
fn fit_link(transport: &str, points: &[(usize, f64)]) -> LinkFit {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 as f64 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
    let beta = sxy / sxx;
    // The latency is the small messages' time, which a least-squares line
    // through 4 MiB points cannot resolve.
    let alpha = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    LinkFit {
        transport: transport.to_string(),
        alpha,
        beta,
    }
}

/// A product's modelled seconds on `ranks` ranks of `threads` threads on a
/// machine of `cores` cores.
fn model_hvp(
    c: f64,
    rows: usize,
    params: usize,
    ranks: usize,
    cores: usize,
    link: &LinkFit,
) -> f64 {
    let stretch = (ranks as f64 / cores as f64).max(1.0);
    c * rows as f64 / ranks as f64 * stretch + sum_seconds(ranks, params, link.alpha, link.beta)
}

/// The study's configurations: (transport, ranks, threads, MCA settings).
const CONFIGS: [(&str, usize, usize, &str); 5] = [
    ("one process", 1, 2, "vader,self"),
    ("shared memory", 2, 1, "vader,self"),
    ("tcp", 2, 1, "tcp,self"),
    ("shared memory", 3, 1, "vader,self"),
    ("tcp", 3, 1, "tcp,self"),
];

/// The published and nominal figures the projections use.
fn networks(tcp: &LinkFit) -> Vec<Network> {
    vec![
        Network {
            name: "10 Gb/s Ethernet, TCP".into(),
            alpha: tcp.alpha,
            beta: 8.0 / 10e9,
            source: "bandwidth: the 10GBASE line rate (IEEE 802.3ae), 1.25 GB/s; latency: \
                     this machine's TCP loopback α above, a lower bound (a real NIC and \
                     switch add to it)"
                .into(),
        },
        Network {
            name: "100 Gb/s, kernel bypass".into(),
            alpha: 1.93e-6,
            beta: 8.0 / 100e9,
            source: "bandwidth: the 100 Gb/s line rate, 12.5 GB/s; latency: 1.93 µs \
                     half-round-trip, Open MPI over Cisco usNIC (OS bypass), NetPIPE 3.7.1 \
                     (J. Squyres, \"MPI over 40Gb Ethernet\", Cisco blogs, \
                     blogs.cisco.com/performance/mpi-over-40gb-ethernet)"
                .into(),
        },
    ]
}

/// The model and projections from the probes.
pub fn summarise(probes: Vec<Probe>, cores: usize) -> Result<ScalingSummary> {
    let single = probes
        .iter()
        .find(|p| p.ranks == 1)
        .context("no one-process probe")?;
    // One rank of one thread does all rows; with 2 threads the local
    // product splits over them.
    let two_rank = probes
        .iter()
        .find(|p| p.ranks == 2 && p.transport == "shared memory")
        .context("no 2-rank shared-memory probe")?;
    // Per row on one thread, from a 1-thread rank's own rows.
    let seconds_per_row =
        two_rank.local_hvp_seconds / shard_range(two_rank.rows, 2, 0).len() as f64;
    let mut links = Vec::new();
    for transport in ["shared memory", "tcp"] {
        let points: Vec<(usize, f64)> = probes
            .iter()
            .filter(|p| p.transport == transport && p.ranks == 2)
            .flat_map(|p| p.ping_pong.clone())
            .collect();
        if points.len() < 2 {
            bail!("no ping-pong over {transport}");
        }
        links.push(fit_link(transport, &points));
    }
    let checks = probes
        .iter()
        .filter(|p| p.ranks > 1)
        .map(|p| {
            let link = links.iter().find(|l| l.transport == p.transport).unwrap();
            Check {
                transport: p.transport.clone(),
                ranks: p.ranks,
                measured_hvp_seconds: p.hvp_seconds,
                predicted_hvp_seconds: model_hvp(
                    seconds_per_row,
                    p.rows,
                    p.params,
                    p.ranks,
                    cores,
                    link,
                ),
            }
        })
        .collect();
    let tcp = links.iter().find(|l| l.transport == "tcp").unwrap().clone();
    let nets = networks(&tcp);
    let mut projections = Vec::new();
    for net in &nets {
        let link = LinkFit {
            transport: net.name.clone(),
            alpha: net.alpha,
            beta: net.beta,
        };
        for rows in [single.rows, 100 * single.rows] {
            // One node: one rank of one thread, no communication.
            let one = seconds_per_row * rows as f64;
            for nodes in [8, 32, 128] {
                let t = model_hvp(seconds_per_row, rows, single.params, nodes, nodes, &link);
                projections.push(Projection {
                    network: net.name.clone(),
                    rows,
                    nodes,
                    hvp_seconds: t,
                    speedup: one / t,
                    efficiency: one / t / nodes as f64,
                });
            }
        }
    }
    Ok(ScalingSummary {
        kind: "mpi".into(),
        host: Host::this_machine(),
        git_revision: provenance::git_revision(),
        date: provenance::today_utc(),
        command_line: provenance::command_line(),
        probes,
        seconds_per_row,
        links,
        checks,
        networks: nets,
        projections,
    })
}

/// Runs every configuration as its own `mpirun` job of `exe mpi-probe`
/// and writes the report into `out`.
pub fn run_study(exe: &Path, out: &Path, repeats: usize) -> Result<PathBuf> {
    let dir = tempfile_dir(out)?;
    let mut probes = Vec::new();
    for (i, (transport, ranks, threads, btl)) in CONFIGS.iter().enumerate() {
        let file = dir.join(format!("probe{i}.json"));
        tracing::info!(transport, ranks, threads, "probing");
        let status = Command::new("mpirun")
            // OpenMPI binds each rank to one core by default, which would
            // put a 2-thread rank's threads on one core.
            .args([
                "-np",
                &ranks.to_string(),
                "--bind-to",
                "none",
                "--mca",
                "btl",
                btl,
            ])
            .arg(exe)
            .args([
                "mpi-probe",
                "--transport",
                transport,
                "--repeats",
                &repeats.to_string(),
                "--out",
            ])
            .arg(&file)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
            .env("OMPI_MCA_mpi_yield_when_idle", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .status()
            .context("running mpirun (scripts/install-mpi.sh installs it)")?;
        if !status.success() {
            bail!("the {ranks}-rank {transport} probe failed ({status})");
        }
        let text = std::fs::read_to_string(&file)?;
        probes.push(serde_json::from_str(&text)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let summary = summarise(probes, cores)?;
    write(out, &summary)?;
    Ok(out.join(REPORT_FILE))
}

fn tempfile_dir(out: &Path) -> Result<PathBuf> {
    let dir = out.with_extension(format!("probes-{}", std::process::id()));
    ensure_dir(&dir)?;
    Ok(dir)
}

fn us(s: f64) -> String {
    format!("{:.1} µs", s * 1e6)
}

fn ms(s: f64) -> String {
    format!("{:.2} ms", s * 1e3)
}

/// The report, from the summary alone.
pub fn markdown(s: &ScalingSummary) -> String {
    use std::fmt::Write;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Data-parallel curvature over MPI: measured, modelled, projected\n\n\
         Softmax regression on MNIST (60000 rows, 7850 parameters, L2 1e-4, f64, the fused \
         kernel). Every rank holds a contiguous shard of the rows; every product is one sum \
         across ranks, gathered to rank 0, added in rank order and broadcast.\n\n\
         Machine: {} ({} cores). Revision {}, {}. Command: `{}`.\n",
        s.host.cpu_model, s.host.cores, s.git_revision, s.date, s.command_line
    );
    let _ = writeln!(md, "## Measured here\n");
    let rows: Vec<Vec<String>> = s
        .probes
        .iter()
        .map(|p| {
            vec![
                p.transport.clone(),
                p.ranks.to_string(),
                p.threads_per_rank.to_string(),
                ms(p.hvp_seconds),
                ms(p.local_hvp_seconds),
                us(p.sum_seconds),
                format!("{:.2} s", p.solve_seconds),
                format!(
                    "{} / {} / {}",
                    p.solve_iterations, p.solve_hvps, p.solve_grads
                ),
            ]
        })
        .collect();
    md += &markdown_table(
        &[
            "transport",
            "ranks",
            "threads each",
            "HVP (all rows)",
            "HVP (rank 0's rows)",
            "one sum",
            "Newton-CG solve",
            "iterations / HVPs / gradients",
        ],
        &rows,
    );
    if let (Some(one), Some(two)) = (
        s.probes.iter().find(|p| p.ranks == 1),
        s.probes
            .iter()
            .find(|p| p.ranks == 2 && p.transport == "shared memory"),
    ) {
        let _ = writeln!(
            md,
            "\n`-np 2` with 1 thread each against one process with 2 threads: {:.3}× the \
             time per HVP and {:.3}× the time per solve (target: within 10%, ≤ 1.10×).\n",
            two.hvp_seconds / one.hvp_seconds,
            two.solve_seconds / one.solve_seconds
        );
    }
    let _ = writeln!(
        md,
        "Ping-pong between ranks 0 and 1 (one-way time, median):\n"
    );
    let mut ping_rows = Vec::new();
    for p in s.probes.iter().filter(|p| p.ranks == 2) {
        for (bytes, t) in &p.ping_pong {
            ping_rows.push(vec![
                p.transport.clone(),
                bytes.to_string(),
                us(*t),
                format!("{:.2} GB/s", *bytes as f64 / t / 1e9),
            ]);
        }
    }
    md += &markdown_table(&["transport", "bytes", "one way", "bandwidth"], &ping_rows);
    let _ = writeln!(md, "\n## The model\n");
    let _ = writeln!(
        md,
        "A product on N ranks of a machine with C cores takes `c·n/N·max(1, N/C)` of compute \
         plus one sum, `(N − 1)(α + 8mβ)` to gather m numbers to rank 0 and \
         `⌈log₂ N⌉(α + 8mβ)` to broadcast them. A Newton-CG solve is one such sum per CG \
         step and per gradient. Fitted here: c = {:.3e} s per row (one thread, from the \
         2-rank job's own-rows product).\n",
        s.seconds_per_row
    );
    let link_rows: Vec<Vec<String>> = s
        .links
        .iter()
        .map(|l| {
            vec![
                l.transport.clone(),
                us(l.alpha),
                format!("{:.2} GB/s", 1.0 / l.beta / 1e9),
            ]
        })
        .collect();
    md += &markdown_table(
        &["transport", "α (smallest message)", "1/β (fit)"],
        &link_rows,
    );
    let _ = writeln!(
        md,
        "\nThe model against this machine (target: within 25%):\n"
    );
    let check_rows: Vec<Vec<String>> = s
        .checks
        .iter()
        .map(|c| {
            vec![
                c.transport.clone(),
                c.ranks.to_string(),
                ms(c.measured_hvp_seconds),
                ms(c.predicted_hvp_seconds),
                format!(
                    "{:+.1}%",
                    100.0 * (c.predicted_hvp_seconds / c.measured_hvp_seconds - 1.0)
                ),
            ]
        })
        .collect();
    md += &markdown_table(
        &["transport", "ranks", "measured HVP", "model", "model error"],
        &check_rows,
    );
    let missed: Vec<&Check> = s
        .checks
        .iter()
        .filter(|c| (c.predicted_hvp_seconds / c.measured_hvp_seconds - 1.0).abs() > 0.25)
        .collect();
    if missed.is_empty() {
        let _ = writeln!(md, "\nEvery configuration is within 25%.");
    } else {
        let list: Vec<String> = missed
            .iter()
            .map(|c| format!("{} ranks over {}", c.ranks, c.transport))
            .collect();
        let why = if missed.iter().all(|c| c.ranks > s.host.cores) {
            format!(
                " Each has more ranks than this machine's {} cores: a rank that waits for \
                 a sum polls for it and takes CPU time from the ranks still computing, which \
                 the model's fair-share stretch `max(1, N/C)` leaves out.",
                s.host.cores
            )
        } else {
            " Not explained.".to_string()
        };
        let _ = writeln!(
            md,
            "\nMissed (more than 25% off): {}.{why}",
            list.join(", ")
        );
    }
    let _ = writeln!(
        md,
        "\nEach figure is the median of `--repeats` repetitions in one session; separate \
         sessions differ, so compare rows of the same report only.\n"
    );
    let _ = writeln!(
        md,
        "## Projections (a model, not a measurement)\n\n\
         Assumptions: every node is one rank of one thread computing at this machine's c; the \
         rows split evenly; one product is the unit (a solve's sums scale the same way); the \
         sum is this project's gather-and-broadcast with the networks' α and β below; no \
         contention, no overlap of communication with compute. Speed-up and efficiency are \
         against one such node.\n"
    );
    for n in &s.networks {
        let _ = writeln!(
            md,
            "- {}: α = {}, 1/β = {:.2} GB/s. Source: {}.",
            n.name,
            us(n.alpha),
            1.0 / n.beta / 1e9,
            n.source
        );
    }
    md.push('\n');
    let proj_rows: Vec<Vec<String>> = s
        .projections
        .iter()
        .map(|p| {
            vec![
                p.network.clone(),
                p.rows.to_string(),
                p.nodes.to_string(),
                ms(p.hvp_seconds),
                format!("{:.1}", p.speedup),
                format!("{:.0}%", 100.0 * p.efficiency),
            ]
        })
        .collect();
    md += &markdown_table(
        &["network", "rows", "nodes", "HVP", "speed-up", "efficiency"],
        &proj_rows,
    );
    let _ = writeln!(
        md,
        "\nThe gather to rank 0 grows with N − 1: it is the price of adding in rank order. \
         A fixed binomial tree that adds in a fixed order would keep the sums identical on \
         every rank at ⌈log₂ N⌉ messages; it is not implemented.\n"
    );
    md
}

/// `summary.json` and `report.md`.
pub fn render(s: &ScalingSummary) -> Result<Vec<(String, Vec<u8>)>> {
    Ok(vec![
        (
            SUMMARY_FILE.into(),
            (serde_json::to_string_pretty(s)? + "\n").into_bytes(),
        ),
        (REPORT_FILE.into(), markdown(s).into_bytes()),
    ])
}

/// Writes every file atomically.
pub fn write(dir: &Path, s: &ScalingSummary) -> Result<()> {
    Ok(write_rendered(dir, &render(s)?)?)
}

/// Reads `dir/summary.json`, if it is the scaling study's.
pub fn load(dir: &Path) -> Result<ScalingSummary> {
    let path = dir.join(SUMMARY_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let s: ScalingSummary = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the MPI study's summary", path.display()))?;
    if s.kind != "mpi" {
        bail!("{} has kind `{}`, expected `mpi`", path.display(), s.kind);
    }
    Ok(s)
}

/// The files of `dir` that differ from what its summary renders.
pub fn check(dir: &Path) -> Result<Vec<String>> {
    Ok(stale_files(dir, &render(&load(dir)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_model_is_a_gather_and_a_broadcast() {
        assert_eq!(sum_seconds(1, 100, 1.0, 1.0), 0.0);
        // 2 ranks: one message each way; 5 ranks: 4 gathered, 3 broadcast rounds.
        let m = 1e-6 + 1e-9 * 8.0 * 100.0;
        assert!((sum_seconds(2, 100, 1e-6, 1e-9) - 2.0 * m).abs() < 1e-15);
        assert!((sum_seconds(5, 100, 1e-6, 1e-9) - 7.0 * m).abs() < 1e-15);
    }

    #[test]
    fn the_link_fit_recovers_a_line() {
        let pts: Vec<(usize, f64)> = PING_SIZES
            .iter()
            .map(|&b| (b, 2e-6 + b as f64 * 1e-10))
            .collect();
        let fit = fit_link("x", &pts);
        assert!((fit.beta - 1e-10).abs() < 1e-16);
        assert!((fit.alpha - (2e-6 + 8e-10)).abs() < 1e-15);
    }
}
