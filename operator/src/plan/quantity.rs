//! Kubernetes resource quantities (`512Mi`, `1G`, `1.5Gi`, `100m`) as
//! numbers, for the planners' comparisons and derived defaults.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The value of a quantity in whole units (bytes for memory and storage),
/// rounded down; `None` when it is not a quantity Kubernetes accepts.
pub fn to_units(quantity: &Quantity) -> Option<u128> {
    let text = quantity.0.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (scale_num, scale_den): (u128, u128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1000u128.pow(2), 1),
        "G" => (1000u128.pow(3), 1),
        "T" => (1000u128.pow(4), 1),
        "P" => (1000u128.pow(5), 1),
        "E" => (1000u128.pow(6), 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        exponent => {
            let power: u32 = exponent
                .strip_prefix(['e', 'E'])?
                .strip_prefix('+')
                .unwrap_or(exponent.get(1..)?)
                .parse()
                .ok()?;
            (10u128.checked_pow(power)?, 1)
        }
    };
    let number = number.strip_prefix('+').unwrap_or(number);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) || fraction.len() > 18 {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    let fraction_scale = 10u128.pow(fraction.len() as u32);
    let value = whole
        .checked_mul(fraction_scale)?
        .checked_add(fraction_value)?;
    value
        .checked_mul(scale_num)?
        .checked_div(scale_den.checked_mul(fraction_scale)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(text: &str) -> Option<u128> {
        to_units(&Quantity(text.to_owned()))
    }

    #[test]
    fn binary_decimal_fractions_and_exponents() {
        assert_eq!(units("512Mi"), Some(512 << 20));
        assert_eq!(units("1Gi"), Some(1 << 30));
        assert_eq!(units("1.5Gi"), Some(3 << 29));
        assert_eq!(units("1G"), Some(1_000_000_000));
        assert_eq!(units("20Gi"), Some(20 << 30));
        assert_eq!(units("100m"), Some(0));
        assert_eq!(units("1500m"), Some(1));
        assert_eq!(units("123"), Some(123));
        assert_eq!(units("1e3"), Some(1000));
        assert_eq!(units("2E6"), Some(2_000_000));
        assert_eq!(units(".5Ki"), Some(512));
        for bad in ["", "Gi", "1GB", "one", "1.2.3Mi", "-1Gi", "1e"] {
            assert_eq!(units(bad), None, "{bad}");
        }
    }
}
