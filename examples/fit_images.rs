//! Fit image Glow to images in memory: `cargo run --release --example fit_images`.
use glowflow::data::{ImageSet, Splits};
use glowflow::models::{GlowImage, GlowImageConfig};
use glowflow::train::{FitOptions, Hooks, Progress};

/// `n` grey 16x16 images, each a bright bar at a place and angle set by its index.
fn bars(n: usize, first: usize) -> ImageSet {
    let pixel = |i: usize| {
        let (k, p) = ((i / 256 + first) as f64, i % 256);
        let (a, c, y, x) = (k * 0.37, 4.0 + (k * 0.61).fract() * 8.0, p / 16, p % 16);
        let (y, x) = (y as f64, x as f64);
        let bar = ((x - c) * a.cos() + (y - 8.0) * a.sin()).abs() < 1.5;
        [25 + (i * 31 % 13) as u8, 220][bar as usize]
    };
    ImageSet::from_pixels(1, 16, 16, (0..n * 256).map(pixel).collect()).unwrap()
}

fn main() -> anyhow::Result<()> {
    let (train, test) = (bars(512, 0), bars(128, 512));
    let data = Splits::unlabelled(train, test);
    let mut cfg = GlowImageConfig::new(1, 16, 16);
    (cfg.levels, cfg.steps_per_level, cfg.net_width) = (2, 4, 32);
    let report = |p: &Progress| println!("step {:3}  {:.3} bits/dim", p.step, p.loss);
    let mut opts = FitOptions::images();
    (opts.steps, opts.batch_size, opts.warmup) = (150, 32, 20);
    opts.hooks = Hooks::with_progress(report);
    let s = GlowImage::fit(&cfg, &data, &opts)?
        .summary
        .expect("finished");
    println!("test {:.3} bits/dim, {} images", s.test_bpd, s.test_images);
    Ok(())
}
