//! The request path, from raw headers and body to a durable outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::HeaderMap;
use raccordo_core::{
    AppendBatch, AppendOutcome, Clock, DeliveryClaim, EventId, EventLog, ItemOutcome, NewEvent,
    SourceName, StoreError,
};
use serde_json::Value;

use crate::auth::{Verified, verify_any};
use crate::error::{FieldError, IngestError};
use crate::schema::MAX_REPORTED_ERRORS;
use crate::source::{IngestSettings, Source};
use crate::{conversion, dedup};

/// An event checked and keyed, not yet stored.
struct Prepared {
    payload: String,
    event_time_ms: i64,
    business_key: Option<raccordo_core::DedupKey>,
}

/// One event of a dry run, as it would be stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRunEvent {
    /// The canonical JSON stored (sorted keys).
    pub payload: String,
    pub event_time_ms: i64,
    /// The business key for dedup, in hex (`None` with business-key dedup off).
    pub business_key: Option<String>,
}

/// A refused request: why, and what the pipeline knew of it by then.
#[derive(Debug)]
pub struct Rejection {
    pub error: IngestError,
    /// The source: named in the path or header, or found by its credentials.
    pub source: Option<String>,
    /// It passed the source's authentication (refused afterwards).
    pub authenticated: bool,
}

/// Where a request was sent.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// `POST /api/v1/eventi/conversione`: any conversion source whose credentials match,
    /// or the one named by the `X-Raccordo-Source` header.
    Conversion,
    /// `POST /webhooks/in/{source}`.
    Source(&'a str),
}

/// A successful ingest.
#[derive(Debug, Clone)]
pub struct IngestResponse {
    pub source: SourceName,
    /// The body was a single object (answer with one result, not an array).
    pub single: bool,
    pub items: Vec<ItemOutcome>,
    /// The whole request repeated an earlier delivery id.
    pub replayed: bool,
    /// The sender's clock minus ours, as this request showed it.
    pub clock_skew_ms: i64,
    /// Each item's event time, in order (whether it is late is the windows' to say).
    pub event_times_ms: Vec<i64>,
}

/// Who is calling, as the connection shows it.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The client's address (behind trusted proxies, the forwarded one); `None` when
    /// unknown, which only a source without `allow_from` accepts.
    pub address: Option<std::net::IpAddr>,
    /// The certificate chain presented in the TLS handshake, if any.
    pub certificates: Option<crate::client_cert::PresentedChain>,
}

pub struct Ingestor {
    sources: HashMap<String, Arc<Source>>,
    conversion_sources: Vec<Arc<Source>>,
    log: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    settings: IngestSettings,
    ids: Mutex<ulid::Generator>,
    /// Failed authentication per address, shared with the admin API.
    guard: Arc<crate::guard::AuthGuard>,
}

/// Header that picks a source on the shared conversion route.
pub const SOURCE_HEADER: &str = "x-raccordo-source";

impl Ingestor {
    pub fn new(
        sources: Vec<Source>,
        log: Arc<dyn EventLog>,
        clock: Arc<dyn Clock>,
        settings: IngestSettings,
    ) -> Self {
        let sources: Vec<Arc<Source>> = sources.into_iter().map(Arc::new).collect();
        let conversion_sources = sources
            .iter()
            .filter(|s| s.accepts_conversions)
            .cloned()
            .collect();
        Self {
            sources: sources
                .into_iter()
                .map(|s| (s.name.to_string(), s))
                .collect(),
            conversion_sources,
            log,
            clock,
            guard: Arc::new(crate::guard::AuthGuard::new(settings.auth_failures)),
            settings,
            ids: Mutex::new(ulid::Generator::new()),
        }
    }

    pub fn sources(&self) -> impl Iterator<Item = &Arc<Source>> {
        self.sources.values()
    }

    /// The tally of failed authentication (and blocked addresses).
    pub fn guard(&self) -> &Arc<crate::guard::AuthGuard> {
        &self.guard
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Runs the whole pipeline. On `Err`, nothing was stored.
    pub async fn ingest(
        &self,
        target: Target<'_>,
        headers: &HeaderMap,
        body: Bytes,
        caller: &Caller,
    ) -> Result<IngestResponse, Rejection> {
        let client = caller.address;
        let now_ms = self.clock.now_ms();
        let refused = |error| Rejection {
            source: match target {
                Target::Source(name) => Some(name.to_string()),
                Target::Conversion => None,
            },
            authenticated: false,
            error,
        };
        // A blocked address gets nothing else looked at.
        if let Some(wait) = self.guard.blocked_for_ms(client, now_ms) {
            return Err(refused(IngestError::AddressBlocked {
                retry_after_ms: wait.max(1),
            }));
        }
        // A failed authentication, by the source it was for, counts against the address.
        let count_failure = |source: Option<&str>, error: &IngestError| {
            if let Some(reason) = error.auth_failure() {
                self.guard
                    .failed(client, source.unwrap_or("conversion"), reason, now_ms);
            }
        };
        // Network rules before credentials: the address, then the certificate.
        let admitted = |source: &Source| {
            if !(source.allow_from.is_empty()
                || client.is_some_and(|c| source.allow_from.contains(c)))
            {
                return Err(self.not_allowed(source));
            }
            match &source.client_cert {
                Some(rule) => rule
                    .check(caller.certificates.as_deref())
                    .map_err(|refusal| self.certificate_refused(source, refusal)),
                None => Ok(()),
            }
        };
        // A named source's allowlist is checked before its credentials are even looked at.
        let named = match target {
            Target::Source(name) => Some(name),
            Target::Conversion => headers.get(SOURCE_HEADER).and_then(|v| v.to_str().ok()),
        };
        // So is its rate limit: a flood is turned away before signatures are computed.
        let early = named.and_then(|name| self.sources.get(name));
        if let Some(source) = early {
            admitted(source).map_err(|e| {
                count_failure(Some(source.name.as_str()), &e);
                refused(e)
            })?;
            self.within_limits(source, client, body.len())
                .map_err(refused)?;
        }
        let (source, verified) =
            self.authenticate(target, headers, &body, now_ms)
                .map_err(|e| {
                    count_failure(named, &e);
                    refused(e)
                })?;
        if early.is_none() {
            admitted(&source).map_err(|e| {
                count_failure(Some(source.name.as_str()), &e);
                refused(e)
            })?;
            self.within_limits(&source, client, body.len())
                .map_err(refused)?;
        }
        self.ingest_as(&source, &verified, headers, body, now_ms)
            .await
            .map_err(|error| Rejection {
                source: Some(source.name.to_string()),
                authenticated: true,
                error,
            })
    }

    fn within_limits(
        &self,
        source: &Source,
        client: Option<std::net::IpAddr>,
        body_bytes: usize,
    ) -> Result<(), IngestError> {
        source.limiter.check(client, body_bytes).map_err(|(limit, wait)| {
            metrics::counter!("raccordo_ingest_rate_limited_total", "source" => source.name.to_string(), "limit" => limit.label()).increment(1);
            source.health.record(0, 0, 1, self.clock.now_ms());
            IngestError::RateLimited {
                limit: limit.label(),
                retry_after_ms: (wait.as_millis() as u64).max(1),
            }
        })
    }

    fn not_allowed(&self, source: &Source) -> IngestError {
        metrics::counter!("raccordo_ingest_rejected_total", "source" => source.name.to_string(), "reason" => "address-not-allowed").increment(1);
        source.health.record(0, 0, 1, self.clock.now_ms());
        IngestError::AddressNotAllowed(source.name.to_string())
    }

    fn certificate_refused(
        &self,
        source: &Source,
        refusal: crate::client_cert::CertRefusal,
    ) -> IngestError {
        metrics::counter!("raccordo_ingest_rejected_total", "source" => source.name.to_string(), "reason" => "client-certificate-refused").increment(1);
        source.health.record(0, 0, 1, self.clock.now_ms());
        IngestError::ClientCertificate {
            source_name: source.name.to_string(),
            refusal,
        }
    }

    /// Runs a request that was refused after authentication through the named source again
    /// (an admin replaying it from the request inspector: the admin's token stands in for
    /// the sender's credentials, which were never stored).
    pub async fn replay(
        &self,
        source: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<IngestResponse, IngestError> {
        let source = self
            .sources
            .get(source)
            .cloned()
            .ok_or_else(|| IngestError::UnknownSource(source.chars().take(64).collect()))?;
        let now_ms = self.clock.now_ms();
        self.ingest_as(&source, &Verified::default(), headers, body, now_ms)
            .await
    }

    async fn ingest_as(
        &self,
        source: &Arc<Source>,
        verified: &Verified,
        headers: &HeaderMap,
        body: Bytes,
        now_ms: i64,
    ) -> Result<IngestResponse, IngestError> {
        let result = self
            .ingest_authenticated(source, verified, headers, body, now_ms)
            .await;
        record_outcome(source, &result);
        match &result {
            Ok(r) => {
                let duplicates = r.items.iter().filter(|i| i.is_duplicate()).count() as u64;
                let accepted = r.items.len() as u64 - duplicates;
                source.health.record(accepted, duplicates, 0, now_ms);
            }
            Err(_) => source.health.record(0, 0, 1, now_ms),
        }
        result
    }

    fn authenticate(
        &self,
        target: Target<'_>,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(Arc<Source>, Verified), IngestError> {
        let named = match target {
            Target::Source(name) => Some(name),
            Target::Conversion => headers.get(SOURCE_HEADER).and_then(|v| v.to_str().ok()),
        };
        let candidates: Vec<&Arc<Source>> = match named {
            Some(name) => {
                let source = self
                    .sources
                    .get(name)
                    .ok_or_else(|| IngestError::UnknownSource(name.chars().take(64).collect()))?;
                if matches!(target, Target::Conversion) && !source.accepts_conversions {
                    return Err(IngestError::UnknownSource(name.to_string()));
                }
                vec![source]
            }
            None => self.conversion_sources.iter().collect(),
        };
        let result = if candidates.is_empty() {
            Err(IngestError::MissingCredentials {
                expected: "no source is configured for this route".into(),
            })
        } else {
            let mut first_error: Option<IngestError> = None;
            let mut found = None;
            for source in &candidates {
                match verify_any(&source.verifiers, headers, body, now_ms) {
                    Ok(v) => {
                        found = Some(((*source).clone(), v));
                        break;
                    }
                    // A present-but-wrong credential says more than "none presented".
                    Err(e @ IngestError::MissingCredentials { .. }) => {
                        first_error.get_or_insert(e);
                    }
                    Err(e) => {
                        if matches!(
                            first_error,
                            None | Some(IngestError::MissingCredentials { .. })
                        ) {
                            first_error = Some(e);
                        }
                    }
                }
            }
            found.ok_or_else(|| {
                first_error.unwrap_or(IngestError::InvalidCredentials {
                    reason: "no source accepted the request".into(),
                })
            })
        };
        match result {
            Ok((source, verified)) if !source.enabled => {
                let _ = verified;
                Err(IngestError::SourceDisabled(source.name.to_string()))
            }
            Ok(ok) => Ok(ok),
            Err(e) => {
                let label = named
                    .filter(|n| self.sources.contains_key(*n))
                    .unwrap_or("unauthenticated")
                    .to_string();
                metrics::counter!("raccordo_ingest_rejected_total", "source" => label, "reason" => e.metric_reason()).increment(1);
                Err(e)
            }
        }
    }

    async fn ingest_authenticated(
        &self,
        source: &Source,
        verified: &Verified,
        headers: &HeaderMap,
        body: Bytes,
        now_ms: i64,
    ) -> Result<IngestResponse, IngestError> {
        // An HTML form's body, for a source that takes forms, is read as a JSON object; the
        // signature (if any) was checked on the body as sent.
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        use crate::browser::FormKind;
        let form = source
            .forms
            .as_ref()
            .and_then(|f| Some((f, crate::browser::form_kind(content_type)?)));
        let body = match form {
            Some((forms, kind)) => {
                let value = match kind {
                    FormKind::UrlEncoded => crate::browser::form_to_json(&body, &forms.numbers),
                    FormKind::Multipart(boundary) => {
                        crate::browser::multipart_to_json(body, &boundary, &forms.numbers).await
                    }
                }
                .map_err(|(pointer, detail)| IngestError::Validation {
                    total: 1,
                    errors: vec![FieldError::new(pointer, detail)],
                })?;
                Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
            }
            None => {
                check_content_type(headers)?;
                body
            }
        };
        let dedup_settings = &self.settings.dedup;
        let fast = source
            .fast_conversion
            .then(|| conversion::accept(&body, self.settings.max_batch_items))
            .flatten()
            .filter(|(_, events)| {
                // A time too far ahead is an error: let the generic path report it.
                let max_future_ms = self.settings.max_future_skew.as_millis() as i64;
                events
                    .iter()
                    .all(|e| e.event_time_ms - now_ms <= max_future_ms)
            });
        let (single, prepared) = match fast {
            Some((single, events)) => {
                let bucket_ms = source.key_spec.bucket_ms;
                let prepared = events
                    .into_iter()
                    .map(|e| {
                        let business_key = dedup_settings.business_key.then(|| {
                            let text = e.canonical.as_bytes();
                            dedup::business_key_from_parts(
                                source.name.as_str(),
                                &[Some(e.id_cliente.as_bytes()), Some(e.evento.as_bytes())],
                                dedup::bucket_start(e.event_time_ms, bucket_ms),
                                &[&text[..e.time_range.start], &text[e.time_range.end..]],
                            )
                        });
                        Prepared {
                            payload: e.canonical,
                            event_time_ms: e.event_time_ms,
                            business_key,
                        }
                    })
                    .collect::<Vec<_>>();
                (single, prepared)
            }
            None => Self::prepare_generic(&self.settings, source, &body, now_ms)?,
        };
        let newest_event_ms = prepared
            .iter()
            .map(|p| p.event_time_ms)
            .max()
            .unwrap_or(now_ms);
        let clock_skew_ms =
            observe_clock_skew(source, verified.sender_time_ms, newest_event_ms, now_ms);
        source.health.set_clock_skew(clock_skew_ms);
        let event_times_ms: Vec<i64> = prepared.iter().map(|p| p.event_time_ms).collect();

        let events = {
            let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            prepared
                .into_iter()
                .map(|p| NewEvent {
                    id: EventId::generate(&mut ids, now_ms),
                    source: source.name.clone(),
                    event_time_ms: p.event_time_ms,
                    payload: p.payload,
                    business_key: p.business_key,
                })
                .collect::<Vec<_>>()
        };
        let delivery_id = verified.delivery_id.as_deref().or_else(|| {
            headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 256)
        });
        let delivery = delivery_id
            .filter(|_| dedup_settings.delivery_id)
            .map(|id| DeliveryClaim {
                key: dedup::delivery_key(source.name.as_str(), id),
                body_hash: dedup::body_hash(&body),
                retention_ms: dedup_settings.delivery_id_retention.as_millis() as i64,
            });
        let batch = AppendBatch {
            received_at_ms: now_ms,
            delivery,
            business_key_retention_ms: dedup_settings.business_key_retention.as_millis() as i64,
            events,
        };
        let (items, replayed) = match self.log.append(batch).await.map_err(store_error)? {
            AppendOutcome::Appended(items) => (items, false),
            AppendOutcome::DeliveryReplayed(items) => (items, true),
            AppendOutcome::DeliveryConflict => return Err(IngestError::DeliveryConflict),
        };
        Ok(IngestResponse {
            source: source.name.clone(),
            single,
            items,
            replayed,
            clock_skew_ms,
            event_times_ms,
        })
    }

    /// The generic path: any schema, located errors for every failing item.
    /// What `body` would become on `source`, without authentication and without storing
    /// anything: each event's canonical payload, event time and business key, or the problem
    /// the request would be answered with. For `raccordo check --event`.
    pub fn dry_run(
        source: &Source,
        settings: &IngestSettings,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Vec<DryRunEvent>, IngestError> {
        let (_, prepared) = Self::prepare_generic(settings, source, body, now_ms)?;
        Ok(prepared
            .into_iter()
            .map(|p| DryRunEvent {
                payload: p.payload,
                event_time_ms: p.event_time_ms,
                business_key: p
                    .business_key
                    .map(|k| k.0.iter().map(|b| format!("{b:02x}")).collect()),
            })
            .collect())
    }

    fn prepare_generic(
        settings: &IngestSettings,
        source: &Source,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(bool, Vec<Prepared>), IngestError> {
        let parsed: Value = serde_json::from_slice(body).map_err(|e| IngestError::InvalidJson {
            detail: format!(
                "{} at line {} column {}",
                classify(&e),
                e.line(),
                e.column()
            ),
        })?;
        let (single, items) = match parsed {
            Value::Array(items) => (false, items),
            object @ Value::Object(_) => (true, vec![object]),
            _ => {
                return Err(IngestError::Validation {
                    errors: vec![FieldError::new(
                        "",
                        "the body must be an event object or an array of events",
                    )],
                    total: 1,
                });
            }
        };
        if items.is_empty() {
            return Err(IngestError::EmptyBatch);
        }
        if items.len() > settings.max_batch_items {
            return Err(IngestError::BatchTooLarge {
                count: items.len(),
                limit: settings.max_batch_items,
            });
        }
        let (_, event_times) = Self::validate_items(settings, source, &items, single, now_ms)?;
        let with_keys = settings.dedup.business_key;
        let prepared = items
            .iter()
            .zip(event_times)
            .map(|(item, event_time_ms)| Prepared {
                payload: dedup::canonical_json(item),
                event_time_ms,
                business_key: with_keys.then(|| {
                    dedup::business_key(source.name.as_str(), &source.key_spec, item, event_time_ms)
                }),
            })
            .collect();
        Ok((single, prepared))
    }

    /// Validates every item (so the error lists every failing one) and extracts event times.
    /// Returns the newest event time and the per-item times.
    fn validate_items(
        settings: &IngestSettings,
        source: &Source,
        items: &[Value],
        single: bool,
        now_ms: i64,
    ) -> Result<(i64, Vec<i64>), IngestError> {
        let max_future_ms = settings.max_future_skew.as_millis() as i64;
        let mut errors = Vec::new();
        let mut total = 0;
        let mut times = Vec::with_capacity(items.len());
        let mut newest = i64::MIN;
        for (i, item) in items.iter().enumerate() {
            let prefix = if single {
                String::new()
            } else {
                format!("/{i}")
            };
            let failures = source.schema.validate(item, &prefix, &mut errors);
            total += failures;
            if failures > 0 {
                times.push(now_ms);
                continue;
            }
            // A mapped source must yield a conversion: refused here, never accepted and then
            // left out of the metrics.
            if let Some(mapping) = &source.mapping
                && let Err(problems) = mapping.apply(item)
            {
                total += problems.len();
                for (pointer, detail) in problems {
                    push_capped(&mut errors, format!("{prefix}{pointer}"), &detail);
                }
                times.push(now_ms);
                continue;
            }
            let time = &source.time;
            let event_time_ms = match item.pointer(&time.pointer) {
                None | Some(Value::Null) => now_ms,
                Some(value) => match crate::mapping::read_time(value, time.format) {
                    Ok(ms) => ms,
                    Err(detail) => {
                        total += 1;
                        push_capped(&mut errors, format!("{prefix}{}", time.pointer), detail);
                        now_ms
                    }
                },
            };
            if event_time_ms - now_ms > max_future_ms {
                total += 1;
                push_capped(
                    &mut errors,
                    format!("{prefix}{}", source.time.pointer),
                    &format!(
                        "is {} s ahead of the server clock; at most {} s is allowed",
                        (event_time_ms - now_ms) / 1000,
                        max_future_ms / 1000
                    ),
                );
            }
            newest = newest.max(event_time_ms);
            times.push(event_time_ms);
        }
        if total > 0 {
            return Err(IngestError::Validation { errors, total });
        }
        Ok((newest, times))
    }
}

fn push_capped(errors: &mut Vec<FieldError>, pointer: String, detail: &str) {
    if errors.len() < MAX_REPORTED_ERRORS {
        errors.push(FieldError::new(pointer, detail));
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), IngestError> {
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return Err(IngestError::UnsupportedMediaType {
            found: "(none)".into(),
        });
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(IngestError::UnsupportedMediaType {
            found: essence.chars().take(100).collect(),
        })
    }
}

fn classify(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => "unexpected end of input",
        Category::Syntax => "syntax error",
        Category::Data => "invalid data",
        Category::Io => "read error",
    }
}

fn store_error(e: StoreError) -> IngestError {
    let retry_after_ms = e.retry_after_ms();
    match e {
        StoreError::Overloaded { retry_after_ms } => IngestError::Overloaded { retry_after_ms },
        StoreError::Full(reason) => {
            tracing::error!(error = %reason, "append refused: the store is full");
            IngestError::Unavailable {
                reason: "the event store is full; nothing was stored".into(),
                retry_after_ms: retry_after_ms.unwrap_or(30_000),
            }
        }
        StoreError::Unavailable(reason) => IngestError::Unavailable {
            reason: format!("the store is unavailable: {reason}"),
            retry_after_ms: retry_after_ms.unwrap_or(1_000),
        },
        other => {
            tracing::error!(error = %other, "append failed");
            IngestError::Unavailable {
                reason: "the event store failed; nothing was stored".into(),
                retry_after_ms: 5_000,
            }
        }
    }
}

/// Publishes the source's observed clock skew in seconds: the sender's own clock when its
/// auth scheme carries one (webhook-timestamp, JWT `iat`), else how far the newest event is
/// ahead of ours (0 when events are in the past, as they normally are).
fn observe_clock_skew(
    source: &Source,
    sender_time_ms: Option<i64>,
    newest_event_ms: i64,
    now_ms: i64,
) -> i64 {
    let skew_ms = match sender_time_ms {
        Some(sent) => sent - now_ms,
        None => (newest_event_ms - now_ms).max(0),
    };
    source
        .series()
        .clock_skew_seconds
        .set(skew_ms as f64 / 1000.0);
    skew_ms
}

fn record_outcome(source: &Source, result: &Result<IngestResponse, IngestError>) {
    match result {
        Ok(response) => {
            let duplicates = response.items.iter().filter(|i| i.is_duplicate()).count() as u64;
            let accepted = response.items.len() as u64 - duplicates;
            source.series().accepted.increment(accepted);
            if duplicates > 0 {
                let label = source.name.to_string();
                let layer = if response.replayed {
                    "delivery_id"
                } else {
                    "business_key"
                };
                metrics::counter!("raccordo_ingest_events_total", "source" => label.clone(), "outcome" => "duplicate").increment(duplicates);
                metrics::counter!("raccordo_dedup_hits_total", "source" => label, "layer" => layer)
                    .increment(duplicates);
            }
        }
        Err(e) => {
            metrics::counter!("raccordo_ingest_rejected_total", "source" => source.name.to_string(), "reason" => e.metric_reason()).increment(1);
        }
    }
}
