//! 3x3 convolutions with fewer multiplications: Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin & Gray 2016, arXiv 1509.09308, §4).
//!
//! Every 2x2 block of outputs is computed from the 4x4 block of inputs around it as
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: the input tiles and the kernel are transformed by
//! additions (and halvings, for the kernel), the channels are mixed by 16 matrix products, one
//! per position of the 4x4 transformed tile, and the result transformed back. Those products
//! take `16 / 4 = 4` multiply-adds per output pixel and channel pair where the direct
//! convolution takes 9, so the GEMM work (forward, and both gradients, which are the same
//! products transposed) is 2.25x smaller; the transforms are additions over tensors a few times
//! the input's and output's size.
//!
//! Written with tensor operations, so it runs on every backend and autodiff gives the input's
//! and the kernel's gradients (the transforms' adjoints are the same additions). The round-off
//! differs from the direct convolution's: the kernel transform's halvings are exact, the tile
//! transforms add up to 4 values in a row, so the error is a few ulps of the largest partial
//! sum (tested against the direct convolution with the bound stated there).

use burn::tensor::ops::PadMode;
use burn::tensor::Tensor;

/// The smallest `min(C_in, C_out)` for which [`conv3x3`] beat the direct convolution of
/// `nets::Conv2d` (the fused GEMM operation of [`crate::ops::conv`]; forward and backward of 32
/// images on one thread, as a data-parallel shard runs, best of 5, 2-core Intel Xeon with
/// AVX-512): 512 -> 512 channels on 4x4 images 1.13x faster (116 vs 131 ms); 512 -> 512 on 8x8
/// 0.81x, 256 -> 256 on 8x8 0.57x, on 16x16 0.30x. Against the earlier direct path written as
/// tensor operations it won more often (256 -> 256 on 8x8: 1.16x); wherever one side is narrow
/// (Glow's coupling networks: `C/2 -> width` in, `width -> C` out) the transforms, written as
/// tensor operations, cost more than the 2.25x fewer multiply-adds save (512 -> 12: 0.12x;
/// 6 -> 512: 0.03x, measured against that earlier path).
pub const MIN_CHANNELS: usize = 512;

/// The largest image area `H * W` (pixels) for which [`conv3x3`] was measured faster (see
/// [`MIN_CHANNELS`]): 4x4.
pub const MAX_PIXELS: usize = 16;

/// Whether [`conv3x3`] is the faster way to run a 3x3 convolution from `cin` to `cout` channels
/// on images of `h x w` on `device`: on the CPU backend with at least [`MIN_CHANNELS`] channels
/// on both sides and at most [`MAX_PIXELS`] pixels, as measured; elsewhere (CUDA) the backend's
/// own convolution is kept. `GLOWFLOW_CONV3X3=direct` or `winograd` forces the choice
/// (benchmarks, tests).
pub fn preferred(
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    device: &burn::tensor::Device,
) -> bool {
    match std::env::var("GLOWFLOW_CONV3X3").as_deref() {
        Ok("direct") => return false,
        Ok("winograd") => return true,
        _ => {}
    }
    crate::tensor_util::is_flex_device(device)
        && cin.min(cout) >= MIN_CHANNELS
        && h * w <= MAX_PIXELS
}

/// The 3x3 convolution (cross-correlation, as `conv2d`) of `x: [N, C_in, H, W]` with `weight:
/// [C_out, C_in, 3, 3]`, zero padding 1, stride 1, no bias: `[N, C_out, H, W]`, by F(2x2, 3x3)
/// (module docs). Odd sides are padded to whole tiles and cut back.
pub fn conv3x3(x: Tensor<4>, weight: Tensor<4>) -> Tensor<4> {
    let [n, cin, h, w] = x.dims();
    let [cout, wcin, kh, kw] = weight.dims();
    assert!(
        wcin == cin && kh == 3 && kw == 3,
        "winograd::conv3x3 takes a [C_out, {cin}, 3, 3] kernel, got {:?}",
        weight.dims()
    );
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let t = n * th * tw;
    // Input tiles: rows 2i..2i+4 and columns 2j..2j+4 of the padded input.
    let xp = x.pad(
        [(1, 1 + 2 * th - h), (1, 1 + 2 * tw - w)],
        PadMode::Constant(0.0),
    );
    let rows = input_transform(xp, 2, th, [n, cin, 2 * th + 2, 2 * tw + 2]);
    let mut v = Vec::with_capacity(16);
    for r in rows {
        v.extend(input_transform(r, 3, tw, [n, cin, th, 2 * tw + 2]));
    }
    // [16, N, C_in, th, tw] -> [16, C_in, N th tw]
    let v = Tensor::stack::<5>(v, 0)
        .permute([0, 2, 1, 3, 4])
        .reshape([16, cin, t]);
    let u = kernel_transform(weight);
    let m = u.matmul(v); // [16, C_out, N th tw]
    let m: Vec<Tensor<4>> = (0..16)
        .map(|i| m.clone().narrow(0, i, 1).reshape([cout, n, th, tw]))
        .collect();
    // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] along the rows, then along the columns.
    let at = |a: &Tensor<4>, b: &Tensor<4>, c: &Tensor<4>, d: &Tensor<4>| {
        (
            a.clone() + b.clone() + c.clone(),
            b.clone() - c.clone() - d.clone(),
        )
    };
    let mut s = Vec::with_capacity(8); // s[p * 4 + col]
    let mut s1 = Vec::with_capacity(4);
    for col in 0..4 {
        let (p0, p1) = at(&m[col], &m[4 + col], &m[8 + col], &m[12 + col]);
        s.push(p0);
        s1.push(p1);
    }
    s.extend(s1);
    let mut out_rows = Vec::with_capacity(2);
    for p in 0..2 {
        let r = &s[4 * p..4 * p + 4];
        let (y0, y1) = at(&r[0], &r[1], &r[2], &r[3]);
        // Interleave the two output columns of every tile: [C_out, N, th, 2 tw].
        out_rows.push(Tensor::stack::<5>(vec![y0, y1], 4).reshape([cout, n, th, 2 * tw]));
    }
    Tensor::stack::<5>(out_rows, 3)
        .reshape([cout, n, 2 * th, 2 * tw])
        .permute([1, 0, 2, 3])
        .narrow(2, 0, h)
        .narrow(3, 0, w)
}

/// Bᵀ along `dim` (2: rows, 3: columns) of `x` (shaped `shape`, `2 * tiles + 2` long along
/// `dim`): the four tensors `d0 - d2, d1 + d2, d2 - d1, d1 - d3`, where `dk` holds element
/// `2 i + k` of every tile `i` (each `tiles` long along `dim`).
fn input_transform(x: Tensor<4>, dim: usize, tiles: usize, shape: [usize; 4]) -> [Tensor<4>; 4] {
    let mut split = shape;
    split[dim] = tiles;
    // Elements 2i, 2i+1 (from offset 0) and 2i+2, 2i+3 (from offset 2) of every tile.
    let pairs = |offset: usize| {
        let s = x.clone().narrow(dim, offset, 2 * tiles);
        let mut five = [0usize; 5];
        five[..=dim].copy_from_slice(&shape[..=dim]);
        five[dim] = tiles;
        five[dim + 1] = 2;
        if dim == 2 {
            five[4] = shape[3];
        }
        let s = s.reshape(five);
        (
            s.clone().narrow(dim + 1, 0, 1).reshape(split),
            s.narrow(dim + 1, 1, 1).reshape(split),
        )
    };
    let (d0, d1) = pairs(0);
    let (d2, d3) = pairs(2);
    [
        d0 - d2.clone(),
        d1.clone() + d2.clone(),
        d2 - d1.clone(),
        d1 - d3,
    ]
}

/// `G g Gᵀ` for every kernel `g` of `weight: [C_out, C_in, 3, 3]`, with
/// `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`: `[16, C_out, C_in]`, the
/// transformed tile's position `4 a + b` first.
fn kernel_transform(weight: Tensor<4>) -> Tensor<3> {
    let [cout, cin, _, _] = weight.dims();
    let g = |t: &Tensor<4>, dim: usize| -> [Tensor<4>; 4] {
        let k = |i: usize| t.clone().narrow(dim, i, 1);
        let (g0, g1, g2) = (k(0), k(1), k(2));
        [
            g0.clone(),
            (g0.clone() + g1.clone() + g2.clone()).mul_scalar(0.5),
            (g0 - g1 + g2.clone()).mul_scalar(0.5),
            g2,
        ]
    };
    let mut u = Vec::with_capacity(16);
    for r in g(&weight, 2) {
        for c in g(&r, 3) {
            u.push(c.reshape([cout, cin]));
        }
    }
    Tensor::stack::<3>(u, 0)
}
