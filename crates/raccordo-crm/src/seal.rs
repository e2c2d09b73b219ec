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
    key: LessSafeKey,
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
            key: LessSafeKey::new(unbound),
            random: SystemRandom::new(),
        })
    }

    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| SealError::BadKey)?;
        Self::from_key(&key)
    }

    /// The key from `RACCORDO_SECRET_KEY` if set, else from `key_file`, created (0600) with
    /// a fresh random key when missing.
    pub fn from_env_or_file(key_file: &Path) -> Result<Self, SealError> {
        if let Ok(text) = std::env::var("RACCORDO_SECRET_KEY") {
            return Self::from_base64(&text);
        }
        match std::fs::read_to_string(key_file) {
            Ok(text) => Self::from_base64(&text),
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

    /// `name` binds the sealed value to the secret it is stored as.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = plain.to_vec();
        self.key
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
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Unsealable)?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut data)
            .map_err(|_| SealError::Unsealable)?;
        Ok(plain.to_vec())
    }
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
