//! Sealing secrets before they reach a store (DESIGN §3 "Security"): ChaCha20-Poly1305 with
//! a random nonce, the secret's name as associated data (a sealed value copied under another
//! name does not open), and a version byte so the scheme can change later.
//!
//! The key comes from `RACCORDO_SECRET_KEY` (base64 of 32 bytes) or from a key file, which
//! is created with mode 0600 on first use. Losing the key loses the stored grants, not data:
//! `raccordo connect` gets new ones.

use std::path::Path;

use base64::Engine;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the secret key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("a sealed secret did not open: wrong key, or the value was altered")]
    Unsealable,
    #[error("could not read or create the key file: {0}")]
    KeyFile(String),
    #[error("no randomness available")]
    Random,
}

pub struct Sealer {
    /// Seals with the first; opens with any (the others are previous keys, kept while a
    /// rotation re-seals what they sealed).
    keys: Vec<LessSafeKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

impl Sealer {
    pub fn from_key(key: &[u8]) -> Result<Self, SealError> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| SealError::BadKey)?;
        Ok(Self {
            keys: vec![LessSafeKey::new(unbound)],
            random: SystemRandom::new(),
        })
    }

    /// Also opens what `previous` sealed (sealing stays with this sealer's own key).
    pub fn with_previous(mut self, previous: Sealer) -> Self {
        self.keys.extend(previous.keys);
        self
    }

    /// A fresh random key, base64 (what a key file holds).
    pub fn new_key_text() -> Result<String, SealError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| SealError::Random)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(key))
    }

    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| SealError::BadKey)?;
        Self::from_key(&key)
    }

    /// The key from `RACCORDO_SECRET_KEY` if set (with `RACCORDO_SECRET_KEY_PREVIOUS`, when
    /// set, still opening what it sealed), else from `key_file`, created (0600) with a fresh
    /// random key when missing. A rotation interrupted before it finished leaves its new key
    /// in `<key_file>.next`: what it sealed opens too.
    pub fn from_env_or_file(key_file: &Path) -> Result<Self, SealError> {
        if let Some(sealer) = Self::from_env()? {
            return Ok(sealer);
        }
        match std::fs::read_to_string(key_file) {
            Ok(text) => {
                let sealer = Self::from_base64(&text)?;
                match std::fs::read_to_string(next_key_file(key_file)) {
                    Ok(next) => Ok(sealer.with_previous(Self::from_base64(&next)?)),
                    Err(_) => Ok(sealer),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| SealError::Random)?;
                let text = base64::engine::general_purpose::STANDARD.encode(key);
                write_private(key_file, &text).map_err(|e| SealError::KeyFile(e.to_string()))?;
                Self::from_key(&key)
            }
            Err(e) => Err(SealError::KeyFile(e.to_string())),
        }
    }

    /// The key from `RACCORDO_SECRET_KEY` (with `RACCORDO_SECRET_KEY_PREVIOUS`, when set,
    /// still opening what it sealed); `None` when it is not set.
    pub fn from_env() -> Result<Option<Self>, SealError> {
        let Ok(text) = std::env::var("RACCORDO_SECRET_KEY") else {
            return Ok(None);
        };
        let sealer = Self::from_base64(&text)?;
        Ok(Some(match std::env::var("RACCORDO_SECRET_KEY_PREVIOUS") {
            Ok(previous) => sealer.with_previous(Self::from_base64(&previous)?),
            Err(_) => sealer,
        }))
    }

    /// `name` binds the sealed value to the secret it is stored as.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = plain.to_vec();
        self.keys[0]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + data.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Unsealable)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(SealError::Unsealable);
        }
        let (nonce, data) = rest.split_at(NONCE_LEN);
        for key in &self.keys {
            let nonce =
                Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Unsealable)?;
            let mut buffer = data.to_vec();
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(name.as_bytes()), &mut buffer) {
                return Ok(plain.to_vec());
            }
        }
        Err(SealError::Unsealable)
    }
}

/// Where a rotation keeps its new key until every secret is re-sealed.
pub fn next_key_file(key_file: &Path) -> std::path::PathBuf {
    let mut name = key_file.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    key_file.with_file_name(name)
}

/// What a rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rotation {
    pub resealed: usize,
    /// Secrets no key opens (sealed under a key that is gone): left as they are.
    pub unopenable: usize,
}

/// Re-seals every stored secret under `sealer`'s own key (it opens them with any of its
/// keys). Idempotent: running it again re-seals under the same key.
pub async fn reseal_all(
    store: &dyn raccordo_core::SecretStore,
    sealer: &Sealer,
) -> Result<Rotation, RotateError> {
    let mut rotation = Rotation::default();
    for name in store.secret_names().await? {
        let Some(stored) = store.get_secret(&name).await? else {
            continue;
        };
        match sealer.open(&name, &stored.value) {
            Ok(plain) => {
                let sealed = sealer.seal(&name, &plain)?;
                store
                    .put_secret(&name, sealed, stored.expires_at_ms)
                    .await?;
                rotation.resealed += 1;
            }
            Err(_) => rotation.unopenable += 1,
        }
    }
    Ok(rotation)
}

/// The secret that tells whether a process's key is the one the store's secrets are sealed
/// with. Nodes sharing a store must all seal with one key; a node with another would fail
/// every token read, one job at a time, instead of refusing to start.
pub const KEY_CHECK: &str = "sealer:key-check";

/// Checks at start that `sealer` opens the store's secrets: the first start seals a known
/// value under [`KEY_CHECK`]; later starts (on any node) must open it. A rotation re-seals it
/// with every other secret.
pub async fn check_key(
    store: &dyn raccordo_core::SecretStore,
    sealer: &Sealer,
) -> Result<(), KeyCheckError> {
    let stored = store
        .get_secret(KEY_CHECK)
        .await
        .map_err(|e| KeyCheckError::Store(e.to_string()))?;
    let stored = match stored {
        Some(stored) => stored,
        None => {
            let sealed = sealer.seal(KEY_CHECK, b"raccordo")?;
            store
                .put_secret(KEY_CHECK, sealed, None)
                .await
                .map_err(|e| KeyCheckError::Store(e.to_string()))?;
            // Read back: another node starting at the same moment may have written its own.
            store
                .get_secret(KEY_CHECK)
                .await
                .map_err(|e| KeyCheckError::Store(e.to_string()))?
                .ok_or_else(|| KeyCheckError::Store("the key check vanished".into()))?
        }
    };
    match sealer.open(KEY_CHECK, &stored.value) {
        Ok(_) => Ok(()),
        Err(SealError::Unsealable) => Err(KeyCheckError::ForeignKey),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    #[error(
        "this secret key does not open the secrets already stored: they were sealed with \
         another key (nodes sharing a store need the same RACCORDO_SECRET_KEY; an embedded hub \
         needs the key file it started with)"
    )]
    ForeignKey,
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the secret store: {0}")]
    Store(String),
}

/// Rotates the key file's key: a new key is written to `<key_file>.next` (or the one an
/// interrupted rotation left there is taken up), every secret is re-sealed under it, then
/// it replaces `key_file`. Killed at any point, the hub still opens every secret (it reads
/// both files) and running this again finishes the job.
pub async fn rotate_key_file(
    store: &dyn raccordo_core::SecretStore,
    key_file: &Path,
) -> Result<Rotation, RotateError> {
    let old = Sealer::from_base64(
        &std::fs::read_to_string(key_file).map_err(|e| RotateError::KeyFile(e.to_string()))?,
    )?;
    let next_file = next_key_file(key_file);
    let next_text = match std::fs::read_to_string(&next_file) {
        Ok(text) => text,
        Err(_) => {
            let text = Sealer::new_key_text()?;
            write_private(&next_file, &text).map_err(|e| RotateError::KeyFile(e.to_string()))?;
            text
        }
    };
    let sealer = Sealer::from_base64(&next_text)?.with_previous(old);
    let rotation = reseal_all(store, &sealer).await?;
    std::fs::rename(&next_file, key_file).map_err(|e| RotateError::KeyFile(e.to_string()))?;
    if let Some(dir) = key_file.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(rotation)
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("the key file: {0}")]
    KeyFile(String),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the secret store: {0}")]
    Store(#[from] raccordo_core::StoreError),
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_under_its_name_and_key() {
        let s = Sealer::from_key(&[7; 32]).unwrap();
        let sealed = s.seal("oauth:hubspot:refresh", b"refresh-token").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"refresh"), "no plain text");
        assert_eq!(
            s.open("oauth:hubspot:refresh", &sealed).unwrap(),
            b"refresh-token"
        );
        assert_eq!(
            s.open("oauth:zoho:refresh", &sealed),
            Err(SealError::Unsealable)
        );
        let other = Sealer::from_key(&[8; 32]).unwrap();
        assert_eq!(
            other.open("oauth:hubspot:refresh", &sealed),
            Err(SealError::Unsealable)
        );
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(
            s.open("oauth:hubspot:refresh", &altered),
            Err(SealError::Unsealable)
        );
        assert_eq!(Sealer::from_key(&[1; 16]).err(), Some(SealError::BadKey));
    }

    #[tokio::test]
    async fn a_key_that_did_not_seal_the_stores_secrets_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = raccordo_storage_sqlite::SqliteStore::open(
            raccordo_storage_sqlite::SqliteOptions::new(dir.path().join("raccordo.db")),
        )
        .unwrap();
        let secrets = store.stores().secrets;
        let first = Sealer::from_key(&[7; 32]).unwrap();
        check_key(secrets.as_ref(), &first).await.unwrap();
        check_key(secrets.as_ref(), &first).await.unwrap();
        let other = Sealer::from_key(&[8; 32]).unwrap();
        assert!(matches!(
            check_key(secrets.as_ref(), &other).await,
            Err(KeyCheckError::ForeignKey)
        ));
        // Mid-rotation (the new key first, the old one still opening): accepted.
        let rotating = Sealer::from_key(&[8; 32]).unwrap().with_previous(first);
        check_key(secrets.as_ref(), &rotating).await.unwrap();
    }

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let a = Sealer::from_env_or_file(&path).unwrap();
        let sealed = a.seal("x", b"y").unwrap();
        let b = Sealer::from_env_or_file(&path).unwrap();
        assert_eq!(b.open("x", &sealed).unwrap(), b"y");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
