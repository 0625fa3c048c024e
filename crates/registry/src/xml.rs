//! Eureka's XML codec, mapped onto the JSON shape of [`rtalpha_proto::eureka`].
//!
//! Eureka's JSON is itself a rendering of its XML: `@name` keys are attributes, `$`
//! is an element's text, and a list is a repeated element. So XML is read into that
//! JSON shape and written from it, and one decoder and one encoder serve both formats.

use quick_xml::Reader;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::writer::Writer;
use serde_json::{Map, Value};

/// How deep a request document may nest; Eureka's deepest is four levels.
const MAX_DEPTH: usize = 16;

/// JSON keys that Eureka's XML does not carry (it spells the override one way only).
const JSON_ONLY_KEYS: [&str; 1] = ["overriddenStatus"];

/// An XML document that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed XML: {0}")]
pub struct XmlError(String);

/// Writes `value` as the XML element `root`.
pub fn to_xml(root: &str, value: &Value) -> Vec<u8> {
    let mut writer = Writer::new(Vec::with_capacity(4096));
    write_element(&mut writer, root, value);
    writer.into_inner()
}

fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Writes `value` as the element `name` into a streaming writer.
pub fn write_element<W: std::io::Write>(writer: &mut Writer<W>, name: &str, value: &Value) {
    // Keys that are not XML names (free-form metadata keys can be anything) are left
    // out rather than written as broken XML.
    if !is_xml_name(name) {
        return;
    }
    match value {
        Value::Null => {}
        Value::Array(items) => {
            for item in items {
                write_element(writer, name, item);
            }
        }
        Value::Object(map) => {
            let mut start = BytesStart::new(name);
            for (key, attribute) in map {
                if let (Some(attr), Some(text)) = (key.strip_prefix('@'), scalar_text(attribute))
                    && is_xml_name(attr)
                {
                    start.push_attribute((attr, text.as_str()));
                }
            }
            let children: Vec<(&String, &Value)> = map
                .iter()
                .filter(|(key, _)| !key.starts_with('@') && !JSON_ONLY_KEYS.contains(&key.as_str()))
                .collect();
            if children.is_empty() {
                let _ = writer.write_event(Event::Empty(start));
                return;
            }
            let _ = writer.write_event(Event::Start(start));
            for (key, child) in children {
                if key == "$" {
                    if let Some(text) = scalar_text(child) {
                        let _ = writer.write_event(Event::Text(BytesText::new(&text)));
                    }
                } else {
                    write_element(writer, key, child);
                }
            }
            let _ = writer.write_event(Event::End(BytesEnd::new(name)));
        }
        scalar => {
            let text = scalar_text(scalar).unwrap_or_default();
            let _ = writer.write_event(Event::Start(BytesStart::new(name)));
            let _ = writer.write_event(Event::Text(BytesText::new(&text)));
            let _ = writer.write_event(Event::End(BytesEnd::new(name)));
        }
    }
}

/// An element being read: its attributes, children and text so far.
struct Open {
    name: String,
    map: Map<String, Value>,
    text: String,
}

impl Open {
    fn new(start: &BytesStart<'_>) -> Result<Self, XmlError> {
        let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
        let mut map = Map::new();
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|err| XmlError(err.to_string()))?;
            let key = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
            let value = attribute
                .unescape_value()
                .map_err(|err| XmlError(err.to_string()))?
                .into_owned();
            map.insert(format!("@{key}"), Value::String(value));
        }
        Ok(Open {
            name,
            map,
            text: String::new(),
        })
    }

    fn finish(mut self) -> (String, Value) {
        let text = self.text.trim().to_owned();
        let value = if self.map.is_empty() {
            Value::String(text)
        } else {
            if !text.is_empty() {
                self.map.insert("$".to_owned(), Value::String(text));
            }
            Value::Object(self.map)
        };
        (self.name, value)
    }

    fn add_child(&mut self, name: String, value: Value) {
        match self.map.get_mut(&name) {
            None => {
                self.map.insert(name, value);
            }
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
        }
    }
}

/// Reads an XML document into Eureka's JSON shape: `{"root": {...}}`.
pub fn from_xml(bytes: &[u8]) -> Result<Value, XmlError> {
    let mut reader = Reader::from_reader(bytes);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Open> = Vec::new();
    let mut buffer = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buffer)
            .map_err(|err| XmlError(err.to_string()))?;
        match event {
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError(format!("nested deeper than {MAX_DEPTH} elements")));
                }
                stack.push(Open::new(&start)?);
            }
            Event::Empty(start) => {
                let (name, value) = Open::new(&start)?.finish();
                match stack.last_mut() {
                    Some(parent) => parent.add_child(name, value),
                    None => return Ok(single(name, value)),
                }
            }
            Event::Text(text) => {
                if let Some(open) = stack.last_mut() {
                    let decoded = text.decode().map_err(|err| XmlError(err.to_string()))?;
                    let unescaped = quick_xml::escape::unescape(&decoded).map_err(|err| XmlError(err.to_string()))?;
                    open.text.push_str(&unescaped);
                }
            }
            Event::CData(data) => {
                if let Some(open) = stack.last_mut() {
                    open.text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            Event::GeneralRef(reference) => {
                if let Some(open) = stack.last_mut() {
                    let name = String::from_utf8_lossy(&reference).into_owned();
                    let entity = format!("&{name};");
                    let resolved = quick_xml::escape::unescape(&entity).map_err(|err| XmlError(err.to_string()))?;
                    open.text.push_str(&resolved);
                }
            }
            Event::End(_) => {
                let Some(open) = stack.pop() else {
                    return Err(XmlError("closing tag without an opening one".to_owned()));
                };
                let (name, value) = open.finish();
                match stack.last_mut() {
                    Some(parent) => parent.add_child(name, value),
                    None => return Ok(single(name, value)),
                }
            }
            Event::Eof => {
                return Err(XmlError("the document ends before its root element closes".to_owned()));
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
        buffer.clear();
    }
}

fn single(name: String, value: Value) -> Value {
    let mut map = Map::new();
    map.insert(name, value);
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_eureka_registration_xml() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
            <instance>
              <hostName>h1</hostName><app>ORDERS</app><ipAddr>10.0.0.1</ipAddr>
              <status>UP</status>
              <port enabled="true">8080</port>
              <dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"><name>MyOwn</name></dataCenterInfo>
              <metadata><a>1 &amp; 2</a><b>x</b></metadata>
              <metadata2 class="java.util.Collections$EmptyMap"/>
            </instance>"#;
        let value = from_xml(xml).unwrap();
        let instance = &value["instance"];
        assert_eq!(instance["port"], json!({"@enabled": "true", "$": "8080"}));
        assert_eq!(instance["metadata"]["a"], json!("1 & 2"));
        assert_eq!(
            instance["metadata2"],
            json!({"@class": "java.util.Collections$EmptyMap"})
        );
        let decoded = rtalpha_proto::eureka::decode_registration(&value).unwrap();
        assert_eq!(decoded.port.number, 8080);
        assert_eq!(decoded.metadata["a"], "1 & 2");
    }

    #[test]
    fn repeated_elements_become_lists() {
        let value = from_xml(b"<applications><application><name>A</name></application><application><name>B</name></application></applications>").unwrap();
        assert_eq!(value["applications"]["application"][1]["name"], json!("B"));
    }

    #[test]
    fn writes_attributes_text_and_lists_and_skips_json_only_keys() {
        let value = json!({
            "port": {"$": 8080, "@enabled": "true"},
            "overriddenstatus": "UNKNOWN",
            "overriddenStatus": "UNKNOWN",
            "metadata": {"@class": "java.util.Collections$EmptyMap"},
            "instance": [{"id": "a"}, {"id": "b<"}],
            "bad key": "dropped"
        });
        let xml = String::from_utf8(to_xml("root", &value)).unwrap();
        assert!(xml.contains(r#"<port enabled="true">8080</port>"#), "{xml}");
        assert!(
            xml.contains(r#"<metadata class="java.util.Collections$EmptyMap"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains("<instance><id>a</id></instance><instance><id>b&lt;</id></instance>"),
            "{xml}"
        );
        assert_eq!(xml.matches("<overriddenstatus>").count(), 1, "{xml}");
        assert!(!xml.contains("overriddenStatus"), "{xml}");
        assert!(!xml.contains("dropped"));
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            &b"<instance><app>A</instance>"[..],
            b"<a>",
            b"",
            b"</a>",
            b"<a x=\"1></a>",
        ] {
            assert!(from_xml(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(from_xml(deep.as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn reading_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = from_xml(&bytes);
        }

        #[test]
        fn reading_tag_soup_never_panics(soup in "(<[a-z@$]{0,3}( [a-z]{1,2}=\"[^\"]{0,3}\")?/?>|</[a-z]{0,3}>|[a-z&;]{0,4}){0,30}") {
            if let Ok(value) = from_xml(soup.as_bytes()) {
                let _ = rtalpha_proto::eureka::decode_registration(&value);
            }
        }
    }
}
