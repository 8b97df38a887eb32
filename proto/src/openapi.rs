//! The OpenAPI 3.1 document of the HTTP/JSON API, generated from the contract itself.
//!
//! The API is the Connect protocol's unary JSON form of the gRPC services: `POST
//! {prefix}/greenplate.v1.Service/Method` with the request message as JSON, the response
//! message as JSON, errors as `{"code", "message"}`. The messages' JSON is the proto3 JSON
//! mapping as the serde impls of [`crate::v1`] write it (pbjson, every field written): names
//! in lowerCamelCase, 64-bit integers as decimal strings, enums by name, bytes in base64.
//!
//! The schemas come from the compiled descriptor set ([`crate::FILE_DESCRIPTOR_SET`]) and
//! their descriptions from the `.proto` comments, so the document cannot drift from the
//! messages the server sends. Which methods it lists is the caller's route table.
//!
//! A response schema requires what is always written: every scalar, enum, repeated and map
//! field. Message fields, `optional` fields and oneof members appear only when set. Request
//! schemas require nothing: a field left out takes its proto3 default, as in gRPC, and the
//! `.proto` comments (the descriptions) say which fields a call needs.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    FileDescriptorSet,
};
use serde_json::{Value, json};

/// A gRPC method the HTTP/JSON API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// The fully qualified service, e.g. `greenplate.v1.Registry`.
    pub service: &'static str,
    /// The method, e.g. `GetBike`.
    pub method: &'static str,
}

impl Method {
    /// Its HTTP path under `prefix`: `{prefix}/greenplate.v1.Registry/GetBike`.
    pub fn path(&self, prefix: &str) -> String {
        format!("{prefix}/{}/{}", self.service, self.method)
    }
}

/// The document could not be built from the descriptors.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error("the descriptor set does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("no service {0} in the contract")]
    NoService(String),
    #[error("no method {0} in the contract")]
    NoMethod(String),
    #[error("{0} is a streaming method; the HTTP/JSON API serves unary methods only")]
    Streaming(String),
    #[error("no message or enum {0} in the contract")]
    NoType(String),
}

/// What the document says about itself.
#[derive(Debug, Clone)]
pub struct Info<'a> {
    pub title: &'a str,
    pub version: &'a str,
    pub description: &'a str,
}

/// The name of the error schema (Connect's error body) in `components.schemas`.
pub const ERROR_SCHEMA: &str = "connect.Error";

/// The error codes a Connect error body carries (gRPC's codes in snake_case).
pub const ERROR_CODES: &[&str] = &[
    "canceled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// Which way a message travels: requests require nothing, responses what is always written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    Request,
    Response,
}

/// A message or enum with where its comments are.
enum Type_<'a> {
    Message {
        msg: &'a DescriptorProto,
        file: &'a FileDescriptorProto,
        path: Vec<i32>,
    },
    Enum {
        en: &'a EnumDescriptorProto,
        file: &'a FileDescriptorProto,
        path: Vec<i32>,
    },
}

// Field numbers in descriptor.proto, for source locations.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
const SERVICE_METHOD: i32 = 2;

struct Contract<'a> {
    types: BTreeMap<String, Type_<'a>>,
}

impl<'a> Contract<'a> {
    fn new(set: &'a FileDescriptorSet) -> Self {
        let mut types = BTreeMap::new();
        for file in &set.file {
            let package = file.package();
            for (i, msg) in file.message_type.iter().enumerate() {
                add_message(&mut types, file, package, msg, vec![FILE_MESSAGE, i as i32]);
            }
            for (i, en) in file.enum_type.iter().enumerate() {
                types.insert(
                    format!("{package}.{}", en.name()),
                    Type_::Enum {
                        en,
                        file,
                        path: vec![FILE_ENUM, i as i32],
                    },
                );
            }
        }
        Self { types }
    }

    fn get(&self, name: &str) -> Result<&Type_<'a>, OpenApiError> {
        self.types
            .get(name.trim_start_matches('.'))
            .ok_or_else(|| OpenApiError::NoType(name.to_owned()))
    }
}

fn add_message<'a>(
    types: &mut BTreeMap<String, Type_<'a>>,
    file: &'a FileDescriptorProto,
    scope: &str,
    msg: &'a DescriptorProto,
    path: Vec<i32>,
) {
    let name = format!("{scope}.{}", msg.name());
    for (i, nested) in msg.nested_type.iter().enumerate() {
        let mut p = path.clone();
        p.extend([MESSAGE_NESTED, i as i32]);
        add_message(types, file, &name, nested, p);
    }
    for (i, en) in msg.enum_type.iter().enumerate() {
        let mut p = path.clone();
        p.extend([MESSAGE_ENUM, i as i32]);
        types.insert(
            format!("{name}.{}", en.name()),
            Type_::Enum { en, file, path: p },
        );
    }
    types.insert(name, Type_::Message { msg, file, path });
}

/// The comment before the element at `path` in `file`, trimmed; empty if none.
fn comment(file: &FileDescriptorProto, path: &[i32]) -> String {
    file.source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path == path))
        .map(|l| {
            l.leading_comments()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn with_description(mut schema: Value, description: String) -> Value {
    if !description.is_empty()
        && let Some(o) = schema.as_object_mut()
    {
        o.insert("description".into(), Value::String(description));
    }
    schema
}

/// Schemas being written: which names each direction needs, and the ones done.
struct Schemas<'c, 'a> {
    contract: &'c Contract<'a>,
    /// Messages reachable from a response: their request-side schemas get a suffix.
    in_responses: BTreeSet<String>,
    done: BTreeMap<String, Value>,
}

impl Schemas<'_, '_> {
    fn schema_name(&self, full: &str, dir: Direction) -> String {
        let full = full.trim_start_matches('.');
        match self.contract.types.get(full) {
            Some(Type_::Message { .. })
                if dir == Direction::Request && self.in_responses.contains(full) =>
            {
                format!("{full}.Input")
            }
            _ => full.to_owned(),
        }
    }

    /// A `$ref` to `full`'s schema in `dir`, writing it (and what it refers to) first.
    fn reference(&mut self, full: &str, dir: Direction) -> Result<Value, OpenApiError> {
        let name = self.schema_name(full, dir);
        if !self.done.contains_key(&name) {
            // A placeholder first, so recursive messages end.
            self.done.insert(name.clone(), Value::Null);
            let schema = self.schema(full, dir)?;
            self.done.insert(name.clone(), schema);
        }
        Ok(json!({ "$ref": format!("#/components/schemas/{name}") }))
    }

    fn schema(&mut self, full: &str, dir: Direction) -> Result<Value, OpenApiError> {
        match self.contract.get(full)? {
            Type_::Enum { en, file, path } => {
                let names: Vec<&str> = en.value.iter().map(|v| v.name()).collect();
                Ok(with_description(
                    json!({ "type": "string", "enum": names }),
                    comment(file, path),
                ))
            }
            Type_::Message { msg, file, path } => {
                let (msg, file, path) = (*msg, *file, path.clone());
                let mut properties = serde_json::Map::new();
                let mut required = Vec::new();
                for (i, field) in msg.field.iter().enumerate() {
                    let mut p = path.clone();
                    p.extend([MESSAGE_FIELD, i as i32]);
                    let mut description = comment(file, &p);
                    let synthetic = field.proto3_optional();
                    let oneof = field.oneof_index.filter(|_| !synthetic);
                    if let Some(o) = oneof {
                        let members: Vec<String> = msg
                            .field
                            .iter()
                            .filter(|f| f.oneof_index == Some(o) && !f.proto3_optional())
                            .map(json_name)
                            .collect();
                        let note = format!("At most one of: {}.", members.join(", "));
                        description = if description.is_empty() {
                            note
                        } else {
                            format!("{description}\n\n{note}")
                        };
                    }
                    let always = field.label() == Label::Repeated
                        || (oneof.is_none() && !synthetic && field.r#type() != Type::Message);
                    if dir == Direction::Response && always {
                        required.push(Value::String(json_name(field)));
                    }
                    let schema = self.field(field, dir)?;
                    properties.insert(json_name(field), with_description(schema, description));
                }
                let mut schema = json!({ "type": "object", "properties": properties });
                if !required.is_empty() {
                    schema["required"] = Value::Array(required);
                }
                Ok(with_description(schema, comment(file, &path)))
            }
        }
    }

    fn field(
        &mut self,
        field: &FieldDescriptorProto,
        dir: Direction,
    ) -> Result<Value, OpenApiError> {
        if field.label() == Label::Repeated
            && field.r#type() == Type::Message
            && let Type_::Message { msg, .. } = self.contract.get(field.type_name())?
            && msg.options.as_ref().is_some_and(|o| o.map_entry())
        {
            let value = msg
                .field
                .iter()
                .find(|f| f.number() == 2)
                .ok_or_else(|| OpenApiError::NoType(field.type_name().to_owned()))?;
            let value = self.single(value, dir)?;
            return Ok(json!({ "type": "object", "additionalProperties": value }));
        }
        let one = self.single(field, dir)?;
        if field.label() == Label::Repeated {
            Ok(json!({ "type": "array", "items": one }))
        } else {
            Ok(one)
        }
    }

    fn single(
        &mut self,
        field: &FieldDescriptorProto,
        dir: Direction,
    ) -> Result<Value, OpenApiError> {
        Ok(match field.r#type() {
            Type::Message | Type::Group => return self.reference(field.type_name(), dir),
            Type::Enum => return self.reference(field.type_name(), dir),
            Type::String => json!({ "type": "string" }),
            Type::Bool => json!({ "type": "boolean" }),
            Type::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Type::Double | Type::Float => json!({ "type": "number" }),
            Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Type::Uint32 | Type::Fixed32 => {
                json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX })
            }
            // The proto3 JSON mapping writes 64-bit integers as decimal strings (JavaScript's
            // numbers lose precision past 2^53); a request may send either.
            Type::Int64 | Type::Sint64 | Type::Sfixed64 => match dir {
                Direction::Response => {
                    json!({ "type": "string", "format": "int64", "pattern": "^-?[0-9]+$" })
                }
                Direction::Request => json!({
                    "oneOf": [
                        { "type": "string", "format": "int64", "pattern": "^-?[0-9]+$" },
                        { "type": "integer" }
                    ]
                }),
            },
            Type::Uint64 | Type::Fixed64 => match dir {
                Direction::Response => {
                    json!({ "type": "string", "format": "uint64", "pattern": "^[0-9]+$" })
                }
                Direction::Request => json!({
                    "oneOf": [
                        { "type": "string", "format": "uint64", "pattern": "^[0-9]+$" },
                        { "type": "integer", "minimum": 0 }
                    ]
                }),
            },
        })
    }
}

fn json_name(field: &FieldDescriptorProto) -> String {
    field
        .json_name
        .clone()
        .unwrap_or_else(|| lower_camel(field.name()))
}

/// protoc's json_name: underscores dropped, the letter after one upper-cased.
fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Every message reachable from `full` (itself included).
fn reachable(
    contract: &Contract<'_>,
    full: &str,
    seen: &mut BTreeSet<String>,
) -> Result<(), OpenApiError> {
    let full = full.trim_start_matches('.');
    if !seen.insert(full.to_owned()) {
        return Ok(());
    }
    if let Type_::Message { msg, .. } = contract.get(full)? {
        for f in &msg.field {
            if matches!(f.r#type(), Type::Message | Type::Group) {
                reachable(contract, f.type_name(), seen)?;
            }
        }
    }
    Ok(())
}

/// The OpenAPI 3.1 document for `methods` served under `prefix` (e.g. `/api`), built from
/// the encoded descriptor set `descriptors`.
pub fn document(
    descriptors: &[u8],
    prefix: &str,
    methods: &[Method],
    info: &Info<'_>,
) -> Result<Value, OpenApiError> {
    let set = FileDescriptorSet::decode(descriptors)?;
    let contract = Contract::new(&set);

    // Find each method's descriptor and comment first.
    let mut found = Vec::new();
    for m in methods {
        let (package, service) = m.service.rsplit_once('.').unwrap_or(("", m.service));
        let (file, si, svc) = set
            .file
            .iter()
            .filter(|f| f.package() == package)
            .find_map(|f| {
                f.service
                    .iter()
                    .enumerate()
                    .find(|(_, s)| s.name() == service)
                    .map(|(i, s)| (f, i, s))
            })
            .ok_or_else(|| OpenApiError::NoService(m.service.to_owned()))?;
        let (mi, method) = svc
            .method
            .iter()
            .enumerate()
            .find(|(_, x)| x.name() == m.method)
            .ok_or_else(|| OpenApiError::NoMethod(format!("{}/{}", m.service, m.method)))?;
        if method.client_streaming() || method.server_streaming() {
            return Err(OpenApiError::Streaming(format!(
                "{}/{}",
                m.service, m.method
            )));
        }
        let about = comment(file, &[FILE_SERVICE, si as i32, SERVICE_METHOD, mi as i32]);
        let service_about = comment(file, &[FILE_SERVICE, si as i32]);
        found.push((m, service, method, about, service_about));
    }

    let mut in_responses = BTreeSet::new();
    for (_, _, method, _, _) in &found {
        reachable(&contract, method.output_type(), &mut in_responses)?;
    }
    let mut schemas = Schemas {
        contract: &contract,
        in_responses,
        done: BTreeMap::new(),
    };

    let mut paths = serde_json::Map::new();
    let mut tags = BTreeMap::new();
    for (m, service, method, about, service_about) in found {
        let input = schemas.reference(method.input_type(), Direction::Request)?;
        let output = schemas.reference(method.output_type(), Direction::Response)?;
        tags.entry(service.to_owned()).or_insert(service_about);
        let summary = about.lines().next().unwrap_or_default().to_owned();
        paths.insert(
            m.path(prefix),
            json!({
                "post": {
                    "operationId": format!("{service}.{}", m.method),
                    "tags": [service],
                    "summary": summary,
                    "description": about,
                    "requestBody": {
                        "required": true,
                        "content": { "application/json": { "schema": input } }
                    },
                    "responses": {
                        "200": {
                            "description": format!("The {} message.", method.output_type().trim_start_matches('.')),
                            "content": { "application/json": { "schema": output } }
                        },
                        "default": {
                            "description": "An error: the gRPC status code in snake_case and a message. The HTTP status follows the code (invalid_argument 400, unauthenticated 401, permission_denied 403, not_found 404, resource_exhausted 429, unavailable 503, ...).",
                            "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{ERROR_SCHEMA}") } } }
                        }
                    }
                }
            }),
        );
    }

    let mut components = serde_json::Map::new();
    for (name, schema) in schemas.done {
        components.insert(name, schema);
    }
    components.insert(
        ERROR_SCHEMA.into(),
        json!({
            "type": "object",
            "description": "A Connect protocol error.",
            "properties": {
                "code": { "type": "string", "enum": ERROR_CODES },
                "message": { "type": "string" }
            },
            "required": ["code"]
        }),
    );
    let tags: Vec<Value> = tags
        .into_iter()
        .map(|(name, about)| json!({ "name": name, "description": about }))
        .collect();
    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": info.title,
            "version": info.version,
            "description": info.description,
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The same token as gRPC's `authorization: Bearer <token>`."
                }
            }
        },
        "security": [{ "bearer": [] }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(methods: &[Method]) -> Value {
        document(
            crate::FILE_DESCRIPTOR_SET,
            "/api",
            methods,
            &Info {
                title: "t",
                version: "1",
                description: "d",
            },
        )
        .unwrap()
    }

    const GET_BIKE: Method = Method {
        service: "greenplate.v1.Registry",
        method: "GetBike",
    };

    #[test]
    fn a_response_requires_what_is_always_written_and_a_request_nothing() {
        let d = doc(&[GET_BIKE]);
        let schemas = &d["components"]["schemas"];
        let bike = &schemas["greenplate.v1.Bike"];
        let required: Vec<&str> = bike["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(required.contains(&"plate"), "{required:?}");
        assert!(required.contains(&"tagId"), "{required:?}");
        let request = &schemas["greenplate.v1.GetBikeRequest"];
        assert!(request.get("required").is_none());
        // The oneof's members are described, not required.
        assert!(
            request["properties"]["tagId"]["description"]
                .as_str()
                .unwrap()
                .contains("At most one of: plate, tagId")
        );
        let path = &d["paths"]["/api/greenplate.v1.Registry/GetBike"]["post"];
        assert_eq!(
            path["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/greenplate.v1.Bike"
        );
        assert!(
            path["summary"]
                .as_str()
                .unwrap()
                .starts_with("Looks a bike up")
        );
    }

    #[test]
    fn int64_is_a_string_in_responses_and_either_in_requests() {
        let d = doc(&[Method {
            service: "greenplate.v1.Patrol",
            method: "GetTrack",
        }]);
        let schemas = &d["components"]["schemas"];
        assert_eq!(
            schemas["greenplate.v1.TrackPoint"]["properties"]["firstSeenMs"]["type"],
            "string"
        );
        assert!(
            schemas["greenplate.v1.GetTrackRequest"]["properties"]["fromMs"]["oneOf"].is_array()
        );
    }

    #[test]
    fn streaming_and_unknown_methods_are_refused() {
        let set = crate::FILE_DESCRIPTOR_SET;
        let info = Info {
            title: "t",
            version: "1",
            description: "d",
        };
        let stream = Method {
            service: "greenplate.v1.Patrol",
            method: "StreamAlerts",
        };
        assert!(matches!(
            document(set, "", &[stream], &info),
            Err(OpenApiError::Streaming(_))
        ));
        let missing = Method {
            service: "greenplate.v1.Patrol",
            method: "Nope",
        };
        assert!(matches!(
            document(set, "", &[missing], &info),
            Err(OpenApiError::NoMethod(_))
        ));
    }

    #[test]
    fn json_names_follow_protoc() {
        assert_eq!(lower_camel("stolen_at_ms"), "stolenAtMs");
        assert_eq!(lower_camel("plate"), "plate");
    }

    #[test]
    fn the_generated_serde_writes_what_the_schema_says() {
        use crate::v1::{Bike, GetBikeRequest, get_bike_request};
        let bike = Bike {
            plate: "粤D12345".into(),
            registered_at_ms: 1_700_000_000_000,
            ..Default::default()
        };
        let v = serde_json::to_value(&bike).unwrap();
        assert_eq!(v["plate"], "粤D12345");
        assert_eq!(v["registeredAtMs"], "1700000000000");
        // Every required field is written, defaults too.
        let d = doc(&[GET_BIKE]);
        for name in d["components"]["schemas"]["greenplate.v1.Bike"]["required"]
            .as_array()
            .unwrap()
        {
            assert!(v.get(name.as_str().unwrap()).is_some(), "{name} missing");
        }
        // Requests take either spelling, and skip unknown fields.
        let r: GetBikeRequest =
            serde_json::from_str(r#"{"tag_id":"E2801160","reason":"x","future":1}"#).unwrap();
        assert_eq!(r.key, Some(get_bike_request::Key::TagId("E2801160".into())));
    }
}
