// Training allocates and frees many small tensors per step; mimalloc's thread-local free lists
// make that markedly cheaper than the system allocator, especially with several threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(e) = glowflow::cli::run(std::env::args_os()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
