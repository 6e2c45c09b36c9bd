//! An in-memory image data set of 8-bit pixels and the command-line spec that names one.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::error::InputError;

/// `n` images of `c x h x w` 8-bit pixels, stored `[n, c, h, w]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    /// Number of images.
    pub n: usize,
    /// Channels per image (1: grey, 3: RGB).
    pub c: usize,
    /// Height in pixels.
    pub h: usize,
    /// Width in pixels.
    pub w: usize,
    /// The `n * c * h * w` pixel values, `[n, c, h, w]` row-major.
    pub pixels: Vec<u8>,
}

impl ImageSet {
    /// Images held in memory: `pixels` are `[n, c, h, w]` row-major, `n` is their count.
    ///
    /// # Errors
    /// A zero side or channel count, or a pixel count that is not a whole number of images.
    pub fn from_pixels(c: usize, h: usize, w: usize, pixels: Vec<u8>) -> Result<Self, InputError> {
        let size = c * h * w;
        if size == 0 || pixels.is_empty() || !pixels.len().is_multiple_of(size) {
            let why = format!(
                "{} pixel values are not a whole, non-zero number of {c}x{h}x{w} images",
                pixels.len()
            );
            return Err(InputError::option(
                "images",
                format!("[{c}, {h}, {w}]"),
                why,
            ));
        }
        Ok(ImageSet {
            n: pixels.len() / size,
            c,
            h,
            w,
            pixels,
        })
    }

    /// A short fingerprint of a data set's pixels (SHA-256, first 16 hex digits): a resumed run
    /// checks it, so data given at a new place must be the same images.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update((self.n as u64).to_le_bytes());
        h.update([self.c as u8, 0, 0, 0]);
        h.update((self.h as u64).to_le_bytes());
        h.update((self.w as u64).to_le_bytes());
        h.update(&self.pixels);
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Values per image, `c * h * w`.
    pub fn dims(&self) -> usize {
        self.c * self.h * self.w
    }

    /// The pixels of image `i`, `[c, h, w]` row-major; panics when `i >= n`.
    pub fn image(&self, i: usize) -> &[u8] {
        let d = self.dims();
        &self.pixels[i * d..(i + 1) * d]
    }

    /// Zero-pad every image symmetrically to `size x size` (e.g. 28 -> 32).
    pub fn pad_to(&self, size: usize) -> Result<ImageSet> {
        if size < self.h || size < self.w {
            return Err(crate::error::InputError::option(
                "pad",
                size,
                format!("smaller than the images ({}x{})", self.h, self.w),
            )
            .into());
        }
        let bytes = (self.n * self.c * size * size) as f64;
        if let Some(why) = crate::limits::memory_shortfall(bytes) {
            return Err(crate::error::InputError::option("pad", size, why).into());
        }
        let (top, left) = ((size - self.h) / 2, (size - self.w) / 2);
        let mut pixels = vec![0u8; self.n * self.c * size * size];
        for i in 0..self.n {
            for ch in 0..self.c {
                for y in 0..self.h {
                    let src = ((i * self.c + ch) * self.h + y) * self.w;
                    let dst = ((i * self.c + ch) * size + y + top) * size + left;
                    pixels[dst..dst + self.w].copy_from_slice(&self.pixels[src..src + self.w]);
                }
            }
        }
        Ok(ImageSet {
            n: self.n,
            c: self.c,
            h: size,
            w: size,
            pixels,
        })
    }

    /// The first `n` images.
    pub fn take(&self, n: usize) -> ImageSet {
        let n = n.min(self.n);
        ImageSet {
            n,
            pixels: self.pixels[..n * self.dims()].to_vec(),
            ..*self
        }
    }
}

/// Where images come from: `idx:DIR`, `cifar10:DIR` or `folder:DIR`.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    /// MNIST-style IDX files (`train-images-idx3-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]`).
    Idx(PathBuf),
    /// CIFAR-10 binary batches (`data_batch_{1..5}.bin`, `test_batch.bin`).
    Cifar10(PathBuf),
    /// A folder of PNG/JPEG images (`train/` and `test/` subfolders, or one folder split 90/10).
    Folder(PathBuf),
}

impl std::str::FromStr for DataSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, dir) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}': expected KIND:DIR with KIND idx, cifar10 or folder"))?;
        let dir = PathBuf::from(dir);
        match kind {
            "idx" => Ok(DataSpec::Idx(dir)),
            "cifar10" => Ok(DataSpec::Cifar10(dir)),
            "folder" => Ok(DataSpec::Folder(dir)),
            other => Err(format!(
                "'{s}': unknown data kind '{other}' (expected idx, cifar10 or folder)"
            )),
        }
    }
}

impl std::fmt::Display for DataSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, dir) = match self {
            DataSpec::Idx(d) => ("idx", d),
            DataSpec::Cifar10(d) => ("cifar10", d),
            DataSpec::Folder(d) => ("folder", d),
        };
        write!(f, "{kind}:{}", dir.display())
    }
}

impl DataSpec {
    /// The folder the spec names.
    pub fn dir(&self) -> &Path {
        match self {
            DataSpec::Idx(d) | DataSpec::Cifar10(d) | DataSpec::Folder(d) => d,
        }
    }

    /// The same spec with its folder made absolute (so a run resumed from another working
    /// directory finds its data). Errors when the folder does not exist.
    pub fn absolute(&self) -> Result<DataSpec, String> {
        let dir = self.dir();
        if dir.as_os_str().is_empty() {
            return Err(format!("'{self}': no folder after the colon"));
        }
        let abs = dir
            .canonicalize()
            .map_err(|e| format!("'{self}': {}: {e}", dir.display()))?;
        Ok(match self {
            DataSpec::Idx(_) => DataSpec::Idx(abs),
            DataSpec::Cifar10(_) => DataSpec::Cifar10(abs),
            DataSpec::Folder(_) => DataSpec::Folder(abs),
        })
    }
}

/// Options for loading.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Pad to this square size after loading.
    pub pad: Option<usize>,
    /// Folder images: resize (centre crop) to this size.
    pub size: Option<usize>,
    /// Folder images: load as greyscale.
    pub grey: bool,
}

/// Train and test splits, with each image's class label where the format has them (IDX label
/// files, CIFAR-10 records).
#[derive(Clone, Debug)]
pub struct Splits {
    /// Training images.
    pub train: ImageSet,
    /// Test images.
    pub test: ImageSet,
    /// Class of each training image (`None`: the data set has no labels).
    pub train_labels: Option<Vec<u8>>,
    /// Class of each test image.
    pub test_labels: Option<Vec<u8>>,
}

/// Load the splits `spec` names (folder images resized and coloured as `opts` asks), then pad
/// both to `opts.pad` when set.
///
/// # Errors
/// What the format's loader refuses (a missing folder or file, a malformed file), and a
/// padding smaller than the images or needing more than the available memory.
pub fn load(spec: &DataSpec, opts: &LoadOptions) -> Result<Splits> {
    let splits = match spec {
        DataSpec::Idx(dir) => super::idx::load_dir(dir)?,
        DataSpec::Cifar10(dir) => super::cifar::load_dir(dir)?,
        DataSpec::Folder(dir) => super::folder::load_dir(dir, opts.size, opts.grey)?,
    };
    match opts.pad {
        Some(p) => Ok(Splits {
            train: splits.train.pad_to(p)?,
            test: splits.test.pad_to(p)?,
            ..splits
        }),
        None => Ok(splits),
    }
}

/// First existing path among `names` in `dir`.
pub fn find_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.exists())
}

/// `spec` with its folder made absolute.
///
/// # Errors
/// A malformed spec or a folder that cannot be resolved (naming `--data`).
pub fn absolute_spec(spec: &str) -> Result<String> {
    let parsed: DataSpec = spec
        .parse()
        .map_err(|e: String| InputError::option("data", spec, e))?;
    let abs = parsed
        .absolute()
        .map_err(|e| InputError::option("data", spec, e))?;
    Ok(abs.to_string())
}

/// Load the data set the spec `spec` (`idx:DIR`, `cifar10:DIR`, `folder:DIR`) names.
///
/// # Errors
/// Names `--data` for a bad spec or a missing folder, and the file for a malformed one.
pub fn load_spec(spec: &str, opts: &LoadOptions) -> Result<Splits> {
    let parsed: DataSpec = spec
        .parse()
        .map_err(|e: String| InputError::option("data", spec, e))?;
    if parsed.dir().as_os_str().is_empty() {
        return Err(InputError::option("data", spec, "no folder after the colon").into());
    }
    if !parsed.dir().is_dir() {
        return Err(InputError::option("data", spec, "no such directory").into());
    }
    load(&parsed, opts)
}

impl Splits {
    /// A training and a test set without labels.
    pub fn unlabelled(train: ImageSet, test: ImageSet) -> Self {
        Splits {
            train,
            test,
            train_labels: None,
            test_labels: None,
        }
    }

    /// The training and test labels for a model over `classes` classes (`None` when
    /// `classes` is 0: an unconditional model).
    ///
    /// # Errors
    /// Names `--classes` when the data set (`spec`) has no labels or a label is out of range.
    pub fn labels(&self, classes: usize, spec: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let k = classes;
        if k == 0 {
            return Ok(None);
        }
        let (Some(train), Some(test)) = (&self.train_labels, &self.test_labels) else {
            let why = format!("{spec} has no class labels (IDX label files or CIFAR-10 records)");
            return Err(InputError::option("classes", k, why).into());
        };
        let bad = train
            .iter()
            .chain(test)
            .enumerate()
            .find(|(_, &l)| l as usize >= k);
        if let Some((i, &l)) = bad {
            let why =
                format!("label {l} (image {i} of train then test) is not below the class count");
            return Err(InputError::option("classes", k, why).into());
        }
        // More classes than the labels hold: the extra classes' priors would never be trained.
        let held = train.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
        if held < k {
            let why = format!(
                "the training labels hold {held} classes (0 to {}); a class no image has would be an untrained prior",
                held.saturating_sub(1)
            );
            return Err(InputError::option("classes", k, why).into());
        }
        Ok(Some((train.clone(), test.clone())))
    }
}

impl ImageSet {
    /// Refuse images that are not `[c, h, w]`, the shape a model expects.
    ///
    /// # Errors
    /// Names `--data spec` and both shapes.
    pub fn check_shape(&self, [c, h, w]: [usize; 3], spec: &str) -> Result<()> {
        if (self.c, self.h, self.w) == (c, h, w) {
            return Ok(());
        }
        let why = format!(
            "images are {}x{}x{} but the model expects {c}x{h}x{w}",
            self.c, self.h, self.w
        );
        Err(InputError::option("data", spec, why).into())
    }
}
