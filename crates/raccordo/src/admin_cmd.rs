//! Commands that talk to a running hub through its admin API: how they find it and sign in,
//! and `raccordo dlq list|replay`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::credentials::Credentials;

/// Where the hub is and which admin token to use.
#[derive(Args, Clone)]
pub struct HubConnection {
    /// Base URL of the hub
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Admin token (default: the one in ./raccordo-data/credentials.toml)
    #[arg(long, env = "RACCORDO_ADMIN_TOKEN")]
    pub token: Option<String>,
    /// credentials.toml to take the admin token from
    #[arg(long, default_value = "raccordo-data/credentials.toml")]
    pub credentials: PathBuf,
}

impl HubConnection {
    pub fn admin_token(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let text = std::fs::read_to_string(&self.credentials).map_err(|e| {
            anyhow::anyhow!(
                "no --token and cannot read {}: {e}",
                self.credentials.display()
            )
        })?;
        Ok(toml::from_str::<Credentials>(&text)?.admin_token)
    }

    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

/// Sends an admin request and reads its JSON answer; a refusal becomes an error carrying the
/// hub's problem detail.
pub(crate) async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    anyhow::ensure!(
        status.is_success(),
        "the hub answered {status}: {}",
        body["detail"].as_str().unwrap_or("")
    );
    Ok(body)
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List failed operations (oldest first)
    #[command(
        long_about = "List the dead-letter queue: operations that failed for good (a missing or \
        malformed field, a refusal by the CRM) or ran out of retries. Each line gives the id, the \
        queue, the operation, the record (its group key), the attempts, when it failed and why \
        (naming the field). Needs an admin token."
    )]
    List(DlqListArgs),
    /// Put failed operations back on their queue
    #[command(
        long_about = "Replay dead letters: each goes back on its queue as a new work item and runs \
        again (a sync reads both records afresh, so replaying after fixing the data in the CRM is \
        safe). Give ids, or --all with an optional --queue and --matching to replay a selection."
    )]
    Replay(DlqReplayArgs),
}

#[derive(Args)]
pub struct DlqListArgs {
    /// Only this queue (`sync`, `alerts`, …)
    #[arg(long)]
    queue: Option<String>,
    /// Print the dead letters as JSON lines instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    hub: HubConnection,
}

#[derive(Args)]
pub struct DlqReplayArgs {
    /// Dead-letter ids to replay
    ids: Vec<i64>,
    /// Replay every dead letter (of --queue, and whose error contains --matching, if given)
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    /// With --all: only this queue
    #[arg(long, requires = "all")]
    queue: Option<String>,
    /// With --all: only dead letters whose error contains this text (e.g. a field name)
    #[arg(long, requires = "all")]
    matching: Option<String>,
    #[command(flatten)]
    hub: HubConnection,
}

async fn all_letters(
    client: &reqwest::Client,
    hub: &HubConnection,
    token: &str,
    queue: Option<&str>,
) -> anyhow::Result<Vec<Value>> {
    let mut letters = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let mut query: Vec<(&str, String)> = vec![("limit", "1000".into())];
        if let Some(q) = queue {
            query.push(("queue", q.into()));
        }
        if let Some(c) = cursor {
            query.push(("cursor", c.to_string()));
        }
        let page = answer(
            client
                .get(hub.endpoint("/api/v1/dlq"))
                .bearer_auth(token)
                .query(&query),
        )
        .await?;
        letters.extend(page["dead_letters"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = Some(next),
            None => return Ok(letters),
        }
    }
}

pub async fn run(command: DlqCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    match command {
        DlqCommand::List(args) => {
            let token = args.hub.admin_token()?;
            let letters = all_letters(&client, &args.hub, &token, args.queue.as_deref()).await?;
            if args.json {
                for l in &letters {
                    println!("{l}");
                }
                return Ok(());
            }
            if letters.is_empty() {
                println!("the dead-letter queue is empty");
                return Ok(());
            }
            println!(
                "{:>6}  {:<7} {:<12} {:<28} {:>8}  {:<20}  error",
                "id", "queue", "operation", "record", "attempts", "failed at"
            );
            for l in &letters {
                println!(
                    "{:>6}  {:<7} {:<12} {:<28} {:>8}  {:<20}  {}",
                    l["id"],
                    l["queue"].as_str().unwrap_or(""),
                    l["operation"].as_str().unwrap_or(""),
                    l["group_key"].as_str().unwrap_or(""),
                    l["attempts"],
                    raccordo_core::rfc3339(l["failed_at_ms"].as_i64().unwrap_or(0)),
                    l["last_error"].as_str().unwrap_or("")
                );
            }
            println!("{} dead letter(s)", letters.len());
            Ok(())
        }
        DlqCommand::Replay(args) => {
            let token = args.hub.admin_token()?;
            let ids: Vec<i64> = if args.all {
                all_letters(&client, &args.hub, &token, args.queue.as_deref())
                    .await?
                    .into_iter()
                    .filter(|l| {
                        args.matching
                            .as_deref()
                            .is_none_or(|m| l["last_error"].as_str().is_some_and(|e| e.contains(m)))
                    })
                    .filter_map(|l| l["id"].as_i64())
                    .collect()
            } else {
                args.ids.clone()
            };
            anyhow::ensure!(!ids.is_empty(), "nothing to replay: give ids, or --all");
            let mut failed = 0;
            for id in &ids {
                let response = client
                    .post(args.hub.endpoint(&format!("/api/v1/dlq/{id}/replay")))
                    .bearer_auth(&token)
                    .send()
                    .await?;
                let status = response.status();
                let body: Value = response.json().await.unwrap_or_default();
                if status.is_success() {
                    println!("{id}: queued again as work item {}", body["work_item"]);
                } else {
                    failed += 1;
                    eprintln!("{id}: {status}: {}", body["detail"].as_str().unwrap_or(""));
                }
            }
            anyhow::ensure!(failed == 0, "{failed} of {} replay(s) failed", ids.len());
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct ConnectArgs {
    /// The CRM to connect: `hubspot` or `zoho`
    #[arg(value_parser = ["hubspot", "zoho"])]
    system: String,
    /// Local port for the CRM to send the browser back to (0: any free port). Register
    /// `http://127.0.0.1:PORT/callback` as a redirect URL of your OAuth app.
    #[arg(long, default_value_t = 8765)]
    callback_port: u16,
    /// How long to wait for the browser to come back
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    hub: HubConnection,
}

fn random_text() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The browser's return to the local callback: its query parameters.
type Callback = std::collections::HashMap<String, String>;

pub async fn connect(args: ConnectArgs) -> anyhow::Result<()> {
    use axum::extract::Query;
    let token = args.hub.admin_token()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.callback_port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{}: {e}", args.callback_port))?;
    let redirect_uri = format!("http://{}/callback", listener.local_addr()?);
    let state = random_text();
    let verifier = random_text();
    let challenge = raccordo_crm::connect::pkce_challenge(&verifier);

    let authorize = answer(
        client
            .get(
                args.hub
                    .endpoint(&format!("/api/v1/crm/{}/authorize-url", args.system)),
            )
            .bearer_auth(&token)
            .query(&[
                ("redirect_uri", redirect_uri.as_str()),
                ("state", state.as_str()),
                ("code_challenge", challenge.as_str()),
            ]),
    )
    .await?;
    let url = authorize["url"].as_str().unwrap_or_default();
    println!(
        "Open this address in a browser and approve raccordo's access to {}:\n\n  {url}\n\n\
         Waiting for the browser to come back to {redirect_uri} …",
        args.system
    );

    let (tx, rx) = tokio::sync::mpsc::channel::<Callback>(1);
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::get(move |Query(q): Query<Callback>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(q).await;
                axum::response::Html(
                    "<p>raccordo has the answer; the terminal says whether the connection worked. \
                     You can close this tab.</p>",
                )
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut rx = rx;
    let callback = tokio::time::timeout(args.timeout, rx.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no answer from the browser within {:?}", args.timeout))?
        .ok_or_else(|| anyhow::anyhow!("the callback server stopped"))?;
    server.abort();
    if let Some(error) = callback.get("error") {
        anyhow::bail!("the CRM refused the authorization: {error}");
    }
    let same_state = callback.get("state").is_some_and(|s| {
        use subtle::ConstantTimeEq;
        bool::from(s.as_bytes().ct_eq(state.as_bytes()))
    });
    anyhow::ensure!(
        same_state,
        "the callback's state does not match: refusing a code this command did not ask for"
    );
    let code = callback
        .get("code")
        .ok_or_else(|| anyhow::anyhow!("the callback carries no code"))?;
    let mut grant = serde_json::json!({ "code": code, "redirect_uri": redirect_uri });
    if authorize["pkce"] == true {
        grant["code_verifier"] = serde_json::json!(verifier);
    }
    answer(
        client
            .post(
                args.hub
                    .endpoint(&format!("/api/v1/crm/{}/grant", args.system)),
            )
            .bearer_auth(&token)
            .json(&grant),
    )
    .await
    .map_err(|e| anyhow::anyhow!("the hub could not store the grant: {e}"))?;
    println!(
        "connected: raccordo holds a grant for {} (stored sealed)",
        args.system
    );
    Ok(())
}

#[derive(Subcommand)]
pub enum SyncCommand {
    /// Queue every existing contact and company of both CRMs for sync, and show the progress
    #[command(
        long_about = "Backfill: the hub pages through every contact and company of HubSpot and \
        Zoho and queues each for sync (a record already in sync costs a read and writes \
        nothing). Its progress is stored after every page, so a backfill interrupted by a \
        restart resumes where it was; running this command again while one runs just shows its \
        progress. The command shows the records queued per list and the sync queue draining, \
        and ends when everything queued has been synced (or failed, see `raccordo dlq list`)."
    )]
    Backfill(SyncBackfillArgs),
}

#[derive(Args)]
pub struct SyncBackfillArgs {
    #[command(flatten)]
    hub: HubConnection,
}

pub async fn sync(command: SyncCommand) -> anyhow::Result<()> {
    use std::io::Write;
    let SyncCommand::Backfill(args) = command;
    let token = args.hub.admin_token()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    answer(
        client
            .post(args.hub.endpoint("/api/v1/sync/backfill"))
            .bearer_auth(&token),
    )
    .await?;
    let mut stdout = std::io::stdout();
    loop {
        let progress = answer(
            client
                .get(args.hub.endpoint("/api/v1/sync/backfill"))
                .bearer_auth(&token),
        )
        .await?;
        let backfill = &progress["backfill"];
        let queue = &progress["queue"];
        let lists: Vec<String> = backfill["lists"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "{} {}s {}{}",
                    l["system"].as_str().unwrap_or(""),
                    l["kind"].as_str().unwrap_or(""),
                    l["queued"],
                    if l["done"] == true { " ✓" } else { "" }
                )
            })
            .collect();
        let pending =
            queue["waiting"].as_u64().unwrap_or(0) + queue["in_flight"].as_u64().unwrap_or(0);
        let finished = !backfill["finished_at_ms"].is_null();
        print!(
            "\r\x1b[2Kqueued: {} · to sync: {pending} · failed: {}{}",
            lists.join(", "),
            queue["dead_letters"],
            backfill["last_error"]
                .as_str()
                .map(|e| format!(" · retrying after: {e}"))
                .unwrap_or_default()
        );
        stdout.flush()?;
        if finished && pending == 0 {
            println!("\nbackfill done");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Args)]
pub struct ReconcileArgs {
    /// Print the whole report as JSON instead of the summary
    #[arg(long)]
    json: bool,
    /// The UTC day whose conversions are checked (`[[sync.conversion_checks]]`), as
    /// YYYY-MM-DD (default: yesterday)
    #[arg(long)]
    day: Option<String>,
    #[command(flatten)]
    hub: HubConnection,
}

pub async fn reconcile(args: ReconcileArgs) -> anyhow::Result<()> {
    let token = args.hub.admin_token()?;
    // Reading two whole CRMs takes a while.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?;
    let mut request = client
        .post(args.hub.endpoint("/api/v1/sync/reconcile"))
        .bearer_auth(&token);
    if let Some(day) = &args.day {
        request = request.query(&[("day", day)]);
    }
    let answer = answer(request).await?;
    if args.json {
        println!("{}", answer["report"]);
        return Ok(());
    }
    for (name, key) in [("contacts", "contacts"), ("companies", "companies")] {
        let r = &answer["report"][key];
        let len = |k: &str| r[k].as_array().map_or(0, Vec::len);
        println!(
            "{name}: {} in HubSpot, {} in Zoho, {} linked pairs ({} in agreement); \
             {} differ, {} missing in Zoho, {} hot missing in HubSpot, {} matching but unlinked, {} dangling links",
            r["hubspot_records"],
            r["zoho_records"],
            r["pairs"],
            r["pairs_equal"],
            len("different"),
            len("missing_in_zoho"),
            len("missing_in_hubspot"),
            len("unlinked_matches"),
            len("dangling"),
        );
    }
    for c in answer["report"]["conversions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "conversions `{}` on {}: {} in the hub, {} in the CRM: {}",
            c["name"].as_str().unwrap_or(""),
            c["day"].as_str().unwrap_or(""),
            c["hub"],
            c["crm"],
            if c["agrees"] == true {
                "agree"
            } else {
                "DIFFER"
            }
        );
    }
    println!(
        "{} problem(s); report: {} and {}",
        answer["problems"],
        answer["json_path"].as_str().unwrap_or(""),
        answer["html_path"].as_str().unwrap_or("")
    );
    Ok(())
}
