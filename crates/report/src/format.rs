//! Number formatting for tables, tick labels and prose.
//!
//! Reports are diffed against committed copies, so formatting must be a pure
//! function of the value (no locale, no platform-dependent float printing)
//! and short enough to read in a table. Rust's `{:e}` formatting is exact and
//! portable; these helpers build on it rather than on `log10`, which can be
//! off by one ulp near powers of ten and print `9.99e-7` for `1e-6`.

/// Formats `x` to `digits` significant digits (at least 1), dropping trailing
/// zeros like C's `%g`.
///
/// Uses plain notation for magnitudes from 1e-4 up to 10^max(digits, 6) and
/// scientific notation (`1.5e-7`, `2e9`) outside that, so table columns stay
/// narrow without hiding the exponent of tiny residuals. Non-finite values
/// print as `NaN`, `inf` and `-inf`.
///
/// ```
/// use hessfree_report::fmt_sig;
/// assert_eq!(fmt_sig(0.912345, 3), "0.912");
/// assert_eq!(fmt_sig(1234.5, 3), "1230");
/// assert_eq!(fmt_sig(0.00001234, 2), "1.2e-5");
/// assert_eq!(fmt_sig(-2.0, 4), "-2");
/// ```
pub fn fmt_sig(x: f64, digits: usize) -> String {
    if let Some(s) = non_finite(x) {
        return s;
    }
    if x == 0.0 {
        return "0".to_string();
    }
    let digits = digits.clamp(1, 17);
    let (mantissa, exp) = decompose(x.abs(), digits);
    let body = if exp < -4 || exp >= (digits as i32).max(6) {
        scientific(&mantissa, exp)
    } else {
        plain(&mantissa, exp)
    };
    if x < 0.0 { format!("-{body}") } else { body }
}

/// Formats `x` in scientific notation with at most `digits` significant
/// digits and no trailing zeros: `1e-6`, `2.5e3`, `-3e0`. Used for log-axis
/// tick labels, where the exponent is the information.
pub fn fmt_sci(x: f64, digits: usize) -> String {
    if let Some(s) = non_finite(x) {
        return s;
    }
    if x == 0.0 {
        return "0".to_string();
    }
    let (mantissa, exp) = decompose(x.abs(), digits.clamp(1, 17));
    let body = scientific(&mantissa, exp);
    if x < 0.0 { format!("-{body}") } else { body }
}

/// Formats a duration given in seconds with a unit that keeps the number
/// readable: `850 ns`, `12.3 ms`, `4.56 s`, `2 min 5 s`, `1 h 40 min`.
///
/// Three significant digits below a minute; whole seconds or minutes above,
/// where nobody compares fractions. Negative and non-finite inputs are
/// formatted rather than rejected (they indicate a bug upstream, which the
/// report should show, not hide).
pub fn fmt_duration_s(seconds: f64) -> String {
    if let Some(s) = non_finite(seconds) {
        return format!("{s} s");
    }
    if seconds < 0.0 {
        return format!("-{}", fmt_duration_s(-seconds));
    }
    if seconds == 0.0 {
        return "0 s".to_string();
    }
    if seconds < 59.95 {
        // Pick the largest sub-second unit whose 3-digit rounding stays below
        // 1000, so 0.99996 s prints as "1 s" rather than "1000 ms".
        for (scale, unit) in [(1e9, "ns"), (1e6, "µs"), (1e3, "ms")] {
            let v = seconds * scale;
            if v < 999.5 {
                return format!("{} {unit}", fmt_sig(v, 3));
            }
        }
        return format!("{} s", fmt_sig(seconds, 3));
    }
    if seconds < 3599.5 {
        let total = seconds.round() as u64;
        return format!("{} min {} s", total / 60, total % 60);
    }
    let minutes = (seconds / 60.0).round() as u64;
    format!("{} h {} min", minutes / 60, minutes % 60)
}

/// Formats a byte count with binary units: `512 B`, `1.5 KiB`, `234 MiB`,
/// `2.03 GiB`. The notebook quoted the dense Hessian as "234 MiB"; this
/// prints 7840² f32 values the same way.
pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let number = if value < 1000.0 {
        fmt_sig(value, 3)
    } else {
        format!("{value:.0}")
    };
    format!("{number} {}", UNITS[unit])
}

fn non_finite(x: f64) -> Option<String> {
    if x.is_nan() {
        Some("NaN".to_string())
    } else if x.is_infinite() {
        Some(if x > 0.0 { "inf" } else { "-inf" }.to_string())
    } else {
        None
    }
}

/// Splits a positive finite `x` into its `digits` correctly rounded decimal
/// digits and the decimal exponent of the first one.
fn decompose(x: f64, digits: usize) -> (String, i32) {
    let s = format!("{:.*e}", digits - 1, x);
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    (digits, exp.parse().unwrap_or(0))
}

fn scientific(digits: &str, exp: i32) -> String {
    let (first, rest) = digits.split_at(1);
    let rest = rest.trim_end_matches('0');
    if rest.is_empty() {
        format!("{first}e{exp}")
    } else {
        format!("{first}.{rest}e{exp}")
    }
}

fn plain(digits: &str, exp: i32) -> String {
    let (int_part, frac_part) = if exp >= 0 {
        let int_len = exp as usize + 1;
        if int_len >= digits.len() {
            let zeros = "0".repeat(int_len - digits.len());
            (format!("{digits}{zeros}"), String::new())
        } else {
            (digits[..int_len].to_string(), digits[int_len..].to_string())
        }
    } else {
        let zeros = "0".repeat((-exp - 1) as usize);
        ("0".to_string(), format!("{zeros}{digits}"))
    };
    let frac_part = frac_part.trim_end_matches('0');
    if frac_part.is_empty() {
        int_part
    } else {
        format!("{int_part}.{frac_part}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sig_plain_and_scientific() {
        assert_eq!(fmt_sig(0.0, 3), "0");
        assert_eq!(fmt_sig(-0.0, 3), "0");
        assert_eq!(fmt_sig(1.0, 3), "1");
        assert_eq!(fmt_sig(0.9146, 3), "0.915");
        assert_eq!(fmt_sig(0.9999, 3), "1");
        assert_eq!(fmt_sig(9.9996, 4), "10");
        assert_eq!(fmt_sig(123456.0, 3), "123000");
        assert_eq!(fmt_sig(1234567.0, 3), "1.23e6");
        assert_eq!(fmt_sig(12.0, 8), "12");
        assert_eq!(fmt_sig(0.0001, 3), "0.0001");
        assert_eq!(fmt_sig(0.00001, 3), "1e-5");
        assert_eq!(fmt_sig(-3.14159e-9, 3), "-3.14e-9");
        assert_eq!(fmt_sig(0.1 + 0.2, 6), "0.3");
        assert_eq!(fmt_sig(2.7, 0), "3");
        // Exact ties round to even, as Rust's (and C's) float formatting does.
        assert_eq!(fmt_sig(2.5, 0), "2");
        assert_eq!(fmt_sig(f64::NAN, 3), "NaN");
        assert_eq!(fmt_sig(f64::INFINITY, 3), "inf");
        assert_eq!(fmt_sig(f64::NEG_INFINITY, 3), "-inf");
        assert_eq!(fmt_sig(f64::MAX, 3), "1.8e308");
        assert_eq!(fmt_sig(5e-324, 3), "4.94e-324");
    }

    #[test]
    fn sci_is_exact_at_powers_of_ten() {
        for k in -12..=12 {
            let v = 10f64.powi(k);
            assert_eq!(fmt_sci(v, 2), format!("1e{k}"));
        }
        assert_eq!(fmt_sci(2.5e-6, 2), "2.5e-6");
        assert_eq!(fmt_sci(2.9999999999999997e-6, 2), "3e-6");
        assert_eq!(fmt_sci(-40.0, 2), "-4e1");
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration_s(0.0), "0 s");
        assert_eq!(fmt_duration_s(8.5e-7), "850 ns");
        assert_eq!(fmt_duration_s(1.25e-5), "12.5 µs");
        assert_eq!(fmt_duration_s(0.0123), "12.3 ms");
        assert_eq!(fmt_duration_s(0.99996), "1 s");
        assert_eq!(fmt_duration_s(4.567), "4.57 s");
        assert_eq!(fmt_duration_s(75.2), "1 min 15 s");
        assert_eq!(fmt_duration_s(59.97), "1 min 0 s");
        assert_eq!(fmt_duration_s(6000.0), "1 h 40 min");
        assert_eq!(fmt_duration_s(-2.0), "-2 s");
        assert_eq!(fmt_duration_s(f64::NAN), "NaN s");
    }

    #[test]
    fn bytes() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1023), "1023 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(7840 * 7840 * 4), "234 MiB");
        assert_eq!(fmt_bytes(7840 * 7840 * 8), "469 MiB");
        assert_eq!(fmt_bytes(3 << 30), "3 GiB");
        assert_eq!(fmt_bytes(u64::MAX), "16 EiB");
    }
}
