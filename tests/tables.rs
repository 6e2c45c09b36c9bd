//! Flows on a user's table through the command line: training on CSV and .npy, the Gaussian
//! baseline beaten, per-row scores, conditioning on context columns, and bad tables refused
//! with the file, row and column named.

use std::path::Path;
use std::process::Command;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn glowflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_glowflow"))
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = glowflow().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "glowflow {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// A curved 3-D distribution no Gaussian fits: a banana in (a, b) and a sine in (a, c), in
/// units far from the unit scale (the model standardises inside).
fn write_banana(path: &Path, n: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut s = String::from("a,b,c\n");
    for _ in 0..n {
        let a = normal(&mut rng);
        let b = a * a + 0.25 * normal(&mut rng);
        let c = (2.0 * a).sin() + 0.2 * normal(&mut rng);
        s.push_str(&format!("{},{},{}\n", 100.0 + 30.0 * a, 0.01 * b, 5.0 * c));
    }
    std::fs::write(path, s).unwrap();
}

fn number(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn table_flow_beats_the_gaussian_and_scores_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("banana.csv");
    write_banana(&data, 2000, 1);
    let out = dir.path().join("run");
    let s = run_json(&[
        "train2d",
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "400",
        "--batch",
        "128",
        "--lr",
        "2e-3",
        "--layers",
        "6",
        "--hidden",
        "32",
        "--threads",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (test, gauss) = (number(&s, "test_nll"), number(&s, "gaussian_test_nll"));
    // The Gaussian cannot bend; the flow must be clearly better on held-out rows.
    assert!(
        test < gauss - 0.5,
        "flow test NLL {test} vs Gaussian {gauss}"
    );
    assert_eq!(s["rows"], serde_json::json!([1600, 400]));
    assert_eq!(s["config"]["features"], 3);
    for f in [
        "corner.png",
        "loss.png",
        "split.csv",
        "metrics.csv",
        "checkpoint/state.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // The split file marks exactly the 400 held-out rows, indexed from 0 as numpy does.
    let split = std::fs::read_to_string(out.join("split.csv")).unwrap();
    assert_eq!(split.lines().next(), Some("index,test"));
    assert!(split.lines().nth(1).unwrap().starts_with("0,"), "{split}");
    assert!(split.lines().last().unwrap().starts_with("1999,"));
    assert_eq!(
        split.lines().skip(1).filter(|l| l.ends_with(",1")).count(),
        400
    );

    // score: the test rows' mean log-density is minus the run's test NLL.
    let scores = dir.path().join("scores.csv");
    let r = run_json(&[
        "score",
        "--checkpoint",
        out.to_str().unwrap(),
        "--out",
        scores.to_str().unwrap(),
    ]);
    assert_eq!(r["rows"], 400);
    assert!((number(&r, "mean_log_prob") + test).abs() < 1e-9 * test.abs().max(1.0));
    // Any table with the same columns: one score per row, in order.
    let other = dir.path().join("new.csv");
    write_banana(&other, 50, 9);
    let r = run_json(&[
        "score",
        "--checkpoint",
        out.to_str().unwrap(),
        "--data",
        other.to_str().unwrap(),
        "--out",
        scores.to_str().unwrap(),
    ]);
    assert_eq!(r["rows"], 50);
    let text = std::fs::read_to_string(&scores).unwrap();
    assert_eq!(text.lines().next(), Some("index,log_prob"));
    assert_eq!(text.lines().count(), 51);
    // Indexed from 0, as eval --per-image and numpy index rows.
    assert!(text.lines().nth(1).unwrap().starts_with("0,"), "{text}");
    assert!(text.lines().last().unwrap().starts_with("49,"), "{text}");
    // An outlier far from the data scores far lower than the typical row.
    std::fs::write(&other, "a,b,c\n100,0.01,0\n400,-5,40\n").unwrap();
    run_json(&[
        "score",
        "--checkpoint",
        out.to_str().unwrap(),
        "--data",
        other.to_str().unwrap(),
        "--out",
        scores.to_str().unwrap(),
    ]);
    let lp: Vec<f64> = std::fs::read_to_string(&scores)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(
        lp[1] < lp[0] - 20.0,
        "outlier {} vs typical {}",
        lp[1],
        lp[0]
    );
}

/// A minimal `.npy` writer (little-endian float64, C order) for the test.
fn write_npy(path: &Path, rows: usize, cols: usize, values: &[f64]) {
    let header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let mut h = header.into_bytes();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(&h);
    for v in values {
        b.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn context_columns_condition_the_flow() {
    // x0 is centred on the context's value (-3 or +3), x1 is noise: given the context, the
    // density is narrow; the flow sees the context in every coupling network.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let n = 1500;
    let mut v = Vec::new();
    for i in 0..n {
        let ctx = if i % 2 == 0 { -3.0 } else { 3.0 };
        v.extend([ctx + 0.3 * normal(&mut rng), normal(&mut rng), ctx]);
    }
    let data = dir.path().join("ctx.npy");
    write_npy(&data, n, 3, &v);
    let out = dir.path().join("run");
    let s = run_json(&[
        "train2d",
        "--data",
        data.to_str().unwrap(),
        "--context-columns",
        "2",
        "--steps",
        "300",
        "--batch",
        "128",
        "--lr",
        "2e-3",
        "--layers",
        "4",
        "--hidden",
        "32",
        "--threads",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(s["config"]["context"], 1);
    assert_eq!(s["config"]["features"], 2);
    // Conditioned on the context, x0 has std 0.3: about 2.3 nats per row below an
    // unconditional model (whose x0 is a two-mode mixture); the conditional Gaussian baseline
    // knows the context too, and the flow must come close to it.
    let (test, gauss) = (number(&s, "test_nll"), number(&s, "gaussian_test_nll"));
    assert!(gauss < 2.0, "conditional Gaussian baseline {gauss}");
    assert!(
        test < gauss + 0.15,
        "flow {test} vs conditional Gaussian {gauss}"
    );

    // Sampled for a given context, the first column sits at that context's value.
    for ctx in ["-3", "3"] {
        let csv = dir.path().join(format!("s{ctx}.csv"));
        run_json(&[
            "sample",
            "--checkpoint",
            out.to_str().unwrap(),
            "--context",
            ctx,
            "--n",
            "500",
            "--out",
            csv.to_str().unwrap(),
        ]);
        let text = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(text.lines().next(), Some("c0,c1,c2,log_prob"));
        let x0: Vec<f64> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(x0.len(), 500);
        let mean = x0.iter().sum::<f64>() / 500.0;
        let want: f64 = ctx.parse().unwrap();
        assert!(
            (mean - want).abs() < 0.3,
            "context {ctx}: samples' mean {mean}"
        );
    }
    let err = refused(&["sample", "--checkpoint", out.to_str().unwrap(), "--n", "5"]);
    assert!(
        err.contains("--context") && err.contains("1 context column"),
        "{err}"
    );
}

fn refused(args: &[&str]) -> String {
    let out = glowflow().args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_tables_are_refused_naming_file_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        ("ragged.csv", "a,b\n1,2\n3\n", &["row 3", "ragged"]),
        (
            "text.csv",
            "a,b\n1,2\n3,abc\n",
            &["row 3, column 2 ('b')", "'abc' is not a number"],
        ),
        (
            "nan.csv",
            "a,b\n1,2\nNaN,4\n",
            &["row 3, column 1 ('a')", "not finite"],
        ),
        (
            "missing.csv",
            "a,b\n1,2\n3,\n",
            &["row 3, column 2", "missing value"],
        ),
        (
            "one.csv",
            "a\n1\n2\n3\n",
            &["one modelled column", "needs --coupling spline"],
        ),
        ("empty.csv", "", &["no rows"]),
        ("header.csv", "a,b,c\n", &["header row but no data rows"]),
        (
            "const.csv",
            "a,b\n1,5\n2,5\n3,5\n4,5\n5,5\n",
            &["column 'b' is constant"],
        ),
        (
            "pandas.csv",
            ",a,b\n0,1,2\n1,3,4\n2,5,1\n",
            &["row 1, column 1", "index=False"],
        ),
        (
            "unnamed.csv",
            "a,,b\n0,1,2\n1,3,4\n2,5,1\n",
            &["row 1, column 2", "needs a name"],
        ),
        (
            "huge.csv",
            "a,b\n1,2\n1e39,3\n2,1\n3,3\n",
            &["row 3, column 'a'", "float32's range"],
        ),
        (
            "dup.csv",
            "a,b,c\n1,2,1\n2,3,2\n3,1,3\n4,5,4\n5,4,5\n",
            &["'a' and 'c'", "exact copies"],
        ),
        (
            "tiny.csv",
            "a,b\n1,1e9\n2,1.0000000000000002e9\n3,1e9\n4,1.0000000000000002e9\n",
            &["column 'b' varies by", "float64's rounding"],
        ),
    ];
    for (name, text, want) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let out = dir.path().join(format!("run-{name}"));
        let err = refused(&[
            "train2d",
            "--data",
            p.to_str().unwrap(),
            "--steps",
            "5",
            "--batch",
            "2",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]);
        for w in *want {
            assert!(err.contains(w), "{name}: '{w}' not in: {err}");
        }
        assert!(err.contains(name), "{name}: the file is not named: {err}");
        assert!(
            !out.exists(),
            "{name}: a refused run left {}",
            out.display()
        );
    }
    let p = dir.path().join("ok.csv");
    std::fs::write(&p, "a,b,c\n1,2,3\n2,1,3\n3,3,1\n4,0,2\n5,2,2\n").unwrap();
    let ok = p.to_str().unwrap();
    let err = refused(&[
        "train2d",
        "--data",
        ok,
        "--context-columns",
        "zz",
        "--quiet",
    ]);
    assert!(
        err.contains("--context-columns") && err.contains("no such column"),
        "{err}"
    );
    let err = refused(&["train2d", "--data", ok, "--test-fraction", "1.5", "--quiet"]);
    assert!(err.contains("--test-fraction"), "{err}");
    let err = refused(&["train2d", "--data", ok, "--test-data", ok, "--quiet"]);
    assert!(
        err.contains("--test-data") && err.contains("is the --data file itself"),
        "{err}"
    );
    let err = refused(&["train2d", "--data", ok, "--batch", "64", "--quiet"]);
    assert!(
        err.contains("--batch") && err.contains("training rows"),
        "{err}"
    );
}

#[test]
fn checkpoints_of_the_previous_format_load_and_newer_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    run_json(&[
        "train2d",
        "--steps",
        "6",
        "--batch",
        "64",
        "--layers",
        "2",
        "--test-samples",
        "256",
        "--frames",
        "0",
        "--threads",
        "1",
        "--quiet",
        "--out",
        o,
    ]);
    let state = out.join("checkpoint/state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(v["format"], 4);
    // Format 1 (the previous release): no version key, no vector dimension / context /
    // standardisation fields, no table.
    let obj = v.as_object_mut().unwrap();
    obj.remove("format");
    for k in ["features", "context", "standardize"] {
        obj["model"].as_object_mut().unwrap().remove(k);
    }
    obj["options"].as_object_mut().unwrap().remove("table");
    std::fs::write(&state, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let s = run_json(&["train2d", "--resume", o, "--steps", "8", "--quiet"]);
    assert_eq!(s["steps"], 8);
    assert_eq!(s["config"]["features"], 2);
    // A newer format is refused with its number, not misread.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    v["format"] = 99.into();
    std::fs::write(&state, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let err = refused(&["train2d", "--resume", o, "--steps", "9", "--quiet"]);
    assert!(
        err.contains("checkpoint format 99") && err.contains("state.json"),
        "{err}"
    );
}

#[test]
fn table_runs_resume_exactly_and_refusals_leave_the_old_run_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("banana.csv");
    write_banana(&data, 600, 3);
    let d = data.to_str().unwrap();
    let common = [
        "--batch",
        "64",
        "--lr",
        "2e-3",
        "--layers",
        "3",
        "--hidden",
        "16",
        "--threads",
        "1",
        "--quiet",
    ];
    let straight = dir.path().join("straight");
    let mut args = vec!["train2d", "--data", d, "--steps", "40", "--out"];
    args.push(straight.to_str().unwrap());
    args.extend(common);
    let a = run_json(&args);
    let split = dir.path().join("split");
    let mut args = vec!["train2d", "--data", d, "--steps", "20", "--out"];
    args.push(split.to_str().unwrap());
    args.extend(common);
    run_json(&args);
    let b = run_json(&[
        "train2d",
        "--resume",
        split.to_str().unwrap(),
        "--steps",
        "40",
        "--quiet",
    ]);
    // The standardisation is fixed (not trained), so a resumed run is the straight run.
    assert_eq!(a["test_nll"], b["test_nll"]);
    assert_eq!(a["train_nll"], b["train_nll"]);

    // score indexes each held-out row as split.csv does (0-based data rows of the file).
    let scores = dir.path().join("scores.csv");
    run_json(&[
        "score",
        "--checkpoint",
        straight.to_str().unwrap(),
        "--out",
        scores.to_str().unwrap(),
    ]);
    let marked: Vec<String> = std::fs::read_to_string(straight.join("split.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| l.ends_with(",1"))
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let numbered: Vec<String> = std::fs::read_to_string(&scores)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(marked, numbered);

    // --force with a bad table is refused before the old run is touched.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "a,b,c\n1,2,3\n4,nan,6\n").unwrap();
    let before = std::fs::read(straight.join("checkpoint/state.json")).unwrap();
    let err = refused(&[
        "train2d",
        "--data",
        bad.to_str().unwrap(),
        "--force",
        "--quiet",
        "--out",
        straight.to_str().unwrap(),
    ]);
    assert!(err.contains("row 3, column 2"), "{err}");
    assert_eq!(
        std::fs::read(straight.join("checkpoint/state.json")).unwrap(),
        before
    );
    assert!(straight.join("summary.json").exists() && straight.join("metrics.csv").exists());

    // A changed training table: resume and the default score are refused.
    std::fs::write(
        &data,
        std::fs::read_to_string(&data).unwrap() + "100,0.01,0\n",
    )
    .unwrap();
    let err = refused(&[
        "score",
        "--checkpoint",
        straight.to_str().unwrap(),
        "--out",
        scores.to_str().unwrap(),
    ]);
    assert!(err.contains("changed since the run"), "{err}");
    let err = refused(&[
        "train2d",
        "--resume",
        split.to_str().unwrap(),
        "--steps",
        "60",
        "--quiet",
    ]);
    assert!(
        err.contains("not the table this run was trained on"),
        "{err}"
    );

    // Context values must be finite; table flags need --data.
    let err = refused(&[
        "sample",
        "--checkpoint",
        straight.to_str().unwrap(),
        "--context",
        "nan",
    ]);
    assert!(err.contains("--context"), "{err}");
    let err = refused(&["train2d", "--test-fraction", "0.3", "--quiet"]);
    assert!(
        err.contains("--test-fraction") && err.contains("needs --data"),
        "{err}"
    );
}

#[test]
fn test_tables_match_columns_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.csv");
    write_banana(&train, 400, 4);
    // The same kind of rows with the columns in another order.
    let test = dir.path().join("test.csv");
    write_banana(&test, 100, 5);
    let text = std::fs::read_to_string(&test).unwrap();
    let swapped: String = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            format!("{},{},{}\n", f[2], f[0], f[1])
        })
        .collect();
    let reordered = dir.path().join("reordered.csv");
    std::fs::write(&reordered, swapped).unwrap();
    let run = |t: &Path, out: &str| {
        small_table_run(
            "train2d",
            &train,
            &dir.path().join(out),
            20,
            &["--test-data", t.to_str().unwrap()],
        )
    };
    let a = run(&test, "a");
    let b = run(&reordered, "b");
    assert_eq!(a["test_nll"], b["test_nll"]);
    assert_eq!(a["rows"], serde_json::json!([400, 100]));
}

#[test]
fn a_moved_table_is_given_again_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.csv");
    write_banana(&first, 300, 6);
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    small_table_run("train2d", &first, &out, 10, &[]);
    let moved = dir.path().join("moved.csv");
    std::fs::rename(&first, &moved).unwrap();
    let err = refused(&["train2d", "--resume", o, "--steps", "20", "--quiet"]);
    assert!(err.contains("give its new place with --data"), "{err}");
    let s = run_json(&[
        "train2d",
        "--resume",
        o,
        "--steps",
        "20",
        "--data",
        moved.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(s["steps"], 20);
    let state = std::fs::read_to_string(out.join("checkpoint/state.json")).unwrap();
    assert!(
        state.contains("moved.csv") && state.contains("data "),
        "{state}"
    );
}

/// `command` (`train2d` or `compare`) on the table `data` into `out` for `steps` steps with a
/// tiny model (2 steps of width 8, batch 32, one thread), plus `extra` flags; the summary.
fn small_table_run(
    command: &str,
    data: &Path,
    out: &Path,
    steps: usize,
    extra: &[&str],
) -> serde_json::Value {
    let steps = steps.to_string();
    let mut args = vec![command, "--data", data.to_str().unwrap(), "--steps", &steps];
    args.extend([
        "--batch",
        "32",
        "--layers",
        "2",
        "--hidden",
        "8",
        "--threads",
        "1",
    ]);
    args.extend(["--quiet", "--out", out.to_str().unwrap()]);
    args.extend(extra);
    run_json(&args)
}

#[test]
fn compare_on_a_table_and_a_refused_force_keeps_the_old_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("banana.csv");
    write_banana(&data, 300, 7);
    let out = dir.path().join("cmp");
    let o = out.to_str().unwrap();
    let r = small_table_run("compare", &data, &out, 10, &[]);
    for model in ["glow", "realnvp"] {
        let m = &r["models"][model];
        assert!(m["test_nll"].as_f64().unwrap().is_finite(), "{r}");
        assert!(m["gaussian_test_nll"].as_f64().is_some(), "{r}");
    }
    let before = std::fs::read(out.join("compare.json")).unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "a,b\n1,2\n3,x\n").unwrap();
    let err = refused(&[
        "compare",
        "--data",
        bad.to_str().unwrap(),
        "--force",
        "--quiet",
        "--out",
        o,
    ]);
    assert!(err.contains("row 3, column 2"), "{err}");
    assert_eq!(std::fs::read(out.join("compare.json")).unwrap(), before);
    assert!(out.join("glow/checkpoint/state.json").exists());
}

/// Rows `a, b, extra` with `a`, `b` correlated normals and `extra` built from row `i`.
fn write_columns(
    path: &Path,
    n: usize,
    seed: u64,
    header: &str,
    extra: impl Fn(usize, f64) -> String,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut s = format!("{header}\n");
    for i in 0..n {
        let a = normal(&mut rng);
        let b = 0.6 * a + 0.8 * normal(&mut rng);
        let e = normal(&mut rng);
        s.push_str(&format!("{a},{b},{}\n", extra(i, e)));
    }
    std::fs::write(path, s).unwrap();
}

/// The table path's silent failures, each with its right value: a rare 0/1 column no longer
/// blows up ActNorm's initialisation; a column `1e9 + N(0, 1)` keeps its spread through float64
/// standardisation (its samples vary, its NLL matches the Gaussian's); samples at a high
/// temperature and scores of extreme rows are never NaN; a run keeps its column names when its
/// table moves.
#[test]
fn tables_keep_every_digit_and_every_row() {
    let dir = tempfile::tempdir().unwrap();
    // 20 ones in 4,000 rows: most batches hold none.
    let rare = dir.path().join("rare.csv");
    write_columns(&rare, 4000, 5, "a,b,rare", |i, _| {
        if i % 200 == 7 {
            "1".into()
        } else {
            "0".into()
        }
    });
    let s = small_table_run("train2d", &rare, &dir.path().join("rare"), 100, &[]);
    let (test, gauss) = (number(&s, "test_nll"), number(&s, "gaussian_test_nll"));
    assert!(
        test.is_finite() && test < gauss + 1.0,
        "rare column: test NLL {test} vs Gaussian {gauss}"
    );
    // The integer column is named in a warning (a continuous density of 0/1 data is unbounded).
    let warnings = s["warnings"].to_string();
    assert!(
        warnings.contains("'rare'") && warnings.contains("only integers"),
        "{warnings}"
    );

    // 1e9 + N(0, 1): float32 holds 1e9 only to ±32.
    let big = dir.path().join("big.csv");
    write_columns(&big, 3000, 6, "a,b,big", |_, e| format!("{:.9}", 1e9 + e));
    let run = dir.path().join("big");
    let s = small_table_run("train2d", &big, &run, 150, &[]);
    let (test, gauss) = (number(&s, "test_nll"), number(&s, "gaussian_test_nll"));
    // The truth (independent normal, correlated pair) is Gaussian: the flow must be close to
    // the Gaussian baseline, not far below it (the collapse gave -13).
    assert!(
        test > gauss - 0.3 && test < gauss + 0.6,
        "1e9 column: test NLL {test} vs Gaussian {gauss}"
    );
    // Move the table: the samples keep the run's own column names.
    std::fs::rename(&big, dir.path().join("moved.csv")).unwrap();
    let csv = dir.path().join("samples.csv");
    let r = run_json(&[
        "sample",
        "--checkpoint",
        run.to_str().unwrap(),
        "--n",
        "500",
        "--temperature",
        "3",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(r["left_out_nonfinite"], 0);
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), "a,b,big,log_prob");
    let col: Vec<f64> = lines
        .map(|l| {
            let v: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
            assert!(v.iter().all(|x| x.is_finite()), "non-finite sample row {l}");
            v[2]
        })
        .collect();
    assert_eq!(col.len(), 500);
    let mean = col.iter().sum::<f64>() / col.len() as f64;
    let sd = (col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / col.len() as f64).sqrt();
    assert!(
        (mean - 1e9).abs() < 2.0 && sd > 1.0 && sd < 10.0,
        "big column mean {mean}, sd {sd} at T = 3"
    );

    // Extreme rows score finite in float64, or -inf (ranked lowest) beyond even that; never NaN.
    let ext = dir.path().join("extreme.csv");
    std::fs::write(
        &ext,
        "a,b,big\n3e38,0,1000000000\n0,1e30,1000000000\n1e300,0,1000000000\n0.1,0.2,1000000000.5\n",
    )
    .unwrap();
    let scores = dir.path().join("scores.csv");
    let r = run_json(&[
        "score",
        "--checkpoint",
        run.to_str().unwrap(),
        "--data",
        ext.to_str().unwrap(),
        "--out",
        scores.to_str().unwrap(),
    ]);
    assert_eq!(r["beyond_range"], 1);
    let lp: Vec<f64> = std::fs::read_to_string(&scores)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(lp[0].is_finite() && lp[0] < -1e6, "3e38 scored {}", lp[0]);
    assert!(lp[1].is_finite() && lp[1] < lp[3], "1e30 scored {}", lp[1]);
    assert_eq!(lp[2], f64::NEG_INFINITY);
    assert!(
        lp[3].is_finite() && lp[3] > -10.0,
        "an ordinary row scored {}",
        lp[3]
    );
}

/// Each degenerate table or destructive output is refused naming the file, column or flag, and
/// leaves what it would have replaced untouched.
#[test]
fn degenerate_tables_and_destructive_outputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let s = |path: &Path| path.to_str().unwrap().to_string();
    // A short train2d on `data` that must be refused; returns its error.
    let refused_train = |data: &Path, extra: &[&str]| {
        let (data, out) = (s(data), s(&p("r")));
        let mut args = vec!["train2d", "--data", &data, "--steps", "5", "--batch", "32"];
        args.extend(extra);
        args.extend(["--quiet", "--out", &out]);
        refused(&args)
    };
    // An exact duplicate column.
    let mut dup = String::from("a,b,a2\n");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..300 {
        let (a, b) = (normal(&mut rng), normal(&mut rng));
        dup.push_str(&format!("{a},{b},{a}\n"));
    }
    std::fs::write(p("dup.csv"), dup).unwrap();
    let err = refused_train(&p("dup.csv"), &[]);
    assert!(
        err.contains("'a'") && err.contains("'a2'") && err.contains("exact copies"),
        "{err}"
    );
    // A value beyond float32's range, finite in the file: row and column named.
    write_columns(&p("huge.csv"), 300, 2, "a,b,c", |i, e| {
        if i == 4 {
            "1e39".into()
        } else {
            e.to_string()
        }
    });
    let err = refused_train(&p("huge.csv"), &[]);
    assert!(
        err.contains("row 6, column 'c'") && err.contains("float32"),
        "{err}"
    );
    // A constant context column: named as a context column, not as a density.
    write_columns(&p("ctx.csv"), 300, 3, "a,b,k", |_, _| "4".into());
    let err = refused_train(&p("ctx.csv"), &["--context-columns", "k"]);
    assert!(
        err.contains("context column 'k'") && err.contains("--context-columns"),
        "{err}"
    );
    // A tiny but resolvable spread is modelled, not called constant.
    write_columns(&p("tiny.csv"), 400, 4, "a,b,t", |_, e| {
        format!("{:e}", 1e-15 * e)
    });
    let r = small_table_run("train2d", &p("tiny.csv"), &p("tiny"), 20, &[]);
    assert!(number(&r, "test_nll").is_finite());
    assert!(!p("r").exists());

    // Outputs: a score may not replace its input, a sample may not replace a run's files, two
    // outputs may not be one file, and a directory is not a file.
    let run = p("tiny");
    let data = s(&p("tiny.csv"));
    let before = std::fs::read(p("tiny.csv")).unwrap();
    let err = refused(&[
        "score",
        "--checkpoint",
        &s(&run),
        "--data",
        &data,
        "--out",
        &data,
    ]);
    assert!(
        err.contains("--out") && err.contains("same file as --data"),
        "{err}"
    );
    assert_eq!(std::fs::read(p("tiny.csv")).unwrap(), before);
    for f in [
        "checkpoint/state.json",
        "checkpoint/model.safetensors",
        "summary.json",
        "metrics.csv",
    ] {
        let target = run.join(f);
        let before = std::fs::read(&target).unwrap();
        let err = refused(&["sample", "--checkpoint", &s(&run), "--out", &s(&target)]);
        assert!(
            err.contains("--out") && err.contains("file of a training run"),
            "{f}: {err}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), before, "{f} changed");
    }
    let err = refused(&["sample", "--checkpoint", &s(&run), "--out", &s(dir.path())]);
    assert!(err.contains("is a directory"), "{err}");
    // A new file in the run folder is fine.
    run_json(&[
        "sample",
        "--checkpoint",
        &s(&run),
        "--n",
        "5",
        "--out",
        &s(&run.join("mine.csv")),
    ]);
    // A run of the other kind is named as such.
    let err = refused(&["eval", "--checkpoint", &s(&run)]);
    assert!(err.contains("is a vector flow run"), "{err}");
    // A headerless table one column wider than the model is not scored by position.
    let wide: String = std::fs::read_to_string(p("tiny.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .enumerate()
        .map(|(i, l)| format!("{i},{l}\n"))
        .collect();
    std::fs::write(p("wide.csv"), wide).unwrap();
    let err = refused(&[
        "score",
        "--checkpoint",
        &s(&run),
        "--data",
        &s(&p("wide.csv")),
        "--out",
        &s(&p("w.csv")),
    ]);
    assert!(
        err.contains("wide.csv") && err.contains("4 columns") && err.contains("3"),
        "{err}"
    );
}

/// `--dequantize`: a column holding only integers gets uniform noise in [0, 1) (so the NLL
/// bounds the discrete NLL instead of being an unbounded continuous density): the warning goes,
/// `score` of the test rows is the run's test NLL, samples of that column are integers again,
/// and a non-integer value where the run modelled integers is refused naming its row.
#[test]
fn integer_columns_are_dequantized_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let s = |path: &Path| path.to_str().unwrap().to_string();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut text = String::from("k,y\n");
    for _ in 0..600 {
        let k = (3.0 + 1.5 * normal(&mut rng)).round().max(0.0);
        text.push_str(&format!("{k},{}\n", k + normal(&mut rng)));
    }
    std::fs::write(p("counts.csv"), text).unwrap();
    let plain = small_table_run("train2d", &p("counts.csv"), &p("plain"), 20, &[]);
    let warned = plain["warnings"].to_string();
    assert!(
        warned.contains("'k' holds only integers") && warned.contains("--dequantize"),
        "{warned}"
    );
    let run = p("deq");
    let r = small_table_run("train2d", &p("counts.csv"), &run, 20, &["--dequantize"]);
    // The noise is a function of seed and step: a resumed run ends where a straight one does.
    small_table_run(
        "train2d",
        &p("counts.csv"),
        &p("deq10"),
        10,
        &["--dequantize"],
    );
    let resumed = run_json(&[
        "train2d",
        "--resume",
        &s(&p("deq10")),
        "--steps",
        "20",
        "--quiet",
    ]);
    assert_eq!(resumed["test_nll"], r["test_nll"]);
    assert_eq!(resumed["train_nll"], r["train_nll"]);
    assert!(
        !r["warnings"].to_string().contains("holds only integers"),
        "{r}"
    );
    let test = number(&r, "test_nll");
    assert!(test.is_finite());
    // The test rows carry their one seeded draw: score reproduces the run's figure.
    let scored = run_json(&[
        "score",
        "--checkpoint",
        &s(&run),
        "--out",
        &s(&p("scores.csv")),
    ]);
    assert!(
        (number(&scored, "mean_log_prob") + test).abs() < 1e-9,
        "{scored} vs {test}"
    );
    // Samples: k floored back to integers, y continuous.
    run_json(&[
        "sample",
        "--checkpoint",
        &s(&run),
        "--n",
        "50",
        "--out",
        &s(&p("rows.csv")),
    ]);
    let rows = std::fs::read_to_string(p("rows.csv")).unwrap();
    let values: Vec<(f64, f64)> = rows
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
            (v[0], v[1])
        })
        .collect();
    assert_eq!(values.len(), 50);
    assert!(values.iter().all(|(k, _)| k.fract() == 0.0), "{rows}");
    assert!(values.iter().any(|(_, y)| y.fract() != 0.0), "{rows}");
    // A non-integer where the run modelled integers: refused, naming the line and column.
    std::fs::write(p("half.csv"), "k,y\n2,1.5\n2.5,3\n").unwrap();
    let err = refused(&[
        "score",
        "--checkpoint",
        &s(&run),
        "--data",
        &s(&p("half.csv")),
        "--out",
        &s(&p("s2.csv")),
    ]);
    assert!(
        err.contains("row 3, column 'k'") && err.contains("not an integer"),
        "{err}"
    );
    // Nothing to dequantise, and a change of the recipe on resume: refused by name.
    write_banana(&p("banana.csv"), 300, 3);
    let err = refused(&[
        "train2d",
        "--data",
        &s(&p("banana.csv")),
        "--dequantize",
        "--steps",
        "5",
        "--batch",
        "32",
        "--quiet",
        "--out",
        &s(&p("b")),
    ]);
    assert!(
        err.contains("--dequantize") && err.contains("no modelled column holds only integers"),
        "{err}"
    );
    let err = refused(&[
        "train2d",
        "--resume",
        &s(&p("plain")),
        "--steps",
        "30",
        "--dequantize",
        "--quiet",
    ]);
    assert!(err.contains("--dequantize"), "{err}");
}

#[test]
fn one_column_densities_and_conditionals() {
    // y = ±c + 0.1 noise with c ~ U(-2, 2) and a fair sign: given c, y has two narrow modes
    // (about -0.2 nats at |c| = 2) where the conditional Gaussian (a linear regression on c)
    // sees mean 0 and variance 1.34 (1.57 nats). Alone, y's marginal is a flat-topped
    // mixture no Gaussian fits either.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(24);
    let n = 3000;
    let mut v = Vec::new();
    for _ in 0..n {
        let c: f64 = rng.gen_range(-2.0..2.0);
        let sign = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
        v.extend([sign * c + 0.1 * normal(&mut rng), c]);
    }
    let data = dir.path().join("pm.npy");
    write_npy(&data, n, 2, &v);
    let spline = [
        "--coupling",
        "spline",
        "--steps",
        "400",
        "--batch",
        "128",
        "--lr",
        "3e-3",
        "--layers",
        "3",
        "--hidden",
        "32",
        "--threads",
        "1",
        "--quiet",
    ];
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train2d",
            "--data",
            data.to_str().unwrap(),
            "--columns",
            "0",
        ];
        args.extend(extra);
        args.extend(spline);
        args.extend(["--out", out.to_str().unwrap()]);
        run_json(&args)
    };
    let cond = dir.path().join("cond");
    let s = run(&cond, &["--context-columns", "1"]);
    assert_eq!(
        (
            s["config"]["features"].as_u64(),
            s["config"]["context"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (test, gauss) = (number(&s, "test_nll"), number(&s, "gaussian_test_nll"));
    assert!(
        (gauss - 1.57).abs() < 0.1,
        "linear-Gaussian baseline {gauss}"
    );
    assert!(
        test < 0.3,
        "one-column conditional {test} vs linear Gaussian {gauss}"
    );

    // Sampled at c = 1.5: both modes, each about ±1.5.
    let csv = dir.path().join("s.csv");
    let args = [
        "sample",
        "--checkpoint",
        cond.to_str().unwrap(),
        "--context",
        "1.5",
    ];
    run_json(&[&args[..], &["--n", "1000", "--out", csv.to_str().unwrap()]].concat());
    let y: Vec<f64> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    let up = y.iter().filter(|&&y| y > 0.0).count() as f64 / y.len() as f64;
    let near = y.iter().filter(|&&y| (y.abs() - 1.5).abs() < 0.4).count() as f64 / y.len() as f64;
    assert!((0.35..0.65).contains(&up), "share of the upper mode {up}");
    assert!(near > 0.9, "share within 0.4 of a mode {near}");

    // With a learned context embedding (every coupling reads its 16 outputs): as good, and
    // the run's checkpoint holds it (scoring the test rows again gives the same mean).
    let emb = dir.path().join("emb");
    let s = run(
        &emb,
        &["--context-columns", "1", "--context-embedding", "16"],
    );
    let test = number(&s, "test_nll");
    assert!(test < 0.3, "with a context embedding {test}");
    let scores = dir.path().join("scores.csv");
    let args = ["score", "--checkpoint", emb.to_str().unwrap(), "--out"];
    let r = run_json(&[&args[..], &[scores.to_str().unwrap()]].concat());
    assert!((number(&r, "mean_log_prob") + test).abs() < 1e-9 * test.abs().max(1.0));

    // Without context: a one-dimensional density, below the Gaussian's.
    let s = run(&dir.path().join("alone"), &[]);
    let (test, gauss) = (number(&s, "test_nll"), number(&s, "gaussian_test_nll"));
    assert!(
        test < gauss - 0.1,
        "one-column density {test} vs Gaussian {gauss}"
    );

    // An affine coupling cannot split one column: refused, naming the flag.
    let err = refused(&[
        "train2d",
        "--data",
        data.to_str().unwrap(),
        "--columns",
        "0",
        "--steps",
        "5",
    ]);
    assert!(
        err.contains("one modelled column") && err.contains("--coupling spline"),
        "{err}"
    );
}

#[test]
fn spline_couplings_have_an_affine_stage_and_plain_spline_models_still_load() {
    // A spline model saved before the affine stage existed has no `spline_affine` in its
    // config: it must load as the plain spline it was trained as (same scores), and the
    // default model carries the stage (2 more outputs per transformed column, alpha and beta).
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("banana.csv");
    write_banana(&data, 600, 5);
    let train = |out: &Path, affine: &str| {
        let args = [
            "train2d",
            "--data",
            data.to_str().unwrap(),
            "--coupling",
            "spline",
            "--spline-bins",
            "4",
            "--spline-affine",
            affine,
            "--layers",
            "2",
            "--hidden",
            "8",
            "--steps",
            "30",
            "--batch-size",
            "128",
            "--threads",
            "1",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ];
        run_json(&args)
    };
    let (plain, staged) = (dir.path().join("plain"), dir.path().join("staged"));
    let p = train(&plain, "false");
    let s = train(&staged, "true");
    assert_eq!(s["config"]["spline_affine"], serde_json::json!(true));
    // 3 columns: the couplings transform 1 and 2 columns in turn; each stage adds 2 outputs
    // per transformed column (8 hidden units + bias each) and two scalars.
    let extra = [1usize, 2].iter().map(|c| 2 * c * 9 + 2).sum::<usize>() as f64;
    assert_eq!(number(&s, "parameters") - number(&p, "parameters"), extra);

    let score = |run: &Path, name: &str| {
        let out = dir.path().join(name);
        let args = ["score", "--checkpoint", run.to_str().unwrap(), "--out"];
        number(
            &run_json(&[&args[..], &[out.to_str().unwrap()]].concat()),
            "mean_log_prob",
        )
    };
    let before = score(&plain, "before.csv");
    let state = plain.join("checkpoint").join("state.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    fn drop_key(v: &mut serde_json::Value, key: &str) -> usize {
        match v {
            serde_json::Value::Object(m) => {
                let here = usize::from(m.remove(key).is_some());
                here + m.values_mut().map(|v| drop_key(v, key)).sum::<usize>()
            }
            serde_json::Value::Array(a) => a.iter_mut().map(|v| drop_key(v, key)).sum(),
            _ => 0,
        }
    }
    assert!(
        drop_key(&mut json, "spline_affine") > 0,
        "no spline_affine in {state:?}"
    );
    std::fs::write(&state, serde_json::to_string(&json).unwrap()).unwrap();
    let after = score(&plain, "after.csv");
    assert!(before.is_finite());
    assert_eq!(
        before, after,
        "an old plain-spline checkpoint scores differently"
    );
}
