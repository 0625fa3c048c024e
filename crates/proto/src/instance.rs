//! The registry's instance model: a superset of Eureka's `InstanceInfo`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The life-cycle status of an instance, as Eureka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Ready to take traffic.
    Up,
    /// Running but failing; takes no traffic.
    Down,
    /// Starting up; takes no traffic yet.
    Starting,
    /// Taken out of rotation by an operator.
    OutOfService,
    /// Not known; as an overridden status, "no override".
    #[default]
    Unknown,
}

/// A status name that is not one of Eureka's five.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusParseError(pub String);

impl fmt::Display for StatusParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown status `{}`: expected one of UP, DOWN, STARTING, OUT_OF_SERVICE, UNKNOWN",
            self.0
        )
    }
}

impl std::error::Error for StatusParseError {}

impl Status {
    /// Every status, in Eureka's declaration order.
    pub const ALL: [Status; 5] = [
        Status::Up,
        Status::Down,
        Status::Starting,
        Status::OutOfService,
        Status::Unknown,
    ];

    /// The wire name, such as `OUT_OF_SERVICE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "UP",
            Status::Down => "DOWN",
            Status::Starting => "STARTING",
            Status::OutOfService => "OUT_OF_SERVICE",
            Status::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = StatusParseError;

    /// Parses a wire name; case is ignored, as Eureka's own parser does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| StatusParseError(s.to_owned()))
    }
}

/// A port and whether it is enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// The port number.
    pub number: u16,
    /// Whether clients may use it.
    pub enabled: bool,
}

/// Where an instance runs: Eureka's `dataCenterInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCenter {
    /// `MyOwn`, `Amazon` or `Netflix`.
    pub name: String,
    /// The Java class that Eureka clients expect back, such as
    /// `com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo`.
    pub class: String,
    /// Cloud metadata (for `Amazon`: `availability-zone`, `instance-id`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl Default for DataCenter {
    fn default() -> Self {
        DataCenter {
            name: "MyOwn".to_owned(),
            class: DataCenter::DEFAULT_CLASS.to_owned(),
            metadata: BTreeMap::new(),
        }
    }
}

impl DataCenter {
    /// The class name of Eureka's default data-center info.
    pub const DEFAULT_CLASS: &'static str = "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo";
}

/// The lease an instance holds: how often it renews, how long a renewal lasts, and when
/// things happened (milliseconds since the Unix epoch; 0 for "never").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// How often the instance promises to renew, in seconds.
    pub renewal_interval_secs: u32,
    /// How long after its last renewal the instance is evicted, in seconds.
    pub duration_secs: u32,
    /// When the instance registered.
    pub registration_timestamp: u64,
    /// When the instance last renewed.
    pub last_renewal_timestamp: u64,
    /// When the instance was evicted or cancelled.
    pub eviction_timestamp: u64,
    /// When the instance first went UP.
    pub service_up_timestamp: u64,
}

impl Default for LeaseInfo {
    fn default() -> Self {
        LeaseInfo {
            renewal_interval_secs: LeaseInfo::DEFAULT_RENEWAL_INTERVAL_SECS,
            duration_secs: LeaseInfo::DEFAULT_DURATION_SECS,
            registration_timestamp: 0,
            last_renewal_timestamp: 0,
            eviction_timestamp: 0,
            service_up_timestamp: 0,
        }
    }
}

impl LeaseInfo {
    /// Eureka's default renewal interval.
    pub const DEFAULT_RENEWAL_INTERVAL_SECS: u32 = 30;
    /// Eureka's default lease duration.
    pub const DEFAULT_DURATION_SECS: u32 = 90;
}

/// What happened to an instance in a delta: Eureka's `actionType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActionType {
    /// Newly registered.
    Added,
    /// Changed: status, metadata or a re-registration.
    Modified,
    /// Cancelled or evicted.
    Deleted,
}

impl ActionType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::Added => "ADDED",
            ActionType::Modified => "MODIFIED",
            ActionType::Deleted => "DELETED",
        }
    }
}

/// One registered instance of an application.
///
/// App names are kept upper-case, as Eureka does, so that `user-service` and
/// `USER-SERVICE` are the same application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The application (upper-case).
    pub app: String,
    /// Unique within the application.
    pub instance_id: String,
    /// The host name clients should use.
    pub host_name: String,
    /// The IP address.
    pub ip_addr: String,
    /// The plain HTTP port.
    pub port: Port,
    /// The HTTPS port.
    pub secure_port: Port,
    /// The virtual (logical) address clients look the service up by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_address: Option<String>,
    /// The secure virtual address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_vip_address: Option<String>,
    /// The status in force (an override wins over what the instance reports).
    pub status: Status,
    /// The operator's override; `UNKNOWN` when there is none.
    pub overridden_status: Status,
    /// Free-form key/value metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Where the instance runs.
    #[serde(default)]
    pub data_center: DataCenter,
    /// The zone: given explicitly, or taken from the `zone` metadata key or the
    /// data-center's `availability-zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The instance's home page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_page_url: Option<String>,
    /// The instance's status page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_page_url: Option<String>,
    /// The instance's health check over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_url: Option<String>,
    /// The instance's health check over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_health_check_url: Option<String>,
    /// Eureka's country id (1 unless set).
    #[serde(default = "default_country_id")]
    pub country_id: i32,
    /// The lease.
    #[serde(default)]
    pub lease: LeaseInfo,
    /// Whether this instance is itself a discovery server.
    #[serde(default)]
    pub is_coordinating_discovery_server: bool,
    /// When the registry last changed this record (ms since the epoch).
    #[serde(default)]
    pub last_updated_timestamp: u64,
    /// When the instance itself last changed its record (ms since the epoch); the newer
    /// one wins a conflict.
    #[serde(default)]
    pub last_dirty_timestamp: u64,
    /// What happened to it last, in deltas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_type: Option<ActionType>,
    /// The registry's active health check, for an instance that opted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthVerdict>,
}

/// The verdict of the registry's active health check of an instance.
///
/// While `passing` is false the instance's status is DOWN (unless an operator's
/// override is in force); when it passes again the instance gets back the status it
/// reported itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthVerdict {
    /// Whether the checks pass.
    pub passing: bool,
    /// When the verdict last changed (ms since the epoch).
    pub since: u64,
    /// Why it fails, or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The status the instance reported itself.
    pub reported_status: Status,
}

fn default_country_id() -> i32 {
    1
}

impl Instance {
    /// The zone an instance declares, by the conventions Eureka clients use: the
    /// `zone` metadata key (Spring Cloud) or the data center's `availability-zone` (AWS).
    pub fn declared_zone(&self) -> Option<String> {
        self.zone
            .clone()
            .or_else(|| self.metadata.get("zone").cloned())
            .or_else(|| self.data_center.metadata.get("availability-zone").cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parses_any_case_and_rejects_unknown_names() {
        assert_eq!("up".parse::<Status>(), Ok(Status::Up));
        assert_eq!("OUT_OF_SERVICE".parse::<Status>(), Ok(Status::OutOfService));
        let err = "SLEEPING".parse::<Status>().unwrap_err();
        assert!(err.to_string().contains("SLEEPING"));
    }

    #[test]
    fn status_wire_names_round_trip_through_serde() {
        for status in Status::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
        }
    }
}
