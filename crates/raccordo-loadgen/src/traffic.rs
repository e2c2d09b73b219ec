//! Realistic conversion events: Italian customers, channels, campaigns and cities, with
//! controllable fractions of duplicates and invalid events.

use rand::Rng;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};
use time::OffsetDateTime;

const REGIONS: &[&str] = &[
    "LOMBARDIA",
    "LAZIO",
    "PIEMONTE",
    "VENETO",
    "TOSCANA",
    "CAMPANIA",
    "SICILIA",
    "EMILIA",
    "PUGLIA",
    "LIGURIA",
];
const CITIES: &[&str] = &[
    "Milano", "Roma", "Torino", "Napoli", "Bologna", "Firenze", "Venezia", "Palermo", "Genova",
    "Bari", "Verona", "Padova",
];
const CAMPAIGNS: &[&str] = &[
    "black-friday-2026",
    "newsletter-novembre",
    "webinar-crm",
    "retargeting-q4",
    "fiera-milano",
    "promo-natale",
];
const DEVICES: &[&str] = &["mobile", "desktop", "tablet"];
/// (evento, weight): demos and sign-ups are more common than purchases.
const EVENTS: &[(&str, u32)] = &[
    ("richiesta_demo", 30),
    ("iscrizione_evento", 30),
    ("acquisto_concluso", 25),
    ("cancello_abbandono", 15),
];
const CHANNELS: &[(&str, u32)] = &[
    ("email", 35),
    ("social_media", 30),
    ("webform", 25),
    ("sms", 10),
];

/// Makes events; remembers recent ones so it can re-send exact duplicates.
pub struct Traffic {
    rng: SmallRng,
    customers: u32,
    recent: Vec<String>,
    duplicates: f64,
    invalid: f64,
    timeline: Option<Timeline>,
}

/// Event times that march through history instead of following the clock: the n-th event
/// generated (over every client sharing the counter) happens at `from_ms + n × step_ms`,
/// minus the usual up-to-30 s delay. Makes a stream that covers days of windows in seconds.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub from_ms: i64,
    pub step_ms: f64,
    pub next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// One generated item (JSON text) and what the server should say about it.
pub struct Generated {
    pub json: String,
    pub expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Accepted,
    Duplicate,
    Invalid,
}

fn weighted<'a>(rng: &mut SmallRng, items: &'a [(&'a str, u32)]) -> &'a str {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut pick = rng.random_range(0..total);
    for (item, weight) in items {
        if pick < *weight {
            return item;
        }
        pick -= weight;
    }
    items[0].0
}

impl Traffic {
    /// A number in `0..1` from this generator's seeded sequence.
    pub fn roll(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    pub fn new(rng: SmallRng, duplicates: f64, invalid: f64) -> Self {
        Self {
            rng,
            customers: 50_000,
            recent: Vec::with_capacity(1024),
            duplicates,
            invalid,
            timeline: None,
        }
    }

    pub fn with_timeline(mut self, timeline: Option<Timeline>) -> Self {
        self.timeline = timeline;
        self
    }

    pub fn next_event(&mut self) -> Generated {
        let roll: f64 = self.rng.random();
        // With nothing to repeat yet, a duplicate roll falls through to a fresh, valid event.
        if roll < self.duplicates && !self.recent.is_empty() {
            let i = self.rng.random_range(0..self.recent.len());
            return Generated {
                json: self.recent[i].clone(),
                expect: Expect::Duplicate,
            };
        }
        let json = self.fresh();
        if (self.duplicates..self.duplicates + self.invalid).contains(&roll) {
            // Rare path: go through a Value to break one rule.
            let mut event: Value = serde_json::from_str(&json).unwrap_or_default();
            self.corrupt(&mut event);
            return Generated {
                json: event.to_string(),
                expect: Expect::Invalid,
            };
        }
        if self.recent.len() < 1024 {
            self.recent.push(json.clone());
        } else {
            let i = self.rng.random_range(0..self.recent.len());
            self.recent[i] = json.clone();
        }
        Generated {
            json,
            expect: Expect::Accepted,
        }
    }

    /// A valid event as JSON text, written directly (the generator must stay cheaper than
    /// the server it measures; every value here needs no escaping).
    fn fresh(&mut self) -> String {
        use std::fmt::Write;
        let rng = &mut self.rng;
        let evento = weighted(rng, EVENTS);
        let canale = weighted(rng, CHANNELS);
        let region = REGIONS.choose(rng).copied().unwrap_or("LAZIO");
        let customer = rng.random_range(0..self.customers);
        let cents: u32 = if evento == "acquisto_concluso" {
            rng.random_range(1_900..250_000)
        } else {
            0
        };
        let stato = if rng.random_ratio(1, 20) {
            "fallito"
        } else {
            "completato"
        };
        // Events happen a little before they are sent (up to 30 s), with millisecond times.
        let base = match &self.timeline {
            Some(t) => {
                let n = t.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let at_ms = t.from_ms + (n as f64 * t.step_ms) as i64;
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
                    .unwrap_or_else(|_| OffsetDateTime::now_utc())
            }
            None => OffsetDateTime::now_utc(),
        };
        let now = base - time::Duration::milliseconds(rng.random_range(0..30_000));
        let (y, mo, d) = (now.year(), now.month() as u8, now.day());
        let (h, mi, se, ms) = (now.hour(), now.minute(), now.second(), now.millisecond());
        let campagna = CAMPAIGNS.choose(rng).copied().unwrap_or("promo");
        let dispositivo = DEVICES.choose(rng).copied().unwrap_or("mobile");
        let localita = CITIES.choose(rng).copied().unwrap_or("Roma");
        let mut out = String::with_capacity(320);
        let _ = write!(
            out,
            r#"{{"id_cliente":"CLIENTE-{region}-{customer:06}","evento":"{evento}","timestamp":"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}.{ms:03}Z","valore":{}.{:02},"canale":"{canale}","stato":"{stato}","metadati":{{"campagna":"{campagna}","dispositivo":"{dispositivo}","localita":"{localita}"}}}}"#,
            cents / 100,
            cents % 100
        );
        out
    }

    fn corrupt(&mut self, event: &mut Value) {
        match self.rng.random_range(0..4) {
            0 => event["canale"] = json!("fax"),
            1 => event["valore"] = json!(-5),
            2 => {
                event.as_object_mut().map(|o| o.remove("id_cliente"));
            }
            _ => event["timestamp"] = json!("22/11/2026 10:00"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn fractions_are_respected_and_events_are_valid() {
        let schema = raccordo_ingest::EventSchema::conversion();
        let mut traffic = Traffic::new(SmallRng::seed_from_u64(7), 0.1, 0.05);
        let mut counts = [0usize; 3];
        for _ in 0..10_000 {
            let g = traffic.next_event();
            let event: Value = serde_json::from_str(&g.json).unwrap();
            let valid = schema.is_valid(&event);
            match g.expect {
                Expect::Accepted => {
                    assert!(valid, "{}", g.json);
                    counts[0] += 1
                }
                Expect::Duplicate => counts[1] += 1,
                Expect::Invalid => {
                    assert!(!valid, "{}", g.json);
                    counts[2] += 1
                }
            }
        }
        assert!((800..1200).contains(&counts[1]), "{counts:?}");
        assert!((350..650).contains(&counts[2]), "{counts:?}");
    }
}
