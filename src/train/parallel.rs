//! Data-parallel gradient computation on the CPU: the batch is split into equal shards, each
//! thread runs forward and backward on its own fork of the model (fresh autodiff leaves, same
//! parameter ids), and the shard gradients are summed in a fixed order. Small 2D flows are
//! dominated by per-op overhead and GEMMs too small for the backend's own threading, so
//! splitting the batch is what uses every core. Results depend on the shard count, never on
//! thread timing.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use std::sync::{Mutex, OnceLock};

use crate::tensor_util::{from_vec, to_vec};

/// Mean loss over `batch` (`n` rows of `width` values) and its gradients, computed on up to
/// `shards` threads. `loss` must return the mean loss of the rows it is given.
pub fn loss_and_grads<M, F>(
    model: &M,
    batch: &[f32],
    width: usize,
    shards: usize,
    device: &Device,
    loss: F,
) -> (f64, GradientsParams)
where
    M: Module + Clone + Send + Sync,
    F: Fn(&M, Tensor<2>) -> Tensor<1> + Sync,
{
    let n = batch.len() / width;
    let shards = shards.clamp(1, n.max(1));
    let run = |m: &M, rows: &[f32]| -> (f64, GradientsParams) {
        let k = rows.len() / width;
        let x = from_vec(rows.to_vec(), [k, width], device);
        let l = loss(m, x).mul_scalar(k as f64 / n as f64);
        let value = to_vec(l.clone())[0] as f64;
        (value, GradientsParams::from_grads(l.backward(), m))
    };
    if shards == 1 {
        return run(model, batch);
    }
    let per = n.div_ceil(shards);
    let chunks: Vec<&[f32]> = batch.chunks(per * width).collect();
    let pools = shard_pools(chunks.len());
    let slots: Vec<Mutex<Option<(f64, GradientsParams)>>> =
        chunks.iter().map(|_| Mutex::new(None)).collect();
    rayon::scope(|s| {
        for ((rows, pool), slot) in chunks.iter().zip(&pools).zip(&slots) {
            let run = &run;
            s.spawn(move |_| {
                let part = pool.install(|| run(&model.clone().fork(device), rows));
                *slot.lock().expect("shard result lock") = Some(part);
            });
        }
    });
    let parts: Vec<(f64, GradientsParams)> = slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("shard result lock")
                .expect("every shard ran")
        })
        .collect();
    let value = parts.iter().map(|p| p.0).sum();
    let mut grads: Vec<GradientsParams> = parts.into_iter().map(|p| p.1).collect();
    let mut merged = GradientsParams::new();
    model.visit(&mut SumGrads {
        parts: &mut grads,
        out: &mut merged,
    });
    (value, merged)
}

/// One single-thread pool per shard, created once and kept: each shard's ops, and the GEMMs
/// inside them, run on exactly one thread (no nested parallel work competing with the other
/// shards), and that thread's allocator heap and GEMM packing buffers stay warm across steps.
fn shard_pools(count: usize) -> Vec<&'static rayon::ThreadPool> {
    static POOLS: OnceLock<Mutex<Vec<&'static rayon::ThreadPool>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .expect("shard pool lock");
    while pools.len() < count {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|i| format!("glowflow-shard-{i}"))
            .build()
            .expect("cannot start a shard thread");
        pools.push(Box::leak(Box::new(pool)));
    }
    pools[..count].to_vec()
}

struct SumGrads<'a> {
    parts: &'a mut [GradientsParams],
    out: &'a mut GradientsParams,
}

impl ModuleVisitor for SumGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let mut total: Option<Tensor<D>> = None;
        for g in self.parts.iter_mut() {
            if let Some(t) = g.remove::<D>(param.id) {
                total = Some(match total {
                    Some(acc) => acc + t,
                    None => t,
                });
            }
        }
        if let Some(t) = total {
            self.out.register(param.id, t);
        }
    }
}
