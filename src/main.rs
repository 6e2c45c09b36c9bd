fn main() {
    if let Err(e) = glowflow::cli::run(std::env::args_os()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
