//! `POST /api/items` bodies (app/src/items.rs `parse_new_item`), which never panic:
//! - accepted: the body is a JSON object of exactly `name` and `quantity`, the name a string of
//!   1..=NAME_MAX_CHARS characters without NUL, the quantity an integer >= 0 (a number without a fractional
//!   part counts), and those are the values returned;
//! - refused: 400 `bad_request` for a body that is not JSON (not UTF-8, or not its grammar at any depth of
//!   nesting, which the parser skips without recursing); 422 `validation_error` for one that is (as serde_json's
//!   `Value` reads it, up to its depth limit), naming at least one field, each reported field name at most 64
//!   characters, at most 10 unknown fields named.
//!
//! Input: the body's bytes.
#![no_main]

use app::fuzzing::{ErrorCode, NAME_MAX_CHARS, new_item};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

/// Whether a JSON number is the integer `n`.
fn is_integer(number: &Value, n: i64) -> bool {
    number.as_i64() == Some(n) || number.as_f64().is_some_and(|f| f.is_finite() && f.fract() == 0.0 && f as i64 == n)
}

fuzz_target!(|bytes: &[u8]| {
    // Between the two lie a text nested deeper than `Value` reads (128) and a string escape that is a lone
    // surrogate: JSON by the grammar, and either answer is right.
    let not_json = std::str::from_utf8(bytes).is_err() || serde_json::from_slice::<IgnoredAny>(bytes).is_err();
    let json = serde_json::from_slice::<Value>(bytes).is_ok();
    match new_item(bytes) {
        Ok((name, quantity)) => {
            let Ok(Value::Object(object)) = serde_json::from_slice(bytes) else {
                panic!("accepted a body that is not a JSON object")
            };
            assert!(object.keys().all(|k| k == "name" || k == "quantity"), "accepted unknown fields: {object:?}");
            assert_eq!(object.get("name"), Some(&json!(name)));
            assert!(is_integer(&object["quantity"], quantity), "{:?} is not {quantity}", object["quantity"]);
            assert!(
                (1..=NAME_MAX_CHARS).contains(&name.chars().count()),
                "name of {} characters",
                name.chars().count()
            );
            assert!(!name.contains('\0'));
            assert!(quantity >= 0);
        }
        Err(error) if error.code() == ErrorCode::BadRequest => {
            assert!(!json, "400 for a JSON body: {error:?}");
        }
        Err(error) => {
            assert_eq!(error.code(), ErrorCode::ValidationError, "{error:?}");
            assert!(!not_json, "422 for a body that is not JSON: {error:?}");
            let fields = error.details().and_then(|d| d["fields"].as_array()).expect("a 422 lists its fields");
            assert!(!fields.is_empty(), "a 422 names no field");
            for field in fields {
                let name = field["field"].as_str().expect("a field name");
                let message = field["message"].as_str().unwrap_or_default();
                assert!(!message.is_empty(), "{error:?}");
                // Only an unknown field is named as sent, which can be empty.
                assert!(!name.is_empty() || message == "unknown field", "an empty field name: {error:?}");
                assert!(name.chars().count() <= 64, "a field name of {} characters", name.chars().count());
            }
            assert!(fields.len() <= 2 + 10 + 1, "{} fields reported", fields.len());
        }
    }
});
