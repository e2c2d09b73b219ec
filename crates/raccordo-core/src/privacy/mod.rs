//! Erasure and export of one data subject's personal data (GDPR articles 15 and 17): the
//! pure parts — who the subject is, how stored JSON is matched against them, and how a
//! stored value is replaced by a pseudonym of the same byte length.
//!
//! Why the same length: the event log is append-only and checksummed, and its offset
//! indexes point into the files. A payload rewritten to the same length is patched where it
//! lies (a new checksum, nothing moved), so erasing one customer never rewrites a segment.
//!
//! Why a pseudonym rather than a deletion: the live windows count distinct customers and
//! are rebuilt from the log after a restart without a checkpoint. Every event of the
//! customer gets the *same* pseudonym within one erasure, so counts, values and distinct
//! customers come out as before, while nothing links the pseudonym to the person: it is
//! drawn from a key made for the erasure and forgotten after it.

mod holders;

use sha2::{Digest, Sha256};

pub use holders::{Erased, PersonalData, RejectedRequestsHolder, RunsHolder, WorkQueueHolder};

/// Most bytes an identifier may have.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// The identifier a data subject is known by in the stored data: a customer id
/// (`CLIENTE-LOMB-000123`), an e-mail address, a CRM record's property value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    id: String,
    /// The id as a JSON string literal, quotes included: how it appears in stored JSON.
    literal: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("the customer id is empty")]
    Empty,
    #[error("the customer id is longer than {MAX_SUBJECT_BYTES} bytes")]
    TooLong,
    #[error("the customer id holds control characters")]
    Control,
}

impl Subject {
    pub fn new(id: &str) -> Result<Self, SubjectError> {
        let id = id.trim();
        if id.is_empty() {
            return Err(SubjectError::Empty);
        }
        if id.len() > MAX_SUBJECT_BYTES {
            return Err(SubjectError::TooLong);
        }
        if id.chars().any(char::is_control) {
            return Err(SubjectError::Control);
        }
        let literal = serde_json::to_string(id).unwrap_or_default();
        Ok(Self {
            id: id.to_string(),
            literal,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id as it appears in JSON text written by serde (a string value, quotes
    /// included): what stores search their documents for.
    pub fn json_literal(&self) -> &str {
        &self.literal
    }

    /// A stable fingerprint for audit records and answers: whoever knows the id can check
    /// that it was erased, while the record itself does not hold it.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.id.as_bytes());
        hex(&digest[..16])
    }

    /// Whether a JSON document has a string value (or key) equal to the id. Exact: `C1`
    /// does not match `C12`, nor text that merely contains it.
    pub fn is_in_json(&self, json_text: &str) -> bool {
        json_text.contains(&self.literal)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Draws same-length replacements for stored values. One per erasure: within it, the same
/// original gets the same pseudonym (so aggregates rebuilt from the log are unchanged);
/// across erasures and without the key, nothing relates a pseudonym to its original.
#[derive(Clone)]
pub struct Pseudonymiser {
    key: [u8; 32],
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymiser(..)")
    }
}

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

impl Pseudonymiser {
    /// A new key from the operating system's random source.
    pub fn random() -> Self {
        Self {
            key: rand::random(),
        }
    }

    /// A fixed key, for tests.
    pub fn with_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// `n` pseudo-random bytes derived from the key and `original`.
    fn stream(&self, original: &str, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 32);
        let mut block = 0u32;
        while out.len() < n {
            let mut h = Sha256::new();
            h.update(self.key);
            h.update(block.to_le_bytes());
            h.update(original.as_bytes());
            out.extend_from_slice(&h.finalize());
            block += 1;
        }
        out.truncate(n);
        out
    }

    /// The pseudonym of one scalar value written as text (a string's content without its
    /// quotes): lower-case letters and digits, as many bytes as the original.
    pub fn pseudonym(&self, original: &str) -> String {
        self.stream(original, original.len())
            .into_iter()
            .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
            .collect()
    }

    /// The replacement of one JSON value's text (`raw`, exactly as stored): every string
    /// value in it becomes a pseudonym and every number other digits, keeping the byte
    /// length and the JSON structure (object keys, `true`, `false`, `null` stay).
    pub fn replace_value(&self, raw: &str) -> String {
        let bytes = raw.as_bytes();
        let mut out = String::with_capacity(raw.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    let end = string_end(bytes, i);
                    let token = &raw[i..end];
                    let is_key = bytes[end..]
                        .iter()
                        .find(|b| !b.is_ascii_whitespace())
                        .is_some_and(|b| *b == b':');
                    if is_key || token.len() < 2 {
                        out.push_str(token);
                    } else {
                        out.push('"');
                        out.push_str(&self.pseudonym(&token[1..token.len() - 1]));
                        if token.len() >= 2 && token.ends_with('"') {
                            out.push('"');
                        }
                    }
                    i = end;
                }
                b'-' | b'0'..=b'9' => {
                    let end = bytes[i..]
                        .iter()
                        .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                        .map_or(bytes.len(), |n| i + n);
                    out.push_str(&self.replace_number(&raw[i..end]));
                    i = end;
                }
                _ => {
                    // Structure and literals: copied a whole UTF-8 character at a time.
                    let len = raw[i..].chars().next().map_or(1, char::len_utf8);
                    out.push_str(&raw[i..i + len]);
                    i += len;
                }
            }
        }
        out
    }

    /// Other digits in the same places: a leading zero stays (`0.5` must stay a number),
    /// a leading non-zero digit stays non-zero, exponents are kept.
    fn replace_number(&self, number: &str) -> String {
        let random = self.stream(number, number.len());
        let mut out = String::with_capacity(number.len());
        let mut leading = true;
        let mut in_exponent = false;
        for (c, r) in number.chars().zip(random) {
            match c {
                'e' | 'E' => {
                    in_exponent = true;
                    out.push(c);
                }
                '0'..='9' if !in_exponent => {
                    if leading && c == '0' {
                        out.push('0');
                    } else if leading {
                        out.push((b'1' + r % 9) as char);
                    } else {
                        out.push((b'0' + r % 10) as char);
                    }
                    leading = false;
                }
                _ => out.push(c),
            }
            if c == '.' {
                leading = false;
            }
        }
        out
    }
}

/// The index just past the string token starting at `start` (a `"`), escapes honoured;
/// the end of the text when it is cut short.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The byte range of the value at a JSON pointer (`/metadati/localita`) in a JSON text.
pub fn locate(text: &str, pointer: &str) -> Option<std::ops::Range<usize>> {
    use serde_json::value::RawValue;
    let mut range = 0..text.len();
    if pointer.is_empty() {
        return Some(range);
    }
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        let here = &text[range.clone()];
        let found: &RawValue = match here.trim_start().as_bytes().first() {
            Some(b'{') => {
                let map: std::collections::HashMap<String, &RawValue> =
                    serde_json::from_str(here).ok()?;
                map.get(&token).copied()?
            }
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_str(here).ok()?;
                items.get(token.parse::<usize>().ok()?).copied()?
            }
            _ => return None,
        };
        let start = found.get().as_ptr() as usize - text.as_ptr() as usize;
        range = start..start + found.get().len();
    }
    Some(range)
}

/// `text` with the values at `pointers` replaced by the pseudonymiser, same byte length;
/// `None` when none of the pointers is present.
pub fn pseudonymise_at(
    text: &str,
    pointers: &[String],
    pseudonymiser: &Pseudonymiser,
) -> Option<String> {
    let mut ranges: Vec<_> = pointers.iter().filter_map(|p| locate(text, p)).collect();
    if ranges.is_empty() {
        return None;
    }
    // Nested pointers: replace the outer value only.
    ranges.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in ranges {
        if r.start < at {
            continue;
        }
        out.push_str(&text[at..r.start]);
        out.push_str(&pseudonymiser.replace_value(&text[r.clone()]));
        at = r.end;
    }
    out.push_str(&text[at..]);
    debug_assert_eq!(out.len(), text.len());
    Some(out)
}

/// Fingerprints of the words of a text (identifiers, e-mail addresses, numbers), for stores
/// that keep a derived result of personal data without the data itself (the AI cache): an
/// entry whose fingerprints hold the subject's is about the subject.
pub fn word_fingerprints(text: &str) -> Vec<String> {
    let mut words: Vec<String> = text
        .split(|c: char| !(c.is_alphanumeric() || matches!(c, '@' | '.' | '_' | '-' | '+')))
        .map(|w| w.trim_matches(|c| matches!(c, '.' | '-' | '_')))
        .filter(|w| w.len() >= 3)
        .map(word_fingerprint)
        .collect();
    words.sort_unstable();
    words.dedup();
    words
}

/// The fingerprint of one word (case-insensitive): 8 bytes of SHA-256, hex.
pub fn word_fingerprint(word: &str) -> String {
    let digest = Sha256::digest(word.to_lowercase().as_bytes());
    hex(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p() -> Pseudonymiser {
        Pseudonymiser::with_key([7; 32])
    }

    #[test]
    fn subjects_match_whole_string_values_only() {
        let s = Subject::new(" CLIENTE-LOMB-000123 ").unwrap();
        assert_eq!(s.id(), "CLIENTE-LOMB-000123");
        assert!(s.is_in_json(r#"{"a":{"id_cliente":"CLIENTE-LOMB-000123"}}"#));
        assert!(!s.is_in_json(r#"{"id_cliente":"CLIENTE-LOMB-0001234"}"#));
        assert!(!s.is_in_json(r#"{"note":"see CLIENTE-LOMB-000123"}"#));
        assert_eq!(Subject::new("  "), Err(SubjectError::Empty));
        assert_eq!(Subject::new("a\nb"), Err(SubjectError::Control));
        assert_eq!(Subject::new(&"x".repeat(300)), Err(SubjectError::TooLong));
        let q = Subject::new("say \"hi\"").unwrap();
        assert!(q.is_in_json(&serde_json::json!({ "k": "say \"hi\"" }).to_string()));
        assert_eq!(s.fingerprint().len(), 32);
        assert_ne!(s.fingerprint(), q.fingerprint());
    }

    #[test]
    fn values_at_pointers_are_replaced_in_place() {
        let text = r#"{"canale":"email","id_cliente":"CLIENTE-LOMB-000123","metadati":{"campagna":"x","localita":"Milano"},"valore":12.5}"#;
        let out = pseudonymise_at(
            text,
            &[
                "/id_cliente".into(),
                "/metadati/localita".into(),
                "/nope".into(),
            ],
            &p(),
        )
        .unwrap();
        assert_eq!(out.len(), text.len());
        assert!(!out.contains("CLIENTE-LOMB-000123") && !out.contains("Milano"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["canale"], "email");
        assert_eq!(v["metadati"]["campagna"], "x");
        assert_eq!(v["valore"], 12.5);
        assert_eq!(v["id_cliente"].as_str().unwrap().len(), 19);
        // The same original gets the same pseudonym within one erasure, another key another.
        let again = pseudonymise_at(text, &["/id_cliente".into()], &p()).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&again).unwrap()["id_cliente"],
            v["id_cliente"]
        );
        let other = Pseudonymiser::with_key([8; 32]);
        assert_ne!(
            pseudonymise_at(text, &["/id_cliente".into()], &other).unwrap(),
            again
        );
        assert_eq!(pseudonymise_at(text, &["/absent".into()], &p()), None);
    }

    #[test]
    fn numbers_objects_and_escapes_keep_their_shape() {
        let text = r#"{"a":[1,{"k":"v\"w"}],"n":-0.25e3,"z":1234,"t":true}"#;
        let out = pseudonymise_at(text, &["/a".into(), "/n".into(), "/z".into()], &p()).unwrap();
        assert_eq!(out.len(), text.len());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["a"][1]["k"].is_string(), "{out}");
        assert!(v["n"].as_f64().unwrap() < 0.0);
        assert_eq!(v["z"].as_i64().unwrap().to_string().len(), 4);
        assert_eq!(v["t"], true);
    }

    #[test]
    fn pointers_into_arrays_and_escaped_keys() {
        let text = r#"{"a/b":"x1","list":["keep","drop"]}"#;
        let out = pseudonymise_at(text, &["/a~1b".into(), "/list/1".into()], &p()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_ne!(v["a/b"], "x1");
        assert_eq!(v["list"][0], "keep");
        assert_ne!(v["list"][1], "drop");
    }

    #[test]
    fn word_fingerprints_find_identifiers_in_prompts() {
        let words =
            word_fingerprints("Classify: Ada <ada@example.com>, customer CLIENTE-LOMB-000123.");
        assert!(words.contains(&word_fingerprint("ADA@example.com")));
        assert!(words.contains(&word_fingerprint("CLIENTE-LOMB-000123")));
        assert!(!words.contains(&word_fingerprint("CLIENTE-LOMB-00012")));
    }

    proptest! {
        /// Whatever JSON is stored, the rewrite keeps it valid JSON of the same length.
        #[test]
        fn any_value_keeps_length_and_validity(v in arb_json(), key in any::<[u8; 32]>()) {
            let text = serde_json::json!({ "x": v, "y": 1 }).to_string();
            let out = pseudonymise_at(&text, &["/x".into()], &Pseudonymiser::with_key(key)).unwrap();
            prop_assert_eq!(out.len(), text.len());
            let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
            prop_assert_eq!(&parsed["y"], &serde_json::json!(1));
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e12f64..1e12).prop_map(serde_json::Value::from),
            ".{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 20, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
