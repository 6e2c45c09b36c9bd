use burn::tensor::{DType, Tensor};
use glowflow::flow::Flow;
use glowflow::layers::Layer;
use glowflow::tensor_util::{cast_module, to_vec_f64};
use rand::SeedableRng;

fn stats(t: &Tensor<4>, idx: usize) -> (f64, usize) {
    let [n, c, h, w] = t.dims();
    let v = to_vec_f64(t.clone());
    let per = c * h * w;
    let s = &v[idx * per..(idx + 1) * per];
    let _ = n;
    (
        s.iter().fold(0f64, |m, x| {
            if x.is_finite() {
                m.max(x.abs())
            } else {
                f64::INFINITY
            }
        }),
        s.iter().filter(|x| !x.is_finite()).count(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(&args[1]);
    let t: f64 = args[2].parse().unwrap();
    let device = glowflow::default_device();
    let (model, _st, _) = glowflow::train::train_image::load_for_eval(dir, &device).unwrap();
    let m = cast_module(model, DType::F64);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (_x, zs) = m.sample_with_latents(64, t, &mut rng);
    let bad: usize = args[3].parse().unwrap();
    let last = m.levels.len() - 1;
    let mut h = zs[last].clone();
    for (l, level) in m.levels.iter().enumerate().rev() {
        if let Some(prior) = &level.split {
            h = Tensor::cat(vec![zs[l].clone(), h], 1);
            let _ = prior;
        }
        println!("level {l} input max|h| {:?}", stats(&h, bad));
        for (i, layer) in level.flow.layers.iter().enumerate().rev() {
            if let Layer::AffineCoupling(c) = layer {
                let cdim = h.dims()[1];
                let (xa, _yb) = if c.swap {
                    (h.clone().narrow(1, cdim / 2, cdim - cdim / 2), ())
                } else {
                    (h.clone().narrow(1, 0, cdim / 2), ())
                };
                let net = c.net.forward(xa);
                let cb = net.dims()[1] / 2;
                let raw = net.clone().narrow(1, cb, cb);
                let shift = net.narrow(1, 0, cb);
                let rv = to_vec_f64(raw.clone());
                let per = rv.len() / 64;
                let r = &rv[bad * per..(bad + 1) * per];
                let minraw = r.iter().cloned().fold(f64::INFINITY, f64::min);
                println!(
                    "   layer {i} coupling: min raw {minraw:.3e}  max|shift| {:?}",
                    stats(&shift, bad)
                );
            }
            let (y, _) = layer.inverse(h);
            println!(
                "  layer {i} {} -> max|out| {:?}",
                layer.name(),
                stats(&y, bad)
            );
            h = y;
        }
        h = glowflow::layers::squeeze::unsqueeze(h);
    }
}
