//! Training as a library call: `VectorFlow::fit` on rows in memory is the command line's
//! `train2d` on the same rows (to the last digit), stops at a step boundary when cancelled,
//! resumes exactly from its run directory, and refuses bad rows by name.

use std::process::Command;
use std::sync::Arc;

use glowflow::data::table::Table;
use glowflow::models::{ModelKind, VectorFlow, VectorFlowConfig};
use glowflow::train::{Cancel, FitOptions, Hooks};

/// Rows of a correlated, skewed 2-D table with one context column `c`: `[x, y, c]`.
fn rows(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut u = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .flat_map(|_| {
            let c = u() * 2.0 - 1.0;
            let x = (u() + u() + u()) * 2.0 - 3.0 + c;
            let y = x * x * 0.5 + (u() - 0.5) * 0.8;
            [x, y, c]
        })
        .collect()
}

fn names() -> Vec<String> {
    vec!["x".into(), "y".into(), "c".into()]
}

fn write_csv(path: &std::path::Path, values: &[f64]) {
    let mut text = String::from("x,y,c\n");
    for r in values.chunks(3) {
        // `{:?}` writes the shortest digits that read back as the same float64.
        text.push_str(&format!("{:?},{:?},{:?}\n", r[0], r[1], r[2]));
    }
    std::fs::write(path, text).unwrap();
}

fn config() -> VectorFlowConfig {
    let mut cfg = VectorFlowConfig::new(ModelKind::Glow);
    cfg.flow_steps = 3;
    cfg.net_width = 16;
    cfg
}

fn options() -> FitOptions {
    FitOptions {
        steps: 40,
        batch_size: 64,
        lr: 1e-3,
        seed: 3,
        threads: 2,
        context_columns: vec!["c".into()],
        ..FitOptions::vectors()
    }
}

#[test]
fn fit_in_memory_equals_train2d_on_the_same_rows() {
    let (train, test) = (rows(400, 1), rows(100, 2));
    let dir = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = (dir.path().join("train.csv"), dir.path().join("test.csv"));
    write_csv(&train_csv, &train);
    write_csv(&test_csv, &test);
    let out = dir.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_glowflow"))
        .args(["train2d", "--data"])
        .arg(&train_csv)
        .arg("--test-data")
        .arg(&test_csv)
        .args(["--context-columns", "c", "--layers", "3", "--hidden", "16"])
        .args([
            "--steps", "40", "--batch", "64", "--lr", "1e-3", "--seed", "3",
        ])
        .args(["--threads", "2", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();

    let opts = FitOptions {
        validation: Some(Table::from_rows("validation", names(), test.clone()).unwrap()),
        ..options()
    };
    let table = Table::from_rows("X", names(), train).unwrap();
    let fitted = VectorFlow::fit(&config(), &table, &opts).unwrap();
    assert_eq!(fitted.steps, 40);
    assert!(!fitted.interrupted);
    assert_eq!(Some(summary["test_nll"].as_f64().unwrap()), fitted.test_nll);
    assert_eq!(summary["train_nll"].as_f64().unwrap(), fitted.train_nll);
    assert_eq!(
        summary["gaussian_test_nll"].as_f64(),
        fitted.gaussian_test_nll
    );
    // The returned model scores rows in the data's units: its mean is the test NLL.
    let device = glowflow::default_device();
    let lp = fitted.log_prob(&test, &device);
    let nll = -lp.iter().sum::<f64>() / lp.len() as f64;
    assert_eq!(Some(nll), fitted.test_nll);
}

#[test]
fn cancel_stops_at_a_step_boundary_with_the_model_intact() {
    let cancel = Cancel::new();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, s) = (cancel.clone(), Arc::clone(&seen));
    let hooks = Hooks {
        on_progress: Some(Arc::new(move |p: &glowflow::train::Progress| {
            s.lock().unwrap().push((p.step, p.loss));
            if p.step >= 20 {
                c.cancel();
            }
        })),
        cancel,
    };
    let opts = FitOptions {
        steps: 100_000,
        hooks,
        ..options()
    };
    let table = Table::from_rows("X", names(), rows(400, 1)).unwrap();
    let fitted = VectorFlow::fit(&config(), &table, &opts).unwrap();
    assert!(fitted.interrupted);
    assert_eq!(fitted.steps, 20);
    assert_eq!(fitted.state.step, 20);
    assert!(fitted.train_nll.is_finite());
    assert_eq!(fitted.test_nll, None);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [10, 20]);
    assert!(seen.iter().all(|s| s.1.is_finite()));
}

#[test]
fn a_fit_resumed_from_its_run_directory_equals_one_straight_fit() {
    let table = Table::from_rows("X", names(), rows(400, 1)).unwrap();
    let straight = VectorFlow::fit(&config(), &table, &options()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let first = FitOptions {
        steps: 25,
        run_dir: Some(run.clone()),
        ..options()
    };
    VectorFlow::fit(&config(), &table, &first).unwrap();
    assert!(run.join("checkpoint").join("state.json").exists());
    // A second fresh fit into the same directory is refused without `force`.
    let again = VectorFlow::fit(&config(), &table, &first).unwrap_err();
    assert!(format!("{again:#}").contains("holds"), "{again:#}");
    let resumed = FitOptions {
        resume: true,
        run_dir: Some(run.clone()),
        ..options()
    };
    let fitted = VectorFlow::fit(&config(), &table, &resumed).unwrap();
    assert_eq!(fitted.steps, 40);
    assert_eq!(fitted.train_nll, straight.train_nll);
    // Other rows are not the run's table.
    let other = Table::from_rows("X", names(), rows(400, 9)).unwrap();
    let err = VectorFlow::fit(&config(), &other, &resumed).unwrap_err();
    assert!(format!("{err:#}").contains("not the table"), "{err:#}");
}

#[test]
fn bad_rows_are_refused_by_row_and_column() {
    let mut values = rows(10, 1);
    values[3 * 4 + 1] = f64::NAN;
    let err = Table::from_rows("X", names(), values)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("X") && err.contains("row 4") && err.contains("'y'"),
        "{err}"
    );
    let err = Table::from_rows("X", names(), vec![1.0; 7])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a whole number of rows"), "{err}");
    // A validation table without the modelled columns.
    let table = Table::from_rows("X", names(), rows(100, 1)).unwrap();
    let validation = Table::from_rows("validation", vec!["a".into(), "b".into()], vec![0.5; 20]);
    let opts = FitOptions {
        validation: Some(validation.unwrap()),
        ..options()
    };
    let err = VectorFlow::fit(&config(), &table, &opts).unwrap_err();
    assert!(format!("{err:#}").contains("validation"), "{err:#}");
}

/// Raw IDX images `[n, side, side]` with a bright square at a spot that moves with `n`.
fn idx_images(n: usize, side: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for v in [n, side, side] {
        b.extend_from_slice(&(v as u32).to_be_bytes());
    }
    b.extend((0..n * side * side).map(|i| {
        let (k, p) = (i / (side * side), i % (side * side));
        let (y, x, c) = (p / side, p % side, (k * 7) % (side - 3));
        if (c..c + 3).contains(&y) && (c..c + 3).contains(&x) {
            230
        } else {
            (20 + (i * 31) % 17) as u8
        }
    }));
    b
}

#[test]
fn image_fit_in_memory_equals_train_on_the_same_images() {
    use glowflow::models::{GlowImage, GlowImageConfig};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("idx");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("train-images-idx3-ubyte"), idx_images(96, 8)).unwrap();
    std::fs::write(data.join("t10k-images-idx3-ubyte"), idx_images(24, 8)).unwrap();
    let spec = format!("idx:{}", data.display());
    let out = dir.path().join("run");
    let run = Command::new(env!("CARGO_BIN_EXE_glowflow"))
        .args([
            "train", "--data", &spec, "--levels", "2", "--depth", "2", "--width", "8",
        ])
        .args([
            "--batch",
            "16",
            "--steps",
            "12",
            "--warmup",
            "4",
            "--init-batch",
            "32",
        ])
        .args([
            "--seed",
            "5",
            "--threads",
            "1",
            "--sample-every",
            "0",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();

    let images = glowflow::data::images::load_spec(&spec, &Default::default()).unwrap();
    let cfg = GlowImageConfig {
        levels: 2,
        steps_per_level: 2,
        net_width: 8,
        ..GlowImageConfig::new(1, 1, 1)
    };
    let opts = FitOptions {
        steps: 12,
        batch_size: 16,
        warmup: 4,
        init_batch: 32,
        seed: 5,
        threads: 1,
        ..FitOptions::images()
    };
    let fitted = GlowImage::fit(&cfg, &images, &opts).unwrap();
    let s = fitted.summary.expect("a finished fit has its figures");
    assert_eq!(s.test_bpd, summary["test_bpd"].as_f64().unwrap());
    assert_eq!(s.test_images, 24);
    assert_eq!(fitted.steps, 12);
    // Options of the other workload are refused by name.
    let bad = FitOptions {
        context_columns: vec!["c".into()],
        ..opts
    };
    let err = GlowImage::fit(&cfg, &images, &bad).unwrap_err();
    assert!(format!("{err:#}").contains("context_columns"), "{err:#}");
}
