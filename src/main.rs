//! The `glowflow` command line: argument parsing (`cli`) and the benchmarks (`bench`) over the
//! library.

// Training allocates and frees many small tensors per step; mimalloc's thread-local free lists
// make that markedly cheaper than the system allocator, especially with several threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's `mi_option_purge_delay` (see its `mimalloc.h`; the -sys crate has no constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

mod bench;
mod cli;

use std::io::Write;

fn main() {
    // Never hand freed memory back to the OS: a training step frees and reallocates the same
    // large activation buffers, and re-faulting fresh zeroed pages cost ~7% of an image step.
    // The peak resident set is unchanged; the memory is reused, not held twice.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    cli::message::install(&args);
    if let Err(e) = cli::run(args.clone()) {
        // Never a panic, even when stderr itself cannot be written (a full disk).
        let _ = writeln!(
            std::io::stderr(),
            "error: {}",
            cli::message::render(&e, &args)
        );
        // 2: input to fix (a flag, a file); 130: interrupted and saved; 1: anything else.
        std::process::exit(glowflow::error::exit_code(&e));
    }
}
