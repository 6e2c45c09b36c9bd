//! Glow's coupling CNN: conv3x3 -> ActNorm -> ReLU -> conv1x1 -> ActNorm -> ReLU -> zero-init
//! conv3x3 scaled by exp(3 * logs), so a coupling using it starts as the identity.

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
    pub bias: Option<Param<Tensor<1>>>,
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

    pub fn zeros(cin: usize, cout: usize, k: usize, device: &Device) -> Self {
        Conv2d {
            weight: trainable(Tensor::zeros([cout, cin, k, k], device)),
            bias: Some(trainable(Tensor::zeros([cout], device))),
            padding: k / 2,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, cin, h, w] = x.dims();
        let [cout, _, k, _] = self.weight.dims();
        if k == 1 {
            // A 1x1 convolution is one channel-mixing matrix applied at every pixel: a batched
            // GEMM [C_out, C_in] x [C_in, H*W] whose backward is GEMMs too, unlike the backend's
            // generic convolution backward (a transposed convolution and an H x W-kernel one).
            let wm = self.weight.val().reshape([1, cout, cin]);
            let mut y = wm.matmul(x.reshape([n, cin, h * w]));
            if let Some(b) = &self.bias {
                y = y + b.val().reshape([1, cout, 1]);
            }
            return y.reshape([n, cout, h, w]);
        }
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
    pub conv: Conv2d,
    pub logs: Param<Tensor<1>>,
}

impl ZeroConv2d {
    pub fn new(cin: usize, cout: usize, device: &Device) -> Self {
        ZeroConv2d {
            conv: Conv2d::zeros(cin, cout, 3, device),
            logs: trainable(Tensor::zeros([cout], device)),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let c = self.logs.dims()[0];
        self.conv.forward(x) * self.logs.val().mul_scalar(3.0).exp().reshape([1, c, 1, 1])
    }
}

#[derive(Module, Debug)]
pub struct GlowConvNet {
    pub conv_in: Conv2d,
    pub norm_in: ActNorm,
    pub conv_mid: Conv2d,
    pub norm_mid: ActNorm,
    pub conv_out: ZeroConv2d,
}

impl GlowConvNet {
    pub fn new(cin: usize, cout: usize, width: usize, rng: &mut impl Rng, device: &Device) -> Self {
        GlowConvNet {
            conv_in: Conv2d::new(cin, width, 3, false, rng, device),
            norm_in: ActNorm::new(width, device),
            conv_mid: Conv2d::new(width, width, 1, false, rng, device),
            norm_mid: ActNorm::new(width, device),
            conv_out: ZeroConv2d::new(width, cout, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = relu(self.norm_in.forward(self.conv_in.forward(x)).0);
        let h = relu(self.norm_mid.forward(self.conv_mid.forward(h)).0);
        self.conv_out.forward(h)
    }

    /// Data-dependent initialisation of the hidden ActNorms from a batch of inputs.
    pub fn initialize(&mut self, x: Tensor<4>) {
        let h = self.conv_in.forward(x);
        if !self.norm_in.initialized {
            self.norm_in.initialize(&h);
        }
        let h = self.conv_mid.forward(relu(self.norm_in.forward(h).0));
        if !self.norm_mid.initialized {
            self.norm_mid.initialize(&h);
        }
    }

    pub fn actnorms_mut(&mut self) -> Vec<&mut ActNorm> {
        vec![&mut self.norm_in, &mut self.norm_mid]
    }
}

/// A plain CNN conditioner: conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero-initialised conv3x3, all
/// with biases and no normalisation (Real NVP style; the `probe-image` benchmark's network).
#[derive(Module, Debug)]
pub struct PlainConvNet {
    pub conv_in: Conv2d,
    pub conv_mid: Conv2d,
    pub conv_out: Conv2d,
}

impl PlainConvNet {
    pub fn new(cin: usize, cout: usize, width: usize, rng: &mut impl Rng, device: &Device) -> Self {
        PlainConvNet {
            conv_in: Conv2d::new(cin, width, 3, true, rng, device),
            conv_mid: Conv2d::new(width, width, 1, true, rng, device),
            conv_out: Conv2d::zeros(width, cout, 3, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = relu(self.conv_in.forward(x));
        let h = relu(self.conv_mid.forward(h));
        self.conv_out.forward(h)
    }
}
