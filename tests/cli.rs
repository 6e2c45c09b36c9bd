//! The command-line tool: outputs of `train2d` and `compare`, and clear errors for bad input.

use std::process::Command;

fn glowflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_glowflow"))
}

const QUICK: [&str; 14] = [
    "--steps",
    "6",
    "--batch",
    "64",
    "--layers",
    "2",
    "--hidden",
    "8",
    "--test-samples",
    "500",
    "--frames",
    "3",
    "--quiet",
    "--threads",
];

#[test]
fn train2d_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let status = glowflow()
        .args(["train2d", "--model", "glow", "--target", "normals", "--out"])
        .arg(&out)
        .args(QUICK)
        .arg("1")
        .status()
        .unwrap();
    assert!(status.success());
    for f in [
        "metrics.csv",
        "summary.json",
        "target.png",
        "samples.png",
        "density.png",
        "training.gif",
        "checkpoint/model.safetensors",
        "checkpoint/optimizer.bpk",
        "checkpoint/state.json",
    ] {
        let p = out.join(f);
        assert!(
            p.metadata().map(|m| m.len() > 0).unwrap_or(false),
            "{f} missing or empty"
        );
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for k in [
        "model",
        "target",
        "steps",
        "test_nll",
        "entropy",
        "train_seconds",
        "parameters",
    ] {
        assert!(s.get(k).is_some(), "summary.json lacks {k}");
    }
    assert_eq!(s["model"], "glow");
    assert_eq!(s["steps"], 6);
    assert!(s["test_nll"].as_f64().unwrap().is_finite());
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert!(metrics.starts_with("step,loss,lr,seconds,grad_norm_max,clipped,skipped\n"));
    // The GIF holds the frames.
    let gif = std::fs::read(out.join("training.gif")).unwrap();
    assert!(gif.starts_with(b"GIF89a"));

    // Resume to a larger budget continues from step 6.
    let status = glowflow()
        .args(["train2d", "--resume"])
        .arg(&out)
        .args(["--out"])
        .arg(&out)
        .args(["--steps", "10", "--quiet", "--threads", "1"])
        .status()
        .unwrap();
    assert!(status.success());
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["steps"], 10);
}

#[test]
fn compare_writes_table_picture_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let status = glowflow()
        .args(["compare", "--target", "rings", "--out"])
        .arg(&out)
        .args(QUICK)
        .arg("2")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(out.join("compare.png").exists());
    assert!(out.join("compare.md").exists());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(v["target"], "rings");
    assert_eq!(v["steps"], 6);
    assert!(v["entropy"].as_f64().is_some());
    for m in ["glow", "realnvp"] {
        assert!(v["models"][m]["test_nll"].as_f64().unwrap().is_finite());
        assert!(v["models"][m]["train_seconds"].as_f64().is_some());
    }
}

#[test]
fn device_lists_are_checked() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["train2d", "--device", "flex,flex", "--steps", "1"],
            "the CPU is one device",
        ),
        (
            &["train2d", "--device", "cuda:x"],
            "--device cuda:x: not a GPU number",
        ),
        (
            &["train", "--device", "tpu"],
            "--device tpu: unknown device",
        ),
        (
            &[
                "sample",
                "--checkpoint",
                "/nonexistent",
                "--device",
                "cuda:0,cuda:1",
            ],
            "this command runs on one device",
        ),
        (
            &["compare", "--device", "cuda:0,cuda:1"],
            "this command runs on one device",
        ),
        // Without the cuda feature: no CUDA support; with it and no driver: no usable GPU;
        // with two GPUs: named twice. Each names the flag and the device.
        (&["train2d", "--device", "cuda:0,cuda:0"], "--device cuda:0"),
    ];
    for (args, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = glowflow()
            .args(args)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            err.contains(needle),
            "{args:?}: error does not mention {needle}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        // A device name is input: exit 2 (a CUDA build may fail later, on the hardware).
        if !cfg!(feature = "cuda") {
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        }
    }
}

/// Flags that would be silently ignored are refused by name (exit 2), before anything is
/// written.
#[test]
fn ignored_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t.csv");
    let rows: String = (0..50)
        .map(|i| format!("{},{}\n", i % 7, (i * 3) % 11))
        .collect();
    std::fs::write(&table, format!("a,b\n{rows}")).unwrap();
    let t = table.to_str().unwrap();
    let cases: [(&[&str], &str); 11] = [
        (
            &[
                "train2d",
                "--data",
                t,
                "--test-data",
                t,
                "--test-fraction",
                "0.3",
            ],
            "--test-fraction 0.3",
        ),
        (
            &[
                "train2d",
                "--data",
                t,
                "--test-data",
                t,
                "--split-seed",
                "3",
            ],
            "--split-seed 3",
        ),
        (&["train2d", "--data", t, "--frames", "3"], "--frames 3"),
        (&["train2d", "--data", t, "--grid", "64"], "--grid 64"),
        (
            &["train2d", "--model", "realnvp", "--permutation", "shuffle"],
            "--permutation shuffle",
        ),
        (
            &["train2d", "--affine-scale", "glow"],
            "--affine-scale glow: shapes the scale of sigmoid couplings",
        ),
        (
            &["train", "--coupling", "additive", "--affine-scale", "glow"],
            "--affine-scale glow: shapes the scale of affine couplings",
        ),
        (
            &["train2d", "--spline-bins", "4"],
            "--spline-bins 4: shapes spline couplings: it needs --coupling spline",
        ),
        (
            &["train2d", "--spline-affine", "false"],
            "--spline-affine false: shapes spline couplings: it needs --coupling spline",
        ),
        (
            &["train", "--class-conditioning", "prior"],
            "--class-conditioning prior: says where a class-conditional model reads its class: it needs --classes K",
        ),
        (
            &["train2d", "--context-embedding", "8"],
            "--context-embedding 8: embeds the context: it needs context columns (--context-columns)",
        ),
    ];
    for (args, needle) in cases {
        let out_dir = dir.path().join("out");
        let out = glowflow()
            .args(args)
            .args(["--steps", "2", "--quiet", "--out"])
            .arg(&out_dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: error does not mention {needle}: {err}"
        );
        assert!(!out_dir.exists(), "{args:?} wrote {}", out_dir.display());
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let cases: [(&[&str], &str); 13] = [
        (&["train2d", "--target", "nosuch"], "nosuch"),
        (
            &["bench", "--workload", "probe2d", "--low-memory"],
            "--low-memory",
        ),
        (
            &["bench", "--workload", "sample", "--steps-per-level", "4"],
            "--steps-per-level",
        ),
        (&["train2d", "--batch", "0", "--steps", "1"], "--batch"),
        (&["train2d", "--lr=-1", "--steps", "1"], "--lr"),
        (&["train2d", "--resume", "/nonexistent/run"], "--resume"),
        (
            &["train2d", "--clip-grad-norm=-1", "--steps", "1"],
            "--clip-grad-norm",
        ),
        (
            &["train2d", "--clip-grad-norm", "NaN", "--steps", "1"],
            "--clip-grad-norm",
        ),
        (
            &["train2d", "--ema-decay", "1", "--steps", "1"],
            "--ema-decay",
        ),
        (
            &["train2d", "--max-skips", "0", "--steps", "1"],
            "--max-skips",
        ),
        // lr * weight decay >= 1 would zero or flip the weight matrices each step.
        (
            &[
                "train2d",
                "--lr",
                "0.01",
                "--weight-decay",
                "100",
                "--steps",
                "1",
            ],
            "--weight-decay",
        ),
        // ... at the schedule's largest rate: lr 0.01 grown by gamma 10 twice, then 1 * 2 >= 1.
        (
            &[
                "train2d",
                "--lr",
                "0.01",
                "--lr-gamma",
                "10",
                "--lr-step",
                "1",
                "--steps",
                "3",
                "--weight-decay",
                "2",
            ],
            "times the learning rate (1",
        ),
        (
            &[
                "train2d",
                "--resume",
                "/nonexistent/run",
                "--optimizer",
                "adamax",
            ],
            "--optimizer adamax: may not be given on --resume",
        ),
    ];
    for (args, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = glowflow()
            .args(args)
            .arg("--out")
            .arg(dir.path())
            .arg("--quiet")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{args:?}: error does not mention {needle}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

/// One vocabulary: the flags named like the library's options (`--flow-steps`, `--net-width`,
/// `--net-depth`, `--batch-size`) and their older aliases (`--layers`, `--hidden`, `--depth`,
/// `--batch`) train the same run, saved under the new names; an error names the flag as typed.
#[test]
fn old_flags_are_aliases_of_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, flags: &[&str]| -> serde_json::Value {
        let out = dir.path().join(name);
        let status = glowflow()
            .args(["train2d", "--target", "normals", "--steps", "5", "--quiet"])
            .args(["--test-samples", "300", "--frames", "2", "--threads", "1"])
            .args(flags)
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "{flags:?}");
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
    };
    let old = run(
        "old",
        &[
            "--layers", "2", "--hidden", "8", "--depth", "1", "--batch", "32",
        ],
    );
    let new = run(
        "new",
        &[
            "--flow-steps",
            "2",
            "--net-width",
            "8",
            "--net-depth",
            "1",
            "--batch-size",
            "32",
        ],
    );
    assert_eq!(old["test_nll"], new["test_nll"]);
    assert_eq!(new["config"]["flow_steps"], 2);
    assert_eq!(new["config"]["net_width"], 8);
    assert_eq!(new["config"]["net_depth"], 1);
    assert_eq!(new["options"]["batch_size"], 32);
    // A value the library refuses is named by the flag the user typed.
    for (flag, shown) in [
        ("--batch", "--batch 4096"),
        ("--batch-size", "--batch-size 4096"),
    ] {
        let out = glowflow()
            .args(["train2d", "--model", "realnvp", "--steps", "1", "--quiet"])
            .args(["--flow-steps", "2", "--test-samples", "100", flag, "1"])
            .arg("--out")
            .arg(dir.path().join(format!("bad{flag}")))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!("{} 1:", shown.split(' ').next().unwrap())),
            "{err}"
        );
        assert!(!err.contains('`'), "{err}");
    }
    // The image command's aliases: --depth is flow steps per level, --width the CNN width.
    let help = glowflow().args(["train", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--steps-per-level"), "{help}");
    assert!(help.contains("--depth"), "{help}");
}
