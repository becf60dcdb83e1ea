//! `{"message": "..."}` is the one shape of every success and error body.

use serde::Serialize;
use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

#[derive(Debug, Serialize)]
struct Message<'a> {
    message: &'a str,
}

/// A JSON `{"message": ...}` reply with the given status.
pub fn json_message(status: StatusCode, message: &str) -> Response {
    let body = warp::reply::json(&Message { message });
    warp::reply::with_status(body, status).into_response()
}
