//! Loading valid data: synthetic sets in every layout, the bundled MNIST,
//! and the conversion to tensors.

mod common;

use candle_core::{DType, Device};
use common::{LAYOUTS, gzip, images_file, synthetic, write_dataset};
use hessfree_data::idx::read_images;
use hessfree_data::{
    BatchSampler, DataDirSource, Dataset, MNIST_CLASSES, default_data_dir, load_dir,
    resolve_data_dir_with,
};

#[test]
fn synthetic_sets_load_identically_in_every_layout() {
    let mut loaded = Vec::new();
    for layout in LAYOUTS {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), layout, 12, 5, 28, 28, 10);
        let splits =
            load_dir(dir.path(), MNIST_CLASSES).unwrap_or_else(|e| panic!("{layout:?}: {e}"));
        loaded.push(splits);
    }
    let (pixels, labels) = synthetic(12, 28, 28, 10);
    let train = &loaded[0].train;
    assert_eq!(
        (train.len(), train.rows, train.cols, train.classes),
        (12, 28, 28, 10)
    );
    assert_eq!(train.images, pixels);
    assert_eq!(train.labels, labels);
    assert_eq!(loaded[0].test.len(), 5);
    assert!(loaded.iter().all(|s| *s == loaded[0]));
}

#[test]
fn other_shapes_and_class_counts_load_through_the_same_code() {
    // Fashion-MNIST is byte-for-byte the MNIST layout; this goes further with
    // a different image shape and class count (like a 26-letter EMNIST).
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), LAYOUTS[2], 52, 26, 5, 7, 26);
    let splits = load_dir(dir.path(), 26).unwrap();
    assert_eq!((splits.train.rows, splits.train.cols), (5, 7));
    assert_eq!(splits.train.pixels_per_image(), 35);
    assert_eq!(splits.train.label_counts(), vec![2; 26]);
    assert_eq!(splits.test.label_counts(), vec![1; 26]);
    // The same files with too few classes are rejected, not truncated.
    assert!(load_dir(dir.path(), 10).is_err());
}

#[test]
fn parses_from_any_reader() {
    let (pixels, _) = synthetic(3, 4, 4, 10);
    let compressed = gzip(&images_file(3, 4, 4, &pixels));
    let images = read_images(std::io::Cursor::new(compressed), "<memory>".as_ref()).unwrap();
    assert_eq!((images.count, images.rows, images.cols), (3, 4, 4));
    assert_eq!(images.pixels, pixels);
}

#[test]
fn bundled_mnist_has_the_official_counts() {
    let splits = load_dir(&default_data_dir(), MNIST_CLASSES).unwrap();
    let (train, test) = (&splits.train, &splits.test);
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!((train.rows, train.cols), (28, 28));
    assert_eq!(
        train.label_counts(),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        test.label_counts(),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    // The widely quoted normalisation constant of MNIST is mean 0.1307.
    let stats = train.pixel_stats();
    assert!((stats.mean - 0.1307).abs() < 5e-4, "{stats:?}");
    assert!(stats.always_zero_positions > 0 && stats.always_zero_positions < 784);
}

#[test]
fn default_data_dir_resolves_to_the_bundled_set() {
    let dir = resolve_data_dir_with(None, None).unwrap();
    assert_eq!(dir.source, DataDirSource::Default);
    assert!(dir.path.ends_with("data/mnist"), "{}", dir.path.display());
}

fn tiny() -> Dataset {
    // Three 2x2 images; pixel 0 is zero everywhere.
    Dataset::new(
        vec![0, 255, 0, 51, 0, 0, 102, 0, 0, 255, 255, 255],
        vec![2, 0, 1],
        2,
        2,
        3,
    )
    .unwrap()
}

#[test]
fn to_tensors_scales_pixels_and_one_hot_encodes_labels() {
    let data = tiny();
    for dtype in [DType::F32, DType::F64] {
        let t = data.to_tensors(&Device::Cpu, dtype).unwrap();
        assert_eq!(t.images.dims(), &[3, 4]);
        assert_eq!(t.one_hot.dims(), &[3, 3]);
        assert_eq!(t.labels.dims(), &[3]);
        assert_eq!(
            (t.images.dtype(), t.one_hot.dtype(), t.labels.dtype()),
            (dtype, dtype, DType::U32)
        );
        let images = t
            .images
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let expected = [
            [0.0, 1.0, 0.0, 0.2],
            [0.0, 0.0, 0.4, 0.0],
            [0.0, 1.0, 1.0, 1.0],
        ];
        for (row, want) in images.iter().zip(expected) {
            for (got, want) in row.iter().zip(want) {
                assert!((got - want).abs() < 1e-6, "{images:?}");
            }
        }
        let one_hot = t
            .one_hot
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        assert_eq!(one_hot, [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]);
        assert_eq!(t.labels.to_vec1::<u32>().unwrap(), [2, 0, 1]);
    }
}

#[test]
fn to_tensors_rejects_integer_dtypes() {
    let err = tiny().to_tensors(&Device::Cpu, DType::U8).unwrap_err();
    assert!(
        matches!(err, hessfree_data::DataError::NonFloatDtype { .. }),
        "{err:?}"
    );
}

#[test]
fn dataset_new_rejects_inconsistent_parts() {
    assert!(Dataset::new(vec![0; 7], vec![0, 1], 2, 2, 10).is_err());
    assert!(Dataset::new(vec![0; 8], vec![0, 10], 2, 2, 10).is_err());
    assert!(Dataset::new(vec![], vec![], 0, 2, 10).is_err());
}

#[test]
fn pixel_stats_count_always_zero_positions() {
    let stats = tiny().pixel_stats();
    assert_eq!((stats.always_zero_positions, stats.positions), (1, 4));
    assert!((stats.always_zero_fraction() - 0.25).abs() < 1e-12);
    assert!((stats.zero_fraction - 6.0 / 12.0).abs() < 1e-12);
    let expected_mean = (255.0 * 4.0 + 51.0 + 102.0) / 255.0 / 12.0;
    assert!((stats.mean - expected_mean).abs() < 1e-12);
    assert_eq!(tiny().always_zero_mask(), [true, false, false, false]);
}

#[test]
fn select_and_subsample() {
    let data = tiny();
    let picked = data.select(&[2, 0]);
    assert_eq!(picked.labels, [1, 2]);
    assert_eq!(picked.image(0), data.image(2));
    assert_eq!(picked.image(1), data.image(0));

    let (pixels, labels) = synthetic(1000, 2, 2, 10);
    let big = Dataset::new(pixels, labels, 2, 2, 10).unwrap();
    let a = big.subsample(0.25, 9).unwrap();
    assert_eq!(a.len(), 250);
    assert_eq!(a, big.subsample(0.25, 9).unwrap());
    assert_ne!(a, big.subsample(0.25, 10).unwrap());
}

#[test]
fn batches_of_the_notebook() {
    // The notebook's loop: 1000 steps of next_batch(100) over 55000 images
    // covers the training set about twice, with a reshuffle in between.
    let mut sampler = BatchSampler::new(55_000, 100, 0).unwrap();
    let batches: Vec<Vec<usize>> = sampler.by_ref().take(1000).collect();
    assert!(batches.iter().all(|b| b.len() == 100));
    assert_eq!(sampler.epoch(), 1);
    let mut first_epoch: Vec<usize> = batches[..550].concat();
    first_epoch.sort_unstable();
    assert_eq!(first_epoch, (0..55_000).collect::<Vec<_>>());
}
