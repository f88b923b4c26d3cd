//! `cargo xtask data-info`: a quick look at the data before optimising on it.
//!
//! Besides checking that the files load, the always-zero pixel count matters
//! for what follows: those inputs never move the loss, so their weights span
//! part of the Hessian's null space.

use anyhow::Result;
use clap::Args;
use hessfree_data::{Dataset, MNIST_CLASSES, load_dir, resolve_data_dir};

use crate::DataDirArgs;

#[derive(Args, Debug)]
pub struct DataInfoArgs {
    #[command(flatten)]
    pub data: DataDirArgs,

    /// Number of classes; labels must be below it.
    #[arg(long, default_value_t = MNIST_CLASSES)]
    pub classes: u8,
}

pub fn run(args: &DataInfoArgs) -> Result<()> {
    let dir = resolve_data_dir(args.data.data_dir.as_deref())?;
    // The data crate's errors already name the file and what was expected.
    let splits = load_dir(&dir.path, args.classes)?;
    let (train, test) = (&splits.train, &splits.test);

    println!(
        "data directory: {} (from {})",
        dir.path.display(),
        dir.source
    );
    println!();
    print_counts(train, test);
    println!();
    print_class_balance(train, test);
    println!();
    print_pixel_stats(train, test);
    Ok(())
}

fn print_counts(train: &Dataset, test: &Dataset) {
    println!("{:<6} {:>8} {:>8}", "split", "samples", "image");
    for (name, d) in [("train", train), ("test", test)] {
        let shape = format!("{}x{}", d.rows, d.cols);
        println!("{name:<6} {:>8} {shape:>8}", d.len());
    }
}

fn print_class_balance(train: &Dataset, test: &Dataset) {
    println!("class balance (count, share of split):");
    println!("{:<6} {:>15} {:>15}", "class", "train", "test");
    let (tr, te) = (train.label_counts(), test.label_counts());
    for (class, (&a, &b)) in tr.iter().zip(&te).enumerate() {
        println!(
            "{class:<6} {a:>7} {:>6.2}% {b:>7} {:>6.2}%",
            percent(a, train.len()),
            percent(b, test.len())
        );
    }
}

fn print_pixel_stats(train: &Dataset, test: &Dataset) {
    println!("pixel statistics (values scaled to [0, 1]):");
    println!(
        "{:<6} {:>10} {:>12} {:>24}",
        "split", "mean", "zero values", "zero in every image"
    );
    let stats = [("train", train.pixel_stats()), ("test", test.pixel_stats())];
    for (name, s) in &stats {
        let always = format!(
            "{} of {} ({:.2}%)",
            s.always_zero_positions,
            s.positions,
            100.0 * s.always_zero_fraction()
        );
        println!(
            "{name:<6} {:>10.4} {:>11.2}% {always:>24}",
            s.mean,
            100.0 * s.zero_fraction
        );
    }
    let s = &stats[0].1;
    println!();
    println!(
        "pixel positions zero across all {} training images: {} of {}",
        train.len(),
        s.always_zero_positions,
        s.positions
    );
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}
