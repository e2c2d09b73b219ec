//! Campaign spend, for cost per acquisition.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde_json::Value;

use crate::extract::Admin;
use crate::problem::Problem;
use crate::state::AppState;

pub fn router() -> super::ApiRouter {
    super::ApiRouter::new().routes(utoipa_axum::routes!(put_campaign_costs))
}

/// Spend per UTC day.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the body; the handler reads it field by field to name every error
pub struct CostsBody {
    #[schema(min_items = 1, max_items = 3660)]
    days: Vec<CostDay>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CostDay {
    /// A UTC day, e.g. `2026-11-22`.
    #[schema(format = Date)]
    date: String,
    /// Spend in currency units, at most 2 decimals.
    #[schema(minimum = 0, multiple_of = 0.01)]
    amount: f64,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CostsSaved {
    pub campaign: String,
    /// Days set by this request.
    pub days: usize,
}

/// Set a campaign's spend for some UTC days (other days keep their figures), for CPA.
///
/// Every bad field is named by pointer and nothing is stored. Needs the `admin` scope.
#[utoipa::path(
    put,
    path = "/api/v1/campaigns/{id}/costs",
    tag = "metrics",
    params(("id" = String, Path, description = "Campaign id as in `metadati.campagna` (1-200 characters)")),
    request_body(content = CostsBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored", body = CostsSaved),
        (status = 422, description = "Bad days, each named by pointer", body = Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn put_campaign_costs(
    State(state): State<Arc<AppState>>,
    _admin: Admin,
    Path(campaign): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The body limit of the whole server, answered as a problem (not axum's plain-text 413).
    let body = match crate::body::read_body(&headers, body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return Problem::from(e).into_response(),
    };
    if campaign.is_empty() || campaign.chars().count() > 200 {
        return Problem::not_found("campaign ids are 1-200 characters").into_response();
    }
    let days = match parse_costs(&body) {
        Ok(days) => days,
        Err(problem) => return problem.into_response(),
    };
    if let Err(e) = state.costs.put_costs(&campaign, &days).await {
        tracing::error!(error = %e, "storing campaign costs failed");
        return Problem::unavailable("storing the costs failed; nothing was changed")
            .into_response();
    }
    state.live.set_costs(&campaign, &days);
    Json(CostsSaved {
        campaign,
        days: days.len(),
    })
    .into_response()
}

/// Validates a costs body whole: every bad field is reported, by pointer.
fn parse_costs(body: &[u8]) -> Result<Vec<(i64, i64)>, Problem> {
    use raccordo_ingest::FieldError;
    let invalid = |errors: Vec<FieldError>| {
        let mut p = Problem::new(
            422,
            "validation-failed",
            "Validation failed",
            format!(
                "{} problem(s) in the body; nothing was stored",
                errors.len()
            ),
        );
        p.errors = errors;
        p
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Problem::new(
            400,
            "invalid-json",
            "Malformed JSON",
            format!(
                "the body is not valid JSON: line {} column {}",
                e.line(),
                e.column()
            ),
        )
    })?;
    let Some(items) = value.get("days").and_then(Value::as_array) else {
        return Err(invalid(vec![FieldError::new(
            "/days",
            "must be an array of {\"date\", \"amount\"}",
        )]));
    };
    if items.is_empty() || items.len() > 3660 {
        return Err(invalid(vec![FieldError::new(
            "/days",
            "must hold 1 to 3660 days",
        )]));
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let mut errors = Vec::new();
    let mut days = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let date = item
            .get("date")
            .and_then(Value::as_str)
            .and_then(|d| time::Date::parse(d, &format).ok());
        if date.is_none() {
            errors.push(FieldError::new(
                format!("/days/{i}/date"),
                "must be a date like 2026-11-22",
            ));
        }
        let amount = item
            .get("amount")
            .and_then(Value::as_f64)
            .filter(|a| (0.0..1e13).contains(a));
        let cents = amount
            .map(|a| (a * 100.0).round())
            .filter(|c| (c - amount.unwrap_or(0.0) * 100.0).abs() < 1e-6);
        if cents.is_none() {
            errors.push(FieldError::new(
                format!("/days/{i}/amount"),
                "must be a number >= 0 with at most 2 decimals",
            ));
        }
        if let (Some(date), Some(cents)) = (date, cents) {
            days.push((i64::from(date.to_julian_day()) - 2_440_588, cents as i64));
        }
    }
    if errors.is_empty() {
        Ok(days)
    } else {
        Err(invalid(errors))
    }
}
