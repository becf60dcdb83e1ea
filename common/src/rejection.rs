//! Every way a request can fail, and the one place that turns each into a status and a JSON body.
//! warp's own rejections are mapped here too, so that no text/plain default body reaches a client.

use std::convert::Infallible;

use warp::http::StatusCode;
use warp::http::header::{HeaderValue, RETRY_AFTER};
use warp::reject::{Reject, Rejection};
use warp::reply::{Reply, Response};

use crate::reply::json_message;

/// Why a request to a protected route carries no usable session. Clients see one message for all
/// but `Expired`; the reason is kept for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
    Expired,
    Revoked,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    InvalidCredentials,
    Unauthorized(AuthFailure),
    /// The request itself is malformed; the text says how, and never echoes what was sent.
    BadRequest(&'static str),
    CrossSiteRequest,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    /// The client stopped sending its body.
    RequestTimeout,
    TooManyRequests {
        retry_after_secs: u64,
    },
    BadGateway,
    GatewayTimeout,
    NotReady,
}

impl Reject for ApiError {}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidCredentials | Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::CrossSiteRequest => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NotReady => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Self::InvalidCredentials => "Invalid credentials",
            Self::Unauthorized(AuthFailure::Expired) => "Token expired",
            Self::Unauthorized(_) => "Invalid token",
            Self::BadRequest(message) => message,
            Self::CrossSiteRequest => "Cross-site request refused",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::PayloadTooLarge => "Request body too large",
            Self::RequestTimeout => "Request body timed out",
            Self::TooManyRequests { .. } => "Too many failed attempts, try again later",
            Self::BadGateway => "Upstream service unavailable",
            Self::GatewayTimeout => "Upstream service timed out",
            Self::NotReady => "not ready",
        }
    }
}

/// The error also rides along in the response's extensions, for the access log and metrics.
impl Reply for ApiError {
    fn into_response(self) -> Response {
        let mut response = json_message(self.status(), self.message());
        if let Self::TooManyRequests { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
        }
        response.extensions_mut().insert(self);
        response
    }
}

/// The single `recover` at the top of every server's filter tree.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(classify(&rejection).into_response())
}

/// Our own errors win over warp's, and among warp's a wrong method wins over a wrong path, so that
/// `GET /login` says 405 even though every other branch said 404.
fn classify(rejection: &Rejection) -> ApiError {
    use warp::reject::{
        InvalidHeader, InvalidQuery, LengthRequired, MethodNotAllowed, MissingHeader,
        PayloadTooLarge, UnsupportedMediaType,
    };
    if let Some(error) = rejection.find::<ApiError>() {
        return error.clone();
    }
    if rejection.is_not_found() {
        return ApiError::NotFound;
    }
    if rejection.find::<MethodNotAllowed>().is_some() {
        return ApiError::MethodNotAllowed;
    }
    if rejection.find::<PayloadTooLarge>().is_some() {
        return ApiError::PayloadTooLarge;
    }
    if rejection
        .find::<warp::filters::body::BodyDeserializeError>()
        .is_some()
    {
        return ApiError::BadRequest("Request body is not valid JSON");
    }
    if rejection.find::<UnsupportedMediaType>().is_some() {
        return ApiError::BadRequest("Unsupported content type");
    }
    if rejection.find::<LengthRequired>().is_some() {
        return ApiError::BadRequest("Content-Length required");
    }
    if rejection.find::<InvalidHeader>().is_some() || rejection.find::<MissingHeader>().is_some() {
        return ApiError::BadRequest("Invalid request header");
    }
    if rejection.find::<InvalidQuery>().is_some() {
        return ApiError::BadRequest("Invalid query string");
    }
    log::warn!("unmapped rejection answered as a bad request: {rejection:?}");
    ApiError::BadRequest("Bad request")
}
