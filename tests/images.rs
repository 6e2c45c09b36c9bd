//! Image models and data: multi-scale inverse and log-density against a brute-force Jacobian,
//! loaders on good and corrupt files, exact resume, the CLI end to end, and real data.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use burn::module::Module;
use burn::tensor::DType;
use common::*;
use glowflow::data::{cifar, idx, DataSpec, LoadOptions};
use glowflow::distributions::LN_2PI;
use glowflow::linalg::{slogdet, Mat};
use glowflow::models::{DensityModel, GlowImage, GlowImageConfig, ImageCoupling, Permutation};
use glowflow::tensor_util::{cast_module, to_vec, to_vec_f64};
use glowflow::train::train_image::{train_image, ImageStart, ImageTrainOptions};

fn tiny(
    c: usize,
    side: usize,
    levels: usize,
    coupling: ImageCoupling,
    permutation: Permutation,
) -> GlowImageConfig {
    GlowImageConfig {
        channels: c,
        height: side,
        width: side,
        levels,
        steps_per_level: 2,
        net_width: 8,
        coupling,
        permutation,
        n_bits: 8,
        learn_top: true,
        init_seed: 7,
        classes: 0,
        dequantization: glowflow::models::Dequantization::Uniform,
        affine_scale: glowflow::layers::AffineScale::Bounded,
        class_conditioning: glowflow::models::ClassConditioning::Prior,
    }
}

fn initialised(cfg: &GlowImageConfig) -> GlowImage {
    let device = ad_device();
    let mut m = GlowImage::new(cfg, &device);
    m.initialize(
        random_input([32, cfg.channels, cfg.height, cfg.width], 1, &device).mul_scalar(0.3),
    );
    // Zero-initialised output convs and priors would make the test trivial: perturb them.
    perturb(m, 0.05, 3)
}

#[test]
fn multiscale_inverse_reuses_latents_exactly() {
    for (coupling, perm) in [
        (ImageCoupling::Affine, Permutation::Lu),
        (ImageCoupling::Additive, Permutation::Plain),
        (ImageCoupling::Spline, Permutation::Lu),
        (ImageCoupling::Affine, Permutation::Shuffle),
        (ImageCoupling::Affine, Permutation::Reverse),
    ] {
        let cfg = tiny(3, 8, 2, coupling, perm);
        let m = initialised(&cfg);
        let x = random_input([4, 3, 8, 8], 2, &ad_device()).mul_scalar(0.3);
        let (_, zs) = m.forward_latents(x.clone(), None);
        assert_eq!(zs.len(), 2);
        let back = m.decode(&zs, None);
        let err = max_abs_diff(back, x.clone());
        assert!(
            err <= 1e-4,
            "{coupling:?}/{perm:?}: reconstruction error {err}"
        );
        // The same model cast to float64: the inverse is exact up to float64 round-off, and the
        // log-density agrees with the float32 pass (every layer follows its input's float type).
        let m64 = cast_module(m.clone(), DType::F64);
        let x64 = x.clone().cast(DType::F64);
        let (logp64, zs64) = m64.forward_latents(x64.clone(), None);
        assert_eq!(logp64.dtype(), DType::F64);
        let err64 = to_vec_f64(m64.decode(&zs64, None) - x64)
            .iter()
            .fold(0f64, |a, v| a.max(v.abs()));
        assert!(
            err64 <= 1e-10,
            "{coupling:?}/{perm:?}: float64 error {err64}"
        );
        let logp32 = to_vec_f64(m.log_prob(x, None));
        for (a, b) in logp32.iter().zip(to_vec_f64(logp64)) {
            assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "log p {a} vs {b}");
        }
    }
}

#[test]
fn multiscale_log_density_equals_brute_force_jacobian() {
    // log p(x) = log N(eps; 0, I) + log|det d eps/dx| with eps the standardised latents.
    for (c, levels, coupling) in [
        (1, 2, ImageCoupling::Affine),
        (3, 1, ImageCoupling::Affine),
        (1, 2, ImageCoupling::Spline),
    ] {
        let cfg = tiny(c, 4, levels, coupling, Permutation::Lu);
        let m = initialised(&cfg);
        let x = random_input([3, c, 4, 4], 5, &ad_device()).mul_scalar(0.3);
        let d = c * 16;
        let logp = to_vec(m.log_prob(x.clone(), None));
        let eps = to_vec(m.standardized_latents(x.clone(), None));
        let mut jac = vec![Mat::zeros(d); 3];
        for i in 0..d {
            let xg = x.clone().detach().require_grad();
            let e = m
                .standardized_latents(xg.clone(), None)
                .narrow(1, i, 1)
                .sum();
            let g = to_vec(xg.grad(&e.backward()).unwrap());
            for (s, j) in jac.iter_mut().enumerate() {
                for k in 0..d {
                    j.set(i, k, g[s * d + k] as f64);
                }
            }
        }
        for s in 0..3 {
            let e = &eps[s * d..(s + 1) * d];
            let base: f64 =
                e.iter().map(|v| -0.5 * (*v as f64).powi(2)).sum::<f64>() - 0.5 * d as f64 * LN_2PI;
            let brute = base + slogdet(&jac[s]).unwrap().1;
            assert!(
                (logp[s] as f64 - brute).abs() <= 1e-3,
                "C={c} L={levels} {coupling:?}: log p {} vs brute force {brute}",
                logp[s]
            );
        }
    }
}

#[test]
fn squeeze_round_trip_and_layout() {
    use glowflow::layers::squeeze::{squeeze, unsqueeze};
    let device = plain_device();
    let x =
        glowflow::tensor_util::from_vec((0..32).map(|v| v as f32).collect(), [1, 2, 4, 4], &device);
    let s = squeeze(x.clone());
    assert_eq!(s.dims(), [1, 8, 2, 2]);
    // Channel 0 of the squeezed tensor holds the top-left pixel of every 2x2 block.
    let v = to_vec(s.clone());
    assert_eq!(&v[0..4], &[0.0, 2.0, 8.0, 10.0]);
    assert_eq!(max_abs_diff(unsqueeze(s), x), 0.0);
}

fn idx_bytes(n: usize, h: usize, w: usize, f: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for v in [n, h, w] {
        b.extend_from_slice(&(v as u32).to_be_bytes());
    }
    b.extend((0..n * h * w).map(f));
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A small IDX data set (images with a bright square at a random spot) in `dir`.
fn write_idx_dataset(dir: &Path, n_train: usize, n_test: usize, side: usize) {
    let img = |i: usize| {
        let (n, p) = (i / (side * side), i % (side * side));
        let (y, x) = (p / side, p % side);
        let (cy, cx) = ((n * 7) % (side - 2), (n * 3) % (side - 2));
        if (cy..cy + 3).contains(&y) && (cx..cx + 3).contains(&x) {
            230
        } else {
            20
        }
    };
    std::fs::write(
        dir.join("train-images-idx3-ubyte.gz"),
        gz(&idx_bytes(n_train, side, side, img)),
    )
    .unwrap();
    std::fs::write(
        dir.join("t10k-images-idx3-ubyte"),
        idx_bytes(n_test, side, side, img),
    )
    .unwrap();
}

#[test]
fn idx_loader_reads_raw_and_gzip_and_rejects_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dataset(dir.path(), 10, 4, 6);
    let s = glowflow::data::images::load(
        &DataSpec::Idx(dir.path().into()),
        &LoadOptions {
            pad: Some(8),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((s.train.n, s.train.c, s.train.h, s.train.w), (10, 1, 8, 8));
    assert_eq!(s.test.n, 4);
    // Padding is one zero pixel around the 6x6 image.
    assert_eq!(s.train.image(0)[0], 0);
    assert_eq!(s.train.image(0)[9], 230);

    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "badmagic",
            {
                let mut b = idx_bytes(2, 3, 3, |_| 1);
                b[3] = 1;
                b
            },
            "bad magic",
        ),
        (
            "truncated",
            idx_bytes(2, 3, 3, |_| 1)[..20].to_vec(),
            "size mismatch",
        ),
        ("short", vec![0, 0, 8], "truncated header"),
        (
            "extra",
            {
                let mut b = idx_bytes(2, 3, 3, |_| 1);
                b.push(0);
                b
            },
            "size mismatch",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = format!("{:#}", idx::read_images(&p).unwrap_err());
        assert!(e.contains(name) && e.contains(needle), "{name}: {e}");
    }
    let p = dir.path().join("broken.gz");
    std::fs::write(&p, b"not gzip at all").unwrap();
    let e = format!("{:#}", idx::read_images(&p).unwrap_err());
    assert!(e.contains("broken.gz") && e.contains("gzip"), "{e}");
    // A .gz is decompressed only as far as its header announces: 64 MiB of zeros behind a
    // header for 2 images of 3x3 is reported as 19 bytes (18 + the one read past), not inflated.
    let mut bomb = idx_bytes(2, 3, 3, |_| 1);
    bomb.extend(std::iter::repeat_n(0u8, 64 << 20));
    let p = dir.path().join("bomb.gz");
    std::fs::write(&p, gz(&bomb)).unwrap();
    let e = format!("{:#}", idx::read_images(&p).unwrap_err());
    assert!(e.contains("bomb.gz") && e.contains("file has 19"), "{e}");
    // A header announcing more images than memory holds is refused before anything is read.
    let mut huge = vec![0, 0, 8, 3];
    for v in [60_000u32, 60_000, 60_000] {
        huge.extend_from_slice(&v.to_be_bytes());
    }
    let p = dir.path().join("huge.gz");
    std::fs::write(&p, gz(&huge)).unwrap();
    let e = format!("{:#}", idx::read_images(&p).unwrap_err());
    assert!(e.contains("huge.gz") && e.contains("header"), "{e}");
    let e = format!(
        "{:#}",
        glowflow::data::images::load(
            &DataSpec::Idx(dir.path().join("nope")),
            &LoadOptions::default()
        )
        .err()
        .unwrap()
    );
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn cifar_loader_reads_batches_and_rejects_corrupt_ones() {
    let dir = tempfile::tempdir().unwrap();
    let record = |label: u8, v: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(v, 3072));
        r
    };
    let batch: Vec<u8> = (0..3).flat_map(|i| record(i as u8, 10 * i as u8)).collect();
    std::fs::write(dir.path().join("data_batch_1.bin"), &batch).unwrap();
    std::fs::write(dir.path().join("test_batch.bin"), record(9, 200)).unwrap();
    let s = glowflow::data::images::load(
        &DataSpec::Cifar10(dir.path().into()),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!((s.train.n, s.train.c, s.train.h, s.train.w), (3, 3, 32, 32));
    assert_eq!(s.train.image(2)[3071], 20);
    assert_eq!(s.test.image(0)[0], 200);

    let p = dir.path().join("trunc.bin");
    std::fs::write(&p, &batch[..5000]).unwrap();
    let e = format!("{:#}", cifar::read_batch(&p).unwrap_err());
    assert!(e.contains("trunc.bin") && e.contains("multiple"), "{e}");
    let p = dir.path().join("label.bin");
    std::fs::write(&p, record(12, 0)).unwrap();
    let e = format!("{:#}", cifar::read_batch(&p).unwrap_err());
    assert!(e.contains("label.bin") && e.contains("label 12"), "{e}");
}

fn write_png(path: &Path, w: u32, h: u32, rgb: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(f, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(rgb).unwrap();
}

#[test]
fn folder_loader_crops_resizes_and_reports_bad_images() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5u8 {
        // 12x8 images: left half red, right half blue; the centre crop is 8x8.
        let rgb: Vec<u8> = (0..8 * 12)
            .flat_map(|p| if p % 12 < 6 { [200, 0, i] } else { [0, 0, 100] })
            .collect();
        write_png(&dir.path().join(format!("img{i}.png")), 12, 8, &rgb);
    }
    let s = glowflow::data::images::load(
        &DataSpec::Folder(dir.path().into()),
        &LoadOptions {
            size: Some(4),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.train.n + s.test.n, 5);
    assert_eq!((s.train.c, s.train.h, s.train.w), (3, 4, 4));
    // Crop columns 2..10: output column 0 covers source columns 2..4 (red), column 3 covers 8..10 (blue).
    let im = s.train.image(0);
    assert_eq!((im[0], im[16 * 2]), (200, 0));
    assert_eq!((im[3], im[16 * 2 + 3]), (0, 100));
    let g = glowflow::data::images::load(
        &DataSpec::Folder(dir.path().into()),
        &LoadOptions {
            size: Some(4),
            grey: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(g.train.c, 1);
    assert_eq!(g.train.image(0)[0], (0.299f64 * 200.0).round() as u8);

    std::fs::write(dir.path().join("zzz.jpg"), b"\xFF\xD8 garbage").unwrap();
    let e = format!(
        "{:#}",
        glowflow::data::images::load(
            &DataSpec::Folder(dir.path().into()),
            &LoadOptions::default()
        )
        .err()
        .unwrap()
    );
    assert!(e.contains("zzz.jpg") && e.contains("unreadable"), "{e}");
}

#[test]
fn data_spec_parsing_names_the_problem() {
    assert!(matches!("idx:/a".parse::<DataSpec>(), Ok(DataSpec::Idx(_))));
    assert!("mnist"
        .parse::<DataSpec>()
        .unwrap_err()
        .contains("KIND:DIR"));
    assert!("tar:/x"
        .parse::<DataSpec>()
        .unwrap_err()
        .contains("unknown data kind"));
}

fn small_options(dir: &Path, steps: usize) -> ImageTrainOptions {
    ImageTrainOptions {
        data: format!("idx:{}", dir.display()),
        pad: Some(8),
        size: None,
        grey: false,
        steps,
        batch_size: 8,
        lr: 1e-3,
        warmup: 5,
        seed: 3,
        init_batch: 16,
        log_every: 1,
        sample_every: 0,
        checkpoint_every: 0,
        test_limit: 0,
        time_limit_minutes: None,
        shards: 2,
        stability: glowflow::train::train_image::image_recipe_stability(),
        weight_y: 0.0,
        label_dropout: 0.0,
        in_memory: false,
        low_memory: false,
    }
}

fn bpd_column(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn image_resume_continues_exactly() {
    let data = tempfile::tempdir().unwrap();
    write_idx_dataset(data.path(), 40, 8, 6);
    let plain = tiny(1, 8, 2, ImageCoupling::Affine, Permutation::Lu);
    let device = plain_device();
    // Every batch is a function of the seed and the step, the noise of noise augmentation and
    // q(u | x)'s draws included, and q is saved with the model: resume is exact for all three.
    let variants = [
        ("uniform", plain.clone()),
        (
            "noise-augmented",
            GlowImageConfig {
                dequantization: glowflow::models::Dequantization::Noisy { sigma: 0.05 },
                ..plain.clone()
            },
        ),
        (
            "variational",
            GlowImageConfig {
                dequantization: glowflow::models::Dequantization::Variational(
                    glowflow::models::DequantizerConfig {
                        depth: 1,
                        hidden: 4,
                    },
                ),
                ..plain.clone()
            },
        ),
    ];
    let mut columns = Vec::new();
    for (name, cfg) in variants {
        let (full, split) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = train_image(
            ImageStart::Fresh(cfg.clone(), small_options(data.path(), 12)),
            &rio(full.path()),
            &device,
        )
        .unwrap();
        train_image(
            ImageStart::Fresh(cfg, small_options(data.path(), 6)),
            &rio(split.path()),
            &device,
        )
        .unwrap();
        if name == "variational" {
            // As a run saved before format 4 wrote it (`dequantizer`, `noise_sigma`): the
            // resume reads the same dequantiser and continues exactly.
            let state = split.path().join("checkpoint/state.json");
            let mut v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
            let m = v["model"].as_object_mut().unwrap();
            let mut q = m.remove("dequantization").unwrap();
            q.as_object_mut().unwrap().remove("kind");
            m.insert("dequantizer".into(), q);
            m.insert("noise_sigma".into(), 0.0.into());
            v["format"] = 3.into();
            std::fs::write(&state, serde_json::to_string(&v).unwrap()).unwrap();
        }
        let b = train_image(
            ImageStart::Resume(
                split.path().into(),
                glowflow::train::run_dir::ResumeChanges {
                    steps: Some(12),
                    ..Default::default()
                },
            ),
            &rio(split.path()),
            &device,
        )
        .unwrap();
        let (x, y) = (bpd_column(full.path()), bpd_column(split.path()));
        assert_eq!(x.len(), 12);
        assert_eq!(y.len(), 12);
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            assert!(
                (p - q).abs() < 1e-4,
                "{name}, step {}: {p} uninterrupted vs {q} resumed",
                i + 1
            );
        }
        assert!((a.test_bpd - b.test_bpd).abs() < 1e-4, "{name}");
        columns.push(x);
    }
    // The three differ (the options reach training), and the uniform run is the reference.
    assert!(columns[0][0] != columns[1][0] && columns[0][0] != columns[2][0]);
    let x = columns.swap_remove(0);
    // Training learns: the last steps beat the first.
    assert!(x[11] < x[0], "{x:?}");
    // The two shards' summed gradients are the whole batch's: one shard trains the same.
    let single = tempfile::tempdir().unwrap();
    let mut one = small_options(data.path(), 12);
    one.shards = 1;
    train_image(
        ImageStart::Fresh(tiny(1, 8, 2, ImageCoupling::Affine, Permutation::Lu), one),
        &rio(single.path()),
        &device,
    )
    .unwrap();
    for (i, (p, q)) in x.iter().zip(&bpd_column(single.path())).enumerate() {
        assert!(
            (p - q).abs() < 1e-3,
            "step {}: {p} with 2 shards vs {q} with 1",
            i + 1
        );
    }
    // Invertible backpropagation (`--low-memory`) trains the same up to float32 round-off, and
    // may be switched on when a run is resumed.
    let low = tempfile::tempdir().unwrap();
    let mut opts = small_options(data.path(), 6);
    opts.low_memory = true;
    let plain = tiny(1, 8, 2, ImageCoupling::Affine, Permutation::Lu);
    train_image(
        ImageStart::Fresh(plain.clone(), opts),
        &rio(low.path()),
        &device,
    )
    .unwrap();
    let switched = tempfile::tempdir().unwrap();
    train_image(
        ImageStart::Fresh(plain, small_options(data.path(), 6)),
        &rio(switched.path()),
        &device,
    )
    .unwrap();
    for dir in [low.path(), switched.path()] {
        train_image(
            ImageStart::Resume(
                dir.into(),
                glowflow::train::run_dir::ResumeChanges {
                    steps: Some(12),
                    low_memory: Some(true),
                    ..Default::default()
                },
            ),
            &rio(dir),
            &device,
        )
        .unwrap();
        assert_eq!(state_of(dir)["options"]["low_memory"], true);
        for (i, (p, q)) in x.iter().zip(&bpd_column(dir)).enumerate() {
            assert!(
                (p - q).abs() < 1e-3,
                "step {}: {p} ordinary vs {q} low-memory ({})",
                i + 1,
                dir.display()
            );
        }
    }
}

fn state_of(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("checkpoint/state.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn glowflow_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_glowflow"))
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Run `c` and check it exits 2 with an error holding every one of `needles`, writing nothing
/// at `out`.
fn refused_without_output(mut c: Command, needles: &[&str], out: &Path) {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n} not named: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "a refused command wrote {}", out.display());
}

#[test]
fn cli_train_eval_sample_reconstruct() {
    let data = tempfile::tempdir().unwrap();
    write_idx_dataset(data.path(), 32, 8, 6);
    let run = tempfile::tempdir().unwrap();
    let spec = format!("idx:{}", data.path().display());
    let out = glowflow_cmd()
        .args([
            "train", "--data", &spec, "--pad", "8", "--levels", "2", "--depth", "1", "--width", "8",
        ])
        .args([
            "--steps",
            "4",
            "--batch",
            "8",
            "--sample-every",
            "2",
            "--checkpoint-every",
            "2",
            "--quiet",
            "--out",
        ])
        .arg(run.path())
        .output()
        .unwrap();
    let summary = json_of(&out);
    let trained = summary["test_bpd"].as_f64().unwrap();
    assert!(trained.is_finite() && trained > 0.0);
    for f in [
        "metrics.csv",
        "summary.json",
        "samples.png",
        "samples_0000002.png",
        "checkpoint/model.safetensors",
        "checkpoint/ema.safetensors",
        "checkpoint/state.json",
        "grad_norms.csv",
    ] {
        assert!(run.path().join(f).exists(), "{f} missing");
    }
    let per_image = run.path().join("per_image.csv");
    let eval = json_of(
        &glowflow_cmd()
            .args(["eval", "--checkpoint"])
            .arg(run.path())
            .arg("--per-image")
            .arg(&per_image)
            .output()
            .unwrap(),
    );
    let rows = std::fs::read_to_string(&per_image).unwrap();
    assert_eq!(rows.lines().next(), Some("index,bpd"));
    let worst = &eval["test_report"]["worst"][0];
    let line = rows
        .lines()
        .nth(1 + worst[0].as_u64().unwrap() as usize)
        .unwrap()
        .to_string();
    let v: f64 = line.split(',').nth(1).unwrap().parse().unwrap();
    assert_eq!(v, worst[1].as_f64().unwrap(), "{line} vs {worst}");
    assert_eq!(rows.lines().count(), 9);
    assert_eq!(eval["test_images"], 8);
    assert_eq!(eval["ema_weights"], true);
    let r = &eval["test_report"];
    assert_eq!(r["nonfinite"], 0);
    assert_eq!(r["worst"].as_array().unwrap().len(), 8);
    // The quality measure's classifier is trained on the data set's classes: a data set
    // without labels is refused, by name, not a panic.
    let q = glowflow_cmd()
        .args([
            "quality",
            "--n",
            "4",
            "--classifier-steps",
            "2",
            "--checkpoint",
        ])
        .arg(run.path())
        .arg("--cache")
        .arg(run.path().join("cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&q.stderr);
    assert!(
        !q.status.success() && err.contains("no class labels"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(r["median"].as_f64().unwrap().is_finite());
    assert!(
        (eval["test_bpd"].as_f64().unwrap() - trained).abs() < 1e-6,
        "eval {eval} vs training {trained}"
    );
    let rec = json_of(
        &glowflow_cmd()
            .args(["reconstruct", "--checkpoint"])
            .arg(run.path())
            .output()
            .unwrap(),
    );
    assert!(rec["max_abs_error"].as_f64().unwrap() <= 1e-9, "{rec}");
    assert!(
        rec["max_abs_error_float32"].as_f64().unwrap() <= 1e-4,
        "{rec}"
    );
    let png = run.path().join("grid.png");
    let out = glowflow_cmd()
        .args([
            "sample",
            "--n",
            "9",
            "--temperature",
            "0.7",
            "--seed",
            "1",
            "--checkpoint",
        ])
        .arg(run.path())
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    // Guidance needs a class-free prior this unconditional model does not have.
    let guided = run.path().join("guided.png");
    let mut c = glowflow_cmd();
    c.args(["sample", "--guidance", "2", "--checkpoint"])
        .arg(run.path())
        .arg("--out")
        .arg(&guided);
    refused_without_output(c, &["--guidance 2", "class-conditional"], &guided);
    // Importance sampling over 16 dequantisation draws: log-mean-exp is never below the mean of
    // the draws' log-densities, so the figure sits at or below a one-draw evaluation (up to the
    // draws' spread, which is far below 0.05 bits/dim here).
    let iw = json_of(
        &glowflow_cmd()
            .args(["eval", "--importance-samples", "16", "--checkpoint"])
            .arg(run.path())
            .output()
            .unwrap(),
    );
    let (one, many) = (
        iw["test_bpd"].as_f64().unwrap(),
        iw["importance_sampled"]["test_bpd"].as_f64().unwrap(),
    );
    assert_eq!(iw["importance_sampled"]["draws"], 16);
    assert!(
        many < one + 0.05 && many > one - 1.0,
        "one draw {one}, 16 draws {many}"
    );
    // Noise augmentation and a variational dequantiser are two noise models: refused together.
    let both = run.path().join("both");
    let mut c = glowflow_cmd();
    c.args(["train", "--data", &spec, "--pad", "8", "--levels", "2"])
        .args([
            "--noise-sigma",
            "0.05",
            "--dequantization",
            "variational",
            "--out",
        ])
        .arg(&both);
    refused_without_output(c, &["--noise-sigma", "variational"], &both);
    // Flags that would be ignored are refused: q's shape without a variational dequantiser,
    // --raw for a model whose samples are not denoised, importance sampling in `reconstruct`.
    let mut c = glowflow_cmd();
    c.args([
        "train",
        "--data",
        &spec,
        "--pad",
        "8",
        "--dequant-depth",
        "3",
        "--out",
    ])
    .arg(&both);
    refused_without_output(
        c,
        &["--dequant-depth 3", "--dequantization variational"],
        &both,
    );
    let raw = run.path().join("raw.png");
    let mut c = glowflow_cmd();
    c.args(["sample", "--raw", "--checkpoint"])
        .arg(run.path())
        .arg("--out")
        .arg(&raw);
    refused_without_output(c, &["--raw", "noise-augmented"], &raw);
    let mut c = glowflow_cmd();
    c.args(["reconstruct", "--importance-samples", "2", "--checkpoint"])
        .arg(run.path());
    refused_without_output(c, &["--importance-samples 2", "eval"], &raw);
    // Bad input: a checkpoint directory that is not one.
    let out = glowflow_cmd()
        .args(["eval", "--checkpoint"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--checkpoint"));
}

#[test]
fn fashion_mnist_short_run_if_installed() {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.join("train-images-idx3-ubyte.gz").exists() {
        eprintln!(
            "skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        );
        return;
    }
    let run = tempfile::tempdir().unwrap();
    let mut o = small_options(dir, 120);
    o.data = format!("idx:{}", dir.display());
    o.pad = Some(32);
    o.batch_size = 16;
    o.test_limit = 256;
    o.log_every = 10;
    let cfg = GlowImageConfig {
        channels: 1,
        height: 32,
        width: 32,
        ..tiny(1, 32, 2, ImageCoupling::Affine, Permutation::Lu)
    };
    let device = plain_device();
    let s = train_image(
        ImageStart::Fresh(cfg.clone(), o.clone()),
        &rio(run.path()),
        &device,
    )
    .unwrap();
    // 8-bit data: a uniform model scores 8 bits/dim; 120 small steps already do much better.
    eprintln!("Fashion-MNIST, 120 steps: test bpd {}", s.test_bpd);
    assert!(s.test_bpd < 7.0, "test bpd {}", s.test_bpd);
    let (model, _) = glowflow::train::train_image::load_trained(run.path(), &device).unwrap();
    let data = glowflow::train::train_image::load_data(&o).unwrap();
    let model = model.valid();
    let reconstruct = |dtype| {
        glowflow::eval::images::reconstruction_error(&model, &data.test, 8, 32, dtype, &device)
            .unwrap()
    };
    let (err64, err32) = (reconstruct(DType::F64), reconstruct(DType::F32));
    assert!(err64 <= 1e-9, "float64 reconstruction error {err64}");
    assert!(err32 <= 1e-4, "float32 reconstruction error {err32}");
    quality_measure_orders_real_barely_trained_and_noise(&model, &data, &device);

    // The same run with variational dequantisation (Flow++): the bound trains like the
    // uniform one, and q(u | x) is saved with the model (a reloaded evaluation gives the
    // summary's bound again).
    let run = tempfile::tempdir().unwrap();
    let cfg = GlowImageConfig {
        dequantization: glowflow::models::Dequantization::Variational(Default::default()),
        ..cfg
    };
    let v = train_image(
        ImageStart::Fresh(cfg.clone(), o.clone()),
        &rio(run.path()),
        &device,
    )
    .unwrap();
    eprintln!(
        "variational dequantisation, 120 steps: test bpd {}",
        v.test_bpd
    );
    assert!(
        v.bpd_meaning.starts_with("variational"),
        "{}",
        v.bpd_meaning
    );
    assert!(v.test_bpd < 7.0, "test bpd {}", v.test_bpd);
    let (model, state, _) =
        glowflow::train::train_image::load_for_eval(run.path(), &device).unwrap();
    assert!(model.dequantizer.is_some());
    let test = data.test.take(256);
    let again = glowflow::eval::images::per_image_bpd(&model, &test, &state.model, 256, &device);
    let mean = again.iter().sum::<f64>() / again.len() as f64;
    assert!((mean - v.test_bpd).abs() < 1e-9, "{mean} vs {}", v.test_bpd);
}

#[test]
fn variational_dequantiser_log_q_matches_a_brute_force_jacobian() {
    use glowflow::models::{DequantizerConfig, VariationalDequantizer};
    use rand::SeedableRng;
    let ad = ad_device();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let cfg = DequantizerConfig {
        depth: 3,
        hidden: 8,
    };
    for channels in [1, 3] {
        let q = VariationalDequantizer::new(&cfg, channels, &mut rng, &ad);
        // Zero-initialised outputs would make q a fixed elementwise map: perturb them.
        let q = perturb(q, 0.3, 4);
        let shape = [2, channels, 4, 4];
        let x = random_input(shape, 3, &ad).mul_scalar(0.3);
        let eps = random_input(shape, 4, &ad);
        let (u, log_q) = q.sample(x.clone(), eps.clone());
        let u = to_vec_f64(u);
        assert!(u.iter().all(|v| *v > 0.0 && *v < 1.0), "u leaves (0, 1)");
        // log q(u | x) = log N(eps; 0, I) - log|det du/deps|.
        let logdet = jacobian_logdets(|e| q.sample(x.clone(), e).0, eps.clone());
        let d = (channels * 16) as f64;
        let e = to_vec_f64(eps);
        for (s, (lq, ld)) in to_vec_f64(log_q).iter().zip(&logdet).enumerate() {
            let sq: f64 = e[s * channels * 16..(s + 1) * channels * 16]
                .iter()
                .map(|v| v * v)
                .sum();
            let want = -0.5 * sq - 0.5 * d * LN_2PI - ld;
            assert!(
                (lq - want).abs() < 1e-3 * want.abs().max(1.0),
                "{channels} channels, sample {s}: log q {lq} vs brute force {want}"
            );
        }
    }
}

#[test]
fn denoising_moves_by_sigma_squared_times_the_input_gradient() {
    use glowflow::tensor_util::from_vec_f64;
    let cfg = tiny(1, 4, 2, ImageCoupling::Affine, Permutation::Lu);
    // As sampling uses it: float64 weights on the plain device (no autodiff of the weights).
    let m = cast_module(initialised(&cfg).valid(), DType::F64);
    let ad = plain_device();
    let shape = [2, 1, 4, 4];
    let x = random_input(shape, 6, &ad).mul_scalar(0.3).cast(DType::F64);
    let sigma = 0.1;
    let moved: Vec<f64> = to_vec_f64(glowflow::eval::images::denoise(&m, x.clone(), sigma, None))
        .iter()
        .zip(to_vec_f64(x.clone()))
        .map(|(a, b)| a - b)
        .collect();
    // Central differences of log p(x) in float64, coordinate by coordinate.
    let base = to_vec_f64(x);
    let h = 1e-5;
    let logp =
        |v: Vec<f64>| to_vec_f64(m.log_prob(from_vec_f64(v, shape, (&ad, DType::F64)), None));
    for j in 0..16 {
        let (mut plus, mut minus) = (base.clone(), base.clone());
        for s in 0..2 {
            plus[s * 16 + j] += h;
            minus[s * 16 + j] -= h;
        }
        let (lp, lm) = (logp(plus), logp(minus));
        for s in 0..2 {
            let fd = sigma * sigma * (lp[s] - lm[s]) / (2.0 * h);
            let got = moved[s * 16 + j];
            assert!(
                (got - fd).abs() < 1e-6 * fd.abs().max(1e-3),
                "sample {s}, pixel {j}: moved {got}, sigma^2 * d log p / dx {fd}"
            );
        }
    }
    assert!(
        moved.iter().any(|v| v.abs() > 1e-4),
        "the step moves the images"
    );
}

/// The offline sample-quality measure (a classifier trained on the data set, Fréchet distance
/// in its features): real test vs real training images is small, the 120-step model's samples
/// are far, noise and blank images farther still; the classifier is cached and reloads
/// exactly.
fn quality_measure_orders_real_barely_trained_and_noise(
    model: &GlowImage,
    data: &glowflow::data::Splits,
    device: &burn::tensor::Device,
) {
    use glowflow::data::images::ImageSet;
    use glowflow::eval::quality::*;
    let cache = tempfile::tempdir().unwrap();
    let opts = QualityOptions {
        n: 500,
        draw: glowflow::eval::images::Draw::at(0.7),
        seed: 0,
        classifier: ClassifierOptions {
            steps: 300,
            ..ClassifierOptions::default()
        },
        cache: cache.path().to_path_buf(),
    };
    let cfg = GlowImageConfig {
        channels: 1,
        height: 32,
        width: 32,
        ..tiny(1, 32, 2, ImageCoupling::Affine, Permutation::Lu)
    };
    let r = measure(model, &cfg, data, &opts, device).unwrap();
    eprintln!("quality of the 120-step model: {r:?}");
    let labels = data.train_labels.as_ref().unwrap();
    let (net, path) = load_or_train(
        cache.path(),
        &data.train,
        labels,
        10,
        &opts.classifier,
        device,
    )
    .unwrap();
    assert!(r.classifier.exists(), "the classifier is cached");
    assert_eq!(path, r.classifier);
    let test = data.test.take(500);
    let f_test = features(&net, &test, device);
    let other = |pixels: Vec<u8>| ImageSet {
        pixels,
        ..test.clone()
    };
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
    let noise = other(
        (0..test.pixels.len())
            .map(|_| rand::Rng::gen(&mut rng))
            .collect(),
    );
    let fd_noise = frechet_distance(&f_test, &features(&net, &noise, device), FEATURES).unwrap();
    let blank = other(vec![0; test.pixels.len()]);
    let fd_blank = frechet_distance(&f_test, &features(&net, &blank, device), FEATURES).unwrap();
    eprintln!(
        "fd_classifier: test vs train {:.3}, vs 120-step samples {:.3}, vs noise {fd_noise:.3}, vs blank {fd_blank:.3}; classifier test accuracy {:.4}",
        r.fd_classifier_real, r.fd_classifier, r.classifier_test_accuracy
    );
    // The reloaded classifier is the trained one: the same figure to the last digit.
    let f_train = features(&net, &quantised(&data.train.take(500), cfg.n_bits), device);
    let f_test_q = features(&net, &quantised(&test, cfg.n_bits), device);
    let again = frechet_distance(&f_test_q, &f_train, FEATURES).unwrap();
    assert!(
        (again - r.fd_classifier_real).abs() < 1e-9,
        "{again} vs {}",
        r.fd_classifier_real
    );
    assert!(
        r.classifier_test_accuracy > 0.7,
        "accuracy {}",
        r.classifier_test_accuracy
    );
    assert!(r.fd_classifier_real < 0.2 * r.fd_classifier, "{r:?}");
    assert!(
        r.fd_classifier < 0.5 * fd_noise.min(fd_blank),
        "{r:?} noise {fd_noise} blank {fd_blank}"
    );
}

/// The per-image report: NaN is a failure (never zero), the worst images come with their
/// indices, and one astronomically bad image is counted as extreme instead of hiding in the mean.
#[test]
fn bpd_report_names_non_finite_and_extreme_images() {
    use glowflow::eval::images::BpdReport;
    let mut v: Vec<f64> = (0..1000).map(|i| 2.5 + 0.001 * (i % 100) as f64).collect();
    v[17] = 7.97e11;
    let r = BpdReport::new(&v);
    assert_eq!(r.nonfinite, 0);
    assert_eq!(r.extreme, 1);
    assert_eq!(r.worst[0], (17, 7.97e11));
    assert!((r.median - 2.5495).abs() < 1e-3, "{}", r.median);
    assert!((r.mean_without_extreme - 2.5495).abs() < 1e-3);
    assert!(r.mean > 1e8);
    v[3] = f64::NAN;
    let r = BpdReport::new(&v);
    assert_eq!(r.nonfinite, 1);
    assert!(
        r.mean.is_nan(),
        "a NaN image must make the mean a failure, got {}",
        r.mean
    );
    assert_eq!(r.worst[0].0, 3);
    assert_eq!(r.worst[1].0, 17);
    assert_eq!(
        glowflow::tensor_util::finite_max(&[1.0, f64::NAN, 3.0]),
        Err(1)
    );
    assert_eq!(glowflow::tensor_util::finite_max(&[1.0, 3.0]), Ok(3.0));
}

/// Samples that overflow are reported (count, which samples, where in the generative direction)
/// and drawn as marked cells, never as black pixels; finite ones report their clipped-pixel
/// shares.
#[test]
fn non_finite_samples_are_reported_not_drawn() {
    use glowflow::eval::images::sample_batch;
    use glowflow::tensor_util::from_vec;
    let cfg = tiny(1, 8, 2, ImageCoupling::Affine, Permutation::Lu);
    let model = initialised(&cfg).valid();
    let ok = sample_batch(&model, 4, 0.7, 1);
    assert!(ok.nonfinite.is_empty());
    assert!(ok.nonfinite_message().is_none());
    assert!((0.0..=1.0).contains(&ok.clipped_low) && (0.0..=1.0).contains(&ok.clipped_high));
    // A top prior whose log-std is 1000 overflows even float64: exp(1000) = inf.
    let mut broken = model.clone();
    let dims = broken.top.dims();
    let n: usize = dims.iter().product();
    let half = n / 2;
    let vals: Vec<f32> = (0..n)
        .map(|i| if i < half { 0.0 } else { 1000.0 })
        .collect();
    broken.top = glowflow::tensor_util::replace(&broken.top, from_vec(vals, dims, &plain_device()));
    let bad = sample_batch(&broken, 4, 0.7, 1);
    assert_eq!(bad.nonfinite, vec![0, 1, 2, 3]);
    let place = bad.first_nonfinite.clone().unwrap();
    assert!(place.contains("top latent"), "{place}");
    let err = bad
        .nonfinite_message()
        .expect("non-finite samples are named");
    // Every cell is marked: only the two marked colours and the grid's background remain.
    let grid = bad.grid(&cfg);
    let colours: std::collections::HashSet<&[u8]> = grid.rgb.chunks(3).collect();
    assert_eq!(colours.len(), 3, "{colours:?}");
    assert!(
        err.contains("4 of 4 samples") && err.contains("top latent"),
        "{err}"
    );
}

fn rio(out: &Path) -> glowflow::train::RunIo {
    glowflow::train::RunIo {
        out: out.to_path_buf(),
        progress: false,
        threads: 1,
        force: false,
        replicas: Vec::new(),
    }
}

/// IDX label file bytes (magic 0x00000801).
fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

/// Train the bars data of [`class_conditional_glow_learns_classes_and_samples_by_class`] with
/// label dropout, then draw samples of classes 0, 1, 0, 1, ... at guidance weights 0, 1 and 3
/// and classify them with the model's own `argmax_y log p(x | y)`: the class-free prior (w = 0)
/// gives chance, the conditional one more, guidance more again (the top-prior form, whose
/// guided prior is exactly classifier-free guidance's mix).
fn guidance_sharpens_the_classes(spec: &str, root: &Path) {
    use glowflow::eval::images::{sample_batch_drawn, Draw};
    let out = root.join("cfg");
    let s = glowflow_cmd()
        .args([
            "train", "--data", spec, "--levels", "2", "--depth", "2", "--width", "16",
        ])
        .args([
            "--steps", "400", "--batch", "32", "--lr", "2e-3", "--warmup", "20",
        ])
        .args([
            "--classes",
            "2",
            "--class-conditioning",
            "prior",
            "--label-dropout",
            "0.3",
        ])
        .args(["--threads", "1", "--quiet", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let device = plain_device();
    let (model, state, _) = glowflow::train::train_image::load_for_eval(&out, &device).unwrap();
    assert_eq!(state.options.label_dropout, 0.3);
    let n = 200;
    let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
    let share = |w: f64| {
        let draw = Draw {
            guidance: Some(w),
            ..Draw::at(0.7)
        };
        let b = sample_batch_drawn(&model, n, &draw, 4, Some(&labels));
        assert!(b.nonfinite.is_empty(), "w {w}: non-finite samples");
        let v: Vec<f32> = b.values.iter().map(|&v| v as f32).collect();
        let x = glowflow::tensor_util::from_vec(v, [n, 1, 8, 8], &device);
        let ll = to_vec(model.class_log_likelihoods(x).unwrap());
        let hits = (0..n)
            .filter(|&i| (ll[2 * i + 1] > ll[2 * i]) == (labels[i] == 1))
            .count();
        hits as f64 / n as f64
    };
    let (free, cond, guided) = (share(0.0), share(1.0), share(3.0));
    eprintln!("samples in their class: w=0 {free}, w=1 {cond}, w=3 {guided}");
    assert!((free - 0.5).abs() < 0.15, "class-free samples {free}");
    assert!(cond > free + 0.1, "conditional {cond} vs class-free {free}");
    assert!(guided >= cond, "guided {guided} vs conditional {cond}");
}

#[test]
fn class_conditional_glow_learns_classes_and_samples_by_class() {
    // Two classes told apart only by shape: a horizontal bar (class 0) or a vertical bar
    // (class 1) at a random position, on 8x8 images.
    let data = tempfile::tempdir().unwrap();
    let side = 8;
    let (n_train, n_test) = (256, 64);
    let class = |n: usize| (n * 7 % 11 % 2) as u8;
    let img = |i: usize| {
        let (n, p) = (i / (side * side), i % (side * side));
        let (y, x) = (p / side, p % side);
        let at = (n * 5) % (side - 2) + 1;
        let on = if class(n) == 0 {
            y == at || y == at + 1
        } else {
            x == at || x == at + 1
        };
        if on {
            220
        } else {
            25
        }
    };
    std::fs::write(
        data.path().join("train-images-idx3-ubyte"),
        idx_bytes(n_train, side, side, img),
    )
    .unwrap();
    // Test images continue the sequence, so they are new ones.
    let test_img = |i: usize| img(i + n_train * side * side);
    std::fs::write(
        data.path().join("t10k-images-idx3-ubyte"),
        idx_bytes(n_test, side, side, test_img),
    )
    .unwrap();
    let labels = |from: usize, n: usize| (from..from + n).map(class).collect::<Vec<u8>>();
    std::fs::write(
        data.path().join("train-labels-idx1-ubyte.gz"),
        gz(&idx_labels(&labels(0, n_train))),
    )
    .unwrap();
    std::fs::write(
        data.path().join("t10k-labels-idx1-ubyte"),
        idx_labels(&labels(n_train, n_test)),
    )
    .unwrap();
    let run = tempfile::tempdir().unwrap();
    let spec = format!("idx:{}", data.path().display());
    let out = run.path().join("cond");
    let summary = json_of(
        &glowflow_cmd()
            .args([
                "train", "--data", &spec, "--levels", "2", "--depth", "2", "--width", "16",
            ])
            .args([
                "--steps", "400", "--batch", "32", "--lr", "2e-3", "--warmup", "20",
            ])
            .args([
                "--classes",
                "2",
                "--class-conditioning",
                "prior",
                "--weight-y",
                "0.01",
                "--threads",
                "1",
                "--quiet",
            ])
            .args(["--out", out.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    let acc = summary["test_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.9, "training-free classifier accuracy {acc}");
    let (bpd, marginal) = (
        summary["test_bpd"].as_f64().unwrap(),
        summary["test_bpd_marginal"].as_f64().unwrap(),
    );
    // log p(x) = log mean_y p(x | y) <= max_y log p(x | y): at most log2(K) / D bits above.
    assert!(marginal >= bpd - 1e-9 && marginal <= bpd + 1.0 / 64.0 + 1e-9);
    // eval agrees with the run's own evaluation.
    let eval = json_of(
        &glowflow_cmd()
            .args(["eval", "--checkpoint", out.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(eval["test_accuracy"], summary["test_accuracy"]);
    assert_eq!(eval["test_bpd"], summary["test_bpd"]);
    guidance_sharpens_the_classes(&spec, run.path());
    // A temperature sweep of a class-conditional model draws a class; this model has no trained
    // class-free prior (no --label-dropout), so a sweep without --class is refused.
    let sweep = run.path().join("sweep.png");
    let mut c = glowflow_cmd();
    c.args([
        "temperatures",
        "--n",
        "3",
        "--checkpoint",
        out.to_str().unwrap(),
        "--out",
    ])
    .arg(&sweep);
    refused_without_output(c, &["--class", "--label-dropout"], &sweep);
    let s = glowflow_cmd()
        .args(["temperatures", "--n", "3", "--class", "1", "--checkpoint"])
        .arg(&out)
        .arg("--out")
        .arg(&sweep)
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    assert!(String::from_utf8_lossy(&s.stdout).contains("of class 1"));
    assert!(sweep.exists());
    // Sampling by class, and refusals naming the flag.
    let png = run.path().join("one.png");
    let s = glowflow_cmd()
        .args([
            "sample",
            "--checkpoint",
            out.to_str().unwrap(),
            "--class",
            "1",
            "--n",
            "4",
        ])
        .args(["--out", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(s.status.success() && png.exists());
    let bad = glowflow_cmd()
        .args([
            "sample",
            "--checkpoint",
            out.to_str().unwrap(),
            "--class",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--class"));
    // A data set without labels cannot train a class-conditional model.
    let unlabelled = tempfile::tempdir().unwrap();
    write_idx_dataset(unlabelled.path(), 16, 4, 8);
    let bad = glowflow_cmd()
        .args([
            "train",
            "--data",
            &format!("idx:{}", unlabelled.path().display()),
        ])
        .args(["--classes", "2", "--steps", "2", "--batch", "4", "--quiet"])
        .args(["--out", run.path().join("x").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("--classes") && err.contains("no class labels"),
        "{err}"
    );
    // The same refusal with --force over the trained run leaves that run whole.
    let state = std::fs::read(out.join("checkpoint/state.json")).unwrap();
    let bad = glowflow_cmd()
        .args([
            "train",
            "--data",
            &format!("idx:{}", unlabelled.path().display()),
        ])
        .args([
            "--classes",
            "2",
            "--steps",
            "2",
            "--batch",
            "4",
            "--quiet",
            "--force",
        ])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(
        std::fs::read(out.join("checkpoint/state.json")).unwrap(),
        state
    );
    assert!(out.join("summary.json").exists() && out.join("metrics.csv").exists());
}

/// An image checkpoint written by the release before format 3 (`tests/fixtures/
/// format2_glow_image`: 2 levels of 1 flow step, coupling CNNs 4 wide, trained 3 steps on
/// `write_idx_dataset(_, 64, 16, 8)` with the recipe's weight average; six ActNorm flags in its
/// `state.json`, four of them inside coupling networks) loads, evaluates to that release's
/// `eval` figure and resumes to its resumed figure, so weights, flags, Adam moments and the
/// average all reattach.
#[test]
fn format_2_image_checkpoint_loads_evaluates_and_resumes() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format2_glow_image");
    let data = tempfile::tempdir().unwrap();
    write_idx_dataset(data.path(), 64, 16, 8);
    let device = plain_device();
    let (model, state, ema) =
        glowflow::train::train_image::load_for_eval(&fixture, &device).unwrap();
    assert!(ema && !model.needs_data_init());
    // Saved before the scale form existed: it loads with Glow's exact form, which it was
    // trained with (the bounded default would move its figure below).
    assert_eq!(
        state.model.affine_scale,
        glowflow::layers::AffineScale::Glow
    );
    assert_eq!(
        GlowImageConfig::new(1, 8, 8).affine_scale,
        glowflow::layers::AffineScale::Bounded
    );
    let set =
        glowflow::data::images::load(&DataSpec::Idx(data.path().into()), &LoadOptions::default())
            .unwrap();
    let bpd = glowflow::eval::images::per_image_bpd(&model, &set.test, &state.model, 256, &device);
    let mean = bpd.iter().sum::<f64>() / bpd.len() as f64;
    // That release's `eval --checkpoint`: 8.035723919144209 bits/dim.
    assert!(
        (mean - 8.035723919144209).abs() < 1e-6,
        "test bits/dim {mean}"
    );

    let run = tempfile::tempdir().unwrap();
    copy_dir(&fixture, run.path());
    let changes = glowflow::train::run_dir::ResumeChanges {
        steps: Some(5),
        data: Some(format!("idx:{}", data.path().display())),
        ..Default::default()
    };
    let s = train_image(
        ImageStart::Resume(run.path().into(), changes),
        &rio(run.path()),
        &device,
    )
    .unwrap();
    // That release resumed the same checkpoint to 5 steps: 8.003379571953069 bits/dim.
    assert!(
        (s.test_bpd - 8.003379571953069).abs() < 1e-6,
        "resumed {}",
        s.test_bpd
    );
}

/// Latent editing: an interpolation's ends and a scale-0 attribute edit reproduce the images
/// (encoding from bin centres, exact decoding), the middle differs; temperature 0 draws the
/// same image in every column; a class absent from the labels is refused by name.
#[test]
fn latent_edits_reproduce_their_ends() {
    use glowflow::data::images::ImageSet;
    use glowflow::eval::edit::*;
    let cfg = tiny(1, 8, 2, ImageCoupling::Affine, Permutation::Lu);
    let model = initialised(&cfg).valid();
    let device = plain_device();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(9);
    let set = ImageSet {
        n: 6,
        c: 1,
        h: 8,
        w: 8,
        pixels: (0..6 * 64).map(|_| rand::Rng::gen(&mut rng)).collect(),
    };
    let steps = 5;
    let px = interpolate(&model, &cfg, &set, None, &[(0, 1), (2, 5)], steps, &device).unwrap();
    let img = |px: &[u8], k: usize| px[k * 64..(k + 1) * 64].to_vec();
    for (row, (a, b)) in [(0, 1), (2, 5)].into_iter().enumerate() {
        assert_eq!(img(&px, row * steps), set.image(a), "pair {row}: start");
        assert_eq!(
            img(&px, row * steps + steps - 1),
            set.image(b),
            "pair {row}: end"
        );
        assert_ne!(
            img(&px, row * steps + 2),
            set.image(a),
            "pair {row}: middle"
        );
    }
    let labels = [0u8, 1, 0, 1, 1, 0];
    let dir = attribute_direction(&model, &cfg, &set, &labels, 1, 6, &device).unwrap();
    let px = manipulate(
        &model,
        &cfg,
        &set,
        None,
        &[3, 4],
        &dir,
        &[-1.0, 0.0, 1.0],
        &device,
    )
    .unwrap();
    assert_eq!(img(&px, 1), set.image(3));
    assert_eq!(img(&px, 4), set.image(4));
    assert_ne!(img(&px, 2), set.image(3), "a scale of 1 changes the image");
    let err = attribute_direction(&model, &cfg, &set, &labels, 7, 6, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("class 7 has 0 of the first 6 images"), "{err}");

    // A model whose couplings read the class: each image is encoded with its own label (its
    // latents differ from those under the other class), the ends of an interpolation between
    // two classes and an edit of scale 0 still reproduce the images, and without labels the
    // edit is refused rather than run through the null class.
    let mut ccfg = cfg.clone();
    ccfg.classes = 2;
    ccfg.class_conditioning = glowflow::models::ClassConditioning::Couplings;
    let cmodel = initialised(&ccfg).valid();
    let own = encode(&cmodel, &ccfg, &set, Some(&labels), &[1], &device).unwrap();
    let other = encode(&cmodel, &ccfg, &set, Some(&[0u8; 6]), &[1], &device).unwrap();
    let diff = glowflow::tensor_util::to_vec(own[0].clone() - other[0].clone());
    let gap = diff.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(gap > 1e-3, "the class changes the level-0 latent: {gap}");
    let px = interpolate(
        &cmodel,
        &ccfg,
        &set,
        Some(&labels),
        &[(0, 1)],
        steps,
        &device,
    )
    .unwrap();
    assert_eq!(img(&px, 0), set.image(0));
    assert_eq!(img(&px, steps - 1), set.image(1));
    let dir = attribute_direction(&cmodel, &ccfg, &set, &labels, 1, 6, &device).unwrap();
    let px = manipulate(
        &cmodel,
        &ccfg,
        &set,
        Some(&labels),
        &[3, 0],
        &dir,
        &[0.0, 1.0],
        &device,
    )
    .unwrap();
    assert_eq!(img(&px, 0), set.image(3));
    assert_eq!(
        img(&px, 2),
        set.image(0),
        "the second image, of the other class"
    );
    let err = interpolate(&cmodel, &ccfg, &set, None, &[(0, 1)], steps, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs their labels"), "{err}");
    let px = temperature_sweep(&model, &cfg, &[0.0, 0.8], 4, 1, None).unwrap();
    for k in 1..4 {
        assert_eq!(
            img(&px, k),
            img(&px, 0),
            "T = 0 draws the mode in every column"
        );
    }
    assert_ne!(img(&px, 5), img(&px, 4), "T = 0.8 draws different images");
}

/// Glow's ablation: six runs, one per (permutation, coupling), each with a curve of one test
/// evaluation per stage; the staged runs equal uninterrupted ones (resume is exact), and every
/// run shares the options, seeds and data.
#[test]
fn ablation_trains_six_variants_with_identical_options() {
    let data = tempfile::tempdir().unwrap();
    write_idx_dataset(data.path(), 32, 8, 6);
    let out = tempfile::tempdir().unwrap();
    let opts = small_options(data.path(), 4);
    let cfg = tiny(1, 8, 2, ImageCoupling::Affine, Permutation::Lu);
    let device = plain_device();
    let rows =
        glowflow::ablation::ablation(out.path(), &cfg, &opts, 2, None, &rio(out.path()), &device)
            .unwrap();
    assert_eq!(rows.len(), 6);
    assert!(out.path().join("ablation.png").exists());
    assert!(out.path().join("ablation.json").exists());
    let mut seen = std::collections::BTreeSet::new();
    for r in &rows {
        assert!(seen.insert((r.permutation.clone(), r.coupling.clone())));
        let steps: Vec<usize> = r.curve.iter().map(|c| c.0).collect();
        assert_eq!(steps, [2, 4], "{r:?}");
        assert!(r.final_test_bpd.is_finite() && r.final_test_bpd == r.curve[1].1);
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(r.run.join("checkpoint/state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(state["options"]["seed"], 3);
        assert_eq!(state["options"]["batch_size"], 8);
        assert_eq!(state["model"]["init_seed"], 7);
        assert_eq!(state["model"]["permutation"], r.permutation.as_str());
        assert_eq!(state["model"]["coupling"], r.coupling.as_str());
    }
    // The staged LU + affine run is the uninterrupted one.
    let direct = tempfile::tempdir().unwrap();
    let s = train_image(ImageStart::Fresh(cfg, opts), &rio(direct.path()), &device).unwrap();
    let lu_affine = rows
        .iter()
        .find(|r| r.permutation == "lu" && r.coupling == "affine");
    assert_eq!(s.test_bpd, lu_affine.unwrap().final_test_bpd);
}

/// A sample grid never sinks a run: a non-finite sample is drawn as a marked (striped magenta
/// and cyan) cell, the others as their pixels, and the batch names it.
#[test]
fn sample_grids_mark_non_finite_samples() {
    use glowflow::eval::images::SampleBatch;
    use glowflow::viz::grid::MARKED_CELL_COLOURS;
    let cfg = GlowImageConfig::new(1, 8, 8);
    let mut values = vec![0.0f64; 4 * 64];
    values[64 + 5] = f64::NAN;
    values[3 * 64] = f64::INFINITY;
    let batch = SampleBatch {
        values,
        n: 4,
        nonfinite: vec![1, 3],
        first_nonfinite: Some("level 0, layer 2 (AffineCoupling, inverse)".into()),
        clipped_low: 0.0,
        clipped_high: 0.0,
    };
    let why = batch.nonfinite_message().unwrap();
    assert!(
        why.starts_with("2 of 4 samples") && why.contains("[1, 3]") && why.contains("layer 2"),
        "{why}"
    );
    let canvas = batch.grid_cols(&cfg, 4);
    // Cells are 8 px scaled to 64, 2 px apart: cell i starts at x = 2 + 66 i, y = 2.
    let px = |x: usize, y: usize| {
        let i = (y * canvas.width + x) * 3;
        [canvas.rgb[i], canvas.rgb[i + 1], canvas.rgb[i + 2]]
    };
    for cell in 0..4 {
        let colours: std::collections::HashSet<[u8; 3]> = (0..64)
            .flat_map(|y| (0..64).map(move |x| (x, y)))
            .map(|(x, y)| px(2 + 66 * cell + x, 2 + y))
            .collect();
        if cell == 1 || cell == 3 {
            let want: std::collections::HashSet<[u8; 3]> =
                MARKED_CELL_COLOURS.into_iter().collect();
            assert_eq!(colours, want, "cell {cell}");
        } else {
            // Value 0 is mid-grey: one grey level, never a marked colour.
            assert_eq!(colours.len(), 1, "cell {cell}");
            let c = *colours.iter().next().unwrap();
            assert!(c[0] == c[1] && c[1] == c[2], "cell {cell}: {c:?}");
        }
    }
}

/// The split prior's soft bound: the identity well inside `±b`, `±b` far outside (1e30 gives
/// `b`, not a cancelled 0), monotone.
#[test]
fn split_prior_log_std_is_softly_bounded() {
    use glowflow::models::glow_image::soft_bound;
    use glowflow::tensor_util::{from_vec_f64, to_vec_f64};
    let device = plain_device();
    let b = (1.0 / glowflow::layers::MIN_AFFINE_SCALE).ln();
    let xs = [-1e30, -1e3, -20.0, -3.0, 0.0, 1.0, 3.0, 20.0, 1e3, 1e30];
    let x = from_vec_f64(xs.to_vec(), [1, xs.len(), 1, 1], (&device, DType::F64));
    let y = to_vec_f64(soft_bound(x, b));
    let mut prev = f64::NEG_INFINITY;
    for (&x, &y) in xs.iter().zip(&y) {
        assert!(
            y.is_finite() && y > -b - 1e-9 && y < b + 1e-9,
            "soft_bound({x}) = {y}"
        );
        if x.abs() <= 3.0 {
            assert!(
                (y - x).abs() < 1e-3,
                "soft_bound({x}) = {y}: not the identity inside"
            );
        }
        if x.abs() >= 1e3 {
            assert!(
                (y.abs() - b).abs() < 1e-6,
                "soft_bound({x}) = {y}: not ±b far outside"
            );
        }
        assert!(y >= prev, "soft_bound is not monotone at {x}");
        prev = y;
    }
}

/// ActNorm's initialisation runs on the inner backend (so it holds one layer's activations,
/// not the whole depth's) and hands the model back as it was: the same trainable and fixed
/// parameters (a fixed top prior stays fixed, the flags stay buffers), on autodiff, so a
/// backward pass reaches every trainable parameter.
#[test]
fn initialisation_keeps_every_parameter_trainable_as_before() {
    use burn::module::{ModuleVisitor, Param, ParamId};
    use burn::tensor::Tensor;
    struct Flags(Vec<(ParamId, bool)>);
    impl ModuleVisitor for Flags {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push((p.id, p.is_require_grad()));
        }
    }
    let flags = |m: &GlowImage| {
        let mut f = Flags(Vec::new());
        m.visit(&mut f);
        f.0
    };
    for learn_top in [true, false] {
        let cfg = GlowImageConfig {
            learn_top,
            ..tiny(1, 8, 2, ImageCoupling::Affine, Permutation::Lu)
        };
        let device = ad_device();
        let mut m = GlowImage::new(&cfg, &device);
        let before = flags(&m);
        assert!(m.needs_data_init());
        m.initialize(random_input([8, 1, 8, 8], 1, &device).mul_scalar(0.3));
        assert!(!m.needs_data_init());
        assert_eq!(flags(&m), before, "learn_top {learn_top}");
        let trainable = before.iter().filter(|f| f.1).count();
        let x = random_input([4, 1, 8, 8], 2, &device).mul_scalar(0.3);
        let g = m.log_prob(x, None).mean().backward();
        let grads = burn::optim::GradientsParams::from_grads(g, &m);
        assert_eq!(grads.len(), trainable, "learn_top {learn_top}");
    }
}

/// The memory estimates' weight count (`GlowImageConfig::weight_count`, used to refuse what
/// cannot fit before building the model) is within 5 % of the built model's, for every coupling
/// kind, class conditioning and the paper's CIFAR-10 shape.
#[test]
fn weight_count_estimate_matches_the_built_model() {
    use glowflow::models::ClassConditioning;
    let device = plain_device();
    let paper = GlowImageConfig {
        levels: 3,
        steps_per_level: 2,
        net_width: 512,
        ..GlowImageConfig::new(3, 32, 32)
    };
    for (name, cfg) in [
        ("paper's shape, K = 2", paper.clone()),
        (
            "additive",
            GlowImageConfig {
                coupling: ImageCoupling::Additive,
                ..paper.clone()
            },
        ),
        (
            "spline",
            GlowImageConfig {
                coupling: ImageCoupling::Spline,
                net_width: 64,
                ..paper.clone()
            },
        ),
        (
            "classes in the couplings",
            GlowImageConfig {
                classes: 10,
                class_conditioning: ClassConditioning::Couplings,
                net_width: 64,
                levels: 2,
                ..GlowImageConfig::new(1, 28, 28)
            },
        ),
    ] {
        let built = GlowImage::new(&cfg, &device).num_params() as f64;
        let estimate = cfg.weight_count() as f64;
        let off = (estimate / built - 1.0).abs();
        assert!(
            off <= 0.05,
            "{name}: estimate {estimate} vs {built} ({off:.3})"
        );
    }
}

/// A loss curve's y range ignores a single spike (a clipped degenerate batch) but keeps the
/// curve's own spread.
#[test]
fn loss_curve_range_survives_one_spike() {
    use glowflow::viz::charts::curve_range;
    let mut ys: Vec<f64> = (0..2000)
        .map(|i| 3.0 + 0.5 * ((i as f64) * 0.37).sin())
        .collect();
    ys[1500] = 991_945.9;
    let (lo, hi) = curve_range(&ys);
    assert!(
        (lo - 2.5).abs() < 1e-3 && hi > 3.49 && hi < 3.51,
        "range {lo}..{hi}"
    );
    // Short runs keep their maximum.
    assert_eq!(curve_range(&[3.0, 9.0, 4.0]), (3.0, 9.0));
    assert_eq!(curve_range(&[]), (0.0, 1.0));
}
