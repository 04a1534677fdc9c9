//! Summaries of repeated samples: median, min, max, and ratios between allocators.

use serde::Serialize;

/// Median, minimum and maximum of a set of samples.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The median (mean of the two middle samples for an even count).
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none or any is NaN.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|x| x.is_nan()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// How many times slower (> 1) or faster (< 1) `peer` is than `reference`, for "lower is
/// better" figures such as ns/op. `None` when the reference is not positive.
pub fn ratio(peer: f64, reference: f64) -> Option<f64> {
    (reference > 0.0 && peer.is_finite()).then(|| peer / reference)
}

/// Millions of operations per second for a cost of `ns_per_op` nanoseconds per operation.
pub fn mops(ns_per_op: f64) -> f64 {
    if ns_per_op > 0.0 {
        1e3 / ns_per_op
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        let s = Summary::of(&[4.0, 1.0, 3.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.5, 1.0, 10.0));
        let s = Summary::of(&[7.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (7.0, 7.0, 7.0));
    }

    #[test]
    fn empty_or_nan_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn ratios_and_throughput() {
        assert_eq!(ratio(30.0, 10.0), Some(3.0));
        assert_eq!(ratio(5.0, 10.0), Some(0.5));
        assert_eq!(ratio(5.0, 0.0), None);
        assert!((mops(10.0) - 100.0).abs() < 1e-9);
        assert_eq!(mops(0.0), 0.0);
    }
}
