//! The JSON redactor against serde_json, differentially: for any JSON text it accepts exactly
//! what serde_json accepts, and what it keeps parses to the same JSON value apart from the
//! redacted members, whose values are all the string "REDACTED". Short runs here; a long run
//! with `bench/fuzz.sh` (`PROPTEST_CASES`).

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;
use tapwire_shared::redact::{RedactError, Redaction};

const FIELDS: [&str; 3] = ["password", "token", "pass\"word"];

fn redaction() -> Redaction {
    let fields: Vec<String> = FIELDS.iter().map(|&f| f.to_owned()).collect();
    Redaction::new(&[], &fields)
}

fn json_request(body: &[u8]) -> Bytes {
    let mut raw = format!(
        "POST /api HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    Bytes::from(raw)
}

fn body_of(message: &[u8]) -> &[u8] {
    let end = message.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    &message[end..]
}

/// What redaction must turn `value` into: named members' values become "REDACTED", at any
/// depth, without looking inside them.
fn redacted(value: &Value) -> Value {
    match value {
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(name, value)| {
                    let value = if FIELDS.contains(&name.as_str()) {
                        Value::String("REDACTED".into())
                    } else {
                        redacted(value)
                    };
                    (name.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[ -~é\u{1F600}\\\\\"\n]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
                        "[a-z\"\\\\é]{0,8}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// JSON-looking text. No `d`/`D` (so no `\u` escape is a lone surrogate, which serde_json
/// refuses and RFC 8259 allows) and no exponent (so no number overflows serde_json's f64):
/// the only two places the redactor is deliberately laxer.
fn json_like_text() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(b"{}[]:,\" \n\t0123456789-.tfnulrsabcpwo\\/".to_vec()),
        1..48,
    )
}

/// `PROPTEST_CASES` when set (the long runs of `bench/fuzz.sh`), else `short` cases.
fn cases(short: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(short)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn redacted_json_parses_to_the_same_value_but_the_named_members(
        value in json_value(),
        pretty in any::<bool>(),
    ) {
        let text = if pretty {
            serde_json::to_vec_pretty(&value).unwrap()
        } else {
            serde_json::to_vec(&value).unwrap()
        };
        // Compared with serde_json's reading of the text (its float parsing does not round
        // trip every f64, so not with `value` itself).
        let original: Value = serde_json::from_slice(&text).unwrap();
        let out = redaction().apply(&json_request(&text)).unwrap();
        let kept: Value = serde_json::from_slice(body_of(&out)).unwrap();
        prop_assert_eq!(kept, redacted(&original));
        let head = String::from_utf8_lossy(&out[..out.len() - body_of(&out).len()]).into_owned();
        let content_length = format!("Content-Length: {}\r\n", body_of(&out).len());
        prop_assert!(head.contains(&content_length), "{}", head);
    }

    #[test]
    fn the_redactor_accepts_exactly_what_serde_json_accepts(text in json_like_text()) {
        let ours = redaction().apply(&json_request(&text));
        let theirs = serde_json::from_slice::<Value>(&text);
        match (&ours, &theirs) {
            (Ok(out), Ok(value)) => {
                let kept: Value = serde_json::from_slice(body_of(out)).unwrap();
                prop_assert_eq!(kept, redacted(value));
            }
            (Err(RedactError::InvalidJson { .. }), Err(_)) => {}
            _ => prop_assert!(
                false,
                "{:?}: redactor {:?}, serde_json {:?}",
                String::from_utf8_lossy(&text),
                ours.map(|_| ()),
                theirs.map(|_| ())
            ),
        }
    }
}
