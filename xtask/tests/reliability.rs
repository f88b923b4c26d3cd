//! Bad input across the command line, one case per row of
//! `docs/reliability.md`: each case must exit non-zero with a message that
//! says what was wrong, never panic, and never leave output behind. The test
//! regenerates the table (with temporary paths replaced by placeholders), so
//! the committed page is always what the code does.

mod common;

use std::path::Path;
use std::process::Command;

struct Case {
    input: &'static str,
    args: Vec<String>,
    /// A fragment the error message must contain.
    expect: &'static str,
    /// Whether `--out` must still not exist afterwards (false only where the
    /// failure happens mid-run, after which the report is written on purpose).
    nothing_written: bool,
}

#[test]
fn every_bad_input_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let good = root.join("data");
    std::fs::create_dir(&good).unwrap();
    common::write_dataset(&good, 60, 20);
    let missing_one = root.join("missing-one");
    std::fs::create_dir(&missing_one).unwrap();
    common::write_dataset(&missing_one, 60, 20);
    std::fs::remove_file(missing_one.join("t10k-labels-idx1-ubyte")).unwrap();
    let empty = root.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let corrupt = root.join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    common::write_dataset(&corrupt, 60, 20);
    let bytes = std::fs::read(corrupt.join("train-images-idx3-ubyte")).unwrap();
    std::fs::write(
        corrupt.join("train-images-idx3-ubyte"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let a_file = root.join("a-file");
    std::fs::write(&a_file, b"not a directory").unwrap();

    let out = root.join("out");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let compare = |extra: &[&str], data: &Path| -> Vec<String> {
        let mut v: Vec<String> = ["compare", "--data-dir", &s(data), "--out", &s(&out)]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let cases = vec![
        Case {
            input: "`--sgd-lr -1`",
            args: compare(&["--optimizers", "sgd", "--sgd-lr", "-1"], &good),
            expect: "learning rate must be finite and > 0",
            nothing_written: true,
        },
        Case {
            input: "`--hessian-fraction 1.5`",
            args: compare(&["--hessian-fraction", "1.5"], &good),
            expect: "hessian fraction must be in (0, 1]",
            nothing_written: true,
        },
        Case {
            input: "`--max-iters 0`",
            args: compare(&["--max-iters", "0"], &good),
            expect: "0 is not in 1..",
            nothing_written: true,
        },
        Case {
            input: "`--sgd-steps 0`",
            args: compare(&["--sgd-steps", "0"], &good),
            expect: "0 is not in 1..",
            nothing_written: true,
        },
        Case {
            input: "`--optimizers sgd,rmsprop`",
            args: compare(&["--optimizers", "sgd,rmsprop"], &good),
            expect: "expected one of: sgd, adam, kfac, newton-cg",
            nothing_written: true,
        },
        Case {
            input: "`--dtype f16`",
            args: compare(&["--dtype", "f16"], &good),
            expect: "expected one of: f32, f64",
            nothing_written: true,
        },
        Case {
            input: "`--model cnn`",
            args: compare(&["--model", "cnn"], &good),
            expect: "expected one of: softmax",
            nothing_written: true,
        },
        Case {
            input: "`--activation gelu`",
            args: compare(&["--model", "mlp:8", "--activation", "gelu"], &good),
            expect: "expected one of: tanh, relu, softplus",
            nothing_written: true,
        },
        Case {
            input: "`--init uniform`",
            args: compare(&["--init", "uniform"], &good),
            expect: "expected one of: zero",
            nothing_written: true,
        },
        Case {
            input: "`--curvature fisher`",
            args: compare(&["--curvature", "fisher"], &good),
            expect: "expected one of: hessian, ggn",
            nothing_written: true,
        },
        Case {
            input: "`--curvature-dtype f16`",
            args: compare(&["--curvature-dtype", "f16"], &good),
            expect: "unsupported curvature dtype `f16`; expected one of: f32, f64",
            nothing_written: true,
        },
        Case {
            input: "`--kernel blas`",
            args: compare(&["--kernel", "blas"], &good),
            expect: "expected one of: auto, fused, candle",
            nothing_written: true,
        },
        Case {
            input: "`--x-storage csr8`",
            args: compare(&["--x-storage", "csr8"], &good),
            expect: "expected one of: auto, u8, csr, float",
            nothing_written: true,
        },
        Case {
            input: "`--simd sse9`",
            args: compare(&["--simd", "sse9"], &good),
            expect: "unknown SIMD level \"sse9\": expected scalar, avx2, avx512 or neon",
            nothing_written: true,
        },
        Case {
            input: "`--l2 -0.1`",
            args: compare(&["--l2", "-0.1"], &good),
            expect: "--l2 must be finite and >= 0",
            nothing_written: true,
        },
        Case {
            input: "`--damping 0`",
            args: compare(&["--damping", "0"], &good),
            expect: "damping must be finite and > 0",
            nothing_written: true,
        },
        Case {
            input: "`--optimizers trust-region --tr-radius 1e9`",
            args: compare(
                &["--optimizers", "trust-region", "--tr-radius", "1e9"],
                &good,
            ),
            expect: "radius 1000000000 exceeds the maximum radius 10000",
            nothing_written: true,
        },
        Case {
            input: "`--max-time -5`",
            args: compare(&["--max-time", "-5"], &good),
            expect: "--max-time must be a positive number",
            nothing_written: true,
        },
        Case {
            input: "`--device tpu`",
            args: compare(&["--device", "tpu"], &good),
            expect: "expected one of: cpu, cuda",
            nothing_written: true,
        },
        Case {
            input: "`--optimizers sgd@colour=red`",
            args: compare(&["--optimizers", "sgd@colour=red"], &good),
            expect: "unknown override `colour`",
            nothing_written: true,
        },
        Case {
            input: "`--reference nobody=0.9`",
            args: compare(&["--reference", "nobody=0.9"], &good),
            expect: "not in --optimizers",
            nothing_written: true,
        },
        Case {
            input: "`--resume` of a directory that does not exist",
            args: compare(
                &[
                    "--optimizers",
                    "newton-cg",
                    "--resume",
                    &s(&root.join("no-such-run")),
                ],
                &good,
            ),
            expect: "no-such-run: does not exist",
            nothing_written: true,
        },
        Case {
            input: "data dir with one file missing",
            args: compare(&[], &missing_one),
            expect: "missing t10k-labels-idx1-ubyte",
            nothing_written: true,
        },
        Case {
            input: "empty data dir",
            args: compare(&[], &empty),
            expect: "missing train-images-idx3-ubyte",
            nothing_written: true,
        },
        Case {
            input: "data dir that does not exist",
            args: compare(&[], &root.join("nowhere")),
            expect: "HESSFREE_DATA",
            nothing_written: true,
        },
        Case {
            input: "truncated images file",
            args: compare(&[], &corrupt),
            expect: "truncated",
            nothing_written: true,
        },
        Case {
            input: "`--out` below a file (not writable)",
            args: vec![
                "compare".into(),
                "--data-dir".into(),
                s(&good),
                "--out".into(),
                s(&a_file.join("report")),
            ],
            expect: "is not a directory",
            nothing_written: true,
        },
        Case {
            input: "a NaN mid-run (`--sgd-lr 1e300`)",
            args: compare(
                &[
                    "--optimizers",
                    "sgd",
                    "--sgd-lr",
                    "1e300",
                    "--sgd-steps",
                    "20",
                    "--sgd-batch",
                    "10",
                ],
                &good,
            ),
            expect: "non-finite",
            nothing_written: false,
        },
        Case {
            input: "`eval --weights` of a missing file",
            args: vec![
                "eval".into(),
                "--weights".into(),
                s(&root.join("none.safetensors")),
                "--data-dir".into(),
                s(&good),
            ],
            expect: "none.safetensors",
            nothing_written: true,
        },
        Case {
            input: "`eval --weights` of a non-safetensors file",
            args: vec![
                "eval".into(),
                "--weights".into(),
                s(&a_file),
                "--data-dir".into(),
                s(&good),
            ],
            expect: "a-file",
            nothing_written: true,
        },
        Case {
            input: "`data-info` of an empty dir",
            args: vec!["data-info".into(), "--data-dir".into(), s(&empty)],
            expect: "missing train-images",
            nothing_written: true,
        },
    ];

    let placeholder = |text: &str| {
        text.replace(&s(root), "<tmp>")
            .replace(&s(&std::env::current_dir().unwrap()), "<cwd>")
    };
    let mut rows = Vec::new();
    for case in &cases {
        let _ = std::fs::remove_dir_all(&out);
        let res = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(&case.args)
            .env_remove("HESSFREE_DATA")
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr);
        let code = res.status.code().unwrap_or(-1);
        assert_ne!(code, 0, "{}: accepted", case.input);
        assert!(!stderr.contains("panicked"), "{}: {stderr}", case.input);
        assert!(
            stderr.contains(case.expect),
            "{}: expected `{}` in: {stderr}",
            case.input,
            case.expect
        );
        if case.nothing_written {
            assert!(!out.exists(), "{}: wrote {}", case.input, out.display());
        } else {
            // The mid-run failure still writes its report, and no NaN parameter.
            let weights = out.join("weights_sgd.safetensors");
            let load = Command::new(env!("CARGO_BIN_EXE_xtask"))
                .args(["eval", "--weights", &s(&weights), "--data-dir", &s(&good)])
                .env("RUST_LOG", "off")
                .output()
                .unwrap();
            assert!(
                load.status.success(),
                "the saved parameters load and are finite: {}",
                String::from_utf8_lossy(&load.stderr)
            );
        }
        let message = stderr
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or_else(|| stderr.lines().next().unwrap_or(""))
            .trim();
        rows.push(format!(
            "| {} | {} | {} |",
            case.input,
            placeholder(message).replace('|', "\\|"),
            code
        ));
    }
    let table = format!(
        "# Bad input across the command line\n\n\
         Generated by `xtask/tests/reliability.rs` (part of `cargo test --workspace`); do not edit.\n\
         Each row is a run of the built binary: the input, the first error line it printed (temporary\n\
         paths shown as `<tmp>`), and the exit code. Every case also checks that nothing panicked and\n\
         that no output was left behind, except the NaN case, which writes its report with the last\n\
         finite parameters on purpose and then exits non-zero. {} cases.\n\n\
         | input | error | exit code |\n| --- | --- | --- |\n{}\n",
        rows.len(),
        rows.join("\n")
    );
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reliability.md");
    if std::fs::read_to_string(&page).ok().as_deref() != Some(table.as_str()) {
        let tmp_page = page.with_extension("md.tmp");
        std::fs::write(&tmp_page, &table).unwrap();
        std::fs::rename(&tmp_page, &page).unwrap();
    }
}
