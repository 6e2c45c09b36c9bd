//! Every layer: inverse(forward(x)) == x, forward log-det == -inverse log-det, and the forward
//! log-det equals log|det J| of a brute-force Jacobian — on vectors and on small images, with
//! and without a context. The layers checked are one list (`cases()`), and a guard
//! (`the_layer_list_covers_every_layer_in_src_layers`) fails when a layer type of
//! `src/layers/` is missing from it.

mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use common::*;
use glowflow::flow::{nchw_to_vec, Context, Flow};
use glowflow::layers::*;
use glowflow::linalg::{slogdet, Mat};
use glowflow::models::CouplingKind;
use glowflow::nets::{CouplingNet, GlowConvNet, Mlp, PlainConvNet};
use glowflow::tensor_util::{from_vec, to_vec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const SHAPES: [[usize; 4]; 3] = [[5, 2, 1, 1], [5, 4, 1, 1], [3, 4, 2, 2]];

/// Every variant of a field-less enum, from a `match` that stops compiling when the enum gains
/// a variant, so the layer list cannot silently skip one.
macro_rules! every {
    ($enum:ident: $($variant:ident),+ $(,)?) => {{
        fn _exhaustive(v: $enum) {
            match v {
                $($enum::$variant)|+ => {}
            }
        }
        vec![$($enum::$variant),+]
    }};
}

/// Where a case runs and how its Jacobian is taken.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// On the autodiff device; the Jacobian by autodiff.
    Train,
    /// In evaluation (the plain device); the Jacobian by central finite differences, exact for
    /// the affine maps checked this way. A layer that normalises with batch statistics in
    /// training is an exact bijection only here.
    Eval,
}

/// One layer, as built for the check.
type Build = Box<dyn Fn() -> Box<dyn Flow>>;

/// One entry of the layer list: a layer built with fixed seeds, checked at an input of `shape`
/// drawn with `seed` and, when `context > 0`, a context `[N, context]`.
struct Case {
    /// The `Flow` types of `src/layers/` the case runs through (the guard's coverage).
    types: Vec<&'static str>,
    /// What sets the case apart from the others of its types.
    form: String,
    shape: [usize; 4],
    context: usize,
    seed: u64,
    mode: Mode,
    build: Build,
}

impl Case {
    /// A case of `types` at inputs of `shape` drawn with `seed`: no context, on the autodiff
    /// device.
    fn new(
        types: &[&'static str],
        form: impl Into<String>,
        shape: [usize; 4],
        seed: u64,
        build: impl Fn() -> Box<dyn Flow> + 'static,
    ) -> Case {
        Case {
            types: types.to_vec(),
            form: form.into(),
            shape,
            context: 0,
            seed,
            mode: Mode::Train,
            build: Box::new(build),
        }
    }

    /// The case with a context of `k` columns.
    fn context(self, k: usize) -> Case {
        Case { context: k, ..self }
    }

    /// The case in evaluation ([`Mode::Eval`]).
    fn eval(self) -> Case {
        Case {
            mode: Mode::Eval,
            ..self
        }
    }

    fn name(&self) -> String {
        format!(
            "{} [{}] {:?} ctx {}",
            self.types.join("/"),
            self.form,
            self.shape,
            self.context
        )
    }
}

/// A context `[n, k]` (none for `k = 0`), uniform in [-1.5, 1.5).
fn context(n: usize, k: usize, seed: u64, device: &Device) -> Option<Tensor<2>> {
    (k > 0).then(|| nchw_to_vec(random_input([n, k, 1, 1], seed, device)))
}

/// `layer` after its data-dependent initialisation (when it has one) from a batch like the
/// check's inputs, with every trainable parameter perturbed by `noise`, so that no
/// zero-initialised part leaves it the identity.
fn ready<L: Flow + Module + 'static>(
    mut layer: L,
    shape: [usize; 4],
    k: usize,
    noise: f32,
    seed: u64,
) -> Box<dyn Flow> {
    if layer.needs_data_init() {
        let device = ad_device();
        let [_, c, h, w] = shape;
        let x = random_input([64, c, h, w], seed + 1000, &device)
            .mul_scalar(2.0)
            .add_scalar(0.5);
        let ctx = context(64, k, seed + 2000, &device);
        layer.data_init(&x, ctx.as_ref());
        assert!(!layer.needs_data_init(), "data_init left work undone");
    }
    Box::new(perturb(layer, noise, seed))
}

/// The layer type each [`Permutation`] builds (the match fails to compile on a new variant).
fn permutation_type(p: Permutation) -> &'static str {
    match p {
        Permutation::Lu => "InvConv1x1Lu",
        Permutation::Plain => "InvConv1x1",
        Permutation::Shuffle => "Shuffle",
        Permutation::Reverse => "Reverse",
    }
}

/// The kinds of coupling network.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Net {
    Mlp,
    Conv,
    PlainConv,
}

/// The [`Net`] of a network (the match fails to compile when `CouplingNet` gains a variant).
fn net_kind(net: &CouplingNet) -> Net {
    match net {
        CouplingNet::Mlp(_) => Net::Mlp,
        CouplingNet::Conv(_) => Net::Conv,
        CouplingNet::PlainConv(_) => Net::PlainConv,
    }
}

/// A fresh network of kind `net` from `cin` to `cout` channels (the MLP for vectors, the CNNs
/// for images); its output layer is zero-initialised, as in the models.
fn net(net: Net, cin: usize, cout: usize, seed: u64) -> CouplingNet {
    let (device, mut r) = (ad_device(), rng(seed));
    let built = match net {
        Net::Mlp => CouplingNet::Mlp(Mlp::new(cin, cout, 16, 2, true, &mut r, &device)),
        Net::Conv => CouplingNet::Conv(GlowConvNet::new(cin, cout, 8, &mut r, &device)),
        Net::PlainConv => CouplingNet::PlainConv(PlainConvNet::new(cin, cout, 8, &mut r, &device)),
    };
    assert_eq!(net_kind(&built), net);
    built
}

/// The coupling of `kind` over `channels` channels with a context of `k` columns, as the
/// vector models build it (`Tanh`: the tutorial's scale; `Sigmoid`: Glow's, of form `scale`;
/// `Additive`: NICE's), its network of kind `net`.
fn coupling(
    kind: CouplingKind,
    scale: AffineScale,
    net_of: Net,
    channels: usize,
    k: usize,
    swap: bool,
    seed: u64,
) -> Layer {
    let cond = coupling::conditioning_channels(channels, swap) + k;
    let out = coupling::transformed_channels(channels, swap);
    match kind {
        CouplingKind::Tanh => Layer::AffineCoupling(AffineCoupling::new(
            net(net_of, cond, 2 * out, seed),
            Some(TanhScale::new(&ad_device())),
            swap,
            scale,
        )),
        CouplingKind::Sigmoid => Layer::AffineCoupling(AffineCoupling::new(
            net(net_of, cond, 2 * out, seed),
            None,
            swap,
            scale,
        )),
        CouplingKind::Additive => {
            Layer::AdditiveCoupling(AdditiveCoupling::new(net(net_of, cond, out, seed), swap))
        }
        CouplingKind::Spline => {
            let p = glowflow::layers::spline::params_per_value(SPLINE_TEST_BINS);
            Layer::SplineCoupling(glowflow::layers::spline::SplineCoupling::new(
                net(net_of, cond, out * p, seed),
                swap,
                SPLINE_TEST_BINS,
                None,
            ))
        }
    }
}

/// Bins of the spline couplings under test (few, so every bin is visited by the inputs).
const SPLINE_TEST_BINS: usize = 4;

/// Every layer to check, in every form: the one list the round-trip, log-determinant and
/// Jacobian checks iterate.
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();

    for (k, s) in SHAPES.iter().copied().enumerate() {
        let k = k as u64;
        cases.push(Case::new(
            &["ActNorm"],
            "initialised from data",
            s,
            k,
            move || {
                let device = ad_device();
                let mut a = ActNorm::new(s[1], &device);
                a.initialize(
                    &random_input([64, s[1], s[2], s[3]], 100 + k, &device)
                        .mul_scalar(3.0)
                        .add_scalar(0.7),
                );
                Box::new(perturb(a, 0.3, k))
            },
        ));
    }

    // The mixing layers, as the models build them (through `Layer`).
    for p in every!(Permutation: Lu, Plain, Shuffle, Reverse) {
        for (k, s) in SHAPES.iter().copied().enumerate() {
            let k = k as u64;
            let types = ["Layer", permutation_type(p)];
            cases.push(Case::new(&types, format!("{p:?}"), s, k, move || {
                let layer = p.layer(s[1], &mut rng(k), &ad_device());
                assert_eq!(layer.name(), permutation_type(p));
                Box::new(perturb(layer, 0.2, k))
            }));
        }
    }

    // Couplings of every kind and scale form, both halves, every network, with and without a
    // context (conditional couplings).
    for kind in every!(CouplingKind: Tanh, Sigmoid, Additive, Spline) {
        let (scales, types) = match kind {
            CouplingKind::Sigmoid => (
                every!(AffineScale: Glow, Bounded),
                &["Layer", "AffineCoupling"][..],
            ),
            CouplingKind::Tanh => (
                vec![AffineScale::Bounded],
                &["Layer", "AffineCoupling", "TanhScale"][..],
            ),
            CouplingKind::Additive => (
                vec![AffineScale::Bounded],
                &["Layer", "AdditiveCoupling"][..],
            ),
            CouplingKind::Spline => (vec![AffineScale::Bounded], &["Layer", "SplineCoupling"][..]),
        };
        for scale in scales {
            for net_of in every!(Net: Mlp, Conv, PlainConv) {
                let shapes = match net_of {
                    Net::Mlp => &SHAPES[..2],
                    Net::Conv | Net::PlainConv => &SHAPES[2..],
                };
                for (&s, swap, k) in shapes
                    .iter()
                    .flat_map(|s| [(s, false), (s, true)])
                    .flat_map(|(s, swap)| [(s, swap, 0), (s, swap, 2)])
                {
                    let form = format!("{kind:?} {scale:?} {net_of:?} swap={swap}");
                    let case = Case::new(types, form, s, 11, move || {
                        let l = coupling(kind, scale, net_of, s[1], k, swap, 3);
                        // The CNNs' 3x3 kernels sum 9x as many perturbed weights.
                        let noise = if net_of == Net::Mlp { 0.5 } else { 0.1 };
                        ready(l, s, k, noise, 4)
                    });
                    cases.push(case.context(k));
                }
            }
        }
    }

    // One column (a one-dimensional density or conditional, as the vector models build it):
    // nothing conditions, the spline's MLP reads a constant 1 and the context.
    for (s, k, net_of) in [([5, 1, 1, 1], 0, Net::Mlp), ([5, 1, 1, 1], 2, Net::Mlp)] {
        let form = format!("one channel {net_of:?}");
        let case = Case::new(&["Layer", "SplineCoupling"], form, s, 12, move || {
            let p = glowflow::layers::spline::params_per_value(SPLINE_TEST_BINS);
            let l = Layer::SplineCoupling(glowflow::layers::spline::SplineCoupling::new(
                net(net_of, 1 + k, p, 5),
                false,
                SPLINE_TEST_BINS,
                None,
            ));
            let noise = if net_of == Net::Mlp { 0.5 } else { 0.1 };
            ready(l, s, k, noise, 6)
        });
        cases.push(case.context(k));
    }

    // Spline couplings followed by their affine stage (the vector models' default), several
    // columns (both halves) and one, with and without a context.
    let shapes = SHAPES[..2].iter().flat_map(|&s| [(s, false), (s, true)]);
    for (s, swap) in shapes.chain([([5, 1, 1, 1], false)]) {
        for k in [0, 2] {
            let form = format!("with its affine stage, {} channels swap={swap}", s[1]);
            let types = &["Layer", "SplineCoupling", "TanhScale"][..];
            let case = Case::new(types, form, s, 13, move || {
                let p = glowflow::layers::spline::params_per_value(SPLINE_TEST_BINS);
                let (cond, out) = match s[1] {
                    1 => (1, 1),
                    c => (
                        coupling::conditioning_channels(c, swap),
                        coupling::transformed_channels(c, swap),
                    ),
                };
                let device = ad_device();
                let mut scale = TanhScale::new(&device);
                // Away from alpha = 1, beta = 0, so the learned scalars are exercised.
                scale.alpha = glowflow::tensor_util::trainable(Tensor::full([1], 0.7, &device));
                scale.beta = glowflow::tensor_util::trainable(Tensor::full([1], 0.2, &device));
                let l = Layer::SplineCoupling(glowflow::layers::spline::SplineCoupling::new(
                    net(Net::Mlp, cond + k, out * (p + 2), 7),
                    swap,
                    SPLINE_TEST_BINS,
                    Some(scale),
                ));
                ready(l, s, k, 0.5, 6)
            });
            cases.push(case.context(k));
        }
    }

    for (s, seed) in [([3, 2, 4, 4], 21), ([2, 1, 2, 2], 22)] {
        cases.push(Case::new(&["Squeeze"], "2x2 blocks", s, seed, || {
            Box::new(Squeeze)
        }));
    }

    for (s, seed) in [([5, 4, 1, 1], 30), ([3, 4, 2, 2], 31)] {
        cases.push(Case::new(
            &["Standardize"],
            "far from (0, 1)",
            s,
            seed,
            || {
                let mut st = Standardize::new(4, &ad_device());
                st.set(&[1.0, -2.0, 0.5, 30.0], &[2.0, 0.5, 1.5, 40.0]);
                Box::new(st)
            },
        ));
    }

    // Train-mode passes set non-trivial running statistics; evaluation then uses them.
    for (k, s) in SHAPES.iter().copied().enumerate() {
        let k = k as u64;
        let case = Case::new(&["FlowBatchNorm"], "running statistics", s, k, move || {
            let ad = ad_device();
            let bn = perturb(FlowBatchNorm::new(s[1], &ad), 0.3, k);
            for i in 0..30 {
                let x = random_input([64, s[1], s[2], s[3]], 50 + i, &ad)
                    .mul_scalar(2.0)
                    .add_scalar(0.4);
                let _ = bn.forward(x);
            }
            Box::new(bn.valid())
        });
        cases.push(case.eval());
    }

    // A sequence of one layer of each kind `Layer` holds that needs no batch statistics (the
    // batch norm has its own cases), initialised from data as the models are.
    let types = [
        "FlowSequence",
        "Layer",
        "ActNorm",
        "InvConv1x1Lu",
        "AffineCoupling",
        "TanhScale",
        "InvConv1x1",
        "AdditiveCoupling",
        "Shuffle",
        "Reverse",
    ];
    for (s, k) in [([5, 2, 1, 1], 0), ([5, 4, 1, 1], 2)] {
        let case = Case::new(&types, "one of each layer", s, 40, move || {
            let (device, c) = (ad_device(), s[1]);
            let mut r = rng(41);
            let tanh = CouplingKind::Tanh;
            let (sigmoid, additive) = (CouplingKind::Sigmoid, CouplingKind::Additive);
            let bounded = AffineScale::Bounded;
            let layers = vec![
                Layer::ActNorm(ActNorm::new(c, &device)),
                Permutation::Lu.layer(c, &mut r, &device),
                coupling(tanh, bounded, Net::Mlp, c, k, false, 42),
                Permutation::Plain.layer(c, &mut r, &device),
                coupling(additive, bounded, Net::Mlp, c, k, true, 43),
                Permutation::Shuffle.layer(c, &mut r, &device),
                coupling(sigmoid, AffineScale::Glow, Net::Mlp, c, k, true, 44),
                Permutation::Reverse.layer(c, &mut r, &device),
            ];
            ready(FlowSequence::new(layers), s, k, 0.2, 45)
        });
        cases.push(case.context(k));
    }
    cases
}

/// The three properties of one case: the exact inverse, opposite log-determinants, and the
/// forward log-determinant equal to `log|det J|` of the brute-force Jacobian; with a context,
/// also that the context is read (another context moves the output).
fn check(case: &Case) -> Result<(), String> {
    let layer = (case.build)();
    let device = match case.mode {
        Mode::Train => ad_device(),
        Mode::Eval => plain_device(),
    };
    let n = case.shape[0];
    let x = random_input(case.shape, case.seed, &device);
    let ctx = context(n, case.context, case.seed + 500, &device);
    let c: Context = ctx.as_ref();
    let (z, ld) = layer.forward_ctx(x.clone(), c);
    if ld.dims() != [n] {
        return Err(format!("log-det shaped {:?}, not [{n}]", ld.dims()));
    }
    let (back, ld_inv) = layer.inverse_ctx(z.clone(), c);
    let err = max_abs_diff(back, x.clone());
    // NaN fails every comparison but `is_nan`.
    if err.is_nan() || err > 1e-4 {
        return Err(format!("inverse error {err}"));
    }
    let sym = max_abs_diff1(ld.clone(), ld_inv.neg());
    if sym.is_nan() || sym > 1e-4 {
        return Err(format!("forward/inverse log-det mismatch {sym}"));
    }
    let f = |t: Tensor<4>| layer.forward_ctx(t, c).0;
    let brute = match case.mode {
        Mode::Train => jacobian_logdets(f, x.clone()),
        Mode::Eval => fd_jacobian_logdets(f, x.clone(), 1e-2),
    };
    for (a, b) in to_vec(ld).iter().zip(&brute) {
        let diff = (*a as f64 - b).abs();
        if diff.is_nan() || diff > 1e-3 {
            return Err(format!("log-det {a} vs Jacobian {b}"));
        }
    }
    if ctx.is_some() {
        let other = context(n, case.context, case.seed + 501, &device);
        let moved = max_abs_diff(layer.forward_ctx(x, other.as_ref()).0, z);
        if moved.is_nan() || moved <= 1e-3 {
            return Err(format!("another context moves the output by only {moved}"));
        }
    }
    Ok(())
}

#[test]
fn every_layer_inverts_with_opposite_logdets_equal_to_its_jacobians() {
    let cases = cases();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| check(case).err().map(|e| format!("{}: {e}", case.name())))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} layer cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The sources of `src/layers/`, read at compile time (the guard's view of the layers).
const LAYER_SOURCES: [(&str, &str); 9] = [
    ("mod", include_str!("../src/layers/mod.rs")),
    ("actnorm", include_str!("../src/layers/actnorm.rs")),
    ("batchnorm", include_str!("../src/layers/batchnorm.rs")),
    ("coupling", include_str!("../src/layers/coupling.rs")),
    ("inv_conv", include_str!("../src/layers/inv_conv.rs")),
    ("permute", include_str!("../src/layers/permute.rs")),
    ("spline", include_str!("../src/layers/spline.rs")),
    ("squeeze", include_str!("../src/layers/squeeze.rs")),
    ("standardize", include_str!("../src/layers/standardize.rs")),
];

/// Public types of `src/layers/` that are not flows themselves, and where the list checks
/// them.
const NOT_LAYERS: [(&str, &str); 3] = [
    (
        "AffineScale",
        "the sigmoid scale's form: every form has AffineCoupling cases",
    ),
    (
        "TanhScale",
        "the tutorial's scale inside AffineCoupling: its Tanh cases",
    ),
    (
        "Permutation",
        "builds the mixing layers: every variant has cases",
    ),
];

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The names `pub use` statements of `src` bring in (`a::{B, C}`, `a::B`, `a::B as D`).
fn pub_use_names(src: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in src.match_indices("pub use ") {
        let stmt = &src[i + "pub use ".len()..];
        let stmt = &stmt[..stmt.find(';').expect("a `pub use` ends with `;`")];
        let items = match (stmt.find('{'), stmt.rfind('}')) {
            (Some(a), Some(b)) => stmt[a + 1..b].to_string(),
            _ => stmt.rsplit("::").next().unwrap_or(stmt).to_string(),
        };
        for item in items.split(',') {
            let name = item.rsplit(" as ").next().unwrap_or(item).trim();
            if !name.is_empty() && name != "self" {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// The types of `src` that implement `Flow` (`impl Flow for X`, `impl crate::flow::Flow for X`).
fn flow_impls(src: &str) -> Vec<String> {
    src.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("impl"))
        .filter_map(|l| {
            l.find("Flow for ")
                .map(|i| ident(&l[i + "Flow for ".len()..]))
        })
        .map(str::to_string)
        .collect()
}

/// The types `src` declares public (`pub struct X`, `pub enum X`).
fn declared_types(src: &str) -> Vec<String> {
    src.lines()
        .map(str::trim)
        .filter_map(|l| {
            l.strip_prefix("pub struct ")
                .or_else(|| l.strip_prefix("pub enum "))
        })
        .map(|rest| ident(rest).to_string())
        .collect()
}

/// A type's name (`CamelCase`), not a constant's, function's or module's.
fn is_type_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase()) && name.chars().any(|c| c.is_lowercase())
}

#[test]
fn the_layer_list_covers_every_layer_in_src_layers() {
    let covered: std::collections::BTreeSet<&str> =
        cases().iter().flat_map(|c| c.types.clone()).collect();
    let (_, mod_rs) = LAYER_SOURCES[0];

    // Every module of src/layers/ is read here.
    let modules: Vec<&str> = mod_rs
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(ident)
        .collect();
    for m in &modules {
        assert!(
            LAYER_SOURCES.iter().any(|(name, _)| name == m),
            "src/layers/{m}.rs is not in LAYER_SOURCES: add it, and its layers to cases()"
        );
    }
    assert_eq!(
        LAYER_SOURCES.len(),
        modules.len() + 1,
        "a stale LAYER_SOURCES entry"
    );

    // Every type that implements Flow there has cases.
    let flows: Vec<String> = LAYER_SOURCES
        .iter()
        .flat_map(|(_, src)| flow_impls(src))
        .collect();
    assert!(flows.len() >= 12, "found only the flows {flows:?}");
    for f in &flows {
        assert!(
            covered.contains(f.as_str()),
            "layer {f} implements Flow but cases() has no case for it"
        );
    }

    // Every type src/layers/ declares or mod.rs exports is a checked flow, or a part the list
    // covers.
    let mut exported = pub_use_names(mod_rs);
    assert!(exported.len() >= 10, "read only the exports {exported:?}");
    exported.extend(
        LAYER_SOURCES
            .iter()
            .flat_map(|(_, src)| declared_types(src)),
    );
    for name in exported.iter().filter(|n| is_type_name(n)) {
        let part = NOT_LAYERS.iter().any(|(n, _)| n == name);
        assert!(
            flows.contains(name) || part,
            "src/layers/mod.rs exports {name}, neither a Flow nor in NOT_LAYERS"
        );
        assert!(
            covered.contains(name.as_str()) || part,
            "exported layer {name} has no case"
        );
    }
    for (name, _) in NOT_LAYERS {
        assert!(
            exported.iter().any(|e| e == name),
            "NOT_LAYERS names {name}, which src/layers/ does not declare"
        );
    }
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn actnorm_initialisation_normalises_each_channel() {
    let device = ad_device();
    let x = random_input([256, 3, 4, 4], 7, &device);
    // Give channels very different scales and offsets.
    let scale = Tensor::<1>::from_floats([0.1, 5.0, 40.0], &device).reshape([1, 3, 1, 1]);
    let shift = Tensor::<1>::from_floats([-3.0, 0.5, 100.0], &device).reshape([1, 3, 1, 1]);
    let x = x * scale + shift;
    let mut a = ActNorm::new(3, &device);
    assert!(!a.is_initialized());
    a.initialize(&x);
    assert!(a.is_initialized());
    let y = to_vec(a.forward(x).0);
    for c in 0..3 {
        let vals: Vec<f64> = (0..256)
            .flat_map(|n| (0..16).map(move |p| (n, p)))
            .map(|(n, p)| y[(n * 3 + c) * 16 + p] as f64)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (vals.len() - 1) as f64;
        assert!(mean.abs() < 1e-4, "channel {c} mean {mean}");
        assert!(
            (var.sqrt() - 1.0).abs() < 1e-3,
            "channel {c} std {}",
            var.sqrt()
        );
    }
}

#[test]
fn lu_logdet_equals_log_abs_det_of_weight() {
    let device = ad_device();
    for c in [2, 3, 8] {
        let l = perturb(InvConv1x1Lu::new(c, &mut rng(c as u64), &device), 0.3, 9);
        let w = Mat::from_f32(c, &to_vec(l.weight()));
        let (_, expected) = slogdet(&w).unwrap();
        let x = random_input([2, c, 1, 1], 1, &device);
        let ld = to_vec(l.forward(x).1);
        assert!(
            (ld[0] as f64 - expected).abs() < 1e-4,
            "C={c}: {} vs {expected}",
            ld[0]
        );
        // Per pixel: an H x W image multiplies it by H * W.
        let x = random_input([2, c, 3, 2], 1, &device);
        let ld = to_vec(l.forward(x).1);
        assert!((ld[0] as f64 - 6.0 * expected).abs() < 1e-3);
    }
}

#[test]
fn plain_conv_logdet_gradient_is_inverse_transpose() {
    // d/dW log|det W| = W^-T: the surrogate must give exactly that gradient.
    let device = ad_device();
    let l = perturb(InvConv1x1::new(3, &mut rng(5), &device), 0.3, 5);
    let x = random_input([1, 3, 1, 1], 2, &device);
    let grads = l.forward(x).1.sum().backward();
    let g = to_vec(l.weight.val().grad(&grads).unwrap());
    let w = Mat::from_f32(3, &to_vec(l.weight.val()));
    let inv_t = glowflow::linalg::inverse(&w).unwrap().transpose();
    for (a, b) in g.iter().zip(&inv_t.a) {
        assert!((*a as f64 - b).abs() < 1e-4);
    }
}

fn mlp(cond: usize, out: usize, seed: u64) -> CouplingNet {
    let device = ad_device();
    CouplingNet::Mlp(Mlp::new(cond, out, 16, 2, true, &mut rng(seed), &device))
}

#[test]
fn coupling_starts_as_identity() {
    // Zero-initialised output layer: every coupling begins as the identity map.
    let device = ad_device();
    let ts = Some(TanhScale::new(&device));
    let layer = AffineCoupling::new(mlp(1, 2, 3), ts, false, AffineScale::Bounded);
    let x = random_input([8, 2, 1, 1], 3, &device);
    let (z, ld) = layer.forward(x.clone());
    assert!(max_abs_diff(z, x) == 0.0);
    assert!(to_vec(ld).iter().all(|v| *v == 0.0));
}

#[test]
fn bounded_affine_scale_floors_the_scale_and_keeps_glows_form_above_it() {
    let device = ad_device();
    let raw_vals = [-1.0e4f32, -1100.0, -40.0, -2.0, 0.0, 30.0];
    let raw = from_vec(raw_vals.to_vec(), [1, 6, 1, 1], &device);
    let (ls_b, s_b) = AffineScale::Bounded.log_scale_and_scale(raw.clone());
    let (ls_g, _) = AffineScale::Glow.log_scale_and_scale(raw);
    let (ls_b, s_b, ls_g) = (to_vec(ls_b), to_vec(s_b), to_vec(ls_g));
    let eps = MIN_AFFINE_SCALE;
    for (i, &r) in raw_vals.iter().enumerate() {
        let sig = 1.0 / (1.0 + (-(r as f64 + 2.0)).exp());
        let want = eps + (1.0 - eps) * sig;
        assert!(
            (s_b[i] as f64 - want).abs() <= 1e-6 * want,
            "s({r}) = {}, want {want}",
            s_b[i]
        );
        assert!((ls_b[i] as f64 - want.ln()).abs() <= 1e-5, "log s({r})");
        // Never below ln ε: the inverse multiplies by at most 1/ε.
        assert!(
            ls_b[i] as f64 >= eps.ln() - 1e-6,
            "log s({r}) = {} < ln ε",
            ls_b[i]
        );
    }
    // Glow's exact form is unbounded below: raw = -1100 gives log s = -1098.
    assert!((ls_g[1] + 1098.0).abs() < 1e-2, "{}", ls_g[1]);
    // At raw 0 the bounded scale is Glow's to within ε: training starts where Glow's does.
    assert!((ls_b[4] - ls_g[4]).abs() < 2e-3);

    // A coupling whose network returns enormous raw scales (weights perturbed by ±300): the
    // bounded inverse of a normal draw stays finite and within 1/ε of |y - shift|; Glow's
    // overflows.
    let x = random_input([16, 4, 1, 1], 9, &device);
    let mut results = Vec::new();
    for form in [AffineScale::Bounded, AffineScale::Glow] {
        let layer = perturb(
            AffineCoupling::new(mlp(2, 4, 3), None, false, form),
            300.0,
            4,
        );
        let (back, ld) = layer.inverse(x.clone());
        let ld = to_vec(ld);
        results.push((to_vec(back), ld));
    }
    let (bounded, ld_b) = &results[0];
    assert!(
        bounded.iter().all(|v| v.is_finite()),
        "bounded inverse not finite"
    );
    let per_sample_bound = 2.0 * (1.0 / eps).ln() + 1e-3;
    assert!(ld_b
        .iter()
        .all(|v| v.is_finite() && (*v as f64) <= per_sample_bound));
    let (glow, ld_g) = &results[1];
    assert!(
        glow.iter().any(|v| !v.is_finite()) || ld_g.iter().any(|v| *v as f64 > 100.0),
        "Glow's exact form was expected to expand far beyond 1/ε here"
    );
}

#[test]
fn flow_batchnorm_train_mode_uses_batch_statistics() {
    let ad = ad_device();
    let bn = perturb(FlowBatchNorm::new(2, &ad), 0.3, 1);
    let x = random_input([512, 2, 1, 1], 3, &ad)
        .mul_scalar(2.0)
        .add_scalar(1.0);
    let (z, ld) = bn.forward(x.clone());
    let xs = to_vec(x);
    let zs = to_vec(z);
    let lg = to_vec(bn.log_gamma.val());
    let mut expected = 0.0;
    for c in 0..2 {
        let v: Vec<f64> = (0..512).map(|n| xs[n * 2 + c] as f64).collect();
        let mean = v.iter().sum::<f64>() / 512.0;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 512.0;
        expected += lg[c] as f64 - 0.5 * (var + 1e-5).ln();
        // Output of the batch has mean beta and std exp(log_gamma).
        let out: Vec<f64> = (0..512).map(|n| zs[n * 2 + c] as f64).collect();
        let om = out.iter().sum::<f64>() / 512.0;
        let os = (out.iter().map(|a| (a - om).powi(2)).sum::<f64>() / 512.0).sqrt();
        assert!((os - (lg[c] as f64).exp()).abs() < 1e-3);
    }
    assert!((to_vec(ld)[0] as f64 - expected).abs() < 1e-4);
}

/// The GEMM formulations of `Conv2d` (1x1, im2col, shifted responses) against the backend's
/// direct conv2d: same outputs and the same gradients for input, weights and bias.
#[test]
fn conv2d_gemm_paths_match_direct_convolution() {
    use glowflow::nets::Conv2d;
    let device = ad_device();
    // (c_in, c_out, k): 1x1, im2col (c_in <= c_out), shifted responses (c_in > c_out),
    // Winograd (wide on both sides, small images; `ops::winograd::preferred`).
    for (cin, cout, k, h, w) in [
        (5, 7, 1, 5, 6),
        (3, 8, 3, 5, 6),
        (8, 3, 3, 5, 6),
        (6, 6, 3, 5, 6),
        (512, 512, 3, 4, 3),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(cin as u64 * 31 + k as u64);
        let conv = perturb(Conv2d::new(cin, cout, k, true, &mut rng, &device), 0.3, 9);
        let x = random_input([2, cin, h, w], 4, &device).require_grad();
        // A random linear functional of the output, so every output element gets a gradient.
        let r = random_input([2, cout, h, w], 5, &device);
        if cin == 512 && glowflow::tensor_util::is_flex_device(&device) {
            assert!(glowflow::ops::winograd::preferred(cin, cout, h, w, &device));
        }
        let grads_of = |y: Tensor<4>| {
            let g = (y * r.clone()).sum().backward();
            let gx = x.grad(&g).unwrap();
            let gw = conv.weight.val().grad(&g).unwrap();
            let gb = conv.bias.as_ref().unwrap().val().grad(&g).unwrap();
            (to_vec(gx), to_vec(gw), to_vec(gb))
        };
        let (ours, direct) = (conv.forward(x.clone()), conv.forward_direct(x.clone()));
        // Relative to the largest value: 512 channels sum 4,608 products per output.
        let scale = |v: &[f32]| v.iter().fold(1f32, |m, a| m.max(a.abs()));
        let err = max_abs_diff(ours.clone(), direct.clone()) / scale(&to_vec(direct.clone()));
        assert!(
            err <= 1e-5,
            "{cin}->{cout} k{k}: forward differs by {err} (relative)"
        );
        let (a, b) = (grads_of(ours), grads_of(direct));
        for (name, u, v) in [
            ("x", &a.0, &b.0),
            ("weight", &a.1, &b.1),
            ("bias", &a.2, &b.2),
        ] {
            let e = u.iter().zip(v).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale(v);
            assert!(
                e <= 1e-5,
                "{cin}->{cout} k{k}: d/d{name} differs by {e} (relative)"
            );
        }
    }
}

/// Builds a test input on demand.
type InputFn<'a> = Box<dyn Fn() -> Tensor<4> + Sync + 'a>;

/// The fused convolution (`ops::conv`: one node, hand-written backward) against the same GEMMs
/// as tensor operations and the backend's conv2d: every case (1x1, im2col, shifted responses),
/// with and without bias and ReLU, a channel slice of a wider tensor and a permuted
/// (non-contiguous) input, odd sides, one-pixel images, several images split over threads and
/// inside a single-thread pool (as data-parallel shards run), with and without autodiff.
#[test]
fn fused_conv2d_matches_tensor_op_composition() {
    use burn::tensor::module::conv2d as direct;
    use burn::tensor::ops::ConvOptions;
    use glowflow::ops::conv::{conv2d, conv2d_composed, fused_supported};
    let scale = |v: &[f32]| v.iter().fold(1f32, |m, a| m.max(a.abs()));
    let rel = |u: &[f32], v: &[f32]| {
        assert_eq!(u.len(), v.len());
        u.iter().zip(v).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale(v)
    };
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    // (n, c_in, c_out, k, h, w)
    let cases = [
        (3, 5, 7, 1, 4, 5),
        (3, 3, 8, 3, 5, 6),
        (3, 8, 3, 3, 5, 6),
        (2, 6, 6, 3, 7, 3),
        (2, 4, 9, 3, 1, 1),
        (1, 9, 2, 3, 1, 4),
        (4, 2, 5, 5, 6, 6),
        (2, 9, 2, 5, 6, 6),
        // One image with a GEMM large enough to run threaded inside.
        (1, 128, 128, 1, 16, 16),
    ];
    let fused_expected = |device: &Device| {
        glowflow::tensor_util::is_flex_device(device)
            && std::env::var("GLOWFLOW_CONV").as_deref() != Ok("composed")
    };
    for (case, &(n, cin, cout, k, h, w)) in cases.iter().enumerate() {
        let seed = case as u64 * 7;
        for device in [ad_device(), plain_device()] {
            let tracked = device.is_autodiff();
            let leaf = |t: Tensor<4>| if tracked { t.require_grad() } else { t };
            let weight = leaf(random_input([cout, cin, k, k], seed + 1, &device));
            let b = random_input([1, 1, 1, cout], seed + 2, &device).reshape([cout]);
            let b = if tracked { b.require_grad() } else { b };
            // A wider tensor whose channels 1..1+cin are the input (a coupling's half), and a
            // [N, H, W, C] tensor permuted to [N, C, H, W].
            let wide = leaf(random_input([n, cin + 2, h, w], seed + 3, &device));
            let nhwc = leaf(random_input([n, h, w, cin], seed + 4, &device));
            let r = random_input([n, cout, h, w], seed + 5, &device);
            let inputs: [(&str, InputFn); 2] = [
                ("slice", Box::new(|| wide.clone().narrow(1, 1, cin))),
                ("permuted", Box::new(|| nhwc.clone().permute([0, 3, 1, 2]))),
            ];
            for (what, x) in &inputs {
                for (with_bias, relu_out) in [(true, false), (false, true), (true, true)] {
                    let bias = with_bias.then(|| b.clone());
                    let label = format!(
                        "{n}x{cin}->{cout} k{k} {h}x{w} {what} bias {with_bias} relu {relu_out} autodiff {tracked}"
                    );
                    assert_eq!(
                        fused_supported(&x(), &weight, bias.as_ref(), k / 2),
                        fused_expected(&device),
                        "{label}: fused path taken or not as expected"
                    );
                    let run = |y: Tensor<4>| {
                        let yv = to_vec(y.clone());
                        if !tracked {
                            return (yv, vec![]);
                        }
                        let g = (y * r.clone()).sum().backward();
                        let source = if *what == "slice" { &wide } else { &nhwc };
                        let mut gs = vec![
                            to_vec(source.grad(&g).unwrap()),
                            to_vec(weight.grad(&g).unwrap()),
                        ];
                        if with_bias {
                            gs.push(to_vec(b.grad(&g).unwrap()));
                        }
                        (yv, gs)
                    };
                    let fused = run(conv2d(x(), weight.clone(), bias.clone(), k / 2, relu_out));
                    // Deterministic: the same call gives the same bits.
                    let again = run(conv2d(x(), weight.clone(), bias.clone(), k / 2, relu_out));
                    assert!(fused == again, "{label}: a second call differs");
                    let one_thread = single.install(|| {
                        run(conv2d(x(), weight.clone(), bias.clone(), k / 2, relu_out))
                    });
                    let plain = run(conv2d_composed(
                        x(),
                        weight.clone(),
                        bias.clone(),
                        None,
                        k / 2,
                        relu_out,
                    ));
                    let reference = direct(
                        x(),
                        weight.clone(),
                        bias.clone(),
                        ConvOptions::new([1, 1], [k / 2, k / 2], [1, 1], 1),
                    );
                    let reference = if relu_out {
                        burn::tensor::activation::relu(reference)
                    } else {
                        reference
                    };
                    let e = rel(&fused.0, &to_vec(reference));
                    assert!(e <= 1e-5, "{label}: output differs from conv2d by {e}");
                    if relu_out {
                        assert!(
                            fused.0.contains(&0.0) && fused.0.iter().any(|&v| v > 0.0),
                            "{label}"
                        );
                    }
                    for (other, name) in [(&plain, "composition"), (&one_thread, "one thread")] {
                        let e = rel(&fused.0, &other.0);
                        assert!(e <= 1e-5, "{label}: output differs from the {name} by {e}");
                        for (j, (u, v)) in fused.1.iter().zip(&other.1).enumerate() {
                            let e = rel(u, v);
                            assert!(
                                e <= 1e-5,
                                "{label}: gradient {j} differs from the {name} by {e}"
                            );
                        }
                    }
                    if !(tracked && *what == "slice" && with_bias && relu_out) {
                        continue;
                    }
                    // Only some operands tracked: the backward computes the wanted gradients.
                    let partial = |input_tracked: bool, fused: bool| {
                        // Fresh operands each time: a backward pass consumes their graph.
                        let (xin, wt) = match input_tracked {
                            true => (x(), weight.clone().detach()),
                            false => (x().detach(), weight.clone()),
                        };
                        let bias = Some(b.clone());
                        let y = match fused {
                            true => conv2d(xin, wt, bias, k / 2, true),
                            false => conv2d_composed(xin, wt, bias, None, k / 2, true),
                        };
                        let g = (y * r.clone()).sum().backward();
                        [
                            wide.grad(&g).map(to_vec),
                            weight.grad(&g).map(to_vec),
                            b.grad(&g).map(to_vec),
                        ]
                    };
                    for (input_tracked, tag) in
                        [(false, "input untracked"), (true, "weight untracked")]
                    {
                        let ours = partial(input_tracked, true);
                        let theirs = partial(input_tracked, false);
                        for (j, (u, v)) in ours.iter().zip(&theirs).enumerate() {
                            match (u, v) {
                                (Some(u), Some(v)) => {
                                    let e = rel(u, v);
                                    assert!(
                                        e <= 1e-5,
                                        "{label} {tag}: gradient {j} differs by {e}"
                                    );
                                }
                                (None, None) => {}
                                _ => panic!("{label} {tag}: gradient {j} present on one side only"),
                            }
                        }
                        assert!(ours[2].is_some(), "{label} {tag}: no bias gradient");
                    }
                }
            }
        }
    }
}

/// The fused convolution with ActNorm's shift and log-scale after it (`conv2d_scaled`, as
/// Glow's coupling network runs `conv -> ActNorm -> ReLU`) against the tensor-op composition,
/// and `Conv2d::forward_actnorm` against `relu(ActNorm(conv2d(x)))` with the backend's
/// convolution: outputs and the gradients of the input, the kernel, the shift and the
/// log-scale, within 1e-5 of the largest value.
#[test]
fn fused_conv2d_with_actnorm_matches_composition() {
    use glowflow::nets::Conv2d;
    use glowflow::ops::conv::{conv2d_composed, conv2d_scaled};
    let device = ad_device();
    let scale = |v: &[f32]| v.iter().fold(1f32, |m, a| m.max(a.abs()));
    let rel = |u: &[f32], v: &[f32]| {
        assert_eq!(u.len(), v.len());
        u.iter().zip(v).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale(v)
    };
    // (n, c_in, c_out, k, h, w): im2col, 1x1, shifted responses.
    for (n, cin, cout, k, h, w) in [(3, 3, 8, 3, 5, 6), (2, 6, 6, 1, 4, 4), (2, 9, 4, 3, 3, 5)] {
        let seed = (cin * 10 + cout) as u64;
        let wide = random_input([n, cin + 1, h, w], seed, &device).require_grad();
        let weight = random_input([cout, cin, k, k], seed + 1, &device).require_grad();
        let shift = random_input([1, 1, 1, cout], seed + 2, &device)
            .reshape([cout])
            .require_grad();
        let logs = random_input([1, 1, 1, cout], seed + 3, &device)
            .reshape([cout])
            .mul_scalar(0.5)
            .require_grad();
        let r = random_input([n, cout, h, w], seed + 4, &device);
        let x = || wide.clone().narrow(1, 1, cin);
        for relu_out in [false, true] {
            let label = format!("{n}x{cin}->{cout} k{k} relu {relu_out}");
            let run = |y: Tensor<4>| {
                let yv = to_vec(y.clone());
                let g = (y * r.clone()).sum().backward();
                let gs = [
                    to_vec(wide.grad(&g).unwrap()),
                    to_vec(weight.grad(&g).unwrap()),
                    to_vec(shift.grad(&g).unwrap()),
                    to_vec(logs.grad(&g).unwrap()),
                ];
                (yv, gs)
            };
            let (s, l) = (Some(shift.clone()), Some(logs.clone()));
            let fused = run(conv2d_scaled(
                x(),
                weight.clone(),
                s.clone(),
                l.clone(),
                k / 2,
                relu_out,
            ));
            let plain = run(conv2d_composed(x(), weight.clone(), s, l, k / 2, relu_out));
            let e = rel(&fused.0, &plain.0);
            assert!(e <= 1e-5, "{label}: output differs by {e}");
            for (name, (u, v)) in ["x", "weight", "shift", "log-scale"]
                .iter()
                .zip(fused.1.iter().zip(&plain.1))
            {
                let e = rel(u, v);
                assert!(e <= 1e-5, "{label}: d/d{name} differs by {e}");
            }
        }
    }
    // Through the network's own types: Conv2d + ActNorm.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let conv = Conv2d::new(4, 16, 3, false, &mut rng, &device);
    let mut norm = ActNorm::new(16, &device);
    let x = random_input([3, 4, 6, 5], 6, &device);
    norm.initialize(&conv.forward_direct(x.clone()));
    let ours = conv.forward_actnorm(x.clone(), &norm, true);
    let reference = burn::tensor::activation::relu(norm.forward(conv.forward_direct(x)).0);
    let e = rel(&to_vec(ours.clone()), &to_vec(reference));
    assert!(
        e <= 1e-5,
        "Conv2d::forward_actnorm differs from conv2d + ActNorm by {e}"
    );
    let v = to_vec(ours);
    assert!(v.contains(&0.0) && v.iter().any(|&a| a > 0.0));
}

#[test]
fn fused_tanh_affine_matches_tensor_op_composition() {
    use glowflow::ops::tanh_affine::{tanh_affine, tanh_affine_composed};
    use glowflow::tensor_util::from_vec;
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let mut draw = |k: usize, r: f32| -> Vec<f32> {
        (0..k)
            .map(|_| rand::Rng::gen_range(&mut rng, -r..r))
            .collect()
    };
    let max_diff =
        |u: &[f32], v: &[f32]| u.iter().zip(v).fold(0f32, |e, (p, q)| e.max((p - q).abs()));
    for (n, cb) in [(33, 1), (33, 4), (7, 3)] {
        let (xs, hs) = (draw(n * (cb + 1), 2.0), draw(n * 2 * cb, 3.0));
        let (ry, rl) = (draw(n * cb, 1.0), draw(n, 1.0));
        for device in [ad_device(), plain_device()] {
            let tracked = device.is_autodiff();
            let leaf2 = |t: Tensor<2>| if tracked { t.require_grad() } else { t };
            let leaf1 = |t: Tensor<1>| if tracked { t.require_grad() } else { t };
            // x_b is a strided column slice of a wider tensor, as a coupling's half is.
            let wide = leaf2(from_vec(xs.clone(), [n, cb + 1], &device));
            let h = leaf2(from_vec(hs.clone(), [n, 2 * cb], &device));
            let alpha = leaf1(from_vec(vec![0.7f32], [1], &device));
            let beta = leaf1(from_vec(vec![-0.2f32], [1], &device));
            let xb = || wide.clone().narrow(1, 1, cb);
            let fused = tanh_affine(xb(), h.clone(), alpha.clone(), beta.clone());
            let plain = tanh_affine_composed(xb(), h.clone(), alpha.clone(), beta.clone());
            // The same element-wise operations in the same order: the same bits.
            assert_eq!(
                to_vec(fused.0.clone()),
                to_vec(plain.0.clone()),
                "{n}x{cb}: y_b"
            );
            let e = max_diff(&to_vec(fused.1.clone()), &to_vec(plain.1.clone()));
            assert!(e <= 1e-6, "{n}x{cb}: log-determinant differs by {e}");
            if !tracked {
                continue;
            }
            let r = from_vec(ry.clone(), [n, cb], &device);
            let rl = from_vec(rl.clone(), [n], &device);
            let grads_of = |(y, ld): (Tensor<2>, Tensor<1>)| {
                let g = ((y * r.clone()).sum() + (ld * rl.clone()).sum()).backward();
                [
                    to_vec(wide.grad(&g).unwrap()),
                    to_vec(h.grad(&g).unwrap()),
                    to_vec(alpha.grad(&g).unwrap()),
                    to_vec(beta.grad(&g).unwrap()),
                ]
            };
            for ((name, u), v) in ["x_b", "h", "alpha", "beta"]
                .into_iter()
                .zip(grads_of(fused))
                .zip(grads_of(plain))
            {
                let scale = v.iter().fold(1f32, |m, x| m.max(x.abs()));
                let e = max_diff(&u, &v) / scale;
                assert!(e <= 1e-5, "{n}x{cb}: d/d{name} differs by {e} (relative)");
            }
        }
    }
}

#[test]
fn fused_dense_matches_tensor_op_composition() {
    use glowflow::ops::dense::{dense, dense_composed, fused_supported};
    use glowflow::tensor_util::from_vec;
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut draw = |k: usize| -> Vec<f32> {
        (0..k)
            .map(|_| rand::Rng::gen_range(&mut rng, -1.0..1.0))
            .collect()
    };
    let max_diff =
        |u: &[f32], v: &[f32]| u.iter().zip(v).fold(0f32, |e, (p, q)| e.max((p - q).abs()));
    // (rows, in, out): the 2D MLP's first, hidden and output layers, and an odd size.
    for (n, k, m) in [(33, 1, 16), (33, 16, 16), (33, 16, 2), (7, 5, 9)] {
        let (xs, ws, bs, rs) = (draw(n * (k + 2)), draw(k * m), draw(m), draw(n * m));
        for device in [ad_device(), plain_device()] {
            let tracked = device.is_autodiff();
            let grad_leaf = |t: Tensor<2>| if tracked { t.require_grad() } else { t };
            // The input is a strided column slice of a wider tensor, as a coupling's half is.
            let wide = grad_leaf(from_vec(xs.clone(), [n, k + 2], &device));
            let w = grad_leaf(from_vec(ws.clone(), [k, m], &device));
            let b = from_vec(bs.clone(), [m], &device);
            let b = if tracked { b.require_grad() } else { b };
            let r = from_vec(rs.clone(), [n, m], &device);
            let x = || wide.clone().narrow(1, 1, k);
            assert!(fused_supported(&x(), &w, &b), "fused path not taken");
            for relu_out in [false, true] {
                let fused = dense(x(), w.clone(), b.clone(), relu_out);
                let plain = dense_composed(x(), w.clone(), b.clone(), relu_out);
                let (yf, yp) = (to_vec(fused.clone()), to_vec(plain.clone()));
                let err = max_diff(&yf, &yp);
                assert!(
                    err <= 1e-5,
                    "{n}x{k}->{m} relu {relu_out}: forward differs by {err}"
                );
                if relu_out {
                    assert!(yf.contains(&0.0) && yf.iter().any(|&v| v > 0.0));
                }
                if !tracked {
                    continue;
                }
                let grads_of = |y: Tensor<2>| {
                    let g = (y * r.clone()).sum().backward();
                    [
                        to_vec(wide.grad(&g).unwrap()),
                        to_vec(w.grad(&g).unwrap()),
                        to_vec(b.grad(&g).unwrap()),
                    ]
                };
                for ((name, u), v) in ["x", "weight", "bias"]
                    .into_iter()
                    .zip(grads_of(fused))
                    .zip(grads_of(plain))
                {
                    let e = max_diff(&u, &v);
                    assert!(
                        e <= 1e-4,
                        "{n}x{k}->{m} relu {relu_out}: d/d{name} differs by {e}"
                    );
                }
            }
        }
    }
}

/// Winograd's F(2x2, 3x3) against the backend's direct conv2d: the output and the gradients
/// of the input and the kernel, for even and odd sides (whole and cut tiles), narrow and wide
/// channels, float32 and float64. Bound: float32 within 3e-6 of the largest value of each
/// (a few ulps of the transforms' sums of up to 16 terms), float64 within 1e-13.
#[test]
fn winograd_conv3x3_matches_direct_convolution() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::DType;
    use glowflow::ops::winograd::conv3x3;
    use glowflow::tensor_util::to_vec_f64;
    let device = ad_device();
    for (cin, cout, h, w) in [
        (3, 5, 4, 4),
        (8, 3, 5, 7),
        (64, 64, 8, 8),
        (70, 12, 9, 6),
        (4, 9, 1, 3),
    ] {
        for dtype in [DType::F32, DType::F64] {
            let x = random_input([2, cin, h, w], 4, &device)
                .cast(dtype)
                .require_grad();
            let k = random_input([cout, cin, 3, 3], 6, &device)
                .mul_scalar(0.2)
                .cast(dtype)
                .require_grad();
            let r = random_input([2, cout, h, w], 5, &device).cast(dtype);
            let run = |y: Tensor<4>| {
                let g = (y.clone() * r.clone()).sum().backward();
                [
                    to_vec_f64(y),
                    to_vec_f64(x.grad(&g).unwrap()),
                    to_vec_f64(k.grad(&g).unwrap()),
                ]
            };
            let ours = run(conv3x3(x.clone(), k.clone()));
            let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
            let direct = run(conv2d(x.clone(), k.clone(), None, options));
            let tol = if dtype == DType::F64 { 1e-13 } else { 3e-6 };
            for (name, u, v) in [
                ("output", &ours[0], &direct[0]),
                ("d/dx", &ours[1], &direct[1]),
                ("d/dkernel", &ours[2], &direct[2]),
            ] {
                let scale = v.iter().fold(0f64, |m, a| m.max(a.abs())).max(1.0);
                let e = u.iter().zip(v).fold(0f64, |m, (p, q)| m.max((p - q).abs())) / scale;
                assert!(
                    e <= tol,
                    "{cin}->{cout} {h}x{w} {dtype:?}: {name} off by {e:.1e} of {scale:.1}"
                );
            }
        }
    }
}
