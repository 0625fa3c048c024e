//! Whole-registry answers, encoded once per version index, compressed, off the lock.
//!
//! A full fetch of 100,000 instances is tens of megabytes. It is encoded at most once
//! per version index and format (concurrent requests for the same stale version wait
//! for one encoder instead of each encoding), from a snapshot of shared records taken
//! under the table's read lock in milliseconds, on a blocking thread, streaming each
//! record straight into a gzip stream, so that neither writers nor Tokio's workers wait
//! and the memory held is the compressed answer. Clients that accept gzip (Eureka's and
//! ours do) get it as it is; others get it inflated on the fly.

use std::io::{BufWriter, Read, Write};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use http::{HeaderMap, HeaderValue, StatusCode};
use quick_xml::Writer;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use rtalpha_proto::Instance;
use rtalpha_proto::eureka::{instance_json, reconcile_hash_code};
use rtalpha_runtime::ApiError;

use crate::table::{LeaseTable, SharedApp};
use crate::xml;

/// The formats a whole-registry answer is encoded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// The native `/v1/apps` JSON.
    Native,
    /// Eureka's JSON.
    EurekaJson,
    /// Eureka's XML.
    EurekaXml,
}

impl Encoding {
    fn slot(self) -> usize {
        match self {
            Encoding::Native => 0,
            Encoding::EurekaJson => 1,
            Encoding::EurekaXml => 2,
        }
    }
}

/// A gzip-compressed whole-registry answer at a version index.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The version index it shows.
    pub index: u64,
    /// The gzip stream.
    pub gzip: Bytes,
}

impl Encoded {
    /// The answer inflated, for a client that does not accept gzip.
    pub fn inflate(&self) -> std::io::Result<Vec<u8>> {
        let mut plain = Vec::with_capacity(self.gzip.len() * 8);
        GzDecoder::new(&self.gzip[..]).read_to_end(&mut plain)?;
        Ok(plain)
    }
}

#[derive(Debug, Default)]
struct Slot {
    ready: Mutex<Option<Encoded>>,
    /// Held by the one request that encodes; the others wait for it.
    building: tokio::sync::Mutex<()>,
}

/// The held encodings, one per format.
#[derive(Debug, Default)]
pub struct EncodingCache {
    slots: [Slot; 3],
}

/// The records of the whole table, shared, with their renewal times.
struct Snapshot {
    index: u64,
    hash: String,
    apps: Vec<SharedApp>,
}

impl EncodingCache {
    fn held(&self, encoding: Encoding, index: u64) -> Option<Encoded> {
        let ready = self.slots[encoding.slot()]
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        ready.as_ref().filter(|encoded| encoded.index == index).cloned()
    }

    /// The answer at the table's current index, encoding it if no one has yet.
    pub async fn get(&self, encoding: Encoding, table: &Arc<LeaseTable>) -> std::io::Result<Encoded> {
        if let Some(encoded) = self.held(encoding, table.index()) {
            return Ok(encoded);
        }
        let slot = &self.slots[encoding.slot()];
        let _building = slot.building.lock().await;
        if let Some(encoded) = self.held(encoding, table.index()) {
            return Ok(encoded);
        }
        let snapshot = {
            let view = table.read();
            Snapshot {
                index: view.index(),
                hash: reconcile_hash_code(view.statuses()),
                apps: view.shared_apps(),
            }
        };
        let started = std::time::Instant::now();
        let encoded = tokio::task::spawn_blocking(move || encode(encoding, &snapshot))
            .await
            .map_err(std::io::Error::other)??;
        metrics::histogram!("rtalpha_registry_full_fetch_encode_seconds").record(started.elapsed().as_secs_f64());
        *slot.ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(encoded.clone());
        Ok(encoded)
    }
}

/// Answers a full fetch: gzip as it is held when the client accepts it, inflated
/// otherwise.
pub async fn respond(
    cache: &EncodingCache,
    table: &Arc<LeaseTable>,
    encoding: Encoding,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let encoded = cache.get(encoding, table).await.map_err(|err| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the registry: {err}"),
        )
    })?;
    let content_type = match encoding {
        Encoding::Native | Encoding::EurekaJson => "application/json",
        Encoding::EurekaXml => "application/xml",
    };
    let accepts_gzip = headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.split(',').any(|coding| coding.trim().starts_with("gzip")));
    let mut response = if accepts_gzip {
        ([(CONTENT_TYPE, content_type), (CONTENT_ENCODING, "gzip")], encoded.gzip).into_response()
    } else {
        ([(CONTENT_TYPE, content_type)], Body::from_stream(inflating(encoded))).into_response()
    };
    response
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("accept-encoding"));
    Ok(response)
}

/// How much inflated text one chunk of a plain answer carries.
const INFLATE_CHUNK: usize = 64 * 1024;

/// The answer inflated chunk by chunk as the client reads it, so a client that does not
/// accept gzip costs a chunk of memory, not a whole inflated copy of the registry.
fn inflating(encoded: Encoded) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    let decoder = GzDecoder::new(std::io::Cursor::new(encoded.gzip));
    futures_util::stream::unfold(Some(decoder), |state| async move {
        let mut decoder = state?;
        let mut chunk = vec![0u8; INFLATE_CHUNK];
        let mut filled = 0;
        while filled < INFLATE_CHUNK {
            match decoder.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) => return Some((Err(err), None)),
            }
        }
        if filled == 0 {
            return None;
        }
        chunk.truncate(filled);
        Some((Ok(Bytes::from(chunk)), Some(decoder)))
    })
}

fn patched(instance: &Instance, renewed: u64) -> Instance {
    let mut copy = instance.clone();
    copy.lease.last_renewal_timestamp = renewed;
    copy
}

fn encode(encoding: Encoding, snapshot: &Snapshot) -> std::io::Result<Encoded> {
    // The serializers write many small pieces; the compressor wants large ones.
    let mut out = BufWriter::with_capacity(256 * 1024, GzEncoder::new(Vec::new(), Compression::fast()));
    match encoding {
        Encoding::Native => native_json(&mut out, snapshot)?,
        Encoding::EurekaJson => eureka_json(&mut out, snapshot)?,
        Encoding::EurekaXml => eureka_xml(&mut out, snapshot)?,
    }
    let gzip = out.into_inner().map_err(|err| err.into_error())?.finish()?;
    Ok(Encoded {
        index: snapshot.index,
        gzip: Bytes::from(gzip),
    })
}

/// `{"index": N, "apps": [{"name": ..., "instances": [...]}]}`, one record at a time.
fn native_json(out: &mut impl Write, snapshot: &Snapshot) -> std::io::Result<()> {
    write!(out, "{{\"index\":{},\"apps\":[", snapshot.index)?;
    for (position, (name, instances)) in snapshot.apps.iter().enumerate() {
        if position > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"{\"name\":")?;
        serde_json::to_writer(&mut *out, name)?;
        out.write_all(b",\"instances\":[")?;
        for (n, (instance, renewed)) in instances.iter().enumerate() {
            if n > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, &patched(instance, *renewed))?;
        }
        out.write_all(b"]}")?;
    }
    out.write_all(b"]}")
}

/// Eureka's `{"applications": {...}}`, one record at a time.
fn eureka_json(out: &mut impl Write, snapshot: &Snapshot) -> std::io::Result<()> {
    out.write_all(b"{\"applications\":{\"versions__delta\":")?;
    serde_json::to_writer(&mut *out, &snapshot.index.to_string())?;
    out.write_all(b",\"apps__hashcode\":")?;
    serde_json::to_writer(&mut *out, &snapshot.hash)?;
    out.write_all(b",\"application\":[")?;
    for (position, (name, instances)) in snapshot.apps.iter().enumerate() {
        if position > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"{\"name\":")?;
        serde_json::to_writer(&mut *out, name)?;
        out.write_all(b",\"instance\":[")?;
        for (n, (instance, renewed)) in instances.iter().enumerate() {
            if n > 0 {
                out.write_all(b",")?;
            }
            let record = patched(instance, *renewed);
            serde_json::to_writer(&mut *out, &instance_json(&record))?;
        }
        out.write_all(b"]}")?;
    }
    out.write_all(b"]}}")
}

/// Eureka's `<applications>`, one record at a time.
fn eureka_xml(out: &mut impl Write, snapshot: &Snapshot) -> std::io::Result<()> {
    let mut writer = Writer::new(out);
    let text = |writer: &mut Writer<_>, name: &str, value: &str| -> std::io::Result<()> {
        writer.write_event(Event::Start(BytesStart::new(name)))?;
        writer.write_event(Event::Text(BytesText::new(value)))?;
        writer.write_event(Event::End(BytesEnd::new(name)))
    };
    writer.write_event(Event::Start(BytesStart::new("applications")))?;
    text(&mut writer, "versions__delta", &snapshot.index.to_string())?;
    text(&mut writer, "apps__hashcode", &snapshot.hash)?;
    for (name, instances) in &snapshot.apps {
        writer.write_event(Event::Start(BytesStart::new("application")))?;
        text(&mut writer, "name", name)?;
        for (instance, renewed) in instances {
            let record = patched(instance, *renewed);
            let value = serde_json::to_value(instance_json(&record)).map_err(std::io::Error::other)?;
            xml::write_element(&mut writer, "instance", &value);
        }
        writer.write_event(Event::End(BytesEnd::new("application")))?;
    }
    writer.write_event(Event::End(BytesEnd::new("applications")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_answers_inflate_to_what_was_encoded() {
        let mut out = GzEncoder::new(Vec::new(), Compression::fast());
        out.write_all(b"{\"index\":3}").unwrap();
        let encoded = Encoded {
            index: 3,
            gzip: Bytes::from(out.finish().unwrap()),
        };
        assert_eq!(encoded.inflate().unwrap(), b"{\"index\":3}");
    }
}
