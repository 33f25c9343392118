//! Bounded log lines (supervisor/src/lib.rs `cut_at`, supervisor/src/logging.rs):
//! - `cut_at(s, limit)` keeps the longest prefix of `s` of at most `limit` bytes that ends on a character
//!   boundary, and counts the bytes left out;
//! - every rendered line is one JSON object of at most LINE_MAX bytes, newline included, and nothing else;
//! - each string value is either whole, or a prefix of it cut on a character boundary at one of
//!   FIELD_LIMITS, the same limit for every value of the line, followed by `…[+N bytes]` with N the bytes left
//!   out: never longer than FIELD_MAX plus its marker, and always valid UTF-8 (it parsed as JSON);
//! - a line that cannot fit even so keeps its message (cut at the tightest limit) and says
//!   `fields_omitted: true` with the length it would have had;
//! - numbers and booleans come out as they went in (a float not finite as null).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use supervisor::fuzzing::{FIELD_LIMITS, FIELD_MAX, LINE_MAX, cut_at, log_lines};

/// A string value: some text, repeated to reach the limits cheaply.
#[derive(Arbitrary, Debug)]
struct Text {
    text: String,
    repeat: u8,
}

impl Text {
    fn value(&self) -> String {
        self.text.repeat(1 + usize::from(self.repeat) % 64)
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// `cut_at` on its own.
    cut: (Text, u16),
    message: Text,
    /// Recorded on the enclosing span when it is created, and one recorded later.
    request_id: Text,
    late: Option<Text>,
    /// Logged as a string, with `Display` and with `Debug`.
    plain: Text,
    shown: Text,
    debugged: Text,
    number: f64,
    count: i64,
    flag: bool,
    /// A second event with only a message, and one with a field named like a fixed key.
    pid_field: u64,
}

/// The marker that follows a cut value.
fn marker(cut: usize) -> String {
    format!("…[+{cut} bytes]")
}

/// Checks a rendered string value against what was logged; returns the limits it is consistent with.
fn check_value(name: &str, shown: &str, original: &str) -> Vec<usize> {
    if shown == original {
        return FIELD_LIMITS.iter().copied().filter(|&l| original.len() <= l).collect();
    }
    let at = shown.rfind("…[+").unwrap_or_else(|| panic!("{name}: {shown:?} is neither {original:?} nor cut"));
    let (kept, suffix) = shown.split_at(at);
    let cut: usize = suffix
        .strip_prefix("…[+")
        .and_then(|s| s.strip_suffix(" bytes]"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name}: bad marker {suffix:?}"));
    assert!(original.starts_with(kept), "{name}: {kept:?} is not a prefix of the value");
    assert_eq!(kept.len() + cut, original.len(), "{name}: the marker counts {cut} bytes left out");
    assert!(cut > 0 && shown.len() <= FIELD_MAX + marker(cut).len(), "{name}: {} bytes", shown.len());
    // The longest prefix on a character boundary within the limit: a character is at most 4 bytes.
    FIELD_LIMITS.iter().copied().filter(|&l| kept.len() <= l && kept.len() + 4 > l && original.len() > l).collect()
}

fuzz_target!(|input: Input| {
    let (text, limit) = (input.cut.0.value(), usize::from(input.cut.1));
    let (kept, cut) = cut_at(&text, limit);
    assert!(text.starts_with(kept) && kept.len() + cut == text.len());
    if text.len() <= limit {
        assert_eq!((kept, cut), (text.as_str(), 0));
    } else {
        assert!(kept.len() <= limit && kept.len() + 4 > limit, "{} bytes kept of {}", kept.len(), text.len());
    }

    let message = input.message.value();
    let request_id = input.request_id.value();
    let late = input.late.as_ref().map(Text::value);
    let plain = input.plain.value();
    let shown = input.shown.value();
    let debugged = input.debugged.value();
    let lines = log_lines(|| {
        let span = tracing::info_span!("request", request_id = request_id.as_str(), late = tracing::field::Empty);
        let _entered = span.enter();
        if let Some(late) = &late {
            span.record("late", late.as_str());
        }
        tracing::info!(
            plain = plain.as_str(),
            shown = %shown,
            debugged = ?debugged,
            number = input.number,
            count = input.count,
            flag = input.flag,
            "{message}"
        );
        tracing::warn!(pid = input.pid_field, "{message}");
    });
    assert_eq!(lines.len(), 2);

    for line in &lines {
        assert!(line.len() <= LINE_MAX, "a line of {} bytes", line.len());
        assert!(line.ends_with("}\n") && !line[..line.len() - 1].contains('\n'), "{line:?}");
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let object = value.as_object().expect("a JSON object");
        assert!(object["ts"].is_string() && object["level"].is_string() && object.contains_key("msg"), "{line}");
    }

    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    let mut limits: Vec<usize> = FIELD_LIMITS.to_vec();
    let mut strings = vec![("msg", message.clone())];
    if first.get("fields_omitted").is_some() {
        assert_eq!(first["fields_omitted"], true);
        assert!(first["line_bytes"].as_u64().is_some_and(|n| n > LINE_MAX as u64), "{first}");
        assert!(first.get("plain").is_none() && first.get("request_id").is_none(), "{first}");
        limits = vec![FIELD_LIMITS[FIELD_LIMITS.len() - 1]];
    } else {
        strings.extend([
            ("plain", plain.clone()),
            ("shown", shown.clone()),
            ("debugged", format!("{debugged:?}")),
            ("request_id", request_id.clone()),
        ]);
        if let Some(late) = &late {
            strings.push(("late", late.clone()));
        }
        // The float as written, read back exactly (`Value` reads floats to within an ulp, not exactly).
        let written = lines[0].split_once(",\"number\":").expect("the float's key").1;
        let written = &written[..written.find([',', '}']).expect("the float's end")];
        if input.number.is_finite() {
            let read: f64 = written.parse().unwrap_or_else(|e| panic!("{written:?} ({e})"));
            assert_eq!(read.to_bits(), input.number.to_bits(), "{written} for {}", input.number);
        } else {
            assert_eq!(written, "null");
        }
        assert_eq!(first["count"].as_i64(), Some(input.count));
        assert_eq!(first["flag"].as_bool(), Some(input.flag));
    }
    for (name, original) in &strings {
        let shown = first[*name].as_str().unwrap_or_else(|| panic!("{name} missing: {first}"));
        let fits = check_value(name, shown, original);
        limits.retain(|l| fits.contains(l));
    }
    assert!(!limits.is_empty(), "the values of one line were cut at different limits: {first}");

    // An event's own field wins over the fixed key of the same name.
    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    if second.get("fields_omitted").is_none() {
        assert_eq!(second["pid"].as_u64(), Some(input.pid_field), "{second}");
    }
});
