//! The float32 GEMM of the hand-written CPU ops (`dense`, `conv`): operands as strided views
//! of a buffer, the destination written without zero-filling first (`gemm` crate).

use std::mem::MaybeUninit;

use burn::backend::flex::FlexTensor;

/// A float32 matrix as a GEMM operand: buffer, offset, shape and element strides (which may
/// be negative or zero; every addressed element is checked to lie in `data`).
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: isize,
    pub col_stride: isize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows x cols` matrix filling `data` from its start.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            offset: 0,
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    /// A float32 Flex matrix `[rows, cols]` as it lies in its buffer (any strides).
    pub fn of(t: &'a FlexTensor) -> Self {
        let layout = t.layout();
        let dims = layout.shape();
        assert_eq!(dims.num_dims(), 2, "gemm: expected a matrix");
        let strides = layout.strides();
        Mat {
            data: t.storage::<f32>(),
            offset: layout.start_offset(),
            rows: dims[0],
            cols: dims[1],
            row_stride: strides[0],
            col_stride: strides[1],
        }
    }

    /// The transpose (a view: strides swapped).
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Pointer to element (0, 0), after checking that every addressed element lies in `data`.
    fn checked_ptr(&self) -> *const f32 {
        let span = |n: usize, stride: isize| {
            let far = (n as isize - 1) * stride;
            (far.min(0), far.max(0))
        };
        let (r_lo, r_hi) = span(self.rows, self.row_stride);
        let (c_lo, c_hi) = span(self.cols, self.col_stride);
        let (first, last) = (
            self.offset as isize + r_lo + c_lo,
            self.offset as isize + r_hi + c_hi,
        );
        assert!(
            first >= 0 && (last as usize) < self.data.len(),
            "gemm: operand out of bounds"
        );
        self.data[self.offset..].as_ptr()
    }
}

/// Whether a GEMM may split its work over rayon's threads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Split {
    /// Never (the caller already runs one data-parallel shard per thread).
    Never,
    /// When called outside rayon's workers with more than one thread and at least 2M
    /// multiply-adds (one image on the main thread; runs of images are already one per worker).
    Outside,
}

/// `dst (+)= lhs · rhs` into the row-major `lhs.rows x rhs.cols` buffer `dst`; with
/// `accumulate` unset `dst` is only written, never read, and every element is written.
pub(super) fn gemm_into(
    dst: &mut [MaybeUninit<f32>],
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    split: Split,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "gemm: inner dimensions differ");
    assert_eq!(dst.len(), m * n, "gemm: destination size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.iter_mut().for_each(|v| {
                v.write(0.0);
            });
        }
        return;
    }
    let (lhs_ptr, rhs_ptr) = (lhs.checked_ptr(), rhs.checked_ptr());
    let threads = rayon::current_num_threads();
    let parallelism = match split {
        Split::Outside
            if rayon::current_thread_index().is_none() && threads > 1 && m * n * k >= 1 << 21 =>
        {
            gemm::Parallelism::Rayon(threads)
        }
        _ => gemm::Parallelism::None,
    };
    // Safety: the destination holds exactly m x n elements (asserted), written row-major with
    // row stride n; with `accumulate` unset the GEMM writes every element and reads none, with
    // it set the caller passes initialised values. The operands index inside their buffers
    // (`checked_ptr`: the extreme addressed elements, for strides of either sign).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            n as isize,
            accumulate,
            lhs_ptr,
            lhs.col_stride,
            lhs.row_stride,
            rhs_ptr,
            rhs.col_stride,
            rhs.row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `lhs · rhs` as a new row-major buffer (written by the GEMM without zero-filling first).
pub(super) fn gemm_new(lhs: Mat, rhs: Mat, split: Split) -> Vec<f32> {
    let len = lhs.rows * rhs.cols;
    let mut dst = Vec::with_capacity(len);
    gemm_into(&mut dst.spare_capacity_mut()[..len], false, lhs, rhs, split);
    // Safety: with `accumulate` unset `gemm_into` writes all `len` elements.
    unsafe { dst.set_len(len) };
    dst
}

/// `dst += lhs · rhs` for an initialised row-major `dst`.
pub(super) fn gemm_acc(dst: &mut [f32], lhs: Mat, rhs: Mat, split: Split) {
    // Safety: the GEMM writes values only.
    gemm_into(unsafe { as_uninit(dst) }, true, lhs, rhs, split);
}

/// # Safety
/// Every element of `v` must be initialised.
pub(super) unsafe fn assume_init(v: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // Safety: `MaybeUninit<f32>` has the layout of `f32`; the caller guarantees initialisation.
    unsafe { &mut *(v as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// # Safety
/// The caller may only write initialised `f32` values through the result (never
/// `MaybeUninit::uninit()`), as [`gemm_into`] does.
pub(super) unsafe fn as_uninit(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // Safety: `MaybeUninit<f32>` has the layout of `f32`; the caller writes only values.
    unsafe { &mut *(v as *mut [f32] as *mut [MaybeUninit<f32>]) }
}
