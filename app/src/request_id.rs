//! Request ids: the client's `X-Request-ID` when it is safe to log and echo, otherwise a new UUIDv7.
//!
//! An id costs no system call and at most one allocation: the client's header value is shared, not copied,
//! and a new id takes its random bits from a generator per thread, seeded once from the operating system.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

/// The header that carries the id in both directions.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of one request, as it goes back in the response's `X-Request-ID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The client's id if it is valid (see [`is_valid`]), else a fresh one. Only the first header counts.
    pub fn from_headers(headers: &HeaderMap) -> RequestId {
        match headers.get(&HEADER) {
            Some(value) if value.to_str().is_ok_and(is_valid) => RequestId(value.clone()),
            _ => RequestId::generate(),
        }
    }

    /// A new UUIDv7: unique and time-ordered (to the millisecond), so ids sort with the log.
    pub fn generate() -> RequestId {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let random = random_u128().to_le_bytes();
        let uuid = uuid::Builder::from_unix_timestamp_millis(millis, random[..10].try_into().expect("10 bytes"));
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = uuid.into_uuid().hyphenated().encode_lower(&mut text);
        RequestId(HeaderValue::from_str(text).expect("a UUID is a valid header value"))
    }

    pub fn as_str(&self) -> &str {
        // Always a valid id, so ASCII: checked as UTF-8, which goes a word at a time.
        std::str::from_utf8(self.0.as_bytes()).expect("request ids are ASCII")
    }

    /// The id as the response header's value.
    pub fn into_header_value(self) -> HeaderValue {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `^[A-Za-z0-9._:-]{1,128}$`: short, and nothing that could break a header, a log line or a JSON string.
pub fn is_valid(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Bumped by [`reseed`]: a thread's generator seeded under an older value seeds itself again before use.
static SEEDING: AtomicU64 = AtomicU64::new(1);

/// SplitMix64's increment.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

thread_local! {
    /// This thread's generator: the [`SEEDING`] it was seeded under (0: never), and its state.
    static GENERATOR: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Makes every thread seed its generator again from the operating system before its next id. Called when
/// the app boots, in each process that serves it: a process that is a copy of another one (fork) would
/// otherwise draw the same sequence of ids as its siblings.
pub(crate) fn reseed() {
    SEEDING.fetch_add(1, Ordering::Relaxed);
}

/// 128 random bits for a new id. The generator is SplitMix64 (a counter passed through a mixing function:
/// consecutive outputs never repeat within 2^64 draws) started at a random point, so two processes walk
/// apart from each other; a UUIDv7 adds the millisecond on top of the 74 bits it keeps.
fn random_u128() -> u128 {
    GENERATOR.with(|generator| {
        let seeding = SEEDING.load(Ordering::Relaxed);
        let (seeded, mut state) = generator.get();
        if seeded != seeding {
            // One getrandom(2) per thread and reseed, through the uuid crate's own source of randomness.
            state = uuid::Uuid::new_v4().as_u64_pair().0;
        }
        let mut next = || {
            state = state.wrapping_add(GAMMA);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let bits = (u128::from(next()) << 64) | u128::from(next());
        generator.set((seeding, state));
        bits
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        for ok in ["a", "abc-123", "req_1.2:3", "0f8fad5b-d9cb-469f-a165-70867728950e", &"x".repeat(128)] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", &"x".repeat(129), "a b", "a\"b", "a\nb", "a/b", "é", "a;b", "<script>"] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn client_id_is_kept_when_valid_and_replaced_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("client-42"));
        assert_eq!(RequestId::from_headers(&headers).as_str(), "client-42");

        headers.insert(HEADER, HeaderValue::from_static("has \"quotes\""));
        let id = RequestId::from_headers(&headers);
        assert_ne!(id.as_str(), "has \"quotes\"");
        assert!(uuid::Uuid::parse_str(id.as_str()).is_ok());

        let generated = RequestId::from_headers(&HeaderMap::new());
        assert!(is_valid(generated.as_str()));
        assert_ne!(generated, RequestId::from_headers(&HeaderMap::new()));
    }

    #[test]
    fn generated_ids_are_version_7_uuids_of_now() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let id = RequestId::generate();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let uuid = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(uuid.get_version(), Some(uuid::Version::SortRand));
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
        let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!((before..=after).contains(&millis), "{before} <= {millis} <= {after}");
        assert_eq!(id.as_str(), id.as_str().to_lowercase());
    }

    #[test]
    fn generated_ids_do_not_repeat() {
        let ids: std::collections::HashSet<String> =
            (0..100_000).map(|_| RequestId::generate().as_str().to_owned()).collect();
        assert_eq!(ids.len(), 100_000);
    }

    #[test]
    fn a_reseed_starts_another_sequence() {
        // Two threads, each seeded from the operating system, draw apart.
        reseed();
        let draw = || std::thread::spawn(|| (0..1000).map(|_| random_u128()).collect::<Vec<_>>()).join().unwrap();
        let (a, b) = (draw(), draw());
        assert!(a.iter().all(|x| !b.contains(x)));
        // A thread's generator seeds itself again after a reseed: the sequence does not go on where it was.
        let _ = random_u128();
        let (_, old) = GENERATOR.with(Cell::get);
        reseed();
        let _ = random_u128();
        let (_, new) = GENERATOR.with(Cell::get);
        assert_ne!(
            new,
            old.wrapping_add(GAMMA).wrapping_add(GAMMA),
            "went on with the sequence from before the reseed"
        );
    }
}
