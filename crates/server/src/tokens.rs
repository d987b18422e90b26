//! etcd's simple tokens: opaque random strings a member maps to a user.
//!
//! A token is made by the member that proposes an `Authenticate` entry; the
//! log carries only its SHA-256 digest, and every member that applies the
//! entry learns that the digest stands for that user. So a token works on
//! every member, and keeps working when the master changes. Each member
//! forgets a token [`Tunables::auth_token_ttl`] after it was last used (etcd's
//! `--auth-token-ttl`), when its user is deleted or changes password, when
//! auth is disabled, and when it installs a snapshot (it cannot tell then
//! which tokens the entries it skipped voided). A restarted member knows again
//! the tokens whose entries it replays from its log, not those its newest
//! snapshot already covers. A client whose token is forgotten gets `invalid
//! auth token` and authenticates again, as etcd's clients do by themselves.
//!
//! [`Tunables::auth_token_ttl`]: crate::config::Tunables::auth_token_ttl

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use synod_kv::{AuthEffect, TOKEN_DIGEST_BYTES};

use crate::node::lock;

/// Most tokens a member holds; at the bound, registering one forgets the
/// token closest to expiry. Each costs about 100 bytes.
pub const TOKENS_MAX: usize = 65_536;
/// Random bytes in a token (hex-encoded, so a token is twice as many characters).
const TOKEN_RANDOM_BYTES: usize = 16;

/// The SHA-256 of a token, as the log carries it.
pub fn digest(token: &str) -> [u8; TOKEN_DIGEST_BYTES] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh token from the operating system's random source.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut random = [0u8; TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut random)?;
    Ok(random.iter().map(|byte| format!("{byte:02x}")).collect())
}

struct Held {
    user: String,
    expires: Instant,
}

/// One member's tokens, by digest.
#[derive(Debug)]
pub struct TokenKeeper {
    ttl: Duration,
    tokens: Mutex<HashMap<[u8; TOKEN_DIGEST_BYTES], Held>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Held").field("user", &self.user).finish()
    }
}

impl TokenKeeper {
    /// An empty keeper whose tokens live `ttl` past their last use.
    pub fn new(ttl: Duration) -> TokenKeeper {
        TokenKeeper {
            ttl,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers that `digest` stands for `user`.
    pub fn register(&self, digest: [u8; TOKEN_DIGEST_BYTES], user: &str) {
        let now = Instant::now();
        let mut tokens = lock(&self.tokens);
        if tokens.len() >= TOKENS_MAX && !tokens.contains_key(&digest) {
            tokens.retain(|_, held| held.expires > now);
            if tokens.len() >= TOKENS_MAX {
                let soonest = tokens
                    .iter()
                    .min_by_key(|(_, held)| held.expires)
                    .map(|(digest, _)| *digest);
                if let Some(soonest) = soonest {
                    tokens.remove(&soonest);
                }
            }
        }
        let held = Held {
            user: user.to_string(),
            expires: now + self.ttl,
        };
        tokens.insert(digest, held);
    }

    /// The user a token stands for, if it is known and not expired; using it
    /// extends its life.
    pub fn user_of(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let digest = digest(token);
        let mut tokens = lock(&self.tokens);
        let held = tokens.get_mut(&digest)?;
        if held.expires <= now {
            tokens.remove(&digest);
            return None;
        }
        held.expires = now + self.ttl;
        Some(held.user.clone())
    }

    /// Acts on what an applied auth request asks of the keepers.
    pub fn observe(&self, effect: &AuthEffect) {
        match effect {
            AuthEffect::TokenIssued { user, token_digest } => self.register(*token_digest, user),
            AuthEffect::UserInvalidated { user } => lock(&self.tokens).retain(|_, held| held.user != *user),
            AuthEffect::AllInvalidated => self.clear(),
        }
    }

    /// Forgets every token.
    pub fn clear(&self) {
        lock(&self.tokens).clear();
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        lock(&self.tokens).len()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_stands_for_its_user_until_voided() {
        let keeper = TokenKeeper::new(Duration::from_secs(60));
        let token = new_token().unwrap();
        assert_eq!(token.len(), 2 * TOKEN_RANDOM_BYTES);
        assert_ne!(token, new_token().unwrap());
        assert_eq!(keeper.user_of(&token), None);
        keeper.observe(&AuthEffect::TokenIssued {
            user: "alice".into(),
            token_digest: digest(&token),
        });
        assert_eq!(keeper.user_of(&token).as_deref(), Some("alice"));
        keeper.observe(&AuthEffect::UserInvalidated { user: "bob".into() });
        assert_eq!(keeper.user_of(&token).as_deref(), Some("alice"));
        keeper.observe(&AuthEffect::UserInvalidated { user: "alice".into() });
        assert_eq!(keeper.user_of(&token), None);
        keeper.register(digest(&token), "alice");
        keeper.observe(&AuthEffect::AllInvalidated);
        assert!(keeper.is_empty());
    }

    #[test]
    fn an_expired_token_is_forgotten() {
        let keeper = TokenKeeper::new(Duration::ZERO);
        keeper.register(digest("t"), "alice");
        assert_eq!(keeper.user_of("t"), None);
        assert!(keeper.is_empty());
    }

    #[test]
    fn the_keeper_holds_at_most_its_bound() {
        let keeper = TokenKeeper::new(Duration::from_secs(60));
        for index in 0..TOKENS_MAX + 10 {
            keeper.register(digest(&index.to_string()), "alice");
        }
        assert_eq!(keeper.len(), TOKENS_MAX);
        let newest = (TOKENS_MAX + 9).to_string();
        assert_eq!(keeper.user_of(&newest).as_deref(), Some("alice"));
    }
}
