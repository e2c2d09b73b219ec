//! `raccordo flows …`: list a running hub's flows, read run history, start and replay runs.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::admin_cmd::{HubConnection, answer};

#[derive(Subcommand)]
pub enum FlowsCommand {
    /// The configured flows, each step with its last runs' status and latency
    List(ListArgs),
    /// Runs, newest first: id, flow, status, start time and duration
    Runs(RunsArgs),
    /// One run: its trigger input and every step's input, output, attempts, error and cost
    Show(ShowArgs),
    /// Start a flow on an input (the trigger input as JSON)
    #[command(
        long_about = "Start a flow on an input, as `POST /api/v1/flows/{name}/runs` does: the \
        input is checked against the flow's input_schema (nothing starts when it fails, and the \
        failing field is named). With --wait, follows the run until it ends and prints it."
    )]
    Start(StartArgs),
    /// Run a flow again from one of its steps, as a new run
    #[command(
        long_about = "Replay a run from one of its steps: a new run keeps the recorded outputs \
        of the steps before it and gives the step its recorded input, or --input (an edited \
        input, as JSON in the form `raccordo flows show` prints). Use it after fixing the cause \
        of a failure, or to re-apply a corrected value."
    )]
    Replay(ReplayArgs),
}

#[derive(Args)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    hub: HubConnection,
}

#[derive(Args)]
pub struct RunsArgs {
    /// Only this flow's runs
    #[arg(long)]
    flow: Option<String>,
    /// How many (newest first)
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    hub: HubConnection,
}

#[derive(Args)]
pub struct ShowArgs {
    /// The run's id (`run_…`)
    run: String,
    /// Print the run as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    hub: HubConnection,
}

#[derive(Args)]
pub struct StartArgs {
    /// The flow's name
    flow: String,
    /// The trigger input, as JSON (default `{}`)
    #[arg(long, default_value = "{}")]
    input: String,
    /// Wait for the run to end and print it
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    hub: HubConnection,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// The run to replay
    run: String,
    /// The step to start from
    #[arg(long)]
    from: String,
    /// The step's input instead of the recorded one, as JSON
    #[arg(long)]
    input: Option<String>,
    /// Wait for the new run to end and print it
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    hub: HubConnection,
}

fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?)
}

fn json_arg(name: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).map_err(|e| anyhow::anyhow!("--{name} is not JSON: {e}"))
}

pub async fn run(command: FlowsCommand) -> anyhow::Result<()> {
    let client = http()?;
    match command {
        FlowsCommand::List(args) => {
            let token = args.hub.admin_token()?;
            let flows = answer(
                client
                    .get(args.hub.endpoint("/api/v1/flows"))
                    .bearer_auth(&token),
            )
            .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
                return Ok(());
            }
            for flow in flows["flows"].as_array().into_iter().flatten() {
                println!(
                    "{}  ({} runs, {} failed)  trigger: {}",
                    flow["name"].as_str().unwrap_or(""),
                    flow["runs"],
                    flow["runs_failed"],
                    flow["trigger"]
                );
                for step in flow["steps"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<24} {:<11} ok {:>3}  failed {:>3}  skipped {:>3}  p50 {:>6}  max {:>6}",
                        step["name"].as_str().unwrap_or(""),
                        step["kind"].as_str().unwrap_or(""),
                        step["succeeded"],
                        step["failed"],
                        step["skipped"],
                        ms(&step["p50_ms"]),
                        ms(&step["max_ms"]),
                    );
                }
            }
        }
        FlowsCommand::Runs(args) => {
            let token = args.hub.admin_token()?;
            let mut query = vec![("limit", args.limit.to_string())];
            if let Some(flow) = &args.flow {
                query.push(("flow", flow.clone()));
            }
            let page = answer(
                client
                    .get(args.hub.endpoint("/api/v1/flows/runs"))
                    .bearer_auth(&token)
                    .query(&query),
            )
            .await?;
            let runs = page["runs"].as_array().cloned().unwrap_or_default();
            if args.json {
                for r in &runs {
                    println!("{r}");
                }
                return Ok(());
            }
            println!(
                "{:<34} {:<24} {:<10} {:<25} duration",
                "run", "flow", "status", "started"
            );
            for r in &runs {
                let started = r["started_at_ms"].as_i64().unwrap_or(0);
                let duration = r["finished_at_ms"]
                    .as_i64()
                    .map(|f| format!("{} ms", f - started))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<34} {:<24} {:<10} {:<25} {duration}",
                    r["id"].as_str().unwrap_or(""),
                    r["kind"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or(""),
                    raccordo_sandbox::iso_ms(started),
                );
            }
        }
        FlowsCommand::Show(args) => {
            let token = args.hub.admin_token()?;
            let run = fetch_run(&client, &args.hub, &token, &args.run).await?;
            print_run(&run, args.json)?;
        }
        FlowsCommand::Start(args) => {
            let token = args.hub.admin_token()?;
            let input = json_arg("input", &args.input)?;
            let started = answer(
                client
                    .post(
                        args.hub
                            .endpoint(&format!("/api/v1/flows/{}/runs", args.flow)),
                    )
                    .bearer_auth(&token)
                    .json(&input),
            )
            .await?;
            finish(&client, &args.hub, &token, &started, args.wait).await?;
        }
        FlowsCommand::Replay(args) => {
            let token = args.hub.admin_token()?;
            let mut body = serde_json::json!({ "from": args.from });
            if let Some(input) = &args.input {
                body["input"] = json_arg("input", input)?;
            }
            let started = answer(
                client
                    .post(
                        args.hub
                            .endpoint(&format!("/api/v1/flows/runs/{}/replay", args.run)),
                    )
                    .bearer_auth(&token)
                    .json(&body),
            )
            .await?;
            finish(&client, &args.hub, &token, &started, args.wait).await?;
        }
    }
    Ok(())
}

fn ms(v: &Value) -> String {
    v.as_i64()
        .map(|m| format!("{m} ms"))
        .unwrap_or_else(|| "-".into())
}

async fn fetch_run(
    client: &reqwest::Client,
    hub: &HubConnection,
    token: &str,
    id: &str,
) -> anyhow::Result<Value> {
    answer(
        client
            .get(hub.endpoint(&format!("/api/v1/flows/runs/{id}")))
            .bearer_auth(token),
    )
    .await
}

/// Prints the new run's id, or with `wait` follows it to its end and prints it.
async fn finish(
    client: &reqwest::Client,
    hub: &HubConnection,
    token: &str,
    started: &Value,
    wait: bool,
) -> anyhow::Result<()> {
    let id = started["run_id"].as_str().unwrap_or_default().to_string();
    if !wait {
        println!("{id}");
        return Ok(());
    }
    loop {
        let run = fetch_run(client, hub, token, &id).await?;
        if run["status"] != "running" {
            print_run(&run, false)?;
            anyhow::ensure!(run["status"] == "succeeded", "run {id} failed");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_run(run: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(run)?);
        return Ok(());
    }
    println!(
        "{}  flow {}  {}",
        run["id"].as_str().unwrap_or(""),
        run["kind"].as_str().unwrap_or(""),
        run["status"].as_str().unwrap_or("")
    );
    println!("  trigger: {}", run["trigger"]);
    for step in run["steps"].as_array().into_iter().flatten() {
        let took = match (
            step["started_at_ms"].as_i64(),
            step["finished_at_ms"].as_i64(),
        ) {
            (Some(s), Some(f)) => format!("{} ms", f - s),
            _ => "-".into(),
        };
        println!(
            "  [{}] {:<22} {:<10} attempts {}  {took}{}{}",
            step["index"],
            step["name"].as_str().unwrap_or(""),
            step["status"].as_str().unwrap_or(""),
            step["attempts"],
            step["tokens"]
                .as_u64()
                .map(|t| format!("  tokens {t}"))
                .unwrap_or_default(),
            step["cost"]
                .as_f64()
                .map(|c| format!("  cost {c:.6}"))
                .unwrap_or_default(),
        );
        if !step["input"].is_null() {
            println!("      input:  {}", step["input"]);
        }
        if let Some(output) = step.get("output").filter(|o| !o.is_null()) {
            println!("      output: {output}");
        }
        if let Some(error) = step["error"].as_str() {
            println!("      error:  {error}");
        }
    }
    Ok(())
}
