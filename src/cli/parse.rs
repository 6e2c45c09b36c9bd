//! Value parsers for the command line: every number is checked where it enters, so clap's error
//! names the flag (`invalid value '0' for '--batch <BATCH>': must be at least 1`) and the
//! process exits with code 2 before anything runs. Bounds come from [`glowflow::limits`].

/// An integer in `LO..=HI`.
pub fn count<const LO: usize, const HI: usize>(s: &str) -> Result<usize, String> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a whole number in {LO}..={HI}"))?;
    if v < LO {
        return Err(format!("must be at least {LO}"));
    }
    if v > HI {
        return Err(format!("must be at most {HI}"));
    }
    Ok(v)
}

/// Bits per pixel: 1..=8.
pub fn bits(s: &str) -> Result<u32, String> {
    count::<1, 8>(s).map(|v| v as u32)
}

fn finite(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| "expected a number".to_string())?;
    if !v.is_finite() {
        return Err("must be a finite number".into());
    }
    Ok(v)
}

/// A learning rate: finite, in (0, 1e9] (a huge rate diverges, and the step guard stops the run
/// with the step named; the bound refuses only values that are not numbers a user means).
pub fn learning_rate(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if v <= 0.0 || v > glowflow::limits::MAX_LR {
        return Err(format!("must be in (0, {:e}]", glowflow::limits::MAX_LR));
    }
    Ok(v)
}

/// A multiplicative factor (StepLR's gamma): finite, in (0, 10].
pub fn factor(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if v <= 0.0 || v > 10.0 {
        return Err("must be in (0, 10]".into());
    }
    Ok(v)
}

/// Minutes of training time: finite, in (0, 1e8].
pub fn minutes(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if v <= 0.0 || v > 1e8 {
        return Err("must be a number of minutes in (0, 1e8]".into());
    }
    Ok(v)
}

/// A gradient-norm threshold: finite, in [0, 1e12] (0: off).
pub fn threshold(s: &str) -> Result<f64, String> {
    closed(s, 0.0, 1e12, "must be in [0, 1e12] (0: off)")
}

/// A weight decay: finite, in [0, 1e6] (0: off).
pub fn weight_decay(s: &str) -> Result<f64, String> {
    closed(s, 0.0, 1e6, "must be in [0, 1e6] (0: off)")
}

/// An averaging decay: in [0, 1) (0: off).
pub fn decay(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if !(0.0..1.0).contains(&v) {
        return Err("must be in [0, 1) (0: off)".into());
    }
    Ok(v)
}

/// A sampling temperature: finite, in [0, 100].
pub fn temperature(s: &str) -> Result<f64, String> {
    closed(s, 0.0, 100.0, "must be in [0, 100]")
}

/// A loss weight: finite, in [0, 1e6] (0: off).
pub fn weight(s: &str) -> Result<f64, String> {
    closed(s, 0.0, 1e6, "must be in [0, 1e6] (0: off)")
}

/// A fraction strictly between 0 and 1.
pub fn fraction(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if !(v > 0.0 && v < 1.0) {
        return Err("must be in (0, 1)".into());
    }
    Ok(v)
}

/// A probability in [0, 0.99] (0: off; 1 would leave nothing to learn from).
pub fn probability(s: &str) -> Result<f64, String> {
    closed(s, 0.0, 0.99, "must be in [0, 0.99] (0: off)")
}

/// A noise standard deviation in the data range's units, [0, 1] (0: off).
pub fn sigma(s: &str) -> Result<f64, String> {
    closed(
        s,
        0.0,
        1.0,
        "must be in [0, 1] (0: off; the data range is [-0.5, 0.5])",
    )
}

/// A classifier-free guidance weight in [0, 100] (0: the class-free prior, 1: the conditional).
pub fn guidance(s: &str) -> Result<f64, String> {
    closed(
        s,
        0.0,
        100.0,
        "must be in [0, 100] (0: the class-free prior, 1: the conditional one)",
    )
}

/// A finite number in `[lo, hi]`, else the error `why`.
fn closed(s: &str, lo: f64, hi: f64, why: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(why.into())
    }
}
