//! The types the table of protobuf messages (`proto_schema.rs`, generated) is written in, and
//! that the wire-format reader (`protobuf.rs`) walks: a message's fields with their numbers,
//! types and JSON names.

/// A message of the table.
#[derive(Debug)]
pub(super) struct Message {
    /// Its full name (for errors and tests).
    pub name: &'static str,
    /// How its JSON form differs from an object of its fields.
    pub special: Special,
    /// Its fields.
    pub fields: &'static [Field],
}

/// A field of a message.
#[derive(Debug)]
pub(super) struct Field {
    /// The field number.
    pub tag: u32,
    /// The JSON name (empty for an inlined embedded struct).
    pub json: &'static str,
    /// Its type.
    pub ty: Ty,
    /// Whether it is a list.
    pub repeated: bool,
    /// Whether its zero value is written (a field Go always serializes, or a pointer a client
    /// sets to zero on purpose).
    pub keep_zero: bool,
    /// A Go embedded struct: its fields go into the parent's object.
    pub inline: bool,
}

/// A field's type.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ty {
    /// `string`.
    Str,
    /// `bytes` (base64 in JSON).
    Bytes,
    /// `int32`.
    Int32,
    /// `int64`.
    Int64,
    /// `bool`.
    Bool,
    /// `double`.
    Double,
    /// A message, by index in the table.
    Msg(usize),
    /// `map<string, string>`.
    StrMap,
    /// `map<string, bytes>`.
    BytesMap,
    /// `map<string, message>`.
    MsgMap(usize),
}

/// Messages whose JSON form is not an object of their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Special {
    /// An object of its fields.
    None,
    /// `metav1.Time`: RFC 3339, seconds.
    Time,
    /// `metav1.MicroTime`: RFC 3339, microseconds.
    MicroTime,
    /// `resource.Quantity`: its string.
    Quantity,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// Raw JSON in field 1 (`FieldsV1`, `RawExtension`, apiextensions `JSON`).
    RawJson,
    /// `JSONSchemaPropsOrArray`: the schema, or the list of schemas.
    SchemaOrArray,
    /// `JSONSchemaPropsOrBool`: the schema, or the bool.
    SchemaOrBool,
    /// `JSONSchemaPropsOrStringArray`: the schema, or the list of strings.
    SchemaOrStringArray,
}
