//! PNG images: weight images on a diverging colour map and grey-scale
//! digits, encoded in memory and written with
//! [`write_atomic`](crate::write_atomic).
//!
//! These are the pictures the seed notebook shows with matplotlib's
//! `imshow`; here they are drawn pixel by pixel (nearest-neighbour upscaling,
//! no interpolation) so a weight image shows exactly one block per pixel and
//! the output is byte-for-byte reproducible.

use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, GrayImage, ImageEncoder, Rgb, RgbImage};

use crate::error::{ReportError, Result};
use crate::fs::write_atomic;

/// Colour of a NaN weight: a green that the diverging map never produces, so
/// a numerical failure is visible rather than painted as zero.
pub const NAN_RGB: [u8; 3] = [0, 170, 0];

/// Background between tiles and behind labels: light grey, distinct from the
/// white that marks a zero weight.
pub const GRID_BACKGROUND_RGB: [u8; 3] = [200, 200, 200];

const LABEL_RGB: [u8; 3] = [0, 0, 0];

/// Stops of the diverging map, from -1 (dark blue) through 0 (white) to +1
/// (dark red): ColorBrewer's RdBu, reversed, with a pure-white centre so a
/// zero weight (an unused border pixel, say) reads as "nothing".
const DIVERGING_STOPS: [[u8; 3]; 11] = [
    [0x05, 0x30, 0x61],
    [0x21, 0x66, 0xac],
    [0x43, 0x93, 0xc3],
    [0x92, 0xc5, 0xde],
    [0xd1, 0xe5, 0xf0],
    [0xff, 0xff, 0xff],
    [0xfd, 0xdb, 0xc7],
    [0xf4, 0xa5, 0x82],
    [0xd6, 0x60, 0x4d],
    [0xb2, 0x18, 0x2b],
    [0x67, 0x00, 0x1f],
];

/// Maps `t` in [-1, 1] to blue (negative), white (zero) or red (positive).
/// Values outside the interval are clamped (so ±inf saturate); NaN maps to
/// [`NAN_RGB`].
pub fn diverging_rgb(t: f32) -> [u8; 3] {
    if t.is_nan() {
        return NAN_RGB;
    }
    let segments = (DIVERGING_STOPS.len() - 1) as f32;
    let pos = (t.clamp(-1.0, 1.0) + 1.0) * 0.5 * segments;
    let i = (pos.floor() as usize).min(DIVERGING_STOPS.len() - 2);
    let frac = pos - i as f32;
    let (a, b) = (DIVERGING_STOPS[i], DIVERGING_STOPS[i + 1]);
    std::array::from_fn(|c| {
        let v = a[c] as f32 + (b[c] as f32 - a[c] as f32) * frac;
        v.round().clamp(0.0, 255.0) as u8
    })
}

/// How weight images are scaled onto the colour map. Either way the scale is
/// symmetric about zero, so white always means exactly zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorScale {
    /// Each image uses its own largest |weight|: shows every class's pattern,
    /// as the notebook's per-subplot `imshow` does.
    #[default]
    PerImage,
    /// One largest |weight| across all images: makes magnitudes comparable.
    Shared,
}

/// Layout of a grid of weight images (for instance the ten 28x28 class
/// images of softmax regression).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightGrid {
    /// Height of each image in values.
    pub img_rows: usize,
    /// Width of each image in values.
    pub img_cols: usize,
    /// Images per grid row; fewer are used if there are fewer images.
    pub grid_cols: usize,
    /// Output pixels per value along each axis (nearest neighbour).
    pub scale: u32,
    /// Pixels of background between and around tiles.
    pub gap: u32,
    /// Per-image or shared colour scale.
    pub color_scale: ColorScale,
    /// One label per image drawn above its tile, or empty for none. The
    /// built-in font has digits, `-`, `.` and space: enough for class
    /// numbers and unit indices without shipping a font file.
    pub labels: Vec<String>,
}

impl WeightGrid {
    /// The notebook's layout: 28x28 images, ten in a row, 4x upscaled,
    /// 2 px gaps, per-image scale, no labels.
    pub fn mnist() -> Self {
        Self {
            img_rows: 28,
            img_cols: 28,
            grid_cols: 10,
            scale: 4,
            gap: 2,
            color_scale: ColorScale::PerImage,
            labels: Vec::new(),
        }
    }

    /// Same layout with `labels` above the tiles.
    pub fn with_labels<I, S>(mut self, labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.labels = labels.into_iter().map(Into::into).collect();
        self
    }

    /// Same layout with another colour scale.
    pub fn with_color_scale(mut self, color_scale: ColorScale) -> Self {
        self.color_scale = color_scale;
        self
    }

    /// Draws the grid. Each image is a row-major `img_rows * img_cols` slice.
    pub fn render<T: AsRef<[f32]>>(&self, images: &[T]) -> Result<RgbImage> {
        const WHAT: &str = "weight grid";
        if images.is_empty() {
            return Err(ReportError::invalid(WHAT, "no images given"));
        }
        if self.img_rows == 0 || self.img_cols == 0 || self.scale == 0 || self.grid_cols == 0 {
            return Err(ReportError::invalid(
                WHAT,
                format!(
                    "image size {}x{}, scale {} and grid columns {} must all be positive",
                    self.img_rows, self.img_cols, self.scale, self.grid_cols
                ),
            ));
        }
        let values = self.img_rows * self.img_cols;
        for (i, image) in images.iter().enumerate() {
            let len = image.as_ref().len();
            if len != values {
                return Err(ReportError::invalid(
                    WHAT,
                    format!(
                        "image {i} has {len} values, expected {}x{} = {values}",
                        self.img_rows, self.img_cols
                    ),
                ));
            }
        }
        if !self.labels.is_empty() && self.labels.len() != images.len() {
            return Err(ReportError::invalid(
                WHAT,
                format!("{} labels for {} images", self.labels.len(), images.len()),
            ));
        }
        for (i, label) in self.labels.iter().enumerate() {
            if let Some(c) = label.chars().find(|&c| glyph(c).is_none()) {
                return Err(ReportError::invalid(
                    WHAT,
                    format!(
                        "label {i} ({label:?}) has {c:?}; the built-in font has only digits, '-', '.' and ' '"
                    ),
                ));
            }
        }

        let cols = self.grid_cols.min(images.len());
        let rows = images.len().div_ceil(cols);
        let scale = self.scale as u64;
        let tile_w = self.img_cols as u64 * scale;
        let tile_h = self.img_rows as u64 * scale;
        let font_px = (self.scale / 2).max(1) as u64;
        let label_h = if self.labels.is_empty() {
            0
        } else {
            (GLYPH_H as u64 + 2) * font_px
        };
        let gap = self.gap as u64;
        let width = gap + cols as u64 * (tile_w + gap);
        let height = gap + rows as u64 * (label_h + tile_h + gap);
        let (width, height) = checked_dims(WHAT, width, height)?;

        let shared_max = max_abs(images.iter().flat_map(|im| im.as_ref().iter().copied()));
        let mut canvas = RgbImage::from_pixel(width, height, Rgb(GRID_BACKGROUND_RGB));
        for (index, image) in images.iter().enumerate() {
            let image = image.as_ref();
            let x0 = gap + (index % cols) as u64 * (tile_w + gap);
            let y0 = gap + (index / cols) as u64 * (label_h + tile_h + gap);
            if let Some(label) = self.labels.get(index) {
                draw_label(&mut canvas, label, x0, tile_w, y0 + font_px, font_px);
            }
            let scale_max = match self.color_scale {
                ColorScale::PerImage => max_abs(image.iter().copied()),
                ColorScale::Shared => shared_max,
            };
            let ty = y0 + label_h;
            for (k, &w) in image.iter().enumerate() {
                let color = Rgb(diverging_rgb(normalise(w, scale_max)));
                let (r, c) = ((k / self.img_cols) as u64, (k % self.img_cols) as u64);
                fill_block(&mut canvas, x0 + c * scale, ty + r * scale, scale, color);
            }
        }
        Ok(canvas)
    }

    /// The grid as PNG bytes.
    pub fn to_png<T: AsRef<[f32]>>(&self, images: &[T]) -> Result<Vec<u8>> {
        encode_rgb_png("weight grid", &self.render(images)?)
    }

    /// Writes the grid as a PNG file, atomically.
    pub fn write_png<T: AsRef<[f32]>>(&self, path: impl AsRef<Path>, images: &[T]) -> Result<()> {
        write_atomic(path, self.to_png(images)?)
    }
}

/// PNG of weight images side by side on a diverging colour map, each scaled
/// symmetrically about its own largest |weight|, with 2 px gaps and no labels.
/// See [`WeightGrid`] for labels, a shared scale or other gaps.
pub fn weight_grid_png<T: AsRef<[f32]>>(
    images: &[T],
    img_rows: usize,
    img_cols: usize,
    grid_cols: usize,
    scale: u32,
) -> Result<Vec<u8>> {
    WeightGrid {
        img_rows,
        img_cols,
        grid_cols,
        scale,
        ..WeightGrid::mnist()
    }
    .to_png(images)
}

/// Splits a row-major `n_rows x n_cols` matrix into its columns. Softmax
/// regression stores W as 784 x 10 (pixels x classes); its columns are the
/// ten class images a [`WeightGrid`] draws.
pub fn split_columns(matrix: &[f32], n_rows: usize, n_cols: usize) -> Result<Vec<Vec<f32>>> {
    if n_rows.checked_mul(n_cols) != Some(matrix.len()) {
        return Err(ReportError::invalid(
            "splitting weight columns",
            format!(
                "matrix has {} values, expected {n_rows}x{n_cols}",
                matrix.len()
            ),
        ));
    }
    Ok((0..n_cols)
        .map(|c| (0..n_rows).map(|r| matrix[r * n_cols + c]).collect())
        .collect())
}

/// A grey-scale image, value = brightness (0 black, 255 white), as
/// matplotlib's `gray` colour map shows MNIST: a white digit on black.
/// Upscaled by `scale` with nearest neighbour.
pub fn gray_image(pixels: &[u8], rows: usize, cols: usize, scale: u32) -> Result<GrayImage> {
    const WHAT: &str = "grey-scale image";
    if rows == 0 || cols == 0 || scale == 0 {
        return Err(ReportError::invalid(
            WHAT,
            format!("size {rows}x{cols} and scale {scale} must be positive"),
        ));
    }
    if rows.checked_mul(cols) != Some(pixels.len()) {
        return Err(ReportError::invalid(
            WHAT,
            format!("{} pixels given, expected {rows}x{cols}", pixels.len()),
        ));
    }
    let s = scale as u64;
    let (width, height) = checked_dims(WHAT, cols as u64 * s, rows as u64 * s)?;
    Ok(GrayImage::from_fn(width, height, |x, y| {
        let (r, c) = ((y / scale) as usize, (x / scale) as usize);
        image::Luma([pixels[r * cols + c]])
    }))
}

/// [`gray_image`] as PNG bytes.
pub fn gray_image_png(pixels: &[u8], rows: usize, cols: usize, scale: u32) -> Result<Vec<u8>> {
    encode_gray_png("grey-scale image", &gray_image(pixels, rows, cols, scale)?)
}

/// Encodes an RGB image as PNG in memory.
pub fn encode_rgb_png(what: &str, image: &RgbImage) -> Result<Vec<u8>> {
    encode(
        what,
        image.as_raw(),
        image.width(),
        image.height(),
        ExtendedColorType::Rgb8,
    )
}

/// Encodes a grey-scale image as PNG in memory.
pub fn encode_gray_png(what: &str, image: &GrayImage) -> Result<Vec<u8>> {
    encode(
        what,
        image.as_raw(),
        image.width(),
        image.height(),
        ExtendedColorType::L8,
    )
}

fn encode(
    what: &str,
    raw: &[u8],
    width: u32,
    height: u32,
    color: ExtendedColorType,
) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(raw, width, height, color)
        .map_err(|source| ReportError::Encode {
            what: what.to_string(),
            source,
        })?;
    Ok(bytes)
}

/// Largest output we agree to allocate: 2^28 pixels (768 MiB as RGB). A
/// larger request is a caller bug (a wrong scale), not a picture.
const MAX_PIXELS: u64 = 1 << 28;

pub(crate) fn checked_dims(what: &str, width: u64, height: u64) -> Result<(u32, u32)> {
    if width == 0 || height == 0 {
        return Err(ReportError::invalid(what, "the image would be empty"));
    }
    let too_big = || {
        ReportError::invalid(
            what,
            format!("a {width}x{height} image is larger than the {MAX_PIXELS}-pixel limit"),
        )
    };
    let pixels = width.checked_mul(height).ok_or_else(too_big)?;
    if pixels > MAX_PIXELS {
        return Err(too_big());
    }
    Ok((
        u32::try_from(width).map_err(|_| too_big())?,
        u32::try_from(height).map_err(|_| too_big())?,
    ))
}

/// `w` on the [-1, 1] scale of the colour map. An all-zero image has no
/// scale: its zeros stay white (not 0/0 = NaN) and infinities saturate.
fn normalise(w: f32, scale_max: f32) -> f32 {
    if scale_max > 0.0 {
        w / scale_max
    } else if w.is_infinite() {
        w.signum()
    } else if w.is_nan() {
        f32::NAN
    } else {
        0.0
    }
}

/// Largest finite |v|, 0 if there is none.
fn max_abs(values: impl Iterator<Item = f32>) -> f32 {
    values
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()))
}

fn fill_block(canvas: &mut RgbImage, x0: u64, y0: u64, size: u64, color: Rgb<u8>) {
    for y in y0..y0 + size {
        for x in x0..x0 + size {
            put(canvas, x, y, color);
        }
    }
}

/// Sets a pixel if it is on the canvas; drawing code may overhang the edge
/// (a long label) without panicking.
fn put(canvas: &mut RgbImage, x: u64, y: u64, color: Rgb<u8>) {
    if x < canvas.width() as u64 && y < canvas.height() as u64 {
        canvas.put_pixel(x as u32, y as u32, color);
    }
}

const GLYPH_W: usize = 3;
const GLYPH_H: usize = 5;

/// A 3x5 bitmap font, one row per byte, most significant of three bits on
/// the left.
fn glyph(c: char) -> Option<[u8; GLYPH_H]> {
    Some(match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        ' ' => [0; GLYPH_H],
        _ => return None,
    })
}

/// Draws `label` centred over a tile of width `tile_w` starting at `x0`.
fn draw_label(canvas: &mut RgbImage, label: &str, x0: u64, tile_w: u64, y0: u64, px: u64) {
    let n = label.chars().count() as u64;
    if n == 0 {
        return;
    }
    let text_w = (n * (GLYPH_W as u64 + 1) - 1) * px;
    let start = x0 + tile_w.saturating_sub(text_w) / 2;
    for (i, c) in label.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        let gx = start + i as u64 * (GLYPH_W as u64 + 1) * px;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits & (1 << (GLYPH_W - 1 - col)) != 0 {
                    let x = gx + col as u64 * px;
                    let y = y0 + r as u64 * px;
                    fill_block(canvas, x, y, px, Rgb(LABEL_RGB));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_rgb(bytes: &[u8]) -> RgbImage {
        image::load_from_memory(bytes).unwrap().to_rgb8()
    }

    fn is_reddish([r, g, b]: [u8; 3]) -> bool {
        r > 90 && r as i32 > g as i32 + 60 && r as i32 > b as i32 + 40
    }

    fn is_bluish([r, _g, b]: [u8; 3]) -> bool {
        b > 90 && b as i32 > r as i32 + 60
    }

    #[test]
    fn colormap_endpoints_and_centre() {
        assert_eq!(diverging_rgb(0.0), [255, 255, 255]);
        assert!(is_reddish(diverging_rgb(1.0)));
        assert!(is_reddish(diverging_rgb(0.5)));
        assert!(is_bluish(diverging_rgb(-1.0)));
        assert!(is_bluish(diverging_rgb(-0.5)));
        assert_eq!(diverging_rgb(5.0), diverging_rgb(1.0));
        assert_eq!(diverging_rgb(f32::NEG_INFINITY), diverging_rgb(-1.0));
        assert_eq!(diverging_rgb(f32::NAN), NAN_RGB);
        // Monotone lightness away from zero: the red channel falls as weights
        // go from white to dark blue.
        let reds: Vec<u8> = (0..=10)
            .map(|i| diverging_rgb(-(i as f32) / 10.0)[0])
            .collect();
        assert!(reds.windows(2).all(|w| w[0] >= w[1]), "{reds:?}");
    }

    #[test]
    fn weight_grid_round_trips_with_expected_layout_and_colours() {
        // Two 2x3 images: image 0 has a positive, a negative and zeros;
        // image 1 is all zero except one NaN.
        let a = vec![1.0, 0.0, -1.0, 0.0, 0.5, 0.0];
        let b = vec![0.0, 0.0, 0.0, f32::NAN, 0.0, 0.0];
        let grid = WeightGrid {
            img_rows: 2,
            img_cols: 3,
            grid_cols: 10,
            scale: 4,
            gap: 2,
            color_scale: ColorScale::PerImage,
            labels: vec![],
        };
        let png = grid.to_png(&[a, b]).unwrap();
        let img = decode_rgb(&png);
        // Two tiles in one row: width 2 + 2 * (12 + 2), height 2 + 8 + 2.
        assert_eq!(img.dimensions(), (30, 12));
        let at = |x: u32, y: u32| img.get_pixel(x, y).0;
        assert_eq!(at(0, 0), GRID_BACKGROUND_RGB);
        // Tile 0 starts at (2, 2); value (0,0) = +1 covers 4x4 pixels.
        assert!(is_reddish(at(2, 2)) && is_reddish(at(5, 5)));
        assert_eq!(at(6, 2), [255, 255, 255]);
        assert!(is_bluish(at(10, 2)));
        assert!(is_reddish(at(6, 6)));
        // 0.5 of the per-image max is lighter than the max.
        assert!(at(6, 6)[1] > at(2, 2)[1]);
        // Tile 1 starts at x = 16: zeros white, NaN conspicuous.
        assert_eq!(at(16, 2), [255, 255, 255]);
        assert_eq!(at(16, 6), NAN_RGB);
    }

    #[test]
    fn shared_scale_makes_small_images_pale() {
        let big = [10.0f32; 4];
        let small = [1.0f32; 4];
        let per = WeightGrid {
            img_rows: 2,
            img_cols: 2,
            grid_cols: 2,
            scale: 1,
            gap: 1,
            color_scale: ColorScale::PerImage,
            labels: vec![],
        };
        let shared = per.clone().with_color_scale(ColorScale::Shared);
        let p = per.render(&[&big[..], &small[..]]).unwrap();
        let s = shared.render(&[&big[..], &small[..]]).unwrap();
        // Small image's first pixel is at x = 1 + 2 + 1 = 4.
        assert_eq!(p.get_pixel(4, 1).0, diverging_rgb(1.0));
        assert_eq!(s.get_pixel(4, 1).0, diverging_rgb(0.1));
        assert_eq!(s.get_pixel(1, 1).0, diverging_rgb(1.0));
    }

    #[test]
    fn mnist_grid_dimensions_and_labels() {
        let images: Vec<Vec<f32>> = (0..10)
            .map(|c| (0..784).map(|k| ((k + c) % 7) as f32 - 3.0).collect())
            .collect();
        let grid = WeightGrid::mnist().with_labels((0..10).map(|c| c.to_string()));
        let img = decode_rgb(&grid.to_png(&images).unwrap());
        // label strip: (5 + 2) * 2 = 14 px
        assert_eq!(img.dimensions(), (2 + 10 * (112 + 2), 2 + 14 + 112 + 2));
        // Some label pixels are black, inside the strip above tile 0.
        let black = (2..114)
            .flat_map(|x| (2..16).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0 == LABEL_RGB)
            .count();
        assert!(black > 0);
        let err = WeightGrid::mnist()
            .with_labels(["a"; 10])
            .render(&images)
            .unwrap_err();
        assert!(err.to_string().contains("label 0"), "{err}");
    }

    #[test]
    fn bad_grids_are_errors_not_panics() {
        let ok = vec![0.0f32; 4];
        let empty: [Vec<f32>; 0] = [];
        assert!(weight_grid_png(&empty, 2, 2, 1, 1).is_err());
        assert!(weight_grid_png(std::slice::from_ref(&ok), 0, 2, 1, 1).is_err());
        assert!(weight_grid_png(std::slice::from_ref(&ok), 2, 2, 0, 1).is_err());
        assert!(weight_grid_png(std::slice::from_ref(&ok), 2, 2, 1, 0).is_err());
        let err = weight_grid_png(&[ok.clone(), vec![0.0; 3]], 2, 2, 2, 1).unwrap_err();
        assert!(err.to_string().contains("image 1 has 3 values"), "{err}");
        let err = weight_grid_png(&[ok], 2, 2, 1, u32::MAX).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        let grid = WeightGrid {
            img_rows: 2,
            img_cols: 2,
            ..WeightGrid::mnist()
        }
        .with_labels(["1", "2"]);
        assert!(grid.render(&[vec![0.0f32; 4]]).is_err());
    }

    #[test]
    fn split_columns_extracts_class_images() {
        // 3 pixels x 2 classes, row-major.
        let w = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0];
        let cols = split_columns(&w, 3, 2).unwrap();
        assert_eq!(cols, vec![vec![1.0, 2.0, 3.0], vec![10.0, 20.0, 30.0]]);
        assert!(split_columns(&w, 4, 2).is_err());
    }

    #[test]
    fn gray_image_is_white_digit_on_black() {
        let pixels = [0u8, 255, 128, 0];
        let png = gray_image_png(&pixels, 2, 2, 3).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_luma8();
        assert_eq!(img.dimensions(), (6, 6));
        assert_eq!(img.get_pixel(0, 0).0, [0]);
        assert_eq!(img.get_pixel(5, 0).0, [255]);
        assert_eq!(img.get_pixel(2, 5).0, [128]);
        assert_eq!(img.get_pixel(3, 3).0, [0]);
        assert!(gray_image_png(&pixels, 2, 3, 1).is_err());
        assert!(gray_image_png(&[], 0, 0, 1).is_err());
        assert!(gray_image_png(&pixels, 2, 2, 0).is_err());
    }

    #[test]
    fn write_png_writes_a_decodable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.png");
        WeightGrid::mnist()
            .write_png(&path, &[vec![0.5f32; 784]])
            .unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), (2 + 112 + 2, 2 + 112 + 2));
    }
}
