//! Response conventions of Forgejo's `/api/v1` (contract §1.1): JSON followed by one `\n`,
//! `application/json;charset=utf-8`, and the `{"message","url"[,"errors"]}` error bodies.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::server::App;
use std::sync::Arc;

pub const JSON_CONTENT_TYPE: &str = "application/json;charset=utf-8";

/// Largest `/api/v1` request body accepted (file contents are base64 inside JSON).
pub const API_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Serializes like Go's `json.Encoder.Encode`: the text and a trailing newline.
pub fn json_bytes<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    out.push(b'\n');
    out
}

pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    let mut response = Response::new(Body::from(json_bytes(value)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    response
}

pub fn ok_json<T: Serialize + ?Sized>(value: &T) -> Response {
    json_response(StatusCode::OK, value)
}

/// Forgejo's `SetTotalCountHeader`: `X-Total-Count` with the number of items across all pages,
/// exposed to browsers through `Access-Control-Expose-Headers`.
pub fn set_total_count(response: &mut Response, total: usize) {
    let headers = response.headers_mut();
    headers.insert("x-total-count", HeaderValue::from(total));
    headers.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("X-Total-Count"),
    );
}

/// An `/api/v1` error. Rendered by [`render_api_errors`], which knows the instance URL that
/// Forgejo puts into the `url` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `ctx.NotFound` bodies carry an `errors` array as well.
    pub errors: Option<Vec<String>>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            errors: None,
        }
    }

    pub fn not_found() -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: "The target couldn't be found.".into(),
            errors: Some(vec![]),
        }
    }

    pub fn not_found_msg(message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.clone(),
            errors: Some(vec![message]),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = self.status;
        response.extensions_mut().insert(self);
        response
    }
}

pub type ApiResult = Result<Response, ApiError>;

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [String]>,
}

/// Middleware turning an [`ApiError`] extension into Forgejo's error body.
pub async fn render_api_errors(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if let Some(error) = response.extensions_mut().remove::<ApiError>() {
        let body = ErrorBody {
            message: &error.message,
            url: &app.swagger_url,
            errors: error.errors.as_deref(),
        };
        return json_response(error.status, &body);
    }
    response
}

/// Fallback of `/api/v1`: an unknown route (e.g. the runners API in 13/14) is a 404 like the
/// real router's `NotFound` handler.
pub async fn api_not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "not found".into(),
        errors: Some(vec![]),
    }
}

/// Reads a JSON request body with a size limit; binding errors answer 422 like Forgejo's
/// form binding.
pub async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, API_BODY_LIMIT)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"))?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return serde_json::from_slice(b"{}").map_err(|e| ApiError::unprocessable(e.to_string()));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::unprocessable(format!("json: {e}")))
}

/// A required string field of a request body, with Forgejo's binding message when missing.
pub fn required(field_name: &str, value: Option<String>) -> Result<String, ApiError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ApiError::unprocessable(format!("[{field_name}]: Required"))),
    }
}
