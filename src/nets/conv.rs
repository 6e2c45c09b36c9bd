//! Glow's coupling CNN: conv3x3 -> ActNorm -> ReLU -> conv1x1 -> ActNorm -> ReLU -> zero-init
//! conv3x3 scaled by exp(3 * logs), so its output starts at zero (an additive coupling using it
//! starts as the identity; Glow's affine form starts as the scale sigmoid(2) ≈ 0.88).

use burn::module::{Module, Param};
use burn::tensor::activation::relu;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::flow::Flow;
use crate::layers::ActNorm;
use crate::tensor_util::{from_vec, trainable};

/// A 2D convolution with "same" padding (odd kernels), stride 1.
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// Per-output-channel bias, `[out]`, or `None`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Zero padding on each side, `k / 2` ("same" output size for odd `k`).
    pub padding: usize,
}

impl Conv2d {
    /// Weights from N(0, 0.05^2) as openai/glow initialises its convolutions.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        bias: bool,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Self {
        let normal = Normal::new(0.0f32, 0.05).expect("valid std");
        let w: Vec<f32> = (0..cout * cin * k * k)
            .map(|_| normal.sample(rng))
            .collect();
        Conv2d {
            weight: trainable(from_vec(w, [cout, cin, k, k], device)),
            bias: bias.then(|| trainable(Tensor::zeros([cout], device))),
            padding: k / 2,
        }
    }

    /// An all-zero `k x k` convolution `cin -> cout` with a (zero) bias: outputs zeros until
    /// trained.
    pub fn zeros(cin: usize, cout: usize, k: usize, device: &Device) -> Self {
        Conv2d {
            weight: trainable(Tensor::zeros([cout, cin, k, k], device)),
            bias: Some(trainable(Tensor::zeros([cout], device))),
            padding: k / 2,
        }
    }

    /// `conv(x) + bias` for `x: [N, C_in, H, W]`, giving `[N, C_out, H, W]`.
    ///
    /// Every convolution here is computed as GEMMs `[C_out, K] x [K, H*W]` per image, whose
    /// backward is GEMMs too (the backend's generic convolution backward, a transposed
    /// convolution for the input and a convolution with an H x W kernel for the weights, runs
    /// far below the GEMM rate on a CPU):
    /// - 1x1: one channel-mixing matrix at every pixel.
    /// - k x k with few input channels: im2col, the k*k shifted copies of the (padded) input
    ///   stacked as channels, then one GEMM with K = k*k*C_in.
    /// - k x k with more input than output channels: one GEMM to k*k*C_out channels (a
    ///   response per kernel offset), then the k*k shifted responses summed; the shifting
    ///   happens on the small side.
    ///
    /// On the CPU in float32 each is one fused operation with a hand-written backward
    /// ([`crate::ops::conv`]); elsewhere the same GEMMs as tensor operations. 3x3 convolutions
    /// with wide channels on both sides on the CPU take Winograd's F(2x2, 3x3), 2.25x fewer
    /// multiply-adds ([`crate::ops::winograd`]; the choice is
    /// [`winograd::preferred`](crate::ops::winograd::preferred)).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.apply(x, false)
    }

    /// `relu(conv(x) + bias)`, fused into the convolution on the CPU (see
    /// [`forward`](Self::forward)).
    pub fn forward_relu(&self, x: Tensor<4>) -> Tensor<4> {
        self.apply(x, true)
    }

    /// `act(ActNorm(conv(x) + bias))` with `norm`'s shift and log-scale, ReLU when `relu_out`:
    /// Glow's coupling network's `conv -> ActNorm -> ReLU` as one fused operation on the CPU
    /// ([`crate::ops::conv::conv2d_scaled`]); the ActNorm's log-determinant is not computed
    /// (the network's inner ActNorms are not flow layers).
    pub fn forward_actnorm(&self, x: Tensor<4>, norm: &ActNorm, relu_out: bool) -> Tensor<4> {
        let [_, cin, h, w] = x.dims();
        let [cout, _, k, _] = self.weight.dims();
        let act = |y: Tensor<4>| if relu_out { relu(y) } else { y };
        if k == 3
            && self.padding == 1
            && crate::ops::winograd::preferred(cin, cout, h, w, &x.device())
        {
            return act(norm.forward(self.forward(x)).0);
        }
        let shift = match &self.bias {
            Some(b) => b.val() + norm.bias.val(),
            None => norm.bias.val(),
        };
        crate::ops::conv::conv2d_scaled(
            x,
            self.weight.val(),
            Some(shift),
            Some(norm.logs.val()),
            self.padding,
            relu_out,
        )
    }

    fn apply(&self, x: Tensor<4>, relu_out: bool) -> Tensor<4> {
        let [_, cin, h, w] = x.dims();
        let [cout, _, k, _] = self.weight.dims();
        let bias = self.bias.as_ref().map(|b| b.val());
        if k == 3
            && self.padding == 1
            && crate::ops::winograd::preferred(cin, cout, h, w, &x.device())
        {
            let y = crate::ops::winograd::conv3x3(x, self.weight.val());
            let y = match bias {
                Some(b) => y + b.reshape([1, cout, 1, 1]),
                None => y,
            };
            return if relu_out { relu(y) } else { y };
        }
        crate::ops::conv::conv2d(x, self.weight.val(), bias, self.padding, relu_out)
    }

    /// The same convolution through the backend's conv2d (the reference in tests).
    pub fn forward_direct(&self, x: Tensor<4>) -> Tensor<4> {
        let p = self.padding;
        conv2d(
            x,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            ConvOptions::new([1, 1], [p, p], [1, 1], 1),
        )
    }
}

/// Zero-initialised 3x3 convolution whose output is scaled by `exp(3 * logs)` (per channel,
/// logs zero-initialised): Glow's output layer for coupling nets and split priors.
#[derive(Module, Debug)]
pub struct ZeroConv2d {
    /// The zero-initialised 3x3 convolution, with bias.
    pub conv: Conv2d,
    /// Per-output-channel log-scale, `[C_out]` (zero-initialised); the output is multiplied by
    /// `exp(3 * logs)`.
    pub logs: Param<Tensor<1>>,
}

impl ZeroConv2d {
    /// A zero 3x3 convolution `cin -> cout` with `logs = 0`: outputs zeros until trained.
    pub fn new(cin: usize, cout: usize, device: &Device) -> Self {
        ZeroConv2d {
            conv: Conv2d::zeros(cin, cout, 3, device),
            logs: trainable(Tensor::zeros([cout], device)),
        }
    }

    /// `conv(x) * exp(3 * logs)` for `x: [N, C_in, H, W]`, giving `[N, C_out, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let c = self.logs.dims()[0];
        self.conv.forward(x) * self.logs.val().mul_scalar(3.0).exp().reshape([1, c, 1, 1])
    }
}

/// Glow's coupling network (see the module docs): 3x3 and 1x1 convolutions without bias, each
/// followed by ActNorm and ReLU, then a [`ZeroConv2d`], so the output starts at zero.
///
/// # Shapes
/// Input `[N, C_in, H, W]`, hidden `[N, width, H, W]`, output `[N, C_out, H, W]`.
#[derive(Module, Debug)]
pub struct GlowConvNet {
    /// 3x3 convolution `C_in -> width`, no bias.
    pub conv_in: Conv2d,
    /// ActNorm after `conv_in` (data-initialised).
    pub norm_in: ActNorm,
    /// 1x1 convolution `width -> width`, no bias.
    pub conv_mid: Conv2d,
    /// ActNorm after `conv_mid` (data-initialised).
    pub norm_mid: ActNorm,
    /// Zero-initialised 3x3 output convolution `width -> C_out`.
    pub conv_out: ZeroConv2d,
}

impl GlowConvNet {
    /// The network `cin -> width -> width -> cout`: hidden convolutions drawn from `rng` as in
    /// [`Conv2d::new`], ActNorms uninitialised.
    pub fn new(cin: usize, cout: usize, width: usize, rng: &mut impl Rng, device: &Device) -> Self {
        GlowConvNet {
            conv_in: Conv2d::new(cin, width, 3, false, rng, device),
            norm_in: ActNorm::new(width, device),
            conv_mid: Conv2d::new(width, width, 1, false, rng, device),
            norm_mid: ActNorm::new(width, device),
            conv_out: ZeroConv2d::new(width, cout, device),
        }
    }

    /// Apply the network to `x: [N, C_in, H, W]`, giving `[N, C_out, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv_in.forward_actnorm(x, &self.norm_in, true);
        let h = self.conv_mid.forward_actnorm(h, &self.norm_mid, true);
        self.conv_out.forward(h)
    }

    /// Data-dependent initialisation of the hidden ActNorms from a batch of inputs.
    pub fn initialize(&mut self, x: Tensor<4>) {
        let h = self.conv_in.forward(x);
        if !self.norm_in.is_initialized() {
            self.norm_in.initialize(&h);
        }
        let h = self.conv_mid.forward(relu(self.norm_in.forward(h).0));
        if !self.norm_mid.is_initialized() {
            self.norm_mid.initialize(&h);
        }
    }
}

/// A plain CNN conditioner: conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero-initialised conv3x3, all
/// with biases and no normalisation (Real NVP style; the `probe-image` benchmark's network).
#[derive(Module, Debug)]
pub struct PlainConvNet {
    /// 3x3 convolution `C_in -> width`, with bias.
    pub conv_in: Conv2d,
    /// 1x1 convolution `width -> width`, with bias.
    pub conv_mid: Conv2d,
    /// Zero-initialised 3x3 convolution `width -> C_out`, with bias.
    pub conv_out: Conv2d,
}

impl PlainConvNet {
    /// The network `cin -> width -> width -> cout`, hidden convolutions drawn from `rng` as in
    /// [`Conv2d::new`].
    pub fn new(cin: usize, cout: usize, width: usize, rng: &mut impl Rng, device: &Device) -> Self {
        PlainConvNet {
            conv_in: Conv2d::new(cin, width, 3, true, rng, device),
            conv_mid: Conv2d::new(width, width, 1, true, rng, device),
            conv_out: Conv2d::zeros(width, cout, 3, device),
        }
    }

    /// Apply the network to `x: [N, C_in, H, W]`, giving `[N, C_out, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv_in.forward_relu(x);
        let h = self.conv_mid.forward_relu(h);
        self.conv_out.forward(h)
    }
}
