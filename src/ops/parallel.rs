//! Data-parallel gradient computation: the batch is split into equal shards, each shard runs
//! forward and backward on its own fork of the model (fresh autodiff leaves, same parameter
//! ids), and the shard gradients are summed. Results depend on the shard count, never on thread
//! timing.
//!
//! - On the CPU ([`loss_and_grads`]) the shards are threads of the one device, summed in a fixed
//!   order. Small 2D flows are dominated by per-op overhead and GEMMs too small for the
//!   backend's own threading, so splitting the batch is what uses every core.
//! - On several GPUs ([`loss_and_grads_on_devices`]) each device takes one shard; the gradients
//!   are summed with burn's collective all-reduce (`burn::tensor::distributed::all_reduce`,
//!   NCCL on CUDA), and the optimizer steps once, on the first device, whose weights every
//!   device forks at the next step (the broadcast). This is PyTorch DDP's arithmetic with one
//!   optimizer instead of one per replica.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::distributed::{all_reduce, ReduceOperation};
use burn::tensor::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use crate::tensor_util::from_vec;

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
    let grads = |m: &M, x: Tensor<2>, w: f64| backprop(m, loss(m, x), w);
    shard_grads(model, batch, width, shards, device, grads)
}

/// `loss` times `weight` (`[1]`, the value returned) and its gradients for `model`, by
/// ordinary backpropagation.
pub fn backprop<M: Module>(model: &M, loss: Tensor<1>, weight: f64) -> (f64, GradientsParams) {
    let l = loss.mul_scalar(weight);
    let value = crate::tensor_util::to_vec_f64(l.clone())[0];
    (value, GradientsParams::from_grads(l.backward(), model))
}

/// [`loss_and_grads`] for a `grads` that computes a shard's gradients itself: given a model,
/// the shard's rows `[k, width]` and its weight `k / n`, it returns the shard's mean loss times
/// the weight and the gradients of that (e.g. [`backprop`] of a loss). See [`shard_grads_into`]
/// for a `grads` that hands its gradients over piece by piece.
pub fn shard_grads<M, G>(
    model: &M,
    batch: &[f32],
    width: usize,
    shards: usize,
    device: &Device,
    grads: G,
) -> (f64, GradientsParams)
where
    M: Module + Clone + Send + Sync,
    G: Fn(&M, Tensor<2>, f64) -> (f64, GradientsParams) + Sync,
{
    shard_grads_into(model, batch, width, shards, device, |m, x, w, sink| {
        let (value, g) = grads(m, x, w);
        sink.deposit(m, g);
        value
    })
}

/// [`shard_grads`] for a `grads` that deposits its gradients into the shard's [`ShardSink`]
/// as it computes them (any number of deposits, each parameter at most once per shard) and
/// returns the shard's weighted loss. Deposits are summed across shards as they arrive, in
/// place, in shard order (a later shard's gradient waits until the earlier shards' are in), so
/// the result is bitwise that of summing whole per-shard gradient sets in shard order, but a
/// `grads` that deposits layer by layer (invertible backpropagation, `train::low_memory`)
/// keeps one gradient set for all shards, not one each (a shard that runs ahead of an
/// earlier one parks its layers' gradients until that one catches up; the shards do the same
/// work, so that is a few layers').
pub fn shard_grads_into<M, G>(
    model: &M,
    batch: &[f32],
    width: usize,
    shards: usize,
    device: &Device,
    grads: G,
) -> (f64, GradientsParams)
where
    M: Module + Clone + Send + Sync,
    G: Fn(&M, Tensor<2>, f64, &mut ShardSink) -> f64 + Sync,
{
    let n = batch.len() / width;
    let shards = shards.clamp(1, n.max(1));
    let sum = OrderedSum::default();
    let run = |m: &M, rows: &[f32], index: usize| {
        let (x, w) = shard_input(rows, n, width, device);
        let mut sink = ShardSink {
            shard: index,
            sum: &sum,
        };
        grads(m, x, w, &mut sink)
    };
    if shards == 1 {
        let value = run(model, batch, 0);
        return (value, sum.into_grads(model));
    }
    let per = n.div_ceil(shards);
    let chunks: Vec<&[f32]> = batch.chunks(per * width).collect();
    let pools = shard_pools(chunks.len());
    let values: Vec<Mutex<f64>> = chunks.iter().map(|_| Mutex::new(0.0)).collect();
    rayon::scope(|s| {
        for (index, ((rows, pool), value)) in chunks.iter().zip(&pools).zip(&values).enumerate() {
            let run = &run;
            s.spawn(move |_| {
                let v = pool.install(|| run(&model.clone().fork(device), rows, index));
                *value.lock().expect("shard result lock") = v;
            });
        }
    });
    let value = values
        .into_iter()
        .map(|v| v.into_inner().expect("shard result lock"))
        .sum();
    (value, sum.into_grads(model))
}

/// Where gradients go as they are computed: a whole set ([`GradientsParams`]) or a
/// data-parallel shard's share of a sum ([`ShardSink`]).
pub trait GradSink {
    /// Take `module`'s parameter gradients out of `grads` (gradients of parameters outside
    /// `module` are dropped). A [`GradientsParams`] adds a parameter's deposits up in deposit
    /// order (the chunks of one batch); a [`ShardSink`] takes one per parameter.
    fn deposit<M: Module>(&mut self, module: &M, grads: GradientsParams);
}

impl GradSink for GradientsParams {
    fn deposit<M: Module>(&mut self, module: &M, mut grads: GradientsParams) {
        module.visit(&mut AddGrads {
            from: &mut grads,
            to: self,
        });
    }
}

/// One shard's handle on the sum of [`shard_grads_into`].
pub struct ShardSink<'a> {
    shard: usize,
    sum: &'a OrderedSum,
}

impl GradSink for ShardSink<'_> {
    fn deposit<M: Module>(&mut self, module: &M, mut grads: GradientsParams) {
        module.visit(&mut DepositGrads {
            from: &mut grads,
            shard: self.shard,
            sum: self.sum,
        });
    }
}

/// Per-parameter sums of the shards' gradients (flattened), each added in shard order.
#[derive(Default)]
struct OrderedSum {
    slots: Mutex<HashMap<ParamId, Arc<Mutex<Slot>>>>,
}

/// One parameter's sum: shards `0..next` added into `acc`; later shards' gradients that came
/// early wait in `waiting`.
#[derive(Default)]
struct Slot {
    next: usize,
    acc: Option<Tensor<1>>,
    waiting: BTreeMap<usize, Tensor<1>>,
}

impl OrderedSum {
    fn add(&self, shard: usize, id: ParamId, g: Tensor<1>) {
        let slot = self
            .slots
            .lock()
            .expect("gradient sum lock")
            .entry(id)
            .or_default()
            .clone();
        let mut guard = slot.lock().expect("gradient slot lock");
        let slot = &mut *guard;
        assert!(
            shard >= slot.next && !slot.waiting.contains_key(&shard),
            "a parameter's gradient deposited twice by one shard"
        );
        slot.waiting.insert(shard, g);
        while let Some(g) = slot.waiting.remove(&{ slot.next }) {
            slot.acc = Some(match slot.acc.take() {
                Some(acc) => acc + g,
                None => g,
            });
            slot.next += 1;
        }
    }

    /// The sums, reshaped to `model`'s parameters. A shard that deposited nothing for a
    /// parameter is skipped (the others still add in shard order).
    fn into_grads<M: Module>(self, model: &M) -> GradientsParams {
        let mut out = GradientsParams::new();
        model.visit(&mut CollectSums {
            slots: self.slots.into_inner().expect("gradient sum lock"),
            out: &mut out,
        });
        out
    }
}

/// Moves a module's parameter gradients from one [`GradientsParams`] to another, adding
/// them to any already there.
struct AddGrads<'a> {
    from: &'a mut GradientsParams,
    to: &'a mut GradientsParams,
}

impl ModuleVisitor for AddGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.remove::<D>(param.id) {
            let total = match self.to.remove::<D>(param.id) {
                Some(acc) => acc + g,
                None => g,
            };
            self.to.register(param.id, total);
        }
    }
}

/// Adds a module's parameter gradients to an [`OrderedSum`] as one shard's.
struct DepositGrads<'a> {
    from: &'a mut GradientsParams,
    shard: usize,
    sum: &'a OrderedSum,
}

impl ModuleVisitor for DepositGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.remove::<D>(param.id) {
            let n = g.shape().num_elements();
            self.sum.add(self.shard, param.id, g.reshape([n]));
        }
    }
}

/// Registers an [`OrderedSum`]'s totals, each in its parameter's shape.
struct CollectSums<'a> {
    slots: HashMap<ParamId, Arc<Mutex<Slot>>>,
    out: &'a mut GradientsParams,
}

impl ModuleVisitor for CollectSums<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(slot) = self.slots.remove(&param.id) else {
            return;
        };
        let slot = Arc::try_unwrap(slot)
            .ok()
            .expect("every shard has finished")
            .into_inner()
            .expect("gradient slot lock");
        let total = slot.waiting.into_values().fold(slot.acc, |acc, g| {
            Some(match acc {
                Some(acc) => acc + g,
                None => g,
            })
        });
        if let Some(t) = total {
            self.out
                .register::<D>(param.id, t.reshape::<D, _>(param.shape()));
        }
    }
}

/// Mean loss over `batch` (`n` rows of `width` values) and its gradients, with one shard of
/// the batch on each of `devices` (autodiff devices; `model` lives on the first), all shards
/// running at once, one thread per device. The returned gradients are on the first device.
///
/// The shards are equal (the first `n mod d` take one row more; a batch of fewer rows than
/// devices uses the first `n` devices), their losses are the shards' means weighted by their
/// share of the rows, so the sum is the mean over the whole batch and the summed gradients are
/// those of one device running the whole batch, up to float rounding. GPUs sum with burn's
/// all-reduce (NCCL), every device issuing the same reductions in the module's parameter
/// order; CPU devices (tests) have no collective backend and are summed on the first device in
/// device order. A panic on one device (out of memory) is raised here after every device has
/// stopped, never left waiting in a reduction. `loss` must return the mean loss of the rows it
/// is given.
pub fn loss_and_grads_on_devices<M, F>(
    model: &M,
    batch: &[f32],
    width: usize,
    devices: &[Device],
    loss: F,
) -> (f64, GradientsParams)
where
    M: Module + Clone + Send + Sync,
    F: Fn(&M, Tensor<2>) -> Tensor<1> + Sync,
{
    let grads = |m: &M, x: Tensor<2>, w: f64| backprop(m, loss(m, x), w);
    shard_grads_on_devices(model, batch, width, devices, grads)
}

/// [`loss_and_grads_on_devices`] for a `grads` that computes a shard's gradients itself (see
/// [`shard_grads`]).
pub fn shard_grads_on_devices<M, G>(
    model: &M,
    batch: &[f32],
    width: usize,
    devices: &[Device],
    grads: G,
) -> (f64, GradientsParams)
where
    M: Module + Clone + Send + Sync,
    G: Fn(&M, Tensor<2>, f64) -> (f64, GradientsParams) + Sync,
{
    use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, Ordering};
    let n = batch.len() / width;
    let d = devices.len().clamp(1, n.max(1));
    let devices = &devices[..d];
    let mut chunks: Vec<&[f32]> = Vec::with_capacity(d);
    let mut at = 0;
    for i in 0..d {
        let k = n / d + usize::from(i < n % d);
        chunks.push(&batch[at * width..(at + k) * width]);
        at += k;
    }
    let collective = d > 1 && !devices.iter().any(crate::tensor_util::is_flex_device);
    let group: Vec<Device> = devices.iter().map(|d| d.clone().inner()).collect();
    // Forked here, one device after another, before any shard runs: a copy between GPUs can
    // itself be an NCCL send/receive, which must not interleave with the reductions the
    // device threads issue (NCCL needs every device to see its operations in one order).
    let replicas: Vec<M> = devices.iter().map(|dev| model.clone().fork(dev)).collect();
    // Every device reaches the reductions, or none does: a device that failed never issues
    // them, so the others must not wait for it.
    let (ready, failed) = (std::sync::Barrier::new(d), AtomicBool::new(false));
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = replicas
            .into_iter()
            .zip(chunks)
            .zip(devices)
            .map(|((replica, rows), device)| {
                let (grads, group, ready, failed) = (&grads, &group, &ready, &failed);
                s.spawn(move || {
                    let part = catch_unwind(AssertUnwindSafe(|| {
                        let (x, w) = shard_input(rows, n, width, device);
                        grads(&replica, x, w)
                    }));
                    if part.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    if collective {
                        ready.wait();
                    }
                    let (value, grads) = part.unwrap_or_else(|p| resume_unwind(p));
                    if !collective || failed.load(Ordering::SeqCst) {
                        return (value, grads);
                    }
                    (value, all_reduce_grads(&replica, grads, group))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    let mut parts = Vec::with_capacity(d);
    for r in results {
        parts.push(r.unwrap_or_else(|p| resume_unwind(p)));
    }
    if collective {
        // Every device holds the sum; the first device's copy is the one the optimizer uses.
        let value = parts.iter().map(|p| p.0).sum();
        return (
            value,
            parts.into_iter().next().expect("one shard at least").1,
        );
    }
    sum_parts(model, parts)
}

/// The shard `rows` (`k` rows of `width` values, of a batch of `n`) as a `[k, width]` tensor
/// on `device`, and its share `k / n` of the batch's mean loss.
fn shard_input(rows: &[f32], n: usize, width: usize, device: &Device) -> (Tensor<2>, f64) {
    let k = rows.len() / width;
    (
        from_vec(rows.to_vec(), [k, width], device),
        k as f64 / n as f64,
    )
}

/// The shards' losses and gradients summed, in shard order, on the first shard's device.
fn sum_parts<M: Module>(model: &M, parts: Vec<(f64, GradientsParams)>) -> (f64, GradientsParams) {
    let value = parts.iter().map(|p| p.0).sum();
    let mut grads: Vec<GradientsParams> = parts.into_iter().map(|p| p.1).collect();
    let mut merged = GradientsParams::new();
    model.visit(&mut SumGrads {
        parts: &mut grads,
        out: &mut merged,
    });
    (value, merged)
}

/// `grads` of `replica` summed over the devices of `group` (burn's all-reduce). Every device
/// visits the same module in the same order, so the collectives match up; a parameter without
/// a gradient on this device reduces zeros, so no device waits for a reduction the others
/// skip, and stays without one (the devices run the same code, so they agree on which
/// parameters have gradients). All reductions are queued before the first is waited for.
fn all_reduce_grads<M: Module>(
    replica: &M,
    mut grads: GradientsParams,
    group: &[Device],
) -> GradientsParams {
    let mut reduce = AllReduceGrads {
        grads: &mut grads,
        pending: Vec::new(),
        group,
    };
    replica.visit(&mut reduce);
    let mut out = GradientsParams::new();
    for finish in reduce.pending {
        finish(&mut out);
    }
    out
}

/// Registers one queued reduction's result (waiting for it) into the summed gradients.
type PendingGrad = Box<dyn FnOnce(&mut GradientsParams)>;

/// Queues one all-reduce per trainable parameter; `pending` registers the results.
struct AllReduceGrads<'a> {
    grads: &'a mut GradientsParams,
    pending: Vec<PendingGrad>,
    group: &'a [Device],
}

impl ModuleVisitor for AllReduceGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        let local = self.grads.remove::<D>(param.id);
        let had = local.is_some();
        let device = param.val().device().inner();
        let g = local.unwrap_or_else(|| Tensor::zeros(param.shape(), &device));
        let sum = all_reduce(g, ReduceOperation::Sum, self.group.to_vec());
        let id = param.id;
        self.pending
            .push(Box::new(move |out: &mut GradientsParams| {
                let sum = sum.resolve();
                if had {
                    out.register(id, sum);
                }
            }));
    }
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
                    // Shards of other devices are summed on the first shard's device.
                    Some(acc) => {
                        let t = t.to_device(&acc.device());
                        acc + t
                    }
                    None => t,
                });
            }
        }
        if let Some(t) = total {
            self.out.register(param.id, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever order the shards' deposits arrive in, a parameter's sum is `(g0 + g1) + g2`
    /// (shard order), a shard without a deposit skipped: values whose float32 sum depends on
    /// the order (1e8 - 1e8 + 3 is 3 only in that order) pin it down.
    #[test]
    fn ordered_sum_adds_in_shard_order_whatever_the_arrival() {
        let device = Device::default();
        let param = Param::from_tensor(Tensor::<1>::zeros([2], &device));
        let values = [[1e8f32, 1.0], [-1e8, 2.0], [3.0, 4.0]];
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            for skip in [None, Some(1)] {
                let sum = OrderedSum::default();
                for shard in order {
                    if Some(shard) == skip {
                        continue;
                    }
                    let mut g = GradientsParams::new();
                    g.register(param.id, Tensor::<1>::from_floats(values[shard], &device));
                    ShardSink { shard, sum: &sum }.deposit(&param, g);
                }
                let total = sum.into_grads(&param).remove::<1>(param.id).unwrap();
                let total = crate::tensor_util::to_vec_f64(total);
                let want = match skip {
                    None => vec![3.0, 7.0],
                    Some(_) => vec![f64::from(1e8f32 + 3.0), 5.0],
                };
                assert_eq!(
                    total, want,
                    "arrival order {order:?}, shard {skip:?} missing"
                );
            }
        }
    }
}
