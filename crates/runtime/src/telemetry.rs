//! Logs through `tracing`, metrics through the `metrics` crate in Prometheus text.
//!
//! The Prometheus recorder is process-wide (the `metrics` facade has one global
//! recorder), so several servers started in one test process share it; each server's
//! `/metrics` renders the same registry.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets of request-duration histograms, in seconds: 100 µs to 10 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// How often histogram samples are folded into their buckets, so that memory stays
/// bounded when nobody scrapes `/metrics`.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Starts logging as configured (once per process; later calls keep the first set-up)
/// and the metrics recorder.
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _already_set = match config.log_format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    metrics();
}

/// The process's metrics handle, installing the recorder on first use.
///
/// Must first be called inside a Tokio runtime, which runs the upkeep task.
pub fn metrics() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&DURATION_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only this handle's metrics");
        }
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                interval.tick().await;
                upkeep.run_upkeep();
            }
        });
        handle
    })
}
