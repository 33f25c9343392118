//! The items resource: a small real resource that exercises validation, the error contract
//! and the schema end to end.
//!
//! Ids are UUIDv7, assigned here, so ordering by id is creation order. Listing uses keyset pagination on the
//! id: `next` is an opaque cursor naming the last item of the page, and `?after=<cursor>` continues strictly
//! after it, so concurrent inserts and deletes never make a page repeat or skip an item.
//!
//! Statements are prepared once per pooled connection (`prepare_cached`): a request costs one round trip to
//! PostgreSQL instead of three (prepare, execute, close).

use hyper::StatusCode;
use hyper::header::{HeaderValue, LOCATION};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::http::{empty_response, json_response, query_param, read_json};
use crate::routes::Params;
use crate::state::State;
use supervisor::{Request, Response};

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

/// Checks a `POST /api/items` body, reporting every invalid field at once. Unknown fields are refused so
/// that a misspelt field is an error rather than silently ignored.
pub(crate) fn validate_new_item(body: &Value) -> Result<NewItem, Vec<FieldError>> {
    let Some(object) = body.as_object() else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let name = match object.get("name") {
        None => Err("field required"),
        Some(Value::String(s)) if s.is_empty() => Err("must not be empty"),
        Some(Value::String(s)) if s.chars().count() > NAME_MAX_CHARS => Err("must be at most 200 characters"),
        Some(Value::String(s)) if s.contains('\0') => Err("must not contain NUL characters"),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err("must be a string"),
    };
    let quantity = match object.get("quantity") {
        None => Err("field required"),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(q) if q >= 0 => Ok(q),
            Some(_) => Err("must be greater than or equal to 0"),
            None if n.is_u64() => Err("must be at most 9223372036854775807"),
            None => Err("must be an integer"),
        },
        Some(_) => Err("must be an integer"),
    };
    if let Err(message) = &name {
        errors.push(FieldError::new("name", *message));
    }
    if let Err(message) = &quantity {
        errors.push(FieldError::new("quantity", *message));
    }
    for key in object.keys().filter(|k| *k != "name" && *k != "quantity") {
        errors.push(FieldError::new(key.as_str(), "unknown field"));
    }
    match (name, quantity) {
        (Ok(name), Ok(quantity)) if errors.is_empty() => Ok(NewItem { name, quantity }),
        _ => Err(errors),
    }
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
        None | Some("") => DEFAULT_LIMIT,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                errors.push(FieldError::new("limit", format!("must be an integer between 1 and {MAX_LIMIT}")));
                DEFAULT_LIMIT
            }
        },
    };
    let after = match query_param(query, "after") {
        None | Some("") => None,
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
    let body = read_json(req, state.config.max_body_bytes).await?;
    let new = validate_new_item(&body).map_err(ApiError::validation)?;
    let client = state.db.get().await?;
    let statement = client.prepare_cached(INSERT).await?;
    let row = client.query_one(&statement, &[&Uuid::now_v7(), &new.name, &new.quantity]).await?;
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
    let client = state.db.get().await?;
    let statement = client.prepare_cached(SELECT_ONE).await?;
    let row = client.query_opt(&statement, &[&id]).await?;
    match row {
        Some(row) => Ok(json_response(StatusCode::OK, &Item::from_row(&row)?)),
        None => Err(ApiError::not_found()),
    }
}

pub(crate) async fn list(state: &State, req: Request, _: &Params) -> Result<Response, ApiError> {
    let query = parse_list_query(req.uri().query()).map_err(ApiError::validation)?;
    let client = state.db.get().await?;
    // One row more than asked tells whether another page exists.
    let fetch = query.limit + 1;
    let rows = match query.after {
        None => {
            let statement = client.prepare_cached(SELECT_FIRST_PAGE).await?;
            client.query(&statement, &[&fetch]).await
        }
        Some(after) => {
            let statement = client.prepare_cached(SELECT_PAGE_AFTER).await?;
            client.query(&statement, &[&after, &fetch]).await
        }
    }?;
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
    let client = state.db.get().await?;
    let statement = client.prepare_cached(DELETE).await?;
    let deleted = client.execute(&statement, &[&id]).await?;
    if deleted == 0 {
        return Err(ApiError::not_found());
    }
    tracing::info!(item_id = %id, "item deleted");
    Ok(empty_response(StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: Value) -> Vec<(String, String)> {
        validate_new_item(&body).unwrap_err().into_iter().map(|e| (e.field, e.message)).collect()
    }

    #[test]
    fn valid_items() {
        let item = validate_new_item(&json!({"name": "widget", "quantity": 0})).unwrap();
        assert_eq!(item, NewItem { name: "widget".into(), quantity: 0 });
        let long = "é".repeat(200);
        assert_eq!(validate_new_item(&json!({"name": long, "quantity": 7})).unwrap().name.chars().count(), 200);
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
        for bad in ["limit=0", "limit=101", "limit=-1", "limit=ten"] {
            assert_eq!(parse_list_query(Some(bad)).unwrap_err()[0].field, "limit", "{bad}");
        }
        assert_eq!(parse_list_query(Some("after=nope")).unwrap_err()[0].field, "after");
    }
}
