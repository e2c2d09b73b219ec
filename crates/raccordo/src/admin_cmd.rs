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
        let response = client
            .get(hub.endpoint("/api/v1/dlq"))
            .bearer_auth(token)
            .query(&query)
            .send()
            .await?;
        let status = response.status();
        let page: Value = response.json().await.unwrap_or_default();
        anyhow::ensure!(
            status.is_success(),
            "the hub answered {status}: {}",
            page["detail"].as_str().unwrap_or("")
        );
        letters.extend(page["dead_letters"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = Some(next),
            None => return Ok(letters),
        }
    }
}

fn time_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
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
                    time_text(l["failed_at_ms"].as_i64().unwrap_or(0)),
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
