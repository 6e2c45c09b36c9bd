//! SIGINT (Ctrl-C) and SIGTERM. During training ([`install`]) the first signal asks the trainer
//! to finish its step, save a checkpoint and exit with code 130; a second one exits at once
//! (every checkpoint write is all-or-nothing, so the last complete checkpoint survives either
//! way). Every other command ([`install_immediate`]) exits at the first signal with code 130.
//! Either way the temporary file of a write in progress is removed first
//! ([`crate::fsutil::exit_removing_pending_temps`]): an interrupt never leaves a half-written
//! `.NAME.tmpPID` beside an output.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Once;

/// 0: no signal; 1: one signal seen.
static SIGNALS: AtomicU8 = AtomicU8::new(0);
/// Whether a trainer polls [`requested`] (the first signal then waits for the step's end).
static GRACEFUL: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Install the handler for training (once per process; later calls only switch to this mode):
/// the first signal sets [`requested`], which the trainer polls between steps. A library user
/// who trains in-process may call it too, or leave signals alone.
pub fn install() {
    GRACEFUL.store(true, Ordering::SeqCst);
    install_immediate();
}

/// Install the handler for commands without a training loop: a signal removes the temporary
/// file of any write in progress and exits with code 130 at once, so nothing half-written is
/// left and no output is replaced by a partial one.
pub fn install_immediate() {
    INSTALL.call_once(|| {
        let result = ctrlc::set_handler(|| {
            let first = SIGNALS.fetch_add(1, Ordering::SeqCst) == 0;
            if first && GRACEFUL.load(Ordering::SeqCst) {
                say("\ninterrupt: finishing this step and saving a checkpoint (again to exit now)");
                return;
            }
            crate::fsutil::exit_removing_pending_temps(130, |removed| {
                let what = if removed > 0 {
                    " (a half-written output was removed; earlier files are unchanged)"
                } else {
                    ""
                };
                if GRACEFUL.load(Ordering::SeqCst) {
                    say(&format!(
                        "\nsecond interrupt: exiting now (the last complete checkpoint is kept){what}"
                    ));
                } else {
                    say(&format!("\ninterrupted: exiting{what}"));
                }
            });
        });
        if let Err(e) = result {
            eprintln!(
                "warning: cannot catch Ctrl-C/SIGTERM ({e}); an interrupt loses unsaved steps"
            );
        }
    });
}

/// A line on stderr that never panics (stderr may be closed or its disk full).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Whether an interrupt has been requested since the process started.
pub fn requested() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}

/// The error a trainer returns after saving its run directory `dir` at `step` because of an
/// interrupt.
pub fn interrupted(step: usize, dir: &std::path::Path) -> crate::error::Interrupted {
    crate::error::Interrupted {
        signal: "SIGINT/SIGTERM",
        step,
        saved: format!(
            "checkpoint saved in {dir}; continue it with `resume` {dir}",
            dir = dir.display()
        ),
    }
}
