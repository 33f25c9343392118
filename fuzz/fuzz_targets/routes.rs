//! Path matching (app/src/routes.rs `resolve`, `match_template`). Paths are matched as they arrive, without
//! percent-decoding, so `%2F` in a parameter stays three characters and never splits a segment.
//! - a match, instantiated back from its template and parameters, gives the path; its parameters are
//!   non-empty and hold no `/`; there is one per `{name}` segment;
//! - `resolve` returns the first route of the table that matches, never a debug route unless asked, and none
//!   when no route matches;
//! - a template without parameters matches exactly the one path equal to it, as segment-wise matching would.
//!
//! Input, as text: the path, and on a second line, optionally, a template. Each path is resolved with and
//! without the debug routes.
#![no_main]

use app::fuzzing::{match_template, resolve, routes};
use libfuzzer_sys::fuzz_target;

fn is_param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

/// The path a template gives with these parameters in its `{name}` segments, in order.
fn instantiate(template: &str, params: &[String]) -> String {
    let mut params = params.iter();
    let segments: Vec<&str> = template
        .split('/')
        .map(|s| if is_param(s) { params.next().expect("a parameter per segment").as_str() } else { s })
        .collect();
    assert!(params.next().is_none(), "more parameters than segments");
    segments.join("/")
}

fn check_match(template: &str, path: &str, params: &[String]) {
    assert_eq!(instantiate(template, params), path, "{template} with {params:?}");
    assert_eq!(params.len(), template.split('/').filter(|s| is_param(s)).count());
    assert!(params.iter().all(|p| !p.is_empty() && !p.contains('/')), "{params:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (path, template) = text.split_once('\n').unwrap_or((text, ""));

    if let Some(params) = match_template(template, path) {
        // A template without `{` is compared whole; with one, segment by segment.
        check_match(template, path, &params);
    }

    let table = routes();
    for debug in [false, true] {
        let first = table.iter().find_map(|&(template, only_debug)| {
            if only_debug && !debug {
                return None;
            }
            match_template(template, path).map(|params| (template, params))
        });
        let resolved = resolve(path, debug);
        assert_eq!(resolved, first, "{path:?}, debug routes {debug}");
        if let Some((template, params)) = resolved {
            check_match(template, path, &params);
        }
    }
    for &(template, _) in &table {
        if !template.contains('{') {
            assert_eq!(match_template(template, path).is_some(), path == template, "{template} {path:?}");
        }
    }
});
