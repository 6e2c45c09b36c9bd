//! MNIST-style IDX image files (raw or gzip-compressed): magic 0x00000803, then n, rows, cols as
//! big-endian u32, then n * rows * cols bytes.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::images::{find_file, ImageSet, Splits};
use crate::error::InputError;

/// Read an IDX image file; `.gz` files are decompressed, never past the size the header
/// announces (a corrupt or hostile archive cannot fill the memory).
pub fn read_images(path: &Path) -> Result<ImageSet> {
    let raw = std::fs::read(path)
        .map_err(|e| InputError::file(path, None, format!("cannot read: {e}")))?;
    let malformed = |e: anyhow::Error| -> anyhow::Error {
        InputError::file(
            path,
            Some("header".into()),
            format!("malformed IDX image file: {e:#}"),
        )
        .into()
    };
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let gz_error =
            |e: std::io::Error| InputError::file(path, None, format!("not a valid gzip file: {e}"));
        let mut dec = flate2::read::GzDecoder::new(&raw[..]);
        let mut out = Vec::new();
        (&mut dec)
            .take(16)
            .read_to_end(&mut out)
            .map_err(gz_error)?;
        let need = header(&out).map_err(malformed)?.3;
        if let Some(why) = crate::limits::memory_shortfall(need as f64 * 5.0) {
            return Err(InputError::file(path, Some("header".into()), why).into());
        }
        // One byte more than announced, so a longer payload is reported, not cut.
        dec.take(need as u64 + 1)
            .read_to_end(&mut out)
            .map_err(gz_error)?;
        out
    } else {
        raw
    };
    parse_images(&bytes).map_err(malformed)
}

/// The header of IDX image bytes: `(n, rows, cols, payload bytes)`.
fn header(b: &[u8]) -> Result<(usize, usize, usize, usize)> {
    if b.len() < 16 {
        bail!("truncated header ({} bytes, need 16)", b.len());
    }
    let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
    let magic = word(0);
    if magic != 0x0803 {
        bail!("bad magic 0x{magic:08x} (expected 0x00000803 for unsigned-byte images)");
    }
    let (n, h, w) = (word(4), word(8), word(12));
    if n == 0 || h == 0 || w == 0 {
        bail!("empty data set ({n} images of {h}x{w})");
    }
    let need = h
        .checked_mul(w)
        .and_then(|p| p.checked_mul(n))
        .context("image count overflows")?;
    Ok((n, h, w, need))
}

/// Parse IDX image bytes.
pub fn parse_images(b: &[u8]) -> Result<ImageSet> {
    let (n, h, w, need) = header(b)?;
    let have = b.len() - 16;
    if have != need {
        bail!("size mismatch: header says {n} images of {h}x{w} = {need} bytes, file has {have}");
    }
    Ok(ImageSet {
        n,
        c: 1,
        h,
        w,
        pixels: b[16..].to_vec(),
    })
}

/// Train and test images of an MNIST/Fashion-MNIST directory.
pub fn load_dir(dir: &Path) -> Result<Splits> {
    if !dir.is_dir() {
        return Err(InputError::file(dir, None, "no such directory").into());
    }
    let pick = |stem: &str| {
        find_file(
            dir,
            &[&format!("{stem}.gz"), stem, &stem.replace("-idx3", ".idx3")],
        )
        .ok_or_else(|| InputError::file(dir, None, format!("no {stem}[.gz] file")))
    };
    // Both a raw file and its `.gz`: they must agree, or which one is meant is unknown.
    for stem in [
        "train-images-idx3-ubyte",
        "t10k-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        let (gz, raw) = (dir.join(format!("{stem}.gz")), dir.join(stem));
        if gz.is_file() && raw.is_file() {
            use std::io::Read;
            let mut unzipped = Vec::new();
            let same = std::fs::File::open(&gz)
                .and_then(|f| flate2::read::GzDecoder::new(f).read_to_end(&mut unzipped))
                .ok()
                .zip(std::fs::read(&raw).ok())
                .is_some_and(|(_, raw)| raw == unzipped);
            if !same {
                return Err(crate::error::InputError::file(
                    dir,
                    None,
                    format!("holds both {stem} and {stem}.gz, and they differ: remove the one that is not meant"),
                )
                .into());
            }
        }
    }
    let train = read_images(&pick("train-images-idx3-ubyte")?)?;
    let test = read_images(&pick("t10k-images-idx3-ubyte")?)?;
    // Labels are optional (unconditional models do not need them).
    let labels = |stem: &str, n: usize| -> Result<Option<Vec<u8>>> {
        let names = [
            format!("{stem}.gz"),
            stem.to_string(),
            stem.replace("-idx1", ".idx1"),
        ];
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        match find_file(dir, &names) {
            Some(p) => read_labels(&p, n).map(Some),
            None => Ok(None),
        }
    };
    let train_labels = labels("train-labels-idx1-ubyte", train.n)?;
    let test_labels = labels("t10k-labels-idx1-ubyte", test.n)?;
    if (train.h, train.w) != (test.h, test.w) {
        bail!(
            "{}: train images are {}x{} but test images {}x{}",
            dir.display(),
            train.h,
            train.w,
            test.h,
            test.w
        );
    }
    Ok(Splits {
        train,
        test,
        train_labels,
        test_labels,
    })
}

/// Read an IDX label file (magic 0x00000801, n, then n bytes; `.gz` decompressed) holding
/// exactly `n` labels (one per image of the matching image file).
pub fn read_labels(path: &Path, n: usize) -> Result<Vec<u8>> {
    let raw = std::fs::read(path)
        .map_err(|e| InputError::file(path, None, format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .take(n as u64 + 9)
            .read_to_end(&mut bytes)
            .map_err(|e| InputError::file(path, None, format!("not a valid gzip file: {e}")))?;
    } else {
        bytes = raw;
    }
    let bad = |why: String| InputError::file(path, Some("header".into()), why);
    if bytes.len() < 8 {
        return Err(bad(format!("truncated header ({} bytes, need 8)", bytes.len())).into());
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if word(0) != 0x0801 {
        return Err(bad(format!(
            "bad magic 0x{:08x} (expected 0x00000801 for a label file)",
            word(0)
        ))
        .into());
    }
    let count = word(4) as usize;
    if count != n || bytes.len() != 8 + n {
        return Err(bad(format!(
            "holds {count} labels ({} bytes) for {n} images",
            bytes.len() - 8
        ))
        .into());
    }
    Ok(bytes[8..].to_vec())
}
