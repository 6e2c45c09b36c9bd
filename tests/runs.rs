//! Runs you cannot lose: a checkpoint is all old or all new even when the process is killed at
//! any rename or the disk fills at any write (fault injection with strace), Ctrl-C/SIGTERM save
//! and exit 130, one writer per run directory, no silent overwrite, a resume that may change
//! the learning rate (recorded) and refuses the rest, and every bad number refused up front.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn glowflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_glowflow"))
}

/// A tiny 2D run.
const TINY: [&str; 14] = [
    "train2d",
    "--layers",
    "2",
    "--hidden",
    "8",
    "--batch",
    "64",
    "--test-samples",
    "200",
    "--frames",
    "2",
    "--threads",
    "1",
    "--quiet",
];

/// A tiny run that checkpoints at every step.
fn tiny(out: &Path, steps: usize) -> Command {
    tiny_every(out, steps, 1)
}

/// A tiny run that checkpoints every `every` steps (0: at the end only).
fn tiny_every(out: &Path, steps: usize, every: usize) -> Command {
    let mut c = glowflow();
    c.args(TINY)
        .arg("--checkpoint-every")
        .arg(every.to_string())
        .arg("--steps")
        .arg(steps.to_string())
        .arg("--out")
        .arg(out);
    c
}

fn state(dir: &Path) -> serde_json::Value {
    let ck = glowflow::train::checkpoint::locate(dir);
    serde_json::from_str(&std::fs::read_to_string(ck.join("state.json")).unwrap()).unwrap()
}

/// Every weight of the run's trained model, bit for bit, in module order (the checkpoint's file
/// bytes are not canonical: safetensors' header order varies between processes).
fn weights_hash(dir: &Path) -> Vec<u32> {
    struct C<'a>(&'a mut Vec<u32>);
    impl burn::module::ModuleVisitor for C<'_> {
        fn visit_float<const D: usize>(
            &mut self,
            p: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            self.0.extend(
                glowflow::tensor_util::to_vec(p.val())
                    .iter()
                    .map(|x| x.to_bits()),
            );
        }
    }
    let (model, _) =
        glowflow::train::train2d::load_trained(dir, &glowflow::default_device()).unwrap();
    let mut v = Vec::new();
    burn::module::Module::visit(&model, &mut C(&mut v));
    assert!(!v.is_empty());
    v
}

fn strace() -> Option<PathBuf> {
    ["/usr/bin/strace", "/bin/strace"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn has_checkpoint(dir: &Path) -> bool {
    glowflow::train::checkpoint::locate(dir)
        .join("state.json")
        .exists()
}

/// Leftovers of interrupted writes: temporary files and checkpoint folders being built.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for d in [dir.to_path_buf(), dir.join("checkpoint")] {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains(".tmp") || name.starts_with(".checkpoint.") {
                    found.push(name);
                }
            }
        }
    }
    found
}

/// Kill the training process at every rename (the commit points of every file it writes), or
/// fail every write with ENOSPC in turn; after each fault, the checkpoint on disk must load
/// whole (every file matches the hashes of its state.json) and a resume must end bit-identical
/// to an uninterrupted run.
fn fault_at_every_point(inject: &str, trace: &str) {
    let Some(strace) = strace() else {
        eprintln!("skipped: strace is not installed (apt-get install strace)");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let steps = 3;
    let straight = root.path().join("straight");
    assert!(tiny(&straight, steps).output().unwrap().status.success());
    let want = weights_hash(&straight);

    // How many fault points a run has.
    let log = root.path().join("trace.log");
    let counted = root.path().join("counted");
    let st = Command::new(&strace)
        .args(["-f", "-qq", "-e", &format!("trace={trace}"), "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_glowflow"))
        .args(tiny(&counted, steps).get_args())
        .status()
        .unwrap();
    assert!(st.success(), "strace could not run glowflow");
    let points = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains('(') && !l.contains("resumed>"))
        .count();
    assert!(points >= 4, "only {points} fault points counted");

    let (mut whole, mut exact, mut absent) = (0, 0, 0);
    for n in 1..=points {
        let dir = root.path().join(format!("f{n}"));
        let out = Command::new(&strace)
            .args([
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                &format!("trace={trace}"),
                "-e",
                &format!("inject={trace}:{inject}:when={n}"),
            ])
            .arg(env!("CARGO_BIN_EXE_glowflow"))
            .args(tiny(&dir, steps).get_args())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "fault {n}: panic: {err}");
        if !has_checkpoint(&dir) {
            absent += 1;
            continue;
        }
        // Loading verifies every file against state.json: a mixed checkpoint fails here.
        let (_, st) = glowflow::train::train2d::load_trained(&dir, &glowflow::default_device())
            .unwrap_or_else(|e| panic!("fault {n}: checkpoint does not load whole: {e:#}"));
        whole += 1;
        if st.step == steps && out.status.success() {
            // The run survived the fault (e.g. a failed write it does not need).
            assert_eq!(weights_hash(&dir), want, "fault {n}: finished run differs");
            exact += 1;
            continue;
        }
        let resumed = glowflow()
            .args([
                "train2d",
                "--quiet",
                "--steps",
                &steps.to_string(),
                "--resume",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            resumed.status.success(),
            "fault {n}: resume from step {} failed: {}",
            st.step,
            String::from_utf8_lossy(&resumed.stderr)
        );
        assert_eq!(
            weights_hash(&dir),
            want,
            "fault {n}: resume from step {} is not exact",
            st.step
        );
        assert!(
            leftovers(&dir).is_empty(),
            "fault {n}: left behind {:?}",
            leftovers(&dir)
        );
        exact += 1;
    }
    eprintln!(
        "{inject}: {points} fault points: {whole} whole checkpoints, {exact} exact resumes, \
         {absent} before the first checkpoint, 0 mixed"
    );
    assert_eq!(whole, exact);
    assert!(whole > 0);
}

#[test]
fn kill_at_every_rename_leaves_one_whole_checkpoint() {
    fault_at_every_point("signal=KILL", "rename,renameat,renameat2");
}

#[test]
fn disk_full_at_every_write_leaves_one_whole_checkpoint() {
    fault_at_every_point("error=ENOSPC", "write,pwrite64,writev");
}

fn wait_for_rows(metrics: &Path, rows: usize) {
    let t = Instant::now();
    while std::fs::read_to_string(metrics).map_or(0, |s| s.lines().count()) <= rows {
        assert!(t.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn steps_logged(dir: &Path) -> Vec<usize> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect()
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Ctrl-C (SIGINT) and SIGTERM: the step finishes, a checkpoint is saved, the exit code is 130;
/// the resume continues without duplicate metrics rows and ends where an uninterrupted run does.
#[test]
fn interrupt_saves_and_resume_is_exact_without_duplicate_rows() {
    for sig in ["-INT", "-TERM"] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        // No periodic checkpoints: only the interrupt saves.
        let mut cmd = tiny_every(&dir, 1_000_000, 0);
        let child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
        wait_for_rows(&dir.join("metrics.csv"), 3);
        signal(child.id(), sig);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{sig}: {err}");
        assert!(
            err.contains("interrupted") && err.contains("--resume"),
            "{err}"
        );
        let saved = state(&dir)["step"].as_u64().unwrap() as usize;
        assert!(saved >= 30, "{sig}: saved at step {saved}");
        let total = saved + 25;
        let resumed = glowflow()
            .args([
                "train2d",
                "--quiet",
                "--steps",
                &total.to_string(),
                "--resume",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            resumed.status.success(),
            "{}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        let logged = steps_logged(&dir);
        assert!(
            logged.windows(2).all(|w| w[0] < w[1]),
            "{sig}: metrics.csv steps repeat or go back: {logged:?}"
        );
        assert_eq!(*logged.last().unwrap(), total);
        let straight = root.path().join("straight");
        assert!(tiny_every(&straight, total, 0).status().unwrap().success());
        assert_eq!(
            weights_hash(&dir),
            weights_hash(&straight),
            "{sig}: not exact"
        );
    }
}

/// A second process writing into a run directory in use gets exit code 2 naming --out; the
/// first run is unharmed.
#[test]
fn second_writer_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    let mut cmd = tiny_every(&dir, 1_000_000, 0);
    let first = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_for_rows(&dir.join("metrics.csv"), 1);
    for second in [
        tiny(&dir, 10).arg("--force").output().unwrap(),
        glowflow()
            .args(["train2d", "--quiet", "--steps", "10", "--resume"])
            .arg(&dir)
            .output()
            .unwrap(),
    ] {
        let err = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(2), "{err}");
        assert!(
            err.contains("--out") && err.contains("another glowflow process"),
            "{err}"
        );
    }
    signal(first.id(), "-INT");
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let steps = steps_logged(&dir);
    assert!(steps.windows(2).all(|w| w[0] < w[1]));
    assert!(has_checkpoint(&dir));
}

/// A fresh run into a folder holding a run is refused (exit 2, naming --out and --force);
/// --force replaces it.
#[test]
fn existing_run_is_not_overwritten_without_force() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    assert!(tiny(&dir, 4).status().unwrap().success());
    let before = weights_hash(&dir);
    let again = tiny(&dir, 6).output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--out") && err.contains("--force") && err.contains("step 4"),
        "{err}"
    );
    assert_eq!(
        weights_hash(&dir),
        before,
        "the refused run touched the checkpoint"
    );
    assert_eq!(state(&dir)["step"], 4);
    assert!(tiny(&dir, 6).arg("--force").status().unwrap().success());
    assert_eq!(state(&dir)["step"], 6);
    // One row (metrics are logged every 10 steps and at the end): the old run's are gone.
    assert_eq!(steps_logged(&dir), vec![6], "old rows survived --force");
}

/// A resume may lower the learning rate (applied from the resumed step, recorded in the
/// checkpoint) and change the thread count (with a note); recipe flags are refused by name.
#[test]
fn resume_changes_lr_and_refuses_recipe_flags() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    assert!(tiny(&dir, 20).status().unwrap().success());
    let out = glowflow()
        .args([
            "train2d",
            "--quiet",
            "--steps",
            "30",
            "--lr",
            "2.5e-5",
            "--threads",
            "2",
        ])
        .arg("--resume")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--threads 2 differs"), "no note: {err}");
    let st = state(&dir);
    assert_eq!(st["options"]["lr"], 2.5e-5);
    assert_eq!(st["threads"], 2);
    let rec = &st["resumes"][0];
    assert_eq!(rec["step"], 20);
    let changes: Vec<&str> = rec["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(changes.contains(&"lr 0.0001 -> 0.000025"), "{changes:?}");
    // The lr column: 1e-4 up to step 20, then 2.5e-5.
    let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    for line in metrics.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (step, lr): (usize, f64) = (f[0].parse().unwrap(), f[2].parse().unwrap());
        let want = if step <= 20 { 1e-4 } else { 2.5e-5 };
        assert!((lr - want).abs() < 1e-12, "step {step}: lr {lr}");
    }
    for (flag, value) in [
        ("--layers", "3"),
        ("--batch", "32"),
        ("--seed", "1"),
        ("--optimizer", "adamax"),
        ("--weight-decay", "0.1"),
        ("--target", "rings"),
    ] {
        let out = glowflow()
            .args([
                "train2d", "--quiet", "--steps", "40", flag, value, "--resume",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(
            err.contains(&format!("{flag} {value}: may not be given on --resume")),
            "{err}"
        );
    }
    assert_eq!(state(&dir)["step"], 30, "a refused resume ran");
}

/// Numeric flags of a command, each with whether 0 is a valid value.
type Flags<'a> = &'a [(&'a str, bool)];

/// Every numeric flag of every command, given 0 (where 0 is meaningless), a negative number,
/// a huge number and NaN: exit code 2, the flag named, no panic, nothing run.
#[test]
fn every_numeric_flag_is_checked_up_front() {
    // (flag, whether 0 is a valid value)
    let image: &[(&str, bool)] = &[
        ("--pad", false),
        ("--size", false),
        ("--levels", false),
        ("--depth", false),
        ("--width", false),
        ("--n-bits", false),
        ("--batch", false),
        ("--lr", false),
        ("--warmup", true),
        ("--steps", false),
        ("--seed", true),
        ("--sample-every", true),
        ("--checkpoint-every", true),
        ("--test-limit", true),
        ("--init-batch", false),
        ("--log-every", false),
        ("--time-limit", false),
        ("--threads", false),
        ("--clip-grad-norm", true),
        ("--ema-decay", true),
        ("--max-skips", false),
        ("--weight-decay", true),
        ("--label-dropout", true),
        ("--noise-sigma", true),
        ("--dequant-depth", true),
        ("--dequant-width", false),
    ];
    let toy: &[(&str, bool)] = &[
        ("--steps", false),
        ("--batch", false),
        ("--lr", false),
        ("--lr-step", false),
        ("--lr-gamma", false),
        ("--layers", false),
        ("--hidden", false),
        ("--depth", false),
        ("--seed", true),
        ("--frames", true),
        ("--checkpoint-every", true),
        ("--test-samples", false),
        ("--log-every", false),
        ("--grid", false),
        ("--threads", false),
        ("--clip-grad-norm", true),
        ("--ema-decay", true),
        ("--max-skips", false),
        ("--weight-decay", true),
    ];
    let table: &[(&[&str], Flags)] = &[
        (&["train", "--data", "idx:/nonexistent"], image),
        (&["train2d"], toy),
        (&["compare"], toy),
        (&["eval", "--checkpoint", "/nonexistent"], &[("--n", false)]),
        (
            &["reconstruct", "--checkpoint", "/nonexistent"],
            &[("--n", false)],
        ),
        (
            &["sample", "--checkpoint", "/nonexistent"],
            &[
                ("--n", false),
                ("--temperature", true),
                ("--seed", true),
                ("--guidance", true),
            ],
        ),
        (
            &["bench", "--workload", "probe2d"],
            &[("--steps", false), ("--warmup", true), ("--threads", false)],
        ),
    ];
    let out_dir = tempfile::tempdir().unwrap();
    let mut cases = 0;
    for (cmd, flags) in table {
        for (flag, zero_ok) in *flags {
            let mut values = vec!["-1", "99999999999999999999999", "1e300", "NaN"];
            if !zero_ok {
                values.push("0");
            }
            for v in values {
                let mut c = glowflow();
                c.args(*cmd).arg(flag).arg(v);
                if matches!(cmd[0], "train" | "train2d" | "compare") {
                    c.arg("--out").arg(out_dir.path().join("never"));
                }
                let out = c.output().unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(
                    out.status.code(),
                    Some(2),
                    "{cmd:?} {flag} {v}: exit {:?}: {err}",
                    out.status
                );
                assert!(
                    err.contains(flag),
                    "{cmd:?} {flag} {v}: flag not named: {err}"
                );
                assert!(!err.contains("panicked"), "{cmd:?} {flag} {v}: {err}");
                cases += 1;
            }
        }
    }
    assert!(
        !out_dir.path().join("never").exists(),
        "a refused command wrote output"
    );
    eprintln!("{cases} command x flag x value cases: all exit 2 naming the flag");
    assert_eq!(cases, 338);
}

fn assert_refused(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit {:?}: {err}", out.status);
    for n in needles {
        assert!(err.contains(n), "error does not name {n}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn idx(n: usize, side: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for v in [n, side, side] {
        b.extend_from_slice(&(v as u32).to_be_bytes());
    }
    b.extend((0..n * side * side).map(|i| (i * 37 % 251) as u8));
    b
}

/// Values that pass the parser but not the data or the memory, and values stored in files:
/// each refused with the file or flag named, never a panic, an abort or a hang.
#[test]
fn files_and_data_dependent_values_are_refused_by_name() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("train-images-idx3-ubyte"), idx(24, 8)).unwrap();
    std::fs::write(data.join("t10k-images-idx3-ubyte"), idx(8, 8)).unwrap();
    let spec = format!("idx:{}", data.display());
    let train = |extra: &[&str], out: &str| {
        glowflow()
            .args([
                "train", "--data", &spec, "--depth", "1", "--width", "4", "--quiet",
            ])
            .args(["--steps", "2", "--out"])
            .arg(root.path().join(out))
            .args(extra)
            .output()
            .unwrap()
    };
    let small = ["--batch", "4", "--levels", "1"];
    assert_refused(
        &train(&["--batch", "1000000", "--levels", "1"], "a"),
        &["--batch", "training set"],
    );
    assert!(
        !root.path().join("a").exists(),
        "a refused run left its folder"
    );
    assert_refused(
        &train(&["--batch", "4", "--levels", "4"], "b"),
        &["--levels", "divisible"],
    );
    assert!(
        !root.path().join("b").exists(),
        "a refused run left its folder"
    );
    assert_refused(
        &train(&["--pad", "6", "--batch", "4"], "c"),
        &["--pad", "smaller"],
    );
    let out = glowflow()
        .args(["train", "--data", "idx:", "--quiet"])
        .output()
        .unwrap();
    assert_refused(&out, &["--data", "no folder"]);
    let out = glowflow()
        .args([
            "train2d", "--model", "realnvp", "--batch", "1", "--quiet", "--out",
        ])
        .arg(root.path().join("r"))
        .output()
        .unwrap();
    assert_refused(&out, &["--batch", "batch norm"]);
    let out = glowflow()
        .args([
            "train2d", "--batch", "16000000", "--layers", "64", "--quiet", "--out",
        ])
        .arg(root.path().join("m"))
        .output()
        .unwrap();
    assert_refused(&out, &["--batch", "memory"]);

    // A trained run, then its state.json edited by hand.
    assert!(train(&small, "run").status.success());
    let run = root.path().join("run");
    let state_path = run.join("checkpoint/state.json");
    let original = std::fs::read_to_string(&state_path).unwrap();
    for (from, to, field) in [
        ("\"levels\": 1", "\"levels\": 64", "model.levels"),
        ("\"n_bits\": 8", "\"n_bits\": 200", "model.n_bits"),
        (
            "\"batch_size\": 4",
            "\"batch_size\": 0",
            "options.batch_size",
        ),
    ] {
        assert!(original.contains(from), "{from}");
        std::fs::write(&state_path, original.replace(from, to)).unwrap();
        for cmd in [
            vec!["eval", "--checkpoint"],
            vec!["train", "--steps", "3", "--quiet", "--resume"],
        ] {
            let out = glowflow().args(&cmd).arg(&run).output().unwrap();
            // The value is blamed on the file, not on a flag.
            assert_refused(&out, &["state.json", field]);
        }
    }
    std::fs::write(&state_path, &original).unwrap();

    // `--low-memory` trains, is saved with the run, and may be switched on at a resume.
    assert!(train(&[&small[..], &["--low-memory"]].concat(), "low")
        .status
        .success());
    assert!(train(&small, "later").status.success());
    for dir in ["low", "later"] {
        let dir = root.path().join(dir);
        let out = glowflow()
            .args([
                "train",
                "--steps",
                "4",
                "--quiet",
                "--low-memory",
                "--resume",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {err}", dir.display());
        let state = std::fs::read_to_string(dir.join("checkpoint/state.json")).unwrap();
        assert!(state.contains("\"low_memory\": true"), "{state}");
        assert!(state.contains("\"step\": 4"), "{state}");
    }

    // An optimizer file from another run.
    assert!(train(&[&small[..], &["--seed", "5"]].concat(), "other")
        .status
        .success());
    std::fs::copy(
        root.path().join("other/checkpoint/optimizer.bpk"),
        run.join("checkpoint/optimizer.bpk"),
    )
    .unwrap();
    let out = glowflow()
        .args(["train", "--steps", "3", "--quiet", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    assert_refused(&out, &["optimizer.bpk", "does not belong"]);

    // Image folders: an unreadable file and a PNG whose header declares a huge size.
    let folder = root.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    for i in 0..4 {
        let mut enc = png::Encoder::new(
            std::fs::File::create(folder.join(format!("{i}.png"))).unwrap(),
            4,
            4,
        );
        enc.set_color(png::ColorType::Grayscale);
        enc.write_header()
            .unwrap()
            .write_image_data(&[9; 16])
            .unwrap();
    }
    std::fs::write(folder.join("broken.png"), b"not an image").unwrap();
    let fspec = format!("folder:{}", folder.display());
    let run_folder = |out: &str| {
        glowflow()
            .args([
                "train", "--data", &fspec, "--size", "4", "--levels", "1", "--quiet",
            ])
            .args(["--steps", "1", "--batch", "2", "--out"])
            .arg(root.path().join(out))
            .output()
            .unwrap()
    };
    assert_refused(&run_folder("f1"), &["broken.png", "not a PNG or JPEG"]);
    std::fs::remove_file(folder.join("broken.png")).unwrap();
    // A valid PNG header declaring 100000 x 100000 pixels (its CRC recomputed).
    let mut bytes = std::fs::read(folder.join("0.png")).unwrap();
    bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(folder.join("0.png"), bytes).unwrap();
    assert_refused(&run_folder("f2"), &["0.png", "declares 100000x100000"]);
}

/// CRC-32 (IEEE) of a PNG chunk's type and data.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// SIGTERM delivered at every `write` of `score --out` and `sample --out` (strace signal
/// injection): the command exits 130 (or finishes with 0), never panics, leaves no temporary
/// file, and the output is either absent or byte-identical to an uninterrupted run's.
#[test]
fn sigterm_at_every_write_of_score_and_sample_leaves_no_temporary_file() {
    let Some(strace) = strace() else {
        eprintln!("skipped: strace is not installed (apt-get install strace)");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let table = root.path().join("t.csv");
    let mut text = String::from("a,b\n");
    for i in 0..400 {
        let x = (i as f64 * 0.37).sin();
        text.push_str(&format!("{x},{}\n", x * x + 0.1 * (i as f64 * 1.3).cos()));
    }
    std::fs::write(&table, text).unwrap();
    let run = root.path().join("run");
    let trained = glowflow()
        .args([
            "train2d",
            "--layers",
            "2",
            "--hidden",
            "8",
            "--batch",
            "64",
            "--threads",
            "1",
            "--quiet",
            "--steps",
            "5",
            "--data",
        ])
        .arg(&table)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let commands: [(&str, Vec<&str>); 2] = [
        ("scores.csv", vec!["score", "--checkpoint"]),
        ("rows.csv", vec!["sample", "--n", "5000", "--checkpoint"]),
    ];
    // Every file creation too: an interrupt between creating a temporary file and registering
    // it would leave it behind.
    let trace = "write,pwrite64,writev,openat";
    for (file, args) in commands {
        let out_dir = root.path().join(format!("whole-{file}"));
        std::fs::create_dir(&out_dir).unwrap();
        let whole = out_dir.join(file);
        let args_for = |target: &Path| -> Vec<std::ffi::OsString> {
            let mut v: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            v.push(run.clone().into());
            v.push("--out".into());
            v.push(target.into());
            v
        };
        let log = root.path().join(format!("{file}.trace"));
        let st = Command::new(&strace)
            .args(["-f", "-qq", "-e", &format!("trace={trace}"), "-o"])
            .arg(&log)
            .arg(env!("CARGO_BIN_EXE_glowflow"))
            .args(args_for(&whole))
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let want = std::fs::read(&whole).unwrap();
        let points = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|l| l.contains('(') && !l.contains("resumed>"))
            .count();
        assert!(points >= 2, "{file}: only {points} writes");
        let (mut interrupted, mut removed) = (0, 0);
        for n in 1..=points {
            let dir = root.path().join(format!("{file}-{n}"));
            std::fs::create_dir(&dir).unwrap();
            let target = dir.join(file);
            let out = Command::new(&strace)
                .args(["-f", "-qq", "-o", "/dev/null", "-e"])
                .arg(format!("trace={trace}"))
                .arg("-e")
                .arg(format!("inject={trace}:signal=TERM:when={n}"))
                .arg(env!("CARGO_BIN_EXE_glowflow"))
                .args(args_for(&target))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.contains("panicked"), "{file} write {n}: panic: {err}");
            let code = out.status.code();
            // Killed by the signal itself: only before the handler is installed (the
            // loader's and the start-up's files), when no output has begun.
            let early = {
                use std::os::unix::process::ExitStatusExt;
                out.status.signal() == Some(15)
            };
            assert!(
                code == Some(130) || code == Some(0) || early,
                "{file} write {n}: exit {code:?}: {err}"
            );
            interrupted += usize::from(code == Some(130));
            removed += usize::from(err.contains("half-written output was removed"));
            let names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                names.iter().all(|n| n == file),
                "{file} write {n}: left behind {names:?}"
            );
            if target.exists() {
                assert_eq!(
                    std::fs::read(&target).unwrap(),
                    want,
                    "{file} write {n}: a partial output"
                );
            }
        }
        eprintln!(
            "{file}: {points} writes, {interrupted} interrupted (exit 130), {removed} removed a temporary file"
        );
        assert!(
            interrupted > 0,
            "{file}: no injected signal interrupted the command"
        );
    }
}
