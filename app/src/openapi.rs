//! `GET /openapi.json`: the OpenAPI 3.1 description of the API, kept as a file (`app/openapi.json`) and served
//! byte for byte as it is built into the binary.
//!
//! The route table is this crate's own, so no generator could read it; annotations for one would be a second
//! description that can drift as easily as the file. Instead, tests pin the file to the code from both sides:
//! the unit tests below check it against [`ROUTES`](crate::routes::ROUTES), the error codes and the validation
//! bounds; every response the contract checks receive (test-support's `app_checks`, in-process, through the
//! binary and through the edge) is validated against the document the server serves: its status must be
//! declared for the operation, its content type and `X-Request-ID` too, and its body must match a schema that
//! allows no unknown field; and schemathesis fuzzes the binary with it (`tests/openapi.rs`).

use hyper::StatusCode;

use crate::error::ApiError;
use crate::handler::Params;
use crate::http::json_static;
use crate::http::{Request, Response};
use crate::state::State;

/// The document, as written in `app/openapi.json`.
pub(crate) const DOCUMENT: &str = include_str!("../openapi.json");

/// `GET /openapi.json`.
pub(crate) async fn serve(_: &State, _: Request, _: &Params) -> Result<Response, ApiError> {
    Ok(json_static(StatusCode::OK, DOCUMENT))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::error::ErrorCode;
    use crate::items::{DEFAULT_LIMIT, MAX_LIMIT, NAME_MAX_CHARS};
    use crate::routes::ROUTES;

    /// The methods an OpenAPI path item can hold.
    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

    /// Statuses the request pipeline can answer whatever the route: the Host rules (400), head limits (414,
    /// 431), a panic (500), the request deadline (504).
    const PIPELINE_STATUSES: [&str; 5] = ["400", "414", "431", "500", "504"];

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("app/openapi.json is JSON")
    }

    /// Follows a local `$ref` (`#/components/...`), if any.
    fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("not a local $ref: {reference}"));
                resolve(doc, doc.pointer(pointer).unwrap_or_else(|| panic!("$ref {reference} resolves to nothing")))
            }
            None => value,
        }
    }

    /// Every operation: (path, method, operation object).
    fn operations(doc: &Value) -> Vec<(&str, &str, &Value)> {
        let paths = doc["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| METHODS.iter().filter_map(move |m| item.get(*m).map(|op| (path.as_str(), *m, op))))
            .collect()
    }

    /// Every declared response: (path, method, status, response object with its `$ref` followed).
    fn responses(doc: &Value) -> Vec<(String, &str, &Value)> {
        operations(doc)
            .into_iter()
            .flat_map(|(path, method, op)| {
                let label = format!("{} {path}", method.to_uppercase());
                op["responses"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{label}: no responses"))
                    .iter()
                    .map(move |(status, response)| (label.clone(), status.as_str(), resolve(doc, response)))
            })
            .collect()
    }

    /// Every `$ref` string anywhere in `value`.
    fn references(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    out.push(reference.clone());
                }
                map.values().for_each(|v| references(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_describes_exactly_the_routes_served() {
        let doc = document();
        let described: BTreeSet<(String, String)> =
            operations(&doc).into_iter().map(|(path, method, _)| (path.to_owned(), method.to_owned())).collect();
        // Debug routes exist only in test configurations, never in prod: they are not part of the API.
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .filter(|route| !route.debug)
            .flat_map(|route| {
                route.methods.iter().map(|(method, _)| (route.template.to_owned(), method.as_str().to_lowercase()))
            })
            .collect();
        assert_eq!(described, served, "app/openapi.json vs routes::ROUTES");
        assert!(served.contains(&("/openapi.json".to_owned(), "get".to_owned())));
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"), "info.version is the package version");
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut found = Vec::new();
        references(&doc, &mut found);
        assert!(found.len() > 20, "only {} references", found.len());
        for reference in found {
            resolve(&doc, &serde_json::json!({ "$ref": reference }));
        }
    }

    #[test]
    fn every_response_has_an_exact_status_and_the_request_id_header() {
        let doc = document();
        for (label, status, response) in responses(&doc) {
            // No `default` and no `4XX` ranges: a status the code answers must be declared one by one, so that
            // validating a response can tell a new status from a described one.
            assert!(status.len() == 3 && status.parse::<u16>().is_ok(), "{label}: status {status:?}");
            let header = resolve(&doc, &response["headers"]["X-Request-ID"]);
            assert_eq!(header["required"], true, "{label} {status}: X-Request-ID");
        }
        for (path, method, op) in operations(&doc) {
            for status in PIPELINE_STATUSES {
                assert!(op["responses"].get(status).is_some(), "{method} {path} does not declare {status}");
            }
        }
    }

    #[test]
    fn every_error_response_names_its_code_and_the_code_has_that_status() {
        let doc = document();
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let schema = &doc["components"]["schemas"]["Error"];
        assert_eq!(schema["properties"]["code"]["enum"], serde_json::json!(codes), "Error.code vs ErrorCode");
        assert_eq!(schema["additionalProperties"], false);

        for (label, status, response) in responses(&doc) {
            if !status.starts_with(['4', '5']) {
                continue;
            }
            let schema = resolve(&doc, &response["content"]["application/json"]["schema"]);
            let parts = schema["allOf"].as_array().unwrap_or_else(|| panic!("{label} {status}: not Error + code"));
            assert_eq!(parts[0]["$ref"], "#/components/schemas/Error", "{label} {status}");
            let code = parts[1]["properties"]["code"]["const"].as_str().expect("a const code");
            let code = ErrorCode::ALL.into_iter().find(|c| c.as_str() == code).expect("a known code");
            assert_eq!(code.status().as_str(), status, "{label}: {} is declared under {status}", code.as_str());
        }
    }

    #[test]
    fn bounds_are_the_code_s() {
        let doc = document();
        let new_item = &doc["components"]["schemas"]["NewItem"]["properties"];
        assert_eq!(new_item["name"]["maxLength"], NAME_MAX_CHARS);
        assert_eq!(new_item["quantity"]["maximum"], i64::MAX);
        let list = &doc["paths"]["/api/items"]["get"]["parameters"];
        let limit = list.as_array().unwrap().iter().find(|p| p["name"] == "limit").expect("limit");
        assert_eq!(limit["schema"]["maximum"], MAX_LIMIT);
        assert_eq!(limit["schema"]["default"], DEFAULT_LIMIT);
        let page = &doc["components"]["schemas"]["ItemPage"]["properties"]["items"];
        assert_eq!(page["maxItems"], MAX_LIMIT);
    }
}
