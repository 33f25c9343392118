//! The items list's query string (app/src/http.rs `query_param`, app/src/items.rs `parse_list_query`):
//! - a parameter's value is what stands after `name=` in the first `&`-separated pair named `name`, as it is
//!   (no percent-decoding: the values this app reads never need it);
//! - an accepted `limit` is within 1..=MAX_LIMIT and is the number given (DEFAULT_LIMIT when absent); an
//!   accepted `after` is the cursor given; a refusal names `limit`, `after` or both, exactly those given
//!   invalid;
//! - what is accepted, printed back as a query (`limit=N&after=CURSOR`), parses to the same values.
//!
//! Input: the query string (what follows `?`).
#![no_main]

use app::fuzzing::{DEFAULT_LIMIT, MAX_LIMIT, encode_cursor, list_query, query_param};
use libfuzzer_sys::fuzz_target;

/// The first value of `name`, by the rule stated above, checked on the pairs one by one.
fn expected_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    for pair in query.split('&') {
        if pair == name {
            return Some("");
        }
        if let Some(value) = pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')) {
            return Some(value);
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else { return };
    for name in ["limit", "after", ""] {
        let value = query_param(Some(query), name);
        assert_eq!(value, expected_param(query, name), "{name} in {query:?}");
    }
    assert_eq!(query_param(None, "limit"), None);

    let limit_text = query_param(Some(query), "limit");
    let after_text = query_param(Some(query), "after");
    match list_query(Some(query)) {
        Ok((limit, after)) => {
            assert!((1..=MAX_LIMIT).contains(&limit), "limit {limit} from {query:?}");
            match limit_text {
                Some(text) => assert_eq!(text.parse::<i64>().ok(), Some(limit), "{query:?}"),
                None => assert_eq!(limit, DEFAULT_LIMIT),
            }
            match (after_text, after) {
                (Some(text), Some(id)) => assert!(text.eq_ignore_ascii_case(&encode_cursor(id)), "{query:?}"),
                (None, None) => {}
                other => panic!("after {other:?} from {query:?}"),
            }
            // Printed back, it parses to the same.
            let printed = match after {
                Some(id) => format!("limit={limit}&after={}", encode_cursor(id)),
                None => format!("limit={limit}"),
            };
            assert_eq!(list_query(Some(&printed)), Ok((limit, after)), "{printed}");
        }
        Err(fields) => {
            let named: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
            let limit_bad = limit_text.is_some_and(|t| !t.parse::<i64>().is_ok_and(|n| (1..=MAX_LIMIT).contains(&n)));
            let after_bad = after_text.is_some_and(|t| !(t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())));
            let expected: Vec<&str> = [("limit", limit_bad), ("after", after_bad)]
                .into_iter()
                .filter_map(|(name, bad)| bad.then_some(name))
                .collect();
            assert!(!named.is_empty(), "a refusal names no field: {query:?}");
            assert_eq!(named, expected, "{query:?}");
            assert!(fields.iter().all(|f| !f.message.is_empty()));
        }
    }
});
