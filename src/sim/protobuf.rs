//! Bodies in `application/vnd.kubernetes.protobuf`, as `kubectl create` and client-go's typed
//! clients send built-in kinds: the envelope (the magic `k8s\0`, then a `runtime.Unknown` with
//! the type's apiVersion and kind, the raw object, its content encoding and type) and the object
//! inside, decoded to the JSON the rest of the server works with.
//!
//! The object is decoded by a table of every message's fields (`proto_schema.rs`, generated from
//! the prost bindings of the Kubernetes .proto files in k8s-pb, with the JSON names of
//! k8s-openapi): field numbers and wire types from the protos, JSON names and the inlining of Go
//! embedded structs from the JSON types. JSON is written as Go's encoding of the same object
//! would be: an optional scalar at its zero value is left out (`omitempty`), a required one kept,
//! a message present on the wire kept (`{}` when empty), lists and maps only when not empty,
//! `metav1.Time` as RFC 3339 seconds, `MicroTime` with microseconds, `Quantity` as its string,
//! `IntOrString` as a number or a string, raw JSON (`FieldsV1`, a CRD's `JSON`) as JSON, bytes
//! in base64.

use serde_json::{Map, Value};

use super::proto_layout::{Message, Special, Ty};
use super::proto_schema::{KINDS, MESSAGES};

/// The magic number every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8] = b"k8s\0";

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Why a protobuf body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    /// The body does not start with `k8s\0`.
    #[error("provided object is not a Kubernetes protobuf object: the magic number is missing")]
    NoMagic,
    /// The bytes are not a well-formed message.
    #[error("malformed protobuf: {0}")]
    Malformed(String),
    /// The raw object is compressed or in another content type.
    #[error(
        "unsupported raw object in the protobuf envelope: content encoding {encoding:?}, content type {content_type:?}"
    )]
    Encoding {
        /// `contentEncoding`.
        encoding: String,
        /// `contentType`.
        content_type: String,
    },
    /// The envelope names a kind the simulated server has no protobuf layout for.
    #[error(
        "{kind} ({api_version}) cannot be decoded from {MEDIA_TYPE} by the simulated API server; send it as application/json"
    )]
    UnknownKind {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
}

fn malformed(what: &str) -> ProtobufError {
    ProtobufError::Malformed(what.to_string())
}

/// Whether the simulated server can decode `kind` of `api_version` from protobuf.
pub fn decodes(api_version: &str, kind: &str) -> bool {
    KINDS.iter().any(|(v, k, _)| *v == api_version && *k == kind)
}

/// Decode a protobuf request body: the object as JSON, with its apiVersion and kind from the
/// envelope.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    let (mut api_version, mut kind, mut raw, mut encoding, mut content_type) =
        (String::new(), String::new(), &[][..], String::new(), String::new());
    let mut r = Reader::new(rest);
    while let Some((tag, wire)) = r.key()? {
        match (tag, wire) {
            (1, WIRE_LEN) => {
                let mut t = Reader::new(r.bytes()?);
                while let Some((tag, wire)) = t.key()? {
                    match (tag, wire) {
                        (1, WIRE_LEN) => api_version = utf8(t.bytes()?)?,
                        (2, WIRE_LEN) => kind = utf8(t.bytes()?)?,
                        _ => t.skip(wire)?,
                    }
                }
            }
            (2, WIRE_LEN) => raw = r.bytes()?,
            (3, WIRE_LEN) => encoding = utf8(r.bytes()?)?,
            (4, WIRE_LEN) => content_type = utf8(r.bytes()?)?,
            _ => r.skip(wire)?,
        }
    }
    if !encoding.is_empty() || !(content_type.is_empty() || content_type == MEDIA_TYPE) {
        return Err(ProtobufError::Encoding { encoding, content_type });
    }
    let Some((_, _, index)) = KINDS.iter().find(|(v, k, _)| *v == api_version && *k == kind) else {
        return Err(ProtobufError::UnknownKind { api_version, kind });
    };
    let mut object = match message(*index, raw, 0)? {
        Value::Object(map) => map,
        _ => return Err(malformed("the object is not a message")),
    };
    // TypeMeta travels in the envelope; the JSON object carries it first, as Go writes it.
    let mut out = Map::new();
    out.insert("kind".into(), Value::String(kind));
    out.insert("apiVersion".into(), Value::String(api_version));
    out.append(&mut object);
    Ok(Value::Object(out))
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// Reads the protobuf wire format.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or_else(|| malformed("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("varint longer than 10 bytes"))
    }

    /// The next field's number and wire type, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, ProtobufError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| malformed("field number out of range"))?;
        if tag == 0 {
            return Err(malformed("field number 0"));
        }
        Ok(Some((tag, (key & 7) as u8)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtobufError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(|| malformed("truncated"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtobufError> {
        let len = usize::try_from(self.varint()?).map_err(|_| malformed("length out of range"))?;
        self.take(len)
    }

    fn fixed64(&mut self) -> Result<u64, ProtobufError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn skip(&mut self, wire: u8) -> Result<(), ProtobufError> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8).map(drop),
            WIRE_LEN => self.bytes().map(drop),
            WIRE_FIXED32 => self.take(4).map(drop),
            other => Err(ProtobufError::Malformed(format!("unsupported wire type {other}"))),
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed("a string is not valid UTF-8"))
}

fn base64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Bool(b) => !b,
        Value::Null => true,
        _ => false,
    }
}

/// One scalar of type `ty` from the wire (`None`: the wire type does not fit).
fn scalar(r: &mut Reader<'_>, ty: Ty, wire: u8) -> Result<Option<Value>, ProtobufError> {
    Ok(Some(match (ty, wire) {
        (Ty::Str, WIRE_LEN) => Value::String(utf8(r.bytes()?)?),
        (Ty::Bytes, WIRE_LEN) => Value::String(base64(r.bytes()?)),
        // int32 is sign-extended to 64 bits on the wire.
        (Ty::Int32, WIRE_VARINT) => Value::from(r.varint()? as i64 as i32),
        (Ty::Int64, WIRE_VARINT) => Value::from(r.varint()? as i64),
        (Ty::Bool, WIRE_VARINT) => Value::Bool(r.varint()? != 0),
        (Ty::Double, WIRE_FIXED64) => {
            serde_json::Number::from_f64(f64::from_bits(r.fixed64()?)).map_or(Value::Null, Value::Number)
        }
        _ => return Ok(None),
    }))
}

/// A `map<string, …>` entry.
fn map_entry(bytes: &[u8], ty: Ty, depth: usize) -> Result<(String, Value), ProtobufError> {
    let mut r = Reader::new(bytes);
    let (mut key, mut value) = (String::new(), None);
    while let Some((tag, wire)) = r.key()? {
        match (tag, wire, ty) {
            (1, WIRE_LEN, _) => key = utf8(r.bytes()?)?,
            (2, WIRE_LEN, Ty::StrMap) => value = Some(Value::String(utf8(r.bytes()?)?)),
            (2, WIRE_LEN, Ty::BytesMap) => value = Some(Value::String(base64(r.bytes()?))),
            (2, WIRE_LEN, Ty::MsgMap(index)) => value = Some(message(index, r.bytes()?, depth)?),
            _ => r.skip(wire)?,
        }
    }
    let value = match (value, ty) {
        (Some(v), _) => v,
        (None, Ty::MsgMap(index)) => message(index, &[], depth)?,
        (None, _) => Value::String(String::new()),
    };
    Ok((key, value))
}

/// How deep messages may nest (a CRD's schema nests; a body nested deeper is refused rather
/// than decoded on an ever deeper stack).
const MAX_DEPTH: usize = 200;

/// Decode message `index` of the table, found `depth` messages deep, to its JSON form.
fn message(index: usize, bytes: &[u8], depth: usize) -> Result<Value, ProtobufError> {
    if depth > MAX_DEPTH {
        return Err(malformed("messages nested too deeply"));
    }
    let m = MESSAGES.get(index).ok_or_else(|| malformed("unknown message"))?;
    let mut out = Map::new();
    let mut inlined = Map::new();
    let mut r = Reader::new(bytes);
    while let Some((tag, wire)) = r.key()? {
        // A field this layout does not know: skipped, as Go's unmarshalling drops it.
        let Some(f) = m.fields.iter().find(|f| f.tag == tag) else {
            r.skip(wire)?;
            continue;
        };
        match f.ty {
            Ty::StrMap | Ty::BytesMap | Ty::MsgMap(_) => {
                if wire != WIRE_LEN {
                    return Err(ProtobufError::Malformed(format!("{}.{}: not a map entry", m.name, f.json)));
                }
                let (k, v) = map_entry(r.bytes()?, f.ty, depth + 1)?;
                let slot = out.entry(f.json).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = slot {
                    map.insert(k, v);
                }
            }
            Ty::Msg(target) => {
                if wire != WIRE_LEN {
                    return Err(ProtobufError::Malformed(format!("{}.{}: not a message", m.name, f.json)));
                }
                let value = message(target, r.bytes()?, depth + 1)?;
                if f.inline {
                    if let Value::Object(mut fields) = value {
                        inlined.append(&mut fields);
                    }
                } else if f.repeated {
                    push(&mut out, f.json, value);
                } else if !value.is_null() {
                    out.insert(f.json.to_string(), value);
                }
            }
            ty if f.repeated && wire == WIRE_LEN && !matches!(ty, Ty::Str | Ty::Bytes) => {
                // A packed list of numbers.
                let mut packed = Reader::new(r.bytes()?);
                while packed.pos < packed.buf.len() {
                    let wire = if matches!(ty, Ty::Double) { WIRE_FIXED64 } else { WIRE_VARINT };
                    let v = scalar(&mut packed, ty, wire)?.ok_or_else(|| malformed("packed list"))?;
                    push(&mut out, f.json, v);
                }
            }
            ty => {
                let Some(v) = scalar(&mut r, ty, wire)? else {
                    return Err(ProtobufError::Malformed(format!("{}.{}: wire type {wire}", m.name, f.json)));
                };
                if f.repeated {
                    push(&mut out, f.json, v);
                } else if f.keep_zero || m.special != Special::None || !is_zero(&v) {
                    out.insert(f.json.to_string(), v);
                } else {
                    out.remove(f.json);
                }
            }
        }
    }
    for (k, v) in inlined {
        out.entry(k).or_insert(v);
    }
    special(m, out)
}

fn push(out: &mut Map<String, Value>, key: &str, value: Value) {
    let slot = out.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(items) = slot {
        items.push(value);
    }
}

/// The JSON form of a special message from the object of its fields (named as the generator
/// names them: the proto field names).
fn special(m: &Message, mut fields: Map<String, Value>) -> Result<Value, ProtobufError> {
    let int = |fields: &Map<String, Value>, k: &str| fields.get(k).and_then(Value::as_i64).unwrap_or(0);
    Ok(match m.special {
        Special::None => Value::Object(fields),
        Special::Time | Special::MicroTime => {
            let (seconds, nanos) = (int(&fields, "seconds"), int(&fields, "nanos"));
            if seconds == 0 && nanos == 0 {
                return Ok(Value::Null);
            }
            let nanos = i32::try_from(nanos).map_err(|_| malformed("nanos out of range"))?;
            let t = k8s_openapi::jiff::Timestamp::new(seconds, nanos).map_err(|_| malformed("time out of range"))?;
            let format = if m.special == Special::Time { "%Y-%m-%dT%H:%M:%SZ" } else { "%Y-%m-%dT%H:%M:%S%.6fZ" };
            Value::String(t.strftime(format).to_string())
        }
        Special::Quantity => fields.remove("string").unwrap_or_else(|| Value::String(String::new())),
        Special::IntOrString => {
            if int(&fields, "type") == 1 {
                fields.remove("strVal").unwrap_or_else(|| Value::String(String::new()))
            } else {
                Value::from(int(&fields, "intVal"))
            }
        }
        Special::RawJson => {
            let raw = fields.get("raw").and_then(Value::as_str).unwrap_or_default();
            let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, raw)
                .map_err(|_| malformed("raw JSON"))?;
            if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|e| ProtobufError::Malformed(format!("raw JSON: {e}")))?
            }
        }
        Special::SchemaOrArray => match fields.remove("schema") {
            Some(schema) => schema,
            None => fields.remove("jSONSchemas").unwrap_or_else(|| Value::Array(Vec::new())),
        },
        Special::SchemaOrBool => match fields.remove("schema") {
            Some(schema) => schema,
            None => Value::Bool(fields.get("allows").and_then(Value::as_bool).unwrap_or(false)),
        },
        Special::SchemaOrStringArray => match fields.remove("schema") {
            Some(schema) => schema,
            None => fields.remove("property").unwrap_or_else(|| Value::Array(Vec::new())),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What kubectl 1.32 sends for `kubectl create namespace x` (captured from its request).
    const KUBECTL_NAMESPACE: &[u8] =
        b"k8s\x00\n\x0f\n\x02v1\x12\tNamespace\x12\x19\n\x11\n\x01x\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x00\x1a\x02\n\x00\x1a\x00\"\x00";

    #[test]
    fn kubectl_namespace() {
        let obj = decode(KUBECTL_NAMESPACE).unwrap();
        assert_eq!(
            obj,
            json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "x"}, "spec": {}, "status": {}})
        );
    }

    #[test]
    fn nesting_is_bounded() {
        // A JSONSchemaProps whose `not` (field 28) holds another, 300 deep.
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..300 {
            let mut outer = vec![0xe2, 0x01];
            let mut len = inner.len();
            while len >= 0x80 {
                outer.push((len as u8 & 0x7f) | 0x80);
                len >>= 7;
            }
            outer.push(len as u8);
            outer.extend_from_slice(&inner);
            inner = outer;
        }
        let index = MESSAGES.iter().position(|m| m.name.ends_with("v1.JsonSchemaProps")).unwrap();
        assert_eq!(message(index, &inner, 0), Err(malformed("messages nested too deeply")));
    }

    #[test]
    fn envelope_errors() {
        assert_eq!(decode(b"{\"kind\":1}"), Err(ProtobufError::NoMagic));
        assert!(matches!(decode(b"k8s\x00\n\x05\n\x02v1"), Err(ProtobufError::Malformed(_))));
        let unknown = b"k8s\x00\n\x0e\n\x02v1\x12\x08PodGroup\x12\x00";
        assert_eq!(
            decode(unknown),
            Err(ProtobufError::UnknownKind { api_version: "v1".into(), kind: "PodGroup".into() })
        );
        let gzipped = b"k8s\x00\n\x0f\n\x02v1\x12\tNamespace\x12\x00\x1a\x04gzip";
        assert!(matches!(decode(gzipped), Err(ProtobufError::Encoding { .. })));
    }
}
