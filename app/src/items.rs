//! The items resource: a small real resource that exercises validation, the error contract
//! and the schema end to end.
//!
//! Ids are UUIDv7, assigned here, so ordering by id is creation order. Listing uses keyset pagination on the
//! id: `next` is an opaque cursor naming the last item of the page, and `?after=<cursor>` continues strictly
//! after it, so concurrent inserts and deletes never make a page repeat or skip an item.
//!
//! Statements are prepared once per pooled connection (`prepare_cached`): a request costs one round trip to
//! PostgreSQL instead of three (prepare, execute, close). They run through `db::Conn`, so a request abandoned
//! mid-statement (deadline, client gone) cancels it on the server and discards the connection.

use hyper::StatusCode;
use hyper::header::{HeaderValue, LOCATION};
use serde::Serialize;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::json;
use uuid::Uuid;

use crate::body::{invalid_json, read_json_body};
use crate::error::{ApiError, FieldError};
use crate::handler::Params;
use crate::http::{Request, Response};
use crate::http::{empty_response, json_response, query_param};
use crate::state::State;

pub(crate) const NAME_MAX_CHARS: usize = 200;
pub(crate) const DEFAULT_LIMIT: i64 = 20;
pub(crate) const MAX_LIMIT: i64 = 100;

/// The columns every query returns; `created_at` in RFC 3339, UTC, microseconds.
macro_rules! columns {
    () => {
        "id, name, quantity, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS created_at"
    };
}

// Fixed strings, so that each is prepared once per pooled connection and nothing is formatted per request.
const INSERT: &str = concat!("INSERT INTO items (id, name, quantity) VALUES ($1, $2, $3) RETURNING ", columns!());
const SELECT_ONE: &str = concat!("SELECT ", columns!(), " FROM items WHERE id = $1");
const SELECT_FIRST_PAGE: &str = concat!("SELECT ", columns!(), " FROM items ORDER BY id LIMIT $1");
const SELECT_PAGE_AFTER: &str = concat!("SELECT ", columns!(), " FROM items WHERE id > $1 ORDER BY id LIMIT $2");
const DELETE: &str = "DELETE FROM items WHERE id = $1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Item {
    pub id: Uuid,
    pub name: String,
    pub quantity: i64,
    pub created_at: String,
}

impl Item {
    fn from_row(row: &tokio_postgres::Row) -> Result<Item, tokio_postgres::Error> {
        Ok(Item { id: row.try_get(0)?, name: row.try_get(1)?, quantity: row.try_get(2)?, created_at: row.try_get(3)? })
    }
}

/// A validated `POST /api/items` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NewItem {
    pub name: String,
    pub quantity: i64,
}

/// Unknown fields named in a 422 at most; the rest are counted.
const MAX_REPORTED_UNKNOWN: usize = 10;
/// A reported unknown field's name is cut to this many characters.
const MAX_REPORTED_NAME: usize = 64;

/// Parses and checks a `POST /api/items` body: 400 if it is not JSON, else every invalid field at once (422).
/// Unknown fields are refused so that a misspelt field is an error rather than silently ignored.
///
/// The body is read straight into what validation looks at: values of the wrong kind and unknown fields are
/// skipped without being built, so a hostile body (a huge array, an object with many thousands of keys)
/// costs little more memory than its own bytes, and the 422 stays small.
pub(crate) fn parse_new_item(bytes: &[u8]) -> Result<NewItem, ApiError> {
    // UTF-8 checked first: the values skipped unread (unknown fields, a body that is not an object) are not.
    let text = std::str::from_utf8(bytes).map_err(|e| invalid_json(&e))?;
    let body: Body = serde_json::from_str(text).map_err(|e| invalid_json(&e))?;
    validate(body).map_err(ApiError::validation)
}

fn validate(body: Body) -> Result<NewItem, Vec<FieldError>> {
    if !body.object {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    }
    let name = match body.name {
        None => Err("field required"),
        Some(Scalar::Str(s)) if s.is_empty() => Err("must not be empty"),
        Some(Scalar::Str(s)) if s.chars().count() > NAME_MAX_CHARS => Err("must be at most 200 characters"),
        Some(Scalar::Str(s)) if s.contains('\0') => Err("must not contain NUL characters"),
        Some(Scalar::Str(s)) => Ok(s),
        Some(_) => Err("must be a string"),
    };
    let quantity = match body.quantity {
        None => Err("field required"),
        Some(Scalar::Int(q)) if q >= 0 => Ok(q),
        Some(Scalar::Int(_)) => Err("must be greater than or equal to 0"),
        Some(Scalar::BigInt) => Err("must be at most 9223372036854775807"),
        Some(_) => Err("must be an integer"),
    };
    let mut errors = Vec::new();
    if let Err(message) = &name {
        errors.push(FieldError::new("name", *message));
    }
    if let Err(message) = &quantity {
        errors.push(FieldError::new("quantity", *message));
    }
    for key in body.unknown {
        errors.push(FieldError::new(key, "unknown field"));
    }
    if body.more_unknown > 0 {
        errors.push(FieldError::new("body", format!("and {} more unknown fields", body.more_unknown)));
    }
    match (name, quantity) {
        (Ok(name), Ok(quantity)) if errors.is_empty() => Ok(NewItem { name, quantity }),
        _ => Err(errors),
    }
}

/// A `POST /api/items` body as sent, before validation.
#[derive(Default)]
struct Body {
    /// Whether it was a JSON object at all.
    object: bool,
    name: Option<Scalar>,
    quantity: Option<Scalar>,
    /// The first unknown fields, names cut to [`MAX_REPORTED_NAME`].
    unknown: Vec<String>,
    /// How many more unknown fields there were.
    more_unknown: usize,
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = Body;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
                let mut body = Body { object: true, ..Body::default() };
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*key {
                        "name" => body.name = Some(map.next_value()?),
                        "quantity" => body.quantity = Some(map.next_value()?),
                        other => {
                            map.next_value::<IgnoredAny>()?;
                            if body.unknown.len() < MAX_REPORTED_UNKNOWN {
                                body.unknown.push(other.chars().take(MAX_REPORTED_NAME).collect());
                            } else {
                                body.more_unknown += 1;
                            }
                        }
                    }
                }
                Ok(body)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Body, A::Error> {
                skip_seq(seq).map(|_| Body::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Body, E> {
                Ok(Body::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Body, E> {
                Ok(Body::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Body, E> {
                Ok(Body::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Body, E> {
                Ok(Body::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Body, E> {
                Ok(Body::default())
            }
            fn visit_unit<E>(self) -> Result<Body, E> {
                Ok(Body::default())
            }
        }
        deserializer.deserialize_any(BodyVisitor)
    }
}

/// One JSON value reduced to what validation looks at; arrays and objects are skipped without being built.
enum Scalar {
    Str(String),
    Int(i64),
    /// An integer beyond `i64`.
    BigInt,
    /// Anything else: a number with a fractional part, a boolean, null, an array, an object.
    Other,
}

impl Scalar {
    /// A number written with a fraction or an exponent. JSON has one kind of number, and JSON Schema (so
    /// every client generated from the API description) counts `5.0` and `5e0` as the integer 5: a number
    /// with no fractional part is that integer, anything else is not an integer.
    fn from_number(v: f64) -> Scalar {
        if !v.is_finite() || v.fract() != 0.0 {
            Scalar::Other
        } else if v >= 9_223_372_036_854_775_808.0 {
            // 2^63, the first such number beyond `i64`.
            Scalar::BigInt
        } else {
            // Exact: the number is integral and within range (anything below `i64::MIN` saturates to it,
            // which is refused as negative all the same).
            Scalar::Int(v as i64)
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(i64::try_from(v).map_or(Scalar::BigInt, Scalar::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::from_number(v))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
                skip_seq(seq).map(|_| Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// The opaque cursor for "after this item".
pub(crate) fn encode_cursor(id: Uuid) -> String {
    id.simple().to_string()
}

pub(crate) fn decode_cursor(cursor: &str) -> Option<Uuid> {
    if cursor.len() != 32 || !cursor.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Uuid::try_parse(cursor).ok()
}

/// A validated `GET /api/items` query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListQuery {
    pub limit: i64,
    pub after: Option<Uuid>,
}

pub(crate) fn parse_list_query(query: Option<&str>) -> Result<ListQuery, Vec<FieldError>> {
    let mut errors = Vec::new();
    let limit = match query_param(query, "limit") {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                errors.push(FieldError::new("limit", format!("must be an integer between 1 and {MAX_LIMIT}")));
                DEFAULT_LIMIT
            }
        },
    };
    let after = match query_param(query, "after") {
        None => None,
        Some(text) => {
            let id = decode_cursor(text);
            if id.is_none() {
                errors.push(FieldError::new("after", "must be a cursor returned as `next` by this endpoint"));
            }
            id
        }
    };
    if errors.is_empty() { Ok(ListQuery { limit, after }) } else { Err(errors) }
}

/// Any id that is not a UUID cannot name an item: 404, like a well-formed id that does not exist.
fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(id).map_err(|_| ApiError::not_found())
}

pub(crate) async fn create(state: &State, req: Request, _: &Params) -> Result<Response, ApiError> {
    let new = parse_new_item(&read_json_body(req, state.config.max_body_bytes).await?)?;
    let conn = state.db.get().await?;
    let row = conn.query_one(INSERT, &[&Uuid::now_v7(), &new.name, &new.quantity]).await?;
    let item = Item::from_row(&row)?;
    tracing::info!(item_id = %item.id, "item created");
    let mut response = json_response(StatusCode::CREATED, &item);
    if let Ok(location) = HeaderValue::from_str(&format!("/api/items/{}", item.id)) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

pub(crate) async fn get(state: &State, _: Request, params: &Params) -> Result<Response, ApiError> {
    let id = parse_id(params.first())?;
    let conn = state.db.get().await?;
    let row = conn.query_opt(SELECT_ONE, &[&id]).await?;
    match row {
        Some(row) => Ok(json_response(StatusCode::OK, &Item::from_row(&row)?)),
        None => Err(ApiError::not_found()),
    }
}

pub(crate) async fn list(state: &State, req: Request, _: &Params) -> Result<Response, ApiError> {
    let query = parse_list_query(req.uri().query()).map_err(ApiError::validation)?;
    let conn = state.db.get().await?;
    // One row more than asked tells whether another page exists.
    let fetch = query.limit + 1;
    let rows = match query.after {
        None => conn.query(SELECT_FIRST_PAGE, &[&fetch]).await?,
        Some(after) => conn.query(SELECT_PAGE_AFTER, &[&after, &fetch]).await?,
    };
    let mut items = rows.iter().map(Item::from_row).collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() as i64 > query.limit {
        items.truncate(query.limit as usize);
        items.last().map(|item| encode_cursor(item.id))
    } else {
        None
    };
    Ok(json_response(StatusCode::OK, &json!({ "items": items, "next": next })))
}

pub(crate) async fn delete(state: &State, _: Request, params: &Params) -> Result<Response, ApiError> {
    let id = parse_id(params.first())?;
    let conn = state.db.get().await?;
    let deleted = conn.execute(DELETE, &[&id]).await?;
    if deleted == 0 {
        return Err(ApiError::not_found());
    }
    tracing::info!(item_id = %id, "item deleted");
    Ok(empty_response(StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Value;

    use crate::error::ErrorCode;

    fn parse(body: &Value) -> Result<NewItem, ApiError> {
        parse_new_item(&serde_json::to_vec(body).unwrap())
    }

    fn fields(body: Value) -> Vec<(String, String)> {
        let error = parse(&body).unwrap_err();
        let details = error.to_response("t").into_body();
        let bytes = futures_body(details);
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        json["details"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["field"].as_str().unwrap().to_owned(), f["message"].as_str().unwrap().to_owned()))
            .collect()
    }

    fn futures_body(body: http_body_util::Full<bytes::Bytes>) -> bytes::Bytes {
        use http_body_util::BodyExt;
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(body.collect()).unwrap().to_bytes()
    }

    #[test]
    fn valid_items() {
        let item = parse(&json!({"name": "widget", "quantity": 0})).unwrap();
        assert_eq!(item, NewItem { name: "widget".into(), quantity: 0 });
        let long = "é".repeat(200);
        assert_eq!(parse(&json!({"name": long, "quantity": 7})).unwrap().name.chars().count(), 200);
    }

    #[test]
    fn a_number_without_a_fractional_part_is_an_integer() {
        for (quantity, expected) in
            [(json!(5.0), 5), (json!(1e3), 1000), (json!(-0.0), 0), (json!(9.007199254740992e15), 1 << 53)]
        {
            assert_eq!(parse(&json!({"name": "a", "quantity": quantity})).unwrap().quantity, expected, "{quantity}");
        }
        let refused = [
            (json!(2.5), "must be an integer"),
            (json!(-1.0), "must be greater than or equal to 0"),
            (json!(2f64.powi(63)), "must be at most 9223372036854775807"),
            (json!(1e300), "must be at most 9223372036854775807"),
        ];
        for (quantity, message) in refused {
            assert_eq!(fields(json!({"name": "a", "quantity": quantity})), [("quantity".into(), message.into())]);
        }
        assert_eq!(parse_new_item(br#"{"name": "a", "quantity": 2E2}"#).unwrap().quantity, 200);
    }

    #[test]
    fn invalid_items_report_every_field() {
        assert_eq!(
            fields(json!({"name": "", "quantity": -1})),
            [
                ("name".into(), "must not be empty".into()),
                ("quantity".into(), "must be greater than or equal to 0".into())
            ]
        );
        assert_eq!(fields(json!({"name": "x".repeat(201), "quantity": 1}))[0].1, "must be at most 200 characters");
        assert_eq!(
            fields(json!({"name": 5, "quantity": "3"})),
            [("name".into(), "must be a string".into()), ("quantity".into(), "must be an integer".into())]
        );
        assert_eq!(fields(json!({"name": "a", "quantity": 1.5}))[0].1, "must be an integer");
        assert_eq!(fields(json!({"name": "a", "quantity": u64::MAX}))[0].1, "must be at most 9223372036854775807");
        assert_eq!(fields(json!({"name": "a\u{0}b", "quantity": 1}))[0].0, "name");
        assert_eq!(
            fields(json!({})),
            [("name".into(), "field required".into()), ("quantity".into(), "field required".into())]
        );
        assert_eq!(
            fields(json!({"name": "a", "quantity": 1, "colour": "red"})),
            [("colour".into(), "unknown field".into())]
        );
        assert_eq!(fields(json!([1, 2]))[0].0, "body");
        assert_eq!(fields(json!("text"))[0].0, "body");
        assert_eq!(fields(json!({"name": [1, [2]], "quantity": {"a": 1}}))[1].1, "must be an integer");
        assert!(matches!(parse_new_item(b"{\"name\": "), Err(e) if e.code() == ErrorCode::BadRequest));
    }

    #[test]
    fn a_body_that_is_not_utf8_is_not_json_even_where_it_is_skipped() {
        let bodies: [&[u8]; 3] = [
            b"{\"name\": \"a\", \"quantity\": 1, \"colour\": \"\xff\"}",
            b"[\"\xff\"]",
            b"{\"name\": \"\xff\", \"quantity\": 1}",
        ];
        for body in bodies {
            assert!(matches!(parse_new_item(body), Err(e) if e.code() == ErrorCode::BadRequest), "{body:?}");
        }
    }

    #[test]
    fn unknown_fields_are_reported_up_to_a_cap_with_short_names() {
        let mut body = serde_json::Map::new();
        for i in 0..1000 {
            body.insert(format!("{}{i}", "k".repeat(100)), json!(i));
        }
        let reported = fields(Value::Object(body));
        assert_eq!(reported.len(), MAX_REPORTED_UNKNOWN + 3, "name, quantity, 10 unknown, and a count");
        assert!(reported.iter().all(|(field, _)| field.chars().count() <= MAX_REPORTED_NAME));
        assert_eq!(reported.last().unwrap().1, "and 990 more unknown fields");
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = Uuid::now_v7();
        let cursor = encode_cursor(id);
        assert_eq!(decode_cursor(&cursor), Some(id));
        for bad in ["", "abc", &id.to_string(), &format!("{cursor}0"), &"g".repeat(32), "../../etc/passwd"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn list_queries() {
        assert_eq!(parse_list_query(None), Ok(ListQuery { limit: DEFAULT_LIMIT, after: None }));
        let id = Uuid::now_v7();
        let q = format!("limit=100&after={}", encode_cursor(id));
        assert_eq!(parse_list_query(Some(&q)), Ok(ListQuery { limit: 100, after: Some(id) }));
        for bad in ["limit=0", "limit=101", "limit=-1", "limit=ten", "limit=", "limit"] {
            assert_eq!(parse_list_query(Some(bad)).unwrap_err()[0].field, "limit", "{bad}");
        }
        assert_eq!(parse_list_query(Some("after=nope")).unwrap_err()[0].field, "after");
        assert_eq!(parse_list_query(Some("after=")).unwrap_err()[0].field, "after");
    }
}
