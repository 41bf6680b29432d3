//! The activations of the gates, written so that loops over them vectorize.

/// `e^x` to within 2 ulp for the `x` an activation sees, without branches or calls, so that
/// loops over it vectorize (libm's `expf` is a call per element, and was a fifth of the time).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN_2_HI: f32 = 0.693_145_75;
    const LN_2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in any float unit.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN_2_HI - n * LN_2_LO;
    // Taylor series of e^r to r^6: below 2e-7 relative error for |r| <= ln(2) / 2.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n from the bits: the low bits of `shifted + 127` hold n + 127 (1 to 254 after the
    // clamp), and shifting them into the exponent field drops the rest. A float-to-integer
    // conversion here would not vectorize.
    p * f32::from_bits((shifted + 127.0).to_bits() << 23)
}

/// The logistic function `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// The hyperbolic tangent, as `2 sigmoid(2x) - 1`.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    2.0 * sigmoid(2.0 * x) - 1.0
}

/// `sum += part`, element by element.
#[inline(always)]
pub fn add_into(sum: &mut [f32], part: &[f32]) {
    sum.iter_mut().zip(part).for_each(|(s, p)| *s += p);
}

/// Defines `$name` as `$portable` compiled again for AVX-512 and for AVX2, and calls the widest
/// the CPU has: the loops of the kernels then vectorize 16 or 8 lanes wide instead of 4.
#[doc(hidden)]
#[macro_export]
macro_rules! dispatch_simd {
    (
        $(#[$meta:meta])*
        $vis:vis $name:ident, $avx512:ident, $avx2:ident, $portable:ident,
        ($($arg:ident: $ty:ty),*) -> $ret:ty
    ) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, the one feature the function is compiled for.
                    return unsafe { $avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, the one feature the function is compiled for.
                    return unsafe { $avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        fn $avx512($($arg: $ty),*) -> $ret {
            $portable($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx2($($arg: $ty),*) -> $ret {
            $portable($($arg),*)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_the_standard_library() {
        // Reference: f32's own exp and tanh; tolerance: the series' 2e-7 relative error plus
        // the rounding of the final products.
        for i in -2000..=2000 {
            let x = i as f32 / 100.0;
            let e = x.exp();
            assert!((exp(x) - e).abs() <= 4e-7 * e, "exp({x})");
            assert!((tanh(x) - x.tanh()).abs() <= 1e-6, "tanh({x})");
            let s = 1.0 / (1.0 + (-x).exp());
            assert!((sigmoid(x) - s).abs() <= 1e-6, "sigmoid({x})");
        }
    }
}
