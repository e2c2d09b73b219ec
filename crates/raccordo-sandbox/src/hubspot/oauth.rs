//! OAuth 2.0: the authorize page, code and refresh-token grants, and the sandbox-only token and state routes.

use super::*;

#[derive(Deserialize)]
pub(super) struct AuthorizeQuery {
    client_id: String,
    redirect_uri: String,
    #[serde(default)]
    state: Option<String>,
}

/// The consent screen, approved at once: redirects back with a one-use code (10 minutes).
pub(super) async fn authorize(State(hs): State<Arc<HubSpot>>, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(q.as_deref());
    let query: AuthorizeQuery =
        match serde_json::from_value(json!(pairs.iter().cloned().collect::<HashMap<_, _>>())) {
            Ok(q) => q,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("missing parameter: {e}"))
                    .into_response();
            }
        };
    if query.client_id != hs.options.client_id {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    let code = random_token("na1-");
    hs.tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .codes
        .insert(code.clone(), now_ms() + 600_000);
    let sep = if query.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    let mut target = format!("{}{sep}code={code}", query.redirect_uri);
    if let Some(state) = query.state {
        target.push_str(&format!("&state={}", crate::encode(&state)));
    }
    Redirect::to(&target).into_response()
}

pub(super) async fn token(State(hs): State<Arc<HubSpot>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let fail = |status: &str, message: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            JSON,
            &json!({ "status": status, "message": message, "correlationId": correlation_id() }),
        )
    };
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if get("client_id") != hs.options.client_id {
        return fail("BAD_CLIENT_ID", "missing or unknown client_id");
    }
    if get("client_secret") != hs.options.client_secret {
        return fail("BAD_CLIENT_SECRET", "missing or invalid client secret");
    }
    let now = now_ms();
    let mut tokens = hs.tokens.lock().unwrap_or_else(|p| p.into_inner());
    let refresh = match get("grant_type") {
        "authorization_code" => {
            let valid = tokens
                .codes
                .remove(get("code"))
                .is_some_and(|exp| exp > now);
            if !valid {
                return fail("BAD_AUTH_CODE", "missing or unknown auth code");
            }
            if get("redirect_uri").is_empty() {
                return fail("BAD_REDIRECT_URI", "redirect_uri is required");
            }
            let r = random_token("na1-r-");
            tokens.refresh.insert(r.clone());
            r
        }
        "refresh_token" => {
            let r = get("refresh_token").to_string();
            if !tokens.refresh.contains(&r) {
                return fail("BAD_REFRESH_TOKEN", "missing or unknown refresh token");
            }
            r
        }
        other => {
            return fail(
                "BAD_GRANT_TYPE",
                &format!("unsupported grant_type `{other}`"),
            );
        }
    };
    let access = random_token("CJ");
    let ttl = hs.options.access_token_ttl.as_secs();
    tokens
        .access
        .insert(access.clone(), now + ttl as i64 * 1000);
    json_response(
        StatusCode::OK,
        JSON,
        &json!({ "token_type": "bearer", "refresh_token": refresh, "access_token": access, "expires_in": ttl }),
    )
}

pub(super) async fn expire_tokens(State(hs): State<Arc<HubSpot>>) -> StatusCode {
    let now = now_ms();
    for expiry in hs
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .access
        .values_mut()
    {
        *expiry = (*expiry).min(now - 1000);
    }
    StatusCode::NO_CONTENT
}

pub(super) async fn dump_state(State(hs): State<Arc<HubSpot>>) -> Response {
    let store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
    json_response(
        StatusCode::OK,
        JSON,
        &serde_json::to_value(&*store).unwrap_or_default(),
    )
}
