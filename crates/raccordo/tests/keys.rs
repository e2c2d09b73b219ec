//! `raccordo keys rotate` on a real data directory: every stored secret is re-sealed under a
//! new key, the old key no longer opens them, an interrupted rotation is finished by running
//! it again, and a running hub makes it refuse.

mod support;

use std::path::Path;
use std::process::Command;

use raccordo_crm::seal::Sealer;
use raccordo_storage_sqlite::{OpenError, SqliteOptions, SqliteStore};
use support::*;

fn store(dir: &Path) -> SqliteStore {
    // The lock of a store this test has just closed can outlive it for a moment: a child
    // process that another test of this file is starting shares the lock file's open
    // description until it execs (an flock belongs to that description, which fork
    // duplicates). Waits for that, and fails on anything else.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SqliteStore::open(SqliteOptions::new(dir.join("raccordo.db"))) {
            Err(OpenError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            opened => return opened.unwrap(),
        }
    }
}

async fn seed(dir: &Path, sealer: &Sealer, names: &[&str]) {
    let store = store(dir);
    for name in names {
        let sealed = sealer
            .seal(name, format!("token-of-{name}").as_bytes())
            .unwrap();
        store
            .stores()
            .secrets
            .put_secret(name, sealed, Some(123))
            .await
            .unwrap();
    }
    store.stores().log.close().await;
}

async fn opened_by(dir: &Path, sealer: &Sealer, names: &[&str]) -> Vec<bool> {
    let store = store(dir);
    let mut out = Vec::new();
    for name in names {
        let stored = store
            .stores()
            .secrets
            .get_secret(name)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.expires_at_ms, Some(123), "expiry kept");
        out.push(
            sealer
                .open(name, &stored.value)
                .is_ok_and(|plain| plain == format!("token-of-{name}").as_bytes()),
        );
    }
    store.stores().log.close().await;
    out
}

fn rotate(dir: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["keys", "rotate", "--data-dir", dir.to_str().unwrap()])
        .env_remove("RACCORDO_SECRET_KEY")
        .env_remove("RACCORDO_CONFIG")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_reseals_every_secret_and_the_old_key_opens_none() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let key_file = dir.join("secret.key");
    let names = [
        "oauth:hubspot:refresh",
        "oauth:zoho:refresh",
        "oauth:zoho:access",
    ];
    let old = Sealer::from_env_or_file(&key_file).unwrap();
    seed(&dir, &old, &names).await;
    let old_text = std::fs::read_to_string(&key_file).unwrap();

    let out = rotate(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("re-sealed 3 secret(s)"));
    let new_text = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(new_text, old_text, "a new key");
    assert!(!dir.join("secret.key.next").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let new = Sealer::from_base64(&new_text).unwrap();
    assert_eq!(opened_by(&dir, &new, &names).await, [true, true, true]);
    let old_only = Sealer::from_base64(&old_text).unwrap();
    assert_eq!(
        opened_by(&dir, &old_only, &names).await,
        [false, false, false]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_rotation_still_opens_and_is_finished_by_running_it_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let key_file = dir.join("secret.key");
    let old = Sealer::from_env_or_file(&key_file).unwrap();
    // As a rotation killed half-way leaves it: the new key beside the old, one secret
    // re-sealed under it, one not.
    let next_text = Sealer::new_key_text().unwrap();
    std::fs::write(dir.join("secret.key.next"), &next_text).unwrap();
    let next = Sealer::from_base64(&next_text).unwrap();
    seed(&dir, &old, &["a"]).await;
    seed(&dir, &next, &["b"]).await;
    // The hub opens both meanwhile.
    let hub_view = Sealer::from_env_or_file(&key_file).unwrap();
    assert_eq!(opened_by(&dir, &hub_view, &["a", "b"]).await, [true, true]);

    let out = rotate(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        next_text,
        "the same new key"
    );
    assert_eq!(opened_by(&dir, &next, &["a", "b"]).await, [true, true]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_hub_makes_rotation_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &[]);
    let out = rotate(&tmp.path().join("raccordo-data"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop the hub"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
}
