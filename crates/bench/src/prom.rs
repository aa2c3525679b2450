//! Reads the autoscaler's reconcile-tick histogram from its Prometheus text exposition.

use serde::{Deserialize, Serialize};

pub const TICK_HISTOGRAM: &str = "forgejo_autoscaler_reconcile_tick_seconds";

/// The reconcile tick histogram, reduced to what the tables print.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TickStats {
    pub ticks: u64,
    pub mean_s: f64,
    /// Upper bound of the bucket holding the 50th / 95th percentile (`+Inf` as null).
    pub p50_le_s: Option<f64>,
    pub p95_le_s: Option<f64>,
    /// Cumulative bucket counts, (upper bound, count).
    pub buckets: Vec<(f64, u64)>,
}

/// Parses `NAME_bucket{le="..."}`, `NAME_sum` and `NAME_count` of one histogram.
pub fn tick_stats(text: &str) -> Option<TickStats> {
    let mut buckets = Vec::new();
    let mut sum = None;
    let mut count = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(TICK_HISTOGRAM) else {
            continue;
        };
        let (head, value) = rest.rsplit_once(' ')?;
        let value: f64 = value.trim().parse().ok()?;
        if head == "_sum" {
            sum = Some(value);
        } else if head == "_count" {
            count = Some(value as u64);
        } else if let Some(labels) = head.strip_prefix("_bucket{") {
            let le = labels
                .split(',')
                .find_map(|kv| kv.trim().strip_prefix("le=\""))?
                .trim_end_matches(['"', '}']);
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            buckets.push((bound, value as u64));
        }
    }
    let (sum, count) = (sum?, count?);
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let quantile = |q: f64| {
        let rank = (count as f64 * q).ceil() as u64;
        buckets
            .iter()
            .find(|(_, c)| *c >= rank.max(1))
            .map(|(b, _)| *b)
            .filter(|b| b.is_finite())
    };
    Some(TickStats {
        ticks: count,
        mean_s: if count > 0 { sum / count as f64 } else { 0.0 },
        p50_le_s: quantile(0.5),
        p95_le_s: quantile(0.95),
        buckets: buckets.into_iter().filter(|(b, _)| b.is_finite()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "# HELP forgejo_autoscaler_reconcile_tick_seconds Duration of one reconcile tick.
# TYPE forgejo_autoscaler_reconcile_tick_seconds histogram
forgejo_autoscaler_reconcile_tick_seconds_sum 1.5
forgejo_autoscaler_reconcile_tick_seconds_count 20
forgejo_autoscaler_reconcile_tick_seconds_bucket{le=\"0.005\"} 2
forgejo_autoscaler_reconcile_tick_seconds_bucket{le=\"0.01\"} 12
forgejo_autoscaler_reconcile_tick_seconds_bucket{le=\"0.25\"} 19
forgejo_autoscaler_reconcile_tick_seconds_bucket{le=\"+Inf\"} 20
forgejo_autoscaler_runners_created_total{pool=\"bench\"} 3
";

    #[test]
    fn reads_count_mean_and_quantile_buckets() {
        let stats = tick_stats(SAMPLE).expect("histogram present");
        assert_eq!(stats.ticks, 20);
        assert!((stats.mean_s - 0.075).abs() < 1e-12);
        assert_eq!(stats.p50_le_s, Some(0.01));
        assert_eq!(stats.p95_le_s, Some(0.25));
        assert_eq!(stats.buckets.len(), 3);
    }

    #[test]
    fn missing_histogram_is_none() {
        assert_eq!(tick_stats("other_metric 1\n"), None);
    }
}
