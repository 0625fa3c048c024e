//! Resilience primitives shared by every rtalpha client, the gateway and the
//! services: a circuit breaker, retries with exponential backoff bounded by a
//! retry budget, a bulkhead and a timeout. Each comes as a plain async call
//! and as a tower `Layer`, so one stack can be built from them in one place.

pub mod backoff;
