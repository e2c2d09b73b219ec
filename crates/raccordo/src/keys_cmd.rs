//! `raccordo keys rotate`: a new key for the secrets the hub keeps sealed (OAuth grants and
//! tokens), every stored secret re-sealed under it. Runs with the hub stopped: the embedded
//! store admits one process at a time, so a running hub makes this refuse rather than race.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new secret key and re-seal every stored secret under it (the hub must be stopped)
    #[command(
        long_about = "Make a new secret key and re-seal every stored secret (OAuth \
        refresh and access tokens) under it, then replace the key file. Stop the hub first: the \
        data directory is locked while it runs. Interrupted, the hub still opens every secret \
        (it reads the key file and the new key left beside it as <key file>.next) and running \
        this again finishes the rotation.\n\n\
        With RACCORDO_SECRET_KEY set instead of a key file, rotate by hand: set \
        RACCORDO_SECRET_KEY_PREVIOUS to the old key and RACCORDO_SECRET_KEY to a new one \
        (32 random bytes, base64), then run this command to re-seal under the new key; \
        RACCORDO_SECRET_KEY_PREVIOUS can go once it has finished. See docs/security.md.\n\n\
        Nodes sharing a store (backend postgres or cluster) always seal with \
        RACCORDO_SECRET_KEY, and keep running: restart each node with the new key in \
        RACCORDO_SECRET_KEY and the old one in RACCORDO_SECRET_KEY_PREVIOUS, run this once \
        (with the same two variables and --config), then drop RACCORDO_SECRET_KEY_PREVIOUS \
        from the nodes. See docs/deployment.md."
    )]
    Rotate(RotateArgs),
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The hub's config file (for its data directory and database path)
    #[arg(long, env = "RACCORDO_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory, when there is no config file
    #[arg(long, default_value = "raccordo-data")]
    data_dir: PathBuf,
}

pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    let KeysCommand::Rotate(args) = command;
    if let Some(path) = &args.config {
        let built = crate::config::Config::load(path).map_err(|problems| {
            crate::print_problems(&problems);
            anyhow::anyhow!("the config file {} has problems", path.display())
        })?;
        if built.config.storage.backend.is_shared() {
            return rotate_shared(&built).await;
        }
    }
    let (data_dir, database) = match &args.config {
        Some(path) => {
            let built = crate::config::Config::load(path).map_err(|problems| {
                crate::print_problems(&problems);
                anyhow::anyhow!("the config file {} has problems", path.display())
            })?;
            (
                built.config.server.data_dir.clone(),
                built.config.database_path(),
            )
        }
        None => (args.data_dir.clone(), args.data_dir.join("raccordo.db")),
    };
    anyhow::ensure!(
        database.exists(),
        "no database at {}: nothing to rotate",
        database.display()
    );
    let store = raccordo_storage_sqlite::SqliteStore::open(
        raccordo_storage_sqlite::SqliteOptions::new(&database),
    )
    .map_err(|e| anyhow::anyhow!("{e} (stop the hub before rotating its key)"))?;
    let secrets = store.stores().secrets.clone();
    let key_file = data_dir.join("secret.key");
    let rotation = if let Some(sealer) = raccordo_crm::seal::Sealer::from_env()? {
        raccordo_crm::seal::reseal_all(secrets.as_ref(), &sealer).await?
    } else {
        anyhow::ensure!(
            key_file.exists(),
            "no key file at {}: no secret was ever sealed here",
            key_file.display()
        );
        raccordo_crm::seal::rotate_key_file(secrets.as_ref(), &key_file).await?
    };
    store.stores().log.close().await;
    report(&rotation);
    Ok(())
}

/// On a store shared by nodes the key is `RACCORDO_SECRET_KEY`, the same on every node, and
/// the nodes keep running: first every node is restarted with the new key in
/// `RACCORDO_SECRET_KEY` and the old one in `RACCORDO_SECRET_KEY_PREVIOUS` (they then open
/// both), then this re-seals every secret under the new key, then `..._PREVIOUS` can go.
/// A token a node refreshes meanwhile is sealed under the new key already; one re-sealed
/// here over a fresher copy is at worst an access token refreshed once more.
async fn rotate_shared(built: &crate::config::Built) -> anyhow::Result<()> {
    let Some(sealer) = raccordo_crm::seal::Sealer::from_env()? else {
        anyhow::bail!(
            "nodes sharing a store seal with RACCORDO_SECRET_KEY: set it to the new key and \
             RACCORDO_SECRET_KEY_PREVIOUS to the old one (as on the nodes), then run this again"
        );
    };
    if std::env::var_os("RACCORDO_SECRET_KEY_PREVIOUS").is_none() {
        eprintln!(
            "RACCORDO_SECRET_KEY_PREVIOUS is not set: only what the current key opens is re-sealed"
        );
    }
    let (stores, _backend) = crate::hub::open_backend(built).await?;
    let rotation = raccordo_crm::seal::reseal_all(stores.secrets.as_ref(), &sealer).await?;
    stores.log.close().await;
    report(&rotation);
    Ok(())
}

fn report(rotation: &raccordo_crm::seal::Rotation) {
    println!(
        "re-sealed {} secret(s) under the new key{}",
        rotation.resealed,
        if rotation.unopenable > 0 {
            format!(
                "; {} could not be opened with the old key and were left as they are (connect again to replace them)",
                rotation.unopenable
            )
        } else {
            String::new()
        }
    );
}
