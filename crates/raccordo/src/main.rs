//! The `raccordo` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod admin_cmd;
mod config;
mod credentials;
mod customer_cmd;
mod demo;
mod flows;
mod flows_cmd;
mod hub;
mod keys_cmd;
mod late_cmd;
#[cfg(feature = "postgres")]
mod migrate_cmd;
mod reference;
mod sandbox_cmd;
mod sync;

// The request path allocates many small, short-lived buffers; mimalloc serves them with
// less contention between threads than glibc malloc (measured in docs/benchmarks.md).
// Its options are set before it starts (allocator.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
mod allocator;
use config::Config;
use credentials::Credentials;
use hub::Hub;

#[derive(Parser)]
#[command(
    name = "raccordo",
    version,
    about = "Self-hosted CRM event and integration hub",
    long_about = "raccordo receives conversion events and CRM webhooks, checks their auth and schema, \
                  deduplicates them and stores them durably.\n\n\
                  Start with `raccordo serve`: it runs on an embedded SQLite file under ./raccordo-data \
                  and prints the credentials to use on first start."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct McpArgs {
    #[command(flatten)]
    hub: admin_cmd::HubConnection,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (embedded SQLite by default; no config needed)
    #[command(long_about = "Run the hub.\n\n\
        Without --config, raccordo listens on 127.0.0.1:8080, keeps its data in ./raccordo-data, \
        and on first start generates an ingest API key, a webhook secret and an admin token, \
        saves them to ./raccordo-data/credentials.toml and prints them once.\n\n\
        With --config FILE, everything comes from the TOML file (see docs/configuration.md); \
        `${VAR}` in the file is replaced by the environment variable VAR.")]
    Serve(ServeArgs),
    /// Validate a config file and report every problem with its line
    #[command(
        long_about = "Validate a config file: TOML syntax, field types, secrets, key files and \
        JSON schemas. Every problem is printed as FILE:LINE: KEY: MESSAGE. Exits 1 if there is any."
    )]
    Check {
        /// The TOML config file to check
        #[arg(long, short)]
        config: PathBuf,
        /// A sample payload (JSON) to run through a source's checks: schema, event time,
        /// dedup key and the windows it lands in; nothing is sent or stored
        #[arg(long, requires = "source")]
        event: Option<PathBuf>,
        /// The source the sample payload is for (`[sources.<name>]`)
        #[arg(long, requires = "event")]
        source: Option<String>,
    },
    /// Send realistic, signed conversion traffic to a hub and report latency
    #[command(
        long_about = "Send realistic conversion events (Italian customers, channels and campaigns), \
        signed like a real sender, and print throughput, latency percentiles (p50/p95/p99/max) and \
        outcome counts.\n\n\
        By default it reads ./raccordo-data/credentials.toml, as written by a config-less \
        `raccordo serve`, and signs with its webhook secret.\n\n\
        Closed loop (--concurrency N) keeps N requests in flight: use it to find the maximum rate. \
        Open loop (--rate R) starts R requests per second on a schedule and measures latency from \
        the scheduled time: use it to see latency at a given load."
    )]
    Loadgen(LoadgenArgs),
    /// Manage campaign spend (used for cost per acquisition)
    #[command(subcommand)]
    Costs(CostsCommand),
    /// Inspect and replay failed operations (the dead-letter queue) of a running hub
    #[command(subcommand)]
    Dlq(admin_cmd::DlqCommand),
    /// Give a running hub access to HubSpot or Zoho CRM (OAuth authorization in a browser)
    #[command(
        long_about = "Connect a running hub to HubSpot or Zoho CRM with the OAuth \
        authorization-code flow: prints the CRM's consent page address, waits for the browser \
        to come back to a local callback (http://127.0.0.1:PORT/callback, which must be one of \
        the OAuth app's redirect URLs), checks the state parameter, and has the hub exchange \
        the code (with PKCE where the CRM takes it) and store the grant, sealed. Run it again \
        to replace a grant that was revoked. The OAuth client itself (client id and secret) is \
        in the hub's [crm.hubspot] or [crm.zoho] configuration. Needs an admin token."
    )]
    Connect(admin_cmd::ConnectArgs),
    /// AI flows of a running hub: list them, read runs, start and replay runs
    #[command(
        subcommand,
        long_about = "Work with the flows of a running hub ([[flows]] in its config, see \
        docs/flows.md): list them with each step's recent status and latency, read the run \
        history, start a run on an input, and replay a run from any step with its recorded or \
        an edited input. Needs an admin token."
    )]
    Flows(flows_cmd::FlowsCommand),
    /// Late events of a running hub: list them, count them into their windows
    #[command(
        subcommand,
        long_about = "Events that arrive after their window closed (past metrics.allowed_lateness) \
        are accepted, stored and kept in the late table rather than counted in a window. List \
        them with their ids, source and windows, or re-aggregate them into their windows. See \
        docs/windows.md."
    )]
    Late(late_cmd::LateCommand),
    /// Erase a customer's personal data from every store of a running hub (GDPR)
    #[command(
        long_about = "Erase what a running hub holds about one customer (the GDPR right to         erasure): their stored events keep their counts and values, but the customer id and the         personal fields ([privacy] personal_fields) are replaced by pseudonyms in place and their         dedup claims dropped; refused requests, flow runs, cached AI answers, sync snapshots and         id mappings, pending work and dead letters about them are deleted. Window results stay as         anonymous counts. Prints what was erased per store; running it again erases nothing more.         The hub's audit log records it under the token's name, naming the customer by         fingerprint only. Needs an admin token. See docs/security.md."
    )]
    Erase(customer_cmd::CustomerArgs),
    /// Export what a running hub holds about a customer, as JSON (GDPR access request)
    #[command(
        long_about = "Export everything a running hub holds about one customer (the GDPR right         of access): their stored events, refused requests, flow runs, cached AI answers and sync         snapshots, as one JSON document. The export is recorded in the audit log. Needs an         admin token. See docs/security.md."
    )]
    Export(customer_cmd::ExportArgs),
    /// The key that seals stored secrets (OAuth grants and tokens): rotate it
    #[command(
        subcommand,
        long_about = "The hub seals the secrets it stores (OAuth refresh and access tokens) \
        with ChaCha20-Poly1305 under a key from RACCORDO_SECRET_KEY or <data dir>/secret.key. \
        `keys rotate` makes a new key and re-seals every stored secret under it. See \
        docs/security.md."
    )]
    Keys(keys_cmd::KeysCommand),
    /// Move an embedded installation onto PostgreSQL, for nodes of a cluster
    #[cfg(feature = "postgres")]
    #[command(
        long_about = "Copy an embedded hub's data into the PostgreSQL schema of the config given         with --config (backend \"postgres\" or \"cluster\"): the event log with its sequence         numbers, the live dedup claims and delivery ids, and every state table (sync mappings,         secrets, runs, alerts, costs, window results and checkpoints, pending work, dead letters,         refused requests, the audit log). Secrets are re-sealed under RACCORDO_SECRET_KEY, the         key the nodes run with. Stop the embedded hub first; the target schema must be empty.         The embedded data directory is left as it was. See docs/deployment.md."
    )]
    Migrate(migrate_cmd::MigrateArgs),
    /// Serve the hub's MCP tools over stdin/stdout, for AI agents that start a local process
    #[command(
        long_about = "Serve the Model Context Protocol over stdio for an AI agent (Claude \
        Desktop, an IDE, any MCP client that starts a command). The tools — conversion metrics \
        and events, a record's sync state and failures, flows and their runs — call the admin \
        API of the running hub at --url with the token given (its scope decides what the agent \
        may do: `read`, or `admin` to start flows). The hub itself serves the same tools over \
        streamable HTTP at /mcp. See docs/mcp.md."
    )]
    Mcp(McpArgs),
    /// Operations on the HubSpot ↔ Zoho sync of a running hub (backfill)
    #[command(subcommand)]
    Sync(admin_cmd::SyncCommand),
    /// Compare HubSpot and Zoho record by record and write an integrity report
    #[command(
        long_about = "Have a running hub compare both CRMs now: every contact and company is \
        read on both sides and the linked pairs are compared field by field (canonical values; \
        the report gives field names and checksums, never values). Prints a summary and where \
        the hub wrote the JSON and HTML reports (<data_dir>/reports/). The hub also does this \
        on its own every [sync] reconcile_every (daily) and raises a sync_drift alert when the \
        CRMs disagree. Needs an admin token."
    )]
    Reconcile(admin_cmd::ReconcileArgs),
    /// Run an emulator of HubSpot, Zoho CRM or an OpenAI-compatible API on loopback
    #[command(
        long_about = "Run an emulator of the HubSpot CRM API, the Zoho CRM API or an \
        OpenAI-compatible chat API, for trying raccordo and for tests, with no account and no \
        internet. The official SDKs work against it unchanged; the start-up banner prints the \
        URL and credentials to give them.\n\n\
        Every sandbox is seeded with Italian companies and contacts, keeps its records in memory \
        (or in --state-file), logs the calls it receives (GET /_sandbox/calls) and can inject \
        latency, errors, 429s and outages, by flags or at run time with PATCH /_sandbox/knobs. \
        See docs/sandboxes.md."
    )]
    Sandbox(sandbox_cmd::SandboxArgs),
    /// One command to see it all: the hub, the three sandboxes and live traffic
    #[command(
        long_about = "Start the hub on the embedded default (SQLite in ./raccordo-demo), \
        the HubSpot, Zoho and AI sandboxes, and a traffic generator sending conversion events, \
        contact and company changes on both CRMs, and support-ticket texts to the AI sandbox, all \
        on loopback. Prints where to look (the dashboard URL with its token) and runs until \
        Ctrl-C, then shuts everything down cleanly."
    )]
    Demo(demo::DemoArgs),
    /// Print every config key with its type, default and meaning (Markdown)
    #[command(
        long_about = "Print the configuration reference: every section and key of the TOML config \
        file, its type, its default and what it does, as Markdown. It is generated from the code, \
        so it always matches this binary (docs/configuration.md holds the same text)."
    )]
    ConfigReference,
}

#[derive(Subcommand)]
enum CostsCommand {
    /// Import daily campaign spend from a CSV file into a running hub
    #[command(
        long_about = "Import daily campaign spend from a CSV file with a header row and the \
        columns campaign,date,amount (date as 2026-11-22, amount in currency units with at most two \
        decimals), for example:\n\n    campaign,date,amount\n    black-friday-2026,2026-11-22,288.00\n\n\
        Each campaign's rows are sent as one request to PUT /api/v1/campaigns/{id}/costs; the hub \
        checks every row and refuses a campaign's rows whole if any is wrong, naming the rows. \
        Needs an admin token."
    )]
    Import(CostsImportArgs),
}

#[derive(Args)]
struct CostsImportArgs {
    /// The CSV file
    file: PathBuf,
    #[command(flatten)]
    hub: admin_cmd::HubConnection,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file (default: built-in embedded defaults)
    #[arg(long, short, env = "RACCORDO_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 or 0.0.0.0:80 (overrides the config)
    #[arg(long, env = "RACCORDO_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory when running without a config (default ./raccordo-data)
    #[arg(long, env = "RACCORDO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Also serve POST /_bench/noop, the baseline route used by benchmarks
    #[arg(long)]
    bench_routes: bool,
}

#[derive(Args)]
struct LoadgenArgs {
    /// Base URL of the hub. Give it once per node to spread the load over a cluster: each
    /// request goes to the next URL in turn, and one that gets no answer (a node down) is
    /// sent again, as it was, to the next
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    urls: Vec<String>,
    /// Route to load: `conversion` (POST /api/v1/eventi/conversione), `noop` (POST /_bench/noop,
    /// needs `serve --bench-routes`) or `source:NAME` (POST /webhooks/in/NAME)
    #[arg(long, default_value = "conversion")]
    route: String,
    /// credentials.toml to take the webhook secret or API key from
    #[arg(long, default_value = "raccordo-data/credentials.toml")]
    credentials: PathBuf,
    /// For an `https://` URL: trust only the CA certificate(s) in this PEM file (e.g. the
    /// hub's self-signed certificate) instead of the system's roots
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Sign with this Standard Webhooks secret (whsec_...) instead of the credentials file's
    #[arg(long, env = "RACCORDO_WEBHOOK_SECRET")]
    webhook_secret: Option<String>,
    /// Authenticate with this API key instead of a signature
    #[arg(long, env = "RACCORDO_API_KEY", conflicts_with = "webhook_secret")]
    api_key: Option<String>,
    /// Closed loop: requests kept in flight
    #[arg(long, default_value_t = 32, conflicts_with = "rate")]
    concurrency: usize,
    /// Open loop: requests started per second
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: most requests outstanding at once, each on a connection of its own (a
    /// sender's connection pool; waiting for a free one counts as latency). Connections
    /// for 10 ms of the rate are opened before the clock starts, more as needed
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// How long to send, e.g. 10s or 1m
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many requests
    #[arg(long)]
    requests: Option<u64>,
    /// Events per request (1 sends a single object; more send a JSON array, at most 1000)
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Fraction of events that re-send an earlier event (expected answer: duplicate)
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Fraction of requests that resend an earlier request whole (same `webhook-id`, same
    /// body), as a webhook sender retrying after a timeout does (needs a webhook secret;
    /// expected answer: the first answer again, every event a duplicate)
    #[arg(long, default_value_t = 0.0)]
    retries: f64,
    /// Fraction of events with a schema error (a batch containing one is rejected whole)
    #[arg(long, default_value_t = 0.0)]
    invalid: f64,
    /// Random seed, for repeatable traffic
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also measure time to insight: follow the live metrics stream with this read token
    /// and report how long acknowledged events take to appear (provisional and final)
    #[arg(long, env = "RACCORDO_READ_TOKEN")]
    insight_token: Option<String>,
    /// The hub's out-of-orderness, to compare final results with (with --insight-token)
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    out_of_orderness: Duration,
    /// Replay history: event times start here (RFC 3339, e.g. 2026-11-20T00:00:00Z) instead
    /// of following the clock, and advance by --event-time-step per event over all clients
    #[arg(long, value_parser = parse_rfc3339_ms)]
    event_time_from: Option<i64>,
    /// With --event-time-from: event time added per generated event, e.g. 35ms
    #[arg(long, default_value = "35ms", value_parser = humantime::parse_duration)]
    event_time_step: Duration,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|e| format!("not an RFC 3339 time: {e}"))
}

fn main() -> ExitCode {
    // One TLS provider for every client in the process (JWKS fetches, loadgen over https).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raccordo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => {
            owner_only_files();
            runtime.block_on(serve(args))
        }
        Command::Check {
            config,
            event,
            source,
        } => return check(&config, event.as_deref().zip(source.as_deref())),
        Command::Loadgen(args) => runtime.block_on(loadgen(args)),
        Command::Costs(CostsCommand::Import(args)) => runtime.block_on(import_costs(args)),
        Command::Dlq(command) => runtime.block_on(admin_cmd::run(command)),
        Command::Erase(args) => runtime.block_on(customer_cmd::erase(args)),
        Command::Export(args) => runtime.block_on(customer_cmd::export(args)),
        Command::Connect(args) => runtime.block_on(admin_cmd::connect(args)),
        Command::Sync(command) => runtime.block_on(admin_cmd::sync(command)),
        Command::Flows(command) => runtime.block_on(flows_cmd::run(command)),
        Command::Late(command) => runtime.block_on(late_cmd::run(command)),
        #[cfg(feature = "postgres")]
        Command::Migrate(args) => {
            owner_only_files();
            runtime.block_on(migrate_cmd::run(args))
        }
        Command::Keys(command) => {
            owner_only_files();
            runtime.block_on(keys_cmd::run(command))
        }
        Command::Mcp(args) => runtime.block_on(async move {
            // Stdout carries the protocol: the audit lines (and any other log) go to stderr.
            tracing_subscriber::fmt()
                .json()
                .with_writer(std::io::stderr)
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    "warn,raccordo::audit=info",
                ))
                .init();
            let api = raccordo_mcp::HubApi::new(&args.hub.url, Some(args.hub.admin_token()?))?;
            raccordo_mcp::serve_stdio(api)
                .await
                .map_err(|e| anyhow::anyhow!("mcp: {e}"))
        }),
        Command::Reconcile(args) => runtime.block_on(admin_cmd::reconcile(args)),
        Command::Sandbox(args) => runtime.block_on(sandbox_cmd::run(args)),
        Command::Demo(args) => {
            owner_only_files();
            runtime.block_on(demo::run(args))
        }
        Command::ConfigReference => {
            print!("{}", reference::body());
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raccordo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_problems(problems: &[config::ConfigProblem]) {
    for p in problems {
        eprintln!("{p}");
    }
    eprintln!("{} problem(s) found", problems.len());
}

fn check(path: &std::path::Path, sample: Option<(&std::path::Path, &str)>) -> ExitCode {
    match Config::load(path) {
        Ok(built) if sample.is_some() => {
            let (event, source) = sample.unwrap_or((path, ""));
            check_event(&built, event, source)
        }
        Ok(built) => {
            for warning in built.config.warnings() {
                println!("{}: warning: {warning}", path.display());
            }
            if let Err(problem) = check_storage(&built.config) {
                eprintln!("{}: storage: {problem}", path.display());
                return ExitCode::FAILURE;
            }
            println!(
                "{}: ok ({} source(s), {} admin token(s), listening on {})",
                path.display(),
                built.sources.len(),
                built.config.admin.tokens.len(),
                built.config.server.listen
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            print_problems(&problems);
            ExitCode::FAILURE
        }
    }
}

/// A shared database must answer before the config is called good (the embedded store is
/// created on first start and needs nothing).
fn check_storage(config: &Config) -> Result<(), String> {
    match config.storage.backend {
        config::Backend::Sqlite => Ok(()),
        #[cfg(feature = "postgres")]
        config::Backend::Postgres => check_postgres(config),
        #[cfg(feature = "cluster")]
        config::Backend::Cluster => {
            check_postgres(config)?;
            let settings = &config.storage.redis;
            let probe = block_on(raccordo_storage_redis::probe(&settings.options()))?
                .map_err(|e| format!("Redis cannot be used: {e}"))?;
            println!(
                "storage: Redis {} reachable; {} key(s) under `{}`",
                probe.version, probe.keys, settings.key_prefix
            );
            let stream = &config.storage.stream;
            let described = block_on(async {
                match stream.open().await? {
                    Some(opened) => opened.describe().await.map(Some),
                    None => Ok(None),
                }
            })?
            .map_err(|e| format!("the {} cannot be used: {e}", stream.describe_target()))?;
            if let Some(seen) = described {
                println!(
                    "storage: {} reachable; {} holds {} message(s) (events and ticks) over {} partition(s)",
                    seen.engine,
                    stream.describe_target(),
                    seen.messages,
                    seen.partitions
                );
            }
            Ok(())
        }
        #[cfg(not(feature = "postgres"))]
        config::Backend::Postgres => Err("this build has no PostgreSQL backend".into()),
        #[cfg(not(feature = "cluster"))]
        config::Backend::Cluster => Err("this build has no cluster backend".into()),
    }
}

#[cfg(feature = "postgres")]
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(runtime.block_on(future))
}

#[cfg(feature = "postgres")]
fn check_postgres(config: &Config) -> Result<(), String> {
    let settings = &config.storage.postgres;
    let probe = block_on(raccordo_storage_postgres::probe(&settings.options()))?
        .map_err(|e| format!("PostgreSQL cannot be used: {e}"))?;
    println!(
        "storage: PostgreSQL {} reachable; schema `{}`: {}",
        probe.server_version,
        settings.schema,
        match probe.pending_migrations {
            0 => "up to date".to_string(),
            n => format!("{n} migration(s) to apply at the first start"),
        }
    );
    Ok(())
}

/// `raccordo check --event FILE --source NAME`: what the source would store from the sample,
/// and where the live metrics would count it.
fn check_event(built: &config::Built, event: &std::path::Path, source: &str) -> ExitCode {
    let Some(found) = built.sources.iter().find(|s| s.name.as_str() == source) else {
        eprintln!("no source is named `{source}` in the config");
        return ExitCode::FAILURE;
    };
    let body = match std::fs::read(event) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read {}: {e}", event.display());
            return ExitCode::FAILURE;
        }
    };
    let now = raccordo_core::Clock::now_ms(&raccordo_core::SystemClock);
    match raccordo_ingest::Ingestor::dry_run(found, &built.config.ingest, &body, now) {
        Ok(events) => {
            let spec = built.config.metrics.window_spec();
            let goals = &built.config.metrics.goals;
            for (i, e) in events.iter().enumerate() {
                let payload: serde_json::Value =
                    serde_json::from_str(&e.payload).unwrap_or_default();
                // What the windows read: the mapping's fields, or the built-in ones.
                let mapped = found.mapping.as_ref().and_then(|m| m.apply(&payload).ok());
                let (evento, stato) = match &mapped {
                    Some(m) => (Some(m.event.as_str()), Some(m.status.as_str())),
                    None => (payload["evento"].as_str(), payload["stato"].as_str()),
                };
                let windows: Vec<String> = spec
                    .windows_for(e.event_time_ms)
                    .map(|w| {
                        format!(
                            "[{}, {})",
                            raccordo_core::rfc3339(w.start),
                            raccordo_core::rfc3339(w.end)
                        )
                    })
                    .collect();
                println!("event {i}: would be stored on source `{source}`");
                println!("  payload:      {}", e.payload);
                println!(
                    "  event time:   {}",
                    raccordo_core::rfc3339(e.event_time_ms)
                );
                println!(
                    "  dedup key:    {}",
                    e.business_key
                        .as_deref()
                        .unwrap_or("(business-key dedup is off)")
                );
                println!("  windows:      {}", windows.join(", "));
                if let Some(m) = &mapped {
                    println!("  customer:     {}", m.customer);
                    println!("  event type:   {}", m.event);
                    println!("  value:        {:.2}", m.value_cents as f64 / 100.0);
                    println!(
                        "  channel:      {}",
                        m.channel.as_deref().unwrap_or("(none)")
                    );
                    println!(
                        "  campaign:     {}",
                        m.campaign.as_deref().unwrap_or("(none)")
                    );
                    for (name, value) in &m.dimensions {
                        println!("  {:<13} {value}", format!("{name}:"));
                    }
                }
                println!(
                    "  conversion:   {}",
                    match (evento, stato) {
                        (Some(ev), Some("completato")) if goals.iter().any(|g| g == ev) =>
                            format!("yes (`{ev}` is a goal and its status is `completato`)"),
                        (Some(ev), _) if goals.iter().any(|g| g == ev) =>
                            format!("no (`{ev}` is a goal but its status is not `completato`)"),
                        (Some(ev), _) => format!("no (`{ev}` is not among metrics.goals)"),
                        (None, _) => "no (no event type: the metrics do not count it)".into(),
                    }
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: would be refused: {e}", event.display());
            if let raccordo_ingest::IngestError::Validation { errors, .. } = &e {
                for f in errors {
                    eprintln!(
                        "  {}: {}",
                        if f.pointer.is_empty() {
                            "(body)"
                        } else {
                            &f.pointer
                        },
                        f.detail
                    );
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// The hub keeps personal data and credentials: everything it creates from here on (the data
/// directory, the database and its journal, the event-log segments, the lock) is readable
/// by its own user only, whatever the umask it was started with.
fn owner_only_files() {
    // SAFETY: umask only sets the process's file-creation mask; called before any thread
    // that creates files is started.
    unsafe {
        libc::umask(0o077);
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut built = match &args.config {
        Some(path) => Config::load(path).map_err(|problems| {
            print_problems(&problems);
            anyhow::anyhow!("the config file {} has problems", path.display())
        })?,
        None => {
            let mut config = Config::default();
            if let Some(dir) = &args.data_dir {
                config.server.data_dir = dir.clone();
            }
            let (credentials, created) = Credentials::load_or_create(&config.server.data_dir)?;
            credentials.apply(&mut config);
            let listen = args.listen.unwrap_or(config.server.listen);
            announce_credentials(&credentials, created, &config.server.data_dir, listen);
            let mut problems = Vec::new();
            let (sources, flows) =
                config.build(&mut |key, message| problems.push(format!("{key}: {message}")));
            anyhow::ensure!(
                problems.is_empty(),
                "built-in defaults are invalid: {problems:?}"
            );
            config::Built {
                config,
                sources,
                flows,
            }
        }
    };
    if args.bench_routes {
        built.config.server.bench_routes = true;
    }
    raccordo_server::telemetry::init_logging(&built.config.log);
    if built.sources.is_empty() {
        tracing::warn!("no sources are configured: every ingest request will be refused");
    }
    let database = built.config.database_path();
    let hub = Hub::bind(built, args.listen).await?;
    let addr = hub.local_addr()?;
    let scheme = if hub.serves_tls() { "https" } else { "http" };
    tracing::info!(addr = %addr, url = %format!("{scheme}://{addr}"), database = %database.display(), "listening");
    hub.run(raccordo_server::shutdown_signal()).await
}

fn announce_credentials(
    credentials: &Credentials,
    created: bool,
    data_dir: &std::path::Path,
    listen: SocketAddr,
) {
    let file = credentials::path_in(data_dir);
    if !created {
        eprintln!(
            "raccordo: using the credentials in {} (source `default`, admin token)",
            file.display()
        );
        return;
    }
    eprintln!(
        "raccordo: first start: generated credentials, saved to {file} (shown only this once)\n\
         \n  ingest API key (source `default`):   {key}\n  \
         webhook secret (source `default`):   {secret}\n  \
         admin token (scope `admin`):          {admin}\n\
         \nSend an event:\n  \
         curl -i http://{listen}/api/v1/eventi/conversione -H 'content-type: application/json' -H 'x-api-key: {key}' \\\n    \
         -d '{{\"id_cliente\":\"CLIENTE-ITALIA-789456\",\"evento\":\"acquisto_concluso\",\"timestamp\":\"'$(date -u +%FT%TZ)'\",\"valore\":149.99,\"canale\":\"email\",\"stato\":\"completato\"}}'\n\
         Read it back:\n  \
         curl -s http://{listen}/api/v1/events -H 'authorization: Bearer {admin}'\n\
         Live dashboard:\n  \
         http://{listen}/#token={admin}\n",
        file = file.display(),
        key = credentials.api_key,
        secret = credentials.webhook_secret,
        admin = credentials.admin_token,
    );
}

async fn loadgen(args: LoadgenArgs) -> anyhow::Result<()> {
    use raccordo_loadgen::{Auth, Mode, Options};
    let path = match args.route.as_str() {
        "conversion" => "/api/v1/eventi/conversione".to_string(),
        "noop" => "/_bench/noop".to_string(),
        other => match other.strip_prefix("source:") {
            Some(name) => format!("/webhooks/in/{name}"),
            None => anyhow::bail!("--route must be `conversion`, `noop` or `source:NAME`"),
        },
    };
    anyhow::ensure!(
        (1..=10_000).contains(&args.batch_size),
        "--batch-size must be between 1 and 10000"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&(args.duplicates + args.invalid)),
        "--duplicates + --invalid must be between 0 and 1"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.retries),
        "--retries must be between 0 and 1"
    );
    let auth = if let Some(secret) = args.webhook_secret {
        Auth::StandardWebhooks(secret)
    } else if let Some(key) = args.api_key {
        Auth::ApiKey(key)
    } else if args.credentials.exists() {
        let text = std::fs::read_to_string(&args.credentials)?;
        let credentials: Credentials = toml::from_str(&text)?;
        Auth::StandardWebhooks(credentials.webhook_secret)
    } else if path == "/_bench/noop" {
        Auth::None
    } else {
        anyhow::bail!(
            "no credentials: pass --webhook-secret or --api-key, or run from the directory where `raccordo serve` wrote {}",
            args.credentials.display()
        )
    };
    let mode = match args.rate {
        Some(rate) => Mode::Open {
            rate,
            max_in_flight: args.max_in_flight,
        },
        None => Mode::Closed {
            concurrency: args.concurrency,
        },
    };
    let report = raccordo_loadgen::run(Options {
        urls: args
            .urls
            .iter()
            .map(|url| format!("{}{}", url.trim_end_matches('/'), path))
            .collect(),
        auth,
        mode,
        duration: args.duration,
        max_requests: args.requests,
        batch_size: args.batch_size,
        duplicates: args.duplicates,
        retries: args.retries,
        invalid: args.invalid,
        seed: args.seed,
        insight: args
            .insight_token
            .map(|token| raccordo_loadgen::insight::InsightOptions {
                // Time to insight is measured on the first node's stream.
                base_url: args.urls.first().cloned().unwrap_or_default(),
                read_token: token,
                out_of_orderness: args.out_of_orderness,
            }),
        ca_pem: match &args.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", path.display()))?,
            ),
            None => None,
        },
        timeline: args
            .event_time_from
            .map(|from_ms| raccordo_loadgen::Timeline {
                from_ms,
                step_ms: args.event_time_step.as_secs_f64() * 1000.0,
                next: Default::default(),
            }),
    })
    .await?;
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        report.render()
    };
    // A reader that went away (`| head`) is no error: the report was for it alone.
    use std::io::Write;
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[derive(serde::Deserialize)]
struct CostRow {
    campaign: String,
    date: String,
    amount: f64,
}

async fn import_costs(args: CostsImportArgs) -> anyhow::Result<()> {
    let token = args.hub.admin_token()?;
    let mut reader = csv::Reader::from_path(&args.file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let mut by_campaign: std::collections::BTreeMap<String, Vec<(usize, serde_json::Value)>> =
        Default::default();
    for (i, row) in reader.deserialize::<CostRow>().enumerate() {
        let line = i + 2; // after the header
        let row = row.map_err(|e| anyhow::anyhow!("{}:{line}: {e}", args.file.display()))?;
        by_campaign.entry(row.campaign).or_default().push((
            line,
            serde_json::json!({ "date": row.date, "amount": row.amount }),
        ));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut failed = 0;
    for (campaign, rows) in &by_campaign {
        let url = args
            .hub
            .endpoint(&format!("/api/v1/campaigns/{}/costs", urlencode(campaign)));
        let days: Vec<&serde_json::Value> = rows.iter().map(|(_, v)| v).collect();
        let response = client
            .put(url)
            .bearer_auth(&token)
            .json(&serde_json::json!({ "days": days }))
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            println!("{campaign}: {} day(s) stored", rows.len());
            continue;
        }
        failed += 1;
        let problem: serde_json::Value = response.json().await.unwrap_or_default();
        eprintln!(
            "{campaign}: refused ({status}): {}",
            problem["detail"].as_str().unwrap_or("")
        );
        for error in problem["errors"].as_array().into_iter().flatten() {
            // `/days/3/amount` → the 4th row of this campaign → its CSV line.
            let pointer = error["pointer"].as_str().unwrap_or("");
            let index = pointer
                .split('/')
                .nth(2)
                .and_then(|i| i.parse::<usize>().ok());
            let line = index.and_then(|i| rows.get(i)).map(|(line, _)| *line);
            let field = pointer.rsplit('/').next().unwrap_or("");
            match line {
                Some(line) => eprintln!(
                    "  {}:{line}: {field}: {}",
                    args.file.display(),
                    error["detail"].as_str().unwrap_or("")
                ),
                None => eprintln!("  {pointer}: {}", error["detail"].as_str().unwrap_or("")),
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} campaign(s) were refused; nothing of them was stored"
    );
    Ok(())
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
