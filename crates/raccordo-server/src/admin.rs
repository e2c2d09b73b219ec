//! Admin bearer tokens with scopes, for the operator APIs.

use std::collections::HashSet;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::Problem;
use crate::settings::{AdminTokenConfig, Scope};

struct Token {
    name: String,
    digest: [u8; 32],
    scopes: HashSet<Scope>,
}

/// The configured tokens, kept as SHA-256 digests and compared in constant time.
pub struct AdminTokens(Vec<Token>);

impl AdminTokens {
    pub fn new(tokens: &[AdminTokenConfig]) -> Self {
        Self(
            tokens
                .iter()
                .map(|t| Token {
                    name: t.name.clone(),
                    digest: Sha256::digest(t.token.as_bytes()).into(),
                    scopes: t.scopes.iter().copied().collect(),
                })
                .collect(),
        )
    }

    /// Checks `Authorization: Bearer` for a token holding `scope` (`admin` implies `read`).
    /// Returns the token's name for logs.
    pub fn require(&self, headers: &HeaderMap, scope: Scope) -> Result<&str, Problem> {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(presented) = presented else {
            let mut p = Problem::new(
                401,
                "missing-credentials",
                "Credentials required",
                "send an admin token as `Authorization: Bearer <token>`",
            );
            p.www_authenticate = Some("Bearer");
            return Err(p);
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for token in &self.0 {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        let Some(token) = found else {
            let mut p = Problem::new(
                401,
                "invalid-credentials",
                "Credentials not accepted",
                "the admin token is not known",
            );
            p.www_authenticate = Some("Bearer");
            return Err(p);
        };
        if token.scopes.contains(&scope) || token.scopes.contains(&Scope::Admin) {
            Ok(&token.name)
        } else {
            Err(Problem::new(
                403,
                "insufficient-scope",
                "Insufficient scope",
                format!(
                    "this route needs the `{}` scope",
                    match scope {
                        Scope::Read => "read",
                        Scope::Admin => "admin",
                    }
                ),
            ))
        }
    }
}
