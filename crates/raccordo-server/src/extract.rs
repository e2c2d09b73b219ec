//! Validating extractors: handlers receive checked input or the client gets a precise
//! problem, and the handler body never repeats the checks.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query};
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::config::Scope;
use crate::problem::Problem;

/// Proof that the caller holds an admin token with the `read` scope (or `admin`).
pub struct Reader;

/// Proof that the caller holds an admin token with the `admin` scope.
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Reader {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        state
            .admin
            .require(&parts.headers, Scope::Read)
            .map(|_| Reader)
    }
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        state
            .admin
            .require(&parts.headers, Scope::Admin)
            .map(|_| Admin)
    }
}

/// Query parameters deserialised strictly (unknown ones refused); a bad parameter is a 400
/// problem naming it.
pub struct ValidQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ValidQuery<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ValidQuery(value)),
            Err(e) => {
                let text = e.body_text();
                // serde names the field between backticks: "unknown field `colour`, expected …"
                let parameter = text.split('`').nth(1).unwrap_or("query").to_string();
                Err(Problem::bad_parameter(&parameter, text))
            }
        }
    }
}

/// An optional RFC 3339 query parameter, as epoch ms.
pub fn time_param(name: &str, value: Option<&str>) -> Result<Option<i64>, Problem> {
    value
        .map(|v| {
            raccordo_ingest::pipeline::parse_time_ms(v)
                .ok_or_else(|| Problem::bad_parameter(name, "must be an RFC 3339 date-time"))
        })
        .transpose()
}
