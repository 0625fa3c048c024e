//! What every rtalpha server shares.
//!
//! A server crate builds its axum `Router` and hands it to [`http::serve`], which adds
//! the platform's common behaviour: request ids, access logs and metrics, the JSON
//! error body on every failure, `/health`, `/ready` and `/metrics`, a request body
//! limit, and graceful shutdown. Configuration is layered by [`config::load`], and
//! logs and metrics are set up by [`telemetry::init`].

pub mod auth;
pub mod config;
pub mod error;
pub mod health;
pub mod http;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, ServerConfig, TelemetryConfig};
pub use error::ApiError;
pub use health::{Health, HealthState};
