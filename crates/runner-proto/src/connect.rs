//! Connect protocol, unary calls over HTTP/1.1 (<https://connectrpc.com/docs/protocol>).
//!
//! Only what Forgejo and forgejo-runner use: `application/proto` and `application/json`
//! bodies, optional gzip, and JSON error bodies `{"code": ..., "message": ...}`.

use std::fmt;

use prost_reflect::{DeserializeOptions, DynamicMessage, ReflectMessage, SerializeOptions};
use serde::{Deserialize, Serialize};

pub const CONTENT_TYPE_PROTO: &str = "application/proto";
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// How a message body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Binary protobuf, what forgejo-runner sends by default.
    Proto,
    /// Canonical protojson (lowerCamelCase names out, either spelling in).
    Json,
}

impl Codec {
    /// The codec for a request `Content-Type`, or `None` for anything Connect unary does not define.
    pub fn from_content_type(value: &str) -> Option<Codec> {
        let essence = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            CONTENT_TYPE_PROTO => Some(Codec::Proto),
            CONTENT_TYPE_JSON => Some(Codec::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Proto => CONTENT_TYPE_PROTO,
            Codec::Json => CONTENT_TYPE_JSON,
        }
    }

    pub fn encode<M: ReflectMessage>(self, message: &M) -> Vec<u8> {
        match self {
            Codec::Proto => message.encode_to_vec(),
            Codec::Json => {
                let dynamic = message.transcode_to_dynamic();
                let mut out = Vec::with_capacity(128);
                let mut serializer = serde_json::Serializer::new(&mut out);
                dynamic
                    .serialize_with_options(&mut serializer, &SerializeOptions::new())
                    .expect("serializing a valid message to JSON cannot fail");
                out
            }
        }
    }

    pub fn decode<M: ReflectMessage + Default>(self, body: &[u8]) -> Result<M, ConnectError> {
        match self {
            Codec::Proto => M::decode(body).map_err(|e| {
                ConnectError::new(Code::InvalidArgument, format!("unmarshal message: {e}"))
            }),
            Codec::Json => {
                let descriptor = M::default().descriptor();
                let mut de = serde_json::Deserializer::from_slice(body);
                let dynamic = DynamicMessage::deserialize_with_options(
                    descriptor,
                    &mut de,
                    &DeserializeOptions::new().deny_unknown_fields(false),
                )
                .and_then(|m| de.end().map(|()| m))
                .map_err(|e| {
                    ConnectError::new(
                        Code::InvalidArgument,
                        format!("unmarshal JSON message: {e}"),
                    )
                })?;
                dynamic.transcode_to::<M>().map_err(|e| {
                    ConnectError::new(Code::InvalidArgument, format!("unmarshal message: {e}"))
                })
            }
        }
    }
}

/// Connect error codes used by Forgejo, plus the ones a client maps transport failures to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// HTTP status for this code, per the Connect protocol specification.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Canceled => 499,
            Code::Unknown => 500,
            Code::InvalidArgument => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::FailedPrecondition => 400,
            Code::Aborted => 409,
            Code::OutOfRange => 400,
            Code::Unimplemented => 501,
            Code::Internal => 500,
            Code::Unavailable => 503,
            Code::DataLoss => 500,
            Code::Unauthenticated => 401,
        }
    }

    /// Code a client infers from an HTTP status when the body carries none (Connect spec table).
    pub fn from_http_status(status: u16) -> Code {
        match status {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502..=504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Connect error: the JSON body of a non-200 unary response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ConnectError {
    pub code: Code,
    #[serde(default)]
    pub message: String,
}

impl ConnectError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ConnectError {
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("error body serializes")
    }

    /// Decode an error response; falls back to the status mapping when the body is not a
    /// Connect error (a proxy's HTML page, a truncated body).
    pub fn from_response(status: u16, body: &[u8]) -> ConnectError {
        serde_json::from_slice::<ConnectError>(body).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(body);
            let snippet: String = text.chars().take(200).collect();
            ConnectError::new(
                Code::from_http_status(status),
                format!("HTTP {status}: {snippet}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::v1::{FetchTaskRequest, Runner, UpdateLogRequest};

    #[test]
    fn json_uses_camel_case_and_int64_strings() {
        let log = UpdateLogRequest {
            task_id: 7,
            index: 2,
            rows: vec![],
            no_more: true,
        };
        let json = String::from_utf8(Codec::Json.encode(&log)).unwrap();
        assert_eq!(json, r#"{"taskId":"7","index":"2","noMore":true}"#);
    }

    #[test]
    fn json_accepts_both_spellings_and_numbers() {
        let a: UpdateLogRequest = Codec::Json
            .decode(br#"{"task_id": 7, "no_more": true}"#)
            .unwrap();
        let b: UpdateLogRequest = Codec::Json
            .decode(br#"{"taskId": "7", "noMore": true}"#)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.task_id, 7);
    }

    #[test]
    fn proto_round_trip_keeps_optional_presence() {
        let req = FetchTaskRequest {
            tasks_version: 3,
            task_capacity: Some(1),
        };
        let back: FetchTaskRequest = Codec::Proto.decode(&Codec::Proto.encode(&req)).unwrap();
        assert_eq!(back, req);
        let runner = Runner {
            id: 1,
            uuid: "u".into(),
            ephemeral: true,
            ..Default::default()
        };
        let back: Runner = Codec::Json.decode(&Codec::Json.encode(&runner)).unwrap();
        assert_eq!(back, runner);
    }

    #[test]
    fn malformed_bodies_are_invalid_argument() {
        for body in [&b"{"[..], b"[1,2]", b"{\"taskId\": {}}", b"{} trailing"] {
            let err = Codec::Json.decode::<UpdateLogRequest>(body).unwrap_err();
            assert_eq!(err.code, Code::InvalidArgument, "{body:?}");
        }
        let err = Codec::Proto
            .decode::<UpdateLogRequest>(&[0xff, 0xff, 0xff])
            .unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Codec::from_content_type("application/proto"),
            Some(Codec::Proto)
        );
        assert_eq!(
            Codec::from_content_type("application/json; charset=utf-8"),
            Some(Codec::Json)
        );
        assert_eq!(Codec::from_content_type("text/plain"), None);
    }

    #[test]
    fn error_body_fallback() {
        let e = ConnectError::from_response(
            401,
            br#"{"code":"unauthenticated","message":"unregistered runner"}"#,
        );
        assert_eq!(e.code, Code::Unauthenticated);
        let e = ConnectError::from_response(502, b"<html>bad gateway</html>");
        assert_eq!(e.code, Code::Unavailable);
    }
}
