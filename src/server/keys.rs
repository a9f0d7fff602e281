//! Reads the key material `[auth]` names (files, environment variables) and builds the auth policy; the I/O
//! half of [`crate::protocol::auth`]. Used at start, and on SIGHUP to rotate keys without a restart.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Auth, AuthModeSetting};
use crate::protocol::auth::keys::parse_algorithm;
use crate::protocol::auth::{AuthPolicy, Carrier, Carriers, ClaimRules, KeyError, KeySet, Mode, Verifier};

/// Why the auth settings could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// A file could not be read.
    #[error("auth.{key}: cannot read {path}: {source}")]
    Read {
        /// The config key naming the file.
        key: &'static str,
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An environment variable named in the config is not set (or not UTF-8).
    #[error("auth.{key}: environment variable {var} is not set")]
    Env {
        /// The config key naming the variable.
        key: &'static str,
        /// The variable.
        var: String,
    },
    /// The key material is not valid.
    #[error("auth.{key}: {source}")]
    Key {
        /// The config key.
        key: &'static str,
        /// What is wrong.
        source: KeyError,
    },
    /// A mode that needs keys, with none configured.
    #[error("auth.mode is {0:?} but no key is configured (secret_file, secret_env, public_key_file or jwks_file)")]
    NoKeys(Mode),
}

/// Reads every configured key.
pub fn load_keys(a: &Auth) -> Result<KeySet, AuthSetupError> {
    let mut keys = KeySet::new();
    let secret = read_secret(&a.secret_file, "secret_file", &a.secret_env, "secret_env")?;
    if let Some(secret) = secret {
        let algs = algorithms(&a.secret_algorithms.0, "secret_algorithms")?;
        keys.add_secret(&secret, &algs).map_err(|source| AuthSetupError::Key { key: "secret_file", source })?;
    }
    if !a.public_key_file.is_empty() {
        let pem = read("public_key_file", &a.public_key_file)?;
        let algs = algorithms(&a.public_key_algorithms.0, "public_key_algorithms")?;
        keys.add_pem(&pem, &algs, None).map_err(|source| AuthSetupError::Key { key: "public_key_file", source })?;
    }
    if !a.jwks_file.is_empty() {
        let json = read("jwks_file", &a.jwks_file)?;
        keys.add_jwks(&json).map_err(|source| AuthSetupError::Key { key: "jwks_file", source })?;
    }
    Ok(keys)
}

/// Builds the policy the workers apply.
pub fn build_policy(a: &Auth) -> Result<AuthPolicy, AuthSetupError> {
    let keys = load_keys(a)?;
    let api_key = read_secret(&a.api_key_file, "api_key_file", &a.api_key_env, "api_key_env")?.map(Arc::from);
    let mode = match a.mode {
        AuthModeSetting::Auto if keys.is_empty() => Mode::None,
        AuthModeSetting::Auto => Mode::Handshake,
        AuthModeSetting::Fixed(m) => m,
    };
    if mode != Mode::None && keys.is_empty() {
        return Err(AuthSetupError::NoKeys(mode));
    }
    let rules = ClaimRules {
        issuers: a.issuer.0.clone(),
        audiences: a.audience.0.clone(),
        leeway: a.leeway.0.as_secs(),
        max_token_size: a.max_token_size.bytes(),
    };
    let carriers = Carriers {
        enabled: a.carriers.0.iter().filter_map(|c| Carrier::from_name(c)).collect(),
        cookie_name: a.cookie_name.clone(),
    };
    if mode != Mode::None && carriers.has(Carrier::Cookie) && a.allowed_origins.0.is_empty() {
        tracing::info!("auth: cookie tokens are accepted only with an Origin listed in auth.allowed_origins (empty)");
    }
    let timeout: Duration = a.timeout.0;
    let mut policy = AuthPolicy::new(
        mode,
        Verifier::new(Arc::new(keys), rules),
        carriers,
        a.allowed_origins.0.clone(),
        api_key,
        timeout,
    );
    policy.set_subjects_from_cache(tracing::enabled!(target: "herald::server::http", tracing::Level::DEBUG));
    Ok(policy)
}

fn algorithms(names: &[String], key: &'static str) -> Result<Vec<jsonwebtoken::Algorithm>, AuthSetupError> {
    names.iter().map(|n| parse_algorithm(n).map_err(|source| AuthSetupError::Key { key, source })).collect()
}

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, AuthSetupError> {
    std::fs::read(path).map_err(|source| AuthSetupError::Read { key, path: path.to_string(), source })
}

/// A secret from a file (one trailing newline dropped, as editors add one) or an environment variable.
fn read_secret(
    file: &str,
    file_key: &'static str,
    env: &str,
    env_key: &'static str,
) -> Result<Option<Vec<u8>>, AuthSetupError> {
    if !file.is_empty() {
        let mut bytes = read(file_key, file)?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        return Ok(Some(bytes));
    }
    if !env.is_empty() {
        let value = std::env::var(env).map_err(|_| AuthSetupError::Env { key: env_key, var: env.to_string() })?;
        return Ok(Some(value.into_bytes()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/auth/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn no_keys_means_auth_off_in_auto_mode() {
        let p = build_policy(&Auth::default()).expect("defaults");
        assert_eq!(p.mode(), Mode::None);
    }

    #[test]
    fn a_configured_key_turns_handshake_auth_on() {
        let a = Auth { secret_file: fixture("hs.secret"), ..Auth::default() };
        let p = build_policy(&a).expect("valid");
        assert_eq!(p.mode(), Mode::Handshake);
        assert_eq!(p.verifier().keys().len(), 1);
    }

    #[test]
    fn every_key_source_loads_together() {
        let a = Auth {
            secret_file: fixture("hs.secret"),
            public_key_file: fixture("rsa.pub"),
            public_key_algorithms: crate::config::List::of(&["RS256"]),
            jwks_file: fixture("jwks.json"),
            ..Auth::default()
        };
        assert_eq!(load_keys(&a).expect("valid").len(), 5);
    }

    #[test]
    fn a_mode_that_needs_keys_refuses_to_start_without_them() {
        let a = Auth { mode: AuthModeSetting::Fixed(Mode::Message), ..Auth::default() };
        assert!(matches!(build_policy(&a), Err(AuthSetupError::NoKeys(Mode::Message))));
    }

    #[test]
    fn missing_files_and_variables_are_named_in_the_error() {
        let a = Auth { secret_file: "/nonexistent/secret".into(), ..Auth::default() };
        assert!(build_policy(&a).expect_err("missing file").to_string().contains("auth.secret_file"));
        let a = Auth { secret_env: "HERALD_TEST_SURELY_UNSET_VAR".into(), ..Auth::default() };
        assert!(build_policy(&a).expect_err("unset var").to_string().contains("HERALD_TEST_SURELY_UNSET_VAR"));
        let a = Auth {
            public_key_file: fixture("rsa.pub"),
            public_key_algorithms: crate::config::List::of(&["HS256"]),
            ..Auth::default()
        };
        assert!(build_policy(&a).is_err(), "HS256 cannot be pinned to an RSA key");
    }
}
