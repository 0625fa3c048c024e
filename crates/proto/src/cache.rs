//! Cache invalidations: what one instance of a service tells the others when it writes
//! to a shared cache, so that their near caches drop what is no longer true.
//!
//! They travel on the bus as a [`crate::bus::RemoteEvent`] of their own type, but never
//! on Spring Cloud Bus's exchange: over RabbitMQ they go to [`CACHE_EXCHANGE`] with a
//! routing key per service and cache, so Spring Boot services on the same broker never
//! see them. Over the config server's relay and over Redis pub/sub they are the same JSON.

use serde::{Deserialize, Serialize};

/// The RabbitMQ topic exchange that carries cache invalidations (never Spring's).
pub const CACHE_EXCHANGE: &str = "rtalphaCache";

/// One message of a publisher, numbered: an invalidation of some keys, of the whole
/// cache, or (neither) a heartbeat that only announces the publisher's last number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheInvalidation {
    /// Milliseconds since the epoch, by the publisher's clock.
    pub timestamp: u64,
    /// The publisher: one cache of one process, unique for its lifetime.
    pub origin_service: String,
    /// Who should act, Spring-style: `service:**` (every instance of the service).
    pub destination_service: String,
    /// The cache's name within the service.
    pub cache: String,
    /// The publisher's number for this message: invalidations count up from 1 without
    /// a gap; a heartbeat repeats the last number sent (0 before the first).
    pub sequence: u64,
    /// The keys to drop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Drop every entry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl CacheInvalidation {
    /// The destination of a service's caches: `service:**`.
    pub fn destination_of(service: &str) -> String {
        format!("{service}:**")
    }

    /// Whether this message only announces the publisher's last number.
    pub fn is_heartbeat(&self) -> bool {
        self.keys.is_empty() && !self.all
    }

    /// The service named by the destination (`service:**` → `service`).
    pub fn service(&self) -> &str {
        self.destination_service
            .strip_suffix(":**")
            .unwrap_or(&self.destination_service)
    }

    /// The RabbitMQ routing key of this message on [`CACHE_EXCHANGE`].
    pub fn routing_key(&self) -> String {
        routing_key(self.service(), &self.cache)
    }
}

/// The RabbitMQ routing key of a service's cache on [`CACHE_EXCHANGE`]: `service.cache`.
pub fn routing_key(service: &str, cache: &str) -> String {
    format!("{service}.{cache}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::bus::RemoteEvent;

    #[test]
    fn invalidations_are_remote_events_of_their_own_type() {
        let invalidation = CacheInvalidation {
            timestamp: 7,
            origin_service: "product-service:products:ab12".into(),
            destination_service: CacheInvalidation::destination_of("product-service"),
            cache: "products".into(),
            sequence: 3,
            keys: vec!["p-1".into()],
            all: false,
        };
        let event = RemoteEvent::CacheInvalidation(invalidation.clone());
        let wire = serde_json::to_value(&event).unwrap();
        assert_eq!(
            wire,
            json!({"type": "CacheInvalidation", "timestamp": 7, "originService": "product-service:products:ab12",
                   "destinationService": "product-service:**", "cache": "products", "sequence": 3, "keys": ["p-1"]})
        );
        let back: RemoteEvent = serde_json::from_value(wire).unwrap();
        assert_eq!(back, event);
        assert_eq!(back.origin(), "product-service:products:ab12");
        assert_eq!(back.destination(), "product-service:**");
        assert_eq!(invalidation.service(), "product-service");
        assert_eq!(invalidation.routing_key(), "product-service.products");
        assert!(!invalidation.is_heartbeat());
    }

    #[test]
    fn heartbeats_and_whole_cache_invalidations_read_back() {
        let heartbeat: CacheInvalidation = serde_json::from_value(json!({"timestamp": 1, "originService": "a",
            "destinationService": "s:**", "cache": "c", "sequence": 0}))
        .unwrap();
        assert!(heartbeat.is_heartbeat());
        let all: CacheInvalidation = serde_json::from_value(json!({"timestamp": 1, "originService": "a",
            "destinationService": "s:**", "cache": "c", "sequence": 4, "all": true}))
        .unwrap();
        assert!(all.all && !all.is_heartbeat());
        assert_eq!(serde_json::to_value(&all).unwrap()["all"], true);
    }
}
