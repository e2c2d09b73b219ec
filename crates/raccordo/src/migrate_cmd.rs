//! `raccordo migrate`: an embedded installation moved onto PostgreSQL, for nodes running with
//! `backend = "postgres"` or `"cluster"`.
//!
//! What moves: the event log with its sequence numbers (so consumer offsets, the stream
//! relay's position and window checkpoints stay valid), the live dedup claims and delivery
//! ids (a sender's retry after the move is still answered as a duplicate), and every state
//! table — key-value entries, id mappings, secrets, runs, offsets, alerts, costs, window
//! results and checkpoints, refused requests, the audit log, pending work and dead letters.
//! Secrets are re-sealed under the nodes' `RACCORDO_SECRET_KEY`. Leases and rate-limit
//! buckets stay behind (they last seconds to minutes and are rebuilt at once).
//!
//! The embedded hub must be stopped (its data directory is locked while it runs), and the
//! target schema must be empty: a migration cut short is started again on a fresh schema,
//! never continued over a half-filled one.

use std::path::PathBuf;

use clap::Args;
use raccordo_core::migrate::STATE_TABLES;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The embedded hub's config file (for its data directory); stop that hub first
    #[arg(long)]
    from: Option<PathBuf>,
    /// The embedded hub's data directory, when it ran without a config file
    #[arg(long, default_value = "raccordo-data", conflicts_with = "from")]
    from_data_dir: PathBuf,
    /// The config file of the nodes to move to (`[storage] backend = "postgres"` or
    /// `"cluster"`)
    #[arg(long, short)]
    config: PathBuf,
}

/// Events copied per transaction.
const PAGE: usize = 5_000;

fn load(path: &std::path::Path) -> anyhow::Result<crate::config::Built> {
    crate::config::Config::load(path).map_err(|problems| {
        crate::print_problems(&problems);
        anyhow::anyhow!("the config file {} has problems", path.display())
    })
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let target = load(&args.config)?;
    anyhow::ensure!(
        target.config.storage.backend.uses_postgres(),
        "{} is not a config for nodes on PostgreSQL: set [storage] backend = \"postgres\" or \"cluster\"",
        args.config.display()
    );
    let (data_dir, database) = match &args.from {
        Some(path) => {
            let source = load(path)?;
            anyhow::ensure!(
                !source.config.storage.backend.is_shared(),
                "{} is not an embedded hub's config",
                path.display()
            );
            (
                source.config.server.data_dir.clone(),
                source.config.database_path(),
            )
        }
        None => (
            args.from_data_dir.clone(),
            args.from_data_dir.join("raccordo.db"),
        ),
    };
    anyhow::ensure!(
        database.exists(),
        "no embedded store at {}",
        database.display()
    );

    let options = target.config.storage.postgres.options();
    let into = raccordo_storage_postgres::PgImport::connect(&options).await?;
    let mut filled = Vec::new();
    if into.head().await? > 0 {
        filled.push("events".to_string());
    }
    for table in STATE_TABLES {
        if into.count(table).await? > 0 {
            filled.push(table.to_string());
        }
    }
    anyhow::ensure!(
        filled.is_empty(),
        "the schema `{}` already holds data ({}): migrate into an empty schema (a new one, or \
         drop this one) before any node has started on it",
        options.schema,
        filled.join(", ")
    );

    let store = raccordo_storage_sqlite::SqliteStore::open(
        raccordo_storage_sqlite::SqliteOptions::new(&database),
    )
    .map_err(|e| anyhow::anyhow!("{e} (stop the embedded hub before migrating it)"))?;
    let result = copy(&store, &into, &data_dir, &options).await;
    store.stores().log.close().await;
    result
}

async fn copy(
    store: &raccordo_storage_sqlite::SqliteStore,
    into: &raccordo_storage_postgres::PgImport,
    data_dir: &std::path::Path,
    options: &raccordo_storage_postgres::PostgresOptions,
) -> anyhow::Result<()> {
    let log = store.event_log();
    // 1. The log, a page per transaction, with its own sequence numbers.
    let mut after = 0;
    let mut events = 0usize;
    loop {
        let page = log.export_events(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        events += page.len();
        into.events(&page).await?;
    }
    println!("events: {events} copied (log head {after})");

    // 2. The dedup claims still live, so a sender's retry after the move is a duplicate.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let claims = log.export_claims(now).await?;
    for chunk in claims.claims.chunks(10_000) {
        into.claims(chunk).await?;
    }
    for chunk in claims.deliveries.chunks(1_000) {
        into.deliveries(chunk).await?;
    }
    println!(
        "dedup claims: {} business key(s), {} delivery id(s)",
        claims.claims.len(),
        claims.deliveries.len()
    );

    // 3. The state tables, row for row.
    for table in STATE_TABLES {
        let rows = store
            .export_table(table)
            .map_err(|e| anyhow::anyhow!("reading {table}: {e}"))?;
        let copied = into.rows(&rows).await?;
        anyhow::ensure!(
            copied as usize == rows.rows.len(),
            "{table}: {} row(s) read, {copied} written",
            rows.rows.len()
        );
        if copied > 0 {
            println!("{table}: {copied} row(s)");
        }
    }

    // 4. Secrets: sealed on the embedded hub with its key file (or RACCORDO_SECRET_KEY);
    //    the nodes all seal with RACCORDO_SECRET_KEY.
    if into.count("secrets").await? > 0 {
        let Some(sealer) = raccordo_crm::seal::Sealer::from_env()? else {
            anyhow::bail!(
                "the store holds sealed secrets: set RACCORDO_SECRET_KEY to the key the nodes \
                 will run with (32 random bytes, base64), then migrate again into an empty schema"
            );
        };
        let key_file = data_dir.join("secret.key");
        let sealer = match std::fs::read_to_string(&key_file) {
            Ok(text) => sealer.with_previous(raccordo_crm::seal::Sealer::from_base64(&text)?),
            Err(_) => sealer,
        };
        let secrets = raccordo_storage_postgres::PgStores::open(options)
            .await?
            .secrets;
        let rotation = raccordo_crm::seal::reseal_all(secrets.as_ref(), &sealer).await?;
        println!(
            "secrets: {} re-sealed under RACCORDO_SECRET_KEY{}",
            rotation.resealed,
            if rotation.unopenable > 0 {
                format!(
                    "; {} opened with neither key and left as they are (connect the CRM again)",
                    rotation.unopenable
                )
            } else {
                String::new()
            }
        );
    }

    // 5. What the target holds now, against the source.
    anyhow::ensure!(
        into.count("events").await? as usize == events && into.head().await? == after,
        "the target's log does not hold what was copied"
    );
    println!(
        "done: start the nodes with this config; the embedded data directory is left as it was"
    );
    Ok(())
}
