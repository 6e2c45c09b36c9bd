//! CIFAR-10 binary batches: records of 1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B,
//! each 32x32 row-major).

use std::path::Path;

use anyhow::{bail, Result};

use super::images::{ImageSet, Splits};

const RECORD: usize = 1 + 3 * 32 * 32;

/// Read one batch file.
pub fn read_batch(path: &Path) -> Result<ImageSet> {
    read_labelled(path).map(|(set, _)| set)
}

/// Read a CIFAR-10 batch file with its labels.
pub fn read_labelled(path: &Path) -> Result<(ImageSet, Vec<u8>)> {
    let b = std::fs::read(path)
        .map_err(|e| crate::error::InputError::file(path, None, format!("cannot read: {e}")))?;
    parse_labelled(&b).map_err(|e| {
        crate::error::InputError::file(path, None, format!("malformed CIFAR-10 batch: {e:#}"))
            .into()
    })
}

/// Parse a CIFAR-10 batch from its bytes into `[n, 3, 32, 32]` images, dropping the labels.
///
/// # Errors
/// As [`parse_labelled`]: an empty input, a size that is not a whole number of 3073-byte
/// records, or a label above 9.
pub fn parse_batch(b: &[u8]) -> Result<ImageSet> {
    parse_labelled(b).map(|(set, _)| set)
}

/// Parse a CIFAR-10 batch into its images and their labels (0..=9).
pub fn parse_labelled(b: &[u8]) -> Result<(ImageSet, Vec<u8>)> {
    if b.is_empty() {
        bail!("empty file");
    }
    if !b.len().is_multiple_of(RECORD) {
        bail!(
            "size {} is not a multiple of the {RECORD}-byte record (truncated?)",
            b.len()
        );
    }
    let n = b.len() / RECORD;
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for r in 0..n {
        let rec = &b[r * RECORD..(r + 1) * RECORD];
        if rec[0] > 9 {
            bail!("record {r}: label {} is not in 0..=9", rec[0]);
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok((
        ImageSet {
            n,
            c: 3,
            h: 32,
            w: 32,
            pixels,
        },
        labels,
    ))
}

fn concat(sets: Vec<ImageSet>) -> ImageSet {
    let n = sets.iter().map(|s| s.n).sum();
    let pixels = sets.into_iter().flat_map(|s| s.pixels).collect();
    ImageSet {
        n,
        c: 3,
        h: 32,
        w: 32,
        pixels,
    }
}

/// `data_batch_1..5.bin` (those present, at least one) and `test_batch.bin`.
pub fn load_dir(dir: &Path) -> Result<Splits> {
    if !dir.is_dir() {
        return Err(crate::error::InputError::file(dir, None, "no such directory").into());
    }
    let mut train = Vec::new();
    let mut train_labels = Vec::new();
    for i in 1..=5 {
        let p = dir.join(format!("data_batch_{i}.bin"));
        if p.exists() {
            let (set, labels) = read_labelled(&p)?;
            train.push(set);
            train_labels.extend(labels);
        }
    }
    if train.is_empty() {
        return Err(crate::error::InputError::file(dir, None, "no data_batch_*.bin files").into());
    }
    let tp = dir.join("test_batch.bin");
    if !tp.exists() {
        return Err(crate::error::InputError::file(dir, None, "no test_batch.bin").into());
    }
    let (test, test_labels) = read_labelled(&tp)?;
    Ok(Splits {
        train: concat(train),
        test,
        train_labels: Some(train_labels),
        test_labels: Some(test_labels),
    })
}
