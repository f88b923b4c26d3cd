//! Renders one of each figure this crate makes into a directory, for eyeballing
//! the output: `cargo run -p hessfree-report --example samples -- /tmp/report-samples`.

use hessfree_report::{
    Csv, LinePlot, Series, SpyMask, WeightGrid, ensure_dir, gray_image_png, markdown_table,
    write_atomic,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/report-samples".into()),
    );
    ensure_dir(&out)?;

    // Objective gap on a log scale: SGD creeping, Newton-CG converging
    // quadratically (and reaching exactly zero, which the log axis drops).
    LinePlot::new("Objective − best objective", "wall time (s)", "f − f*")
        .log_y(true)
        .with_series(Series::new(
            "sgd",
            (0..200).map(|i| (i as f64 * 0.05, 0.4 / (1.0 + i as f64 * 0.3))),
        ))
        .with_series(Series::new(
            "newton-cg",
            (0..9).map(|i| {
                (
                    i as f64 * 0.9,
                    if i == 8 {
                        0.0
                    } else {
                        0.4 * 10f64.powi(-(1 << i.min(4)) + 1)
                    },
                )
            }),
        ))
        .with_series(Series::new(
            "lbfgs",
            (0..60).map(|i| (i as f64 * 0.12, 0.4 * 0.8f64.powi(i))),
        ))
        .write_svg(out.join("objective.svg"))?;

    LinePlot::new("Test accuracy", "wall time (s)", "accuracy")
        .with_series(Series::new(
            "sgd",
            (0..100).map(|i| (i as f64 * 0.1, 0.92 - 0.3 * (-(i as f64) / 10.0).exp())),
        ))
        .with_series(Series::new(
            "newton-cg",
            (0..9).map(|i| (i as f64 * 0.9, 0.925 - 0.5 * (-(i as f64)).exp())),
        ))
        .write_svg(out.join("accuracy.svg"))?;

    LinePlot::new("Nothing recorded", "iteration", "gradient norm")
        .log_y(true)
        .write_svg(out.join("empty.svg"))?;

    // Ten synthetic class images: a positive blob whose position depends on
    // the class, on a negative ring.
    let images: Vec<Vec<f32>> = (0..10)
        .map(|c| {
            let (cy, cx) = (8.0 + (c / 5) as f32 * 12.0, 4.0 + (c % 5) as f32 * 5.0);
            (0..784)
                .map(|k| {
                    let (y, x) = ((k / 28) as f32, (k % 28) as f32);
                    if !(3.0..25.0).contains(&y) || !(3.0..25.0).contains(&x) {
                        return 0.0;
                    }
                    let d2 = (y - cy).powi(2) + (x - cx).powi(2);
                    (-d2 / 12.0).exp() - 0.5 * (-(d2 - 60.0).powi(2) / 400.0).exp()
                })
                .collect()
        })
        .collect();
    WeightGrid::mnist()
        .with_labels((0..10).map(|c| c.to_string()))
        .write_png(out.join("weights.png"), &images)?;

    // A digit-like blob and a block-structured spy plot.
    let digit: Vec<u8> = (0..784)
        .map(|k| {
            let (y, x) = ((k / 28) as f32 - 14.0, (k % 28) as f32 - 14.0);
            let r = (y * y + x * x).sqrt();
            ((1.0 - ((r - 8.0).abs() / 2.5)).max(0.0) * 255.0) as u8
        })
        .collect();
    write_atomic(out.join("digit.png"), gray_image_png(&digit, 28, 28, 4)?)?;

    let dead = |i: usize| (i % 784) < 84 || (i % 28) < 3 || (i % 28) >= 25;
    SpyMask::from_fn(7840, 7840, 784, |r, c| {
        !dead(r) && !dead(c) && (r / 784 == c / 784 || (r * 31 + c * 17) % 5 != 0)
    })?
    .write_png(out.join("spy.png"))?;

    let mut csv = Csv::new(["optimizer", "iteration", "objective"]);
    csv.push_row(["sgd", "1", "0.5"])?;
    csv.write(out.join("trace.csv"))?;
    let table = markdown_table(
        &["optimizer", "test accuracy"],
        &[vec!["sgd".into(), "0.915".into()]],
    );
    write_atomic(out.join("table.md"), table)?;

    println!("wrote samples to {}", out.display());
    Ok(())
}
