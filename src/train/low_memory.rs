//! Invertible backpropagation: gradients through a flow without keeping its activations.
//!
//! A flow is invertible, so the backward pass can rebuild each layer's input from its output
//! instead of storing it (Gomez, Ren, Urtasun and Grosse 2017, arXiv 1707.04585, §4; the
//! memory-saving gradients openai/glow trained its large models with). [`sequence_grads`] runs
//! the forward pass without recording anything, then walks the layers backwards: rebuild the
//! layer's input with its inverse, run that one layer's forward again with autodiff on a leaf,
//! backpropagate `sum(y * dL/dy) + sum(logdet * dL/dlogdet)` into the layer's parameters and
//! its input, and drop the layer's graph before the next. Memory is one layer's activations
//! (plus the sequence's input and output) whatever the depth; the price is one more forward and
//! one inverse per layer, and a rebuilt input that differs from the original by the inverse's
//! round-off, which the gradients inherit (measured in the tests).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::flow::{Context, Flow};
use crate::layers::FlowSequence;

/// What [`sequence_grads`] returns.
pub struct SequenceGrads {
    /// The loss value `head(z, logdet)` (`[1]`, inner backend).
    pub loss: Tensor<1>,
    /// The gradients of the loss with respect to every trainable parameter of the sequence.
    pub grads: GradientsParams,
    /// The gradient with respect to the sequence's input `x` (`[N, C, H, W]`, inner backend).
    pub input_grad: Tensor<4>,
}

/// Gradients of `head(z, logdet)` with respect to `seq`'s parameters and its input, where
/// `(z, logdet) = seq.forward(x)`, by invertible backpropagation (module docs). `seq` lives on
/// an autodiff device and is initialised (ActNorm); `x` (`[N, C, H, W]`) and `ctx` are on the
/// same device; `head` maps the output and the per-sample log-determinant (`[N]`) to a scalar
/// loss (`[1]`) and must not read parameters of `seq` (a prior's own parameters are its
/// caller's). The gradients equal ordinary backpropagation's up to the inverse's round-off.
pub fn sequence_grads(
    seq: &FlowSequence,
    x: Tensor<4>,
    ctx: Context,
    head: impl Fn(Tensor<4>, Tensor<1>) -> Tensor<1>,
) -> SequenceGrads {
    let inner = seq.valid();
    let ctx_inner = ctx.map(|c| c.clone().inner());
    // Forward with nothing recorded.
    let (z, logdet) = inner.forward_ctx(x.inner(), ctx_inner.as_ref());
    // The head on leaves: dL/dz and dL/dlogdet.
    let z_leaf = Tensor::from_inner(z.clone()).require_grad();
    let ld_leaf = Tensor::from_inner(logdet).require_grad();
    let loss = head(z_leaf.clone(), ld_leaf.clone());
    let g = loss.backward();
    let mut grad_y = z_leaf.grad(&g).expect("the loss reads the flow's output");
    let grad_ld = ld_leaf
        .grad(&g)
        .unwrap_or_else(|| ld_leaf.clone().inner().zeros_like());
    let loss = loss.inner();
    let mut grads = GradientsParams::new();
    let mut y = z;
    for (layer, layer_inner) in seq.layers.iter().zip(&inner.layers).rev() {
        let (x_rebuilt, _) = layer_inner.inverse_ctx(y, ctx_inner.as_ref());
        let x_leaf = Tensor::from_inner(x_rebuilt.clone()).require_grad();
        let (y_again, ld_again) = layer.forward_ctx(x_leaf.clone(), ctx);
        let surrogate = (y_again * Tensor::from_inner(grad_y)).sum()
            + (ld_again * Tensor::from_inner(grad_ld.clone())).sum();
        let g = surrogate.backward();
        grad_y = x_leaf.grad(&g).expect("a layer's output reads its input");
        let mut part = GradientsParams::from_grads(g, layer);
        layer.visit(&mut Move {
            from: &mut part,
            to: &mut grads,
        });
        y = x_rebuilt;
    }
    SequenceGrads {
        loss,
        grads,
        input_grad: grad_y,
    }
}

/// Moves a module's parameter gradients from one [`GradientsParams`] to another.
struct Move<'a> {
    from: &'a mut GradientsParams,
    to: &'a mut GradientsParams,
}

impl ModuleVisitor for Move<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.remove::<D>(param.id) {
            self.to.register(param.id, g);
        }
    }
}
