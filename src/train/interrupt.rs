//! SIGINT (Ctrl-C) and SIGTERM during training: the first signal asks the trainer to finish its
//! step, save a checkpoint and exit with code 130; a second one exits at once (every checkpoint
//! write is all-or-nothing, so the last complete checkpoint survives either way).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Once;

/// 0: no signal; 1: one signal seen.
static SIGNALS: AtomicU8 = AtomicU8::new(0);
static INSTALL: Once = Once::new();

/// Install the handler (once per process; later calls do nothing). Training commands call it;
/// a library user who trains in-process may call it too, or leave signals alone.
pub fn install() {
    INSTALL.call_once(|| {
        let result = ctrlc::set_handler(|| {
            if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
                eprintln!("\nsecond interrupt: exiting now (the last complete checkpoint is kept)");
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupt: finishing this step and saving a checkpoint (again to exit now)"
            );
        });
        if let Err(e) = result {
            eprintln!(
                "warning: cannot catch Ctrl-C/SIGTERM ({e}); an interrupt loses unsaved steps"
            );
        }
    });
}

/// Whether an interrupt has been requested since the process started.
pub fn requested() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}

/// The error a trainer returns after saving at `step` because of an interrupt; `resume` is the
/// command that continues the run.
pub fn interrupted(step: usize, resume: String) -> crate::error::Interrupted {
    crate::error::Interrupted {
        signal: "SIGINT/SIGTERM",
        step,
        saved: format!("checkpoint saved; continue with `{resume}`"),
    }
}
