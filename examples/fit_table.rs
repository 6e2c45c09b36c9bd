//! Fit Glow to a noisy parabola held in memory: `cargo run --release --example fit_table`.
use glowflow::data::table::Table;
use glowflow::models::{ModelKind, VectorFlow, VectorFlowConfig};
use glowflow::train::{FitOptions, Hooks, Progress};

fn main() -> anyhow::Result<()> {
    let point = |i: usize| {
        let x = (i as f64 * 0.618).fract() * 4.0 - 2.0;
        [
            x,
            x * x / 2.0 + 0.3 * ((i * 7919 % 1000) as f64 / 1e3 - 0.5),
        ]
    };
    let rows: Vec<f64> = (0..2500).flat_map(point).collect();
    let (train, test) = rows.split_at(2000 * 2);
    let names = || vec!["x".to_string(), "y".to_string()];
    let report = |p: &Progress| {
        if p.step.is_multiple_of(100) {
            println!("step {:4}  loss {:.3}", p.step, p.loss);
        }
    };
    let opts = FitOptions {
        steps: 400,
        batch_size: 256,
        lr: 1e-3,
        validation: Some(Table::from_rows("held out", names(), test.to_vec())?),
        hooks: Hooks::with_progress(report),
        ..FitOptions::vectors()
    };
    let mut cfg = VectorFlowConfig::new(ModelKind::Glow);
    cfg.flow_steps = 6;
    let table = Table::from_rows("rows", names(), train.to_vec())?;
    let fitted = VectorFlow::fit(&cfg, &table, &opts)?;
    let (nll, gauss) = (fitted.test_nll.unwrap(), fitted.gaussian_test_nll.unwrap());
    println!("test NLL {nll:.4} nats per row (a Gaussian: {gauss:.4})");
    let logp = fitted.log_prob(&test[..4], &glowflow::default_device());
    println!("log p of the first two held-out rows: {logp:.3?}");
    Ok(())
}
