//! `raccordo demo`: the hub on the embedded default, the three sandboxes, and traffic.
//!
//! Everything runs in this process on loopback. The traffic: signed conversion events to the
//! hub (with a few duplicates and invalid ones, so the dashboard has something to show),
//! contact and company changes on both CRM sandboxes, and support tickets that run the
//! shipped ticket flow (`examples/support-tickets`): the AI sandbox classifies each, the hub
//! writes the result on the HubSpot contact and tells a loopback "team inbox" about unhappy
//! customers. The hub syncs the two CRM sandboxes: HubSpot's signed webhooks and the Zoho
//! notification channel the hub registers itself arrive at `/webhooks/hubspot` and
//! `/webhooks/zoho`, exactly as they would from the real services.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use raccordo_sandbox::{Product, Running, SandboxConfig};
use serde_json::{Value, json};

#[derive(Args)]
pub struct DemoArgs {
    /// Port of the hub (the sandboxes use 8481-8483, or free ports when those are taken)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Where the hub keeps its data
    #[arg(long, default_value = "raccordo-demo")]
    data_dir: PathBuf,
    /// Conversion events per second
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Stop by itself after this long (default: run until Ctrl-C)
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

#[derive(Default)]
struct Counters {
    hubspot_changes: AtomicU64,
    zoho_changes: AtomicU64,
    tickets: AtomicU64,
    team_alerts: AtomicU64,
    errors: AtomicU64,
}

/// The shipped ticket flow, run by the demo as a user would run it.
const TICKET_EXAMPLE: &str = include_str!("../../../examples/support-tickets/raccordo.toml");
const TICKET_SCHEMA: &str = include_str!("../../../examples/support-tickets/ticket.schema.json");
const TICKETS_API_KEY: &str = "demo-tickets-api-key-0001";

/// Customers who write tickets; the demo creates them in HubSpot first.
const CUSTOMERS: [(&str, &str, &str); 4] = [
    ("Chiara", "Ferrari", "chiara.ferrari@cantinedemo.it"),
    ("Luca", "Esposito", "luca.esposito@oleificiodemo.it"),
    ("Giulia", "Romano", "giulia.romano@pastificiodemo.it"),
    ("Marco", "Colombo", "marco.colombo@ceramichedemo.it"),
];

/// Reads the ticket example with the sandboxes' addresses and credentials for its `${…}`,
/// and takes its source, AI providers and flow into `config`.
fn add_ticket_flow(
    config: &mut crate::config::Config,
    hubspot: &Running,
    ai: &Running,
    team_inbox: &str,
    admin_token: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.server.data_dir)?;
    std::fs::write(
        config.server.data_dir.join("ticket.schema.json"),
        TICKET_SCHEMA,
    )?;
    let env = |name: &str| -> Option<String> {
        Some(match name {
            "TICKETS_API_KEY" => TICKETS_API_KEY.into(),
            "ADMIN_TOKEN" => admin_token.into(),
            "HUBSPOT_URL" => hubspot.base_url.clone(),
            "HUBSPOT_TOKEN" => credential(hubspot, "token").into(),
            "HUBSPOT_CLIENT_SECRET" => credential(hubspot, "client_secret").into(),
            "AI_BASE_URL" => format!("{}/v1", ai.base_url),
            "AI_API_KEY" => credential(ai, "api_key").into(),
            "AI_MODEL" => "raccordo-sandbox-1".into(),
            "SANDBOX_HOST" => "127.0.0.1".into(),
            "SLACK_WEBHOOK_URL" => team_inbox.into(),
            _ => return None,
        })
    };
    let example = crate::config::Config::from_toml(
        TICKET_EXAMPLE,
        "examples/support-tickets/raccordo.toml",
        &config.server.data_dir,
        env,
    )
    .map_err(|problems| {
        anyhow::anyhow!(
            "the ticket example does not load: {}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?
    .config;
    config.sources.extend(example.sources);
    config.ai = example.ai;
    config.flows = example.flows;
    Ok(())
}

/// A loopback stand-in for the team's Slack channel: it counts what the flow posts.
async fn team_inbox(counters: Arc<Counters>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/slack",
        axum::routing::post(move || {
            let counters = counters.clone();
            async move {
                counters.team_alerts.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

const TICKETS: [&str; 8] = [
    "Buongiorno, l'ordine 4821 è in ritardo di una settimana e nessuno risponde al telefono. Voglio un rimborso.",
    "Grazie per l'assistenza di ieri, tutto perfetto e il tecnico è stato gentilissimo.",
    "Il portale clienti non funziona da stamattina: errore 500 quando provo a scaricare la fattura.",
    "Vorrei sapere se il piano Business include anche gli utenti esterni.",
    "Ottimo servizio, consiglierò la vostra azienda ai colleghi.",
    "La spedizione è arrivata con il pacco danneggiato, chiedo la sostituzione del prodotto.",
    "Come posso cambiare l'indirizzo di fatturazione della mia azienda?",
    "Terzo reclamo in un mese: l'app è lentissima e si blocca continuamente.",
];

async fn start_sandbox(
    product: Product,
    webhook_url: Option<String>,
    seed: u64,
) -> anyhow::Result<Running> {
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut config = SandboxConfig::new(product, loopback(product.default_port()));
    config.webhook_url = webhook_url;
    config.seed = seed;
    // The same grant on every run, so the one the hub stored in an earlier demo still works.
    config.refresh_token = Some("1000.raccordo-demo-refresh-token".into());
    match raccordo_sandbox::start(config.clone()).await {
        Ok(r) => Ok(r),
        Err(_) => {
            config.listen = loopback(0);
            raccordo_sandbox::start(config).await
        }
    }
}

fn credential<'a>(r: &'a Running, name: &str) -> &'a str {
    r.credentials
        .iter()
        .find(|(k, _)| *k == name)
        .map_or("", |(_, v)| v.as_str())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // The hub's address must be known before the sandboxes start: HubSpot's webhooks and
    // the Zoho channel point at it.
    let port = if args.port == 0 {
        std::net::TcpListener::bind(("127.0.0.1", 0))?
            .local_addr()?
            .port()
    } else {
        args.port
    };
    let public_url = format!("http://127.0.0.1:{port}");
    let hubspot = start_sandbox(
        Product::HubSpot,
        Some(format!("{public_url}/webhooks/hubspot")),
        1,
    )
    .await?;
    let zoho = start_sandbox(Product::Zoho, None, 2).await?;
    let ai = start_sandbox(Product::Ai, None, 3).await?;

    // The hub, configured like a config-less `raccordo serve` in its own directory, plus
    // the two CRM sandboxes as its CRMs.
    let mut config = crate::config::Config::default();
    config.server.data_dir = args.data_dir.clone();
    config.log.level = "warn".into();
    config.log.format = raccordo_server::settings::LogFormat::Pretty;
    let (credentials, _) =
        crate::credentials::Credentials::load_or_create(&config.server.data_dir)?;
    credentials.apply(&mut config);
    config.crm = raccordo_crm::CrmConfig {
        public_url: Some(public_url.clone()),
        hubspot: Some(raccordo_crm::HubSpotConfig {
            base_url: hubspot.base_url.clone(),
            access_token: Some(credential(&hubspot, "token").to_string()),
            client_id: None,
            client_secret: credential(&hubspot, "client_secret").to_string(),
            refresh_token: None,
            burst_per_10s: 190,
            daily: None,
            search_per_s: 4,
            timeout: Duration::from_secs(30),
            authorize_url: format!("{}/oauth/authorize", hubspot.base_url),
            scopes: raccordo_crm::config::default_hubspot_scopes(),
        }),
        zoho: Some(raccordo_crm::ZohoConfig {
            base_url: zoho.base_url.clone(),
            token_url: format!("{}/oauth/v2/token", zoho.base_url),
            client_id: credential(&zoho, "client_id").to_string(),
            client_secret: credential(&zoho, "client_secret").to_string(),
            refresh_token: Some(credential(&zoho, "refresh_token").to_string()),
            channel_token: format!("demo-channel-{:016x}", rand::random::<u64>()),
            channel_id: 1_000_000_001,
            credits_per_day: 50_000,
            concurrency: 10,
            timeout: Duration::from_secs(30),
            authorize_url: format!("{}/oauth/v2/auth", zoho.base_url),
            scopes: raccordo_crm::config::default_zoho_scopes(),
        }),
    };
    config.sync.poll_every = Duration::from_secs(30);
    // The sandboxes and the team inbox listen on loopback over plain http: the demo lets the
    // hub call them there, and nowhere else internal.
    config.outbound = raccordo_outbound::OutboundConfig {
        allow_internal: vec!["127.0.0.1".into()],
        allow_http: vec!["127.0.0.1".into()],
    };
    let counters = Arc::new(Counters::default());
    let inbox = team_inbox(counters.clone()).await?;
    add_ticket_flow(
        &mut config,
        &hubspot,
        &ai,
        &format!("http://{inbox}/slack"),
        &credentials.admin_token,
    )?;
    let mut problems = Vec::new();
    let (sources, flows) =
        config.build(&mut |key, message| problems.push(format!("{key}: {message}")));
    anyhow::ensure!(
        problems.is_empty(),
        "built-in defaults are invalid: {problems:?}"
    );
    raccordo_server::telemetry::init_logging(&config.log);
    let hub = crate::hub::Hub::bind(
        crate::config::Built {
            config,
            sources,
            flows,
        },
        Some(SocketAddr::from(([127, 0, 0, 1], port))),
    )
    .await?;
    let hub_addr = hub.local_addr()?;
    let (stop_hub, hub_stopped) = tokio::sync::oneshot::channel::<()>();
    let hub_task = tokio::spawn(hub.run(async {
        let _ = hub_stopped.await;
    }));

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut traffic = tokio::task::JoinSet::new();
    // Conversion events, signed with the hub's webhook secret.
    traffic.spawn({
        let options = raccordo_loadgen::Options {
            urls: vec![format!("http://{hub_addr}/api/v1/eventi/conversione")],
            auth: raccordo_loadgen::Auth::StandardWebhooks(credentials.webhook_secret.clone()),
            mode: raccordo_loadgen::Mode::Open {
                rate: args.rate,
                max_in_flight: 64,
            },
            duration: Duration::from_secs(365 * 86_400),
            max_requests: None,
            batch_size: 1,
            duplicates: 0.03,
            retries: 0.0,
            invalid: 0.02,
            seed: rand_u32() as u64,
            insight: None,
            timeline: None,
            ca_pem: None,
        };
        async move {
            let _ = raccordo_loadgen::run(options).await;
        }
    });
    traffic.spawn(hubspot_traffic(
        client.clone(),
        hubspot.base_url.clone(),
        credential(&hubspot, "token").to_string(),
        counters.clone(),
    ));
    traffic.spawn(zoho_traffic(
        client.clone(),
        zoho.base_url.clone(),
        [
            credential(&zoho, "client_id"),
            credential(&zoho, "client_secret"),
            credential(&zoho, "refresh_token"),
        ]
        .map(String::from),
        counters.clone(),
    ));
    traffic.spawn(ticket_traffic(
        client.clone(),
        hubspot.base_url.clone(),
        credential(&hubspot, "token").to_string(),
        format!("http://{hub_addr}/webhooks/in/tickets"),
        counters.clone(),
    ));

    println!(
        "raccordo demo: everything runs on loopback; Ctrl-C stops it.\n\n\
         Dashboard:     http://{hub_addr}/#token={admin}\n\
         Events API:    curl -s 'http://{hub_addr}/api/v1/events?limit=5' -H 'authorization: Bearer {admin}'\n\
         Metrics API:   curl -s 'http://{hub_addr}/api/v1/metrics?dimension=canale' -H 'authorization: Bearer {admin}'\n\
         Ticket flow:   raccordo flows runs --url http://{hub_addr} --token {admin}\n\
         Data:          {data} (SQLite)\n\n{hs}\n{zo}\n{ai}",
        admin = credentials.admin_token,
        data = args.data_dir.display(),
        hs = hubspot.banner(),
        zo = zoho.banner(),
        ai = ai.banner(),
    );

    let status = {
        let (client, counters, admin) = (
            client.clone(),
            counters.clone(),
            credentials.admin_token.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                println!("{}", summary(&client, hub_addr, &admin, &counters).await);
            }
        })
    };

    match args.duration {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = raccordo_server::shutdown_signal() => {}
            }
        }
        None => raccordo_server::shutdown_signal().await,
    }
    println!("stopping: traffic, sandboxes, then the hub (draining what it accepted)");
    status.abort();
    traffic.shutdown().await;
    println!(
        "summary: {}",
        summary(&client, hub_addr, &credentials.admin_token, &counters).await
    );
    hubspot.stop().await;
    zoho.stop().await;
    ai.stop().await;
    let _ = stop_hub.send(());
    hub_task.await??;
    println!("stopped");
    Ok(())
}

/// One line of what happened so far: the hub's own counts and the traffic's.
async fn summary(
    client: &reqwest::Client,
    hub: SocketAddr,
    admin: &str,
    counters: &Counters,
) -> String {
    let health: Value = match client
        .get(format!("http://{hub}/api/v1/ingest/health"))
        .bearer_auth(admin)
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    };
    let source = &health["sources"][0];
    let prometheus = match client.get(format!("http://{hub}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let decisions = |decision: &str| -> u64 {
        prometheus
            .lines()
            .filter(|l| {
                l.starts_with("raccordo_sync_decisions_total")
                    && l.contains(&format!("decision=\"{decision}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let runs = |status: &str| -> u64 {
        prometheus
            .lines()
            .filter(|l| {
                l.starts_with("raccordo_flow_runs_total")
                    && l.contains(&format!("status=\"{status}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "events accepted {} duplicates {} rejected {} | crm changes: hubspot {}, zoho {} | sync: written {}, in sync {}, not hot {}, failed {} | tickets {}: flows succeeded {}, failed {}, team alerts {}{}",
        source["accepted"],
        source["duplicates"],
        source["rejected"],
        c(&counters.hubspot_changes),
        c(&counters.zoho_changes),
        decisions("write"),
        decisions("in_sync"),
        decisions("not_hot"),
        decisions("failed"),
        c(&counters.tickets),
        runs("succeeded"),
        runs("failed"),
        c(&counters.team_alerts),
        match c(&counters.errors) {
            0 => String::new(),
            e => format!(" | traffic errors {e}"),
        }
    )
}

fn rand_u32() -> u32 {
    rand::random()
}

fn person(n: u64) -> (String, String, String) {
    let first = raccordo_sandbox::seed::FIRST_NAMES[(n as usize * 7) % 24];
    let last = raccordo_sandbox::seed::LAST_NAMES[(n as usize * 11) % 24];
    let email = format!(
        "{}.{}.demo{}@example.it",
        first.to_lowercase(),
        last.to_lowercase().replace(' ', ""),
        n
    );
    (first.to_string(), last.to_string(), email)
}

/// Creates contacts and updates them (a property change each), about one change a second.
async fn hubspot_traffic(
    client: reqwest::Client,
    base: String,
    token: String,
    counters: Arc<Counters>,
) {
    let run = rand_u32() as u64;
    let mut created: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1200));
    for n in 0u64.. {
        tick.tick().await;
        if n % 5 == 4
            && let Some(contact) = created.last()
        {
            // Now and then a company, associated with the newest contact.
            let name = format!("Cantine Demo {} S.r.l.", run * 1000 + n);
            // Every third company lacks its web domain, the field companies are matched by:
            // the sync refuses it, and it shows up in the dead-letter queue and the digest.
            let mut properties = json!({ "name": name, "city": "Verona" });
            if n % 3 != 0 {
                properties["domain"] = json!(format!("cantine-demo-{}.it", run * 1000 + n));
            }
            let company = client
                .post(format!("{base}/crm/v3/objects/companies"))
                .bearer_auth(&token)
                .json(&json!({ "properties": properties }))
                .send()
                .await;
            let id = match company {
                Ok(r) if r.status() == reqwest::StatusCode::CREATED => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["id"].as_str().map(String::from)),
                _ => None,
            };
            let Some(id) = id else {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let linked = client
                .put(format!(
                    "{base}/crm/v4/objects/contacts/{contact}/associations/default/companies/{id}"
                ))
                .bearer_auth(&token)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            counters
                .hubspot_changes
                .fetch_add(if linked { 2 } else { 1 }, Ordering::Relaxed);
            continue;
        }
        let request = if n % 3 == 2 && !created.is_empty() {
            let id = &created[(n as usize / 3) % created.len()];
            let stages = [
                "lead",
                "marketingqualifiedlead",
                "salesqualifiedlead",
                "opportunity",
                "customer",
            ];
            let stage = stages[(n as usize / 3) % 5];
            client
                .patch(format!("{base}/crm/v3/objects/contacts/{id}"))
                .json(&json!({ "properties": { "lifecyclestage": stage } }))
        } else {
            let (first, last, email) = person(run * 1000 + n);
            let city = raccordo_sandbox::seed::CITIES[(n as usize) % 16];
            client.post(format!("{base}/crm/v3/objects/contacts")).json(&json!({ "properties": { "email": email, "firstname": first, "lastname": last, "city": city } }))
        };
        match request.bearer_auth(&token).send().await {
            Ok(r) if r.status().is_success() => {
                counters.hubspot_changes.fetch_add(1, Ordering::Relaxed);
                if r.status() == reqwest::StatusCode::CREATED
                    && let Ok(v) = r.json::<Value>().await
                    && let Some(id) = v["id"].as_str()
                {
                    created.push(id.to_string());
                }
            }
            _ => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Gets a token like the SDK does, then inserts contacts (every other one hot enough for
/// HubSpot) and edits them.
async fn zoho_traffic(
    client: reqwest::Client,
    base: String,
    oauth: [String; 3],
    counters: Arc<Counters>,
) {
    let [client_id, client_secret, refresh_token] = oauth;
    let token: Option<String> = async {
        let v: Value = client
            .post(format!("{base}/oauth/v2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
                raccordo_sandbox::encode(&client_id),
                raccordo_sandbox::encode(&client_secret),
                raccordo_sandbox::encode(&refresh_token)
            ))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["access_token"].as_str().map(String::from)
    }
    .await;
    let Some(token) = token else {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let auth = format!("Zoho-oauthtoken {token}");
    let run = rand_u32() as u64;
    let mut created: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1500));
    for n in 0u64.. {
        tick.tick().await;
        let request = if n % 3 == 2 && !created.is_empty() {
            let id = &created[(n as usize / 3) % created.len()];
            let city = raccordo_sandbox::seed::CITIES[(n as usize * 5) % 16];
            client
                .put(format!("{base}/crm/v8/Contacts/{id}"))
                .json(&json!({ "data": [{ "Mailing_City": city }] }))
        } else {
            let (first, last, email) = person(run * 1000 + n + 500);
            let stage = ["Lead", "Sales Qualified Lead"][n as usize % 2];
            client.post(format!("{base}/crm/v8/Contacts")).json(&json!({ "data": [{ "First_Name": first, "Last_Name": last, "Email": email, "Lifecycle_Stage": stage }], "trigger": [] }))
        };
        match request.header("authorization", &auth).send().await {
            Ok(r) if r.status().is_success() => {
                counters.zoho_changes.fetch_add(1, Ordering::Relaxed);
                if r.status() == reqwest::StatusCode::CREATED
                    && let Ok(v) = r.json::<Value>().await
                    && let Some(id) = v["data"][0]["details"]["id"].as_str()
                {
                    created.push(id.to_string());
                }
            }
            _ => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Creates the ticket writers in HubSpot, then posts a support ticket from one of them to
/// the hub every three seconds.
async fn ticket_traffic(
    client: reqwest::Client,
    hubspot: String,
    token: String,
    tickets_url: String,
    counters: Arc<Counters>,
) {
    for (first, last, email) in CUSTOMERS {
        let created = client
            .post(format!("{hubspot}/crm/v3/objects/contacts"))
            .bearer_auth(&token)
            .json(
                &json!({ "properties": { "email": email, "firstname": first, "lastname": last } }),
            )
            .send()
            .await;
        if !created
            .is_ok_and(|r| r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT)
        {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let run = rand_u32();
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    for n in 0usize.. {
        tick.tick().await;
        let (_, _, email) = CUSTOMERS[n % CUSTOMERS.len()];
        let ticket = json!({
            "ticket_id": format!("T-{run}-{n}"),
            "email": email,
            "message": TICKETS[n % TICKETS.len()],
        });
        match client
            .post(&tickets_url)
            .header("x-api-key", TICKETS_API_KEY)
            .json(&ticket)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                counters.tickets.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
