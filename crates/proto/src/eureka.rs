//! Eureka's REST wire format, so that Eureka clients in any language work unchanged.
//!
//! Encoding produces the JSON shape of Eureka's Jackson codec (`{"$": 8080,
//! "@enabled": "true"}` for ports, string timestamps where Eureka writes strings,
//! `dataCenterInfo` with its Java `@class`). Decoding is lenient in the ways real
//! clients differ (numbers as strings, booleans as strings, one object where a list is
//! usual) and strict about what the registry cannot do without: every failure names
//! the offending field. The XML codec of the registry maps XML onto this same JSON
//! shape, so both formats share one decoder.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::instance::{ActionType, DataCenter, Instance, LeaseInfo, Port, Status};

/// The `@class` Eureka writes for an empty metadata map.
pub const EMPTY_METADATA_CLASS: &str = "java.util.Collections$EmptyMap";

/// A request body that is not a usable Eureka instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The dotted path of the offending field, such as `instance.port.$`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.problem)
    }
}

impl std::error::Error for DecodeError {}

/// A port as Eureka writes it: `{"$": 8080, "@enabled": "true"}`.
#[derive(Debug, Serialize)]
pub struct PortJson {
    /// The port number.
    #[serde(rename = "$")]
    pub number: u16,
    /// `"true"` or `"false"`: Eureka writes the flag as a string.
    #[serde(rename = "@enabled")]
    pub enabled: &'static str,
}

/// `dataCenterInfo` as Eureka writes it.
#[derive(Debug, Serialize)]
pub struct DataCenterJson<'a> {
    /// The Java class of the data-center info.
    #[serde(rename = "@class")]
    pub class: &'a str,
    /// `MyOwn`, `Amazon` or `Netflix`.
    pub name: &'a str,
    /// Cloud metadata, when there is any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a BTreeMap<String, String>>,
}

/// `leaseInfo` as Eureka writes it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseInfoJson {
    /// Seconds between renewals.
    pub renewal_interval_in_secs: u32,
    /// Seconds a renewal lasts.
    pub duration_in_secs: u32,
    /// Registration time (ms).
    pub registration_timestamp: u64,
    /// Last renewal time (ms).
    pub last_renewal_timestamp: u64,
    /// Eviction time (ms), 0 when not evicted.
    pub eviction_timestamp: u64,
    /// Time the instance first went UP (ms).
    pub service_up_timestamp: u64,
}

/// One instance in Eureka's JSON shape.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceJson<'a> {
    /// The instance id.
    pub instance_id: &'a str,
    /// The host name.
    pub host_name: &'a str,
    /// The application name.
    pub app: &'a str,
    /// The IP address.
    pub ip_addr: &'a str,
    /// The status in force.
    pub status: &'static str,
    /// The operator override (Eureka's historical spelling).
    pub overriddenstatus: &'static str,
    /// The operator override (the newer spelling; both are written).
    pub overridden_status: &'static str,
    /// The plain port.
    pub port: PortJson,
    /// The secure port.
    pub secure_port: PortJson,
    /// The country id.
    pub country_id: i32,
    /// The data-center info.
    pub data_center_info: DataCenterJson<'a>,
    /// The lease.
    pub lease_info: LeaseInfoJson,
    /// Metadata; `{"@class": "java.util.Collections$EmptyMap"}` when empty, as Eureka.
    pub metadata: Value,
    /// The home page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home_page_url: Option<&'a str>,
    /// The status page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_page_url: Option<&'a str>,
    /// The health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_url: Option<&'a str>,
    /// The secure health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_health_check_url: Option<&'a str>,
    /// The VIP address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip_address: Option<&'a str>,
    /// The secure VIP address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_vip_address: Option<&'a str>,
    /// `"true"` or `"false"`.
    pub is_coordinating_discovery_server: &'static str,
    /// Written as a string, as Eureka does.
    pub last_updated_timestamp: String,
    /// Written as a string, as Eureka does.
    pub last_dirty_timestamp: String,
    /// What happened to it last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_type: Option<&'static str>,
}

/// One application in Eureka's JSON shape.
#[derive(Debug, Serialize)]
pub struct ApplicationJson<'a> {
    /// The application name.
    pub name: &'a str,
    /// Its instances.
    pub instance: Vec<InstanceJson<'a>>,
}

/// The `applications` object of a full or delta fetch.
#[derive(Debug, Serialize)]
pub struct ApplicationsJson<'a> {
    /// The version of this view.
    #[serde(rename = "versions__delta")]
    pub versions_delta: String,
    /// The reconcile hash code: status counts, such as `DOWN_1_UP_5_`.
    #[serde(rename = "apps__hashcode")]
    pub apps_hashcode: String,
    /// The applications.
    pub application: Vec<ApplicationJson<'a>>,
}

fn flag(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

fn port_json(port: Port) -> PortJson {
    PortJson {
        number: port.number,
        enabled: flag(port.enabled),
    }
}

/// Renders one instance in Eureka's JSON shape.
pub fn instance_json(instance: &Instance) -> InstanceJson<'_> {
    let metadata = if instance.metadata.is_empty() {
        let mut map = Map::new();
        map.insert("@class".to_owned(), Value::String(EMPTY_METADATA_CLASS.to_owned()));
        Value::Object(map)
    } else {
        Value::Object(
            instance
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    };
    let lease = &instance.lease;
    InstanceJson {
        instance_id: &instance.instance_id,
        host_name: &instance.host_name,
        app: &instance.app,
        ip_addr: &instance.ip_addr,
        status: instance.status.as_str(),
        overriddenstatus: instance.overridden_status.as_str(),
        overridden_status: instance.overridden_status.as_str(),
        port: port_json(instance.port),
        secure_port: port_json(instance.secure_port),
        country_id: instance.country_id,
        data_center_info: DataCenterJson {
            class: &instance.data_center.class,
            name: &instance.data_center.name,
            metadata: (!instance.data_center.metadata.is_empty()).then_some(&instance.data_center.metadata),
        },
        lease_info: LeaseInfoJson {
            renewal_interval_in_secs: lease.renewal_interval_secs,
            duration_in_secs: lease.duration_secs,
            registration_timestamp: lease.registration_timestamp,
            last_renewal_timestamp: lease.last_renewal_timestamp,
            eviction_timestamp: lease.eviction_timestamp,
            service_up_timestamp: lease.service_up_timestamp,
        },
        metadata,
        home_page_url: instance.home_page_url.as_deref(),
        status_page_url: instance.status_page_url.as_deref(),
        health_check_url: instance.health_check_url.as_deref(),
        secure_health_check_url: instance.secure_health_check_url.as_deref(),
        vip_address: instance.vip_address.as_deref(),
        secure_vip_address: instance.secure_vip_address.as_deref(),
        is_coordinating_discovery_server: flag(instance.is_coordinating_discovery_server),
        last_updated_timestamp: instance.last_updated_timestamp.to_string(),
        last_dirty_timestamp: instance.last_dirty_timestamp.to_string(),
        action_type: instance.action_type.map(ActionType::as_str),
    }
}

/// Eureka's reconcile hash code over the statuses of some instances: each status with
/// its count, in alphabetical order of the status name, as `DOWN_1_UP_5_`.
pub fn reconcile_hash_code(statuses: impl IntoIterator<Item = Status>) -> String {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for status in statuses {
        *counts.entry(status.as_str()).or_default() += 1;
    }
    let mut hash = String::new();
    for (name, count) in counts {
        hash.push_str(name);
        hash.push('_');
        hash.push_str(&count.to_string());
        hash.push('_');
    }
    hash
}

/// Decodes a registration body: `{"instance": {...}}`, or the bare instance object.
pub fn decode_registration(body: &Value) -> Result<Instance, DecodeError> {
    let object = body.as_object().ok_or_else(|| DecodeError {
        field: "(body)".to_owned(),
        problem: format!("expected a JSON object, found {}", kind(body)),
    })?;
    match object.get("instance") {
        Some(inner) => decode_instance(inner, "instance"),
        None => decode_instance(body, "instance"),
    }
}

/// Decodes one instance object; `path` names it in errors.
pub fn decode_instance(value: &Value, path: &str) -> Result<Instance, DecodeError> {
    let fields = Fields::object(value, path)?;
    let host_name = fields.required_string("hostName")?;
    let app = fields.required_string("app")?.to_ascii_uppercase();
    let ip_addr = fields.required_string("ipAddr")?;
    let data_center = match fields.get("dataCenterInfo") {
        Some(value) => decode_data_center(value, &fields.child("dataCenterInfo"))?,
        None => {
            return Err(DecodeError {
                field: fields.child("dataCenterInfo"),
                problem: "is required".to_owned(),
            });
        }
    };
    let instance_id = match fields.optional_string("instanceId")? {
        Some(id) => id,
        None => data_center
            .metadata
            .get("instance-id")
            .cloned()
            .unwrap_or_else(|| host_name.clone()),
    };
    let status = fields.optional_status("status")?.unwrap_or(Status::Up);
    let overridden_status = match fields.optional_status("overriddenStatus")? {
        Some(status) => status,
        None => fields.optional_status("overriddenstatus")?.unwrap_or(Status::Unknown),
    };
    let port = match fields.get("port") {
        Some(value) => decode_port(value, &fields.child("port"), true)?,
        None => Port {
            number: 7001,
            enabled: false,
        },
    };
    let secure_port = match fields.get("securePort") {
        Some(value) => decode_port(value, &fields.child("securePort"), false)?,
        None => Port {
            number: 7002,
            enabled: false,
        },
    };
    let lease = match fields.get("leaseInfo") {
        Some(value) => decode_lease(value, &fields.child("leaseInfo"))?,
        None => LeaseInfo::default(),
    };
    let metadata = match fields.get("metadata") {
        Some(value) => decode_string_map(value, &fields.child("metadata"))?,
        None => BTreeMap::new(),
    };
    let mut instance = Instance {
        app,
        instance_id,
        host_name,
        ip_addr,
        port,
        secure_port,
        vip_address: fields.optional_string("vipAddress")?,
        secure_vip_address: fields.optional_string("secureVipAddress")?,
        status,
        overridden_status,
        metadata,
        data_center,
        zone: None,
        home_page_url: fields.optional_string("homePageUrl")?,
        status_page_url: fields.optional_string("statusPageUrl")?,
        health_check_url: fields.optional_string("healthCheckUrl")?,
        secure_health_check_url: fields.optional_string("secureHealthCheckUrl")?,
        country_id: fields.optional_i64("countryId")?.map_or(1, |id| id as i32),
        lease,
        is_coordinating_discovery_server: fields.optional_bool("isCoordinatingDiscoveryServer")?.unwrap_or(false),
        last_updated_timestamp: fields.optional_u64("lastUpdatedTimestamp")?.unwrap_or(0),
        last_dirty_timestamp: fields.optional_u64("lastDirtyTimestamp")?.unwrap_or(0),
        action_type: None,
        health_check: None,
    };
    instance.zone = instance.declared_zone();
    Ok(instance)
}

fn decode_port(value: &Value, path: &str, default_enabled: bool) -> Result<Port, DecodeError> {
    if value.is_object() {
        let fields = Fields::object(value, path)?;
        let number = match fields.get("$") {
            Some(v) => to_port(v, &fields.child("$"))?,
            None => {
                return Err(DecodeError {
                    field: fields.child("$"),
                    problem: "is required".to_owned(),
                });
            }
        };
        let enabled = fields.optional_bool("@enabled")?.unwrap_or(default_enabled);
        Ok(Port { number, enabled })
    } else {
        Ok(Port {
            number: to_port(value, path)?,
            enabled: default_enabled,
        })
    }
}

fn to_port(value: &Value, path: &str) -> Result<u16, DecodeError> {
    let number = to_u64(value, path)?;
    u16::try_from(number).map_err(|_| DecodeError {
        field: path.to_owned(),
        problem: format!("port {number} is out of range 0..=65535"),
    })
}

fn decode_data_center(value: &Value, path: &str) -> Result<DataCenter, DecodeError> {
    let fields = Fields::object(value, path)?;
    let name = fields.required_string("name")?;
    let class = fields
        .optional_string("@class")?
        .unwrap_or_else(|| DataCenter::DEFAULT_CLASS.to_owned());
    let metadata = match fields.get("metadata") {
        Some(value) => decode_string_map(value, &fields.child("metadata"))?,
        None => BTreeMap::new(),
    };
    Ok(DataCenter { name, class, metadata })
}

fn decode_lease(value: &Value, path: &str) -> Result<LeaseInfo, DecodeError> {
    let fields = Fields::object(value, path)?;
    let positive = |key: &str, default: u32| -> Result<u32, DecodeError> {
        match fields.optional_u64(key)? {
            None => Ok(default),
            Some(0) => Err(DecodeError {
                field: fields.child(key),
                problem: "must be at least 1".to_owned(),
            }),
            Some(n) => u32::try_from(n).map_err(|_| DecodeError {
                field: fields.child(key),
                problem: format!("{n} is too large"),
            }),
        }
    };
    Ok(LeaseInfo {
        renewal_interval_secs: positive("renewalIntervalInSecs", LeaseInfo::DEFAULT_RENEWAL_INTERVAL_SECS)?,
        duration_secs: positive("durationInSecs", LeaseInfo::DEFAULT_DURATION_SECS)?,
        ..LeaseInfo::default()
    })
}

fn decode_string_map(value: &Value, path: &str) -> Result<BTreeMap<String, String>, DecodeError> {
    match value {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => Ok(map
            .iter()
            .filter(|(key, _)| key.as_str() != "@class")
            .map(|(key, value)| {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (key.clone(), text)
            })
            .collect()),
        other => Err(DecodeError {
            field: path.to_owned(),
            problem: format!("expected an object of strings, found {}", kind(other)),
        }),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn to_u64(value: &Value, path: &str) -> Result<u64, DecodeError> {
    let parsed = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| DecodeError {
        field: path.to_owned(),
        problem: format!("expected a non-negative integer, found {}", describe(value)),
    })
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) if s.len() <= 40 => format!("\"{s}\""),
        other => kind(other).to_owned(),
    }
}

/// Field access on one JSON object with error paths.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Fields<'a> {
    fn object(value: &'a Value, path: &'a str) -> Result<Self, DecodeError> {
        match value {
            Value::Object(map) => Ok(Fields { map, path }),
            other => Err(DecodeError {
                field: path.to_owned(),
                problem: format!("expected an object, found {}", kind(other)),
            }),
        }
    }

    fn child(&self, key: &str) -> String {
        format!("{}.{}", self.path, key)
    }

    /// A present, non-null value.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|value| !value.is_null())
    }

    fn optional_string(&self, key: &str) -> Result<Option<String>, DecodeError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(DecodeError {
                field: self.child(key),
                problem: format!("expected a string, found {}", kind(other)),
            }),
        }
    }

    fn required_string(&self, key: &str) -> Result<String, DecodeError> {
        self.optional_string(key)?.ok_or_else(|| DecodeError {
            field: self.child(key),
            problem: "is required".to_owned(),
        })
    }

    fn optional_status(&self, key: &str) -> Result<Option<Status>, DecodeError> {
        match self.optional_string(key)? {
            None => Ok(None),
            Some(name) => name
                .parse()
                .map(Some)
                .map_err(|err: crate::StatusParseError| DecodeError {
                    field: self.child(key),
                    problem: err.to_string(),
                }),
        }
    }

    fn optional_u64(&self, key: &str) -> Result<Option<u64>, DecodeError> {
        self.get(key).map(|value| to_u64(value, &self.child(key))).transpose()
    }

    fn optional_i64(&self, key: &str) -> Result<Option<i64>, DecodeError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let parsed = match value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        parsed
            .filter(|n| i32::try_from(*n).is_ok())
            .map(Some)
            .ok_or_else(|| DecodeError {
                field: self.child(key),
                problem: format!("expected a 32-bit integer, found {}", describe(value)),
            })
    }

    fn optional_bool(&self, key: &str) -> Result<Option<bool>, DecodeError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(other) => Err(DecodeError {
                field: self.child(key),
                problem: format!("expected true or false, found {}", describe(other)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn minimal() -> Value {
        json!({"instance": {
            "hostName": "h1", "app": "orders", "ipAddr": "10.0.0.1",
            "dataCenterInfo": {"@class": DataCenter::DEFAULT_CLASS, "name": "MyOwn"}
        }})
    }

    #[test]
    fn decodes_the_minimal_registration_with_eureka_defaults() {
        let instance = decode_registration(&minimal()).unwrap();
        assert_eq!(instance.app, "ORDERS");
        assert_eq!(instance.instance_id, "h1");
        assert_eq!(instance.status, Status::Up);
        assert_eq!(instance.overridden_status, Status::Unknown);
        assert_eq!(instance.lease.duration_secs, 90);
        assert!(!instance.secure_port.enabled);
    }

    #[test]
    fn accepts_numbers_and_flags_written_as_strings() {
        let body = json!({"instance": {
            "instanceId": "h1:8080", "hostName": "h1", "app": "ORDERS", "ipAddr": "10.0.0.1",
            "port": {"$": "8080", "@enabled": "true"}, "securePort": {"$": 8443, "@enabled": false},
            "leaseInfo": {"renewalIntervalInSecs": "5", "durationInSecs": 15},
            "dataCenterInfo": {"@class": "com.netflix.appinfo.AmazonInfo", "name": "Amazon",
                "metadata": {"availability-zone": "eu-west-1a"}},
            "metadata": {"version": 3, "@class": EMPTY_METADATA_CLASS},
            "lastDirtyTimestamp": "1700000000000", "status": "starting"
        }});
        let instance = decode_registration(&body).unwrap();
        assert_eq!(
            instance.port,
            Port {
                number: 8080,
                enabled: true
            }
        );
        assert_eq!(
            instance.secure_port,
            Port {
                number: 8443,
                enabled: false
            }
        );
        assert_eq!(instance.lease.renewal_interval_secs, 5);
        assert_eq!(instance.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(instance.metadata.get("version").map(String::as_str), Some("3"));
        assert!(!instance.metadata.contains_key("@class"));
        assert_eq!(instance.last_dirty_timestamp, 1_700_000_000_000);
        assert_eq!(instance.status, Status::Starting);
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        let cases = [
            (
                json!({"instance": {"app": "A", "ipAddr": "x", "dataCenterInfo": {"name": "MyOwn"}}}),
                "instance.hostName",
            ),
            (
                json!({"instance": {"hostName": "h", "app": "A", "ipAddr": "x"}}),
                "instance.dataCenterInfo",
            ),
            (
                json!({"instance": {"hostName": "h", "app": "A", "ipAddr": "x", "dataCenterInfo": {"name": "MyOwn"}, "status": "SLEEPING"}}),
                "instance.status",
            ),
            (
                json!({"instance": {"hostName": "h", "app": "A", "ipAddr": "x", "dataCenterInfo": {"name": "MyOwn"}, "port": {"$": 70000}}}),
                "instance.port.$",
            ),
            (
                json!({"instance": {"hostName": "h", "app": 7, "ipAddr": "x", "dataCenterInfo": {"name": "MyOwn"}}}),
                "instance.app",
            ),
            (
                json!({"instance": {"hostName": "h", "app": "A", "ipAddr": "x", "dataCenterInfo": {"name": "MyOwn"}, "leaseInfo": {"durationInSecs": 0}}}),
                "instance.leaseInfo.durationInSecs",
            ),
            (json!([1, 2]), "(body)"),
        ];
        for (body, field) in cases {
            let err = decode_registration(&body).unwrap_err();
            assert_eq!(err.field, field, "{body}");
        }
    }

    #[test]
    fn encodes_ports_timestamps_and_empty_metadata_as_eureka_does() {
        let mut instance = decode_registration(&minimal()).unwrap();
        instance.last_dirty_timestamp = 42;
        let json = serde_json::to_value(instance_json(&instance)).unwrap();
        assert_eq!(json["port"], json!({"$": 7001, "@enabled": "false"}));
        assert_eq!(json["lastDirtyTimestamp"], json!("42"));
        assert_eq!(json["metadata"], json!({"@class": EMPTY_METADATA_CLASS}));
        assert_eq!(json["dataCenterInfo"]["@class"], json!(DataCenter::DEFAULT_CLASS));
        assert_eq!(json["overriddenstatus"], json!("UNKNOWN"));
        let round_trip = decode_instance(&json, "instance").unwrap();
        assert_eq!(round_trip, instance);
    }

    #[test]
    fn hash_code_counts_statuses_in_name_order() {
        let hash = reconcile_hash_code([Status::Up, Status::Down, Status::Up, Status::OutOfService]);
        assert_eq!(hash, "DOWN_1_OUT_OF_SERVICE_1_UP_2_");
        assert_eq!(reconcile_hash_code([]), "");
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("instance".to_owned()),
                        Just("hostName".to_owned()),
                        Just("app".to_owned()),
                        Just("ipAddr".to_owned()),
                        Just("port".to_owned()),
                        Just("$".to_owned()),
                        Just("dataCenterInfo".to_owned()),
                        Just("name".to_owned()),
                        Just("leaseInfo".to_owned()),
                        Just("metadata".to_owned()),
                        Just("status".to_owned()),
                        ".{0,6}".prop_map(String::from),
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_json_never_panics_and_round_trips_when_accepted(body in arbitrary_json()) {
            if let Ok(instance) = decode_registration(&body) {
                let json = serde_json::to_value(instance_json(&instance)).unwrap();
                let again = decode_instance(&json, "instance").unwrap();
                prop_assert_eq!(again, instance);
            }
        }
    }
}
