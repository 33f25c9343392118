//! The API description a server serves at `/openapi.json`, and responses checked against it.
//!
//! [`Description::check`] takes a request (method, path, headers) and the response it got, and says whether
//! the description declares that response: for a described path and method, the status must be declared for
//! the operation (no `default`, no ranges), with each required header (`X-Request-ID`, `Location`) matching its
//! schema, the content type one of the declared media types, and a JSON body matching the declared schema,
//! whose objects allow no unknown field. A method the path does not list must be a 405 whose `Allow` lists
//! exactly the described methods (and HEAD with GET). A path the description does not know (an unknown route,
//! a debug route) must be answered with an error in the contract (`#/components/schemas/Error`). CORS
//! preflights are answered before routing, for any path, and are not operations.
//!
//! Schemas are JSON Schema 2020-12, the dialect of OpenAPI 3.1, validated with the `jsonschema` crate, formats
//! (`uuid`, `date-time`) included; `$ref`s point into the document's own `components`.

use serde_json::{Map, Value, json};

use crate::http_client::{self, HttpResponse};

/// The methods an OpenAPI path item can hold.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// An OpenAPI 3.1 document.
#[derive(Clone, Debug)]
pub struct Description {
    doc: Value,
}

impl Description {
    /// The document `base` serves at `/openapi.json`; panics unless it is a JSON object.
    pub fn fetch(base: &str) -> Description {
        let resp = http_client::get(base, "/openapi.json");
        assert_eq!(resp.status, 200, "GET /openapi.json: {}", resp.text());
        Description::new(resp.json())
    }

    pub fn new(doc: Value) -> Description {
        assert!(doc.is_object() && doc["paths"].is_object(), "not an OpenAPI document: {doc}");
        Description { doc }
    }

    pub fn document(&self) -> &Value {
        &self.doc
    }

    /// Whether the description declares `resp` as an answer to `method path` sent with `headers`; the error
    /// says what differs.
    pub fn check(&self, method: &str, path: &str, headers: &[(&str, &str)], resp: &HttpResponse) -> Result<(), String> {
        let what = format!("{method} {path} -> {}", resp.status);
        self.check_response(method, path, headers, resp).map_err(|e| format!("{what}: {e}\nbody: {}", resp.text()))
    }

    fn check_response(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        resp: &HttpResponse,
    ) -> Result<(), String> {
        let id = resp.header("x-request-id").ok_or("no X-Request-ID header")?;
        self.validate(&json!({ "$ref": "#/components/schemas/RequestId" }), &json!(id))
            .map_err(|e| format!("X-Request-ID {id:?}: {e}"))?;
        let path = path.split('?').next().unwrap_or(path);
        // Debug routes are not described (they never exist in prod): only their errors can be checked.
        let Some(item) = self.path_item(path) else {
            return self.check_error(resp, "a path the description does not know");
        };
        let head = method.eq_ignore_ascii_case("HEAD");
        let key = if head { "get".to_owned() } else { method.to_ascii_lowercase() };
        let Some(operation) = item.get(&key).filter(|_| METHODS.contains(&key.as_str())) else {
            let preflight = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("access-control-request-method"));
            if key == "options" && preflight {
                return Ok(());
            }
            return self.check_method_not_allowed(item, resp);
        };
        let status = resp.status.to_string();
        let declared = operation["responses"].get(&status).ok_or_else(|| {
            let known: Vec<&String> =
                operation["responses"].as_object().map(|r| r.keys().collect()).unwrap_or_default();
            format!("status {status} is not declared for this operation (declared: {known:?})")
        })?;
        let declared = self.resolve(declared)?;
        for (name, header) in declared["headers"].as_object().into_iter().flatten() {
            let header = self.resolve(header)?;
            match resp.header(name) {
                Some(value) => self
                    .validate(&header["schema"], &self.header_value(&header["schema"], value)?)
                    .map_err(|e| format!("header {name}: {value:?}: {e}"))?,
                None if header["required"] == true => return Err(format!("no {name} header")),
                None => {}
            }
        }
        let content = declared["content"].as_object().filter(|c| !c.is_empty());
        let Some(content) = content else {
            return if resp.body.is_empty() { Ok(()) } else { Err("a body where none is declared".into()) };
        };
        let content_type = resp.header("content-type").ok_or("no Content-Type")?;
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let media = content.get(&essence).ok_or_else(|| {
            format!(
                "content type {content_type:?} is not declared (declared: {:?})",
                content.keys().collect::<Vec<_>>()
            )
        })?;
        if head || !is_json(&essence) {
            return Ok(());
        }
        let body: Value = serde_json::from_slice(&resp.body).map_err(|e| format!("the body is not JSON: {e}"))?;
        self.validate(&media["schema"], &body)
    }

    /// A 405 in the contract, with `Allow` listing exactly the path's described methods (HEAD with GET).
    fn check_method_not_allowed(&self, item: &Map<String, Value>, resp: &HttpResponse) -> Result<(), String> {
        if resp.status != 405 {
            return Err("a method the description does not list for this path, answered without 405".into());
        }
        let declared = self.resolve(&self.doc["components"]["responses"]["MethodNotAllowed"])?;
        let schema = &declared["content"]["application/json"]["schema"];
        self.check_error(resp, "a 405")?;
        self.validate(schema, &serde_json::from_slice(&resp.body).unwrap_or_default())?;
        let mut expected: Vec<String> =
            METHODS.iter().filter(|m| item.contains_key(**m)).map(|m| m.to_uppercase()).collect();
        if expected.iter().any(|m| m == "GET") {
            expected.push("HEAD".into());
        }
        let mut allowed: Vec<String> =
            resp.header("allow").ok_or("405 without Allow")?.split(',').map(|m| m.trim().to_owned()).collect();
        expected.sort();
        allowed.sort();
        if allowed == expected { Ok(()) } else { Err(format!("Allow lists {allowed:?}, the description {expected:?}")) }
    }

    /// An error in the contract, whatever its status.
    fn check_error(&self, resp: &HttpResponse, what: &str) -> Result<(), String> {
        if resp.status < 400 {
            return Err(format!("{what}, answered {} instead of an error", resp.status));
        }
        let content_type = resp.header("content-type").unwrap_or("");
        if !content_type.starts_with("application/json") {
            return Err(format!("{what}: content type {content_type:?}"));
        }
        let body: Value = serde_json::from_slice(&resp.body).map_err(|e| format!("the body is not JSON: {e}"))?;
        self.validate(&json!({ "$ref": "#/components/schemas/Error" }), &body)
    }

    /// A header's text as the JSON value its schema describes: a number for an `integer` or `number` schema
    /// (OpenAPI's `simple` style), else the string itself.
    fn header_value(&self, schema: &Value, text: &str) -> Result<Value, String> {
        let numeric = matches!(self.resolve(schema)?["type"].as_str(), Some("integer" | "number"));
        Ok(match serde_json::from_str::<Value>(text) {
            Ok(number @ Value::Number(_)) if numeric => number,
            _ => json!(text),
        })
    }

    /// The path item whose template matches `path` segment by segment (`{name}`: one non-empty segment).
    fn path_item(&self, path: &str) -> Option<&Map<String, Value>> {
        let paths = self.doc["paths"].as_object()?;
        paths.iter().find(|(template, _)| matches(template, path)).and_then(|(_, item)| item.as_object())
    }

    /// Follows a local `$ref` (`#/components/...`), if any.
    fn resolve<'a>(&'a self, value: &'a Value) -> Result<&'a Value, String> {
        match value.get("$ref").and_then(Value::as_str) {
            None => Ok(value),
            Some(reference) => {
                let target = reference.strip_prefix('#').and_then(|pointer| self.doc.pointer(pointer));
                self.resolve(target.ok_or_else(|| format!("$ref {reference} resolves to nothing"))?)
            }
        }
    }

    /// Validates `instance` against `schema`, whose `$ref`s point into this document's components.
    fn validate(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        // The schema becomes the root of a document that also holds the components, so that its `#/components/...`
        // references resolve (`components` is no JSON Schema keyword and is otherwise ignored).
        let mut root = match schema {
            Value::Object(map) => map.clone(),
            Value::Bool(true) => Map::new(),
            other => return Err(format!("not a schema: {other}")),
        };
        root.insert("components".into(), self.doc["components"].clone());
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&Value::Object(root))
            .map_err(|e| format!("the description's schema {schema} does not compile: {e}"))?;
        let errors: Vec<String> =
            validator.iter_errors(instance).map(|e| format!("at {:?}: {e}", e.instance_path().to_string())).collect();
        if errors.is_empty() { Ok(()) } else { Err(format!("does not match {schema}: {}", errors.join("; "))) }
    }
}

/// Whether `path` matches the path template `template`.
fn matches(template: &str, path: &str) -> bool {
    let (template, path): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    template.len() == path.len()
        && template
            .iter()
            .zip(&path)
            .all(|(t, p)| if t.starts_with('{') && t.ends_with('}') { !p.is_empty() } else { t == p })
}

/// `application/json` or `application/<anything>+json`.
fn is_json(essence: &str) -> bool {
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document the app serves, read from the repository.
    fn description() -> Description {
        let path = crate::workspace_root().join("app/openapi.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Description::new(serde_json::from_str(&text).expect("JSON"))
    }

    fn response(status: u16, headers: &[(&str, &str)], body: &Value) -> HttpResponse {
        let mut all: Vec<(String, String)> = vec![("x-request-id".into(), "req-1".into())];
        all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        let body = if body.is_null() { Vec::new() } else { serde_json::to_vec(body).unwrap() };
        HttpResponse { status, headers: all, body }
    }

    fn json_response(status: u16, body: &Value) -> HttpResponse {
        response(status, &[("content-type", "application/json")], body)
    }

    fn error(code: &str, details: Value) -> Value {
        json!({"code": code, "message": "m", "request_id": "req-1", "details": details})
    }

    fn item() -> Value {
        json!({"id": "01a22cf9-875f-7015-b343-5b95ffe18247", "name": "n", "quantity": 1,
               "created_at": "2026-11-30T15:01:20.123456Z"})
    }

    #[test]
    fn what_the_app_answers_is_described() {
        let d = description();
        let ok = |method: &str, path: &str, resp: HttpResponse| {
            d.check(method, path, &[], &resp).unwrap_or_else(|e| panic!("{e}"));
        };
        ok("GET", "/healthz", json_response(200, &json!({"status": "ok"})));
        ok("HEAD", "/healthz", response(200, &[("content-type", "application/json")], &Value::Null));
        ok("GET", "/api/items/01a22cf9-875f-7015-b343-5b95ffe18247", json_response(200, &item()));
        ok("GET", "/api/items?limit=1", json_response(200, &json!({"items": [item()], "next": null})));
        ok("GET", "/api/items/x", json_response(404, &error("not_found", Value::Null)));
        let created =
            [("content-type", "application/json"), ("location", "/api/items/01a22cf9-875f-7015-b343-5b95ffe18247")];
        ok("POST", "/api/items", response(201, &created, &item()));
        ok("DELETE", "/api/items/01a22cf9-875f-7015-b343-5b95ffe18247", response(204, &[], &Value::Null));
        let fields = json!({"fields": [{"field": "name", "message": "must not be empty"}]});
        ok("POST", "/api/items", json_response(422, &error("validation_error", fields)));
        ok("GET", "/nope", json_response(404, &error("not_found", Value::Null)));
        let busy = [("content-type", "application/json"), ("retry-after", "1")];
        ok("GET", "/api/items", response(503, &busy, &error("not_ready", Value::Null)));
        ok("GET", "/debug/panic", json_response(500, &error("internal_error", Value::Null)));
        let allow = [("content-type", "application/json"), ("allow", "GET, HEAD, POST")];
        ok(
            "PUT",
            "/api/items",
            response(405, &allow, &error("method_not_allowed", json!({"allow": "GET, HEAD, POST"}))),
        );
        let preflight = response(204, &[], &Value::Null);
        d.check("OPTIONS", "/api/items", &[("Access-Control-Request-Method", "POST")], &preflight).unwrap();
    }

    #[test]
    fn drift_is_caught() {
        let d = description();
        let refused = |method: &str, path: &str, resp: HttpResponse, why: &str| {
            let err = d.check(method, path, &[], &resp).expect_err(why);
            eprintln!("{why}: {err}");
        };
        // A field added to a response body.
        refused("GET", "/healthz", json_response(200, &json!({"status": "ok", "uptime": 1})), "an unknown field");
        let mut extra = item();
        extra["colour"] = json!("red");
        refused("GET", "/api/items/01a22cf9-875f-7015-b343-5b95ffe18247", json_response(200, &extra), "an item field");
        let mut time = item();
        time["created_at"] = json!("yesterday");
        refused("GET", "/api/items/01a22cf9-875f-7015-b343-5b95ffe18247", json_response(200, &time), "a format");
        refused(
            "GET",
            "/nope",
            json_response(
                404,
                &json!({"code": "not_found", "message": "m", "request_id": "req-1", "details": null, "trace": "x"}),
            ),
            "an error field",
        );
        // A status the operation does not declare, or the wrong code under a declared one.
        refused("GET", "/healthz", json_response(202, &json!({"status": "ok"})), "an undeclared status");
        refused(
            "POST",
            "/api/items",
            json_response(400, &error("validation_error", json!({"fields": []}))),
            "a code under another status",
        );
        // Headers and content types.
        let mut no_id = json_response(200, &json!({"status": "ok"}));
        no_id.headers.retain(|(n, _)| n != "x-request-id");
        refused("GET", "/healthz", no_id, "no X-Request-ID");
        refused("POST", "/api/items", json_response(201, &item()), "no Location");
        let busy = [("content-type", "application/json"), ("retry-after", "soon")];
        refused("GET", "/api/items", response(503, &busy, &error("not_ready", Value::Null)), "a Retry-After");
        refused(
            "GET",
            "/healthz",
            response(200, &[("content-type", "text/html")], &json!({"status": "ok"})),
            "a content type",
        );
        refused(
            "DELETE",
            "/api/items/01a22cf9-875f-7015-b343-5b95ffe18247",
            json_response(204, &json!({})),
            "a body on 204",
        );
        // A route the description does not know answering successfully, and a 405 whose Allow differs.
        refused("GET", "/api/things", json_response(200, &json!({})), "an undescribed route");
        let allow = [("content-type", "application/json"), ("allow", "GET, HEAD, POST, PATCH")];
        refused("PUT", "/api/items", response(405, &allow, &error("method_not_allowed", json!({}))), "Allow vs paths");
        refused("PATCH", "/api/items", json_response(200, &json!({})), "an undescribed method");
    }

    #[test]
    fn templates_match_whole_segments() {
        assert!(matches("/api/items/{id}", "/api/items/x"));
        assert!(!matches("/api/items/{id}", "/api/items/"));
        assert!(!matches("/api/items/{id}", "/api/items/x/y"));
        assert!(!matches("/api/items", "/api/itemsx"));
        assert!(matches("/healthz", "/healthz"));
    }
}
