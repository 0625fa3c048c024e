//! Percentiles of measured durations.

use std::time::Duration;

/// The nearest-rank percentile (`p` in 0..=100) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

/// Microseconds, for the JSON lines.
pub fn micros(duration: Option<Duration>) -> Option<u64> {
    duration.map(|d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_picks_the_sample_at_or_above_the_share() {
        let mut samples: Vec<Duration> = (1..=200).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut samples, 50.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&mut samples, 99.0), Some(Duration::from_millis(198)));
        assert_eq!(percentile(&mut samples, 100.0), Some(Duration::from_millis(200)));
        assert_eq!(percentile(&mut [], 50.0), None);
    }
}
