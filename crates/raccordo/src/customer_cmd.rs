//! `raccordo erase` and `raccordo export`: a customer's GDPR rights, through a running hub's
//! admin API (the erasure must reach the hub's live state too, not only its files).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::admin_cmd::{HubConnection, answer};

#[derive(Args)]
pub struct CustomerArgs {
    /// The customer's id as the data names them: a customer id (`id_cliente`) or an
    /// e-mail address
    id: String,
    #[command(flatten)]
    hub: HubConnection,
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    customer: CustomerArgs,
    /// Write the export to this file instead of standard output
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// `<url>/api/v1/customers/<id><tail>`, the id percent-encoded as one path segment.
fn customer_url(args: &CustomerArgs, tail: &str) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(&args.hub.endpoint("/api/v1/customers"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--url cannot be a base URL"))?
        .push(&args.id);
    if !tail.is_empty() {
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("--url cannot be a base URL"))?
            .push(tail);
    }
    Ok(url)
}

fn client() -> anyhow::Result<reqwest::Client> {
    // Both read the whole event log: give them time.
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?)
}

pub async fn erase(args: CustomerArgs) -> anyhow::Result<()> {
    let token = args.hub.admin_token()?;
    let answer = answer(
        client()?
            .delete(customer_url(&args, "")?)
            .bearer_auth(&token),
    )
    .await?;
    println!(
        "customer {} erased (fingerprint {}):",
        args.id,
        answer["customer_fingerprint"].as_str().unwrap_or("")
    );
    for (store, n) in answer["erased"].as_object().into_iter().flatten() {
        println!("  {store}: {n}");
    }
    for (store, why) in answer["kept"].as_object().into_iter().flatten() {
        println!("  kept {store}: {}", why.as_str().unwrap_or(""));
    }
    Ok(())
}

pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let token = args.customer.hub.admin_token()?;
    let answer = answer(
        client()?
            .get(customer_url(&args.customer, "export")?)
            .bearer_auth(&token),
    )
    .await?;
    let text = serde_json::to_string_pretty(&answer)?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, text + "\n")?;
            eprintln!(
                "export of {} written to {}",
                args.customer.id,
                path.display()
            );
        }
        None => println!("{text}"),
    }
    Ok(())
}
