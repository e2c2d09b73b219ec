//! OAuth: refresh-token grants (with Zoho's throttle) and revocation.

use super::*;

pub(super) async fn token(
    State(z): State<Arc<Zoho>>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    // The SDK sends a form body; Zoho also takes the parameters in the query string.
    let mut form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    form.extend(query_pairs(q.as_deref()));
    let answer = |v: Value| json_response(StatusCode::OK, JSON, &v);
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if get("client_id") != z.options.client_id {
        return answer(json!({ "error": "invalid_client" }));
    }
    if get("client_secret") != z.options.client_secret {
        return answer(json!({ "error": "invalid_client_secret" }));
    }
    let now = now_ms();
    let mut tokens = z.tokens.lock().unwrap_or_else(|p| p.into_inner());
    let code_grant = match get("grant_type") {
        "refresh_token" if get("refresh_token") == z.options.refresh_token => false,
        // A one-use code from the consent page; the answer carries the refresh token.
        "authorization_code"
            if tokens
                .codes
                .remove(get("code"))
                .is_some_and(|expiry| expiry > now) =>
        {
            true
        }
        "refresh_token" | "authorization_code" => {
            return answer(json!({ "error": "invalid_code" }));
        }
        _ => return answer(json!({ "error": "unsupported_grant_type" })),
    };
    if tokens.grants.try_take(now, 600_000, 10).is_err() {
        return answer(
            json!({ "error": "Access Denied", "error_description": "You have made too many requests continuously. Please try again after some time.", "status": "failure" }),
        );
    }
    let access = format!("1000.{}", random_token("").get(..32).unwrap_or_default());
    let ttl = z.options.access_token_ttl.as_secs() as i64;
    tokens.access.insert(access.clone(), now + ttl * 1000);
    // At most 15 live access tokens per refresh token: the oldest goes.
    if tokens.access.len() > 15
        && let Some(oldest) = tokens
            .access
            .iter()
            .min_by_key(|(_, e)| **e)
            .map(|(k, _)| k.clone())
    {
        tokens.access.remove(&oldest);
    }
    let mut body = json!({
        "access_token": access,
        "scope": "ZohoCRM.modules.ALL ZohoCRM.settings.ALL ZohoCRM.users.READ ZohoCRM.org.READ ZohoCRM.notifications.ALL ZohoSearch.securesearch.READ",
        "api_domain": z.options.api_domain,
        "token_type": "Bearer",
        "expires_in": ttl,
    });
    if code_grant {
        body["refresh_token"] = json!(z.options.refresh_token);
    }
    answer(body)
}

pub(super) async fn revoke(State(z): State<Arc<Zoho>>, RawQuery(q): RawQuery) -> Response {
    if let Some((_, t)) = query_pairs(q.as_deref())
        .into_iter()
        .find(|(k, _)| k == "token")
    {
        z.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .access
            .remove(&t);
    }
    json_response(StatusCode::OK, JSON, &json!({ "status": "success" }))
}

/// Test control: every access token issued so far expires now (the next call with one gets
/// Zoho's `INVALID_TOKEN`), as when a token outlives its hour mid-run.
pub(super) async fn expire_tokens(State(z): State<Arc<Zoho>>) -> StatusCode {
    let now = now_ms();
    for expiry in z
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

/// The accounts server's consent page, approved at once: redirects to `redirect_uri` with a
/// one-use code (valid 2 minutes, as Zoho's grant codes), `location` and `accounts-server`.
pub(super) async fn authorize(State(z): State<Arc<Zoho>>, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(q.as_deref());
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let (Some(client_id), Some(redirect_uri), Some("code")) =
        (get("client_id"), get("redirect_uri"), get("response_type"))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "client_id, redirect_uri and response_type=code are required",
        )
            .into_response();
    };
    if client_id != z.options.client_id {
        return (StatusCode::BAD_REQUEST, "invalid client").into_response();
    }
    let code = format!("1000.{}", random_token("").get(..32).unwrap_or_default());
    z.tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .codes
        .insert(code.clone(), now_ms() + 120_000);
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let mut target = format!(
        "{redirect_uri}{sep}code={code}&location=us&accounts-server={}",
        crate::encode(&z.options.api_domain)
    );
    if let Some(state) = get("state") {
        target.push_str(&format!("&state={}", crate::encode(state)));
    }
    axum::response::Redirect::to(&target).into_response()
}
