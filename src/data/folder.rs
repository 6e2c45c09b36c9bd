//! A folder of PNG/JPEG images: each is centre-cropped to a square, resized (an area-weighted
//! box filter, shrinking or enlarging) and converted to greyscale or RGB. `DIR/train` and
//! `DIR/test` subfolders give the splits; a flat folder is split 90/10 in file-name order.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::images::{ImageSet, Splits};
use crate::error::InputError;

/// A decoded image as RGB8.
struct Rgb {
    w: usize,
    h: usize,
    data: Vec<u8>,
}

/// The most pixels one source image may declare (a 16384 x 16384 photograph); a header that
/// declares more is refused before anything is allocated for it.
pub const MAX_SOURCE_PIXELS: u64 = 1 << 28;

fn check_declared_size(w: u64, h: u64) -> Result<()> {
    if w == 0 || h == 0 {
        bail!("empty image ({w}x{h})");
    }
    if w * h > MAX_SOURCE_PIXELS {
        bail!("its header declares {w}x{h} pixels, more than the {MAX_SOURCE_PIXELS}-pixel limit");
    }
    Ok(())
}

fn decode_png(bytes: &[u8]) -> Result<Rgb> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info()?;
    let (w, h) = (reader.info().width as u64, reader.info().height as u64);
    check_declared_size(w, h)?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let src = &buf[..info.buffer_size()];
    let ch = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => bail!("unexpanded palette image"),
    };
    let data = src
        .chunks(ch)
        .flat_map(|p| match ch {
            1 | 2 => [p[0], p[0], p[0]],
            _ => [p[0], p[1], p[2]],
        })
        .collect();
    Ok(Rgb { w, h, data })
}

fn decode_jpeg(bytes: &[u8]) -> Result<Rgb> {
    let mut dec = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
    dec.read_info()?;
    let head = dec.info().context("no image information")?;
    check_declared_size(head.width as u64, head.height as u64)?;
    let pixels = dec.decode()?;
    let info = dec.info().context("no image information")?;
    let (w, h) = (info.width as usize, info.height as usize);
    let data = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        other => bail!("unsupported JPEG pixel format {other:?}"),
    };
    Ok(Rgb { w, h, data })
}

/// Decode one image; every error names the file.
fn decode(path: &Path) -> Result<Rgb> {
    let file_error = |reason: String| InputError::file(path, None, reason);
    let bytes = std::fs::read(path).map_err(|e| file_error(format!("cannot read: {e}")))?;
    let img = if bytes.starts_with(b"\x89PNG") {
        decode_png(&bytes)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(&bytes)
    } else {
        return Err(file_error("not a PNG or JPEG file".into()).into());
    };
    let img = img.map_err(|e| file_error(format!("unreadable image: {e:#}")))?;
    if img.w == 0 || img.h == 0 {
        return Err(file_error("empty image".into()).into());
    }
    Ok(img)
}

/// Centre-crop to a square and resample to `size x size` (box filter over the source area each
/// output pixel covers, which is exact area averaging when shrinking).
fn crop_resize(img: &Rgb, size: usize) -> Vec<f64> {
    let side = img.w.min(img.h) as f64;
    let (x0, y0) = ((img.w as f64 - side) / 2.0, (img.h as f64 - side) / 2.0);
    let step = side / size as f64;
    let mut out = vec![0.0; size * size * 3];
    for oy in 0..size {
        for ox in 0..size {
            let (sx0, sy0) = (x0 + ox as f64 * step, y0 + oy as f64 * step);
            let (sx1, sy1) = (sx0 + step, sy0 + step);
            let mut acc = [0.0f64; 3];
            let mut wsum = 0.0;
            let mut y = sy0.floor() as usize;
            while (y as f64) < sy1 && y < img.h {
                let wy = (sy1.min(y as f64 + 1.0) - sy0.max(y as f64)).max(0.0);
                let mut x = sx0.floor() as usize;
                while (x as f64) < sx1 && x < img.w {
                    let wx = (sx1.min(x as f64 + 1.0) - sx0.max(x as f64)).max(0.0);
                    let i = (y * img.w + x) * 3;
                    for (a, &v) in acc.iter_mut().zip(&img.data[i..i + 3]) {
                        *a += wx * wy * v as f64;
                    }
                    wsum += wx * wy;
                    x += 1;
                }
                y += 1;
            }
            for k in 0..3 {
                out[(oy * size + ox) * 3 + k] = acc[k] / wsum.max(1e-12);
            }
        }
    }
    out
}

fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Load `files` as `[n, c, size, size]` (c = 1 for grey, 3 for RGB).
pub fn load_files(files: &[PathBuf], size: usize, grey: bool) -> Result<ImageSet> {
    let c = if grey { 1 } else { 3 };
    let bytes = (files.len() * c * size * size) as f64;
    if let Some(why) = crate::limits::memory_shortfall(bytes) {
        return Err(InputError::option("size", size, why).into());
    }
    let mut pixels = Vec::with_capacity(files.len() * c * size * size);
    for f in files {
        let rgb = crop_resize(&decode(f)?, size);
        if grey {
            // ITU-R BT.601 luma.
            pixels.extend((0..size * size).map(|p| {
                let q = &rgb[p * 3..p * 3 + 3];
                (0.299 * q[0] + 0.587 * q[1] + 0.114 * q[2])
                    .round()
                    .clamp(0.0, 255.0) as u8
            }));
        } else {
            for k in 0..3 {
                pixels.extend(
                    (0..size * size).map(|p| rgb[p * 3 + k].round().clamp(0.0, 255.0) as u8),
                );
            }
        }
    }
    Ok(ImageSet {
        n: files.len(),
        c,
        h: size,
        w: size,
        pixels,
    })
}

/// Train and test splits of a folder of PNG/JPEG images, each centre-cropped and resized to
/// `size x size` (default 32), greyscale (`grey`: C = 1) or RGB (C = 3), without labels.
/// `dir/train` and `dir/test` give the splits when both exist; otherwise the images directly in
/// `dir` are split 90/10 in file-name order (at least one test image).
///
/// # Errors
/// Refuses a missing directory, `size` 0, a flat folder with fewer than 2 images, an empty
/// `train/` or `test/`, a file that is unreadable or not a decodable PNG/JPEG (naming it), a
/// source image declaring more than [`MAX_SOURCE_PIXELS`] pixels, and a split larger than
/// the available memory.
pub fn load_dir(dir: &Path, size: Option<usize>, grey: bool) -> Result<Splits> {
    if !dir.is_dir() {
        bail!("{}: no such directory", dir.display());
    }
    let size = size.unwrap_or(32);
    if size == 0 {
        bail!("`size` must be at least 1");
    }
    let (train_files, test_files) = if dir.join("train").is_dir() && dir.join("test").is_dir() {
        (
            image_files(&dir.join("train"))?,
            image_files(&dir.join("test"))?,
        )
    } else {
        let all = image_files(dir)?;
        let n_test = (all.len() / 10).max(1);
        if all.len() < 2 {
            bail!(
                "{}: need at least 2 PNG/JPEG images, found {}",
                dir.display(),
                all.len()
            );
        }
        let (a, b) = all.split_at(all.len() - n_test);
        (a.to_vec(), b.to_vec())
    };
    if train_files.is_empty() || test_files.is_empty() {
        bail!("{}: no PNG/JPEG images in train/ or test/", dir.display());
    }
    Ok(Splits {
        train_labels: None,
        test_labels: None,
        train: load_files(&train_files, size, grey)?,
        test: load_files(&test_files, size, grey)?,
    })
}
