//! `raccordo late …`: read a running hub's late table and re-aggregate late events.

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::admin_cmd::{HubConnection, answer};

#[derive(Subcommand)]
pub enum LateCommand {
    /// Late events (newest first) with their source, event time and windows, and the late
    /// counts per window
    List(ListArgs),
    /// Count late events into the windows they were late for
    #[command(long_about = "Count late events into their windows, as `POST \
        /api/v1/metrics/late/reaggregate` does: the windows' final results change (events, \
        conversions and values exactly; distinct customers become an upper bound), the events \
        leave the late table, and the updated rows are streamed to the dashboard. Without \
        filters every late event is taken; --source, --dimension/--value and --ids narrow it. \
        Needs a token with the `admin` scope.")]
    Reaggregate(FilterArgs),
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// How many late events to list
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the answer as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct FilterArgs {
    /// Only this source's late events
    #[arg(long)]
    source: Option<String>,
    /// Only events with this dimension value (`canale`, `evento`, `campagna`, or an extra
    /// dimension); with --value
    #[arg(long, requires = "value")]
    dimension: Option<String>,
    /// The dimension's value
    #[arg(long, requires = "dimension")]
    value: Option<String>,
    /// Only these events (comma-separated ids, `evt_…`)
    #[arg(long)]
    ids: Option<String>,
    #[command(flatten)]
    hub: HubConnection,
}

impl FilterArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("source", &self.source),
            ("dimension", &self.dimension),
            ("value", &self.value),
            ("ids", &self.ids),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.clone()?)))
        .collect()
    }
}

pub async fn run(command: LateCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    match command {
        LateCommand::List(args) => {
            let hub = &args.filter.hub;
            let mut query = args.filter.query();
            query.push(("limit", args.limit.to_string()));
            let table = answer(
                client
                    .get(hub.endpoint("/api/v1/metrics/late"))
                    .bearer_auth(hub.admin_token()?)
                    .query(&query),
            )
            .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&table)?);
                return Ok(());
            }
            print_table(&table);
        }
        LateCommand::Reaggregate(filter) => {
            let done = answer(
                client
                    .post(filter.hub.endpoint("/api/v1/metrics/late/reaggregate"))
                    .bearer_auth(filter.hub.admin_token()?)
                    .query(&filter.query()),
            )
            .await?;
            println!(
                "{} late event(s) counted into their windows; {} window row(s) updated",
                done["events"], done["rows"]
            );
        }
    }
    Ok(())
}

fn print_table(table: &Value) {
    let events = table["events"].as_array().cloned().unwrap_or_default();
    println!(
        "{} late event(s){}",
        table["total_events"],
        if events.len() < table["total_events"].as_u64().unwrap_or(0) as usize {
            format!(", newest {} listed", events.len())
        } else {
            String::new()
        }
    );
    if !events.is_empty() {
        println!(
            "{:<30} {:<14} {:<25} {:<25}",
            "ID", "SOURCE", "EVENT TIME", "RECEIVED"
        );
    }
    for e in &events {
        println!(
            "{:<30} {:<14} {:<25} {:<25}",
            e["id"].as_str().unwrap_or(""),
            e["source"].as_str().unwrap_or(""),
            raccordo_core::rfc3339(e["event_time_ms"].as_i64().unwrap_or(0)),
            raccordo_core::rfc3339(e["received_at_ms"].as_i64().unwrap_or(0)),
        );
    }
    let counts = table["counts"].as_array().cloned().unwrap_or_default();
    if !counts.is_empty() {
        println!(
            "\n{:<25} {:<12} {:<20} {:>6}",
            "WINDOW", "DIMENSION", "VALUE", "LATE"
        );
    }
    for c in &counts {
        println!(
            "{:<25} {:<12} {:<20} {:>6}",
            raccordo_core::rfc3339(c["window_start_ms"].as_i64().unwrap_or(0)),
            c["dimension"].as_str().unwrap_or(""),
            c["value"].as_str().unwrap_or(""),
            c["late"],
        );
    }
}
