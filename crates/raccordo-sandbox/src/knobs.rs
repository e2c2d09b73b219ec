//! What every sandbox shares: injected latency, errors, throttling and outages, a log of the
//! calls it received, and the admin endpoints under `/_sandbox/` that change them at run time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Faults to inject; every field can be changed with `PATCH /_sandbox/knobs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    /// Added to every answer.
    pub latency_ms: u64,
    /// Share of API calls answered with a server error (0..1).
    pub error_rate: f64,
    /// Share of API calls answered with the product's own 429 (0..1), on top of its real limits.
    pub throttle_rate: f64,
    /// Outage windows, in milliseconds since the epoch: every API call inside one gets 503.
    pub outages: Vec<Outage>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Outage {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Knobs {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err("error_rate must be between 0 and 1".into());
        }
        if !(0.0..=1.0).contains(&self.throttle_rate) {
            return Err("throttle_rate must be between 0 and 1".into());
        }
        if self.outages.iter().any(|o| o.to_ms <= o.from_ms) {
            return Err("every outage needs to_ms after from_ms".into());
        }
        if self.latency_ms > 60_000 {
            return Err("latency_ms must be at most 60000".into());
        }
        Ok(())
    }

    pub fn in_outage(&self, now_ms: i64) -> bool {
        self.outages
            .iter()
            .any(|o| (o.from_ms..o.to_ms).contains(&now_ms))
    }
}

/// One received call, as `GET /_sandbox/calls` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub at_ms: i64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    /// What the sandbox did on purpose: `latency`, `error`, `throttle`, `outage`.
    pub injected: Option<&'static str>,
}

const CALL_LOG: usize = 5000;

/// How a product answers injected faults (each API has its own error bodies).
pub trait FaultStyle: Send + Sync + 'static {
    fn throttled(&self) -> Response;
    fn server_error(&self) -> Response;
    fn unavailable(&self) -> Response;
}

pub struct Controls {
    pub knobs: Mutex<Knobs>,
    calls: Mutex<VecDeque<Call>>,
    style: Box<dyn FaultStyle>,
}

pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

impl Controls {
    pub fn new(knobs: Knobs, style: impl FaultStyle) -> Arc<Self> {
        Arc::new(Self {
            knobs: Mutex::new(knobs),
            calls: Mutex::new(VecDeque::new()),
            style: Box::new(style),
        })
    }

    fn knobs(&self) -> Knobs {
        self.knobs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn log(&self, call: Call) {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if calls.len() == CALL_LOG {
            calls.pop_front();
        }
        calls.push_back(call);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Query parameters whose values are secrets (Zoho takes the token request's parameters in
/// the query string too): the call log shows that they were sent, never what.
const SECRET_PARAMS: [&str; 7] = [
    "refresh_token",
    "client_secret",
    "code",
    "code_verifier",
    "access_token",
    "token",
    "password",
];

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.contains(&k) => format!("{k}=<redacted>"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Middleware: logs every call and injects the configured faults into API calls (not into
/// `/_sandbox/` admin calls, so tests can always turn the faults off again).
pub async fn inject(
    State(controls): State<Arc<Controls>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(redact_query);
    let admin = path.starts_with("/_sandbox/");
    let knobs = controls.knobs();
    let mut injected = None;
    let response = if admin {
        next.run(request).await
    } else {
        if knobs.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
            injected = Some("latency");
        }
        let (error, throttle) = {
            let mut rng = rand::rng();
            (
                rng.random::<f64>() < knobs.error_rate,
                rng.random::<f64>() < knobs.throttle_rate,
            )
        };
        if knobs.in_outage(now_ms()) {
            injected = Some("outage");
            controls.style.unavailable()
        } else if throttle {
            injected = Some("throttle");
            controls.style.throttled()
        } else if error {
            injected = Some("error");
            controls.style.server_error()
        } else {
            next.run(request).await
        }
    };
    controls.log(Call {
        at_ms: now_ms(),
        method,
        path,
        query,
        status: response.status().as_u16(),
        injected,
    });
    response
}

/// `/_sandbox/knobs` (GET, PATCH), `/_sandbox/calls` (GET, DELETE).
pub fn admin_routes(controls: Arc<Controls>) -> axum::Router {
    axum::Router::new()
        .route(
            "/_sandbox/knobs",
            get(get_knobs).patch(patch_knobs).put(patch_knobs),
        )
        .route("/_sandbox/calls", get(list_calls).delete(clear_calls))
        .route("/_sandbox/health", get(|| async { "ok" }))
        .with_state(controls)
}

async fn get_knobs(State(controls): State<Arc<Controls>>) -> Json<Knobs> {
    Json(controls.knobs())
}

/// Merges the given fields into the knobs; unknown fields or bad values change nothing.
async fn patch_knobs(State(controls): State<Arc<Controls>>, body: axum::body::Bytes) -> Response {
    let current = serde_json::to_value(controls.knobs()).unwrap_or_default();
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(p)) => Value::Object(p),
        _ => return bad_request("the body must be a JSON object of knob values"),
    };
    let mut merged = current;
    if let (Value::Object(m), Value::Object(p)) = (&mut merged, patch) {
        for (k, v) in p {
            m.insert(k, v);
        }
    }
    let knobs: Knobs = match serde_json::from_value(merged) {
        Ok(k) => k,
        Err(e) => return bad_request(&e.to_string()),
    };
    if let Err(e) = knobs.validate() {
        return bad_request(&e);
    }
    *controls.knobs.lock().unwrap_or_else(|p| p.into_inner()) = knobs.clone();
    Json(knobs).into_response()
}

async fn list_calls(State(controls): State<Arc<Controls>>) -> Json<Value> {
    Json(json!({ "calls": controls.calls() }))
}

async fn clear_calls(State(controls): State<Arc<Controls>>) -> StatusCode {
    controls
        .calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    StatusCode::NO_CONTENT
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": "invalid_knobs", "message": message })),
    )
        .into_response()
}

/// A JSON answer with an exact status and content type.
pub fn json_response(status: StatusCode, content_type: &'static str, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_query_strings_are_not_logged() {
        assert_eq!(
            redact_query(
                "grant_type=refresh_token&refresh_token=1000.abc&client_id=x&client_secret=s3"
            ),
            "grant_type=refresh_token&refresh_token=<redacted>&client_id=x&client_secret=<redacted>"
        );
    }

    #[test]
    fn knobs_are_checked() {
        let mut k = Knobs::default();
        assert!(k.validate().is_ok());
        k.error_rate = 1.5;
        assert!(k.validate().is_err());
        k.error_rate = 0.1;
        k.outages = vec![Outage {
            from_ms: 10,
            to_ms: 5,
        }];
        assert!(k.validate().is_err());
        k.outages = vec![Outage {
            from_ms: 10,
            to_ms: 20,
        }];
        assert!(k.validate().is_ok());
        assert!(k.in_outage(10) && k.in_outage(19) && !k.in_outage(20));
    }
}
