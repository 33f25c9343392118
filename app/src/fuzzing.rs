//! What the fuzz targets (`fuzz/`) reach of this crate beyond its public API: the parsers of untrusted input
//! (request ids, `X-Forwarded-For` and trusted ranges, the items query and body, path matching). Compiled only
//! with `--cfg fuzzing`, which cargo-fuzz sets. Thin wrappers: the code under test is the code that serves.

use std::net::IpAddr;

use hyper::HeaderMap;
use uuid::Uuid;

pub use crate::config::TrustedProxies;
pub use crate::error::{ApiError, ErrorCode, FieldError};
pub use crate::http::query_param;
pub use crate::request_id::{RequestId, is_valid as is_valid_request_id};

/// The largest `limit` of the items list.
pub const MAX_LIMIT: i64 = crate::items::MAX_LIMIT;
/// The items list's `limit` when none is given.
pub const DEFAULT_LIMIT: i64 = crate::items::DEFAULT_LIMIT;
/// The longest item name, in characters.
pub const NAME_MAX_CHARS: usize = crate::items::NAME_MAX_CHARS;

/// The client address the access log records for a request from `peer` with these headers.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    crate::pipeline::client_addr(peer, headers, trusted)
}

/// `GET /api/items`'s query: its `limit` and `after`, or the invalid fields.
pub fn list_query(query: Option<&str>) -> Result<(i64, Option<Uuid>), Vec<FieldError>> {
    crate::items::parse_list_query(query).map(|q| (q.limit, q.after))
}

/// The `next` cursor of an item, as the list prints it.
pub fn encode_cursor(id: Uuid) -> String {
    crate::items::encode_cursor(id)
}

/// A `POST /api/items` body: its name and quantity, or the error answered.
pub fn new_item(body: &[u8]) -> Result<(String, i64), ApiError> {
    crate::items::parse_new_item(body).map(|item| (item.name, item.quantity))
}

/// Every route's path template and whether it is a debug route, in matching order.
pub fn routes() -> Vec<(&'static str, bool)> {
    crate::routes::ROUTES.iter().map(|r| (r.template, r.debug)).collect()
}

/// The route a path resolves to: its template and parameters.
pub fn resolve(path: &str, debug: bool) -> Option<(&'static str, Vec<String>)> {
    crate::routes::resolve(path, debug).map(|m| (m.route.template, crate::routes::fuzzing::params(&m).to_vec()))
}

/// The parameters if `path` matches `template`.
pub fn match_template(template: &str, path: &str) -> Option<Vec<String>> {
    crate::routes::fuzzing::match_template(template, path)
}
