//! The hub speaks the Model Context Protocol (through the official Rust SDK, `rmcp`): AI
//! agents query conversion metrics and events, look up a record's sync state and failures,
//! list and start flows and read their runs.
//!
//! Every tool is a call to the hub's own admin API with the caller's token, so an MCP client
//! can do exactly what its token's scope allows there (`read`, or `admin` to start a flow)
//! and the answers are the API's. The same tools are served over streamable HTTP at `/mcp`
//! (the bearer token of the request) and over stdio by `raccordo mcp` (the token it was
//! started with). Every tool call is audited: a log line on the `raccordo::audit` target and
//! `raccordo_mcp_tool_calls_total`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use rmcp::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use serde_json::{Value, json};

/// Where the hub's admin API is, and the token to use when the caller brings none (stdio).
#[derive(Clone)]
pub struct HubApi {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl HubApi {
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, reqwest::Error> {
        Self::with_client(
            base_url,
            token,
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        )
    }

    /// With a client of the caller's (the hub over its own TLS listener brings one that
    /// trusts its certificate).
    pub fn with_client(
        base_url: &str,
        token: Option<String>,
        http: reqwest::Client,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Result<Value, String> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .query(query);
        if let Some(token) = token.or(self.token.as_deref()) {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|_| "the hub could not be reached".to_string())?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            // The hub's problem+json: its detail and the fields at fault, never values.
            let mut message = format!(
                "HTTP {}: {}",
                status.as_u16(),
                value["detail"].as_str().unwrap_or("refused")
            );
            for e in value["errors"].as_array().into_iter().flatten() {
                message.push_str(&format!(
                    "; `{}` {}",
                    e["pointer"].as_str().unwrap_or(""),
                    e["detail"].as_str().unwrap_or("")
                ));
            }
            Err(message)
        }
    }
}

/// The MCP server: the tools and how each maps to the admin API.
#[derive(Clone)]
pub struct RaccordoMcp {
    api: Arc<HubApi>,
}

impl RaccordoMcp {
    pub fn new(api: HubApi) -> Self {
        Self { api: Arc::new(api) }
    }
}

fn schema(value: Value) -> Arc<JsonObject> {
    Arc::new(value.as_object().cloned().unwrap_or_default())
}

fn read_only(tool: Tool) -> Tool {
    let mut annotations = ToolAnnotations::default();
    annotations.read_only_hint = Some(true);
    tool.with_annotations(annotations)
}

/// The tools, as `tools/list` gives them.
pub fn tools() -> Vec<Tool> {
    vec![
        read_only(Tool::new(
            "query_metrics",
            "Live conversion metrics per 5-minute event-time window: conversions, conversion rate, CPA and average value, overall or per `dimension` (canale, campagna).",
            schema(json!({
                "type": "object",
                "properties": {
                    "dimension": { "type": "string", "description": "canale or campagna; omit for the overall rows" },
                    "from": { "type": "string", "description": "RFC 3339 start (default: the last hour)" },
                    "to": { "type": "string", "description": "RFC 3339 end" }
                },
                "additionalProperties": false
            })),
        )),
        read_only(Tool::new(
            "query_events",
            "Stored events, oldest first, optionally of one source; page with `after_seq`.",
            schema(json!({
                "type": "object",
                "properties": {
                    "source": { "type": "string" },
                    "limit": { "type": "integer", "minimum": 1, "maximum": 1000 },
                    "after_seq": { "type": "integer" }
                },
                "additionalProperties": false
            })),
        )),
        read_only(Tool::new(
            "sync_record_state",
            "A CRM record's HubSpot ↔ Zoho sync state: the record it is linked to in the other CRM and its failed sync operations with their reasons.",
            schema(json!({
                "type": "object",
                "required": ["system", "object", "id"],
                "properties": {
                    "system": { "type": "string", "enum": ["hubspot", "zoho"] },
                    "object": { "type": "string", "enum": ["contact", "company"] },
                    "id": { "type": "string" }
                },
                "additionalProperties": false
            })),
        )),
        read_only(Tool::new(
            "list_flows",
            "The configured flows, each with its steps and how the last runs went at each step (status counts, p50 and max latency).",
            schema(json!({ "type": "object", "properties": {}, "additionalProperties": false })),
        )),
        Tool::new(
            "start_flow",
            "Start a flow run on an input (the trigger input); answers the run id. Needs an admin token.",
            schema(json!({
                "type": "object",
                "required": ["flow"],
                "properties": {
                    "flow": { "type": "string" },
                    "input": { "type": "object" }
                },
                "additionalProperties": false
            })),
        ),
        read_only(Tool::new(
            "list_flow_runs",
            "Flow runs, newest first, optionally of one flow.",
            schema(json!({
                "type": "object",
                "properties": {
                    "flow": { "type": "string" },
                    "limit": { "type": "integer", "minimum": 1, "maximum": 500 }
                },
                "additionalProperties": false
            })),
        )),
        read_only(Tool::new(
            "get_flow_run",
            "One flow run: its trigger input and every step's input, output, attempts, error, tokens and cost.",
            schema(json!({
                "type": "object",
                "required": ["run_id"],
                "properties": { "run_id": { "type": "string" } },
                "additionalProperties": false
            })),
        )),
    ]
}

fn text(args: &JsonObject, name: &str) -> Option<String> {
    args.get(name).and_then(Value::as_str).map(str::to_string)
}

fn required(args: &JsonObject, name: &str) -> Result<String, String> {
    text(args, name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("`{name}` is required"))
}

/// A path segment as the caller gave it, percent-encoded.
fn segment(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl RaccordoMcp {
    /// One tool call: the admin API's answer, or why not.
    pub async fn run_tool(
        &self,
        name: &str,
        args: &JsonObject,
        token: Option<&str>,
    ) -> Result<Value, String> {
        use reqwest::Method;
        let api = &self.api;
        let mut query: Vec<(&str, String)> = Vec::new();
        match name {
            "query_metrics" => {
                for key in ["dimension", "from", "to"] {
                    if let Some(v) = text(args, key) {
                        query.push((key, v));
                    }
                }
                api.call(Method::GET, "/api/v1/metrics", &query, None, token)
                    .await
            }
            "query_events" => {
                if let Some(v) = text(args, "source") {
                    query.push(("source", v));
                }
                for key in ["limit", "after_seq"] {
                    if let Some(v) = args.get(key).and_then(Value::as_i64) {
                        query.push((key, v.to_string()));
                    }
                }
                api.call(Method::GET, "/api/v1/events", &query, None, token)
                    .await
            }
            "sync_record_state" => {
                let path = format!(
                    "/api/v1/sync/records/{}/{}/{}",
                    segment(&required(args, "system")?),
                    segment(&required(args, "object")?),
                    segment(&required(args, "id")?)
                );
                api.call(Method::GET, &path, &[], None, token).await
            }
            "list_flows" => {
                api.call(Method::GET, "/api/v1/flows", &[], None, token)
                    .await
            }
            "start_flow" => {
                let flow = required(args, "flow")?;
                let input = args.get("input").cloned().unwrap_or_else(|| json!({}));
                let path = format!("/api/v1/flows/{}/runs", segment(&flow));
                api.call(Method::POST, &path, &[], Some(&input), token)
                    .await
            }
            "list_flow_runs" => {
                if let Some(v) = text(args, "flow") {
                    query.push(("flow", v));
                }
                if let Some(v) = args.get("limit").and_then(Value::as_i64) {
                    query.push(("limit", v.to_string()));
                }
                api.call(Method::GET, "/api/v1/flows/runs", &query, None, token)
                    .await
            }
            "get_flow_run" => {
                let path = format!("/api/v1/flows/runs/{}", segment(&required(args, "run_id")?));
                api.call(Method::GET, &path, &[], None, token).await
            }
            other => Err(format!("no tool is named `{other}`")),
        }
    }
}

/// The bearer token of the HTTP request that carried the call (none over stdio).
fn caller_token(context: &RequestContext<RoleServer>) -> Option<String> {
    let parts = context.extensions.get::<http::request::Parts>()?;
    let value = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(|t| t.trim().to_string())
}

impl ServerHandler for RaccordoMcp {
    fn get_info(&self) -> ServerConfig {
        let mut config = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        config.server_info = Implementation::new("raccordo", env!("CARGO_PKG_VERSION"));
        config.instructions = Some(
            "raccordo is a CRM event and integration hub: conversion metrics, stored events, the HubSpot ↔ Zoho sync and AI flows. Tools answer with the hub's admin API's JSON.".into(),
        );
        config
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, rmcp::ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, rmcp::ErrorData> {
        let token = caller_token(&context);
        let args = request.arguments.clone().unwrap_or_default();
        let tool: Cow<'static, str> = request.name.clone();
        if !tools().iter().any(|t| t.name == tool) {
            return Err(rmcp::ErrorData::invalid_params(
                format!("no tool is named `{tool}`"),
                None,
            ));
        }
        let outcome = self.run_tool(&tool, &args, token.as_deref()).await;
        // The audit trail: who (the transport; the token's owner is in the hub's own
        // request log), which tool, how it ended. Arguments are not logged: they may hold
        // personal data.
        let transport = if token.is_some() { "http" } else { "stdio" };
        let result = if outcome.is_ok() { "ok" } else { "refused" };
        tracing::info!(target: "raccordo::audit", tool = %tool, transport, result, "mcp tool call");
        metrics::counter!("raccordo_mcp_tool_calls_total", "tool" => tool.to_string(), "result" => result).increment(1);
        Ok(match outcome {
            Ok(value) => {
                let mut r = CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
                if value.is_object() {
                    r.structured_content = Some(value);
                }
                r
            }
            Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
        }
        .into())
    }
}

/// The streamable-HTTP service for `/mcp` of a hub whose admin API is at `base_url`.
pub fn http_service(
    api: HubApi,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<
    rmcp::transport::streamable_http_server::StreamableHttpService<
        RaccordoMcp,
        rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
    >,
    reqwest::Error,
> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let server = RaccordoMcp::new(api);
    Ok(StreamableHttpService::new(
        move || Ok(server.clone()),
        Default::default(),
        // Host checks guard unauthenticated local servers against DNS rebinding; every
        // request here needs the hub's bearer token, which a browser page cannot add.
        StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .with_cancellation_token(cancel),
    ))
}

/// Serves the tools over stdin/stdout until the client closes them.
pub async fn serve_stdio(api: HubApi) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use rmcp::ServiceExt;
    let running = RaccordoMcp::new(api)
        .serve(rmcp::transport::stdio())
        .await?;
    running.waiting().await?;
    Ok(())
}
