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
        RACCORDO_SECRET_KEY_PREVIOUS can go once it has finished. See docs/security.md."
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
    let rotation = if std::env::var_os("RACCORDO_SECRET_KEY").is_some() {
        let sealer = raccordo_crm::seal::Sealer::from_env_or_file(&key_file)?;
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
    Ok(())
}
